"""fracjax training: two-phase transfer learning, checkpoints, metrics.

    from fracjax.train import TrainConfig, fit
    report = fit(TrainConfig(phase1_epochs=1, phase2_epochs=3))
"""

from fracjax.train.config import TrainConfig
from fracjax.train.loop import NonFiniteLossError, ResumeError, fit
from fracjax.train.metrics import auroc, binary_metrics
from fracjax.train.optim import make_optimizer, trainable_labels
from fracjax.train.steps import StepConfig, TrainState, eval_step, train_step

__all__ = [
    "NonFiniteLossError",
    "ResumeError",
    "StepConfig",
    "TrainConfig",
    "TrainState",
    "auroc",
    "binary_metrics",
    "eval_step",
    "fit",
    "make_optimizer",
    "train_step",
    "trainable_labels",
]
