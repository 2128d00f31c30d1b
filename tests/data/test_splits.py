"""Grouped splits: every near-duplicate group and every patient in one split,
sizes and class balance near their targets, and only spanning groups moved."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fracjax.data.splits import connected_groups, grouped_split, split_summary


def test_connected_groups_joins_pairs_and_keys_transitively():
    groups = connected_groups(6, pairs=[(0, 1), (3, 4)], keys=["p1", None, "p2", "p1", None, None])
    # 0-1 (pair), 0-3 (patient p1), 3-4 (pair): one group; 2 and 5 alone.
    assert list(groups) == [0, 0, 1, 0, 0, 2]
    with pytest.raises(ValueError, match=r"pair \(0, 7\)"):
        connected_groups(3, pairs=[(0, 7)])
    with pytest.raises(ValueError, match="keys holds 2 entries for 3"):
        connected_groups(3, keys=["a", "b"])


def _planted(rng, n, pairs, patients):
    labels = rng.integers(0, 2, n)
    dup = [tuple(int(v) for v in rng.choice(n, 2, replace=False)) for _ in range(pairs)]
    keys = [f"p{rng.integers(patients)}" if rng.random() < 0.5 else None for _ in range(n)]
    return labels, dup, keys


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 300), pairs=st.integers(0, 40), patients=st.integers(1, 80))
def test_every_pair_and_patient_lies_in_one_split(seed, n, pairs, patients):
    rng = np.random.default_rng(seed)
    labels, dup, keys = _planted(rng, n, pairs if n > 1 else 0, patients)
    groups = connected_groups(n, dup, keys)
    names, moves = grouped_split(labels, groups, fractions={"train": 0.7, "validation": 0.15, "test": 0.15}, seed=seed)
    assert len(names) == n and moves == []
    for i, j in dup:
        assert names[i] == names[j]
    for key in set(keys) - {None}:
        assert len({names[i] for i in range(n) if keys[i] == key}) == 1


def test_sizes_and_class_balance_stay_near_their_targets():
    rng = np.random.default_rng(0)
    n = 4000
    labels = (rng.random(n) < 0.2).astype(int)
    groups = connected_groups(n, keys=[f"p{k}" for k in rng.integers(0, 1500, n)])  # ~2.7 images a patient
    names, _ = grouped_split(labels, groups, fractions={"train": 0.7, "validation": 0.1, "test": 0.2}, seed=1)
    summary = split_summary(labels, names)
    for split, share in (("train", 0.7), ("validation", 0.1), ("test", 0.2)):
        got = summary[split]
        assert abs(got["examples"] - share * n) <= 0.03 * share * n, summary
        assert abs(got["fractured"] / got["examples"] - labels.mean()) <= 0.02, summary


def test_a_resplit_moves_only_groups_that_span_splits():
    rng = np.random.default_rng(2)
    n = 1200
    labels = rng.integers(0, 2, n)
    published = np.where(np.arange(n) < 1000, "train", np.where(np.arange(n) < 1100, "validation", "test"))
    # 30 test images with a near-copy in train, 10 pairs within train.
    leaks = [(int(t), int(c)) for t, c in zip(rng.choice(np.arange(1100, 1200), 30, replace=False),
                                                  rng.choice(1000, 30, replace=False), strict=True)]
    inside = [(2 * k, 2 * k + 1) for k in range(10)]
    groups = connected_groups(n, leaks + inside)
    names, moves = grouped_split(labels, groups, given=published, seed=0)
    for i, j in leaks + inside:
        assert names[i] == names[j]
    moved = {m.index for m in moves}
    assert moved == {i for i in range(n) if names[i] != published[i]}
    assert moved <= {i for pair in leaks for i in pair}  # nothing else moved
    assert all(names[i] == published[i] for i, j in inside)
    for m in moves:
        assert m.source == published[m.index] and m.target == names[m.index] and "its group also held" in m.reason
    before, after = split_summary(labels, published), split_summary(labels, names)
    for split in before:
        assert abs(after[split]["examples"] - before[split]["examples"]) <= 30


def test_the_seed_decides_ties_and_the_same_seed_repeats():
    labels = np.tile([0, 1], 50)
    groups = np.arange(100) // 2
    fractions = {"train": 0.5, "test": 0.5}
    a, _ = grouped_split(labels, groups, fractions=fractions, seed=3)
    assert grouped_split(labels, groups, fractions=fractions, seed=3)[0] == a
    assert any(grouped_split(labels, groups, fractions=fractions, seed=s)[0] != a for s in range(4, 8))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="either fractions"):
        grouped_split([0, 1], [0, 1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        grouped_split([0, 2], [0, 1], fractions={"train": 1.0})
    with pytest.raises(ValueError, match="fractions must be finite"):
        grouped_split([0, 1], [0, 1], fractions={"train": -1.0, "test": 1.0})
    with pytest.raises(ValueError, match="differ in length"):
        grouped_split([0, 1], [0], fractions={"train": 1.0})
