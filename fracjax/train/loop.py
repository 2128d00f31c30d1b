"""``fit(config)``: two-phase transfer learning from data preparation to the
test report.

Phase 1 trains the head with the backbone frozen (masked optimizer, backbone
BatchNorm on running statistics); phase 2 fine-tunes the backbone (all of it
or its top groups) with its own learning rate and a fresh optimizer state.
Every epoch ends with a validation pass over every example, early stopping
on validation AUROC, and checkpoints (latest for ``resume``, best by AUROC).
The run folder gets ``config.json``, ``metrics.jsonl``, ``report.json`` and
``curves.png``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fracjax
from fracjax import checkpoint as ckpt
from fracjax import hostmem
from fracjax import metrics as metrics_lib
from fracjax.data import pipeline, prepare
from fracjax.data.augment import AugmentConfig
from fracjax.evaluation import evaluate_run, figures
from fracjax.evaluation.stats import format_interval
from fracjax.metrics import LABEL_NAMES
from fracjax.train import distributed, optim, run_folder
from fracjax.train.config import TrainConfig
from fracjax.train.parallel import Parallel
from fracjax.train.state import EpochRecord, Progress, TrainState, history_json
from fracjax.train.steps import StepConfig, TrainStep, eval_step, make_train_step


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; the run stopped there."""


class ResumeError(RuntimeError):
    """A run folder that cannot be resumed (or must not be overwritten)."""


def _log(msg: str) -> None:
    # Process 0 speaks for a run of several processes (asking JAX which process
    # this is before jax.distributed starts would start the backend too early).
    if not jax.distributed.is_initialized() or distributed.is_primary():
        print(msg, flush=True)


# --------------------------------------------------------------------------
# Model and parallelism.
# --------------------------------------------------------------------------


def build_model(config: TrainConfig, bn_axis_name: Optional[str] = None):
    return fracjax.models.create(config.model.name, head=config.model.head,
                                 **config.model.create_options(bn_axis_name))


def model_spec(config: TrainConfig, image_size: int) -> Dict[str, Any]:
    """What inference needs to rebuild the model (saved with checkpoints): the model config's own spec."""
    return config.model.spec(image_size, config.evaluation.threshold, LABEL_NAMES)


# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def predict_source(eval_fn, variables, source, batch_size: int, parallel: Parallel) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, indices) for every example of ``source``."""
    logits, labels, indices = [], [], []
    multihost = jax.process_count() > 1
    local_batch = batch_size // jax.process_count() if multihost else batch_size
    for batch in pipeline.eval_batches(source, local_batch, jax.process_index(), jax.process_count()):
        placed = jax.make_array_from_process_local_data(parallel.sharded, batch["image"])
        out = eval_fn(variables, {"image": placed})
        if multihost:
            # Every process gets every process's predictions and bookkeeping.
            from jax.experimental import multihost_utils

            z = np.asarray(multihost_utils.process_allgather(out, tiled=True))
            batch = {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True)) for k in ("mask", "label", "index")}
        else:
            z = np.asarray(jax.device_get(out))
        m = batch["mask"]
        logits.append(z[m])
        labels.append(batch["label"][m])
        indices.append(batch["index"][m])
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(indices)


def evaluate_split(eval_fn, variables, source, config: TrainConfig, parallel: Parallel) -> Dict[str, Any]:
    logits, labels, _ = predict_source(eval_fn, variables, source, _eval_batch(config, parallel), parallel)
    return metrics_lib.metrics_from_logits(labels, logits, config.evaluation.threshold)


