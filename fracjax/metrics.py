"""Binary classification metrics over every evaluation example (host side,
numpy): what clinical papers report, with the confusion matrix.

All functions take labels in {0, 1} and fracture probabilities (or scores);
``threshold`` turns probabilities into decisions (``p >= threshold`` is
"fractured"). Undefined ratios (e.g. sensitivity with no positives) are NaN,
never a silent 0.
"""

from __future__ import annotations

import math
import numbers
from typing import Dict, List, Optional

import numpy as np

# Class 0 and class 1 of every data set, model output and report: a logit > 0
# (a probability >= the threshold) means "fractured".
LABEL_NAMES = ("not_fractured", "fractured")


def is_number(value) -> bool:
    """A real number (numpy's included), not a bool: what numeric options and saved values must be."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def confusion(labels: np.ndarray, predicted: np.ndarray) -> Dict[str, int]:
    labels = np.asarray(labels).astype(bool)
    predicted = np.asarray(predicted).astype(bool)
    return {
        "tp": int(np.sum(labels & predicted)),
        "fp": int(np.sum(~labels & predicted)),
        "tn": int(np.sum(~labels & ~predicted)),
        "fn": int(np.sum(labels & ~predicted)),
    }


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties);
    NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), np.float64)
    # Average rank within each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0  # ranks are 1-based
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohen_kappa(cm: Dict[str, int]) -> float:
    n = cm["tp"] + cm["fp"] + cm["tn"] + cm["fn"]
    if n == 0:
        return float("nan")
    observed = (cm["tp"] + cm["tn"]) / n
    p_yes = ((cm["tp"] + cm["fp"]) / n) * ((cm["tp"] + cm["fn"]) / n)
    p_no = ((cm["tn"] + cm["fn"]) / n) * ((cm["tn"] + cm["fp"]) / n)
    expected = p_yes + p_no
    if expected == 1.0:
        return float("nan") if observed != 1.0 else 1.0
    return float((observed - expected) / (1.0 - expected))


def probabilities_from_logits(logits, temperature: float = 1.0) -> np.ndarray:
    """Fracture probabilities sigmoid(z / T) in float64: the one conversion
    every path uses (training's evaluation, ``Classifier.predict``,
    calibration, reports), so a threshold chosen on these compares equal
    wherever it is applied. Float64 keeps nearby logits apart (in float32 a
    temperature-flattened model's probabilities collapse onto a few values)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    return np.exp(-np.logaddexp(0.0, -z))


def logits_from_probabilities(probabilities, eps: float = 1e-7) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def apply_temperature(probabilities, temperature: float) -> np.ndarray:
    """Probabilities of a model -> those of the same logits divided by ``temperature``."""
    return probabilities_from_logits(logits_from_probabilities(probabilities), temperature)


def bce_from_logits(labels, logits) -> float:
    """Mean binary cross-entropy of raw logits, computed stably in float64."""
    y = np.asarray(labels, np.float64)
    z = np.asarray(logits, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if z.size else float("nan")


def metrics_from_logits(labels, logits, threshold: float = 0.5, temperature: float = 1.0) -> Dict[str, object]:
    """:func:`binary_metrics` of raw logits: decisions on the (temperature
    scaled) probabilities, AUROC on the logits themselves (so calibration
    never changes it), loss on the raw logits."""
    logits = np.asarray(logits, np.float64)
    require_finite(logits, "scores")
    return binary_metrics(labels, probabilities_from_logits(logits, temperature), threshold,
                          loss=bce_from_logits(labels, logits), scores=logits)


def binary_metrics(
    labels: np.ndarray,
    probabilities: np.ndarray,
    threshold: float = 0.5,
    loss: Optional[float] = None,
    scores: Optional[np.ndarray] = None,
) -> Dict[str, object]:
    """accuracy, auroc, sensitivity (recall), specificity, precision, f1,
    kappa, the confusion matrix, n, (loss) and the threshold used.
    ``scores``: what AUROC ranks (the logits, default: the probabilities)."""
    labels = np.asarray(labels).astype(np.int64)
    probabilities = np.asarray(probabilities, np.float64)
    scores = probabilities if scores is None else np.asarray(scores, np.float64)
    if labels.shape != probabilities.shape or labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {probabilities.shape} differ in shape")
    require_finite(scores, "scores")
    require_finite(probabilities, "probabilities")
    cm = confusion(labels, probabilities >= threshold)
    n = len(labels)
    sensitivity = _ratio(cm["tp"], cm["tp"] + cm["fn"])
    precision = _ratio(cm["tp"], cm["tp"] + cm["fp"])
    f1 = _ratio(2 * cm["tp"], 2 * cm["tp"] + cm["fp"] + cm["fn"])
    out: Dict[str, object] = {
        "n": n,
        "accuracy": _ratio(cm["tp"] + cm["tn"], n),
        "auroc": auroc(labels, scores),
        "sensitivity": sensitivity,
        "specificity": _ratio(cm["tn"], cm["tn"] + cm["fp"]),
        "precision": precision,
        "f1": f1,
        "kappa": cohen_kappa(cm),
        "confusion": cm,
        "threshold": float(threshold),
    }
    if loss is not None:
        out["loss"] = float(loss)
    return out


class NonFiniteValuesError(ValueError):
    """Model outputs (logits, probabilities) that hold NaN or infinity: no
    metric of them means anything, so none is computed or written."""


def require_finite(values, what: str) -> None:
    values = np.asarray(values)
    bad = np.flatnonzero(~np.isfinite(values.reshape(-1))) if values.dtype.kind == "f" else []
    if len(bad):
        raise NonFiniteValuesError(
            f"{len(bad)} of {values.size} {what} are NaN or infinite (first at index {int(bad[0])}): the model "
            "that produced them is broken (a diverged training?); no metric computed"
        )


def is_better(value: float, best: Optional[float]) -> bool:
    """For early stopping on a metric to maximise; NaN is never better."""
    if value is None or math.isnan(value):
        return False
    return best is None or math.isnan(best) or value > best


def jsonable(x):
    """Nested dicts/lists of numpy scalars and arrays -> plain JSON values;
    NaN (an undefined metric) becomes null. Infinities stay: bookkeeping such
    as reduce-on-plateau's initial best value is inf and must round-trip."""
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return None if math.isnan(v) else v
    if isinstance(x, np.integer):
        return int(x)
    return x


def format_thresholds(values, digits: int = 3, most: int = 12) -> List[str]:
    """Thresholds with at least ``digits`` decimals and as many more (up to ``most``) as it takes
    for different values to print differently, and for none but 0.5 itself to print as 0.5 (the
    default a reader assumes): 0.499778 prints as 0.49978, not 0.500."""
    values = [float(v) for v in values]
    for d in range(digits, most + 1):
        texts = [f"{v:.{d}f}" for v in values]
        half = f"{0.5:.{d}f}"
        if len(set(texts)) == len(set(values)) and all(
            t != half or v == 0.5 for t, v in zip(texts, values, strict=True)
        ):
            return texts
    return [repr(v) for v in values]
