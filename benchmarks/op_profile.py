"""Where the train step's time goes, per XLA operation (CPU).

    python benchmarks/op_profile.py                 # the train step, with augmentation
    python benchmarks/op_profile.py --what forward  # inference forward
    python benchmarks/op_profile.py --top 40 --size 128

Traces a few calls of the jitted function with ``jax.profiler`` (XLA:CPU
emits one event per executed thunk when ``--xla_cpu_enable_xprof_traceme`` is
set, which this script does before importing jax), reads the Perfetto JSON it
writes, and joins each event to its HLO instruction's ``op_name`` metadata, so
every millisecond is charged to a layer (``block4/depthwise``), a direction
(forward / backward) and a JAX primitive. Events nested in a ``while`` loop
are counted both in the loop and in its body, so shares are of the summed
leaf events. Instructions XLA made up (kernel-gradient convolutions and their
transposes have no metadata) are shown under "(no metadata)" with their HLO
shape, which is usually enough to tell which layer they belong to.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

if __name__ == "__main__":
    from fracjax.hostmem import reexec_with_malloc_hugepages

    reexec_with_malloc_hugepages()  # as examples/train.py runs (fracjax/hostmem.py)
if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_step import classifier  # noqa: E402

from fracjax.data.augment import AugmentConfig  # noqa: E402
from fracjax.train.steps import StepConfig, make_train_step  # noqa: E402

LAYER_NAMES = ("depthwise", "expand", "project", "squeeze", "excite", "last_conv", "stem_conv")


def build(what: str, batch: int, size: int):
    """(jitted function, argument tuple) for the train step or the forward."""
    model = classifier()
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (batch, size, size, 1), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 2, (batch,)).astype(np.int32))
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, size, size, 1))))(
        jax.random.key(0))
    if what == "forward":
        return jax.jit(lambda v, x: model.apply(v, x)), (variables, images.astype(jnp.float32))
    config = StepConfig(backbone_train=True, augment=AugmentConfig() if what == "step" else None)
    train = make_train_step(model, variables["params"], phase=2, learning_rate=1e-3, weight_decay=1e-4,
                            grad_clip=1.0, config=config)
    # Not donating: the profile runs the step on the same state again and again.
    state = train.init_state(variables, jax.random.key(1))
    return jax.jit(train.fn), (state, {"image": images, "label": labels})


def hlo_metadata(hlo_text: str):
    """instruction name -> (shape, op_name) from compiled HLO text."""
    out = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            out[m.group(1)] = (m.group(2), op.group(1) if op else "")
    return out


def describe(op_name: str):
    """(direction, layer, primitive) from an op_name like
    jit(f)/transpose(jvp(Classifier))/backbone/block4/depthwise/while/body/reduce_sum."""
    if not op_name:
        return ("?", "(no metadata)", "")
    direction = "backward" if "transpose(" in op_name else "forward"
    parts = op_name.split("/")
    layer = "other"
    for i, p in enumerate(parts):
        if p.startswith("block") or p in ("head", "stem_conv", "stem_bn", "last_conv", "last_bn"):
            nxt = parts[i + 1] if i + 1 < len(parts) and not p.startswith(("stem", "last")) else ""
            layer = f"{p}/{nxt}" if nxt else p
            if p.startswith("block"):
                kind = next((n for n in parts[i + 1:] if n in LAYER_NAMES or n.endswith("_bn") or n == "se"), "")
                layer = kind or "block (activations, residual)"
            break
    return (direction, layer, parts[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=("step", "step-noaug", "forward"), default="step")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)

    fn, fn_args = build(args.what, args.batch, args.size)
    meta = hlo_metadata(fn.lower(*fn_args).compile().as_text())
    for _ in range(2):
        jax.block_until_ready(fn(*fn_args))
    t0 = time.perf_counter()
    for _ in range(args.calls):
        jax.block_until_ready(fn(*fn_args))
    wall = (time.perf_counter() - t0) / args.calls
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(args.calls):
            jax.block_until_ready(fn(*fn_args))
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "perfetto_trace.json.gz"))
        events = json.load(gzip.open(path))["traceEvents"]

    per_op = collections.defaultdict(float)
    for e in events:
        if e.get("ph") == "X" and e["name"] in meta and not e["name"].startswith("while"):
            per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.calls
    total = sum(per_op.values())
    grouped = collections.defaultdict(float)
    for name, ms in per_op.items():
        grouped[describe(meta[name][1])[:2]] += ms

    print(f"{args.what}, batch {args.batch}, {args.size}x{args.size}: {wall * 1e3:.1f} ms a call "
          f"(untraced); {total:.1f} ms in {len(per_op)} traced XLA operations")
    print("\nby layer kind and direction:")
    for (direction, layer), ms in sorted(grouped.items(), key=lambda kv: -kv[1]):
        if ms >= 0.5:
            print(f"  {ms:8.1f} ms {100 * ms / total:5.1f}%  {direction:<8} {layer}")
    print(f"\ntop {args.top} operations:")
    for name, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[: args.top]:
        shape, op_name = meta[name]
        where = "/".join(p for p in op_name.split("/")[1:] if p) or "(no metadata)"
        print(f"  {ms:7.2f} ms  {name[:30]:<30} {shape[:32]:<32} {where[:90]}")


if __name__ == "__main__":
    main()
