"""The run configuration, from one source.

A :class:`TrainConfig` holds five frozen sections (model, data, optimisation,
evaluation, run). Each field is declared once, with its default, its help,
the checks its value must pass and how the command line spells it; the
command line (:mod:`fracjax.train.cli`) is generated from these declarations
and :func:`validate` runs the checks. Every option name is unique across the
sections, so ``make_config(batch_size=8, image_size=64)`` and
``config.replace(...)`` take the command line's names. A run saves
``config.to_dict()`` in ``config.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import jax.numpy as jnp

import fracjax
from fracjax.metrics import is_number
from fracjax.models import pretrained as pretrained_weights
from fracjax.models import registry
from fracjax.train import event_log, parallel
from fracjax.train.checks import (
    MAX_BATCH,
    MAX_BOOTSTRAP,
    MAX_EPOCHS,
    MAX_IMAGE_SIZE,
    Check,
    at_least,
    between,
    existing_file,
    fraction,
    one_of,
    open_fraction,
    positive,
    seed_range,
    type_problem,
)

SCHEDULES = ("cosine", "plateau")
DTYPES = ("float32", "bfloat16")
# The choices of the options below are the library's own constants (one spelling each): the heads
# fracjax.models.create builds (None, a bare backbone, is Python-only), the parallel modes of
# fracjax.train.parallel.
HEADS = tuple(h for h in registry.HEADS if h is not None)

# -- checks ------------------------------------------------------------------


def _known_model(v) -> Optional[str]:
    return one_of(fracjax.models.available())(v)


def _unfreeze(v) -> Optional[str]:
    if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
        return None
    return f"must be 'all' or a number (>= 0) of top backbone groups, got {v!r}"


def _class_weights(v) -> Optional[str]:
    ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(is_number(w) and 0 < w < math.inf for w in v)
    return None if ok else f"must be two positive finite numbers, got {v}"


def _pretrained(v) -> Optional[str]:
    if v in pretrained_weights.WEIGHT_NAMES or os.path.isfile(v):
        return None
    return f"no such file: {v} (or 'imagenet' for Keras's ImageNet weights)"


# -- declarations --------------------------------------------------------------


def option(default, help: str, *, check: Optional[Check] = None, choices=None, flag: Optional[str] = None,
           metavar: Optional[str] = None, default_text: Optional[str] = None, nargs: Optional[int] = None,
           parse: Optional[Callable[[str], Any]] = None, spellings: Optional[Dict[str, Any]] = None,
           switch: Optional[str] = None, cli: bool = True, resume_key: bool = False,
           append: Optional[Callable[[list], Any]] = None):
    """A config field and everything said about it.

    ``check``: a value -> error text (None values skip it). ``choices``: the
    allowed values (checked too). ``flag``: the command line's name when it
    is not the field's. ``default_text``: the help's words for a None
    default. ``parse``: text -> value where the field's type is not enough.
    ``spellings``: the command line's words for the values (``--backbone-bn
    auto|train|inference``). ``switch``: the help of ``--no-<flag>``, for a
    boolean that defaults to True. ``cli=False``: Python only.
    ``resume_key``: a resumed run must have the value of the run it continues
    (the model, the data, everything that decides the order of steps).
    ``append``: a flag given once per item (``--pretrained A=x --pretrained
    B=y``), each parsed by ``parse``; this makes the field's value of the list.
    """
    metadata = dict(help=help, check=check, choices=choices, flag=flag, metavar=metavar, default_text=default_text,
                    nargs=nargs, parse=parse, spellings=spellings, switch=switch, cli=cli,
                    resume_key=resume_key, append=append)
    if isinstance(default, (dict, list)):  # each instance its own copy
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _host_port(value) -> Optional[str]:
    host, _, port = str(value).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"must be HOST:PORT (e.g. 10.0.0.1:8476), got {value!r}"
    return None


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    name: str = option("mobilenet_v3_small", "backbone architecture", flag="model", check=_known_model,
                       metavar="NAME", resume_key=True)
    head: str = option("hybrid", "hybrid: the paper's conv blocks + GAP + dropout + dense; linear: GAP + "
                       "dropout + dense", choices=HEADS, resume_key=True)
    head_blocks: Optional[Tuple] = option(None, "the hybrid head's conv blocks", cli=False, resume_key=True)
    head_dropout: Optional[float] = option(None, "dropout before the head's dense layer", check=fraction,
                                           default_text="0.3 hybrid, 0.2 linear", resume_key=True)
    pretrained: Optional[str] = option(
        None, "Keras ImageNet weights of the backbone: 'imagenet' (the file keras.applications uses, fetched "
        "once, hash-checked, cached in $FRACJAX_CACHE or ~/.cache/fracjax) or a weights file (include_top=False, "
        ".weights.h5 or legacy .h5); checked against --model before training", check=_pretrained,
        metavar="imagenet|PATH", default_text="none: from scratch")
    backbone_bn_momentum: Optional[float] = option(
        None, "momentum of the backbone's BatchNorm running statistics", check=fraction, metavar="M",
        default_text="the Keras value with --pretrained, 0.9 from scratch")
    dtype: str = option("float32", "compute dtype (parameters stay float32)", choices=DTYPES, resume_key=True)

    @property
    def resolved_backbone_bn_momentum(self) -> Optional[float]:
        """``backbone_bn_momentum``, or 0.9 from scratch and the architecture's (None) when pretrained."""
        if self.backbone_bn_momentum is None:
            return None if self.pretrained else 0.9
        return self.backbone_bn_momentum

    @property
    def compute_dtype(self):
        """``dtype`` as the jnp type the model, the steps and evaluation compute in."""
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    def create_options(self, bn_axis_name: Optional[str] = None) -> Dict[str, Any]:
        """The keyword options of ``fracjax.models.create(self.name, head=self.head, ...)``."""
        options: Dict[str, Any] = {"num_classes": 1}
        if self.dtype == "bfloat16":
            options["dtype"] = self.compute_dtype
        if bn_axis_name:
            options["bn_axis_name"] = bn_axis_name
        if self.head_blocks is not None:
            options["head_blocks"] = self.head_blocks
        if self.head_dropout is not None:
            options["head_dropout"] = self.head_dropout
        if self.resolved_backbone_bn_momentum is not None:
            options["bn_momentum"] = self.resolved_backbone_bn_momentum
        return options

    def spec(self, image_size: int, threshold: float, labels) -> Dict[str, Any]:
        """What inference needs to rebuild this model (saved with a run's checkpoints)."""
        return {
            "model": self.name,
            "head": self.head,
            "num_classes": 1,
            "head_blocks": self.head_blocks,
            "head_dropout": self.head_dropout,
            "image_size": image_size,
            "input_contract": fracjax.models.input_contract(self.name).to_dict(),
            "threshold": threshold,
            "labels": list(labels),
            "fracjax_version": fracjax.__version__,
            "variables_layout": fracjax.models.migrate.VARIABLES_LAYOUT,
        }


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = option("synthetic_fracture", "TFDS name: synthetic_fracture (embedded); fracture_xray (the "
                          "Kaggle set; fracture_xray/grouped: re-split leakage-free), fracatlas, mura (these need "
                          "--manual-dir), with an optional /config, e.g. fracture_xray/384", resume_key=True)
    data_dir: Optional[str] = option(None, "TFDS data_dir", metavar="DIR",
                                     default_text="TFDS's: $TFDS_DATA_DIR or ~/tensorflow_datasets")
    manual_dir: Optional[str] = option(None, "folder holding the unzipped download (fracture_xray, fracatlas, mura)",
                                       metavar="DIR")
    data_folder: Optional[str] = option(
        None,
        "your own X-rays: a folder of class subfolders (fractured / not "
        "fractured, or [train|val|test]/<class>/); replaces --dataset",
        metavar="DIR",
        resume_key=True,
    )
    data_csv: Optional[str] = option(None, "your own X-rays: a CSV of path,label[,patient][,study][,split] (paths "
                                     "relative to it); replaces --dataset", metavar="FILE", resume_key=True)
    image_size: Optional[int] = option(None, "train at this size", check=between(32, MAX_IMAGE_SIZE),
                                       default_text="the data set's stored size", resume_key=True)
    train_examples: Optional[int] = option(None, "use the first N training examples", check=at_least(1),
                                           metavar="N", default_text="all", resume_key=True)
    in_memory: bool = option(True, "hold the decoded splits in memory",
                             switch="stream from disk instead of holding the decoded splits in memory")
    augment: bool = option(True, "flip/rotation/zoom/contrast augmentation on the device",
                           switch="no flip/rotation/zoom/contrast augmentation")
    rotation: float = option(0.1, "largest rotation, a fraction of a full turn", check=fraction)
    zoom: float = option(0.1, "largest zoom in or out, a fraction", check=fraction)
    contrast: float = option(0.1, "largest contrast change, a fraction", check=fraction)
    brightness: float = option(0.0, "largest brightness change, a fraction", check=fraction)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    batch_size: int = option(32, "global batch size", check=between(1, MAX_BATCH), resume_key=True)
    phase1_epochs: int = option(1, "epochs with the backbone frozen", check=between(0, MAX_EPOCHS),
                               resume_key=True)
    phase2_epochs: int = option(8, "fine-tuning epochs", check=between(0, MAX_EPOCHS), resume_key=True)
    lr: float = option(1e-3, "phase 1 peak learning rate (AdamW)", check=positive)
    phase2_lr: float = option(3e-3, "phase 2 peak learning rate (with ImageNet weights, try 1e-5 as the Keras "
                              "guide does)", check=positive)
    weight_decay: float = option(1e-4, "AdamW decoupled weight decay (kernels only)", check=at_least(0.0))
    schedule: str = option("cosine", "cosine: warm-up then cosine decay per phase; plateau: halve on a "
                           "validation-loss plateau", choices=SCHEDULES)
    warmup_epochs: float = option(0.5, "cosine schedule: linear warm-up epochs", check=at_least(0.0))
    plateau_patience: int = option(1, "plateau schedule: epochs without a better validation loss before a cut",
                                   check=at_least(0))
    plateau_factor: float = option(0.5, "plateau schedule: the learning rate's factor at a cut", check=open_fraction)
    unfreeze: Union[str, int] = option("all", "phase 2: 'all' or the number of top backbone groups to fine-tune",
                                       check=_unfreeze, parse=lambda s: s if s == "all" else int(s),
                                       metavar="all|N", resume_key=True)
    backbone_bn_train: Optional[bool] = option(
        None, "phase 2 backbone BatchNorm: train (batch statistics), inference (running statistics, the Keras "
        "guidance for a pretrained backbone), auto (inference with --pretrained, else train)", flag="backbone_bn",
        spellings={"auto": None, "train": True, "inference": False})
    grad_clip: Optional[float] = option(1.0, "global-norm gradient clipping", check=positive)
    label_smoothing: float = option(0.0, "label smoothing of the binary targets", check=fraction)
    class_weights: Optional[Tuple[float, float]] = option(None, "loss weights per class", check=_class_weights,
                                                          nargs=2, metavar=("NOT_FRACTURED", "FRACTURED"),
                                                          default_text="1 and 1")
    early_stopping_patience: int = option(3, "stop a phase after this many epochs without a better validation "
                                          "AUROC", check=at_least(1))
    train_minutes: Optional[float] = option(
        None, "training-time budget: stop at the epoch end after which one more epoch would pass it (compiling "
        "not counted, each epoch's validation counted); the epoch counts become upper bounds", check=positive,
        metavar="MIN", default_text="none")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    eval_batch_size: int = option(64, "batch size of validation and test passes", check=between(1, MAX_BATCH))
    threshold: float = option(0.5, "decision threshold on the fracture probability", check=open_fraction)
    report: bool = option(True, "end-of-run calibration and report.html with Grad-CAM",
                          switch="skip the end-of-run calibration and report.html (report.json is always written)")
    audit: Optional[str] = option(None, "leakage audit of the data set (fracjax audit --json A "
                                  "--clean-test): the report adds metrics on the clean test examples",
                                  check=existing_file, metavar="JSON")
    bootstrap: int = option(1000, "bootstrap resamples for the test metrics' 95% intervals (0: none)",
                            check=between(0, MAX_BOOTSTRAP))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    parallel: str = option("jit", "jit: one program over a device mesh (NamedSharding); pmap: the step "
                           "written per device (jax.shard_map over the same mesh)", choices=parallel.MODES)
    seed: int = option(
        0, "seed of the initialisation, data order, augmentation and dropout", check=seed_range, resume_key=True
    )
    out: str = option("runs", "parent folder of run folders", metavar="DIR")
    name: Optional[str] = option(None, "run folder name", default_text="<model>_<head>")
    resume: bool = option(False, "continue the run from its latest checkpoint")
    overwrite: bool = option(False, "start the run folder afresh: an earlier run in it (only a run's own files) "
                             "is removed first")
    checkpoint_every: int = option(0, "also checkpoint every STEPS steps inside an epoch (0: at epoch ends only)",
                                   check=at_least(0), metavar="STEPS")
    progress: bool = option(True, "progress bars", switch="no progress bars")
    log_to: str = option("tensorboard", "where the run's curves go besides metrics.jsonl: tensorboard (event files "
                         "in the run folder: tensorboard --logdir runs/), mlflow (the mlflow extra; the store "
                         "$MLFLOW_TRACKING_URI names), both comma-separated, or none",
                         check=event_log.targets_problem, metavar="TARGETS")
    log_every: int = option(10, "fetch the steps' losses from the device every STEPS steps (and at epoch ends): "
                            "the progress bar and the non-finite-loss check move then, and the steps between "
                            "run without waiting for the host", check=at_least(1), metavar="STEPS")
    max_steps: Optional[int] = option(None, "stop after this many steps in all (smoke runs)", check=at_least(1),
                                      default_text="none")
    coordinator: Optional[str] = option(None, "several processes: the coordinator's HOST:PORT (process 0 serves it); "
                                        "with --num-processes and --process-id", check=_host_port,
                                        metavar="HOST:PORT")
    num_processes: Optional[int] = option(None, "several processes: how many in all", check=at_least(1), metavar="N")
    process_id: Optional[int] = option(None, "several processes: this one's index, 0 .. N-1", check=at_least(0),
                                       metavar="I")
    distributed: bool = option(False, "several processes, all detected from the environment (SLURM, Open MPI, "
                               "Cloud TPU, Kubernetes) by jax.distributed.initialize()")
    heartbeat_timeout: int = option(100, "several processes: seconds without a peer's heartbeat before all stop "
                                    "(a dead process never hangs the others)", check=at_least(5), metavar="S")


