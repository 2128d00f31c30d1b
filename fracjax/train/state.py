"""What a training run is at any moment, and what a resume restores.

* :class:`TrainState`: the device state the step updates (parameters, batch
  statistics, optimizer state with reduce-on-plateau inside it, step, RNG).
* :class:`Progress`: where the run is (phase, early stopping, best so far,
  the budget's clock), kept on the host in full precision.
* :class:`EpochRecord`: one line of ``metrics.jsonl``; the run's history is a
  list of them.
* :class:`RunState`: what the trainer's stages pass on (the host's view:
  variables between phases, the global step, progress, history).

A ``latest`` checkpoint holds the first two as one tree (train.resume.saved_tree)
and the history as JSON beside it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import struct


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any  # the optimizer's, reduce-on-plateau's included
    key: jax.Array  # base key; each step folds in its step number

    @property
    def variables(self) -> Dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


@dataclasses.dataclass
class Progress:
    """The run's position beyond the step count (host side, float64)."""

    phase: int = 1  # the phase being trained
    phase_done: bool = False  # early stopping (or the budget) ended that phase
    bad_epochs: int = 0  # epochs of this phase since the best validation AUROC
    best_auroc: Optional[float] = None
    best_step: Optional[int] = None
    stopped_early: bool = False
    train_seconds: float = 0.0  # what the training-time budget counts
    budget_spent: bool = False

    def to_tree(self) -> Dict[str, np.ndarray]:
        """Arrays for Orbax (None as NaN / -1)."""
        return {
            "phase": np.int32(self.phase), "phase_done": np.bool_(self.phase_done),
            "bad_epochs": np.int32(self.bad_epochs),
            "best_auroc": np.float64(math.nan if self.best_auroc is None else self.best_auroc),
            "best_step": np.int64(-1 if self.best_step is None else self.best_step),
            "stopped_early": np.bool_(self.stopped_early), "train_seconds": np.float64(self.train_seconds),
            "budget_spent": np.bool_(self.budget_spent),
        }

    @classmethod
    def from_tree(cls, tree: Dict[str, Any]) -> "Progress":
        best_auroc, best_step = float(tree["best_auroc"]), int(tree["best_step"])
        return cls(
            phase=int(tree["phase"]), phase_done=bool(tree["phase_done"]), bad_epochs=int(tree["bad_epochs"]),
            best_auroc=None if math.isnan(best_auroc) else best_auroc, best_step=None if best_step < 0 else best_step,
            stopped_early=bool(tree["stopped_early"]), train_seconds=float(tree["train_seconds"]),
            budget_spent=bool(tree["budget_spent"]),
        )

    @classmethod
    def restore_target(cls) -> Dict[str, np.ndarray]:
        """Numpy leaves: Orbax restores them as numpy, keeping float64 (jax arrays would be float32)."""
        return {k: np.asarray(v) for k, v in cls().to_tree().items()}


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    phase: int
    step: int
    train_loss: float
    train_accuracy: float
    validation: Dict[str, Any]
    lr_scale: float  # reduce-on-plateau's factor (1.0 with a cosine schedule)
    seconds: float
    images_per_s: float  # without the step that compiled

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: Dict[str, Any]) -> "EpochRecord":
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls)})


def history_json(history: Sequence[EpochRecord]) -> List[Dict[str, Any]]:
    return [r.to_json() for r in history]


@dataclasses.dataclass(frozen=True)
class RunState:
    """The run between the trainer's stages, which take one and return the
    next: the model's variables (carried from phase to phase), the global step
    (a host int: the loop decides on it without waiting for the device), the
    progress and the history of epochs."""

    variables: Dict[str, Any]
    step: int = 0
    progress: Progress = dataclasses.field(default_factory=Progress)
    history: Tuple[EpochRecord, ...] = ()