def _eval_batch(config: TrainConfig, parallel: Parallel) -> int:
    n = parallel.count
    return max(n, (config.evaluation.eval_batch_size // n) * n)


# --------------------------------------------------------------------------
# The run.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    number: int
    epochs: int
    lr: float
    first_step: int  # global step at which this phase starts


def _phases(config: TrainConfig, steps_per_epoch: int) -> List[Phase]:
    phases = []
    step = 0
    o = config.optim
    for number, epochs, lr in ((1, o.phase1_epochs, o.lr), (2, o.phase2_epochs, o.phase2_lr)):
        if epochs:
            phases.append(Phase(number, epochs, lr, step))
            step += epochs * steps_per_epoch
    return phases


def _train_step(config: TrainConfig, model, params, phase: Phase, steps_per_epoch: int, parallel: Parallel,
                step_config: StepConfig) -> TrainStep:
    schedule = optim.learning_rate_schedule(
        "cosine" if config.optim.schedule == "cosine" else "plateau",
        phase.lr,
        phase.epochs * steps_per_epoch,
        warmup_steps=int(config.optim.warmup_epochs * steps_per_epoch),
    )
    plateau = None
    if config.optim.schedule == "plateau":
        plateau = optax.contrib.reduce_on_plateau(factor=config.optim.plateau_factor,
                                                  patience=config.optim.plateau_patience)
    return make_train_step(
        model, params, phase=phase.number, learning_rate=schedule, unfreeze=config.optim.unfreeze,
        weight_decay=config.optim.weight_decay, grad_clip=config.optim.grad_clip, config=step_config, parallel=parallel,
        plateau=plateau,
    )


# What a resumed run must share with the run it continues: the model, the
# data and everything that decides the order of steps.
RESUME_MUST_MATCH = ("model", "head", "head_blocks", "head_dropout", "dtype", "dataset", "data_folder", "data_csv", "image_size",
                     "train_examples", "batch_size", "seed", "phase1_epochs", "phase2_epochs", "unfreeze")


def _check_resumable(meta: Dict[str, Any], config: TrainConfig) -> None:
    saved = meta.get("config", {})
    now = config.flat()
    changed = [f"--{name.replace('_', '-')} {_said(saved.get(name))} -> {_said(now[name])}"
               for name in RESUME_MUST_MATCH if name in saved and _said(saved[name]) != _said(now[name])]
    missing = [name for name in ("model", "head", "dataset") if name not in saved]
    if changed or missing:
        raise ResumeError(
            f"cannot resume {config.run_dir}: " + "; ".join(
                (["it was run with other options: " + ", ".join(changed)] if changed else [])
                + ([f"its checkpoint does not say {missing}"] if missing else []))
            + ". Resume with the run's own options, or start another run (--name / --out)."
        )


def _said(value) -> str:
    """A config value as compared across a resume (a saved tuple comes back as a list)."""
    return json.dumps(_jsonable(value), default=str)


_jsonable = metrics_lib.jsonable


LAYOUT = 2  # of the latest/ checkpoints: a RunState tree (opt_state with its plateau, progress) and the history


@dataclasses.dataclass
class _Clock:
    """Training time: all of it, and without the steps that compiled (throughput)."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    train_seconds: float = 0.0
    steady_seconds: float = 0.0
    steady_images: int = 0


@dataclasses.dataclass
class _Run:
    """What the stages of one :func:`fit` share."""

    config: TrainConfig
    parallel: Parallel
    model: Any
    spec: Dict[str, Any]
    builder: Any
    splits: Dict[str, Any]
    order: pipeline.TrainOrder
    phases: List[Phase]
    total_steps: int
    eval_fn: Any
    checkpoints: ckpt.RunCheckpoints
    variables: Dict[str, Any]  # the model's, between phases
    key_data: np.ndarray  # host copy: every phase's fresh state gets its own device key
    pretrained_note: Optional[str]
    resume_meta: Optional[Dict[str, Any]]  # the checkpoint to resume from, until it is restored
    step: int = 0
    progress: Progress = dataclasses.field(default_factory=Progress)
    history: List[EpochRecord] = dataclasses.field(default_factory=list)
    clock: _Clock = dataclasses.field(default_factory=_Clock)
    compiled_phase: int = 0  # the phase whose step has compiled

    @property
    def run_dir(self) -> str:
        return self.config.run_dir

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")


def fit(config: TrainConfig) -> Dict[str, Any]:
    """Train as ``config`` says; return the report (also in report.json).
    The run folder is claimed first: writable, and one writer at a time."""
    config.validate()
    if distributed.from_config(config.run):
        _log(f"{distributed.describe()}; global batch {config.optim.batch_size}, "
             f"{config.optim.batch_size // jax.process_count()} per process")
    with run_folder.claim(config.run_dir, "--out/--name", lock=distributed.is_primary(), log=_log):
        run = _start(config)
        for phase in run.phases:
            if not _train_phase(run, phase):
                break
        return _finish(run)


# -- stage 1: everything checked and prepared, nothing trained ---------------


def _start(config: TrainConfig) -> _Run:
    clock = _Clock()
    _refuse_overwrite(config)
    distributed.barrier("run folder checked")  # before process 0 makes checkpoints/ in it
    parallel = Parallel(config.run.parallel)
    if parallel.mode == "pmap" and jax.process_count() > 1:
        raise ValueError("--parallel pmap runs in one process; several processes use jit (the default)")
    note = hostmem.hugepages_note() if jax.default_backend() == "cpu" else None
    if note:
        _log(note)
    if config.optim.batch_size % parallel.count:
        raise ValueError(f"--batch-size {config.optim.batch_size} is not divisible by {parallel.count} devices")
    checkpoints = ckpt.RunCheckpoints(config.run_dir) if config.run.resume else None
    resume_meta = _resume_meta(config, checkpoints) if checkpoints else None
    # One model for init, training and evaluation: in the per-device mode its BatchNorm
    # needs the axis only where it computes batch statistics (training).
    model = build_model(config, parallel.axis_name)
    backbone, pretrained_note = _pretrained_backbone(config)  # a bad weights file stops the run before data work
    # Process 0 prepares the data set (once, into the shared data_dir); the others then find it prepared.
    builder = _prepared_data(config.data) if distributed.is_primary() else None
    distributed.barrier("data prepared")
    builder = builder or _prepared_data(config.data)
    image_size = config.data.image_size or prepare.stored_image_size(builder)
    splits = prepare.load_splits(builder, config.data.train_examples, config.data.image_size, config.data.in_memory)
    counts = prepare.check_classes(splits, data_name(config.data), LABEL_NAMES)  # before anything compiles
    _log("data: " + "; ".join(f"{split} {sum(c)} ({c[1]} fractured)" for split, c in counts.items()))
    variables = _init_variables(model, image_size, config.run.seed, backbone)
    order = pipeline.TrainOrder(len(splits["train"]), config.optim.batch_size, config.run.seed, jax.process_index(),
                                jax.process_count())
    phases = _phases(config, order.steps_per_epoch)
    total_steps = sum(p.epochs for p in phases) * order.steps_per_epoch
    if config.run.max_steps is not None:
        total_steps = min(total_steps, config.run.max_steps)
    spec = model_spec(config, image_size)
    _write_config(config, spec)
    run = _Run(
        config=config, parallel=parallel, model=model, spec=spec, builder=builder, splits=splits, order=order,
        phases=phases, total_steps=total_steps, eval_fn=_eval_fn(config, model, parallel),
        checkpoints=checkpoints or ckpt.RunCheckpoints(config.run_dir), variables=variables,
        key_data=np.asarray(jax.random.key_data(jax.random.key(config.run.seed + 1))),
        pretrained_note=pretrained_note, resume_meta=resume_meta, clock=clock,
    )
    if resume_meta is None and os.path.exists(run.metrics_path) and distributed.is_primary():
        os.remove(run.metrics_path)
    return run


def data_name(data) -> str:
    """What the run trained on, as the user named it."""
    return data.data_folder or data.data_csv or data.dataset


def _prepared_data(data):
    """The TFDS builder of ``--data-folder``/``--data-csv`` (stored at
    ``--image-size``, default 224) or of ``--dataset``, prepared once."""
    own = data.data_folder or data.data_csv
    if own:
        return prepare.from_folder(own, image_size=data.image_size or 224, data_dir=data.data_dir, log=_log)
    return prepare.prepare_dataset(data.dataset, data.data_dir, data.manual_dir, log=_log)


def _refuse_overwrite(config: TrainConfig) -> None:
    checkpoints_dir = os.path.join(config.run_dir, "checkpoints")
    if os.path.isdir(checkpoints_dir) and os.listdir(checkpoints_dir) and not config.run.resume:
        raise ResumeError(
            f"{config.run_dir} already holds checkpoints: pass --resume to continue it, or another --name / --out"
        )


def _resume_meta(config: TrainConfig, checkpoints: ckpt.RunCheckpoints) -> Optional[Dict[str, Any]]:
    """The latest checkpoint's meta, checked against ``config``; None: nothing to resume."""
    had_steps = checkpoints.latest_step() is not None
    step, meta = checkpoints.intact_latest(_log)  # damaged newer steps are said and moved aside
    if step is None and had_steps:
        raise ResumeError(f"cannot resume {config.run_dir}: none of its checkpoints is intact (they are kept in "
                          f"{os.path.join(checkpoints.directory, 'damaged')}); --resume again starts it over")
    if step is None:
        _log(f"--resume: no checkpoint in {config.run_dir}; starting from the beginning")
        return None
    if meta.get("layout") != LAYOUT:
        raise ResumeError(
            f"cannot resume {config.run_dir}: its latest checkpoint (step {step}) was written by an earlier "
            "fracjax in another layout. Its best checkpoint still loads for evaluation and inference; "
            "to train again, pass another --name or --out."
        )
    _check_resumable(meta, config)
    return meta


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
        _log("loaded the pretrained backbone weights")
    return variables


def _write_config(config: TrainConfig, spec: Dict[str, Any]) -> None:
    if not distributed.is_primary():
        return
    os.makedirs(config.run_dir, exist_ok=True)
    with open(os.path.join(config.run_dir, "config.json"), "w") as f:
        json.dump(_jsonable({"train": config.to_dict(), "model": spec}), f, indent=1, default=str)


def _eval_fn(config: TrainConfig, model, parallel: Parallel):
    return jax.jit(
        functools.partial(eval_step, apply_fn=model.apply, compute_dtype=config.model.compute_dtype),
        in_shardings=(parallel.replicated, parallel.sharded), out_shardings=parallel.sharded,
    )


def _step_config(config: TrainConfig, phase: Phase) -> StepConfig:
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


# -- stage 2: one phase ---------------------------------------------------------


def _train_phase(run: _Run, phase: Phase) -> bool:
    """Train ``phase`` (or its rest, after a resume); False: training is over."""
    if run.resume_meta is not None and run.resume_meta["phase"] > phase.number:
        return True  # done before the run was stopped
    step_config = _step_config(run.config, phase)
    train = _train_step(run.config, run.model, run.variables["params"], phase, run.steps_per_epoch, run.parallel,
                        step_config)
    if run.resume_meta is not None:
        state = _restore(run, train)
        if run.progress.budget_spent:
            return False
        if run.progress.phase_done:  # it had stopped early in this phase
            return True
    else:
        state = train.init_state(run.variables, jax.random.wrap_key_data(jnp.asarray(run.key_data)), step=run.step)
        run.progress = dataclasses.replace(run.progress, phase=phase.number, phase_done=False, bad_epochs=0)
    _log_phase(run, phase, train, step_config)
    phase_end = min(phase.first_step + phase.epochs * run.steps_per_epoch, run.total_steps)
    while run.step < phase_end:
        state = _train_epoch(run, phase, train, state)
        if run.progress.phase_done:
            break
    run.variables = state.variables
    return run.step < run.total_steps and not run.progress.budget_spent


def _log_phase(run: _Run, phase: Phase, train: TrainStep, step_config: StepConfig) -> None:
    trainable = optim.count_trainable(run.variables["params"], train.trainable)
    bn = "train" if step_config.backbone_train else "inference"
    _log(f"phase {phase.number}: {trainable:,} trainable parameters, backbone BatchNorm {bn} mode, lr {phase.lr:g}, "
         f"{phase.epochs} epoch(s) of {run.steps_per_epoch} steps, batch {run.config.optim.batch_size}, "
         f"{run.parallel.mode} on {run.parallel.count} device(s)")


def _restore(run: _Run, train: TrainStep) -> TrainState:
    """The resumed state, into this phase's optimizer tree; the run's progress and history with it."""
    # Restored replicated over this run's devices, whatever process count saved it.
    abstract = _replicated(jax.eval_shape(lambda: run.variables), run.parallel)
    train_target = _replicated({
        "opt_state": jax.eval_shape(train.tx.init, run.variables["params"]),
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "key": jax.ShapeDtypeStruct(run.key_data.shape, run.key_data.dtype),
        "progress": Progress.restore_target(),
    }, run.parallel)
    model_vars, train_vars, meta = run.checkpoints.restore_latest(run.checkpoints.latest_step(), abstract,
                                                                  train_target)
    run.variables = {"params": model_vars["params"], "batch_stats": model_vars["batch_stats"]}
    state = TrainState(step=jnp.asarray(train_vars["step"], jnp.int32), params=run.variables["params"],
                       batch_stats=run.variables["batch_stats"], opt_state=train_vars["opt_state"],
                       key=jax.random.wrap_key_data(train_vars["key"]))
    run.progress = Progress.from_tree(train_vars["progress"])
    run.history = [EpochRecord.from_json(r) for r in meta["history"]]
    run.step = int(meta["global_step"])
    # The checkpoint's history is the truth: a run killed between writing an
    # epoch's line and saving its checkpoint redoes that epoch.
    _write_metrics(run.metrics_path, history_json(run.history))
    _log(f"resumed from step {run.step} (its checksums verified)")
    run.resume_meta = None
    return run.parallel.put_state(state)


def _replicated(abstract, parallel: Parallel):
    """Abstract arrays placed replicated over the run's devices (numpy leaves
    stay numpy: Orbax restores them as numpy)."""
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated)
        if isinstance(s, jax.ShapeDtypeStruct) else s, abstract)


