"""How hard is the synthetic set? A logistic regression on raw pixels against
a small CNN, same train/validation/test splits.

    python benchmarks/synthetic_difficulty.py                   # 2,000 / 500 / 500 at 224 (the default set)
    python benchmarks/synthetic_difficulty.py --train 600 --size 128

The aim of the generator: raw pixels should not tell the label (a linear
model stays well below 75% test accuracy) while a small CNN learns the
fracture (over 90%). Images are generated in memory (no TFDS needed).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from fracjax.data import synthetic


class SmallCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x / 127.5 - 1.0
        for features in (16, 32, 64, 64, 128):
            x = nn.Conv(features, (3, 3), strides=(2, 2), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
            x = nn.Conv(features, (3, 3), use_bias=False)(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
            x = nn.relu(x)
        x = jnp.max(x, axis=(1, 2))  # a fracture is local: max-pool its evidence
        return nn.Dense(1)(x)[:, 0]


def logistic_regression(train, val, test, seed: int) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    def flat(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255.0
    mean, std = flat(xtr).mean(0), flat(xtr).std(0) + 1e-3
    def prep(x):
        return jnp.asarray((flat(x) - mean) / std)
    xtr, xva, xte = prep(xtr), prep(xva), prep(xte)
    best = None
    for l2 in (1e-4, 1e-3, 1e-2, 1e-1):
        w = jnp.zeros(xtr.shape[1])
        b = jnp.zeros(())
        opt = optax.adam(1e-3)
        state = opt.init((w, b))

        @jax.jit
        def step(params, state):
            def loss(p):
                logits = xtr @ p[0] + p[1]
                return optax.sigmoid_binary_cross_entropy(logits, ytr).mean() + l2 * jnp.sum(p[0] ** 2)

            g = jax.grad(loss)(params)
            updates, state = opt.update(g, state, params)
            return optax.apply_updates(params, updates), state

        params = (w, b)
        for _ in range(300):
            params, state = step(params, state)
        def acc(x, y):
            return float(np.mean((np.asarray(x @ params[0] + params[1]) > 0) == y))
        val_acc = acc(xva, yva)
        if best is None or val_acc > best["val"]:
            best = {"l2": l2, "val": val_acc, "test": acc(xte, yte), "train": acc(xtr, ytr)}
    return best


def small_cnn(train, val, test, seed: int, epochs: int, batch: int) -> dict:
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    model = SmallCNN()
    variables = model.init(jax.random.key(seed), jnp.zeros((1, *xtr.shape[1:])))
    steps = epochs * (len(xtr) // batch)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, steps // 20, steps), weight_decay=1e-4)
    params, stats = variables["params"], variables["batch_stats"]
    state = opt.init(params)

    @jax.jit
    def step(params, stats, state, x, y, key):
        x = jnp.where(jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1)), x[:, :, ::-1], x)

        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return optax.sigmoid_binary_cross_entropy(logits, y).mean(), upd["batch_stats"]

        (value, stats), g = jax.value_and_grad(loss, has_aux=True)(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), stats, state, value

    predict = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x))
    rng = np.random.default_rng(seed)
    key = jax.random.key(seed)
    for _ in range(epochs):
        order = rng.permutation(len(xtr))
        for i in range(len(xtr) // batch):
            idx = order[i * batch : (i + 1) * batch]
            key, sub = jax.random.split(key)
            params, stats, state, _ = step(
                params, stats, state, jnp.asarray(xtr[idx], jnp.float32), jnp.asarray(ytr[idx], jnp.float32), sub
            )

    def acc(x, y):
        preds = np.concatenate(
            [
                np.asarray(predict(params, stats, jnp.asarray(x[i : i + 100], jnp.float32)))
                for i in range(0, len(x), 100)
            ]
        )
        return float(np.mean((preds > 0) == y))

    return {"val": acc(xva, yva), "test": acc(xte, yte), "train": acc(xtr, ytr)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = synthetic.SyntheticConfig(size=args.size)
    start = time.perf_counter()
    splits = [
        synthetic.generate_arrays(n, split, 0, config)
        for n, split in ((args.train, "train"), (args.val, "validation"), (args.test, "test"))
    ]
    print(f"generated {sum(len(s[0]) for s in splits)} images in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    lr = logistic_regression(*splits, seed=args.seed)
    print(
        f"logistic regression on raw pixels: test {lr['test']:.3f} (val {lr['val']:.3f}, train {lr['train']:.3f}, "
        f"l2 {lr['l2']}) [{time.perf_counter() - start:.0f} s]"
    )
    start = time.perf_counter()
    cnn = small_cnn(*splits, seed=args.seed, epochs=args.epochs, batch=args.batch)
    print(
        f"small CNN ({args.epochs} epochs): test {cnn['test']:.3f} (val {cnn['val']:.3f}, "
        f"train {cnn['train']:.3f}) [{time.perf_counter() - start:.0f} s]"
    )


if __name__ == "__main__":
    main()
