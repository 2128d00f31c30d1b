"""fracjax samples: labelled sample X-rays in every format fracjax reads, never over a file that
exists; predict and explain take folders."""

import csv
import json
import os

import numpy as np
import pydicom
import pytest
from PIL import Image

import fracjax
from fracjax import cli
from fracjax.data.builders.image_folder import list_csv, list_folder
from fracjax.data.io import image_files, read_image
from tests.helpers import random_classifier, saved_run


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("samples") / "samples")
    return folder, fracjax.data.samples(folder, per_class=1, image_size=64)


def test_every_format_is_written_and_reads_back_as_a_grey_image(written):
    folder, paths = written
    images = [p for p in paths if not p.endswith(".csv")]
    assert len(images) == 8 and all(os.path.isfile(p) for p in paths)
    for path in images:
        image = read_image(path)
        assert image.shape == (64, 64, 1) and image.dtype == np.uint8 and image.std() > 10
    assert Image.open(os.path.join(folder, "fractured", "fractured_01_16bit.png")).mode == "I;16"
    assert Image.open(os.path.join(folder, "fractured", "fractured_01.jpg")).format == "JPEG"
    ds = pydicom.dcmread(os.path.join(folder, "not_fractured", "not_fractured_01.dcm"))
    assert ds.Modality == "CR" and ds.BitsStored == 12 and ds.PhotometricInterpretation == "MONOCHROME2"
    assert float(ds.WindowWidth) == 4096 and ds.PatientID.startswith("SAMPLE")
    assert int(ds.pixel_array.max()) < 4096


def test_the_labels_agree_between_the_class_folders_and_the_csv(written):
    folder, _ = written
    by_folder = {r.path: r.label for r in list_folder(folder)}
    _, records, missing = list_csv(os.path.join(folder, "labels.csv"))
    assert not missing and {r.path: r.label for r in records} == by_folder
    assert sorted(by_folder.values()) == [0, 0, 0, 0, 1, 1, 1, 1]
    with open(os.path.join(folder, "labels.csv")) as f:
        assert {row["patient"] for row in csv.DictReader(f)} == {f"SAMPLE{c}00{k}" for c in (0, 1) for k in range(4)}


def test_the_same_samples_everywhere(written, tmp_path):
    _, paths = written
    again = fracjax.data.samples(str(tmp_path / "again"), per_class=1, image_size=64)
    for a, b in zip(paths, again, strict=True):
        if a.endswith(".png") or a.endswith(".jpg"):
            assert open(a, "rb").read() == open(b, "rb").read()


def test_nothing_is_written_over_an_existing_file(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "labels.csv").write_text("my own labels\n")
    with pytest.raises(FileExistsError, match="labels.csv exists already.*nothing written"):
        fracjax.data.samples(str(folder))
    assert sorted(os.listdir(folder)) == ["labels.csv"] and (folder / "labels.csv").read_text() == "my own labels\n"
    assert cli.main(["samples", str(folder)]) == 2
    assert sorted(os.listdir(folder)) == ["labels.csv"]


def test_image_files_walks_folders_for_images_only(tmp_path):
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for name in ("a/x.PNG", "a/deeper/y.dcm", "a/notes.txt", "a/.z.png", "a/.hidden/w.png"):
        (tmp_path / name).write_bytes(b"")
    assert image_files([str(tmp_path / "a"), "missing.png"]) == [
        str(tmp_path / "a" / "x.PNG"), str(tmp_path / "a" / "deeper" / "y.dcm"), "missing.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: a folder with no image files"):
        image_files([str(tmp_path / "empty")])


def test_predict_takes_a_folder_of_samples(written, tmp_path):
    folder, paths = written
    run = saved_run(tmp_path / "run", random_classifier(seed=3, batch_size=4, image_size=32))
    out = tmp_path / "rows.json"
    assert cli.main(["predict", run, folder, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["results"]
    assert sorted(r["file"] for r in rows) == sorted(p for p in paths if not p.endswith(".csv"))
    assert all(r["error"] in ("", None) and 0.0 <= r["probability"] <= 1.0 for r in rows)


def test_predict_refuses_an_empty_folder_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["predict", str(tmp_path / "no_run"), str(tmp_path / "empty")]) == 2
    assert "a folder with no image files" in capsys.readouterr().err
