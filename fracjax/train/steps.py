"""The pure train and eval steps, and the factory that compiles the train step.

One step function serves every parallel mode: under ``jax.jit`` with a
sharded batch (the default) XLA computes BatchNorm statistics and gradients
over the global batch by itself; mapped per device (``jax.shard_map``, the
``pmap`` mode of :mod:`fracjax.train.parallel`) pass ``axis_name`` and the
step averages gradients and metrics across devices (the model must then be
built with ``bn_axis_name`` equal to it, for global BatchNorm statistics).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import optax

from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.models.registry import INIT_COMPILER_OPTIONS
from fracjax.train import optim
from fracjax.train.parallel import Parallel
from fracjax.train.state import TrainState


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
    trainable: Any,
    config: StepConfig,
    axis_name: Optional[str] = None,
) -> Tuple[TrainState, Dict[str, jax.Array]]:
    """One optimisation step on a batch of uint8 images (augmented here, on
    device). ``trainable``: the boolean tree of :func:`optim.trainable_mask`
    that ``tx`` was made with; other leaves stay bitwise as they are.
    Returns the new state and {"loss": the batch's mean loss, "correct",
    "count": sums over the global batch's unmasked examples}."""
    step_key = jax.random.fold_in(state.key, state.step)
    aug_key, dropout_key = jax.random.split(step_key)
    images = batch["image"]
    offset = 0
    if axis_name:
        # Per-example randomness keyed by the global example index, so that a
        # per-device step augments exactly as one device would.
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
    params = optim.apply_updates(state.params, updates, trainable)
    correct = jnp.sum(((logits > 0) == (batch["label"] > 0)) * mask)
    count = jnp.sum(mask)
    metrics = {"loss": loss, "correct": _global_sum(correct, axis_name), "count": _global_sum(count, axis_name)}
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    return new_state, metrics


def eval_step(variables, batch, *, apply_fn: Callable, compute_dtype=jnp.float32):
    """Fracture logits (float32) for a batch (no augmentation, running BN
    statistics). Probabilities and metrics are made from them on the host, in
    float64, by :mod:`fracjax.metrics`."""
    logits = apply_fn(variables, batch["image"].astype(compute_dtype), train=False)
    return logits[:, 0].astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """A train step made by :func:`make_train_step`.

    ``fn(state, batch, axis_name=None)`` is the pure step (wrap it yourself to
    feed it differently); ``compiled(state, batch)`` is it compiled (jit, or shard_map in the per-device mode)
    for ``parallel``, donating the state. ``init_state`` builds the state the
    step expects, placed on the devices.
    """

    fn: Callable
    compiled: Callable
    tx: optax.GradientTransformation
    trainable: Any  # bool tree like params: True where a leaf trains
    parallel: Parallel
    plateau: Optional[optax.GradientTransformationExtraArgs] = None  # see optim.observe_plateau

    def init_state(self, variables, key: jax.Array, step: int = 0) -> TrainState:
        """A fresh state on the devices, from copies of ``variables`` (the
        compiled step donates its state; ``variables`` stay usable)."""
        params, batch_stats, opt_state = _fresh_state_parts(self.tx)(variables["params"], variables["batch_stats"])
        return self.parallel.put_state(TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                                                  batch_stats=batch_stats, opt_state=opt_state, key=key))


def _fresh_state_parts(tx: optax.GradientTransformation) -> Callable:
    """(copies of params and batch_stats, ``tx.init``'s state) in one jitted call: op by op they
    compiled once per leaf shape at a run's start (NOTES, session 21). The optimizer state is made
    from copies of its own, so no output is one of the caller's arrays, which the step donates."""

    def fresh(params, batch_stats):
        copies = jax.tree_util.tree_map(jnp.copy, (params, batch_stats))
        return (*copies, tx.init(jax.tree_util.tree_map(jnp.copy, params)))

    return jax.jit(fresh, compiler_options=INIT_COMPILER_OPTIONS)


def make_train_step(
    model,
    params,
    *,
    phase: int = 2,
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    unfreeze: Union[str, int] = "all",
    weight_decay: float = 1e-4,
    grad_clip: Optional[float] = None,
    config: StepConfig = StepConfig(),
    parallel: Optional[Parallel] = None,
    plateau: Optional[optax.GradientTransformationExtraArgs] = None,
    tx: Optional[optax.GradientTransformation] = None,
) -> TrainStep:
    """The train step of ``phase`` (1: the head, 2: the head and the backbone,
    all of it or its top ``unfreeze`` groups) with AdamW on the trainable
    leaves, compiled for ``parallel`` (default: jit on every device). ``tx``:
    another optimizer instead (e.g. plain SGD for a numerical check); frozen
    leaves stay bitwise unchanged whatever it returns for them. In the per-device mode,
    build ``model`` with ``bn_axis_name=parallel.axis_name``. ``plateau``: an
    ``optax.contrib.reduce_on_plateau`` scaling the updates; feed it with
    :func:`optim.observe_plateau` (``fit`` does, with the validation loss).

        step = make_train_step(model, variables["params"], phase=1, learning_rate=1e-3)
        state = step.init_state(variables, jax.random.key(0))
        state, metrics = step.compiled(state, step.parallel.put_batch(batch))
    """
    parallel = parallel or Parallel()
    trainable = optim.trainable_mask(params, phase, unfreeze)
    if tx is None:
        tx = optim.make_optimizer(trainable, learning_rate, weight_decay=weight_decay, grad_clip=grad_clip,
                                  plateau=plateau)
    fn = functools.partial(train_step, apply_fn=model.apply, tx=tx, trainable=trainable, config=config)
    return TrainStep(fn=fn, compiled=parallel.compile_step(fn), tx=tx, trainable=trainable, parallel=parallel,
                     plateau=plateau)
