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


def trainable_labels(params: Dict[str, Any], phase: int, unfreeze: Union[str, int] = "all") -> Dict[str, Any]:
    """A tree like ``params`` of "trainable" / "frozen" labels.

    Phase 1: the head trains, the backbone is frozen. Phase 2: the head and
    the backbone (``unfreeze="all"``) or its last ``unfreeze`` groups.
    """
    if phase not in (1, 2):
        raise ValueError(f"phase must be 1 or 2, got {phase}")
    if "backbone" not in params:
        raise ValueError("params have no 'backbone' subtree; freezing needs a fracjax Classifier")
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

    def label(path, _):
        if path[0] != "backbone":
            return TRAINABLE
        return TRAINABLE if path[1] in trainable_backbone else FROZEN

    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({k: label(k, v) for k, v in flat.items()})


def learning_rate_schedule(
    kind: str, peak: float, total_steps: int, warmup_steps: int = 0, end_fraction: float = 0.01
) -> optax.Schedule:
    """"cosine": linear warm-up then cosine decay to ``end_fraction * peak``;
    "constant" (used with reduce-on-plateau, which scales it from outside)."""
    if peak <= 0:
        raise ValueError(f"learning rate must be > 0, got {peak}")
    if kind == "cosine":
        total = max(total_steps, 1)
        warmup = min(max(warmup_steps, 0), total - 1) if total > 1 else 0
        return optax.warmup_cosine_decay_schedule(0.0 if warmup else peak, peak, warmup, total, peak * end_fraction)
    if kind in ("constant", "plateau"):
        return optax.constant_schedule(peak)
    raise ValueError(f"schedule must be 'cosine' or 'plateau', got {kind!r}")


def make_optimizer(
    params: Dict[str, Any],
    phase: int,
    learning_rate: optax.ScalarOrSchedule,
    weight_decay: float = 1e-4,
    unfreeze: Union[str, int] = "all",
    grad_clip: Optional[float] = None,
) -> optax.GradientTransformation:
    """AdamW on the trainable partition, nothing on the frozen one."""
    labels = trainable_labels(params, phase, unfreeze)
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(optax.adamw(learning_rate, weight_decay=weight_decay, mask=_decay_mask))
    return optax.multi_transform({TRAINABLE: optax.chain(*parts), FROZEN: optax.set_to_zero()}, labels)


def _decay_mask(params):
    """Decay kernels only: not biases, BatchNorm scales or 1-D parameters."""
    return jax.tree_util.tree_map(lambda p: getattr(p, "ndim", 0) > 1, params)


def apply_updates(params, updates, labels):
    """``params + updates`` on trainable leaves; frozen leaves are returned as
    they are (bitwise: adding a zero update would turn -0.0 into +0.0)."""
    return jax.tree_util.tree_map(
        lambda p, u, label: p if label == FROZEN else (p + u).astype(p.dtype), params, updates, labels
    )


def count_trainable(params, labels) -> int:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda p, label: p.size if label == TRAINABLE else 0, params, labels))
    return int(sum(leaves))


def scale_tree(tree, scale):
    return jax.tree_util.tree_map(lambda u: u * jnp.asarray(scale, u.dtype), tree)
