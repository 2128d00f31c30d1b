"""The input checks (fracjax.data.screening) on generated files: DICOM modalities, colour pictures,
uniform frames; and what predict, classify and the predict command make of them."""

import json

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from fracjax.data import screening, synthetic
from fracjax.data.io import decode_image, model_input, read_image
from fracjax.data.screening import Observations, input_check


def xray(index=0, size=96):
    image, _ = synthetic.generate_example(0, "test", index, synthetic.SyntheticConfig(size=size))
    return image


def checked_file(path):
    seen = Observations()
    pixels = model_input(read_image(path, seen=seen), 32, str(path))
    return input_check(seen, pixels), seen


def dicom_with_modality(tmp_path, modality):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if modality is None:
        del ds.Modality
    else:
        ds.Modality = modality
    path = tmp_path / f"{modality}.dcm"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("modality", ["CR", "DX", "RF", "XA", "MG", "PX", "IO", None])
def test_projection_radiographs_pass(tmp_path, modality):
    reason, seen = checked_file(dicom_with_modality(tmp_path, modality))
    assert reason is None
    assert seen.modality == (modality.upper() if modality else None)


@pytest.mark.parametrize("modality", ["CT", "MR", "US", "NM", "PT", "OT"])
def test_other_modalities_are_flagged(tmp_path, modality):
    reason, _ = checked_file(dicom_with_modality(tmp_path, modality))
    assert reason and f"DICOM modality {modality} is not projection radiography" in reason


def test_the_modality_is_read_from_uploaded_bytes_too(tmp_path):
    seen = Observations()
    data = dicom_with_modality(tmp_path, "MR").read_bytes()
    pixels = model_input(decode_image(data, "upload", seen=seen), 32)
    assert "DICOM modality MR" in input_check(seen, pixels)


def photograph(size=96, seed=0):
    """Colourful smooth blobs over a warm background: what a photograph's colours look like."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    rgb = np.stack([200 - 80 * yy, 150 + 40 * xx, 90 + 30 * yy * xx], axis=-1)
    for _ in range(5):
        cy, cx, r = rng.uniform(0.2, 0.8, 3) * (1, 1, 0.4)
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2] = rng.uniform(0, 255, 3)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix,mode", [(".png", "RGB"), (".jpg", "RGB"), (".png", "RGBA"), (".png", "P"),
                                         (".bmp", "RGB"), (".tif", "RGB")])
def test_colour_pictures_are_flagged(tmp_path, suffix, mode):
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photograph()).convert(mode).save(path)
    reason, seen = checked_file(path)
    assert reason and reason.startswith("a colour picture") and seen.colour_share > 0.5


def test_colour_dicom_is_flagged(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm"))
    photo = photograph(size=48)
    ds.Rows, ds.Columns, ds.Modality = 48, 48, "XA"  # a radiograph's modality: the colour rule must catch it
    ds.PixelData = photo.tobytes()
    ds.save_as(tmp_path / "photo.dcm")
    reason, seen = checked_file(tmp_path / "photo.dcm")
    assert seen.modality == "XA" and seen.pixels == 48 * 48
    assert reason and reason.startswith("a colour picture")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_a_grey_xray_stored_as_rgb_passes(tmp_path, suffix):
    grey = xray()[..., 0]
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(np.stack([grey] * 3, -1)).save(path, quality=75)
    reason, seen = checked_file(path)
    assert reason is None and seen.pixels == grey.size and seen.colour_share < 0.01


def test_a_grey_xray_with_a_small_coloured_marker_passes(tmp_path):
    rgb = np.repeat(xray(), 3, axis=-1)
    rgb[4:16, 4:16] = (255, 0, 0)  # 144 of 9,216 pixels: a side marker
    path = tmp_path / "marked.png"
    Image.fromarray(rgb).save(path)
    assert checked_file(path)[0] is None


@pytest.mark.parametrize("value", [0, 128, 255])
def test_uniform_frames_are_flagged(tmp_path, value):
    path = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 80), value, np.uint8)).save(path)
    reason, _ = checked_file(path)
    assert reason and reason.startswith("a (nearly) uniform image")


def test_synthetic_xrays_pass():
    for index in range(8):
        pixels = model_input(xray(index), 64)
        assert input_check(None, pixels) is None


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 255), st.integers(1, 40), st.integers(1, 40))
def test_equal_channels_are_never_colour(level, h, w):
    seen = Observations()
    grey = np.random.default_rng(level).integers(0, 256, (h, w), dtype=np.uint8)
    seen.count_colour(np.stack([grey] * 3, -1))
    assert seen.colour_pixels == 0 and seen.pixels == h * w
    assert screening.colour_reason(seen.colour_share) is None


def test_arrays_given_to_the_classifier_are_checked_too():
    from tests.helpers import random_classifier

    clf = random_classifier(seed=0, batch_size=4)
    images = [xray(0), photograph(), np.zeros((50, 50), np.uint8), np.repeat(xray(1), 3, axis=-1)]
    predicted = clf.predict(images, errors="skip")
    assert sorted(predicted.flagged) == [1, 2]
    assert list(predicted.in_distribution) == [True, False, False, True]
    assert np.all(np.isfinite(predicted.probabilities))  # flagged inputs still have a probability
    labels = clf.classify(images)
    assert labels[1] is None and labels[2] is None and labels[0] in ("fractured", "not_fractured")
    assert None not in clf.classify(images, force_label=True)


def test_the_predict_command_flags_and_withholds_the_label(tmp_path, capsys):
    from fracjax import cli
    from tests.helpers import random_classifier, saved_run

    run = saved_run(tmp_path / "run", random_classifier(seed=1, batch_size=4))
    Image.fromarray(xray()[..., 0]).save(tmp_path / "xray.png")
    Image.fromarray(photograph()).save(tmp_path / "face.png")
    ct = dicom_with_modality(tmp_path, "CT")
    (tmp_path / "note.png").write_bytes(b"not an image")
    files = [str(tmp_path / "xray.png"), str(tmp_path / "face.png"), str(ct), str(tmp_path / "note.png")]
    out = tmp_path / "rows.json"
    assert cli.main(["predict", run, *files, "--json", str(out), "--csv", str(tmp_path / "rows.csv")]) == 1
    printed = capsys.readouterr().out
    assert printed.count("outside what this model was trained on") == 2 and "modality CT" in printed
    rows = json.loads(out.read_text())["results"]
    assert [r["in_distribution"] for r in rows] == [True, False, False, None]
    assert rows[0]["label"] in ("fractured", "not_fractured") and rows[0]["reason"] is None
    assert rows[1]["label"] is None and rows[1]["reason"].startswith("a colour picture")
    assert rows[2]["label"] is None and rows[3]["error"]
    assert "in_distribution,ood_score,reason" in (tmp_path / "rows.csv").read_text().splitlines()[0]
    assert cli.main(["predict", run, *files[:3], "--json", str(out), "--force-label"]) == 0
    assert all(r["label"] in ("fractured", "not_fractured") for r in json.loads(out.read_text())["results"])
