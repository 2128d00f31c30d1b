"""Train throughput of the hybrid MobileNetV3-Small on one accelerator, with
the data resident on the device and the augmentation on the device, in fp32
and bf16 compute, against the device's roofline.

    bash benchmarks/gpu.sh                    # what the GPU check runs
    python benchmarks/gpu.py --batch 256 --size 224 --steps 30

Needs only jax, flax, optax, orbax-checkpoint and chex (no tensorflow-datasets,
no grain): fracjax's train step and models import without them. The roofline
figures come from XLA's cost analysis of the compiled step (FLOPs and bytes
accessed; the depthwise backward is overcounted by such counters, so the
fraction of peak is a lower bound on how busy the device is) and from the
device's datasheet peaks in PEAKS, matched by the device name.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax.data.augment import AugmentConfig
from fracjax.train.steps import StepConfig, make_train_step

# Datasheet peaks (dense): (fp32 TFLOP/s, bf16 TFLOP/s, memory TB/s).
PEAKS = {
    "H200": (67.0, 989.0, 4.8),
    "H100": (67.0, 989.0, 3.35),
    "A100": (19.5, 312.0, 2.0),
    "L4": (30.3, 121.0, 0.3),
}


def device_peaks(device) -> tuple:
    kind = getattr(device, "device_kind", "")
    for name, peaks in PEAKS.items():
        if name in kind:
            return name, peaks
    return kind or device.platform, (float("nan"),) * 3


def measure(model_name: str, dtype: str, batch: int, size: int, steps: int, augment: bool) -> dict:
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    options = {"dtype": jnp.bfloat16} if dtype == "bfloat16" else {}
    model = fracjax.models.create(model_name, head="hybrid", **options)
    rng = np.random.default_rng(0)
    # Data resident on the device: a pool of batches, indexed on the device.
    pool = jax.device_put(rng.integers(0, 256, (4, batch, size, size, 1), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 2, (4, batch)).astype(np.int32))
    variables = jax.jit(
        lambda k: model.init({"params": k, "dropout": k}, jnp.zeros((1, size, size, 1), jnp.float32))
    )(jax.random.key(0))
    config = StepConfig(backbone_train=True, augment=AugmentConfig() if augment else None, compute_dtype=compute)
    train = make_train_step(model, variables["params"], phase=2, learning_rate=1e-3, weight_decay=1e-4,
                            grad_clip=1.0, config=config)

    def step(state, i):  # the batch indexed on the device, out of the resident pool
        return train.fn(state, {"image": pool[i % 4], "label": labels[i % 4]})

    jitted = jax.jit(step, donate_argnums=0)
    state = train.init_state(variables, jax.random.key(1))
    start = time.perf_counter()
    compiled = jitted.lower(state, jnp.int32(0)).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
    state, m = compiled(state, jnp.int32(0))
    jax.block_until_ready(m["loss"])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, m = compiled(state, jnp.int32(i))
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    assert np.isfinite(float(m["loss"])), "non-finite loss"
    return {
        "dtype": dtype,
        "augment": augment,
        "step_s": statistics.median(times),
        "spread_s": (max(times) - min(times)) / 2,
        "compile_s": compile_s,
        "flops": float(cost.get("flops", float("nan"))),
        "bytes": float(cost.get("bytes accessed", float("nan"))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args(argv)

    device = jax.devices()[0]
    name, (fp32_peak, bf16_peak, mem_peak) = device_peaks(device)
    print(f"jax {jax.__version__}, {jax.device_count()} x {getattr(device, 'device_kind', device.platform)}; "
          f"{args.model} + hybrid head, batch {args.batch}, {args.size}x{args.size}, data on device")
    print(f"peaks ({name} datasheet): fp32 {fp32_peak} TFLOP/s, bf16 {bf16_peak} TFLOP/s, memory {mem_peak} TB/s")
    header = (f"{'compute':<9} {'augment':<8} {'step ms':>12} {'img/s':>9} {'compile s':>10} {'GFLOP/step':>11} "
              f"{'GB/step':>8} {'% flop peak':>11} {'% mem peak':>10} {'bound by':>9}")
    print(header)
    print("-" * len(header))
    for dtype in args.dtypes:
        for augment in (True, False):
            r = measure(args.model, dtype, args.batch, args.size, args.steps, augment)
            peak = bf16_peak if dtype == "bfloat16" else fp32_peak
            flop_frac = r["flops"] / r["step_s"] / (peak * 1e12) * 100
            mem_frac = r["bytes"] / r["step_s"] / (mem_peak * 1e12) * 100
            # Roofline: which limit the step's arithmetic intensity meets first.
            intensity = r["flops"] / max(r["bytes"], 1.0)
            ridge = peak * 1e12 / (mem_peak * 1e12)
            bound = "-" if np.isnan(ridge) else ("memory" if intensity < ridge else "compute")
            print(f"{dtype:<9} {str(augment):<8} {r['step_s'] * 1e3:7.1f} ±{r['spread_s'] * 1e3:4.1f} "
                  f"{args.batch / r['step_s']:9.0f} {r['compile_s']:10.1f} {r['flops'] / 1e9:11.1f} "
                  f"{r['bytes'] / 1e9:8.2f} {flop_frac:11.1f} {mem_frac:10.1f} {bound:>9}", flush=True)


if __name__ == "__main__":
    main()
