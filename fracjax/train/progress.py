"""A run's host-side accounting, none of it checkpointed: the clock and the
throughput (compile time left out), one epoch's tally, the progress bar, the
training-time budget, and ``metrics.jsonl`` (process 0 writes it)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Dict, List

from fracjax import metrics as metrics_lib
from fracjax.train import distributed


@dataclasses.dataclass
class Clock:
    """Training time: all of it, and without the steps that compiled (throughput)."""

    start: float = dataclasses.field(default_factory=time.perf_counter)
    train_seconds: float = 0.0
    steady_seconds: float = 0.0
    steady_images: int = 0


class Throughput:
    """Images per second since ``start``, leaving out the ``skipped`` images
    of the step that compiled (compile time is not throughput)."""

    def __init__(self, start: float, skipped: int = 0):
        self.start, self.skipped = start, skipped

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def rate(self, images: int) -> float:
        return (images - self.skipped) / max(self.seconds(), 1e-9)


@dataclasses.dataclass
class EpochTally:
    """One epoch's training losses and counts, as its steps come back."""

    start: float
    throughput: Throughput
    losses: List[float] = dataclasses.field(default_factory=list)
    correct: int = 0
    count: int = 0


def budget_spent(train_minutes: float, spent_seconds: float, epoch_seconds: float) -> bool:
    """True when one more epoch like the last would pass ``--train-minutes`` (0: no budget)."""
    return bool(train_minutes) and spent_seconds + epoch_seconds > 60.0 * train_minutes


def append_record(path: str, record: Dict[str, Any]) -> None:
    """One epoch's line of ``metrics.jsonl``."""
    if distributed.is_primary():
        with open(path, "a") as f:
            f.write(json.dumps(metrics_lib.jsonable(record)) + "\n")


def write_metrics(path: str, history: List[Dict[str, Any]]) -> None:
    """``metrics.jsonl`` anew from a history (a resume's checkpoint is the truth)."""
    if distributed.is_primary():
        with open(path, "w") as f:
            f.writelines(json.dumps(metrics_lib.jsonable(record)) + "\n" for record in history)


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar of ``total`` steps on stderr, or None (off, or not process 0)."""
    if not enabled or not distributed.is_primary():
        return None
    import importlib.util

    # tqdm.auto picks widgets in a notebook and warns without ipywidgets: text bars then.
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)


def restart_clock(bar) -> None:
    """Start ``bar``'s clock afresh at the steps done so far: its rate and the
    time left then leave out what came before (the compile: a first estimate
    of "21:15" left for a two-minute epoch)."""
    done = bar.n
    bar.reset(total=bar.total)  # n = 0 and the clock from now
    bar.n = bar.last_print_n = done
    bar.refresh()
