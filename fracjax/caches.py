"""fracjax's cache folder, and the XLA compilation cache kept in it.

Every command compiled its programs from scratch: a small training run spent
a third of its time compiling, and the same run again as long. JAX can keep
compiled programs on disk and reuse one for an identical program (same
computation, shapes, devices, jax and XLA versions, flags), so the numbers do
not change. :func:`enable_compilation_cache` turns that on, and ``import
fracjax`` calls it, so that the commands and the Python API's first compile
all share one cache:

* the folder is ``$FRACJAX_CACHE/xla`` (default ``~/.cache/fracjax/xla``),
  created readable by its owner only: JAX runs what it finds there, so the
  folder must be trusted like code;
* ``FRACJAX_XLA_CACHE=off`` (or ``0``) leaves JAX's cache alone, as does a
  cache folder already set (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config``): a user's own setting wins;
* its size is bounded (``FRACJAX_XLA_CACHE_MAX_MB``, default 2048): least
  recently used programs go first. The bound also makes JAX take a file lock
  around every read and write, so concurrent runs and several processes never
  read a half-written program (without it JAX writes entries unlocked).

:func:`compile_counts` says how many compiles came from the cache, so that
progress output can say "from the cache".
"""

from __future__ import annotations

import dataclasses
import os
import threading
from typing import Optional

DEFAULT_MAX_MB = 2048
# Every program is kept (JAX's default keeps only those that took 1 s or more): predict compiles ~60
# small ones at ~12 ms each, which read back from disk faster, and the size bound evicts what is not reused
# (benchmarks/NOTES.md, session 17: predict 6.6 -> 4.7 s warm).
MIN_COMPILE_SECONDS = 0.0
_OFF = ("0", "off", "false", "no")


def cache_root() -> str:
    """fracjax's cache folder: ``$FRACJAX_CACHE`` or ``~/.cache/fracjax``."""
    return os.path.expanduser(os.environ.get("FRACJAX_CACHE", "~/.cache/fracjax"))


def _max_bytes() -> int:
    text = os.environ.get("FRACJAX_XLA_CACHE_MAX_MB", str(DEFAULT_MAX_MB))
    try:
        megabytes = int(text)
    except ValueError:
        raise ValueError(f"FRACJAX_XLA_CACHE_MAX_MB must be a whole number of megabytes, got {text!r}") from None
    if megabytes < 1:
        raise ValueError(f"FRACJAX_XLA_CACHE_MAX_MB must be >= 1, got {megabytes} (FRACJAX_XLA_CACHE=off turns "
                         "the cache off)")
    return megabytes << 20


@dataclasses.dataclass
class CompileCounts:
    """Compiles since the process started that could use the cache, and those it served."""

    requests: int = 0
    hits: int = 0
    seconds_saved: float = 0.0


_counts = CompileCounts()
_lock = threading.Lock()
_listening = False
_folder: Optional[str] = None


def _on_event(event: str, **_) -> None:
    with _lock:
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            _counts.requests += 1
        elif event == "/jax/compilation_cache/cache_hits":
            _counts.hits += 1


def _on_duration(event: str, duration: float, **_) -> None:
    if event == "/jax/compilation_cache/compile_time_saved_sec":
        with _lock:
            _counts.seconds_saved += max(float(duration), 0.0)


def compile_counts() -> CompileCounts:
    """A copy of the counts so far (compare two to see what happened between them)."""
    with _lock:
        return dataclasses.replace(_counts)


def compilation_cache_folder() -> Optional[str]:
    """The folder fracjax's compiles are cached in, or None when fracjax did not turn the cache on."""
    return _folder


def enable_compilation_cache() -> Optional[str]:
    """Turn JAX's persistent compilation cache on in fracjax's cache folder
    (see the module doc); returns the folder, or None when it is left off."""
    global _folder, _listening
    import jax

    if not _listening:
        jax.monitoring.register_event_listener(_on_event)
        jax.monitoring.register_event_duration_secs_listener(_on_duration)
        _listening = True
    if os.environ.get("FRACJAX_XLA_CACHE", "on").strip().lower() in _OFF:
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
        return None  # the user's own cache
    folder = os.path.join(cache_root(), "xla")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError:
        return None  # a read-only home: compile as before rather than fail
    from jax.experimental.compilation_cache import compilation_cache

    jax.config.update("jax_compilation_cache_max_size", _max_bytes())
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    compilation_cache.set_cache_dir(folder)
    # JAX decides once, at its first compile, whether a cache is in use: where something compiled before
    # fracjax was imported (no cache then), make it decide again.
    compilation_cache.reset_cache()
    _folder = folder
    return folder


def cache_note(before: CompileCounts) -> str:
    """What the compiles since ``before`` took from the cache, as a note to
    append to a progress line ("" when none could use it)."""
    now = compile_counts()
    requests, hits = now.requests - before.requests, now.hits - before.hits
    if requests <= 0:
        return ""
    if hits == 0:
        return " (compiled; kept in the compilation cache for the next run)" if _folder else ""
    saved = now.seconds_saved - before.seconds_saved
    which = "from the compilation cache" if hits == requests else f"{hits} of {requests} programs from the cache"
    return f" ({which}, about {saved:.0f} s of compiling saved)"