SECTIONS = (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig), ("evaluation", EvalConfig),
            ("run", RunConfig))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad option (``--flag``); change nothing."""
        validate(self)
        return self

    def replace(self, **options) -> "TrainConfig":
        """A copy with options changed, by their command-line names (``batch_size=8``)."""
        sections = {name: {} for name, _ in SECTIONS}
        for key, value in options.items():
            section, field_name = _locate(key)
            sections[section][field_name] = value
        return dataclasses.replace(self, **{name: dataclasses.replace(getattr(self, name), **changes)
                                            for name, changes in sections.items() if changes})

    def resume_keys(self) -> Dict[str, Any]:
        """``{option: value}`` of the options declared ``resume_key``: what a resumed run must share."""
        return {key: getattr(getattr(self, section), f.name) for section, f, key in fields()
                if f.metadata.get("resume_key")}

    def flat(self) -> Dict[str, Any]:
        """``{option: value}`` over every section (the names ``make_config`` takes)."""
        return {key: getattr(getattr(self, section), f.name) for section, f, key in fields()}

    @property
    def backbone_bn_trains(self) -> bool:
        """Whether the backbone's BatchNorm trains in phase 2 (by default: from scratch yes, pretrained no)."""
        if self.optim.backbone_bn_train is None:
            return self.model.pretrained is None
        return bool(self.optim.backbone_bn_train)

    @property
    def run_name(self) -> str:
        return self.run.name or f"{self.model.name}_{self.model.head}"

    @property
    def run_dir(self) -> str:
        return os.path.join(self.run.out, self.run_name)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, default=str)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """From :meth:`to_dict`'s nested form, or the flat one of earlier runs' ``config.json``."""
        if set(values) <= {name for name, _ in SECTIONS}:
            return cls(**{name: section(**_known(section, values[name])) for name, section in SECTIONS
                          if name in values})
        return cls().replace(**values)


