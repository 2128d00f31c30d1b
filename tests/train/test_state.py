"""The run's progress survives a checkpoint exactly (float64, None)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from fracjax.train.state import EpochRecord, Progress

optional_auroc = st.one_of(st.none(), st.floats(0.0, 1.0))
optional_step = st.one_of(st.none(), st.integers(0, 2**40))


@given(st.integers(1, 2), st.booleans(), st.integers(0, 1000), optional_auroc, optional_step, st.booleans(),
       st.floats(0.0, 1e7), st.booleans())
def test_progress_round_trips_through_arrays(phase, phase_done, bad, auroc, step, early, seconds, spent):
    progress = Progress(phase, phase_done, bad, auroc, step, early, seconds, spent)
    tree = progress.to_tree()
    assert all(isinstance(v, np.generic) for v in tree.values())
    assert Progress.from_tree({k: np.asarray(v) for k, v in tree.items()}) == progress
    target = Progress.restore_target()
    assert {k: v.dtype for k, v in target.items()} == {k: np.asarray(v).dtype for k, v in tree.items()}


def test_epoch_record_round_trips_through_json():
    record = EpochRecord(3, 2, 12, 0.5, 0.75, {"auroc": 0.9}, 0.5, 1.25, 100.0)
    assert EpochRecord.from_json(record.to_json()) == record
