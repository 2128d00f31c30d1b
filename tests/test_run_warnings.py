"""A run's warnings travel with its model: the end-of-run evaluation saves them beside the best
checkpoint, and Classifier, fracjax predict, the export's model card and the server's /v1/model
carry them. A chance-level model on a tiny test split is the case they exist for."""

import json

import numpy as np
import pytest

import fracjax
from fracjax import cli
from fracjax.checkpoint import WARNINGS_FILE
from fracjax.data import synthetic
from fracjax.evaluation import evaluate_run
from fracjax.inference import Classifier
from tests.helpers import random_classifier, saved_run


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory):
    """A random (chance-level) model evaluated on 12 test images."""
    run = saved_run(tmp_path_factory.mktemp("warned") / "run", random_classifier(seed=5, batch_size=4))
    images, labels = synthetic.generate_arrays(12, "test", seed=0, config=synthetic.SyntheticConfig(size=32))
    done = evaluate_run(run, (images, labels), (images, labels), report=False, calibrate=False, bootstrap=100)
    return run, done.result.warnings(), images


def test_the_evaluation_saves_its_warnings_beside_the_best_checkpoint(evaluated_run):
    run, warnings, _ = evaluated_run
    assert any("too few to say much" in w for w in warnings)
    clf = Classifier.from_checkpoint(run)
    assert clf.warnings == warnings
    with open(f"{clf.checkpoint}/{WARNINGS_FILE}") as f:
        assert json.load(f) == {"warnings": warnings}


def test_predict_shows_them_and_writes_them(evaluated_run, tmp_path, capsys):
    from PIL import Image

    run, warnings, images = evaluated_run
    Image.fromarray(images[0, ..., 0]).save(tmp_path / "x.png")
    out = tmp_path / "rows.json"
    assert cli.main(["predict", run, str(tmp_path / "x.png"), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"WARNING from this model's evaluation: {warnings[0]}" in printed
    assert json.loads(out.read_text())["warnings"] == warnings


def test_the_model_card_and_the_server_carry_them(evaluated_run, tmp_path):
    run, warnings, _ = evaluated_run
    exported = fracjax.export(run, str(tmp_path / "exported"))
    with open(f"{exported}/model.json") as f:
        card = json.load(f)
    assert card["warnings"] == warnings
    assert card["input_checks"]["dicom_modalities_accepted"][:2] == ["CR", "DX"]
    pytest.importorskip("fastapi")
    import asyncio

    import httpx

    from fracjax.deploy.served import open_served
    from fracjax.deploy.server import create_app

    async def model():
        app = create_app(open_served(exported))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://fracjax") as client:
            return (await client.get("/v1/model")).json()

    assert asyncio.run(model())["warnings"] == warnings


def test_a_checkpoint_never_evaluated_has_none(tmp_path):
    run = saved_run(tmp_path / "run", random_classifier(seed=6, batch_size=4))
    assert Classifier.from_checkpoint(run).warnings == []
    assert np.isfinite(Classifier.from_checkpoint(run).predict(np.zeros((40, 40), np.uint8))).all()