# -- stage 3: one epoch -----------------------------------------------------------


@dataclasses.dataclass
class _EpochTally:
    start: float
    throughput: "_Throughput"
    losses: List[float] = dataclasses.field(default_factory=list)
    correct: int = 0
    count: int = 0


def _train_epoch(run: _Run, phase: Phase, train: TrainStep, state: TrainState) -> TrainState:
    """One epoch's steps, then its validation, bookkeeping and checkpoints."""
    epoch = run.step // run.steps_per_epoch
    epoch_end = min((epoch + 1) * run.steps_per_epoch, phase.first_step + phase.epochs * run.steps_per_epoch,
                    run.total_steps)
    start = time.perf_counter()
    tally = _EpochTally(start, _Throughput(start))
    batches = pipeline.train_batches(run.splits["train"], run.order, start_step=run.step,
                                     num_steps=epoch_end - run.step)
    bar = _progress(run.config, epoch_end - run.step, f"phase {phase.number} epoch {epoch + 1}")
    for batch in batches:
        state = _one_step(run, phase, train, state, batch, tally, epoch)
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(tally.losses[-20:]):.4f}", img_s=f"{tally.throughput.rate(tally.count):.1f}")
            bar.update(1)
        if run.config.run.checkpoint_every and run.step % run.config.run.checkpoint_every == 0 and run.step < epoch_end:
            _save_latest(run, state)
    if bar is not None:
        bar.close()
    return _end_epoch(run, phase, train, state, tally, epoch)


