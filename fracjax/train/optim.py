"""Optimizers for two-phase transfer learning.

Freezing is by partition, not by zeroing gradients: ``optax.multi_transform``
gives the frozen partition ``set_to_zero`` and no AdamW at all, so frozen
leaves get no Adam moments (the state holds ``MaskedNode`` placeholders) and
no decoupled weight decay (which ``chain(masked(set_to_zero), adamw)`` would
still apply, shrinking "frozen" weights). :func:`apply_updates` then leaves
frozen leaves as the very same arrays, bitwise unchanged.

Phase 1 trains the head; phase 2 unfreezes the backbone, all of it or its top
N groups (see :func:`backbone_groups`), with its own learning rate and a fresh
optimizer state.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Union

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

TRAINABLE, FROZEN = "trainable", "frozen"


def backbone_groups(backbone_params: Dict[str, Any]) -> List[List[str]]:
    """The backbone's top-level modules grouped from input to output: the stem
    (modules named ``stem*``), each block (``block<i>``, ``stage<i>``...,
    ordered by number), then the top (everything else, e.g. the last conv).
    Unfreezing "the top N" means the last N groups. (Names, not dict order:
    JAX sorts dict keys when it flattens a tree.)"""
    block = re.compile(r"^(block|stage|layer|transition)(\d+)(?:_(\d+))?$")

    def block_key(name):
        m = block.match(name)
        # A DenseNet's transition<i> comes after every layer of its block<i>_<j>.
        within = float("inf") if m.group(1) == "transition" else int(m.group(3) or 0)
        return (int(m.group(2)), within)

    names = list(backbone_params)
    stem = sorted(n for n in names if n.startswith("stem"))
    blocks = sorted((n for n in names if block.match(n)), key=block_key)
    top = sorted(n for n in names if n not in stem and n not in blocks)
    return ([stem] if stem else []) + [[b] for b in blocks] + ([top] if top else [])


def trainable_mask(params: Dict[str, Any], phase: int, unfreeze: Union[str, int] = "all") -> Dict[str, Any]:
    """A tree like ``params`` of booleans: True where the leaf trains.

    Phase 1: the head trains, the backbone is frozen. Phase 2: the head and
    the backbone (``unfreeze="all"``) or its last ``unfreeze`` groups.
    """
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 or 2, got {phase}")
    if "backbone" not in params:
        raise ValueError("params have no 'backbone' subtree; freezing needs a fracjax BackboneHead")
    trainable_backbone: set = set()
    if phase == 2:
        groups = backbone_groups(params["backbone"])
        if unfreeze == "all":
            trainable_backbone = set(params["backbone"])
        else:
            n = int(unfreeze)
            if not 0 <= n <= len(groups):
                raise ValueError(f"unfreeze must be 'all' or 0..{len(groups)} groups, got {unfreeze!r}")
            trainable_backbone = {name for group in groups[len(groups) - n :] for name in group}

    def trains(path):
        return path[0] != "backbone" or path[1] in trainable_backbone

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: trains(k) for k in flat})


def learning_rate_schedule(
    kind: str, peak: float, total_steps: int, warmup_steps: int = 0, end_fraction: float = 0.01
) -> optax.Schedule:
    """"cosine": linear warm-up then cosine decay to ``end_fraction * peak``;
    "plateau": constant (reduce-on-plateau scales it from outside)."""
    if peak <= 0:
        raise ValueError(f"learning rate must be > 0, got {peak}")
    if kind == "cosine":
        total = max(total_steps, 1)
        warmup = min(max(warmup_steps, 0), total - 1) if total > 1 else 0
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, warmup, total, peak * end_fraction)
    if kind == "plateau":
        return optax.constant_schedule(peak)
    raise ValueError(f"schedule must be 'cosine' or 'plateau', got {kind!r}")


def make_optimizer(
    mask: Dict[str, Any],
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay: float = 1e-4,
    grad_clip: Optional[float] = None,
    plateau: Optional[optax.GradientTransformationExtraArgs] = None,
) -> optax.GradientTransformation:
    """AdamW on the leaves where ``mask`` (see :func:`trainable_mask`) is
    True, nothing on the others. ``plateau``: an
    ``optax.contrib.reduce_on_plateau`` whose scale multiplies the updates;
    its state lives in the optimizer state, and :func:`observe_plateau`
    feeds it the validation loss at epoch ends."""
    partition = labels_by_path(mask)
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adamw(learning_rate, weight_decay=weight_decay, mask=_decay_mask))
    if plateau is not None:
        parts.append(_scale_by_plateau(plateau))
    return optax.multi_transform({TRAINABLE: optax.chain(*parts), FROZEN: optax.set_to_zero()}, partition)


def _scale_by_plateau(plateau) -> optax.GradientTransformation:
    """Updates times the plateau state's scale; the step leaves the state as
    it is (optax's own update would count every step as an observation)."""

    def update(updates, state, params=None):
        del params
        return jax.tree_util.tree_map(lambda u: u * state.scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(plateau.init, update)


def _is_plateau(node) -> bool:
    return isinstance(node, optax.contrib.ReduceLROnPlateauState)


def observe_plateau(opt_state, plateau, value):
    """``opt_state`` with its reduce-on-plateau state having seen ``value``
    (one observation: an epoch's validation loss). No plateau: unchanged."""

    def observe(node):
        return plateau.update({}, node, value=jnp.asarray(value))[1] if _is_plateau(node) else node

    return jax.tree_util.tree_map(observe, opt_state, is_leaf=_is_plateau)


def plateau_scale(opt_state) -> float:
    """The learning-rate factor reduce-on-plateau has reached (1.0 without one)."""
    nodes = [n for n in jax.tree_util.tree_leaves(opt_state, is_leaf=_is_plateau) if _is_plateau(n)]
    return float(nodes[0].scale) if nodes else 1.0


def labels_by_path(mask: Dict[str, Any]):
    """The partition of ``multi_transform`` as a function of a parameter tree: each leaf's label
    looked up in ``mask`` by its names, so that the same optimizer takes the Linen dictionary and
    an NNX view's ``nnx.State`` (whose leaves sit at the same names, see
    :func:`fracjax.models.to_nnx`)."""
    flat = traverse_util.flatten_dict(mask)

    def label(path, _):
        names = tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        if names not in flat:
            raise KeyError(f"no trainable mask for the parameter {'/'.join(names)}")
        return TRAINABLE if flat[names] else FROZEN

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def _decay_mask(params):
    """Decay kernels only: not biases, BatchNorm scales or 1-D parameters."""
    return jax.tree_util.tree_map(lambda p: getattr(p, "ndim", 0) > 1, params)


def apply_updates(params, updates, mask):
    """``params + updates`` on trainable leaves; frozen leaves are returned as
    they are (bitwise: adding a zero update would turn -0.0 into +0.0)."""
    return jax.tree_util.tree_map(
        lambda p, u, trains: (p + u).astype(p.dtype) if trains else p, params, updates, mask
    )


def count_trainable(params, mask) -> int:
    sizes = jax.tree_util.tree_map(lambda p, trains: p.size if trains else 0, params, mask)
    return int(sum(jax.tree_util.tree_leaves(sizes)))
