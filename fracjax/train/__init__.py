"""fracjax training: two-phase transfer learning, checkpoints, metrics.

    from fracjax.train import make_config, fit
    report = fit(make_config(phase1_epochs=1, phase2_epochs=3))
"""

from fracjax.metrics import auroc, binary_metrics
from fracjax.train.config import DataConfig, EvalConfig, ModelConfig, OptimConfig, RunConfig, TrainConfig
from fracjax.train.errors import NonFiniteLossError, ResumeError
from fracjax.train.loop import fit
from fracjax.train.optim import make_optimizer, trainable_mask
from fracjax.train.parallel import Parallel
from fracjax.train.presets import make_config
from fracjax.train.run_folder import RunFolderError
from fracjax.train.steps import StepConfig, TrainState, TrainStep, eval_step, make_train_step, train_step

__all__ = [
    "NonFiniteLossError",
    "Parallel",
    "ResumeError",
    "RunFolderError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "StepConfig",
    "TrainConfig",
    "TrainState",
    "TrainStep",
    "auroc",
    "binary_metrics",
    "eval_step",
    "fit",
    "make_config",
    "make_optimizer",
    "make_train_step",
    "train_step",
    "trainable_mask",
]
