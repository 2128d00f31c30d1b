"""The run's host-side reporting that needs no training: the progress bar's
estimate after the compile, and the event log's targets, checks and writers."""

import io
import time

import numpy as np
import pytest
from tqdm import tqdm

from fracjax.train import event_log
from fracjax.train.progress import restart_clock
from tests.helpers import tensorboard_events


def test_the_time_left_leaves_out_the_compile():
    bar = tqdm(total=1000, file=io.StringIO(), mininterval=0)
    time.sleep(0.5)  # the compile, inside the first step
    bar.update(1)
    restart_clock(bar)
    for _ in range(4):
        time.sleep(0.005)
        bar.update(1)
    assert bar.n == 5
    # 4 steps in ~20 ms: well above the 10 steps/s that counting the compile would give.
    assert bar.format_dict["rate"] > 50


@pytest.mark.parametrize("targets, problem", [
    ("tensorboard", None), ("none", None), ("tensorboard,wandb", "must be one or more of"),
    ("none,tensorboard", "'none' cannot be given"), ("", "must be one or more of"),
])
def test_log_to_names_what_it_cannot_do(targets, problem):
    found = event_log.targets_problem(targets)
    assert (found is None) if problem is None else (problem in found)


def test_mlflow_is_refused_where_it_is_not_installed(monkeypatch):
    monkeypatch.setattr(event_log.importlib.util, "find_spec", lambda name: None)
    assert "pip install -e '.[mlflow]'" in event_log.targets_problem("tensorboard,mlflow")


def test_scalars_images_and_a_resume_purge_in_tensorboard(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(tmp_path / "roc.png")
    log = event_log.EventLog(str(tmp_path), ["tensorboard"])
    log.step_losses([0.9, 0.8, float("nan"), 0.6], last_step=4)
    log.scalars({"validation/auroc": 0.75, "validation/n": np.int64(8), "skipped": "text", "nan": float("nan")}, 4)
    log.image_files({"report/roc": str(tmp_path / "roc.png"), "report/gradcam": str(tmp_path / "none.png")}, 4)
    log.close()
    resumed = event_log.EventLog(str(tmp_path), ["tensorboard"], resume_step=2)  # steps 3, 4 done again
    resumed.step_losses([0.5, 0.4], last_step=4)
    resumed.close()
    events = tensorboard_events(tmp_path)
    assert events["train/step_loss"] == pytest.approx({1: 0.9, 2: 0.8, 3: 0.5, 4: 0.4})
    assert events["validation/n"] == {} and events["report/roc"] == {}  # purged with step 4
    assert "skipped" not in events and "nan" not in events and "report/gradcam" not in events


def test_mlflow_gets_the_params_the_epochs_and_the_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:" + str(tmp_path / "mlruns"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder is enough here
    from mlflow.tracking import MlflowClient
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "roc.png")
    event_log.check_store(["mlflow"])
    log = event_log.EventLog(str(tmp_path / "run_a"), ["mlflow"], params={"lr": 0.001, "model": "resnet50"})
    log.step_losses([0.7, 0.6], last_step=2)  # per step: TensorBoard only
    log.scalars({"validation/auroc": 0.8}, 2)
    log.scalars({"validation/auroc": 0.9}, 4)
    log.image_files({"report/roc": str(tmp_path / "roc.png")}, 4)
    log.close(failed=True)
    client = MlflowClient()
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "run_a" and run.info.status == "FAILED"
    assert run.data.params == {"lr": "0.001", "model": "resnet50"} and "train/step_loss" not in run.data.metrics
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "validation/auroc")] == [
        (2, 0.8), (4, 0.9)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["roc.png"]


def test_an_mlflow_store_that_cannot_be_opened_is_named_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "file:" + str(tmp_path / "mlruns"))
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow 3 refuses a folder store then
    with pytest.raises(ValueError, match="--log-to mlflow: MLflow's tracking store"):
        event_log.check_store(["mlflow"])
