"""The TFDS builders, prepared in a temporary folder and read back without TensorFlow."""

import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import fracjax.data.builders  # noqa: F401  (registers the builders)
from fracjax.data import builders, synthetic
from fracjax.data.io import ImageDecodeError


def _write(path, image, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, **kw)


@pytest.fixture(scope="module")
def kaggle_tree(tmp_path_factory):
    """A small copy of the Kaggle layout: doubled folder, space in a class
    name, mixed extensions and case, junk, one unreadable file."""
    top = tmp_path_factory.mktemp("download")
    root = top / "Bone_Fracture_Binary_Classification" / "Bone_Fracture_Binary_Classification"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for cls in ("fractured", "not fractured"):
            for i in range(n):
                img = rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)
                ext = [".jpg", ".png", ".JPEG"][i % 3]
                _write(root / split / cls / f"{i}{ext}", img, **({"quality": 95} if ext != ".png" else {}))
    (root / "train" / "fractured" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (root / "train" / "not fractured" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "train" / "not fractured" / "readme.txt").write_text("ignored")
    return top, root


@pytest.fixture(scope="module")
def prepared(kaggle_tree, tmp_path_factory):
    top, _ = kaggle_tree
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = tfds.builder("fracture_xray/224", data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(top)))
    return data_dir, builder


def test_split_root_is_found_below_the_download(kaggle_tree):
    top, root = kaggle_tree
    assert builders.find_split_root(top) == str(root)
    assert builders.find_split_root(root) == str(root)
    with pytest.raises(FileNotFoundError, match="train/, val/ and test/"):
        builders.find_split_root(root / "train")


def test_class_folder_names():
    assert builders.class_label("fractured") == 1
    assert builders.class_label("Not Fractured") == 0
    assert builders.class_label("not_fractured") == 0
    assert builders.class_label("maybe") is None


def test_real_builder_splits_features_and_skipped(prepared):
    data_dir, builder = prepared
    assert {s: builder.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
        "train": 12,
        "validation": 4,
        "test": 4,
    }
    skipped = builder.info.metadata["skipped"]
    assert [s["path"] for s in skipped] == ["train/not fractured/broken.jpg"]
    assert skipped[0]["reason"]
    # Read back with no TensorFlow: array_record + tfds.data_source.
    assert "tensorflow" not in sys.modules
    source = tfds.data_source("fracture_xray/224", data_dir=str(data_dir))
    examples = [source["train"][i] for i in range(len(source["train"]))]
    names = sorted(e["filename"].decode() for e in examples)
    assert "train/not fractured/0.jpg" in names and "train/fractured/5.JPEG" in names
    for e in examples:
        assert e["image"].shape == (224, 224, 1) and e["image"].dtype == np.uint8
        want = 1 if e["filename"].decode().startswith("train/fractured/") else 0
        assert e["label"] == want
    # Metadata survives a fresh builder.
    again = tfds.builder("fracture_xray/224", data_dir=str(data_dir))
    assert again.info.metadata["skipped"] == skipped


def test_stored_pixels_are_the_keras_resize(prepared, kaggle_tree):
    data_dir, _ = prepared
    _, root = kaggle_tree
    source = tfds.data_source("fracture_xray/224", data_dir=str(data_dir))["test"]
    example = next(source[i] for i in range(len(source)) if source[i]["filename"] == b"test/fractured/1.png")
    original = fracjax.data.read_image(root / "test" / "fractured" / "1.png")
    expected = np.clip(np.round(fracjax.data.resize_bilinear(original, (224, 224))), 0, 255)
    np.testing.assert_array_equal(example["image"], expected.astype(np.uint8))


def test_strict_turns_a_bad_file_into_an_error(kaggle_tree, tmp_path):
    top, _ = kaggle_tree
    builder = tfds.builder("fracture_xray/224", data_dir=str(tmp_path), strict=True)
    with pytest.raises(ImageDecodeError, match="broken.jpg"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(top)))


def test_missing_manual_dir_is_a_clear_error(tmp_path):
    builder = tfds.builder("fracture_xray/224", data_dir=str(tmp_path / "d"))
    with pytest.raises(Exception, match="kaggle|manual"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "nowhere"))
        )


def test_synthetic_builder_tiny(tmp_path):
    config = builders.SyntheticFractureConfig(
        name="unit", image_size=64, num_train=10, num_validation=4, num_test=4, seed=3
    )
    builder = builders.SyntheticFracture(config=config, data_dir=str(tmp_path))
    builder.download_and_prepare()
    source = builder.as_data_source()
    train = source["train"]
    assert len(train) == 10
    by_name = {train[i]["filename"].decode(): train[i] for i in range(10)}
    # Each stored example is exactly what the in-memory generator makes.
    for name, example in by_name.items():
        index = int(os.path.splitext(os.path.basename(name))[0])
        image, label, boxes = synthetic.generate_example_with_boxes(
            3, "train", index, synthetic.SyntheticConfig(size=64)
        )
        np.testing.assert_array_equal(example["image"], image)
        assert example["label"] == label
        np.testing.assert_array_equal(example["boxes"], boxes)
    labels = [e["label"] for e in by_name.values()]
    assert sum(labels) == 5  # balanced


def test_synthetic_fracture_boxes_mark_the_fracture_and_change_no_image():
    config = synthetic.SyntheticConfig(size=96)
    found = 0
    for index in range(40):
        image, label, boxes = synthetic.generate_example_with_boxes(0, "test", index, config)
        np.testing.assert_array_equal(image, synthetic.generate_example(0, "test", index, config)[0])
        if label == 0:
            assert boxes.shape == (0, 4)
            continue
        found += len(boxes)
        for y0, x0, y1, x1 in boxes:
            assert 0 <= y0 < y1 <= 1 and 0 <= x0 < x1 <= 1
            assert (y1 - y0) * (x1 - x0) < 0.1  # around the line through the bone, not the whole bone
    assert found >= 18  # nearly every one of the 20 fractures lies in view


def test_an_all_unreadable_split_or_empty_manual_dir_is_a_clear_error(tmp_path):
    from fracjax.data import prepare

    root = tmp_path / "download"
    rng = np.random.default_rng(1)
    for split in ("train", "val", "test"):
        for cls in ("fractured", "not fractured"):
            if split == "val":
                (root / split / cls).mkdir(parents=True)
                (root / split / cls / "x.jpg").write_bytes(b"\xff\xd8 truncated")
            else:
                _write(root / split / cls / "a.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"none of the 2 image file\(s\) of the validation split .* is readable "
                                         r"\(the first, val/fractured/x.jpg: "):
        prepare.prepare_dataset("fracture_xray/224", str(tmp_path / "d"), str(root), log=lambda _: None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        FileNotFoundError, match=r"--manual-dir .*empty is empty: it should hold the unzipped Kaggle download"
    ):
        prepare.prepare_dataset("fracture_xray/224", str(tmp_path / "d2"), str(tmp_path / "empty"), log=lambda _: None)


def test_an_unknown_data_set_is_said_in_one_line(tmp_path):
    from fracjax.data import prepare

    with pytest.raises(ValueError, match="--dataset: cannot load 'no_such_set'") as err:
        prepare.prepare_dataset("no_such_set", str(tmp_path), log=lambda _: None)
    assert len(str(err.value)) < 500
