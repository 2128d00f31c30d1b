"""Arrays from a notebook as a data folder: checked before anything is written,
written once per content, and read back by the folder's decoder as the model
input the arrays give ``predict``."""

import os

import numpy as np
import pytest

from fracjax.data import array_folder
from fracjax.data.io import model_input, read_image


def _arrays(n=20, seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 4096, (30 + i, 40), dtype=np.uint16) for i in range(n)]  # 12-bit, sizes differ
    return images, np.arange(n) % 2


def test_each_file_decodes_to_the_model_input_predict_gives_the_array(tmp_path):
    images, labels = _arrays()
    rgb = np.random.default_rng(1).integers(0, 256, (12, 24, 24, 3), dtype=np.uint8)
    floats = np.random.default_rng(2).uniform(0, 255, (8, 20, 20))
    folder = array_folder.write_array_folder((images, labels), validation=(rgb, np.arange(12) % 2),
                                             test=(floats, np.arange(8) % 2), root=str(tmp_path))
    written = {split: len(os.listdir(os.path.join(folder, split, "fractured"))) for split in ("train", "val", "test")}
    assert written == {"train": 10, "val": 6, "test": 4}
    for split, given, index in (("train", images, 1), ("val", rgb, 3), ("test", floats, 5)):
        path = os.path.join(folder, split, "fractured", f"{index:06d}.png")  # fractured: odd indices
        np.testing.assert_array_equal(model_input(read_image(path), 32), model_input(given[index], 32))
    again = array_folder.write_array_folder((images, labels), validation=(rgb, np.arange(12) % 2),
                                            test=(floats, np.arange(8) % 2), root=str(tmp_path))
    assert again == folder and len(os.listdir(tmp_path)) == 1  # the same arrays: the same folder, written once


def test_a_missing_test_split_is_drawn_from_data_never_from_validation():
    images, labels = _arrays(40)
    splits = array_folder.layout((images, labels), validation=(images[:10], labels[:10]), seed=3)
    assert {s: len(v[0]) for s, v in splits.items()} == {"train": 34, "val": 10, "test": 6}
    assert np.bincount(splits["test"][1]).tolist() == [3, 3]  # stratified
    assert list(array_folder.layout((images, labels))) == [None]  # data alone: the folder builder splits it


@pytest.mark.parametrize("data, message", [
    ((np.zeros((4, 8, 8), np.uint8), [0, 1, 2, 1]), r"data: labels must be 0 \(not fractured\) or 1"),
    ((np.zeros((4, 8, 8), np.uint8), [0, 1]), r"data: 4 images but labels of shape \(2,\)"),
    (([np.zeros((8, 8)), np.zeros((8, 8, 2))], [0, 1]), r"data\[1\]: an image is \(H, W\) or \(H, W, C\)"),
    (([np.zeros((8, 8)), np.full((8, 8), np.nan)], [0, 1]), r"data\[1\]: NaN or infinite pixels"),
    (([], []), "data: no images"),
])
def test_bad_arrays_are_refused_naming_the_example_before_anything_is_written(tmp_path, data, message):
    with pytest.raises(ValueError, match=message):
        array_folder.write_array_folder(data, root=str(tmp_path / "arrays"))
    assert not (tmp_path / "arrays").exists()
