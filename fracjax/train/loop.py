"""``fit(config)``: two-phase transfer learning from data preparation to the
test report.

Phase 1 trains the head with the backbone frozen (masked optimizer, backbone
BatchNorm on running statistics); phase 2 fine-tunes the backbone (all of it
or its top groups) with its own learning rate and a fresh optimizer state.
Every epoch ends with a validation pass over every example, early stopping
on validation AUROC, and checkpoints (latest for ``resume``, best by AUROC).
The run folder gets ``config.json``, ``metrics.jsonl``, ``report.json`` and
``curves.png``.

The trainer is a sequence of stages over a frozen
:class:`~fracjax.train.context.RunContext`: :func:`context.start` (everything
checked and prepared), a phase, its epochs, their steps, and
:func:`run_end.finish` (the report). Each stage takes a
:class:`~fracjax.train.state.RunState` (and the device's ``TrainState``) and
returns the next; none changes what it was given.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fracjax import caches
from fracjax import metrics as metrics_lib
from fracjax.data import array_folder, pipeline
from fracjax.evaluation.device_predict import evaluate_source
from fracjax.train import context, distributed, event_log, optim, resume, run_end, run_folder
from fracjax.train.config import TrainConfig
from fracjax.train.context import Phase, RunContext
from fracjax.train.distributed import say
from fracjax.train.errors import NonFiniteLossError
from fracjax.train.progress import EpochTally, Throughput, append_record, budget_spent, progress_bar, restart_clock
from fracjax.train.state import EpochRecord, Progress, RunState, TrainState
from fracjax.train.steps import StepConfig, TrainStep


def fit(config: TrainConfig, data=None, validation=None, test=None) -> Dict[str, Any]:
    """Train as ``config`` says; return the report (also in report.json).
    The run folder is claimed first: writable, and one writer at a time.

    ``data=(images, labels)`` (and ``validation=``, ``test=``): arrays from a notebook (uint8, wider
    integers or floats; grey or RGB; any size, a list where sizes differ; labels 0/1), trained on as
    a data folder of them is (:mod:`fracjax.data.array_folder`: same decoding, checks and splits)."""
    config.validate()
    if data is not None:
        config = _with_arrays(config, data, validation, test)
    elif validation is not None or test is not None:
        raise ValueError("validation= and test= go with data=(images, labels)")
    if distributed.from_config(config.run):
        say(f"{distributed.describe()}; global batch {config.optim.batch_size}, "
            f"{config.optim.batch_size // jax.process_count()} per process")
    with run_folder.claim(config.run_dir, "--out/--name", lock=distributed.is_primary(), log=say):
        ctx, run = context.start(config)
        try:
            resuming = ctx.resume_meta
            for phase in ctx.phases:
                if resuming is not None and resuming["phase"] > phase.number:
                    continue  # done before the run was stopped
                run, more = train_phase(ctx, run, phase, resuming=resuming is not None)
                resuming = None
                if not more:
                    break
            report = run_end.finish(ctx, run)
        except BaseException:
            ctx.events.close(failed=True)  # what was logged before the failure stays readable
            raise
        ctx.events.close()
        return report


def _with_arrays(config: TrainConfig, data, validation, test) -> TrainConfig:
    own = config.data.data_folder or config.data.data_csv
    if own or config.data.dataset != TrainConfig().data.dataset:
        raise ValueError(f"data= replaces the data set; the config names one too ({own or config.data.dataset})")
    if config.run.distributed or (config.run.num_processes or 1) > 1:
        raise ValueError("data= is for one process; several processes read a --data-folder")
    folder = array_folder.write_array_folder(data, validation, test, seed=config.run.seed)
    say(f"data: the arrays, as PNG files in {folder}")
    return config.replace(data_folder=folder).validate()


def train_phase(ctx: RunContext, run: RunState, phase: Phase, resuming: bool = False) -> Tuple[RunState, bool]:
    """``phase`` trained (or its rest, restored from the latest checkpoint when
    ``resuming``); the run after it, and whether training goes on."""
    step_config = context.step_config(ctx.config, phase)
    train = context.train_step(ctx, run.variables["params"], phase, step_config)
    if resuming:
        run, state = resume.restore(ctx, run, train.tx)
        _say_schedule_change(ctx, run, ctx.resume_meta.get("extensions", {}))
        if run.progress.budget_spent:
            return run, False
        if run.progress.phase_done:  # it had stopped early in this phase
            return run, True
    else:
        state = train.init_state(run.variables, jax.random.wrap_key_data(jnp.asarray(ctx.key_data)), step=run.step)
        run = dataclasses.replace(run, progress=dataclasses.replace(run.progress, phase=phase.number,
                                                                    phase_done=False, bad_epochs=0))
    _log_phase(ctx, run, phase, train, step_config)
    started_at = run.step  # this process compiles the phase's step at its first step here
    while run.step < ctx.phase_end(phase):
        run, state = train_epoch(ctx, run, phase, train, state, started_at)
        if run.progress.phase_done:
            break
    run = dataclasses.replace(run, variables=state.variables)
    return run, run.step < ctx.total_steps and not run.progress.budget_spent


def _say_schedule_change(ctx: RunContext, run: RunState, longer: Dict[str, Tuple[Any, Any]]) -> None:
    """What more phase-2 epochs do to its cosine schedule from the resumed step: a longer decay."""
    if "phase2_epochs" not in longer or run.progress.phase != 2 or ctx.config.optim.schedule != "cosine":
        return
    phase = next(p for p in ctx.phases if p.number == 2)
    shorter = dataclasses.replace(phase, epochs=longer["phase2_epochs"][0])
    at = run.step - phase.first_step
    before, after = (float(context.phase_schedule(ctx, p)(at)) for p in (shorter, phase))
    say(f"--resume: phase 2's cosine schedule now decays over {phase.epochs} epochs, not {shorter.epochs}: at step "
        f"{run.step} the learning rate is {after:.3g}, not {before:.3g}, so this run will not give the numbers of "
        f"an uninterrupted {phase.epochs}-epoch run")


def _log_phase(ctx: RunContext, run: RunState, phase: Phase, train: TrainStep, step_config: StepConfig) -> None:
    trainable = optim.count_trainable(run.variables["params"], train.trainable)
    bn = "train" if step_config.backbone_train else "inference"
    say(f"phase {phase.number}: {trainable:,} trainable parameters, backbone BatchNorm {bn} mode, lr {phase.lr:g}, "
        f"{phase.epochs} epoch(s) of {ctx.steps_per_epoch} steps, batch {ctx.config.optim.batch_size}, "
        f"{ctx.parallel.mode} on {ctx.parallel.count} device(s)")


def train_epoch(ctx: RunContext, run: RunState, phase: Phase, train: TrainStep, state: TrainState,
                started_at: int) -> Tuple[RunState, TrainState]:
    """One epoch's steps (or the rest of it), then its validation, bookkeeping
    and checkpoints. The steps are dispatched without waiting for one another:
    their metrics stay on the device until fetched, every ``--log-every``
    steps, before a checkpoint and at the epoch's end (:func:`_collect`), and
    each batch is placed on the device one step ahead."""
    epoch = run.step // ctx.steps_per_epoch
    epoch_end = min((epoch + 1) * ctx.steps_per_epoch, ctx.phase_end(phase))
    start = time.perf_counter()
    tally = EpochTally(start, Throughput(start))
    batches = pipeline.train_batches(ctx.splits["train"], ctx.order, start_step=run.step,
                                     num_steps=epoch_end - run.step)
    bar = progress_bar(ctx.config.run.progress, epoch_end - run.step, f"phase {phase.number} epoch {epoch + 1}")
    every, fetch_every = ctx.config.run.checkpoint_every, ctx.config.run.log_every
    pending = []  # the metrics of steps not fetched yet, still on the device
    for batch in ctx.parallel.ahead(batches):
        compiles = None
        if run.step == started_at:  # this process compiles the phase's step now
            say(f"compiling the phase {phase.number} train step (XLA; once per phase) ...")
            compiles = caches.compile_counts()
        state, metrics = train.compiled(state, batch)
        run = dataclasses.replace(run, step=run.step + 1)
        pending.append(metrics)
        checkpoint = every and run.step % every == 0 and run.step < epoch_end
        if compiles is not None or checkpoint or len(pending) >= fetch_every:
            _collect(ctx, run, phase, pending, tally, bar, compiles)
            pending = []
        if checkpoint:
            resume.save_latest(ctx, run, state)
    _collect(ctx, run, phase, pending, tally, bar)
    if bar is not None:
        bar.close()
    return _end_epoch(ctx, run, phase, train, state, tally, epoch)


def _collect(ctx: RunContext, run: RunState, phase: Phase, pending, tally: EpochTally, bar,
             compiles: Optional[caches.CompileCounts] = None) -> None:
    """The metrics of the ``pending`` steps (the last of which is ``run.step``)
    fetched in one transfer into the epoch's tally; a non-finite loss stops
    the run naming its step (nothing was saved since: every save collects
    first). ``compiles``: the counts before the phase's first step, which
    this fetch waited for (it is said, and left out of the throughput)."""
    if not pending:
        return
    first = run.step - len(pending) + 1
    for step, metrics in enumerate(jax.device_get(pending), start=first):
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss}) at step {step} (phase {phase.number}, epoch "
                f"{(step - 1) // ctx.steps_per_epoch + 1}); the last good checkpoint is step "
                f"{ctx.checkpoints.latest_step()} in {ctx.checkpoints.directory}. Lower --lr, keep --grad-clip, "
                "or check the data."
            )
        tally.losses.append(loss)
        tally.correct += int(metrics["correct"])
        tally.count += int(metrics["count"])
    ctx.events.step_losses(tally.losses[-len(pending):], run.step)
    if compiles is not None:
        say(f"compiled and ran the first step in {time.perf_counter() - tally.start:.1f} s"
            f"{caches.cache_note(compiles)}")
        tally.throughput = Throughput(time.perf_counter(), skipped=tally.count)
    if bar is not None:
        bar.set_postfix(loss=f"{np.mean(tally.losses[-20:]):.4f}", img_s=f"{tally.throughput.rate(tally.count):.1f}")
        bar.update(len(pending))
        if compiles is not None:
            restart_clock(bar)  # the time left is estimated from the steps after the compile


def _end_epoch(ctx: RunContext, run: RunState, phase: Phase, train: TrainStep, state: TrainState,
               tally: EpochTally, epoch: int) -> Tuple[RunState, TrainState]:
    seconds = time.perf_counter() - tally.start
    images_per_s = tally.throughput.rate(tally.count)  # before validation: training throughput
    ctx.clock.train_seconds += seconds
    ctx.clock.steady_seconds += tally.throughput.seconds()
    ctx.clock.steady_images += tally.count - tally.throughput.skipped
    val = _validate(ctx, run, state)
    if train.plateau is not None:
        state = ctx.parallel.put_state(
            state.replace(opt_state=optim.observe_plateau(state.opt_state, train.plateau, val["loss"])))
    record = EpochRecord(
        epoch=epoch + 1, phase=phase.number, step=run.step,
        train_loss=float(np.mean(tally.losses)) if tally.losses else float("nan"),
        train_accuracy=tally.correct / max(tally.count, 1), validation=metrics_lib.jsonable(val),
        lr_scale=optim.plateau_scale(state.opt_state), seconds=round(seconds, 2),
        images_per_s=round(images_per_s, 2),
    )
    run = dataclasses.replace(run, history=run.history + (record,))
    append_record(ctx.metrics_path, record.to_json())
    _log_events(ctx, run, phase, record, tally)
    progress, improved = _track_best(ctx, run, state.variables, val)
    say(f"epoch {epoch + 1} (phase {phase.number}): train loss {record.train_loss:.4f} acc "
        f"{record.train_accuracy:.3f} | val loss {val['loss']:.4f} acc {val['accuracy']:.3f} "
        f"auroc {val['auroc']:.4f}{' *' if improved else ''} | {record.images_per_s:.1f} img/s")
    # The budget counts validation too.
    run = dataclasses.replace(run, progress=_check_stopping(ctx, run.step, progress, phase, tally.throughput.seconds()))
    resume.save_latest(ctx, run, state)
    return run, state


def _log_events(ctx: RunContext, run: RunState, phase: Phase, record: EpochRecord, tally: EpochTally) -> None:
    """The epoch's values in TensorBoard (and MLflow), at its last step (its steps' losses went as fetched)."""
    learning_rate = float(context.phase_schedule(ctx, phase)(run.step - phase.first_step)) * record.lr_scale
    ctx.events.scalars({"train/loss": record.train_loss, "train/accuracy": record.train_accuracy,
                        "train/learning_rate": learning_rate, "train/images_per_s": record.images_per_s,
                        "train/phase": phase.number,
                        **event_log.flat_metrics("validation", record.validation)}, run.step)


def _validate(ctx: RunContext, run: RunState, state: TrainState) -> Dict[str, Any]:
    """The validation metrics of the model after this epoch (checked finite first)."""
    resume.require_finite(ctx, run.step, state.variables, "the model's variables")
    try:
        return evaluate_source(ctx.eval_fn, state.variables, ctx.splits["validation"], ctx.eval_batch(),
                               ctx.config.evaluation.threshold, ctx.parallel.sharded)
    except metrics_lib.NonFiniteValuesError as err:
        raise NonFiniteLossError(f"validation after step {run.step}: {err}; nothing of this step is saved; the last "
                                 f"good checkpoint is step {ctx.checkpoints.latest_step()} in "
                                 f"{ctx.checkpoints.directory}") from None


def _track_best(ctx: RunContext, run: RunState, variables, val: Dict[str, Any]) -> Tuple[Progress, bool]:
    """The progress after this epoch's validation, and whether its model is the best (then saved as such)."""
    progress = run.progress
    if not metrics_lib.is_better(val["auroc"], progress.best_auroc):
        return dataclasses.replace(progress, bad_epochs=progress.bad_epochs + 1), False
    meta = metrics_lib.jsonable({"model": ctx.spec, "validation": val, "step": run.step})
    ctx.checkpoints.save_best(run.step, variables, meta)
    return dataclasses.replace(progress, best_auroc=val["auroc"], best_step=run.step, bad_epochs=0), True


def _check_stopping(ctx: RunContext, step: int, progress: Progress, phase: Phase, epoch_seconds: float) -> Progress:
    """The training-time budget and early stopping, decided at an epoch's end."""
    optim_config = ctx.config.optim
    train_seconds = progress.train_seconds + epoch_seconds
    spent = budget_spent(optim_config.train_minutes, train_seconds, epoch_seconds)
    early = (progress.bad_epochs >= optim_config.early_stopping_patience
             and step < phase.first_step + phase.epochs * ctx.steps_per_epoch)
    if spent:
        say(f"training budget: {train_seconds / 60:.1f} of {optim_config.train_minutes:g} min spent; "
            "one more epoch would pass it, so training ends here")
    elif early:
        say(f"early stopping: no better validation AUROC for {progress.bad_epochs} epoch(s)")
    return dataclasses.replace(progress, train_seconds=train_seconds, budget_spent=spent, phase_done=early or spent,
                               stopped_early=progress.stopped_early or (early and not spent))