def _one_step(run: _Run, phase: Phase, train: TrainStep, state, batch, tally: _EpochTally, epoch: int):
    first = run.compiled_phase != phase.number
    if first:
        _log(f"compiling the phase {phase.number} train step (XLA; once per phase) ...")
    state, m = train.compiled(state, run.parallel.put_batch(batch))
    m = jax.device_get(m)
    if first:
        run.compiled_phase = phase.number
        _log(f"compiled and ran the first step in {time.perf_counter() - tally.start:.1f} s")
        tally.throughput = _Throughput(time.perf_counter(), skipped=int(m["count"]))
    loss = float(m["loss"])
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"non-finite training loss ({loss}) at step {run.step + 1} (phase {phase.number}, epoch {epoch + 1}); "
            f"the last good checkpoint is step {run.checkpoints.latest_step()} in {run.checkpoints.directory}. "
            "Lower --lr, keep --grad-clip, or check the data."
        )
    run.step += 1
    tally.losses.append(loss)
    tally.correct += int(m["correct"])
    tally.count += int(m["count"])
    return state


def _end_epoch(run: _Run, phase: Phase, train: TrainStep, state, tally: _EpochTally, epoch: int):
    seconds = time.perf_counter() - tally.start
    images_per_s = tally.throughput.rate(tally.count)  # before validation: training throughput
    run.clock.train_seconds += seconds
    run.clock.steady_seconds += tally.throughput.seconds()
    run.clock.steady_images += tally.count - tally.throughput.skipped
    host = state
    _require_finite(run, host.variables, "the model's variables")
    try:
        val = evaluate_split(run.eval_fn, host.variables, run.splits["validation"], run.config, run.parallel)
    except metrics_lib.NonFiniteValuesError as err:
        raise NonFiniteLossError(f"validation after step {run.step}: {err}; nothing of this step is saved; the last "
                                 f"good checkpoint is step {run.checkpoints.latest_step()} in "
                                 f"{run.checkpoints.directory}") from None
    if train.plateau is not None:
        host = host.replace(opt_state=optim.observe_plateau(host.opt_state, train.plateau, val["loss"]))
        state = run.parallel.put_state(host)
    record = EpochRecord(
        epoch=epoch + 1, phase=phase.number, step=run.step,
        train_loss=float(np.mean(tally.losses)) if tally.losses else float("nan"),
        train_accuracy=tally.correct / max(tally.count, 1), validation=_jsonable(val),
        lr_scale=optim.plateau_scale(host.opt_state), seconds=round(seconds, 2),
        images_per_s=round(images_per_s, 2),
    )
    _record(run, record)
    improved = _track_best(run, host.variables, val)
    _log(f"epoch {epoch + 1} (phase {phase.number}): train loss {record.train_loss:.4f} acc "
         f"{record.train_accuracy:.3f} | val loss {val['loss']:.4f} acc {val['accuracy']:.3f} "
         f"auroc {val['auroc']:.4f}{' *' if improved else ''} | {record.images_per_s:.1f} img/s")
    _check_stopping(run, phase, tally.throughput.seconds())  # the budget counts validation too
    _save_latest(run, host)
    return state


