"""What a resume may continue, and the ``latest`` checkpoint it continues from.

A run folder with checkpoints is refused unless ``--resume``; a resumed run
must share every option declared ``resume_key`` (the model, the data, what
decides the order of steps) with the run it continues. The ``latest``
checkpoint holds one tree, :func:`saved_tree` (the train state: the model's
variables, optimizer tree, step and key; the run's
:class:`~fracjax.train.state.Progress`), and the history as JSON; it is
restored replicated over this run's devices, whatever process count saved
it. A non-finite model is never saved. (``--resume`` alone keeps the run's
model, data and schedule options, read from its ``config.json``:
:func:`fracjax.train.cli.config_from_args`.)
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fracjax import checkpoint as ckpt
from fracjax import metrics as metrics_lib
from fracjax.train.config import TrainConfig
from fracjax.train.distributed import say
from fracjax.train.errors import NonFiniteLossError, ResumeError
from fracjax.train.progress import write_metrics
from fracjax.train.run_folder import has_checkpoint
from fracjax.train.state import EpochRecord, Progress, RunState, TrainState, history_json

# Of the latest/ checkpoints: 2, a RunState tree (opt_state with its plateau, progress) and the history;
# 3, the same with the model variables in layout 2 (fracjax.models.migrate: ConvBN owns its BatchNorm);
# 4, the model and the rest of the run's state as one item, ``state``.
LAYOUT = 4
NEEDED = ("model", "head", "dataset")  # a checkpoint that does not say these cannot be checked
# Options a resume may raise (None: no limit): they only let the run train on, and are said.
EXTENDS = ("phase2_epochs", "max_steps", "early_stopping_patience", "train_minutes")


def refuse_overwrite(config: TrainConfig) -> None:
    if has_checkpoint(config.run_dir) and not config.run.resume:
        raise ResumeError(
            f"{config.run_dir} already holds checkpoints: pass --resume to continue it, --overwrite to start it "
            "afresh, or another --name / --out"
        )


def resume_meta(config: TrainConfig, checkpoints: ckpt.RunCheckpoints) -> Optional[Dict[str, Any]]:
    """The latest checkpoint's meta, checked against ``config``; None: nothing to resume."""
    had_steps = checkpoints.latest_step() is not None
    step, meta = checkpoints.intact_latest(say)  # damaged newer steps are said and moved aside
    if step is None and had_steps:
        raise ResumeError(f"cannot resume {config.run_dir}: none of its checkpoints is intact (they are kept in "
                          f"{os.path.join(checkpoints.directory, 'damaged')}); --resume again starts it over")
    if step is None:
        say(f"--resume: no checkpoint in {config.run_dir}; starting from the beginning")
        return None
    if meta.get("layout") != LAYOUT:
        raise ResumeError(
            f"cannot resume {config.run_dir}: its latest checkpoint (step {step}) was written by an earlier "
            "fracjax in another layout. Its best checkpoint still loads for evaluation and inference; "
            "to train again, pass another --name or --out."
        )
    check_resumable(meta, config)
    if meta.get("history") and not checkpoints.best.all_steps():  # an epoch ended, so a best was saved
        raise ResumeError(
            f"cannot resume {config.run_dir}: its best checkpoint ({os.path.join(checkpoints.directory, 'best')}) "
            "is gone, so the run would train on and then have no best model to evaluate and report. Put best/ "
            "back, or pass --overwrite to start the run afresh.")
    longer = extensions(meta.get("config", {}), config)
    for name, (before, after) in longer.items():
        say(f"--resume: --{_flag(name)} {_said(before)} -> {_said(after)}: the run trains on past where it "
            "would have stopped")
    return {**meta, "extensions": longer}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def extensions(saved: Dict[str, Any], config: TrainConfig) -> Dict[str, Tuple[Any, Any]]:
    """``{option: (saved, now)}`` of the options in :data:`EXTENDS` that ``config`` raises:
    they let the resumed run train longer and change nothing it has done."""
    now = config.flat()
    return {name: (saved[name], now[name]) for name in EXTENDS
            if name in saved and saved[name] != now[name]
            and (now[name] is None or (saved[name] is not None and now[name] > saved[name]))}


def reopened(progress: Progress, longer: Dict[str, Tuple[Any, Any]]) -> Progress:
    """The restored progress, its stops lifted where an extension asks for more training: more
    epochs or patience reopen a phase early stopping had closed, a larger budget one it had spent."""
    more_epochs = bool({"phase2_epochs", "early_stopping_patience", "max_steps"} & set(longer))
    return dataclasses.replace(
        progress, phase_done=progress.phase_done and not more_epochs and "train_minutes" not in longer,
        stopped_early=progress.stopped_early and not more_epochs,
        budget_spent=progress.budget_spent and "train_minutes" not in longer)


