"""Where the CPU train step's time goes: the step with parts taken out, one
at a time (ablations), at batch 32, 224x224, fp32.

    python benchmarks/profile_step.py
    python benchmarks/profile_step.py --size 128 --reps 5

Each row is a separately jitted function; the difference from the full step
is what that part costs. Structural ablations (no SE, ReLU for hard-swish)
change the model and are there to size those parts, not to be used.
benchmarks/NOTES.md records what was changed because of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.models import hybrid, mobilenet_v3
from fracjax.train.steps import StepConfig, make_train_step


def timed(fn, reps):
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def classifier(blocks=mobilenet_v3.SMALL_BLOCKS):
    backbone = mobilenet_v3.MobileNetV3(blocks=tuple(blocks))
    head = hybrid.HybridHead(num_classes=1, blocks=hybrid.DEFAULT_HYBRID_BLOCKS)
    return hybrid.BackboneHead(backbone=backbone, head=head)


def step_time(model, images, labels, reps, augment=True, backbone_train=True, update=True):
    x0 = jnp.zeros((1, *images.shape[1:]), jnp.float32)
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x0))(jax.random.key(0))
    params, batch_stats = variables["params"], variables["batch_stats"]
    config = StepConfig(backbone_train=backbone_train, augment=AugmentConfig() if augment else None)
    if update:
        step = make_train_step(model, params, phase=2, learning_rate=1e-3, weight_decay=1e-4, grad_clip=1.0,
                               config=config)
        batch = step.parallel.put_batch({"image": images, "label": labels})
        holder = {"s": step.init_state(variables, jax.random.key(1))}

        def run():
            holder["s"], m = step.compiled(holder["s"], batch)
            return m["loss"]

        return timed(run, reps)

    def loss_fn(p, x):
        logits, _ = model.apply({"params": p, "batch_stats": batch_stats}, x, train=True,
                                backbone_train=backbone_train, mutable=["batch_stats"],
                                rngs={"dropout": jax.random.key(0)})
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels.astype(jnp.float32)).mean()

    grad = jax.jit(jax.grad(loss_fn))
    x = images.astype(jnp.float32)
    return timed(lambda: grad(params, x), reps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    images = jax.device_put(rng.integers(0, 256, (args.batch, args.size, args.size, 1), dtype=np.uint8))
    labels = jax.device_put(rng.integers(0, 2, (args.batch,)).astype(np.int32))
    model = classifier()
    rows = []
    full = step_time(model, images, labels, args.reps)
    rows.append(("full train step (augment, BN train, AdamW)", full))
    rows.append(("  without augmentation", step_time(model, images, labels, args.reps, augment=False)))
    rows.append(("  gradient only (no augment, no optimizer)",
                 step_time(model, images, labels, args.reps, augment=False, update=False)))
    rows.append(("  gradient, backbone BN in inference mode",
                 step_time(model, images, labels, args.reps, augment=False, update=False, backbone_train=False)))
    no_se = [dataclasses.replace(b, se=False) for b in mobilenet_v3.SMALL_BLOCKS]
    rows.append(("  gradient, no SE blocks", step_time(classifier(no_se), images, labels, args.reps,
                                                         augment=False, update=False)))
    relu = [dataclasses.replace(b, act="relu") for b in mobilenet_v3.SMALL_BLOCKS]
    rows.append(("  gradient, ReLU for hard-swish in blocks", step_time(classifier(relu), images, labels, args.reps,
                                                                        augment=False, update=False)))
    aug = jax.jit(augment_batch, static_argnums=2)
    rows.append(("augmentation alone", timed(lambda: aug(jax.random.key(0), images, AugmentConfig()), args.reps)))
    x = images.astype(jnp.float32)
    variables = jax.jit(lambda k: model.init({"params": k, "dropout": k}, x[:1]))(jax.random.key(0))
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    rows.append(("inference forward", timed(lambda: fwd(variables, x), args.reps)))
    params = variables["params"]
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    upd = jax.jit(lambda g, s, p: tx.update(g, s, p))
    rows.append(("AdamW update alone", timed(lambda: upd(params, opt_state, params), args.reps)))
    put = lambda: jax.device_put(np.asarray(images))  # noqa: E731
    rows.append(("host-to-device copy of the batch", timed(put, args.reps)))

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {args.batch}, {args.size}x{args.size}, fp32 "
          f"(median of {args.reps})")
    for label, seconds in rows:
        print(f"{label:<46} {seconds * 1e3:9.1f} ms  {100 * seconds / full:5.1f}% of the full step")


if __name__ == "__main__":
    main()