def _record(run: _Run, record: EpochRecord) -> None:
    run.history.append(record)
    if not distributed.is_primary():
        return
    with open(run.metrics_path, "a") as f:
        f.write(json.dumps(_jsonable(record.to_json())) + "\n")


def _track_best(run: _Run, variables, val: Dict[str, Any]) -> bool:
    """Keep the best model by validation AUROC; True when this epoch's is it."""
    if not metrics_lib.is_better(val["auroc"], run.progress.best_auroc):
        run.progress.bad_epochs += 1
        return False
    run.progress.best_auroc, run.progress.best_step, run.progress.bad_epochs = val["auroc"], run.step, 0
    run.checkpoints.save_best(run.step, variables, _jsonable({"model": run.spec, "validation": val, "step": run.step}))
    return True


def _check_stopping(run: _Run, phase: Phase, epoch_seconds: float) -> None:
    """The training-time budget and early stopping, decided at an epoch's end."""
    progress, config = run.progress, run.config
    progress.train_seconds += epoch_seconds
    progress.budget_spent = _budget_spent(config, progress.train_seconds, epoch_seconds)
    phase_end = phase.first_step + phase.epochs * run.steps_per_epoch
    early = progress.bad_epochs >= config.optim.early_stopping_patience and run.step < phase_end
    progress.phase_done = early or progress.budget_spent
    if progress.budget_spent:
        _log(f"training budget: {progress.train_seconds / 60:.1f} of {config.optim.train_minutes:g} min spent; "
             "one more epoch would pass it, so training ends here")
    elif early:
        _log(f"early stopping: no better validation AUROC for {progress.bad_epochs} epoch(s)")
        progress.stopped_early = True


