"""Statistics for reading a binary classifier honestly (numpy, host side):
bootstrap confidence intervals, ROC and precision-recall curves, operating
points chosen on one split and applied to another, calibration error and
temperature scaling.

Labels are {0, 1} (1 = fractured); scores are fracture probabilities, and a
decision is ``p >= threshold``, as in :mod:`fracjax.metrics`.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import sparse

from fracjax.metrics import (  # noqa: F401  (apply_temperature, logits_from_probabilities, format_thresholds: used
    # through stats too)
    apply_temperature,
    binary_metrics,
    format_thresholds,
    logits_from_probabilities,
    probabilities_from_logits,
)

# Rows of a printed metrics table, (key, label): the console, report.html.
TABLE_ROWS = (
    ("accuracy", "accuracy"),
    ("auroc", "AUROC"),
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("precision", "precision"),
    ("f1", "F1"),
    ("kappa", "Cohen's kappa"),
    ("average_precision", "average precision"),
    ("ece", "ECE (10 bins)"),
    ("brier", "Brier score"),
)

INTERVAL_METRICS = ("accuracy", "auroc", "sensitivity", "specificity", "f1", "kappa")


def _check(labels, scores) -> Tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels ({labels.size}) and scores ({scores.size}) differ in length")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return labels, scores


# --------------------------------------------------------------------------
# Curves.
# --------------------------------------------------------------------------


def roc_curve(labels, scores) -> Dict[str, np.ndarray]:
    """``fpr``, ``tpr`` and ``thresholds`` (decreasing; the first is +inf, so
    the curve starts at (0, 0)), one point per distinct score."""
    labels, scores = _check(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.zeros(0, np.int64)
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(1 - y)[last_of_run]
    n_pos, n_neg = max(int(labels.sum()), 1), max(int((1 - labels).sum()), 1)
    return {
        "fpr": np.r_[0.0, fp / n_neg],
        "tpr": np.r_[0.0, tp / n_pos],
        "thresholds": np.r_[np.inf, s[last_of_run]],
    }


def pr_curve(labels, scores) -> Dict[str, np.ndarray]:
    """``precision``, ``recall``, ``thresholds`` (decreasing) and
    ``average_precision`` (the step-wise area, as scikit-learn defines it)."""
    labels, scores = _check(labels, scores)
    roc = roc_curve(labels, scores)
    n_pos = int(labels.sum())
    tp = roc["tpr"][1:] * max(n_pos, 1)
    fp = roc["fpr"][1:] * max(int((1 - labels).sum()), 1)
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-12), 1.0)
    recall = roc["tpr"][1:]
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if n_pos else float("nan")
    return {"precision": precision, "recall": recall, "thresholds": roc["thresholds"][1:], "average_precision": ap}


# --------------------------------------------------------------------------
# Bootstrap.
# --------------------------------------------------------------------------


def _weighted_auroc(weights: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each resample, given as (B, N) counts of each example
    (Mann-Whitney, ties counted half); NaN where a resample holds one class only.
    The scores are sorted once for all resamples."""
    values, inverse = np.unique(scores, return_inverse=True)
    n = labels.size
    onehot = sparse.csr_matrix((np.ones(n), (inverse, np.arange(n))), shape=(values.size, n))
    pos = (onehot @ (weights * labels).T).T  # (B, U): weight of positives at each distinct score
    neg = (onehot @ (weights * (1 - labels)).T).T
    below = np.cumsum(neg, axis=1) - neg
    u = np.sum(pos * (below + 0.5 * neg), axis=1)
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _resample_counts(rng: np.random.Generator, b: int, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """(b, N) how often each example is drawn when ``num_groups`` clusters are
    drawn with replacement and each drawn cluster brings all its examples."""
    drawn = rng.integers(0, num_groups, size=(b, num_groups))
    offsets = (np.arange(b) * num_groups)[:, None]
    per_group = np.bincount((drawn + offsets).ravel(), minlength=b * num_groups).reshape(b, num_groups)
    return per_group[:, groups].astype(np.float64)


def first_appearance(keys) -> Tuple[np.ndarray, np.ndarray]:
    """Each key's group number (groups numbered in order of first appearance)
    and the position of each group's first member."""
    keys = np.asarray(keys).reshape(-1)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    number = np.empty(first.size, np.int64)
    number[order] = np.arange(first.size)
    return number[inverse.reshape(-1)], first[order]


def _cluster_index(groups, n: int) -> Tuple[np.ndarray, int]:
    """Cluster number of each example and the number of clusters; every
    example its own cluster without ``groups``."""
    if groups is None:
        return np.arange(n), n
    groups = np.asarray(groups).reshape(-1)
    if groups.size != n:
        raise ValueError(f"groups ({groups.size}) and labels ({n}) differ in length")
    cluster, first = first_appearance(groups)
    return cluster, first.size


def _resampled_metrics(w: np.ndarray, labels: np.ndarray, pred: np.ndarray) -> Dict[str, np.ndarray]:
    """Threshold metrics of each resample from its (B, N) counts."""
    y, p = labels.astype(np.float64), pred.astype(np.float64)
    tp, fn = w @ (y * p), w @ (y * (1 - p))
    fp, tn = w @ ((1 - y) * p), w @ ((1 - y) * (1 - p))
    n = tp + tn + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {
            "accuracy": (tp + tn) / n,
            "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
            "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
            "precision": np.where(tp + fp > 0, tp / (tp + fp), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan),
        }
        # Cohen's kappa from the same counts (NaN where chance agreement is total).
        observed = (tp + tn) / n
        expected = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / (n * n)
        out["kappa"] = np.where(expected < 1.0, (observed - expected) / np.where(expected < 1.0, 1.0 - expected, 1.0),
                                np.nan)
    return out


def bootstrap_intervals(
    labels,
    probabilities,
    threshold: float = 0.5,
    metrics: Sequence[str] = INTERVAL_METRICS,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    scores=None,
    groups=None,
) -> Dict[str, Tuple[float, float]]:
    """Percentile bootstrap intervals: resample ``samples`` times and take the
    (1 - level) / 2 quantiles of each metric. Without ``groups`` the examples
    are drawn with replacement; with ``groups`` (a patient or study id per
    example) whole clusters are (the cluster bootstrap: correlated images of one
    patient are not counted as independent evidence). Resamples where a metric
    is undefined (no positives for sensitivity) are left out of that metric;
    with none left the interval is (NaN, NaN).
    ``scores``: what AUROC ranks (the logits; default: the probabilities)."""
    labels, probs = _check(labels, probabilities)
    scores = probs if scores is None else _check(labels, scores)[1]
    unknown = set(metrics) - set(INTERVAL_METRICS) - {"precision"}
    if unknown:
        raise ValueError(f"no bootstrap for {sorted(unknown)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    cluster, num_clusters = _cluster_index(groups, labels.size)
    if labels.size == 0:
        return {m: (float("nan"), float("nan")) for m in metrics}
    rng = np.random.default_rng(seed)
    # Chunks keep the (B, N) count matrix small for big test sets.
    chunk = max(1, min(samples, 4_000_000 // max(labels.size, num_clusters)))
    values: Dict[str, list] = {m: [] for m in metrics}
    done = 0
    while done < samples:
        b = min(chunk, samples - done)
        w = _resample_counts(rng, b, cluster, num_clusters)
        computed = _resampled_metrics(w, labels, probs >= threshold)
        if "auroc" in metrics:
            computed["auroc"] = _weighted_auroc(w, labels, scores)
        for m in metrics:
            values[m].append(computed[m])
        done += b
    tail = (1.0 - level) / 2.0 * 100.0
    out: Dict[str, Tuple[float, float]] = {}
    for m in metrics:
        v = np.concatenate(values[m])
        v = v[np.isfinite(v)]
        out[m] = (
            (float("nan"), float("nan"))
            if v.size == 0
            else tuple(float(q) for q in np.percentile(v, [tail, 100 - tail]))
        )
    return out


# --------------------------------------------------------------------------
# Operating points.
# --------------------------------------------------------------------------


def threshold_for_sensitivity(labels, probabilities, target: float) -> float:
    """The highest threshold whose sensitivity on these data is at least
    ``target`` (so specificity is as high as that allows)."""
    labels, probs = _check(labels, probabilities)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    positives = np.sort(probs[labels == 1])[::-1]
    if positives.size == 0:
        raise ValueError("no positive examples to choose a sensitivity threshold on")
    needed = int(math.ceil(target * positives.size - 1e-9))
    return float(positives[max(needed, 1) - 1])


def youden_threshold(labels, probabilities) -> float:
    """The threshold that maximises Youden's J = sensitivity + specificity - 1
    (the highest such threshold when several tie)."""
    labels, probs = _check(labels, probabilities)
    if labels.sum() == 0 or labels.sum() == labels.size:
        raise ValueError("Youden's J needs both classes")
    roc = roc_curve(labels, probs)
    j = roc["tpr"][1:] - roc["fpr"][1:]
    best = int(np.flatnonzero(j >= j.max() - 1e-12)[0])  # ties up to rounding: the highest threshold
    return float(roc["thresholds"][1:][best])


def operating_points(labels, probabilities, sensitivities: Sequence[float] = (0.9, 0.95)) -> Dict[str, float]:
    """Named thresholds chosen on these data: ``youden`` and
    ``sensitivity_<target>`` for each target."""
    points = {"youden": youden_threshold(labels, probabilities)}
    for target in sensitivities:
        points[f"sensitivity_{target:g}"] = threshold_for_sensitivity(labels, probabilities, target)
    return points


# --------------------------------------------------------------------------
# Calibration.
# --------------------------------------------------------------------------


def reliability(labels, probabilities, bins: int = 10) -> Dict[str, np.ndarray]:
    """Equal-width bins of the predicted fracture probability: per bin the
    mean prediction (``confidence``), the fraction actually fractured
    (``frequency``) and the ``count``; empty bins hold NaN."""
    labels, probs = _check(labels, probabilities)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1], right=False), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, probs, minlength=bins) / count
        frequency = np.bincount(which, labels.astype(np.float64), minlength=bins) / count
    return {"edges": edges, "confidence": confidence, "frequency": frequency, "count": count}


def expected_calibration_error(labels, probabilities, bins: int = 10) -> float:
    """ECE of the fracture probability: sum over bins of |frequency -
    confidence| weighted by the bin's share of the examples."""
    r = reliability(labels, probabilities, bins)
    n = r["count"].sum()
    if n == 0:
        return float("nan")
    filled = r["count"] > 0
    return float(np.sum(np.abs(r["frequency"][filled] - r["confidence"][filled]) * r["count"][filled]) / n)


# Temperatures outside this range mean the logits carry (almost) no usable
# scale: T -> infinity is what a chance-level model's fit runs to.
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(labels, logits, max_iter: int = 100) -> float:
    """The temperature T minimising the cross-entropy of sigmoid(z / T) on
    these data (Guo et al. 2017, binary form), within ``TEMPERATURE_RANGE``.
    The loss is convex in 1/T; Newton's method on 1/T."""
    labels, z = _check(labels, logits)
    if z.size == 0 or not np.any(z):
        return 1.0
    y = labels.astype(np.float64)
    low, high = 1.0 / TEMPERATURE_RANGE[1], 1.0 / TEMPERATURE_RANGE[0]
    s = 1.0

    def loss(s):
        return float(np.mean(np.logaddexp(0.0, s * z) - y * s * z))

    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-s * z))
        grad = float(np.mean((p - y) * z))
        hess = float(np.mean(p * (1.0 - p) * z * z))
        if hess <= 1e-12:
            break
        new = float(np.clip(s - grad / hess, low, high))
        # Halve the step while the loss does not fall (guards the clipped ends).
        while loss(new) > loss(s) + 1e-12 and abs(new - s) > 1e-9:
            new = (new + s) / 2.0
        if abs(new - s) < 1e-9:
            break
        s = new
    return float(1.0 / s)


