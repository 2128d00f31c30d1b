"""Orbax checkpoints of a training run.

Two managers under ``<run>/checkpoints/``:

* ``latest/``: for ``--resume``; items ``model`` (params + batch_stats),
  ``train`` (the rest of the run's state: optimizer state, step, PRNG key,
  progress) and ``meta`` (JSON: the phase, the history, the config). The
  optimizer state's tree changes between phases: restoring needs the
  phase's optimizer to build the target, and ``meta`` says which phase.
* ``best/``: the best model by validation AUROC: ``model`` and ``meta`` only
  (inference needs no optimizer state).

Saves are synchronous and atomic (Orbax writes a temporary folder and renames
it when complete), so a run killed at any moment, even during a save, leaves
only whole checkpoints; leftovers are removed when the managers open.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp


class _ExpectedReadOnly(logging.Filter):
    """Drops Orbax's warnings that a manager opened read-only (for a restore)
    is read-only: fracjax opens them so on purpose."""

    EXPECTED = ("Given directory is read only", "CheckpointManagerOptions.read_only=True")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.EXPECTED)


logging.getLogger("absl").addFilter(_ExpectedReadOnly())


def _manager(directory: str, items, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True
    )
    handlers = {
        name: (ocp.JsonCheckpointHandler() if name == "meta" else ocp.StandardCheckpointHandler()) for name in items
    }
    return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def _host(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(jax.device_get(x)), tree)


class RunCheckpoints:
    def __init__(self, run_dir: str, keep: int = 2):
        self.directory = os.path.join(run_dir, "checkpoints")
        self.latest = _manager(os.path.join(self.directory, "latest"), ("model", "train", "meta"), keep)
        self.best = _manager(os.path.join(self.directory, "best"), ("model", "meta"), 1)

    # -- saving -------------------------------------------------------------

    def save_latest(self, step: int, model: Dict[str, Any], train: Dict[str, Any], meta: Dict[str, Any]) -> None:
        """``model``: params and batch_stats; ``train``: the rest of the run's
        state (a tree of arrays); ``meta``: JSON."""
        model, train = _host(model), _host(train)
        self.latest.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self.latest.wait_until_finished()

    def save_best(self, step: int, variables, meta: Dict[str, Any]) -> None:
        model = _host({"params": variables["params"], "batch_stats": variables["batch_stats"]})
        for old in self.best.all_steps():
            if old >= step:  # a resumed run re-reaching a step
                self.best.delete(old)
        self.best.save(
            step, args=ocp.args.Composite(model=ocp.args.StandardSave(model), meta=ocp.args.JsonSave(meta)), force=True
        )
        self.best.wait_until_finished()

    # -- restoring ----------------------------------------------------------

    def latest_step(self) -> Optional[int]:
        return self.latest.latest_step()

    def latest_meta(self, step: Optional[int] = None) -> Optional[Dict[str, Any]]:
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore_latest(self, step: int, model_target, train_target) -> Tuple[Any, Any, Dict[str, Any]]:
        """Restore ``step`` against abstract targets (``jax.eval_shape``
        trees); ``train_target["key"]`` is the raw key data shape."""
        restored = self.latest.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(model_target),
                train=ocp.args.StandardRestore(train_target),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return restored["model"], restored["train"], restored["meta"]

    def close(self) -> None:
        self.latest.close()
        self.best.close()


def find_model_checkpoint(path: str, which: str = "best") -> Tuple[str, int]:
    """A run folder, its ``checkpoints/`` folder, a manager folder
    (``best``/``latest``) or one step folder -> (manager folder, step)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    candidates = [
        os.path.join(path, "checkpoints", which),
        os.path.join(path, which),
        path,
    ]
    for folder in candidates:
        if os.path.isdir(folder):
            steps = sorted(int(d) for d in os.listdir(folder) if d.isdigit() and os.path.isdir(os.path.join(folder, d)))
            if steps:
                return folder, steps[-1]
    # A single step folder (…/best/123).
    parent, name = os.path.split(path)
    if name.isdigit() and os.path.isdir(os.path.join(path, "model")):
        return parent, int(name)
    raise FileNotFoundError(
        f"no {which} checkpoint under {path}: expected a run folder (with checkpoints/{which}/<step>) "
        "or a checkpoint folder"
    )


def restore_model(folder: str, step: int, target=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(variables, meta) of one step of a manager folder, without optimizer
    state. ``target``: abstract variables for sharding/dtype; default: as saved."""
    manager = ocp.CheckpointManager(
        folder,
        options=ocp.CheckpointManagerOptions(read_only=True, create=False),
        item_handlers={"model": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
    )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardRestore(target) if target is not None else ocp.args.StandardRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
    finally:
        manager.close()
    return restored["model"], restored["meta"]
