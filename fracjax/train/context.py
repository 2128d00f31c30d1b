"""The run's context: everything :func:`fracjax.train.fit` decides once, before
training (checked options, devices, the model, the prepared data, the order of
steps, the phases, checkpoints), frozen in a :class:`RunContext` that every
stage reads and none changes. :func:`start` builds it and the first
:class:`~fracjax.train.state.RunState`; nothing trains before it returns, so a
bad option, folder or weights file stops the run before any compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np
import optax

import fracjax
from fracjax import checkpoint as ckpt
from fracjax import hostmem
from fracjax import metrics as metrics_lib
from fracjax.data import pipeline, prepare
from fracjax.data.augment import AugmentConfig
from fracjax.metrics import LABEL_NAMES
from fracjax.train import distributed, event_log, optim, resume, run_folder
from fracjax.train.config import TrainConfig
from fracjax.train.distributed import say
from fracjax.train.parallel import Parallel
from fracjax.train.presets import learning_problem
from fracjax.train.progress import Clock
from fracjax.train.state import RunState
from fracjax.train.steps import StepConfig, TrainStep, eval_step, make_train_step


@dataclasses.dataclass(frozen=True)
class Phase:
    number: int
    epochs: int
    lr: float
    first_step: int  # global step at which this phase starts


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What the stages of one :func:`fracjax.train.fit` share and never change
    (the clock is accounting, not state: it is not checkpointed)."""

    config: TrainConfig
    parallel: Parallel
    model: Any
    spec: Dict[str, Any]
    builder: Any
    splits: Dict[str, Any]
    order: pipeline.TrainOrder
    phases: Tuple[Phase, ...]
    total_steps: int
    eval_fn: Any
    checkpoints: ckpt.RunCheckpoints
    key_data: np.ndarray  # host copy: every phase's fresh state gets its own device key
    pretrained_note: Optional[str]
    resume_meta: Optional[Dict[str, Any]]  # the checkpoint to resume from (None: a fresh run)
    clock: Clock
    events: event_log.EventLog  # TensorBoard/MLflow writers: host-side accounting, like the clock

    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    def phase_end(self, phase: Phase) -> int:
        """The global step at which ``phase`` ends (its last epoch's end, or the run's)."""
        return min(phase.first_step + phase.epochs * self.steps_per_epoch, self.total_steps)

    def eval_batch(self) -> int:
        n = self.parallel.count
        return max(n, (self.config.evaluation.eval_batch_size // n) * n)


def start(config: TrainConfig) -> Tuple[RunContext, RunState]:
    """The checked, prepared run and its first state (restored later, at its phase, when resuming)."""
    clock = Clock()
    if config.run.overwrite and distributed.is_primary():
        run_folder.clear_run(config.run_dir, say)
    resume.refuse_overwrite(config)
    distributed.barrier("run folder checked")  # before process 0 makes checkpoints/ in it
    parallel = _parallel(config)
    event_log.check_store(event_log.parse_targets(config.run.log_to))
    checkpoints = ckpt.RunCheckpoints(config.run_dir) if config.run.resume else None
    resume_meta = resume.resume_meta(config, checkpoints) if checkpoints else None
    # One model for init, training and evaluation: in the per-device mode its BatchNorm
    # needs the axis only where it computes batch statistics (training).
    model = build_model(config, parallel.axis_name)
    backbone, pretrained_note = _pretrained_backbone(config)  # a bad weights file stops the run before data work
    builder, splits = _data(config)
    image_size = config.data.image_size or prepare.stored_image_size(builder)
    variables = _init_variables(model, image_size, config.run.seed, backbone)
    order = pipeline.TrainOrder(len(splits["train"]), config.optim.batch_size, config.run.seed, jax.process_index(),
                                jax.process_count())
    phases = phases_of(config, order.steps_per_epoch)
    problem = learning_problem(config, order.steps_per_epoch, image_size)
    if problem and resume_meta is None:
        say(f"WARNING: {problem}")
    total_steps = sum(p.epochs for p in phases) * order.steps_per_epoch
    if config.run.max_steps is not None:
        total_steps = min(total_steps, config.run.max_steps)
    spec = model_spec(config, image_size)
    _write_config(config, spec)
    ctx = RunContext(
        config=config,
        parallel=parallel,
        model=model,
        spec=spec,
        builder=builder,
        splits=splits,
        order=order,
        phases=tuple(phases),
        total_steps=total_steps,
        eval_fn=_eval_fn(config, model, parallel),
        checkpoints=checkpoints or ckpt.RunCheckpoints(config.run_dir),
        key_data=np.asarray(jax.random.key_data(jax.random.key(config.run.seed + 1))),
        pretrained_note=pretrained_note,
        resume_meta=resume_meta,
        clock=clock,
        events=_event_log(config, resume_meta),
    )
    return ctx, RunState(variables=variables)


def _event_log(config: TrainConfig, resume_meta: Optional[Dict[str, Any]]) -> event_log.EventLog:
    """The run's writers; a fresh start first drops what an earlier attempt logged in this folder."""
    if resume_meta is None and distributed.is_primary():
        for name in os.listdir(config.run_dir):
            if name == "metrics.jsonl" or name.startswith("events.out.tfevents."):
                os.remove(os.path.join(config.run_dir, name))
    return event_log.EventLog(config.run_dir, event_log.parse_targets(config.run.log_to),
                              resume_step=resume_meta["global_step"] if resume_meta else None,
                              params=config.flat())


def _parallel(config: TrainConfig) -> Parallel:
    parallel = Parallel(config.run.parallel)
    if parallel.mode == "pmap" and jax.process_count() > 1:
        raise ValueError("--parallel pmap runs in one process; several processes use jit (the default)")
    note = hostmem.hugepages_note() if jax.default_backend() == "cpu" else None
    if note:
        say(note)
    if config.optim.batch_size % parallel.count:
        raise ValueError(f"--batch-size {config.optim.batch_size} is not divisible by {parallel.count} devices")
    return parallel


def _data(config: TrainConfig):
    """(builder, splits): process 0 prepares the data set (once, into the shared
    data_dir); the others then find it prepared. Classes are checked before
    anything compiles."""
    builder = _prepared_data(config.data) if distributed.is_primary() else None
    distributed.barrier("data prepared")
    builder = builder or _prepared_data(config.data)
    splits = prepare.load_splits(builder, config.data.train_examples, config.data.image_size, config.data.in_memory)
    counts = prepare.check_classes(splits, data_name(config.data), LABEL_NAMES)
    say("data: " + "; ".join(f"{split} {sum(c)} ({c[1]} fractured)" for split, c in counts.items()))
    return builder, splits


def build_model(config: TrainConfig, bn_axis_name: Optional[str] = None):
    return fracjax.models.create(config.model.name, head=config.model.head,
                                 **config.model.create_options(bn_axis_name))


def model_spec(config: TrainConfig, image_size: int) -> Dict[str, Any]:
    """What inference needs to rebuild the model (saved with checkpoints): the model config's own spec."""
    return config.model.spec(image_size, config.evaluation.threshold, LABEL_NAMES)


def data_name(data) -> str:
    """What the run trained on, as the user named it."""
    return data.data_folder or data.data_csv or data.dataset


def _prepared_data(data):
    """The TFDS builder of ``--data-folder``/``--data-csv`` (stored at
    ``--image-size``, default 224) or of ``--dataset``, prepared once."""
    own = data.data_folder or data.data_csv
    if own:
        return prepare.from_folder(own, image_size=data.image_size or 224, data_dir=data.data_dir, log=say)
    return prepare.prepare_dataset(data.dataset, data.data_dir, data.manual_dir, log=say)


def _pretrained_backbone(config: TrainConfig):
    """(backbone variables, the weights file) of ``--pretrained``, or (None, None)."""
    if not config.model.pretrained:
        return None, None
    check_size = config.data.image_size or fracjax.models.input_contract(config.model.name).default_size
    weights_file = fracjax.models.pretrained.resolve(config.model.name, config.model.pretrained)
    backbone = fracjax.models.load_keras_weights(config.model.name, weights_file, image_size=check_size)
    return backbone, os.path.abspath(weights_file)


def _init_variables(model, image_size: int, seed: int, backbone) -> Dict[str, Any]:
    variables = fracjax.models.registry.init_variables(model, image_size, seed)
    if backbone is not None:
        variables = fracjax.models.with_backbone_variables(variables, backbone)
        say("loaded the pretrained backbone weights")
    return variables


def _write_config(config: TrainConfig, spec: Dict[str, Any]) -> None:
    if not distributed.is_primary():
        return
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "config.json"), "w") as f:
        json.dump(metrics_lib.jsonable({"train": config.to_dict(), "model": spec}), f, indent=1, default=str)


