"""Temperature scaling and operating points fitted on one split (validation),
from labels and logits alone: the calibration a checkpoint carries
(``calibration.json``, written by :func:`fracjax.evaluation.calibrate_checkpoint`)."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np

from fracjax.evaluation import stats
from fracjax.metrics import probabilities_from_logits


def calibrate(labels, logits, sensitivities: Sequence[float] = (0.9, 0.95), bins: int = 10) -> Dict[str, Any]:
    """Temperature and operating points fitted on one split (validation):
    ``{"temperature", "temperature_at_bound", "operating_points" (on
    calibrated probabilities), "ece_before", "ece_after", "auroc",
    "auroc_interval", "fitted_on"}``."""
    labels = np.asarray(labels).astype(np.int64)
    logits = np.asarray(logits, np.float64)
    temperature = stats.fit_temperature(labels, logits)
    raw = probabilities_from_logits(logits)
    # The same float64 conversion Classifier.predict uses: a threshold equal to
    # a positive's probability compares equal when applied.
    calibrated = probabilities_from_logits(logits, temperature)
    points: Dict[str, float] = {}
    both = 0 < labels.sum() < labels.size
    at_points: Dict[str, Dict[str, float]] = {}
    if both:
        points = stats.operating_points(labels, calibrated, sensitivities)
        at_points = {
            name: {key: stats.binary_metrics(labels, calibrated, t)[key] for key in ("sensitivity", "specificity")}
            for name, t in points.items()
        }
    interval = stats.bootstrap_intervals(labels, raw, metrics=("auroc",), samples=500, scores=logits)["auroc"]
    return {
        "temperature": float(temperature),
        "temperature_at_bound": stats.temperature_at_bound(temperature),
        "operating_points": points,
        "operating_point_metrics": at_points,  # each point's sensitivity and specificity on the fitted split
        "ece_before": stats.expected_calibration_error(labels, raw, bins),
        "ece_after": stats.expected_calibration_error(labels, calibrated, bins),
        "auroc": float(stats.binary_metrics(labels, raw, scores=logits)["auroc"]) if both else float("nan"),
        "auroc_interval": list(interval),
        "fitted_on": {"examples": int(labels.size), "positives": int(labels.sum())},
    }