def _require_finite(run: _Run, tree, what: str) -> None:
    """Stop before a non-finite tree is saved or evaluated: a NaN model is never checkpointed or reported."""
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if np.asarray(leaf).dtype.kind == "f" and not np.isfinite(np.asarray(leaf)).all()]
    if bad:
        raise NonFiniteLossError(
            f"{what} hold NaN or infinite values after step {run.step} ({len(bad)} arrays, first {bad[0]}); "
            f"nothing of this step is saved; the last good checkpoint is step {run.checkpoints.latest_step()} "
            f"in {run.checkpoints.directory}. Lower --lr, keep --grad-clip, or check the data."
        )


def _save_latest(run: _Run, host: TrainState) -> None:
    model = host.variables
    _require_finite(run, model, "the model's variables")  # (not opt_state: a plateau's first best is inf)
    train = {"opt_state": host.opt_state, "step": host.step, "key": jax.random.key_data(host.key),
             "progress": run.progress.to_tree()}
    meta = _jsonable({"layout": LAYOUT, "global_step": run.step, "phase": run.progress.phase,
                      "history": history_json(run.history), "config": run.config.flat(),
                      "model": run.spec})
    run.checkpoints.save_latest(run.step, model, train, meta)


# -- stage 4: the report ------------------------------------------------------------