def _known(section, values: Dict[str, Any]) -> Dict[str, Any]:
    names = {f.name for f in dataclasses.fields(section)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {section.__name__} field(s): {unknown}")
    return values


def fields() -> Iterator[Tuple[str, dataclasses.Field, str]]:
    """(section, field, option name) for every option, in declaration order.
    The option name is the field's, or its ``flag`` (``model``, ``backbone_bn``...)
    where two sections would clash or the command line says it otherwise."""
    for section, cls in SECTIONS:
        for f in dataclasses.fields(cls):
            yield section, f, _option_name(section, f)


def _option_name(section: str, f: dataclasses.Field) -> str:
    if section == "model" and f.name == "name":
        return "model"
    return f.name


def _locate(option: str) -> Tuple[str, str]:
    """(section, field name) of an option name."""
    for section, f, name in fields():
        if option == name:
            return section, f.name
    names = sorted(name for _, _, name in fields())
    close = difflib.get_close_matches(option, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"options: {names}"
    raise ValueError(f"unknown config option {option!r}; {hint}")


def flag_of(f: dataclasses.Field, option_name: str) -> str:
    return "--" + (f.metadata.get("flag") or option_name).replace("_", "-")


def validate(config: TrainConfig) -> None:
    """Every field's own checks, then the checks across fields; the first
    failure raises ValueError naming the option's flag."""
    for section, f, name in fields():
        value = getattr(getattr(config, section), f.name)
        problem = _field_problem(f, value)
        if problem:
            raise ValueError(f"{flag_of(f, name)}: {problem}")
    for flag, problem in _cross_problems(config):
        raise ValueError(f"--{flag}: {problem}")


def check_fields(options) -> None:
    """The declared checks of every option of one options dataclass (a
    section, or a command's own, such as the comparison's); the first failure
    raises ValueError naming its flag."""
    for f in dataclasses.fields(options):
        if "help" in f.metadata:
            problem = _field_problem(f, getattr(options, f.name))
            if problem:
                raise ValueError(f"{flag_of(f, f.name)}: {problem}")


def _field_problem(f: dataclasses.Field, value) -> Optional[str]:
    if value is None:
        return None
    wrong_type = type_problem(str(f.type), value)
    if wrong_type:
        return wrong_type
    choices = f.metadata.get("choices")
    if choices is not None:
        several = f.metadata.get("nargs") is not None and not isinstance(value, str)  # each item is a choice
        wrong = [item for item in (value if several else [value]) if item not in choices]
        if wrong:
            return one_of(choices)(wrong[0])
    check = f.metadata.get("check")
    return check(value) if check else None


def _process_problems(run: "RunConfig") -> Iterator[Tuple[str, str]]:
    given = {"coordinator": run.coordinator, "num-processes": run.num_processes, "process-id": run.process_id}
    missing = [f"--{flag}" for flag, value in given.items() if value is None]
    if 0 < len(missing) < 3:
        yield (
            missing[0][2:],
            "--coordinator, --num-processes and --process-id go together; missing " + ", ".join(missing),
        )
    elif not missing and run.process_id >= run.num_processes:
        yield "process-id", f"must be below --num-processes {run.num_processes}, got {run.process_id}"
    if run.distributed and run.coordinator is not None:
        yield "distributed", "detects the coordinator from the environment; do not give --coordinator too"
    if run.overwrite and run.resume:
        yield "overwrite", "starts the run afresh; --resume continues it: give one of them"
    if run.parallel == "pmap" and (run.distributed or (run.num_processes or 1) > 1):
        yield "parallel", "pmap runs in one process; several processes use jit (the default) over all their devices"


def _cross_problems(config: TrainConfig) -> Iterator[Tuple[str, str]]:
    model, data, optim = config.model, config.data, config.optim
    if optim.phase1_epochs + optim.phase2_epochs == 0:
        yield "phase1-epochs", "phase epochs must not both be 0"
    if data.train_examples is not None and data.train_examples < optim.batch_size:
        yield "train-examples", f"must be >= the batch size {optim.batch_size}, got {data.train_examples}"
    if model.pretrained in pretrained_weights.WEIGHT_NAMES and model.name not in pretrained_weights.KERAS_NO_TOP:
        yield "pretrained", f"no {model.pretrained} weights are known for {model.name}"
    yield from _process_problems(config.run)
    own = [(flag, path) for flag, path in (("data-folder", data.data_folder), ("data-csv", data.data_csv)) if path]
    if len(own) == 2:
        yield "data-csv", "give --data-folder or --data-csv, not both"
    for flag, path in own:
        if data.dataset != DataConfig.dataset:
            yield flag, f"replaces --dataset; do not give both (got --dataset {data.dataset})"
        if flag == "data-folder" and not os.path.isdir(path):
            yield flag, f"no such folder: {path}"
        if flag == "data-csv" and not os.path.isfile(path):
            yield flag, f"no such file: {path}"
    if data.manual_dir is not None:
        if not os.path.isdir(data.manual_dir):
            yield "manual-dir", f"no such folder: {data.manual_dir}"
        elif not os.listdir(data.manual_dir):
            yield "manual-dir", f"{data.manual_dir} is empty: unzip the data set's download there"