def temperature_at_bound(temperature: float) -> bool:
    """True when a fitted temperature sits at an end of ``TEMPERATURE_RANGE``
    (the fit wanted more: usually a model with no signal)."""
    return any(abs(temperature - bound) <= 1e-6 * bound for bound in TEMPERATURE_RANGE)


def metrics_with_intervals(
    labels,
    probabilities,
    threshold: float = 0.5,
    samples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    bins: int = 10,
    scores=None,
    loss: Optional[float] = None,
    groups=None,
) -> Dict[str, object]:
    """Every metric of :func:`fracjax.metrics.binary_metrics`, plus
    ``intervals`` (bootstrap; none with ``samples=0``), ``ece``, ``brier`` and
    ``average_precision``. ``scores``: what the ranking metrics (AUROC,
    average precision) rank, the logits; default: the probabilities.
    ``groups``: a patient or study id per example, for cluster-bootstrap intervals."""
    labels, probs = _check(labels, probabilities)
    scores = probs if scores is None else _check(labels, scores)[1]
    out = binary_metrics(labels, probs, threshold, loss=loss, scores=scores)
    out["intervals"] = (bootstrap_intervals(labels, probs, threshold, samples=samples, level=level, seed=seed,
                                            scores=scores, groups=groups) if samples else {})
    out["interval_level"] = level
    out["ece"] = expected_calibration_error(labels, probs, bins)
    out["brier"] = float(np.mean((probs - labels) ** 2)) if labels.size else float("nan")
    out["average_precision"] = pr_curve(labels, scores)["average_precision"] if labels.size else float("nan")
    return out