def _finish(run: _Run) -> Dict[str, Any]:
    run.checkpoints.close()
    history = history_json(run.history)
    if history and distributed.is_primary():
        figures.training_curves(history, os.path.join(run.run_dir, "curves.png"))
    report = _jsonable(_training_report(run))
    if distributed.is_primary():
        evaluation_start = time.perf_counter()
        report.update(_final_evaluation(run.run_dir, run.splits, run.config, history))
        report["timing"]["evaluation_seconds"] = round(time.perf_counter() - evaluation_start, 1)
        report["timing"]["wall_seconds"] = round(time.perf_counter() - run.clock.start, 1)
        with open(os.path.join(run.run_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        test = report["test"]
        _log(
            f"test (best checkpoint, step {report['best_step']}): accuracy {test['accuracy']:.3f}, AUROC "
            f"{_with_interval(test, 'auroc')}, sensitivity {test['sensitivity']:.3f}, specificity "
            f"{test['specificity']:.3f} -> {run.run_dir}"
        )
        for warning in report["warnings"]:
            _log(f"WARNING: {warning}")
    distributed.barrier("evaluated")  # the others wait for process 0's evaluation and report
    return report


def _training_report(run: _Run) -> Dict[str, Any]:
    config, progress, clock = run.config, run.progress, run.clock
    best = next((r for r in run.history if r.step == progress.best_step), None)
    metadata = run.builder.info.metadata
    return {
        "validation": best.validation if best else None,
        "best_step": progress.best_step,
        "stopped_early": progress.stopped_early,
        "budget": {"train_minutes": config.optim.train_minutes, "spent": progress.budget_spent}
        if config.optim.train_minutes else None,
        "model": run.spec,
        "data": {
            "dataset": data_name(config.data),
            "examples": {s: len(src) for s, src in run.splits.items()},
            "skipped": metadata.get("skipped", []) if metadata else [],
            # Which split: the data set's published one, or grouped (and by what), with the moves.
            "split": (metadata.get("split") if metadata else None) or {"kind": "published"},
        },
        "pretrained": run.pretrained_note,
        "timing": {
            "train_seconds": round(clock.train_seconds, 1),
            "train_steps": run.step,
            "train_images_per_s": round(clock.steady_images / max(clock.steady_seconds, 1e-9), 2),
        },
        "devices": f"{run.parallel.count} x {jax.devices()[0].platform}",
    }


def _with_interval(metrics: Dict[str, Any], key: str) -> str:
    return format_interval(metrics.get(key), (metrics.get("intervals") or {}).get(key), 4)


def _final_evaluation(run_dir: str, splits, config: TrainConfig, history) -> Dict[str, Any]:
    """Test metrics of the best checkpoint through the restored ``Classifier``
    (the path users take, so the numbers here are theirs), with calibration
    and report.html unless ``--no-report``."""
    e = config.evaluation
    done = evaluate_run(run_dir, splits["validation"], splits["test"], audit=e.audit, history=history,
                        report=e.report, calibrate=e.report, bootstrap=e.bootstrap, seed=config.run.seed, log=_log,
                        train=splits["train"])
    result = done["result"]
    out: Dict[str, Any] = {"test": result.metrics, "warnings": result.warnings(), "ood": result.ood}
    if result.clean is not None:
        out["clean_test"] = result.clean
    if done["calibration"] is not None:
        out["calibration"] = done["calibration"]
    if done["report"]:
        _log(f"report: {done['report']}")
    return _jsonable(out)


def _budget_spent(config: TrainConfig, spent_seconds: float, epoch_seconds: float) -> bool:
    """True when one more epoch like the last would pass ``--train-minutes``."""
    return bool(config.optim.train_minutes) and spent_seconds + epoch_seconds > 60.0 * config.optim.train_minutes


def _write_metrics(path: str, history: List[Dict[str, Any]]) -> None:
    if not distributed.is_primary():
        return
    with open(path, "w") as f:
        f.writelines(json.dumps(_jsonable(record)) + "\n" for record in history)


class _Throughput:
    """Images per second since ``start``, leaving out the ``skipped`` images
    of the step that compiled (compile time is not throughput)."""

    def __init__(self, start: float, skipped: int = 0):
        self.start, self.skipped = start, skipped

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, images: int) -> float:
        return (images - self.skipped) / max(self.seconds(), 1e-9)


def _progress(config: TrainConfig, total: int, desc: str):
    if not config.run.progress or not distributed.is_primary():
        return None
    import importlib.util

    # tqdm.auto picks widgets in a notebook and warns without ipywidgets: text bars then.
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
