"""A run's event logs beside ``metrics.jsonl``: TensorBoard event files in the
run folder (tensorboardX: no TensorFlow) and, with ``--log-to mlflow``, an
MLflow run (where that package is installed).

What is logged, at the global step: each training step's loss; each epoch's
training loss and accuracy, validation metrics, learning rate and training
throughput; at the end the test metrics and, when the report drew them, the
ROC curve and the Grad-CAM grid as images. Process 0 writes; ``--log-to none``
writes nothing. A resumed run drops what its crashed attempt had logged after
the checkpoint it continues from (TensorBoard's ``purge_step``), so the curves
have one value per step.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from typing import Any, Dict, Iterable, Optional, Sequence

import numpy as np

from fracjax.metrics import is_number
from fracjax.train import distributed

TARGETS = ("tensorboard", "mlflow", "none")
# The validation and test metrics that become curves (fracjax.metrics.binary_metrics's numbers).
METRICS = ("loss", "accuracy", "auroc", "sensitivity", "specificity", "precision", "f1", "kappa",
           "average_precision", "ece", "brier")


def parse_targets(text: str) -> tuple:
    """``tensorboard,mlflow`` -> ``("tensorboard", "mlflow")``."""
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def targets_problem(targets) -> Optional[str]:
    """Why ``--log-to`` cannot be honoured (checked before any work), or None."""
    targets = parse_targets(targets) if isinstance(targets, str) else tuple(targets)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        return f"must be one or more of {', '.join(TARGETS)} (comma-separated), got {','.join(targets) or 'nothing'}"
    if "none" in targets and len(targets) > 1:
        return "'none' cannot be given with another target"
    if "mlflow" in targets and importlib.util.find_spec("mlflow") is None:
        return "mlflow is not installed (pip install -e '.[mlflow]'), or leave it out"
    return None


class EventLog:
    """The writers of one run (none where this process is not process 0)."""

    def __init__(self, run_dir: str, targets: Sequence[str], resume_step: Optional[int] = None,
                 params: Optional[Dict[str, Any]] = None):
        self._writers = []
        if not distributed.is_primary():
            return
        if "tensorboard" in targets:
            self._writers.append(_TensorBoard(run_dir, resume_step))
        if "mlflow" in targets:
            self._writers.append(_MLflow(run_dir, params or {}))

    def scalars(self, values: Dict[str, Any], step: int) -> None:
        finite = {tag: float(v) for tag, v in values.items() if is_number(v) and math.isfinite(float(v))}
        for writer in self._writers:
            writer.scalars(finite, step)

    def step_losses(self, losses: Sequence[float], last_step: int) -> None:
        """Each step's training loss; the last of ``losses`` is ``last_step``'s."""
        first = last_step - len(losses) + 1
        for writer in self._writers:
            if writer.per_step:
                for step, loss in enumerate(losses, start=first):
                    if math.isfinite(loss):
                        writer.scalars({"train/step_loss": float(loss)}, step)

    def image_files(self, images: Dict[str, str], step: int) -> None:
        """PNG files (tag -> path) as images; a missing file (no report drawn) is left out."""
        from PIL import Image

        for tag, path in images.items():
            if not os.path.isfile(path):
                continue
            with Image.open(path, formats=["PNG"]) as picture:
                pixels = np.asarray(picture.convert("RGB"))  # our own 8-bit RGBA figure
            for writer in self._writers:
                writer.image(tag, pixels, path, step)

    def flush(self) -> None:
        for writer in self._writers:
            writer.flush()

    def close(self, failed: bool = False) -> None:
        """Flush and close every writer (an MLflow run ends FAILED when ``failed``); again: nothing."""
        for writer in self._writers:
            writer.close(failed)
        self._writers = []


def flat_metrics(prefix: str, metrics: Dict[str, Any], keys: Iterable[str] = METRICS) -> Dict[str, Any]:
    """``{prefix/key: value}`` of those ``keys`` that ``metrics`` holds as numbers, with
    ``prefix/key_low`` and ``_high`` where ``metrics["intervals"]`` has the key's 95% interval."""
    intervals = metrics.get("intervals") or {}
    out = {f"{prefix}/{key}": metrics[key] for key in keys if is_number(metrics.get(key))}
    for key in keys:
        interval = intervals.get(key)
        if isinstance(interval, (list, tuple)) and len(interval) == 2:
            out[f"{prefix}/{key}_low"], out[f"{prefix}/{key}_high"] = interval
    return out


class _TensorBoard:
    per_step = True

    def __init__(self, run_dir: str, resume_step: Optional[int]):
        from tensorboardX import SummaryWriter

        # purge_step: a resumed run hides its crashed attempt's events from the step it continues at.
        # The suffix: a resume in the same second as its attempt gets its own file, after it by name
        # (tensorboardX names files by the second and the host; TensorBoard reads them in name order).
        self.writer = SummaryWriter(run_dir, purge_step=None if resume_step is None else resume_step + 1,
                                    flush_secs=30, filename_suffix=f".{time.time_ns()}")

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels: np.ndarray, path: str, step: int) -> None:
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self, failed: bool = False) -> None:
        self.writer.close()


def check_store(targets: Sequence[str]) -> None:
    """With ``mlflow`` among ``targets``: that MLflow's tracking store (as MLflow is configured:
    ``$MLFLOW_TRACKING_URI``) opens, checked before any data work; ValueError naming it if not."""
    if "mlflow" not in targets or not distributed.is_primary():
        return
    import mlflow

    try:
        mlflow.tracking.MlflowClient().search_experiments(max_results=1)
    except Exception as err:  # MLflow's own errors: a store it cannot open, a server that does not answer
        raise ValueError(f"--log-to mlflow: MLflow's tracking store {mlflow.get_tracking_uri()!r} cannot be "
                         f"used: {str(err).splitlines()[0]}") from None


class _MLflow:
    per_step = False  # one request per value where the store is a server: epochs only

    def __init__(self, run_dir: str, params: Dict[str, Any]):
        import mlflow

        self.mlflow = mlflow  # its store: as the user configured MLflow (MLFLOW_TRACKING_URI)
        self.run = mlflow.start_run(run_name=os.path.basename(os.path.abspath(run_dir)))
        mlflow.log_params({key: str(value)[:250] for key, value in params.items()})

    def scalars(self, values: Dict[str, float], step: int) -> None:
        if values:
            self.mlflow.log_metrics(values, step=step)

    def image(self, tag: str, pixels: np.ndarray, path: str, step: int) -> None:
        self.mlflow.log_artifact(path)

    def flush(self) -> None:
        pass  # each call was sent

    def close(self, failed: bool = False) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")
