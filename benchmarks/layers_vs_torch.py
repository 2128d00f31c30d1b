"""MobileNetV3-Small's depthwise convolutions and the hybrid head's 3x3
convolution, one layer at a time, fracjax against PyTorch eager channels_last.

    python benchmarks/layers_vs_torch.py             # batch 32, 224x224 input sizes
    python benchmarks/layers_vs_torch.py --reps 15

Where ``compare.py`` says how the whole train step stands, this says which
layers make the difference: for each layer, the forward alone and forward +
backward (input and kernel gradients) in milliseconds, median of ``--reps``
after two warm-up calls, and PyTorch / fracjax (above 1, fracjax is faster).
fracjax runs its own ops (``fracjax.ops.depthwise_conv``, ``fracjax.ops.conv2d``)
under ``jax.jit``; PyTorch runs ``torch.nn.functional.conv2d`` on channels_last
tensors in a subprocess (its thread pool never shares the
process with XLA's). Needs the bench extra (``pip install -e .[bench]``); a
missing torch is reported and its columns left empty.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Callable, Dict, List

import numpy as np
from compare import repeat_timed  # benchmarks/ is this script's directory

# (name, channels, input size, kernel, stride): MobileNetV3-Small at 224x224,
# then the hybrid head's first 3x3 convolution (576 -> 256 at 7x7).
LAYERS = [
    ("block0 dw", 16, 112, 3, 2),
    ("block1 dw", 72, 56, 3, 2),
    ("block2 dw", 88, 28, 3, 1),
    ("block3 dw", 96, 28, 5, 2),
    ("block4 dw", 240, 14, 5, 1),
    ("block5 dw", 240, 14, 5, 1),
    ("block6 dw", 120, 14, 5, 1),
    ("block7 dw", 144, 14, 5, 1),
    ("block8 dw", 288, 14, 5, 2),
    ("block9 dw", 576, 7, 5, 1),
    ("block10 dw", 576, 7, 5, 1),
    ("head conv0 3x3", 576, 7, 3, 1),
]
HEAD_FEATURES = 256


def median_ms(fn: Callable[[], object], reps: int) -> float:
    """Median ms of ``reps`` calls after compare.py's two warm-up calls."""
    return 1e3 * statistics.median(repeat_timed(fn, reps)["times_s"])


def kernel_shape(channels: int, k: int, name: str):
    return (k, k, channels, HEAD_FEATURES) if name.startswith("head") else (k, k, 1, channels)


def bench_fracjax(batch: int, reps: int) -> List[Dict]:
    import jax
    import jax.numpy as jnp

    from fracjax import ops

    rows = []
    for name, channels, size, k, stride in LAYERS:
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal((batch, size, size, channels), np.float32))
        w = jnp.asarray(rng.standard_normal(kernel_shape(channels, k, name), np.float32))
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        if name.startswith("head"):
            def layer(x, w):
                return ops.conv2d(x, w, (1, 1), pad)
        else:
            def layer(x, w, stride=stride):
                return ops.depthwise_conv(x, w, (stride, stride), pad)
        out_shape = jax.eval_shape(layer, x, w).shape
        g = jnp.asarray(rng.standard_normal(out_shape, np.float32))
        forward = jax.jit(layer)
        def forward_backward(x, w, g, layer=layer):
            # The output is returned too (else XLA drops the forward, which
            # PyTorch computes); the output gradient enters as an argument, so
            # XLA cannot fold it in.
            y, vjp = jax.vjp(layer, x, w)
            return y, vjp(g)

        backward = jax.jit(forward_backward)
        rows.append({
            "forward": median_ms(lambda: jax.block_until_ready(forward(x, w)), reps),
            "forward_backward": median_ms(lambda: jax.block_until_ready(backward(x, w, g)), reps),
        })
    return rows


