"""Leakage-aware splits (numpy only, no files): groups of examples that must
stay together (near-duplicate X-rays found by :mod:`fracjax.data.audit`, one
patient's images, one study's views), and a split that keeps each group whole
while staying close to target sizes and class balance.

Two uses share :func:`grouped_split`:

* re-splitting a data set that came with splits (``given``): a group already
  wholly inside one split stays there, so only the groups that span splits move
  and the result stays comparable with the published split;
* splitting a data set that came without one (FracAtlas, a user's folder):
  every group is placed, stratified by class, towards target fractions.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Hashable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# The three splits of every fracjax data set, in this order.
SPLITS = ("train", "validation", "test")
# Folder name of each split in a download -> TFDS split name.
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def connected_groups(
    n: int, pairs: Sequence[Tuple[int, int]] = (), keys: Sequence[Optional[Hashable]] = ()
) -> np.ndarray:
    """Group index (0 .. G-1, numbered by first member) of each of ``n``
    examples, joining the two ends of every pair (e.g. near-duplicates) and
    every example that shares a key (e.g. a patient id) with another, both
    transitively. ``keys``: one per example, ``None`` for unknown (joins
    nothing)."""
    if keys is not None and len(keys) not in (0, n):
        raise ValueError(f"keys holds {len(keys)} entries for {n} examples")
    sets = _UnionFind(n)
    for i, j in pairs:
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) names an example outside 0..{n - 1}")
        sets.union(int(i), int(j))
    first: Dict[Hashable, int] = {}
    for i, key in enumerate(keys or ()):
        if key is None:
            continue
        sets.union(first.setdefault(key, i), i)
    roots = [sets.find(i) for i in range(n)]
    number: Dict[int, int] = {}
    return np.asarray([number.setdefault(r, len(number)) for r in roots], np.int64)


@dataclasses.dataclass(frozen=True)
class Move:
    """One example placed in another split than it came with, and why."""

    index: int
    source: str
    target: str
    group: int
    reason: str


def _targets(labels: np.ndarray, splits: Sequence[str], fractions: Optional[Mapping[str, float]],
             given: Optional[np.ndarray]) -> np.ndarray:
    """(S, 2) example counts per split and class to aim for."""
    if given is not None:
        return np.asarray([[np.sum((given == s) & (labels == c)) for c in (0, 1)] for s in splits], np.float64)
    total = sum(fractions.values())
    per_class = np.asarray([np.sum(labels == 0), np.sum(labels == 1)], np.float64)
    return np.asarray([per_class * fractions[s] / total for s in splits])


def _check(labels, groups, fractions, given) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    labels = np.asarray(labels).reshape(-1)
    groups = np.asarray(groups).reshape(-1)
    if labels.shape != groups.shape:
        raise ValueError(f"labels ({labels.size}) and groups ({groups.size}) differ in length")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if (fractions is None) == (given is None):
        raise ValueError("pass either fractions (split from scratch) or given (re-split a published split)")
    if fractions is not None:
        bad = {s: f for s, f in fractions.items() if not (np.isfinite(f) and f >= 0)}
        if bad or not fractions or sum(fractions.values()) <= 0:
            raise ValueError(f"split fractions must be finite, >= 0 and not all 0, got {dict(fractions)}")
    if given is not None:
        given = np.asarray(given).astype(str).reshape(-1)
        if given.shape != labels.shape:
            raise ValueError(f"given ({given.size}) and labels ({labels.size}) differ in length")
    return labels.astype(np.int64), groups, given


def _members(groups: np.ndarray) -> List[np.ndarray]:
    """Indices of each group's examples, groups in sorted order."""
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1) if groups.size else []


def grouped_split(labels, groups, fractions: Optional[Mapping[str, float]] = None, given=None,
                  seed: int = 0) -> Tuple[List[str], List[Move]]:
    """A split name per example such that every group lies in one split.

    ``fractions``: {split: share} to split from scratch, stratified by class;
    or ``given``: the published split name per example, whose per-split, per-class
    counts become the targets and whose whole groups stay where they are.
    Groups to place go, largest first (ties in a seeded order), to the split
    where they raise the chi-square distance between the counts and the targets
    least. Returns the split names and, with ``given``, the examples moved.
    """
    labels, groups, given = _check(labels, groups, fractions, given)
    splits = sorted(set(given)) if given is not None else [s for s in fractions if fractions[s] > 0]
    targets = _targets(labels, splits, fractions, given)
    counts = np.zeros_like(targets)
    out = np.empty(labels.size, dtype=object)
    free = []
    for members in _members(groups):
        home = set(given[members]) if given is not None else set()
        if len(home) == 1:
            s = splits.index(home.pop())
            out[members] = splits[s]
            counts[s] += np.bincount(labels[members], minlength=2)
        else:
            free.append(members)
    order = np.random.default_rng(seed).permutation(len(free))
    free = sorted((free[k] for k in order), key=len, reverse=True)  # stable: the seeded order breaks ties
    scale = np.maximum(targets, 1.0)
    for members in free:
        add = np.bincount(labels[members], minlength=2)
        cost = np.sum(((counts + add - targets) ** 2 - (counts - targets) ** 2) / scale, axis=1)
        s = int(np.argmin(cost))
        out[members] = splits[s]
        counts[s] += add
    moves = _moves(out, given, groups) if given is not None else []
    return list(out), moves


def _moves(out: np.ndarray, given: np.ndarray, groups: np.ndarray) -> List[Move]:
    moves = []
    for i in np.flatnonzero(out != given):
        others = sorted(set(given[groups == groups[i]]) - {given[i]})
        reason = f"its group also held {', '.join(others)} examples"
        moves.append(Move(int(i), str(given[i]), str(out[i]), int(groups[i]), reason))
    return moves


def split_summary(labels, split_names: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """{split: {"examples": n, "fractured": k}} for reports and ``info.metadata``."""
    labels = np.asarray(labels).reshape(-1)
    names = np.asarray(split_names, dtype=object)
    return {str(s): {"examples": int(np.sum(names == s)), "fractured": int(np.sum(labels[names == s] == 1))}
            for s in sorted(set(split_names))}
