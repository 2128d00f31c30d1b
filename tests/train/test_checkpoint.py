"""Checkpoints you can trust: checksums verified on restore, a damaged latest
step set aside for the newest intact one, errors that name the step folder."""

import glob
import json
import os

import chex
import numpy as np
import optax
import pytest

from fracjax import checkpoint as ckpt


def _model(step):
    rng = np.random.default_rng(step)
    return {"params": {"w": rng.normal(size=(64, 32)).astype(np.float32), "b": np.zeros(32, np.float32)},
            "batch_stats": {"mean": rng.normal(size=32).astype(np.float32)}}


def _train(step):
    params = _model(step)["params"]
    return {"opt_state": optax.adamw(1e-3).init(params), "step": np.int32(step)}


def _state(step, model_seed=None):
    """A run state as the trainer saves it: the model inside the one tree."""
    return {"model": _model(step if model_seed is None else model_seed), **_train(step)}


@pytest.fixture
def saved(tmp_path):
    checkpoints = ckpt.RunCheckpoints(str(tmp_path))
    for step in (4, 8):
        checkpoints.save_latest(step, _state(step), {"layout": 4, "global_step": step})
    checkpoints.save_best(8, _model(8), {"model": {"model": "x"}, "step": 8})
    checkpoints.close()
    return tmp_path


def test_the_checksum_sees_one_flipped_bit_and_not_the_containers():
    tree = _train(3)
    same = {"opt_state": [{"count": tree["opt_state"][0].count, "mu": tree["opt_state"][0].mu,
                           "nu": tree["opt_state"][0].nu}, {}, {}], "step": np.int32(3)}
    assert ckpt.tree_checksum(tree) == ckpt.tree_checksum(same)
    flipped = _model(3)
    flipped["params"]["w"].view(np.uint32)[5, 7] ^= 1
    assert ckpt.tree_checksum(flipped) != ckpt.tree_checksum(_model(3))


def test_an_intact_run_restores_verified(saved):
    checkpoints = ckpt.RunCheckpoints(str(saved))
    step, meta = checkpoints.intact_latest(log=pytest.fail)
    assert step == 8 and set(meta["checksums"]) == {"state"}
    variables, _ = ckpt.restore_model(str(saved / "checkpoints" / "best"), 8)
    chex.assert_trees_all_equal(variables, _model(8))
    variables, _ = ckpt.restore_model(str(saved / "checkpoints" / "latest"), 4)  # the model of a run state
    chex.assert_trees_all_equal(variables, _model(4))
    checkpoints.close()


def _edit_meta(step_folder, edit):
    path = os.path.join(step_folder, "meta", "metadata")
    with open(path) as f:
        meta = json.load(f)
    edit(meta)
    with open(path, "w") as f:
        json.dump(meta, f)


def test_arrays_that_do_not_match_their_checksum_are_refused_naming_the_step(saved):
    best = saved / "checkpoints" / "best"
    _edit_meta(best / "8", lambda m: m["checksums"].update(model="0" * 64))
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"best/8: the model arrays do not match the checksum"):
        ckpt.restore_model(str(best), 8)


def test_a_step_whose_checksum_was_removed_is_refused_and_the_old_layout_read(saved):
    best = saved / "checkpoints" / "best"
    _edit_meta(best / "8", lambda m: m.pop("checksums"))
    with pytest.raises(ckpt.CheckpointCorruptError, match=r"best/8: no checksum of its model arrays in its meta"):
        ckpt.restore_model(str(best), 8)
    _edit_meta(best / "8", lambda m: m.pop("checksummed"))  # as fracjax wrote steps before checksums
    variables, _ = ckpt.restore_model(str(best), 8)
    chex.assert_trees_all_equal(variables, _model(8))


def _damage_data(step_folder):
    """Flip bytes in the middle of every array data file of the step."""
    for path in glob.glob(os.path.join(step_folder, "*", "**", "d", "*"), recursive=True):
        data = bytearray(open(path, "rb").read())
        for i in range(len(data) // 2, len(data) // 2 + 8):
            data[i] ^= 0xFF
        open(path, "wb").write(bytes(data))


@pytest.mark.parametrize("damage", ["flipped bytes", "missing item", "bad checksum", "truncated metadata"])
def test_resume_falls_back_to_the_newest_intact_step_and_keeps_the_damaged_one(saved, damage):
    newest = saved / "checkpoints" / "latest" / "8"
    if damage == "flipped bytes":
        _damage_data(newest)
    elif damage == "missing item":
        import shutil

        shutil.rmtree(newest / "state")
    elif damage == "bad checksum":
        _edit_meta(newest, lambda m: m["checksums"].update(state="0" * 64))
    else:
        (newest / "meta" / "metadata").write_text('{"layout": 2, "glo')
    said = []
    checkpoints = ckpt.RunCheckpoints(str(saved))
    step, meta = checkpoints.intact_latest(log=said.append)
    assert step == 4 and meta["global_step"] == 4
    assert len(said) == 1 and "latest/8" in said[0] and "trying the step before" in said[0], said
    assert checkpoints.latest_step() == 4 and not newest.exists()
    assert len(glob.glob(str(saved / "checkpoints" / "damaged" / "latest-8-*"))) == 1  # kept, not deleted
    checkpoints.save_latest(8, _state(8, model_seed=9), {"layout": 4, "global_step": 8})  # the step can be redone
    checkpoints.close()
