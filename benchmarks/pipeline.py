"""Images/s the input pipeline delivers on this machine: decode (from the
prepared TFDS set, or from memory), batch, and augment on the device (the
jitted augmentation the train step runs), each on its own line.

    python benchmarks/pipeline.py --dataset synthetic_fracture --batches 40
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from fracjax.data import augment, pipeline


def rate(iterator, batches: int, batch_size: int, warmup: int = 2) -> float:
    it = iter(iterator)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic_fracture")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    source = pipeline.load_source(args.dataset, "train", args.data_dir)
    order = pipeline.TrainOrder(len(source), args.batch_size, seed=0)
    steps = args.batches + 2
    disk = rate(pipeline.train_batches(source, order, 0, steps, threads=args.threads), args.batches, args.batch_size)
    print(f"decode + batch from disk ({args.threads} threads): {disk:8.1f} images/s")
    start = time.perf_counter()
    memory_source = pipeline.load_arrays(source)
    print(
        f"decode the whole split into memory: {len(memory_source) / (time.perf_counter() - start):8.1f} images/s (once)"
    )
    memory = rate(
        pipeline.train_batches(memory_source, order, 0, steps, threads=args.threads), args.batches, args.batch_size
    )
    print(f"batch from memory:                  {memory:8.1f} images/s")

    config = augment.AugmentConfig()
    fn = jax.jit(augment.augment_batch, static_argnums=2)
    batch = next(iter(pipeline.train_batches(memory_source, order, 0, 1, threads=0)))["image"]
    x = jax.device_put(batch)
    jax.block_until_ready(fn(jax.random.key(0), x, config))
    times = []
    for i in range(10):
        start = time.perf_counter()
        jax.block_until_ready(fn(jax.random.key(i), x, config))
        times.append(time.perf_counter() - start)
    aug = args.batch_size / float(np.median(times))
    print(f"augment on {jax.default_backend()} (flip, rotation, zoom, contrast): {aug:8.1f} images/s")
    both = 1.0 / (1.0 / memory + 1.0 / aug)
    print(f"pipeline from memory + augmentation, run back to back: {both:8.1f} images/s")


if __name__ == "__main__":
    main()
