"""Evaluation above the image: studies (MURA labels studies, not images) and
subgroups such as body parts (numpy, host side).

A study's probability is the mean of its images' probabilities (as the MURA
paper does), or their maximum; its label is its images' common label.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Hashable, Optional, Sequence

import numpy as np

from fracjax.evaluation import stats

AGGREGATES = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class Studies:
    ids: list  # in order of first appearance
    labels: np.ndarray
    probabilities: np.ndarray
    sizes: np.ndarray  # images per study
    first: np.ndarray  # index of each study's first image (for per-study fields such as body part)


def study_level(study_ids: Sequence[Hashable], labels, probabilities, how: str = "mean") -> Studies:
    """One row per study. A study whose images disagree on the label is an
    error naming it (the label belongs to the study)."""
    if how not in AGGREGATES:
        raise ValueError(f"unknown study aggregate {how!r}; choose one of {AGGREGATES}")
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    if not len(study_ids) == labels.size == probabilities.size:
        raise ValueError(f"{len(study_ids)} study ids, {labels.size} labels, {probabilities.size} probabilities")
    keys = np.asarray([str(s) for s in study_ids], dtype=object)
    study, first = stats.first_appearance(keys)
    sizes = np.bincount(study, minlength=first.size)
    positives = np.bincount(study, weights=labels, minlength=first.size)
    mixed = np.flatnonzero((positives > 0) & (positives < sizes))
    if mixed.size:
        raise ValueError(f"study {keys[first[mixed[0]]]!r} holds images labelled both 0 and 1 "
                         f"({mixed.size} such studies)")
    if how == "mean":
        probs = np.bincount(study, weights=probabilities, minlength=first.size) / sizes
    else:
        probs = np.full(first.size, -np.inf)
        np.maximum.at(probs, study, probabilities)
    return Studies([keys[k] for k in first], (positives > 0).astype(np.int64), probs, sizes, first)


def subgroup_metrics(subgroups: Sequence[Hashable], labels, probabilities, threshold: float = 0.5,
                     samples: int = 1000, seed: int = 0, groups: Optional[Sequence[Hashable]] = None,
                     ) -> Dict[str, Dict[str, object]]:
    """{subgroup: metrics with intervals} (e.g. per body part), then "all";
    ``groups``: patient or study ids for cluster-bootstrap intervals."""
    labels = np.asarray(labels).reshape(-1)
    probabilities = np.asarray(probabilities, np.float64).reshape(-1)
    names = np.asarray([str(s) for s in subgroups], dtype=object)
    if names.size != labels.size:
        raise ValueError(f"{names.size} subgroup names for {labels.size} examples")
    if "all" in set(names):
        raise ValueError("a subgroup may not be named 'all' (the row of every example)")
    cluster = None if groups is None else np.asarray([str(g) for g in groups], dtype=object)
    out: Dict[str, Dict[str, object]] = {}
    for name in sorted(set(names)) + ["all"]:
        keep = np.ones(labels.size, bool) if name == "all" else names == name
        out[name] = stats.metrics_with_intervals(
            labels[keep], probabilities[keep], threshold, samples=samples, seed=seed,
            groups=None if cluster is None else cluster[keep])
    return out


SUMMARY_KEYS = (("auroc", "AUROC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"),
                ("kappa", "Cohen's kappa"), ("accuracy", "accuracy"))


def summary_table(named: Dict[str, Dict[str, object]], digits: int = 3):
    """(header, rows): one row per subgroup (name, n, positives, then the
    MURA paper's metrics with their intervals)."""
    header = ["", "n", "fractured"] + [label for _, label in SUMMARY_KEYS]
    rows = []
    for name, m in named.items():
        confusion = m.get("confusion") or {}
        positives = confusion.get("tp", 0) + confusion.get("fn", 0)
        cells = [stats.format_interval(m.get(k), (m.get("intervals") or {}).get(k), digits) for k, _ in SUMMARY_KEYS]
        rows.append([name, str(m.get("n")), str(positives)] + cells)
    return header, rows
