"""Forward and forward+backward time of a fracjax classifier, per kernel kit
(``fracjax.models.KITS``), with compile times on their own line.

    python benchmarks/forward_backward.py                 # hybrid MobileNetV3-Small, batch 32, 224
    python benchmarks/forward_backward.py --kernels cpu --batch 8 --size 160
    python benchmarks/forward_backward.py --model resnet50 --reps 3

Not a test: it prints timings (median and spread over --reps runs after one
warm-up) for the machine it runs on. The ratio column compares each
kit with the first one listed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fracjax


def timed(fn, *args, reps: int):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, times


def measure(args, kernels: str) -> dict:
    model = fracjax.models.create(args.model, head=args.head, kernels=kernels)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 255, (args.batch, args.size, args.size, 1)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 2, (args.batch,)).astype(np.float32))
    variables = jax.jit(lambda k: model.init(k, x[:1]))(jax.random.key(0))

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))

    def loss_fn(params, batch_stats, x, y, key):
        logits, updates = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            backbone_train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean(), updates

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    key = jax.random.key(1)

    # Compile time is measured apart from execution: lower + compile.
    t0 = time.perf_counter()
    forward.lower(variables, x).compile()
    compile_fwd = time.perf_counter() - t0
    t0 = time.perf_counter()
    grad_fn.lower(variables["params"], variables["batch_stats"], x, y, key).compile()
    compile_grad = time.perf_counter() - t0

    _, fwd_times = timed(forward, variables, x, reps=args.reps)
    _, grad_times = timed(grad_fn, variables["params"], variables["batch_stats"], x, y, key, reps=args.reps)
    return {
        "impl": kernels,
        "compile_fwd": compile_fwd,
        "compile_grad": compile_grad,
        "fwd": fwd_times,
        "grad": grad_times,
    }


def fmt(times) -> str:
    med = statistics.median(times) * 1e3
    spread = (max(times) - min(times)) * 1e3
    return f"{med:8.1f} ms (+-{spread / 2:5.1f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small", choices=fracjax.models.available())
    parser.add_argument("--head", default="hybrid", choices=["hybrid", "linear"])
    parser.add_argument("--kernels", nargs="+", default=["cpu", "portable"], choices=sorted(fracjax.models.KITS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)

    print(f"jax {jax.__version__} on {jax.default_backend()} ({jax.device_count()} device(s)); "
          f"{args.model} + {args.head} head, batch {args.batch}, {args.size}x{args.size}, float32")
    results = [measure(args, kernels) for kernels in args.kernels]
    base = results[0]
    print(f"{'depthwise':<10} {'forward':>24} {'fwd+bwd':>24} {'img/s fwd':>10} {'img/s train':>11} {'ratio':>6}")
    for r in results:
        fwd = statistics.median(r["fwd"])
        grad = statistics.median(r["grad"])
        ratio = statistics.median(base["grad"]) / grad
        print(f"{r['impl']:<10} {fmt(r['fwd']):>24} {fmt(r['grad']):>24} "
              f"{args.batch / fwd:10.1f} {args.batch / grad:11.1f} {ratio:6.2f}")
    for r in results:
        print(f"compile ({r['impl']}): forward {r['compile_fwd']:.1f} s, forward+backward {r['compile_grad']:.1f} s")


if __name__ == "__main__":
    main()