def check_resumable(meta: Dict[str, Any], config: TrainConfig) -> None:
    saved = meta.get("config", {})
    longer = extensions(saved, config)
    changed = [f"--{_flag(name)} {_said(saved.get(name))} -> {_said(value)}"
               for name, value in config.resume_keys().items()
               if name in saved and _said(saved[name]) != _said(value) and name not in longer]
    missing = [name for name in NEEDED if name not in saved]
    if changed or missing:
        raise ResumeError(
            f"cannot resume {config.run_dir}: " + "; ".join(
                (["it was run with other options: " + ", ".join(changed)] if changed else [])
                + ([f"its checkpoint does not say {missing}"] if missing else []))
            + ". Resume with the run's own options, or start another run (--name / --out)."
        )


def _said(value) -> str:
    """A config value as compared across a resume (a saved tuple comes back as a list)."""
    return json.dumps(metrics_lib.jsonable(value), default=str)


def saved_tree(run: RunState, state: TrainState) -> Dict[str, Any]:
    """The one tree a ``latest`` checkpoint holds (the key as its raw data)."""
    return {"model": state.variables, "opt_state": state.opt_state, "step": state.step,
            "key": jax.random.key_data(state.key), "progress": run.progress.to_tree()}


def _abstract_tree(ctx, run: RunState, tx) -> Dict[str, Any]:
    """What :func:`saved_tree` gives for ``run`` in a phase optimised by
    ``tx``, as abstract arrays placed over this run's devices."""
    def device_part():
        return {"model": run.variables, "opt_state": tx.init(run.variables["params"]),
                "step": jnp.zeros((), jnp.int32), "key": jnp.zeros(ctx.key_data.shape, ctx.key_data.dtype)}

    return {**_placed(jax.eval_shape(device_part), ctx.parallel.replicated),
            "progress": Progress.restore_target()}  # host float64, not traced


def restore(ctx, run: RunState, tx) -> Tuple[RunState, TrainState]:
    """The resumed run and its train state, into this phase's optimizer (``tx``) tree."""
    saved, meta = ctx.checkpoints.restore_latest(ctx.checkpoints.latest_step(), _abstract_tree(ctx, run, tx))
    variables = {"params": saved["model"]["params"], "batch_stats": saved["model"]["batch_stats"]}
    state = TrainState(step=jnp.asarray(saved["step"], jnp.int32), params=variables["params"],
                       batch_stats=variables["batch_stats"], opt_state=saved["opt_state"],
                       key=jax.random.wrap_key_data(saved["key"]))
    history = tuple(EpochRecord.from_json(r) for r in meta["history"])
    longer = (ctx.resume_meta or {}).get("extensions", {})
    run = RunState(variables=variables, step=int(meta["global_step"]),
                   progress=reopened(Progress.from_tree(saved["progress"]), longer), history=history)
    # The checkpoint's history is the truth: a run killed between writing an
    # epoch's line and saving its checkpoint redoes that epoch.
    write_metrics(ctx.metrics_path, history_json(history))
    say(f"resumed from step {run.step} (its checksums verified)")
    return run, ctx.parallel.put_state(state)


def _placed(abstract, sharding):
    """Abstract arrays placed with ``sharding`` (numpy leaves stay numpy: Orbax restores them as numpy)."""
    return jax.tree_util.tree_map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding)
        if isinstance(s, jax.ShapeDtypeStruct) else s, abstract)


@jax.jit
def _all_finite(tree) -> jax.Array:
    """One boolean: every floating-point leaf finite (one reduction on the device, one scalar fetched)."""
    checks = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(leaf), jnp.floating)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def require_finite(ctx, step: int, tree, what: str) -> None:
    """Stop before a non-finite tree is saved or evaluated: a NaN model is never checkpointed or reported."""
    if bool(_all_finite(tree)):
        return
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if np.asarray(leaf).dtype.kind == "f" and not np.isfinite(np.asarray(leaf)).all()]
    raise NonFiniteLossError(
        f"{what} hold NaN or infinite values after step {step} ({len(bad)} arrays, first {bad[0]}); "
        f"nothing of this step is saved; the last good checkpoint is step {ctx.checkpoints.latest_step()} "
        f"in {ctx.checkpoints.directory}. Lower --lr, keep --grad-clip, or check the data."
    )


def save_latest(ctx, run: RunState, state: TrainState) -> None:
    """The ``latest`` checkpoint of ``run`` at its step (the model checked finite first)."""
    # The model only: opt_state holds reduce-on-plateau's best, which is inf until its first epoch.
    require_finite(ctx, run.step, state.variables, "the model's variables")
    meta = metrics_lib.jsonable({"layout": LAYOUT, "global_step": run.step, "phase": run.progress.phase,
                                 "history": history_json(run.history), "config": ctx.config.flat(),
                                 "model": ctx.spec})
    # A resume continues from this step: what was logged up to it must be on disk before the step
    # exists (flushed after it, a kill in between lost those steps' losses; a kill before the save
    # is no loss: the resume from the step before purges and logs them again).
    ctx.events.flush()
    ctx.checkpoints.save_latest(run.step, saved_tree(run, state), meta)
