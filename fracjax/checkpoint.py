"""Orbax checkpoints of a training run.

Two managers under ``<run>/checkpoints/``:

* ``latest/``: for ``--resume``; items ``state`` (the run's state as one
  tree: ``model`` (params + batch_stats), optimizer state, step, PRNG key,
  progress) and ``meta`` (JSON: the phase, the history, the config). The
  optimizer state's tree changes between phases: restoring needs the
  phase's optimizer to build the target, and ``meta`` says which phase.
* ``best/``: the best model by validation AUROC: ``model`` and ``meta`` only
  (inference needs no optimizer state).

Saves are synchronous and atomic (Orbax writes a temporary folder and renames
it when complete), so a run killed at any moment, even during a save, leaves
only whole checkpoints; leftovers are removed when the managers open.

Every saved array tree has a checksum in its step's ``meta``
(:func:`tree_checksum`); restores verify it, so bit rot, a partial copy or
an edited file is a :class:`CheckpointCorruptError` naming the step folder,
never silently different weights. A step's meta says ``checksummed``; a step without
it and without checksums is the old layout (before checksums) and is read unverified;
any other step without its checksum is refused. ``--resume`` falls back to the newest
intact step (:meth:`RunCheckpoints.intact_latest`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

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


class CheckpointCorruptError(RuntimeError):
    """A checkpoint step that cannot be restored or whose arrays do not match
    the checksum saved with them."""


def tree_checksum(tree) -> str:
    """SHA-256 over every array's dtype, shape and bytes. The leaves' digests
    are sorted, so the sum does not depend on how the tree's containers come
    back (a restore without a target gives dicts for optax's named tuples)."""
    digests = []
    for leaf in jax.tree_util.tree_leaves(tree):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
        digests.append(digest.hexdigest())
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


def verify(trees: Dict[str, Any], meta: Dict[str, Any], where: str) -> None:
    """Raise CheckpointCorruptError unless each tree matches its saved checksum. Only the old
    layout (a ``meta`` with neither ``checksummed`` nor ``checksums``: fracjax before checksums)
    passes without one; a newer step whose checksum was removed is refused."""
    meta = meta or {}
    saved = meta.get("checksums") or {}
    for item, tree in trees.items():
        if item not in saved and ("checksummed" in meta or "checksums" in meta):
            raise CheckpointCorruptError(f"{where}: no checksum of its {item} arrays in its meta, though its layout "
                                         "writes one (edited or damaged)")
        if item in saved and tree_checksum(tree) != saved[item]:
            raise CheckpointCorruptError(
                f"{where}: the {item} arrays do not match the checksum saved with them (a damaged or partly "
                "copied checkpoint)"
            )


@contextlib.contextmanager
def _restoring(where: str):
    """Any failure inside a restore (Orbax and tensorstore raise many kinds),
    as a CheckpointCorruptError naming the step folder."""
    try:
        yield
    except (CheckpointCorruptError, MemoryError):
        raise
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointCorruptError(f"{where}: cannot be restored ({type(err).__name__}: {first_line[:300]})") from err


class RunCheckpoints:
    def __init__(self, run_dir: str, keep: int = 2):
        self.directory = os.path.join(run_dir, "checkpoints")
        self.latest = _manager(os.path.join(self.directory, "latest"), ("state", "meta"), keep)
        self.best = _manager(os.path.join(self.directory, "best"), ("model", "meta"), 1)

    # -- saving -------------------------------------------------------------

    def save_latest(self, step: int, state: Dict[str, Any], meta: Dict[str, Any]) -> None:
        """``state``: the run's state, a tree of arrays whose ``model`` holds
        params and batch_stats; ``meta``: JSON."""
        state = _host(state)
        meta = {**meta, "checksummed": True, "checksums": {"state": tree_checksum(state)}}
        self.latest.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)), force=True)
        self.latest.wait_until_finished()

    def save_best(self, step: int, variables, meta: Dict[str, Any]) -> None:
        model = _host({"params": variables["params"], "batch_stats": variables["batch_stats"]})
        meta = {**meta, "checksummed": True, "checksums": {"model": tree_checksum(model)}}
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

    def restore_latest(self, step: int, target) -> Tuple[Any, Dict[str, Any]]:
        """(state, meta) of ``step``, restored against an abstract target (a
        ``jax.eval_shape`` tree) and verified against its checksum."""
        where = self.step_folder("latest", step)
        with _restoring(where):
            restored = self.latest.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        verify({"state": restored["state"]}, restored["meta"], where)
        return restored["state"], restored["meta"]

    def step_folder(self, manager: str, step: int) -> str:
        return os.path.join(self.directory, manager, str(step))

    def intact_latest(self, log: Callable[[str], None] = print) -> Tuple[Optional[int], Optional[Dict[str, Any]]]:
        """(step, meta) of the newest ``latest`` step that restores and
        matches its checksums, or (None, None). Newer damaged steps are said,
        moved aside to ``checkpoints/damaged/`` (kept, not deleted) and so
        never resumed from or overwritten."""
        for step in sorted(self.latest.all_steps(), reverse=True):
            where = self.step_folder("latest", step)
            try:
                with _restoring(where):
                    meta = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                    if "state" not in (meta.get("checksums") or {}) and "checksummed" not in meta:
                        return step, meta  # another layout's items: whoever resumes refuses it by its layout
                    state = self.latest.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore()))["state"]
                verify({"state": state}, meta, where)
                return step, meta
            except CheckpointCorruptError as err:
                moved = self._move_aside("latest", step)
                log(f"--resume: {err}; moved it to {moved} and trying the step before")
        return None, None

    def _move_aside(self, manager: str, step: int) -> str:
        target = os.path.join(self.directory, "damaged", f"{manager}-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
        if jax.process_index() == 0:  # one mover; every process of a run found the same damage
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(self.step_folder(manager, step), target)
        if jax.process_count() > 1:
            from orbax.checkpoint import multihost

            multihost.sync_global_processes(f"fracjax:moved {manager}-{step} aside")
        getattr(self, manager).reload()
        return target

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
    if name.isdigit() and any(os.path.isdir(os.path.join(path, item)) for item in ("model", "state")):
        return parent, int(name)
    raise FileNotFoundError(
        f"no {which} checkpoint under {path}: expected a run folder (with checkpoints/{which}/<step>) "
        "or a checkpoint folder"
    )


def _this_process() -> ocp.options.MultiprocessingOptions:
    """Orbax options for a restore that one process makes on its own (the
    end-of-run evaluation on process 0, inference): its barriers include
    only this process, so the others are never waited for."""
    me = jax.process_index()
    if jax.process_count() == 1:
        return ocp.options.MultiprocessingOptions()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me},
                                              barrier_sync_key_prefix=f"fracjax-process-{me}")


