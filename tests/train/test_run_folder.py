"""The run folder without training: --overwrite's checks, and a failed run's cleanup."""

import json
import os

import pytest

from fracjax.train import run_folder
from fracjax.train.run_folder import RunFolderError, claim, clear_run


def _earlier_run(folder, *extra):
    os.makedirs(folder / "checkpoints" / "best" / "8")
    (folder / "config.json").write_text(json.dumps({"train": {}, "model": {}}))
    (folder / "events.out.tfevents.1.host.2").write_bytes(b"")
    for name in extra:
        (folder / name).write_text("mine")


def test_overwrite_empties_a_run_folder_and_refuses_anything_else(tmp_path):
    said = []
    _earlier_run(tmp_path / "run")
    clear_run(str(tmp_path / "run"), said.append)
    assert os.listdir(tmp_path / "run") == [] and "removed the earlier run" in said[0]

    _earlier_run(tmp_path / "mixed", "thesis.docx")
    with pytest.raises(RunFolderError, match="also holds thesis.docx, which training did not write; nothing removed"):
        clear_run(str(tmp_path / "mixed"))
    assert (tmp_path / "mixed" / "checkpoints" / "best" / "8").is_dir()

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "report.json").write_text("{}")  # a run's name, but no run
    with pytest.raises(RunFolderError, match="is not a fracjax run folder"):
        clear_run(str(tmp_path / "photos"))
    assert (tmp_path / "photos" / "report.json").exists()
    (tmp_path / "empty").mkdir()
    clear_run(str(tmp_path / "empty"))  # nothing to remove, nothing to refuse


def test_a_run_that_fails_before_a_checkpoint_removes_only_the_folder_it_made(tmp_path):
    for existed in (False, True):
        folder = tmp_path / f"existed_{existed}"
        if existed:
            folder.mkdir()
        with pytest.raises(KeyError), claim(str(folder), log=lambda _: None):
            (folder / "metrics.jsonl").write_text("{}")
            raise KeyError("the data")
        assert folder.exists() == existed
        assert not (folder / run_folder.LOCK_FILE).exists()

    with pytest.raises(KeyError), claim(str(tmp_path / "saved"), log=lambda _: None):
        os.makedirs(tmp_path / "saved" / "checkpoints" / "latest" / "4")
        raise KeyError("after a checkpoint")
    assert (tmp_path / "saved" / "checkpoints" / "latest" / "4").is_dir()  # kept: --resume continues it


def test_only_finished_step_folders_count_as_checkpoints(tmp_path):
    """A run stopped before its first save (a NaN in the first epoch) leaves at most Orbax's temporary
    folder of a save cut short: a re-run is not told the folder "already holds checkpoints"."""
    os.makedirs(tmp_path / "checkpoints" / "latest" / "4.orbax-checkpoint-tmp-1733")
    os.makedirs(tmp_path / "checkpoints" / "damaged" / "latest-8-20261204-070000")
    assert not run_folder.has_checkpoint(str(tmp_path))
    os.makedirs(tmp_path / "checkpoints" / "best" / "4")
    assert run_folder.has_checkpoint(str(tmp_path))
