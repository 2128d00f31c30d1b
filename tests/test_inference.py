"""What ``Classifier.predict`` takes: shapes with one meaning, pixel values
of any dtype scaled as the same file from disk, per-item errors."""

import warnings

import numpy as np
import pytest
from PIL import Image

from fracjax.data.io import pixel_values, read_image
from fracjax.inference import Predictions
from tests.helpers import random_classifier


@pytest.fixture(scope="module")
def classifier():
    return random_classifier(seed=1, batch_size=4)


@pytest.fixture(scope="module")
def grey():
    return np.random.default_rng(0).integers(0, 256, (40, 36), dtype=np.uint8)


@pytest.mark.parametrize("shape", [(64, 64, 2), (2, 64, 64, 2), (64,), (1, 2, 3, 4, 5), (3, 40, 5)])
def test_shapes_without_one_meaning_are_refused(classifier, shape):
    with pytest.raises(ValueError, match=r"expected .*\(H, W\).*got shape"):
        classifier.predict(np.zeros(shape, np.uint8))


def test_one_image_in_every_accepted_shape_gives_one_number(classifier, grey):
    p = classifier.predict(grey)
    assert p.shape == (1,)
    for same in (grey[..., None], np.repeat(grey[..., None], 3, -1), grey[None], grey[None, ..., None],
                 np.dstack([np.repeat(grey[..., None], 3, -1), np.full_like(grey, 255)]), [grey]):
        np.testing.assert_allclose(classifier.predict(same), p, rtol=1e-12)
    batch = np.stack([grey, grey[::-1], 255 - grey])
    np.testing.assert_allclose(classifier.predict(batch)[0], p[0], rtol=1e-12)
    assert classifier.predict(batch).shape == (3,)


def test_a_uint16_array_is_read_as_the_same_16_bit_file(classifier, tmp_path):
    values = (np.random.default_rng(1).random((40, 36)) * 4000 + 100).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(values).save(path)
    assert read_image(path)[..., 0].max() == 255  # rescaled, not clipped
    np.testing.assert_array_equal(pixel_values(values), read_image(path)[..., 0])
    np.testing.assert_allclose(classifier.predict(values), classifier.predict(str(path)), rtol=1e-12)


def test_pixel_values_of_floats():
    floats = np.array([[0.0, 10.4], [200.6, 255.0]])
    np.testing.assert_array_equal(pixel_values(floats), [[0, 10], [201, 255]])
    np.testing.assert_array_equal(pixel_values(floats * 4 - 10), [[0, 10], [201, 255]])  # out of 0..255: min..max
    with pytest.warns(UserWarning, match=r"within \[0, 1\]"):
        pixel_values(np.array([[0.0, 0.5], [1.0, 0.2]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixel_values(np.zeros((2, 2)))  # an all-black float image is no [0, 1] image


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(classifier, grey, bad):
    image = grey.astype(np.float32)
    image[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or infinite pixel values"):
        classifier.predict(image)


def test_per_item_errors_raise_naming_the_item_or_are_skipped(classifier, grey, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(grey).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    items = [str(good), str(bad), grey, np.zeros((5, 5, 2))]
    with pytest.raises(ValueError, match="bad.png"):
        classifier.predict(items)
    result = classifier.predict(items, errors="skip")
    assert isinstance(result, Predictions) and sorted(result.failed) == [1, 3]
    assert "bad.png" in result.failed[1] and result.failed[3].startswith("item 3: expected")
    np.testing.assert_array_equal(result.ok, [True, False, True, False])
    assert np.isnan(result.probabilities[~result.ok]).all()
    np.testing.assert_allclose(result.probabilities[result.ok], classifier.predict([str(good), grey]), rtol=1e-12)
    with pytest.raises(ValueError, match="errors must be one of"):
        classifier.predict(items, errors="ignore")