def _eval_fn(config: TrainConfig, model, parallel: Parallel):
    return jax.jit(
        functools.partial(eval_step, apply_fn=model.apply, compute_dtype=config.model.compute_dtype),
        in_shardings=(parallel.replicated, parallel.sharded), out_shardings=parallel.sharded,
    )


def phases_of(config: TrainConfig, steps_per_epoch: int) -> List[Phase]:
    phases = []
    step = 0
    o = config.optim
    for number, epochs, lr in ((1, o.phase1_epochs, o.lr), (2, o.phase2_epochs, o.phase2_lr)):
        if epochs:
            phases.append(Phase(number, epochs, lr, step))
            step += epochs * steps_per_epoch
    return phases


def step_config(config: TrainConfig, phase: Phase) -> StepConfig:
    augment = None
    if config.data.augment:
        augment = AugmentConfig(flip=True, rotation=config.data.rotation, zoom=config.data.zoom,
                                contrast=config.data.contrast, brightness=config.data.brightness)
    neg_weight, pos_weight = config.optim.class_weights or (1.0, 1.0)
    return StepConfig(
        backbone_train=(phase.number == 2 and config.backbone_bn_trains),
        label_smoothing=config.optim.label_smoothing,
        pos_weight=pos_weight,
        neg_weight=neg_weight,
        augment=augment,
        compute_dtype=config.model.compute_dtype,
    )


def phase_schedule(ctx: RunContext, phase: Phase):
    """``phase``'s learning rate by its own step count (each phase's optimizer starts at 0)."""
    o = ctx.config.optim
    return optim.learning_rate_schedule("cosine" if o.schedule == "cosine" else "plateau", phase.lr,
                                        phase.epochs * ctx.steps_per_epoch,
                                        warmup_steps=int(o.warmup_epochs * ctx.steps_per_epoch))


def train_step(ctx: RunContext, params, phase: Phase, config: StepConfig) -> TrainStep:
    """``phase``'s compiled step: its learning-rate schedule and (with ``--schedule plateau``) its plateau."""
    o = ctx.config.optim
    schedule = phase_schedule(ctx, phase)
    plateau = None
    if o.schedule == "plateau":
        plateau = optax.contrib.reduce_on_plateau(factor=o.plateau_factor, patience=o.plateau_patience)
    return make_train_step(
        ctx.model, params, phase=phase.number, learning_rate=schedule, unfreeze=o.unfreeze,
        weight_decay=o.weight_decay, grad_clip=o.grad_clip, config=config, parallel=ctx.parallel, plateau=plateau,
    )