def bench_torch(batch: int, reps: int) -> List[Dict]:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, channels, size, k, stride in LAYERS:
        rng = np.random.default_rng(0)
        cl = torch.channels_last
        x = torch.from_numpy(rng.standard_normal((batch, size, size, channels), np.float32)).permute(0, 3, 1, 2)
        x = x.contiguous(memory_format=cl).requires_grad_(True)
        kh, kw, cin, cout = kernel_shape(channels, k, name)
        w_np = rng.standard_normal((kh, kw, cin, cout), np.float32)
        groups = 1 if name.startswith("head") else channels
        # HWIO -> (out, in / groups, kh, kw); a depthwise (k, k, 1, C) kernel becomes (C, 1, k, k).
        w = torch.from_numpy(np.ascontiguousarray(w_np.transpose(3, 2, 0, 1)))
        w = w.contiguous(memory_format=cl).requires_grad_(True)
        s = 1 if groups == 1 else stride

        def forward():
            with torch.no_grad():
                return F.conv2d(x, w, stride=s, padding=k // 2, groups=groups)

        out = forward()
        g = torch.from_numpy(rng.standard_normal(tuple(out.shape), np.float32)).contiguous(memory_format=cl)

        def forward_backward():
            x.grad = None
            w.grad = None
            F.conv2d(x, w, stride=s, padding=k // 2, groups=groups).backward(g)
            return w.grad

        rows.append({"forward": median_ms(forward, reps), "forward_backward": median_ms(forward_backward, reps)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--worker", choices=["torch"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(bench_torch(args.batch, args.reps)))
        return
    ours = bench_fracjax(args.batch, args.reps)
    cmd = [sys.executable, __file__, "--worker", "torch", "--batch", str(args.batch), "--reps", str(args.reps)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        theirs, note = json.loads(proc.stdout.strip().splitlines()[-1]), ""
    else:
        theirs = [None] * len(LAYERS)
        note = "torch: not measured (" + (proc.stderr.strip().splitlines() or ["failed"])[-1] + ")"
    print(f"batch {args.batch}, fp32, median of {args.reps}; ms; ratio = torch channels_last / fracjax")
    print(f"{'layer':<16} {'shape (HxW, C, k, s)':<22} {'fwd':>7} {'torch':>7} {'ratio':>6}"
          f" {'fwd+bwd':>8} {'torch':>7} {'ratio':>6}")
    totals = {"ours_f": 0.0, "ours_fb": 0.0, "theirs_f": 0.0, "theirs_fb": 0.0}
    for (name, channels, size, k, stride), mine, peer in zip(LAYERS, ours, theirs, strict=True):
        shape = f"{size}x{size}, {channels}, {k}, {stride}"
        line = f"{name:<16} {shape:<22} {mine['forward']:7.2f}"
        if peer:
            line += f" {peer['forward']:7.2f} {peer['forward'] / mine['forward']:6.2f}"
        else:
            line += f" {'-':>7} {'-':>6}"
        line += f" {mine['forward_backward']:8.2f}"
        if peer:
            line += f" {peer['forward_backward']:7.2f} {peer['forward_backward'] / mine['forward_backward']:6.2f}"
        else:
            line += f" {'-':>7} {'-':>6}"
        print(line)
        if name.endswith("dw"):
            totals["ours_f"] += mine["forward"]
            totals["ours_fb"] += mine["forward_backward"]
            if peer:
                totals["theirs_f"] += peer["forward"]
                totals["theirs_fb"] += peer["forward_backward"]
    line = f"{'all depthwise':<16} {'':<22} {totals['ours_f']:7.2f}"
    if totals["theirs_f"]:
        line += (f" {totals['theirs_f']:7.2f} {totals['theirs_f'] / totals['ours_f']:6.2f}"
                 f" {totals['ours_fb']:8.2f} {totals['theirs_fb']:7.2f}"
                 f" {totals['theirs_fb'] / totals['ours_fb']:6.2f}")
    else:
        line += f" {'-':>7} {'-':>6} {totals['ours_fb']:8.2f}"
    print(line)
    if note:
        print(note)


if __name__ == "__main__":
    main()
