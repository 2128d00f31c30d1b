"""The train state and the pure train / eval steps.

One step function serves every parallel mode: under ``jax.jit`` with a
sharded batch (the default) XLA computes BatchNorm statistics and gradients
over the global batch by itself; under ``jax.pmap`` pass ``axis_name`` and the
step averages gradients and metrics across devices (the model must then be
built with ``bn_axis_name`` equal to it, for global BatchNorm statistics).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import struct

from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.train import optim


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    key: jax.Array  # base key; each step folds in its step number
    lr_scale: jax.Array  # reduce-on-plateau's factor (1.0 with a cosine schedule)

    @classmethod
    def create(cls, params, batch_stats, tx: optax.GradientTransformation, key, step: int = 0):
        return cls(
            step=jnp.asarray(step, jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            key=key,
            lr_scale=jnp.ones((), jnp.float32),
        )


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """What the step needs to know besides the state and the batch (static)."""

    backbone_train: bool = False
    label_smoothing: float = 0.0
    pos_weight: float = 1.0  # weight of fractured examples in the loss
    neg_weight: float = 1.0
    augment: Optional[AugmentConfig] = AugmentConfig()
    compute_dtype: Any = jnp.float32


def weighted_bce(logits, labels, mask, config: StepConfig):
    """Mean sigmoid cross-entropy over unmasked examples, with label smoothing
    (targets pulled towards 1/2) and per-class weights."""
    labels = labels.astype(jnp.float32)
    targets = labels * (1.0 - config.label_smoothing) + 0.5 * config.label_smoothing
    per_example = optax.sigmoid_binary_cross_entropy(logits, targets)
    weights = jnp.where(labels > 0.5, config.pos_weight, config.neg_weight) * mask.astype(jnp.float32)
    return jnp.sum(per_example * weights), jnp.sum(weights)


def _global_sum(x, axis_name):
    return jax.lax.psum(x, axis_name) if axis_name else x


def train_step(
    state: TrainState,
    batch: Dict[str, jax.Array],
    *,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    labels: Any,
    config: StepConfig,
    axis_name: Optional[str] = None,
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One optimisation step on a batch of uint8 images (augmented here, on
    device). Returns the new state and {"loss", "accuracy", "count"}."""
    step_key = jax.random.fold_in(state.key, state.step)
    aug_key, dropout_key = jax.random.split(step_key)
    images = batch["image"]
    offset = 0
    if axis_name:
        # Per-example randomness keyed by the global example index, so that a
        # pmapped step augments exactly as one device would.
        offset = jax.lax.axis_index(axis_name) * images.shape[0]
        dropout_key = jax.random.fold_in(dropout_key, jax.lax.axis_index(axis_name))
    if config.augment is not None:
        images = augment_batch(aug_key, images, config.augment, offset=offset)
    images = images.astype(config.compute_dtype)
    mask = batch.get("mask", jnp.ones(images.shape[:1], bool))

    def loss_fn(params):
        logits, updates = apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            backbone_train=config.backbone_train,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        logits = logits[:, 0].astype(jnp.float32)
        total, weight = weighted_bce(logits, batch["label"], mask, config)
        # Normalise by the global weight so that the gradient is the global mean.
        weight = _global_sum(weight, axis_name)
        return total / jnp.maximum(weight, 1e-12), (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if axis_name:
        grads = jax.lax.psum(grads, axis_name)
        loss = jax.lax.psum(loss, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    updates = optim.scale_tree(updates, state.lr_scale)
    params = optim.apply_updates(state.params, updates, labels)
    correct = jnp.sum(((logits > 0) == (batch["label"] > 0)) * mask)
    count = jnp.sum(mask)
    metrics = {"loss": loss, "correct": _global_sum(correct, axis_name), "count": _global_sum(count, axis_name)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def eval_step(variables, batch, *, apply_fn: Callable, compute_dtype=jnp.float32):
    """Fracture logits (float32) for a batch (no augmentation, running BN
    statistics). Probabilities and metrics are made from them on the host, in
    float64, by :mod:`fracjax.train.metrics`."""
    logits = apply_fn(variables, batch["image"].astype(compute_dtype), train=False)
    return logits[:, 0].astype(jnp.float32)
