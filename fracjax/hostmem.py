"""Host memory settings for XLA:CPU, applied by fracjax's scripts.

XLA:CPU allocates each call's scratch memory afresh (for the hybrid model's
train step, one buffer of hundreds of MB) and frees it when the call ends. The
step runs on an XLA worker thread, whose glibc malloc arena cannot hold a
buffer that large, so glibc maps it with ``mmap`` and unmaps it each time: the
kernel then zero-fills every fresh 4 KiB page on each step. With glibc's
``glibc.malloc.hugetlb=1`` tunable, malloc asks for transparent huge pages on
such mappings (2 MiB pages, 512x fewer faults); benchmarks/NOTES.md has the
measurements. Glibc reads its tunables once, when the process starts, so a
script that wants them re-executes itself with the variable set
(:func:`reexec_with_malloc_hugepages`). Only launchers do that
(``examples/*.py``, the benchmarks): importing fracjax or calling ``fit``
never re-executes anything. Where a process runs without it (a notebook,
``python -m fracjax.train``), ``fit`` prints :func:`hugepages_note`; in a
notebook, start Jupyter with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Optional

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "FRACJAX_NO_HUGEPAGES"  # set to 1 to keep the process as started
_REEXEC_MARK = "FRACJAX_HUGEPAGES_REEXEC"
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return ()
    try:
        return tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return ()


def malloc_hugepages_available(thp_mode_path: str = _THP_MODE) -> bool:
    """Linux, glibc >= 2.35 (which has the tunable), and transparent huge
    pages enabled as "always" or "madvise"."""
    if not sys.platform.startswith("linux") or _glibc_version() < (2, 35):
        return False
    try:
        with open(thp_mode_path) as f:
            mode = f.read()
    except OSError:
        return False
    return "[always]" in mode or "[madvise]" in mode


def malloc_hugepages_enabled(environ=None) -> bool:
    environ = os.environ if environ is None else environ
    return HUGEPAGE_TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def hugepage_environ(environ=None) -> dict:
    """A copy of ``environ`` with the tunable added to ``GLIBC_TUNABLES``
    (other tunables kept)."""
    env = dict(os.environ if environ is None else environ)
    tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    env["GLIBC_TUNABLES"] = ":".join([*tunables, HUGEPAGE_TUNABLE])
    env[_REEXEC_MARK] = "1"
    return env


def reexec_with_malloc_hugepages() -> None:
    """Replace this process with the same command run under
    ``GLIBC_TUNABLES=...glibc.malloc.hugetlb=1``, where that helps and has not
    been done; otherwise return. Call it first thing in a script's
    ``__main__`` block (nothing is lost: the process has done nothing yet).
    ``FRACJAX_NO_HUGEPAGES=1`` turns it off."""
    if (os.environ.get(OPT_OUT_ENV, "") not in ("", "0") or os.environ.get(_REEXEC_MARK)
            or malloc_hugepages_enabled() or not malloc_hugepages_available()):
        return
    argv = [sys.executable, *getattr(sys, "orig_argv", [sys.executable, *sys.argv])[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, hugepage_environ())


def hugepages_note(environ=None, available: Optional[bool] = None) -> Optional[str]:
    """One line for a process that could put XLA:CPU's scratch memory on huge
    pages and does not (None where it does, cannot, or opted out)."""
    environ = os.environ if environ is None else environ
    available = malloc_hugepages_available() if available is None else available
    if not available or malloc_hugepages_enabled(environ) or environ.get(OPT_OUT_ENV, "") not in ("", "0"):
        return None
    return (f"note: malloc is not on huge pages, so the CPU train step runs slower (benchmarks/NOTES.md); "
            f"start Python or Jupyter with GLIBC_TUNABLES={HUGEPAGE_TUNABLE} ({OPT_OUT_ENV}=1 silences this)")
