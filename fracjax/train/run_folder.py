"""A run folder claimed by one writer.

Before any data or model work, :func:`claim` makes the folder, proves it is
writable (a probe file) and takes an advisory lock: ``.lock`` holds the
owner's pid, host and start time, and is made and taken over atomically
(:func:`acquire`). A second training into the same folder is
refused with the owner named; a lock left by a process that no longer runs
on this host is taken over (and said so). The lock goes when the run ends,
however it ends. A run that fails before its first checkpoint removes the
folder it made (a folder that existed is left as it was); ``--overwrite``
empties a folder of an earlier run, once it is sure the folder holds nothing
but a run's outputs.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import time
from typing import Callable, Dict, Iterator, Optional

LOCK_FILE = ".lock"
# What fit writes in a run folder (besides TensorBoard's events.out.tfevents.* files).
RUN_OUTPUTS = ("checkpoints", "config.json", "metrics.jsonl", "report.json", "report.html", "evaluation.json",
               "curves.png", "roc.png", "gradcam.png")


class RunFolderError(RuntimeError):
    """A run folder that cannot be written, or that another run is writing."""


def probe_writable(folder: str, flag: str) -> None:
    """Make ``folder`` and write and remove a file in it; raise naming ``flag`` if that fails."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-probe-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("probe")
        os.remove(probe)
    except OSError as err:
        raise RunFolderError(
            f"{flag}: cannot write in {folder} ({type(err).__name__}: {err.strerror or err})"
        ) from None


def _owner() -> Dict[str, object]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _read_owner(path: str) -> Optional[Dict[str, object]]:
    try:
        with open(path) as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None  # half-written or unreadable: treated as stale


def _alive_here(owner: Dict[str, object]) -> Optional[bool]:
    """Whether the owner still runs: True/False on this host, None when it is another host's."""
    if owner.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user
    except (KeyError, TypeError, ValueError):
        return False
    return True


def _create(path: str) -> bool:
    """Make the lock with its content in one step: written under a private name, then hard-linked
    to ``path`` (which fails if it exists), so that no reader ever sees a lock without its owner."""
    temp = f"{path}.{os.getpid()}.{time.monotonic_ns()}"
    with open(temp, "w") as f:
        json.dump(_owner(), f)
    try:
        os.link(temp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links: exclusive creation, then the content
        return _create_exclusive(path)
    finally:
        os.remove(temp)


def _create_exclusive(path: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(_owner(), f)
    return True


@contextlib.contextmanager
def _takers_one_at_a_time(folder: str) -> Iterator[None]:
    """Lock takers of ``folder`` one at a time: an flock on the folder itself, which the kernel
    lets go when its holder exits, however it exits. A stale lock is judged and removed under it,
    so two takers cannot both remove it, nor one remove the lock another has just made."""
    try:
        import fcntl

        fd = os.open(folder, os.O_RDONLY)
    except (ImportError, OSError):  # no flock here (Windows): the link still makes creation atomic
        yield
        return
    try:
        with contextlib.suppress(OSError):  # a file system without flock: as above
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # lets the flock go


def acquire(folder: str, log: Callable[[str], None] = print) -> str:
    """Take ``folder``'s lock; return the lock file's path."""
    path = os.path.join(folder, LOCK_FILE)
    with _takers_one_at_a_time(folder):
        if _create(path):
            return path
        owner = _read_owner(path) or {}
        alive = _alive_here(owner) if owner else False
        if alive is False:
            with contextlib.suppress(FileNotFoundError):  # gone already: a taker without the flock
                os.remove(path)
            if _create(path):
                log(f"took over the stale lock of {folder} (pid {owner.get('pid', '?')} no longer runs)")
                return path
            owner, alive = _read_owner(path) or {}, True  # made by a taker on a host without the flock
    where = "on this host" if alive else f"on host {owner.get('host')}"
    raise RunFolderError(
        f"{folder} is being written by another training (pid {owner.get('pid')} {where}, since "
        f"{owner.get('since')}): wait for it, or pass another --name / --out. If that process is gone, "
        f"delete {path}."
    )


def _mine(path: str) -> Optional[Dict[str, object]]:
    owner = _read_owner(path)
    return owner if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname() else None


def release(path: str) -> None:
    with _takers_one_at_a_time(os.path.dirname(path) or "."):
        if _mine(path):
            os.remove(path)


def has_checkpoint(folder: str) -> bool:
    """A finished step folder under ``checkpoints/<manager>/`` (Orbax's ``12.orbax-checkpoint-tmp-*``
    of a save cut short is not one)."""
    return any(os.path.basename(step).isdigit() for step in glob.glob(os.path.join(folder, "checkpoints", "*", "*")))


def _is_run_output(name: str) -> bool:
    return name in RUN_OUTPUTS or name.startswith("events.out.tfevents.")


def clear_run(folder: str, log: Callable[[str], None] = print) -> None:
    """Empty ``folder`` of an earlier run (``--overwrite``); refused, with nothing removed, unless
    it is a fracjax run (its ``config.json`` or ``checkpoints/``) holding only a run's outputs."""
    entries = sorted(e for e in os.listdir(folder)
                     if e != LOCK_FILE and not e.startswith((LOCK_FILE + ".", ".write-probe-")))
    if not entries:
        return
    if not ("checkpoints" in entries or _written_by_fit(os.path.join(folder, "config.json"))):
        raise RunFolderError(f"--overwrite: {folder} is not a fracjax run folder (no checkpoints/, no config.json "
                             "written by training); nothing removed")
    foreign = [e for e in entries if not _is_run_output(e)]
    if foreign:
        raise RunFolderError(f"--overwrite: {folder} also holds {', '.join(foreign)}, which training did not "
                             "write; nothing removed (move them, or pass another --name / --out)")
    for entry in entries:
        path = os.path.join(folder, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    log(f"--overwrite: removed the earlier run in {folder} ({len(entries)} entries)")


def _written_by_fit(path: str) -> bool:
    try:
        with open(path) as f:
            return "train" in json.load(f)
    except (OSError, ValueError, TypeError):
        return False


@contextlib.contextmanager
def claim(folder: str, flag: str = "--out", lock: bool = True, log: Callable[[str], None] = print) -> Iterator[None]:
    """Writable (else raise naming ``flag``) and locked for the ``with`` block; a folder made
    here is removed again when the block fails before any checkpoint is in it."""
    made = not os.path.exists(folder)
    probe_writable(folder, flag)
    path = acquire(folder, log) if lock else None
    try:
        yield
    except BaseException:
        if made and path and not has_checkpoint(folder):
            shutil.rmtree(folder, ignore_errors=True)
            log(f"removed {folder}: the run failed before its first checkpoint")
            path = None
        raise
    finally:
        if path:
            release(path)
