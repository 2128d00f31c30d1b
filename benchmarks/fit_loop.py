"""The training loop against the bare compiled step, on the same data.

    python benchmarks/fit_loop.py [--image-size 128] [--batch-size 32] [--train-examples 1920] [--epochs 2]

``fit`` trains phase 2 (the fine-tuning step, the heavy one) for ``--epochs``
epochs with validation off the clock (its epochs' images/s leave out the step
that compiled and the validation). The bare step is the same compiled step
(``context.train_step`` of the same run context) fed the same batches, all
placed on the device beforehand, timed over the same number of steps after one
warm-up step. The ratio fit/bare is what the loop costs: waiting on the host
for each step's metrics, making and copying the next batch, the progress bar.
Target on CPU: >= 0.95 (issue 33). Figures go in benchmarks/NOTES.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

from fracjax.hostmem import reexec_with_malloc_hugepages


def _config(args, out: str):
    from fracjax.train.cli import config_from_args

    return config_from_args([
        "--dataset", args.dataset, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
        "--train-examples", str(args.train_examples), "--phase1-epochs", "0", "--phase2-epochs", str(args.epochs),
        "--early-stopping-patience", "100", "--out", out, "--name", "fit", "--no-progress", "--no-report",
        "--bootstrap", "0", *(["--log-every", str(args.log_every)] if args.log_every else []),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    ])


def bare_step_rate(config, steps: int, name: str) -> float:
    """Images/s of the compiled phase-2 step over ``steps`` batches already on the device."""
    from fracjax.data import pipeline
    from fracjax.train import context

    ctx, run = context.start(config.replace(name=name))
    phase = ctx.phases[0]
    train = context.train_step(ctx, run.variables["params"], phase, context.step_config(config, phase))
    state = train.init_state(run.variables, jax.random.wrap_key_data(jnp.asarray(ctx.key_data)))
    batches = [ctx.parallel.put_batch(b) for b in pipeline.train_batches(
        ctx.splits["train"], ctx.order, start_step=0, num_steps=steps + 1)]
    jax.block_until_ready(batches)
    state, metrics = train.compiled(state, batches[0])  # compiles
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for batch in batches[1:]:
        state, metrics = train.compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return steps * config.optim.batch_size / (time.perf_counter() - start)


def fit_rate(config) -> list:
    """Images/s of each epoch of ``fit`` (its own throughput: the compiling step and validation left out)."""
    from fracjax.train import fit

    fit(config)
    with open(os.path.join(config.run_dir, "metrics.jsonl")) as f:
        return [json.loads(line)["images_per_s"] for line in f]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic_fracture")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-examples", type=int, default=1920)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=None,
                        help="the loop's fetch interval (default: fit's own; older fracjax has no such option)")
    args = parser.parse_args(argv)
    reexec_with_malloc_hugepages()  # as examples/train.py runs (fracjax/hostmem.py)
    out = tempfile.mkdtemp(prefix="fracjax-fit-loop-")
    config = _config(args, out)
    steps = args.train_examples // args.batch_size
    bares = [bare_step_rate(config, steps, "bare-before")]
    epochs = fit_rate(config)
    bares.append(bare_step_rate(config, steps, "bare-after"))  # either side of fit: the machine's drift shows
    bare, fit = statistics.mean(bares), statistics.median(epochs)
    print(f"{jax.devices()[0].platform}, {len(jax.devices())} device(s); {args.image_size} px, batch "
          f"{args.batch_size}, {steps} steps an epoch, --log-every {args.log_every or 'default'}")
    print(f"bare compiled step: {' and '.join(f'{b:.1f}' for b in bares)} img/s (before and after fit); "
          f"fit epochs: {', '.join(f'{r:.1f}' for r in epochs)} img/s")
    print(f"fit / bare = {fit / bare:.3f} (median epoch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