def restore_model(folder: str, step: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(variables, meta) of one step of a ``best`` or ``latest`` folder,
    verified against its checksum; from a ``latest`` step, its run state's
    ``model`` (the optimizer state is read, then dropped)."""
    where = os.path.join(folder, str(step))
    item = "state" if os.path.isdir(os.path.join(where, "state")) else "model"
    with _restoring(where):
        manager = ocp.CheckpointManager(
            folder,
            options=ocp.CheckpointManagerOptions(read_only=True, create=False, multiprocessing_options=_this_process()),
            item_handlers={item: ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()},
        )
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                **{item: ocp.args.StandardRestore(), "meta": ocp.args.JsonRestore()}))
        finally:
            manager.close()
    verify({item: restored[item]}, restored["meta"], where)
    variables = restored[item]["model"] if item == "state" else restored[item]
    return variables, restored["meta"]


# -- files beside a checkpoint's variables, in its step folder -------------------------------------

CALIBRATION_FILE = "calibration.json"  # temperature and operating points fitted on validation
WARNINGS_FILE = "warnings.json"  # what the run's evaluation warned of: it travels with the model


def _write_json_atomically(path: str, value) -> str:
    """A killed run leaves the old file or the new one, never half of one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)
    return path


def read_calibration(step_folder: str) -> Optional[Dict[str, Any]]:
    """The calibration saved inside a checkpoint's step folder, if any: checked against the checksum
    written with it (files from before checksums have none) and in range, else CheckpointCorruptError."""
    path = os.path.join(step_folder, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            calibration = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointCorruptError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(calibration, dict):
        raise CheckpointCorruptError(f"{path}: not a calibration (a JSON object)")
    saved = calibration.pop("checksum", None)
    if saved is not None and saved != _json_checksum(calibration):
        raise CheckpointCorruptError(f"{path}: does not match the checksum written with it (edited or damaged)")
    _check_calibration(calibration, path)
    return calibration


def _check_calibration(calibration: Dict[str, Any], path: str) -> None:
    temperature = calibration.get("temperature")
    if not (_is_real(temperature) and 0 < temperature < float("inf")):
        raise CheckpointCorruptError(f"{path}: temperature {temperature!r} is not a finite number above 0")
    points = calibration.get("operating_points", {})
    if not isinstance(points, dict):
        raise CheckpointCorruptError(f"{path}: operating_points is not a mapping of names to thresholds")
    for name, threshold in points.items():
        if not (_is_real(threshold) and 0.0 <= threshold <= 1.0):
            raise CheckpointCorruptError(f"{path}: operating point {name!r} {threshold!r} is not a probability "
                                         "threshold in [0, 1]")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _json_checksum(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def write_calibration(step_folder: str, calibration: Dict[str, Any]) -> str:
    path = os.path.join(step_folder, CALIBRATION_FILE)
    _check_calibration(calibration, path)  # never write what reading would refuse
    return _write_json_atomically(path, {**calibration, "checksum": _json_checksum(calibration)})


def read_run_warnings(step_folder: str) -> List[str]:
    """The warnings saved with a checkpoint (none for one never evaluated)."""
    path = os.path.join(step_folder, WARNINGS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or not all(isinstance(w, str) for w in saved.get("warnings", [])):
        raise CheckpointCorruptError(f"{path}: not a list of warnings")
    return list(saved.get("warnings", []))


def write_run_warnings(step_folder: str, warnings: List[str]) -> str:
    return _write_json_atomically(os.path.join(step_folder, WARNINGS_FILE), {"warnings": list(warnings)})


OOD_FILE = "ood.npz"  # the OOD detector's arrays (fracjax.ood), fitted at the end of a run


def read_ood(step_folder: str) -> Optional[Dict[str, np.ndarray]]:
    """The OOD detector's arrays saved in a checkpoint's step folder, if any (never pickles)."""
    path = os.path.join(step_folder, OOD_FILE)
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            detector = {name: np.asarray(saved[name]) for name in saved.files}
    except (OSError, ValueError) as err:
        raise CheckpointCorruptError(f"{path}: not a readable OOD detector ({err})") from None
    unusable = [name for name, a in detector.items() if a.dtype.kind not in "iuf" or not np.all(np.isfinite(a))]
    if unusable:
        raise CheckpointCorruptError(f"{path}: {', '.join(unusable)} not finite numbers: not a usable OOD detector")
    return detector


def write_ood(step_folder: str, detector: Dict[str, np.ndarray]) -> str:
    path = os.path.join(step_folder, OOD_FILE)
    tmp = path + ".tmp.npz"
    np.savez(tmp, **{name: np.asarray(value) for name, value in detector.items()})
    os.replace(tmp, path)
    return path