def format_interval(value: float, interval: Optional[Tuple[float, float]], digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = f"{value:.{digits}f}"
    if interval and all(math.isfinite(v) for v in interval):
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text





def chance_warnings(metrics: Dict[str, object], name: str) -> List[str]:
    """A warning when the AUROC of ``name`` cannot be told from chance (its
    bootstrap interval holds 0.5, or it is undefined) or is worse than chance
    (the interval lies below 0.5)."""
    value = metrics.get("auroc")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return [f"{name}: AUROC is undefined (one class only, or no examples)."] if metrics.get("n") else []
    interval = (metrics.get("intervals") or {}).get("auroc")
    if interval is None or not all(math.isfinite(v) for v in interval):
        return []
    low, high = interval
    if low <= 0.5 <= high:
        return [f"{name}: the AUROC interval [{low:.3f}, {high:.3f}] holds 0.5: on these data the model is not "
                "shown to rank fractured above not-fractured images better than chance. Read every other "
                "metric in that light."]
    if high < 0.5:
        return [f"{name}: the AUROC interval [{low:.3f}, {high:.3f}] lies below 0.5: the model ranks not-fractured "
                "images above fractured ones, worse than chance. Check the labels (swapped classes?) before "
                "reading any other metric."]
    return []


SMALL_CLASS = 30  # fewer images of either class than this, and no metric says much


def sample_warnings(metrics: Dict[str, object], name: str, smallest: int = SMALL_CLASS) -> List[str]:
    """A warning when ``name`` holds fewer than ``smallest`` images of either class: an
    interval from so few images is wide, and a perfect score proves little."""
    cm = metrics.get("confusion") or {}
    if not cm:
        return []
    positives, negatives = cm["tp"] + cm["fn"], cm["tn"] + cm["fp"]
    if min(positives, negatives) >= smallest:
        return []
    return [f"{name}: only {positives} fractured and {negatives} not-fractured images (n = {positives + negatives}; "
            f"fewer than {smallest} of a class): too few to say much. Read the intervals, not the values, and "
            "test on more images before trusting any figure."]


def calibration_warnings(calibration: Dict[str, object]) -> List[str]:
    """Warnings about a fitted temperature: at its bound, or fitted on a
    validation split where the model shows no signal (a lower ECE is then
    the probabilities sinking to the base rate, not a better model)."""
    out = []
    t = calibration.get("temperature")
    if t is not None and temperature_at_bound(float(t)):
        out.append(f"temperature scaling stopped at its bound (T = {float(t):g}, range {TEMPERATURE_RANGE}): "
                   "the validation logits carry almost no usable scale.")
    interval = calibration.get("auroc_interval")
    if interval and all(v is not None and math.isfinite(v) for v in interval) and interval[0] <= 0.5 <= interval[1]:
        out.append("calibration was fitted on a validation split where the model is not shown to beat chance "
                   f"(AUROC interval [{interval[0]:.3f}, {interval[1]:.3f}]): a lower ECE after temperature "
                   "scaling means the probabilities moved towards the base rate, not that the model got better.")
    return out
