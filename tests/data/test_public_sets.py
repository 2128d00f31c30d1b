"""The MURA, FracAtlas, image-folder and grouped Kaggle builders, prepared from
small generated trees in each published layout (with the quirks real
downloads have) and read back without TensorFlow."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import fracjax.data
from fracjax.data import builders, prepare, synthetic
from fracjax.data.builders import fracatlas as fracatlas_lib
from fracjax.data.builders import image_folder

SPLITS = ("train", "validation", "test")


def _xray(seed: int, label: int = 0) -> np.ndarray:
    """A small synthetic radiograph, different for every seed."""
    rng = synthetic.example_rng(seed, "train", 0)
    return synthetic.generate_image(rng, label, synthetic.SyntheticConfig(size=48))[..., 0]


def _write(path, image):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _read(builder):
    sources = builder.as_data_source()
    return {s: [sources[s][i] for i in range(len(sources[s]))] for s in SPLITS}


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- MURA


@pytest.fixture(scope="module")
def mura(tmp_path_factory):
    """MURA-v1.1 with two parts, 10 train and 3 valid patients of two studies
    of two images; a macOS `._` file, a CSV row naming a missing file, an
    unreadable image, a README."""
    top = tmp_path_factory.mktemp("mura")
    root = top / "MURA-v1.1"
    seed = 0
    for split, patients in (("train", range(1, 11)), ("valid", range(11, 14))):
        paths, studies = [], []
        for p in patients:
            part = "XR_WRIST" if p % 2 else "XR_HAND"
            for s, label in ((1, p % 3 == 0), (2, p % 2 == 0)):
                study = f"MURA-v1.1/{split}/{part}/patient{p:05d}/study{s}_{'positive' if label else 'negative'}/"
                studies.append(f"{study},{int(label)}")
                for i in (1, 2):
                    seed += 1
                    _write(top / study / f"image{i}.png", _xray(seed, int(label)))
                    paths.append(study + f"image{i}.png")
        (top / study / "._image1.png").write_bytes(b"\x00\x05\x16\x07 mac")
        paths.append(f"MURA-v1.1/{split}/XR_HAND/patient00002/study1_negative/image9.png")  # missing
        (root / f"{split}_image_paths.csv").write_text("\n".join(paths) + "\n")
        (root / f"{split}_labeled_studies.csv").write_text("\n".join(studies) + "\n")
    (top / "MURA-v1.1/train/XR_HAND/patient00004/study1_negative/image2.png").write_bytes(b"\x89PNG truncated")
    (root / "README.txt").write_text("MURA v1.1")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = prepare.prepare_dataset("mura", data_dir, str(top), log=lambda _: None)
    return builder, _read(builder), data_dir, str(top)


def test_mura_splits_by_patient_with_study_labels(mura):
    builder, splits, _, _ = mura
    patients = {s: {_text(e["patient"]) for e in splits[s]} for s in SPLITS}
    assert not patients["train"] & patients["validation"]
    assert patients["test"] == {f"patient{p:05d}" for p in range(11, 14)}  # the public valid set
    assert all(len(splits[s]) for s in SPLITS)
    for s in SPLITS:
        for e in splits[s]:
            study = _text(e["study"])
            assert int(e["label"]) == int(study.split("_")[-1] == "positive")
            assert _text(e["body_part"]) in ("wrist", "hand") and study.endswith(_text(e["filename"]).split("/")[3])
    assert sum(len(v) for v in splits.values()) == 13 * 4 - 1  # one unreadable image
    skipped = {os.path.basename(s["path"]): s["reason"] for s in builder.info.metadata["skipped"]}
    assert "missing" in skipped["image9.png"] and "image2.png" in skipped
    assert builder.info.metadata["split"]["grouped_by"] == ["patient"]


def test_mura_study_level_evaluation_reads_the_fields(mura):
    builder = mura[0]
    test = fracjax.data.load_arrays(builder.as_data_source()["test"])
    assert set(test.fields) == {"patient", "study", "body_part"}
    assert len(set(test.fields["study"])) == 6 and test.fields["study"][0].startswith("valid/")


def test_train_on_mura_reports_study_level_rows_per_body_part(mura, tmp_path):
    """`fracjax train --dataset mura --manual-dir M`, in one phase on 32-px images: the
    evaluation resamples patients and has study-level rows per body part; the report says so."""
    import json

    from fracjax.train import fit
    from fracjax.train.cli import config_from_args

    _, _, data_dir, manual_dir = mura
    config = config_from_args([
        "--dataset", "mura", "--manual-dir", manual_dir, "--data-dir", data_dir, "--out", str(tmp_path),
        "--name", "mura", "--image-size", "32", "--batch-size", "8", "--phase1-epochs", "1", "--phase2-epochs", "0",
        "--bootstrap", "50", "--no-progress"])
    report = fit(config)
    assert report["data"]["dataset"] == "mura" and report["data"]["split"]["grouped_by"] == ["patient"]
    evaluation = json.loads((tmp_path / "mura" / "evaluation.json").read_text())["test"]
    assert evaluation["cluster"] == "patient"
    assert set(evaluation["studies"]["by"]) == {"hand", "wrist", "all"} and evaluation["studies"]["n"] == 6
    assert set(evaluation["subgroups"]) == {"hand", "wrist", "all"}
    page = (tmp_path / "mura" / "report.html").read_text()
    assert "Study level" in page and "Data set mura" in page and "not measured" in page
    assert "resampling patients (cluster bootstrap" in page


def test_mura_bad_study_csv_names_the_file_and_line(tmp_path):
    from fracjax.data.builders import mura as mura_lib

    root = tmp_path / "MURA-v1.1"
    (root / "train").mkdir(parents=True)
    (root / "valid").mkdir()
    (root / "train_labeled_studies.csv").write_text("MURA-v1.1/train/XR_HAND/patient00001/study1_positive/,1\n"
                                                    "MURA-v1.1/train/XR_HAND/patient00002/study1_positive/,yes\n")
    with pytest.raises(ValueError, match=r"train_labeled_studies.csv:2: expected"):
        mura_lib.study_labels(str(root), "train")
    with pytest.raises(FileNotFoundError, match="no MURA-v1.1 folder"):
        mura_lib.find_mura_root(str(tmp_path / "MURA-v1.1" / "train"))


# ----------------------------------------------------------------------------- FracAtlas


@pytest.fixture(scope="module")
def fracatlas(tmp_path_factory):
    """FracAtlas with 40 images, 12 fractured with YOLO boxes; two planted
    copies (an exact one and a mirrored one); a row naming a missing image;
    an extra file."""
    top = tmp_path_factory.mktemp("fracatlas") / "FracAtlas"
    rows = ["image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"]
    for i in range(40):
        label = int(i < 12)
        name = f"IMG{i:07d}.jpg"
        image = _xray(1000 + i, label)
        if i == 20:
            image = _xray(1000 + 21, 0)  # the same X-ray as IMG21
        if i == 22:
            image = _xray(1000 + 23, 0)[:, ::-1]  # IMG23 mirrored
        folder = "Fractured" if label else "Non_fractured"
        Image.fromarray(image).save(_mkdir(top / "images" / folder) / name, quality=98)
        region = ["hand", "leg", "hip", "shoulder"][i % 4]
        flags = [int(region == r) for r in ("hand", "leg", "hip", "shoulder")]
        rows.append(f"{name},{','.join(map(str, flags))},0,{i % 5 == 0},0,{label},{label},1,0,0")
        if label:
            text = "0 0.5 0.4 0.2 0.3\n" + ("0 0.25 0.25 0.1 0.1\n" if i == 3 else "")
            (_mkdir(top / "Annotations" / "YOLO") / name.replace(".jpg", ".txt")).write_text(text)
    rows.append("IMG9999999.jpg,1,0,0,0,0,0,0,1,1,1,0,0")  # not in images/
    (top / "dataset.csv").write_text("\n".join(rows).replace("True", "1").replace("False", "0") + "\n")
    (top / "Utilities").mkdir()
    (top / "Utilities" / "notes.txt").write_text("x")
    builder = prepare.prepare_dataset("fracatlas", str(tmp_path_factory.mktemp("tfds")), str(top.parent),
                                      log=lambda _: None)
    return builder, _read(builder)


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_fracatlas_grouped_split_fields_and_boxes(fracatlas):
    builder, splits = fracatlas
    where = {_text(e["filename"]).split("/")[-1]: s for s in SPLITS for e in splits[s]}
    assert len(where) == 40
    assert where["IMG0000020.jpg"] == where["IMG0000021.jpg"]  # an exact copy
    assert where["IMG0000022.jpg"] == where["IMG0000023.jpg"]  # a mirrored copy
    sizes = {s: len(splits[s]) for s in SPLITS}
    assert sizes["train"] >= 24 and sizes["validation"] >= 4 and sizes["test"] >= 4, sizes
    assert all(any(int(e["label"]) == 1 for e in splits[s]) for s in SPLITS)
    example = next(e for s in SPLITS for e in splits[s] if _text(e["filename"]).endswith("IMG0000003.jpg"))
    np.testing.assert_allclose(example["boxes"], [[0.25, 0.4, 0.55, 0.6], [0.2, 0.2, 0.3, 0.3]], atol=1e-6)
    assert _text(example["body_part"]) == "shoulder" and _text(example["view"]) == "frontal"
    negative = next(e for s in SPLITS for e in splits[s] if int(e["label"]) == 0)
    assert np.shape(negative["boxes"]) == (0, 4)
    said = builder.info.metadata["split"]
    assert said["near_duplicate_pairs"] >= 2 and said["groups_of_several"] >= 2
    assert [s["path"] for s in builder.info.metadata["skipped"]] == ["IMG9999999.jpg"]


# ----------------------------------------------------------------------------- a user's folder or CSV


def _user_tree(root, n=16):
    for i in range(n):
        _write(root / ("Fracture" if i % 2 else "normal") / f"x{i}.png", _xray(2000 + i, i % 2))


def test_image_folder_class_names_and_a_seeded_grouped_split(tmp_path):
    _user_tree(tmp_path / "xrays", 24)
    builder = fracjax.data.from_folder(str(tmp_path / "xrays"), image_size=32, data_dir=str(tmp_path / "d"),
                                       log=lambda _: None)
    splits = _read(builder)
    assert sum(len(v) for v in splits.values()) == 24
    labels = {_text(e["filename"]): int(e["label"]) for s in SPLITS for e in splits[s]}
    assert all(labels[name] == int(name.startswith("Fracture/")) for name in labels)
    again = fracjax.data.from_folder(str(tmp_path / "xrays"), image_size=32, data_dir=str(tmp_path / "d"),
                                     log=lambda _: None)
    assert again.info.full_name == builder.info.full_name  # prepared once per source


def test_image_folder_csv_patients_stay_in_one_split_and_missing_files_are_skipped(tmp_path, capsys):
    root = tmp_path / "site"
    lines = ["Path,Label,Patient"]
    for i in range(30):
        _write(root / "img" / f"{i}.png", _xray(3000 + i, i % 2))
        lines.append(f"img/{i}.png,{i % 2},P{i // 3}")
    lines.append("img/gone.png,1,P99")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    builder = fracjax.data.from_folder(str(root / "labels.csv"), image_size=32, data_dir=str(tmp_path / "d"),
                                       log=lambda _: None)
    splits = _read(builder)
    home = {}
    for s in SPLITS:
        for e in splits[s]:
            assert home.setdefault(_text(e["patient"]), s) == s
    assert len(home) == 10
    assert builder.info.metadata["skipped"][0]["path"] == "img/gone.png"
    assert "line 32" in builder.info.metadata["skipped"][0]["reason"]
    said = capsys.readouterr().out
    assert "skipped 1 file(s) (listed in info.metadata['skipped']): img/gone.png (" in said
    assert "WARNING:" not in said


def test_prepared_data_follows_the_csv_and_its_files_not_just_their_names(tmp_path):
    root = tmp_path / "site"
    rows = ["path,label"]
    for i in range(16):
        _write(root / f"{i}.png", _xray(5000 + i, i % 2))
        rows.append(f"{i}.png,{i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    said = []

    def labels_of(builder):
        return {_text(e["filename"]): int(e["label"]) for s in SPLITS for e in _read(builder)[s]}

    first = fracjax.data.from_folder(str(root / "labels.csv"), image_size=32, data_dir=str(tmp_path / "d"),
                                     log=said.append)
    assert labels_of(first) == {f"{i}.png": i % 2 for i in range(16)}
    # Every label flipped: same path, size of folder and seed, other data.
    (root / "labels.csv").write_text("\n".join(rows[:1] + [f"{i}.png,{1 - i % 2}" for i in range(16)]) + "\n")
    said.clear()
    flipped = fracjax.data.from_folder(str(root / "labels.csv"), image_size=32, data_dir=str(tmp_path / "d"),
                                       log=said.append)
    assert flipped.info.full_name != first.info.full_name
    assert labels_of(flipped) == {f"{i}.png": 1 - i % 2 for i in range(16)}
    assert any("labels.csv changed since it was prepared" in line for line in said), said
    # A file rewritten in place (another size) is a change too; nothing changed is no change.
    _write(root / "3.png", _xray(77, 1)[:20])
    again = fracjax.data.from_folder(str(root / "labels.csv"), image_size=32, data_dir=str(tmp_path / "d"),
                                     log=lambda _: None)
    assert again.info.full_name != flipped.info.full_name
    same = fracjax.data.from_folder(str(root / "labels.csv"), image_size=32, data_dir=str(tmp_path / "d"),
                                    log=lambda _: None)
    assert same.info.full_name == again.info.full_name


@pytest.mark.parametrize("rows, message", [
    (["path,label", "a.png,1", "b.png,2"], r"labels.csv:3: label must be 0 or 1"),
    (["path,label", "a.png,1", "../outside.png,0"], r"labels.csv:3: path '../outside.png' is outside"),
    (["path,label", "a.png,1", "b.png,1"], r"labels.csv: no not fractured images \(an empty class\)"),
    (["file,class", "a.png,1"], r"labels.csv:1: the header must name the columns path,label"),
    (["path,label,split", "a.png,1,train", "b.png,0,holdout"], r"labels.csv:3: split must be train"),
    (["path,label", "a.png,1", "", "b\x00.png,0"], r"labels.csv:4: a NUL byte in the row"),
    (["path,label", "a.png,1", "x" * 200_000 + ",0"], r"labels.csv:3: not a readable CSV row \(field larger"),
    (["path,label", "a.png,1", "b.png,0", "./a.png,0"], r"labels.csv:4: './a.png' is listed again \(first on line 2\)"),
])
def test_bad_csv_rows_name_the_file_and_line(tmp_path, rows, message):
    for name in ("a.png", "b.png"):
        _write(tmp_path / name, _xray(1))
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=message):
        image_folder.list_csv(str(tmp_path / "labels.csv"))


def test_bad_folders_are_refused_with_their_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file .*missing.csv"):
        image_folder.list_csv(str(tmp_path / "missing.csv"))
    _write(tmp_path / "a" / "fractured" / "x.png", _xray(1))
    (tmp_path / "a" / "normal").mkdir()
    with pytest.raises(ValueError, match=r"normal: the class folder 'normal' holds no images"):
        image_folder.list_folder(str(tmp_path / "a"))
    _write(tmp_path / "b" / "maybe" / "x.png", _xray(1))
    with pytest.raises(ValueError, match=r"class folder 'maybe' is neither fractured"):
        image_folder.list_folder(str(tmp_path / "b"))
    assert [builders.class_label(n) for n in ("Fractured", "NOT_fractured", "Abnormal", "0", "x")] == [1, 0, 1, 0, None]


# ----------------------------------------------------------------------------- the Kaggle set, re-split


def test_fracture_xray_grouped_moves_only_the_leaking_copies(tmp_path):
    root = tmp_path / "dl" / "train"
    k = 0
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        for cls, label in (("fractured", 1), ("not fractured", 0)):
            for i in range(n):
                k += 1
                _write(tmp_path / "dl" / split / cls / f"{i}.png", _xray(4000 + k, label))
    # The same X-ray in train and test: the copy must move.
    copy = np.asarray(Image.open(root / "fractured" / "0.png"))
    _write(tmp_path / "dl" / "test" / "fractured" / "copy.png", copy)
    builder = prepare.prepare_dataset("fracture_xray/grouped", str(tmp_path / "d"), str(tmp_path / "dl"),
                                      log=lambda _: None)
    splits = _read(builder)
    where = {_text(e["filename"]): s for s in SPLITS for e in splits[s]}
    assert where["test/fractured/copy.png"] == where["train/fractured/0.png"]
    moves = builder.info.metadata["split"]["moves"]
    assert len(moves) == 1 and moves[0]["reason"].startswith("its group also held")
    published = {"train": "train", "val": "validation", "test": "test"}
    moved = {m["path"] for m in moves}
    assert all(where[name] == published[name.split("/")[0]] for name in where if name not in moved)
    assert tfds.builder("fracture_xray/grouped", data_dir=str(tmp_path / "d")).is_prepared()


# ----------------------------------------------------------------------------- parsers (hypothesis)

unit = st.floats(0.0, 1.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(unit, unit, unit, unit), max_size=4))
def test_yolo_rows_become_boxes_inside_the_image(rows):
    text = "".join(f"0 {cx} {cy} {w} {h}\n" for cx, cy, w, h in rows)
    boxes = fracatlas_lib.yolo_boxes(text, "a.txt")
    assert boxes.shape == (len(rows), 4)
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()
    for (cx, cy, w, h), (y0, x0, y1, x1) in zip(rows, boxes, strict=True):
        if w / 2 <= cx <= 1 - w / 2 and h / 2 <= cy <= 1 - h / 2:  # inside: no clipping, the centre is kept
            assert (x0 + x1) / 2 == pytest.approx(cx, abs=1e-6) and (y0 + y1) / 2 == pytest.approx(cy, abs=1e-6)


def test_a_bad_yolo_or_voc_file_names_itself():
    with pytest.raises(ValueError, match=r"a.txt:2: expected 'class cx cy w h'"):
        fracatlas_lib.yolo_boxes("0 0.5 0.5 0.1 0.1\n0 half 0.5 0.1 0.1\n", "a.txt")
    with pytest.raises(ValueError, match=r"a.xml: not a PASCAL VOC annotation"):
        fracatlas_lib.voc_boxes("<annotation><object>", "a.xml")
    voc = ("<annotation><size><width>200</width><height>100</height></size><object><bndbox><xmin>20</xmin>"
           "<ymin>10</ymin><xmax>60</xmax><ymax>50</ymax></bndbox></object></annotation>")
    np.testing.assert_allclose(fracatlas_lib.voc_boxes(voc, "a.xml"), [[0.1, 0.1, 0.5, 0.3]])


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(builders.POSITIVE_NAMES + builders.NEGATIVE_NAMES),
       st.lists(st.sampled_from([" ", "_", "-"]), min_size=1, max_size=1), st.booleans())
def test_class_names_any_case_and_separator(name, separator, upper):
    written = name.replace(" ", separator[0])
    written = written.upper() if upper else written.title()
    assert builders.class_label(written) == int(name in builders.POSITIVE_NAMES)


def test_a_failed_preparation_leaves_no_half_built_data_set(tmp_path):
    (tmp_path / "download").mkdir()
    (tmp_path / "download" / "readme.txt").write_text("not the Kaggle folders")
    (tmp_path / "data" / "fracture_xray" / "384").mkdir(parents=True)  # another config's folder: kept
    with pytest.raises(FileNotFoundError, match="no folder with train/, val/ and test/"):
        prepare.prepare_dataset("fracture_xray", data_dir=str(tmp_path / "data"), manual_dir=str(tmp_path / "download"))
    assert "384" in os.listdir(tmp_path / "data" / "fracture_xray")  # its config folder went, the other stayed
    assert "224" not in os.listdir(tmp_path / "data" / "fracture_xray")
    with pytest.raises(FileNotFoundError):
        prepare.prepare_dataset("fracture_xray", data_dir=str(tmp_path / "new"), manual_dir=str(tmp_path / "download"))
    assert not (tmp_path / "new" / "fracture_xray").exists()
