"""The run configuration: one dataclass, validated before any work starts,
saved with every run as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple, Union

import fracjax
from fracjax.models import pretrained

PARALLEL_MODES = ("jit", "pmap")
SCHEDULES = ("cosine", "plateau")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class TrainConfig:
    # What to train.
    model: str = "mobilenet_v3_small"
    head: str = "hybrid"
    head_blocks: Optional[Tuple] = None  # None: the default hybrid blocks
    head_dropout: Optional[float] = None
    pretrained: Optional[str] = None  # "imagenet" or a Keras weights file of the backbone
    # Data.
    dataset: str = "synthetic_fracture"
    data_dir: Optional[str] = None  # TFDS data_dir; default TFDS's ($TFDS_DATA_DIR or ~/tensorflow_datasets)
    manual_dir: Optional[str] = None  # the Kaggle download, for fracture_xray
    image_size: Optional[int] = None  # default: the data set's stored size
    train_examples: Optional[int] = None  # use the first N training examples
    in_memory: bool = True  # decode each split once into host memory
    # Optimisation.
    batch_size: int = 32
    eval_batch_size: int = 64
    phase1_epochs: int = 1
    phase2_epochs: int = 8
    lr: float = 1e-3
    phase2_lr: float = 3e-3  # from scratch; with --pretrained use ~1e-5 (Keras guide)
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    plateau_patience: int = 1
    plateau_factor: float = 0.5
    unfreeze: Union[str, int] = "all"
    # Phase 2 backbone BatchNorm: True = batch statistics (and updates), False =
    # running statistics (Keras guidance for a pretrained backbone), None =
    # auto: False with --pretrained, True without (a random backbone's running
    # statistics are placeholders; freezing them leaves it unnormalised).
    backbone_bn_train: Optional[bool] = None
    # Momentum of the backbone's BatchNorm running statistics; None = auto: the
    # architecture's (Keras) value with --pretrained, 0.9 without.
    backbone_bn_momentum: Optional[float] = None
    grad_clip: Optional[float] = 1.0
    label_smoothing: float = 0.0
    class_weights: Optional[Tuple[float, float]] = None  # (not fractured, fractured)
    augment: bool = True
    rotation: float = 0.1
    zoom: float = 0.1
    contrast: float = 0.1
    brightness: float = 0.0
    early_stopping_patience: int = 3  # epochs without a better validation AUROC
    # A training-time budget in minutes (steps only: compiling, evaluation and
    # data preparation are not counted): training stops at the first epoch end
    # after which one more epoch would pass it; the epoch counts are then upper
    # bounds. For comparing models at equal cost (examples/compare.py).
    train_minutes: Optional[float] = None
    threshold: float = 0.5
    # Evaluation at the end of the run.
    report: bool = True  # calibration on validation, test intervals, report.html with Grad-CAM
    audit: Optional[str] = None  # leakage audit JSON (python -m fracjax.data.audit --clean-test): clean-test metrics
    bootstrap: int = 1000  # resamples for the test metrics' 95% intervals (0: none)
    # Running.
    parallel: str = "jit"
    dtype: str = "float32"
    seed: int = 0
    out: str = "runs"
    name: Optional[str] = None
    resume: bool = False
    checkpoint_every: int = 0  # also save every N steps mid-epoch (0: at epoch ends only)
    progress: bool = True
    max_steps: Optional[int] = None  # stop after this many steps in all (tests, smoke runs)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the bad field; nothing has been done yet."""
        def bad(field, why):
            raise ValueError(f"--{field.replace('_', '-')}: {why}")

        if self.model not in fracjax.models.available():
            bad("model", f"unknown model {self.model!r}; choose from {fracjax.models.available()}")
        if self.head not in ("hybrid", "linear"):
            bad("head", f"must be 'hybrid' or 'linear', got {self.head!r}")
        if self.image_size is not None and self.image_size < 32:
            bad("image_size", f"must be >= 32, got {self.image_size}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            bad("batch_size", "must be >= 1")
        if self.train_examples is not None and self.train_examples < self.batch_size:
            bad("train_examples", f"must be >= the batch size {self.batch_size}, got {self.train_examples}")
        if self.phase1_epochs < 0 or self.phase2_epochs < 0 or self.phase1_epochs + self.phase2_epochs == 0:
            bad("phase1_epochs", "phase epochs must be >= 0 and not both 0")
        for field in ("lr", "phase2_lr"):
            if not getattr(self, field) > 0:
                bad(field, f"must be > 0, got {getattr(self, field)}")
        if self.weight_decay < 0:
            bad("weight_decay", f"must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.unfreeze != "all":
            try:
                n = int(self.unfreeze)
            except (TypeError, ValueError):
                bad("unfreeze", f"must be 'all' or a number of top backbone groups, got {self.unfreeze!r}")
            if n < 0:
                bad("unfreeze", f"must be >= 0, got {n}")
            self.unfreeze = n
        if self.parallel not in PARALLEL_MODES:
            bad("parallel", f"must be one of {PARALLEL_MODES}, got {self.parallel!r}")
        if self.dtype not in DTYPES:
            bad("dtype", f"must be one of {DTYPES}, got {self.dtype!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            bad("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.class_weights is not None and (len(self.class_weights) != 2 or min(self.class_weights) <= 0):
            bad("class_weights", f"must be two positive numbers, got {self.class_weights}")
        if not 0.0 < self.threshold < 1.0:
            bad("threshold", f"must be in (0, 1), got {self.threshold}")
        for field in ("rotation", "zoom", "contrast", "brightness"):
            if not 0.0 <= getattr(self, field) < 1.0:
                bad(field, f"must be in [0, 1), got {getattr(self, field)}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            bad("grad_clip", f"must be > 0, got {self.grad_clip}")
        if self.pretrained in pretrained.WEIGHT_NAMES:
            if self.model not in pretrained.KERAS_NO_TOP:
                bad("pretrained", f"no {self.pretrained} weights are known for {self.model}")
        elif self.pretrained is not None and not os.path.isfile(self.pretrained):
            bad("pretrained", f"no such file: {self.pretrained} (or 'imagenet' for Keras's ImageNet weights)")
        if self.dataset.split("/")[0] == "fracture_xray" and self.manual_dir is not None:
            if not os.path.isdir(self.manual_dir):
                bad("manual_dir", f"no such folder: {self.manual_dir}")
        if self.backbone_bn_momentum is not None and not 0.0 <= self.backbone_bn_momentum < 1.0:
            bad("backbone_bn_momentum", f"must be in [0, 1), got {self.backbone_bn_momentum}")
        if self.audit is not None and not os.path.isfile(self.audit):
            bad("audit", f"no such file: {self.audit}")
        if self.bootstrap < 0:
            bad("bootstrap", f"must be >= 0 (0: no intervals), got {self.bootstrap}")
        if self.train_minutes is not None and not 0 < self.train_minutes < float("inf"):
            bad("train_minutes", f"must be a positive number of minutes, got {self.train_minutes}")
        if self.early_stopping_patience < 1:
            bad("early_stopping_patience", "must be >= 1")
        return self

    @property
    def backbone_bn_trains(self) -> bool:
        """Whether the backbone's BatchNorm trains in phase 2 (by default: from scratch yes, pretrained no)."""
        if self.backbone_bn_train is None:
            return self.pretrained is None
        return bool(self.backbone_bn_train)

    @property
    def resolved_backbone_bn_momentum(self) -> Optional[float]:
        """``backbone_bn_momentum``, or by default 0.9 from scratch and the architecture's Keras value (None) when pretrained."""
        if self.backbone_bn_momentum is None:
            return None if self.pretrained else 0.9
        return self.backbone_bn_momentum

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}_{self.head}"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.out, self.run_name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown config field(s): {sorted(unknown)}")
        return cls(**values)
