"""Grad-CAM and Grad-CAM++: they point at what drives the logit, on a toy
model whose answer is known, and run on every registered architecture."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import fracjax
from fracjax.evaluation import gradcam
from tests.helpers import random_variables


class Detectors(nn.Module):
    """Two fixed detectors: channel 0 fires on bright pixels (> 200),
    channel 1 on mid-grey ones (~128); average-pooled 4x4 so the map is
    coarser than the image."""

    @nn.compact
    def __call__(self, x):
        x = x[..., :1]
        maps = jnp.concatenate([nn.relu(x - 200.0), nn.relu(60.0 - jnp.abs(x - 128.0))], axis=-1)
        return nn.avg_pool(maps, (4, 4), strides=(4, 4))


class Toy(nn.Module):
    channel: int  # the detector that drives the logit

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = Detectors(name="features")(x)
        w = self.param("w", nn.initializers.ones, (1,))
        return (jnp.mean(features[..., self.channel], axis=(1, 2)) * w - 1.0)[:, None]


def toy_images():
    """Two images: a bright square and a grey square in different places."""
    images = np.zeros((2, 64, 64, 1), np.float32)
    images[0, 8:16, 40:48] = 255.0  # bright, top right
    images[0, 44:52, 8:16] = 128.0  # grey, bottom left
    images[1, 40:48, 40:48] = 255.0  # bright, bottom right
    images[1, 4:12, 4:12] = 128.0  # grey, top left
    return images, [((8, 16), (40, 48)), ((40, 48), (40, 48))], [((44, 52), (8, 16)), ((4, 12), (4, 12))]


@pytest.mark.parametrize("method", gradcam.METHODS)
@pytest.mark.parametrize("channel", [0, 1])
def test_map_peaks_where_the_logit_is_driven(method, channel):
    model = Toy(channel=channel)
    images, bright, grey = toy_images()
    variables = model.init(jax.random.key(0), images)
    out = gradcam.grad_cam(model, variables, images, layer="features", method=method)
    maps = out["maps"]
    chex.assert_shape(maps, (2, 64, 64))
    chex.assert_shape(out["raw"], (2, 16, 16))
    driving, other = (bright, grey) if channel == 0 else (grey, bright)
    for i in range(2):
        peak = np.unravel_index(np.argmax(maps[i]), maps[i].shape)
        (y0, y1), (x0, x1) = driving[i]
        assert y0 - 2 <= peak[0] < y1 + 2 and x0 - 2 <= peak[1] < x1 + 2, (i, peak)
        (y0, y1), (x0, x1) = other[i]
        assert maps[i][y0:y1, x0:x1].max() < 0.05  # the other detector carries no weight
        assert maps[i].max() == pytest.approx(1.0)
    expected = jax.nn.sigmoid(model.apply(variables, images)[:, 0])
    np.testing.assert_allclose(out["probabilities"], expected, rtol=1e-6)


def test_the_other_class_gets_an_empty_map():
    model = Toy(channel=0)
    images, _, _ = toy_images()
    variables = model.init(jax.random.key(0), images)
    # Evidence against "not fractured" is all positive weight on the logit: nothing survives the ReLU.
    out = gradcam.grad_cam(model, variables, images, layer="features", target=0)
    assert np.all(out["maps"] == 0.0)


# MobileNetV3-Small is explained in the fit and notebook tests.
@pytest.mark.parametrize("name", ["resnet50", "vgg16", "densenet121"])
def test_every_baseline_has_a_default_layer(name):
    model = fracjax.models.create(name, head="hybrid")
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 1)), jnp.float32)
    variables = random_variables(model, 64, seed=0)
    out = gradcam.grad_cam(model, variables, x, method="gradcam++")
    chex.assert_shape(out["maps"], (2, 64, 64))
    chex.assert_tree_all_finite(out)
    assert out["raw"].shape[1:] == (2, 2)  # the backbone's 1/32 map


def test_a_named_inner_layer_and_a_wrong_name():
    model = fracjax.models.create("mobilenet_v3_small", head="linear")
    x = jnp.zeros((1, 64, 64, 1))
    variables = random_variables(model, 64, seed=0)
    out = gradcam.grad_cam(model, variables, x + 100.0, layer="backbone/block3")
    assert out["raw"].shape == (1, 4, 4)  # block3 ends at 1/16
    with pytest.raises(
        gradcam.LayerNotFoundError, match="no layer 'backbone/blok3' in the model; did you mean 'backbone/block3'"
    ) as err:
        gradcam.grad_cam(model, variables, x, layer="backbone/blok3")
    assert len(str(err.value)) < 800  # a suggestion and the blocks, not every module
    with pytest.raises(ValueError, match="method"):
        gradcam.grad_cam(model, variables, x, method="cam")


def test_overlay_is_rgb_and_keeps_cold_regions_grey():
    image = np.full((8, 8), 100, np.uint8)
    cam = np.zeros((8, 8))
    cam[0, 0] = 1.0
    rgb = gradcam.overlay(image, cam)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert np.all(rgb[4, 4] == 100)  # no heat: the X-ray as it was
    assert rgb[0, 0, 0] > rgb[0, 0, 2]  # hot: red over blue


class _ToyClassifier:
    """What explain_methods_in_chunks reads of a Classifier: prepare, model, variables."""

    def __init__(self, channel):
        self.model = Toy(channel=channel)
        self.variables = self.model.init(jax.random.key(0), toy_images()[0])

    def prepare(self, inputs):
        return np.stack([np.asarray(x, np.float32) for x in inputs])


def test_every_method_from_one_pass_in_padded_chunks(monkeypatch):
    classifier = _ToyClassifier(channel=0)
    images = np.concatenate([toy_images()[0]] * 3)[:5]  # 5 images in chunks of 2: the last one padded
    checks = []
    real_layer_shape = gradcam.layer_shape
    monkeypatch.setattr(gradcam, "layer_shape", lambda *a, **k: checks.append(a) or real_layer_shape(*a, **k))
    gradcam._CHECKED_LAYERS.clear()
    out = gradcam.explain_methods_in_chunks(classifier, list(images), layer="features", chunk=2)
    assert len(checks) == 1  # the layer name is checked once per shape, not once per chunk
    chex.assert_shape(out["images"], (5, 64, 64, 1))
    for method in gradcam.METHODS:
        alone = gradcam.grad_cam(classifier.model, classifier.variables, images, layer="features", method=method)
        np.testing.assert_allclose(out["maps"][method], alone["maps"], atol=1e-6)
    single = gradcam.explain_in_chunks(classifier, list(images), layer="features", method="gradcam++", chunk=2)
    np.testing.assert_array_equal(single["maps"], out["maps"]["gradcam++"])
    with pytest.raises(gradcam.LayerNotFoundError, match="no layer 'featurez'"):
        gradcam.explain_methods_in_chunks(classifier, list(images), layer="featurez", chunk=2)
    with pytest.raises(ValueError, match="no images"):
        gradcam.explain_methods_in_chunks(classifier, [], layer="features")
