"""Training runs that end early or are refused: non-finite loss, a divergence,
a time budget, reduce-on-plateau, bad flags and folders, a second writer.
(Apart from test_fit.py so that the two halves run on two workers.)"""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fracjax
from fracjax import checkpoint as ckpt
from fracjax.train import NonFiniteLossError, ResumeError, fit
from fracjax.train.cli import main as cli_main
from tests.train.fitting import config, flags, latest_variables

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_non_finite_loss_stops_cleanly_naming_its_step_however_late_it_is_fetched(data_dir, tmp_path):
    # Losses are fetched every --log-every steps: the step named must not depend on when.
    said = {}
    for every in (1, 8):
        cfg = config(data_dir, tmp_path, f"nan{every}", phase2_lr=1e30, grad_clip=None, log_every=every)
        with pytest.raises(NonFiniteLossError, match=r"at step \d+ \(phase 2.*last good checkpoint is step 4") as err:
            fit(cfg)
        said[every] = str(err.value).split(" (phase")[0]
        step, variables = latest_variables(tmp_path / f"nan{every}")
        assert step == 4
        chex.assert_tree_all_finite(variables)
    assert said[1] == said[8] and said[1].endswith(tuple("0123456789")), said


def test_the_loop_fetches_metrics_every_log_every_steps_and_the_plateau_spans_epochs(data_dir, tmp_path, monkeypatch):
    from fracjax.train import loop

    fetched = []
    collect = loop._collect

    def counting(ctx, run, phase, pending, *args, **kwargs):
        if pending:
            fetched.append((run.step, len(pending)))
        return collect(ctx, run, phase, pending, *args, **kwargs)

    monkeypatch.setattr(loop, "_collect", counting)
    # Reduce-on-plateau over several epochs of a phase too: the step donates its state, and the plateau
    # scale put into it between epochs must not share a buffer.
    report = fit(config(data_dir, tmp_path, "fetch", log_every=3, schedule="plateau", phase2_epochs=3, max_steps=14,
                        report=False, bootstrap=0))
    # Phase 1 (4 steps an epoch): its first step alone (it compiles, and is timed), then 3, then the epoch's end;
    # phase 2 the same, then 3 and 1 an epoch, cut by --max-steps 14.
    assert fetched == [(1, 1), (4, 3), (5, 1), (8, 3), (11, 3), (12, 1), (14, 2)], fetched
    lines = [json.loads(line) for line in (tmp_path / "fetch" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12, 14] and [r["phase"] for r in lines] == [1, 2, 2, 2]
    assert report["timing"]["train_steps"] == 14 and all(0 < r["lr_scale"] <= 1 for r in lines)


def test_a_training_time_budget_ends_training_and_stays_ended(data_dir, tmp_path, capsys):
    cfg = config(data_dir, tmp_path, "budget", train_minutes=1e-5, report=False, bootstrap=0)
    report = fit(cfg)
    said = capsys.readouterr().out  # the run says what it is doing, stage by stage
    for line in ("WARNING: 32 px is too small to learn from scratch",
                 "compiling the phase 1 train step", "compiled and ran the first step in", "training budget:",
                 "evaluating test ...", "test (best checkpoint, step 4)"):
        assert line in said, line
    lines = (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and report["budget"] == {"train_minutes": 1e-5, "spent": True}
    assert report["timing"]["train_steps"] == 4 and report["test"]["n"] == 64
    again = fit(cfg.replace(resume=True))  # a resumed run does not train past its budget
    assert again["timing"]["train_steps"] == 4
    assert (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines() == lines


def test_bad_flags_are_clear(data_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--batch-size", "0"])
    assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--unfreeze", "some"])
    assert "--unfreeze" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "fracture_xray", "--manual-dir", str(tmp_path / "nowhere")])
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--pretrained", str(tmp_path / "missing.h5")])
    assert "no such file" in capsys.readouterr().err


def test_weights_for_another_architecture_stop_before_training(data_dir, tmp_path, capsys):
    import h5py

    bad = tmp_path / "large.h5"
    with h5py.File(bad, "w") as f:
        f.attrs["layer_names"] = np.array([b"Conv"])
        g = f.create_group("Conv")
        g.attrs["weight_names"] = np.array([b"Conv/kernel:0"])
        g.create_dataset("Conv/kernel:0", data=np.zeros((3, 3, 3, 16), np.float32))
    code = cli_main(flags(data_dir, tmp_path, "w", "--pretrained", str(bad)))
    assert code == 2
    err = capsys.readouterr().err
    assert "large.h5" in err and "layers with weights" in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def _save_in_layout_3(run_dir, step):
    """A latest step as fracjax wrote it before the run state was one item: ``model`` and ``train`` apart."""
    import orbax.checkpoint as ocp

    handlers = {"model": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    manager = ocp.CheckpointManager(os.path.join(run_dir, "checkpoints", "latest"), item_handlers=handlers,
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave({"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}}),
        train=ocp.args.StandardSave({"step": np.int32(step)}),
        meta=ocp.args.JsonSave({"layout": 3, "global_step": step, "phase": 1})))
    manager.wait_until_finished()
    manager.close()


@pytest.mark.parametrize("written_by", ["fracjax 0.1 (no layout)", "layout 3 (model and train apart)"])
def test_a_checkpoint_of_a_previous_layout_is_refused_clearly(data_dir, tmp_path, written_by):
    cfg = config(data_dir, tmp_path, "old", resume=True)
    if written_by.startswith("layout 3"):
        _save_in_layout_3(cfg.run_dir, 4)
    else:
        saved = ckpt.RunCheckpoints(cfg.run_dir)  # a "book", no layout
        saved.save_latest(4, {"model": {"params": {"w": np.zeros(2, np.float32)}, "batch_stats": {}},
                              "step": np.int32(4), "lr_scale": np.float32(1)},
                          {"global_step": 4, "phase": 1, "book": {}})
        saved.close()
    with pytest.raises(ResumeError, match=r"step 4\) was written by an earlier fracjax.*another --name"):
        fit(cfg)
    assert (tmp_path / "old" / "checkpoints" / "latest" / "4").is_dir()  # nothing lost, nothing moved aside
    assert not (tmp_path / "old" / "checkpoints" / "damaged").exists()
    assert not (tmp_path / "old" / "config.json").exists()  # refused before any work
    folder, step = ckpt.find_model_checkpoint(cfg.run_dir, "latest")  # its model still loads for inference
    variables, _ = ckpt.restore_model(folder, step)
    chex.assert_trees_all_equal(variables["params"]["w"], np.zeros(2, np.float32))


def test_a_diverged_model_is_never_saved_or_reported(data_dir, tmp_path, monkeypatch):
    # A step whose loss was finite can still leave NaN parameters behind (the
    # update comes after the loss): here the update itself writes NaN (traced into the compiled step).
    from fracjax.train import optim

    def poisoned(params, updates, trainable):
        return jax.tree_util.tree_map(lambda x: x * jnp.nan, params)

    monkeypatch.setattr(optim, "apply_updates", poisoned)
    cfg = config(data_dir, tmp_path, "div", max_steps=1, report=False, bootstrap=0)
    with pytest.raises(NonFiniteLossError, match=r"variables hold NaN.*after step 1.*nothing of this step is saved"):
        fit(cfg)
    assert not (tmp_path / "div").exists()  # nothing saved, and the folder this run made is removed


def test_an_unwritable_out_folder_is_refused_before_any_work(data_dir, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root writes anywhere: a file where the folder should be
        blocker.write_text("x")
        out = blocker
    else:
        out = tmp_path / "ro"
        out.mkdir()
        out.chmod(0o500)
    with pytest.raises(fracjax.train.RunFolderError, match=r"^--out/--name: cannot write in"):
        fit(config(data_dir, out, "x"))


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(data_dir, tmp_path, capsys):
    from fracjax.train import run_folder

    cfg = config(data_dir, tmp_path, "locked", phase2_epochs=0, report=False, bootstrap=0)
    os.makedirs(cfg.run_dir)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(os.path.join(cfg.run_dir, ".lock"), "w") as f:
            json.dump({"pid": sleeper.pid, "host": __import__("socket").gethostname(), "since": "then"}, f)
        with pytest.raises(run_folder.RunFolderError, match=rf"another training \(pid {sleeper.pid} on this host"):
            fit(cfg)
        assert not (tmp_path / "locked" / "config.json").exists()  # refused before any work
    finally:
        sleeper.kill()
        sleeper.wait()
    # An earlier run's files, then the lock's owner gone (stale): --overwrite starts afresh.
    os.makedirs(os.path.join(cfg.run_dir, "checkpoints", "latest", "7"))
    for name, text in (("config.json", '{"train": {}}'), ("metrics.jsonl", '{"step": 7}\n')):
        with open(os.path.join(cfg.run_dir, name), "w") as f:
            f.write(text)
    with pytest.raises(ResumeError, match="--overwrite to start it afresh"):
        fit(cfg)
    fit(cfg.replace(overwrite=True))
    said = capsys.readouterr().out
    assert "took over the stale lock" in said and "--overwrite: removed the earlier run" in said
    assert not (tmp_path / "locked" / ".lock").exists()
    assert sorted(os.listdir(tmp_path / "locked" / "checkpoints" / "latest")) == ["4"]


def test_a_validation_split_of_one_class_is_refused_before_compiling(tmp_path):
    from fracjax.data import prepare
    from fracjax.data.pipeline import ArraySource

    images = np.zeros((4, 8, 8, 1), np.uint8)
    splits = {"train": ArraySource(images, [0, 1, 0, 1]), "validation": ArraySource(images, [1, 1, 1, 1]),
              "test": ArraySource(images, [0, 0, 0, 0])}
    with pytest.raises(ValueError, match=r"the validation split has no not_fractured examples \(train: 2 "
                                         r"not_fractured, 2 fractured; validation: 0 not_fractured, 4 fractured"):
        prepare.check_classes(splits, "mine", fracjax.metrics.LABEL_NAMES)
    splits["validation"] = splits["train"]
    assert prepare.check_classes(splits, "mine", fracjax.metrics.LABEL_NAMES)["test"] == [4, 0]


def test_fit_takes_arrays_through_the_folder_pipeline(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("FRACJAX_CACHE", str(tmp_path / "cache"))
    train, val = (fracjax.data.load_arrays(fracjax.data.load_source("synthetic_fracture/tiny", split, data_dir))
                  for split in ("train", "validation"))
    x, y = train.images[:64], train.labels[:64]
    cfg = fracjax.train.make_config(image_size=32, batch_size=16, phase1_epochs=1, phase2_epochs=0, out=str(tmp_path),
                                    name="arrays", report=False, bootstrap=0, progress=False)
    with pytest.raises(ValueError, match="data= replaces the data set"):
        fit(cfg.replace(dataset="fracatlas"), data=(x, y))
    with pytest.raises(ValueError, match=r"validation: 64 images but labels of shape \(3,\)"):
        fit(cfg, data=(x, y), validation=(val.images, [0, 1, 0]))
    assert not (tmp_path / "arrays").exists() and not (tmp_path / "cache").exists()  # refused before any work
    report = fit(cfg, data=(x, y), validation=(np.repeat(val.images, 3, axis=-1), val.labels))  # RGB: any form
    drawn = sum(int(round(0.15 * n)) for n in np.bincount(y))  # the test split, drawn from data per class
    assert report["data"]["examples"] == {"train": 64 - drawn, "validation": 64, "test": drawn}
    assert report["data"]["dataset"].startswith(str(tmp_path / "cache" / "arrays"))
