import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fracjax.data.augment import AugmentConfig, _affine_resample, augment_batch


def images(n=8, h=32, w=40, seed=0):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 255, (n, h, w, 1)).astype(np.float32))


def test_identity_at_factor_zero():
    x = images()
    out = augment_batch(jax.random.key(0), x, AugmentConfig.none())
    chex.assert_trees_all_equal(out, x)
    # Rotation and zoom ranges of 0 with no flip: the resampling path is exact too.
    chex.assert_trees_all_close(_affine_resample(x[0], False, 0.0, 1.0), x[0], atol=1e-4)


def test_flip_rate_is_one_half():
    n = 2000
    x = jnp.broadcast_to(jnp.arange(16.0)[None, None, :, None], (n, 4, 16, 1))
    out = augment_batch(jax.random.key(1), x, AugmentConfig(flip=True, rotation=0, zoom=0, contrast=0))
    flipped = np.asarray(out[:, 0, 0, 0] == 15.0)
    assert np.all((out[:, 0, 0, 0] == 15.0) | (out[:, 0, 0, 0] == 0.0))
    assert abs(flipped.mean() - 0.5) < 0.05


def test_contrast_keeps_the_mean():
    x = jnp.asarray(np.random.default_rng(2).uniform(100, 150, (64, 16, 16, 1)).astype(np.float32))
    config = AugmentConfig(flip=False, rotation=0, zoom=0, contrast=0.5)
    out = augment_batch(jax.random.key(2), x, config)
    chex.assert_trees_all_close(out.mean(axis=(1, 2)), x.mean(axis=(1, 2)), atol=1e-3)
    spread_ratio = np.asarray(out.std(axis=(1, 2)) / x.std(axis=(1, 2)))
    assert spread_ratio.min() >= 0.5 - 1e-4 and spread_ratio.max() <= 1.5 + 1e-4
    assert spread_ratio.std() > 0.1  # the factor varies per image


def test_deterministic_per_key_and_varies_across_keys():
    x = images()
    a = augment_batch(jax.random.key(3), x)
    b = augment_batch(jax.random.key(3), x)
    c = augment_batch(jax.random.key(4), x)
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a, c)
    chex.assert_shape(a, x.shape)
    assert a.dtype == jnp.float32 and float(a.min()) >= 0.0 and float(a.max()) <= 255.0


def test_example_result_does_not_depend_on_batch_size():
    x = images(8)
    full = augment_batch(jax.random.key(5), x)
    part = augment_batch(jax.random.key(5), x[:3])
    chex.assert_trees_all_close(full[:3], part, atol=1e-4)


def test_one_compile_for_fixed_shapes():
    f = jax.jit(augment_batch, static_argnums=2)
    config = AugmentConfig()
    f(jax.random.key(0), images(seed=1), config)
    f(jax.random.key(1), images(seed=2), config)
    assert f._cache_size() == 1


def test_invalid_factor():
    with pytest.raises(ValueError, match="rotation"):
        AugmentConfig(rotation=1.5)


@pytest.mark.parametrize("flip,angle_deg,zoom", [(False, 30.0, 1.1), (True, -12.0, 0.92), (True, 0.0, 1.0)])
def test_affine_matches_keras_reflect_fill(flip, angle_deg, zoom):
    import os

    assert os.environ["KERAS_BACKEND"] == "jax"
    import keras

    x = images(1, 24, 30, seed=6)[0]
    angle = math.radians(angle_deg)
    s = -1.0 if flip else 1.0
    h, w = x.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    c, n = math.cos(angle), math.sin(angle)
    # Keras's transform maps output (x, y) to input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    a0, a1 = zoom * c * s, zoom * n
    b0, b1 = -zoom * n * s, zoom * c
    a2 = cx - a0 * cx - a1 * cy
    b2 = cy - b0 * cx - b1 * cy
    transform = np.array([[a0, a1, a2, b0, b1, b2, 0.0, 0.0]], np.float32)
    expected = keras.ops.image.affine_transform(
        x[None], transform, interpolation="bilinear", fill_mode="reflect", data_format="channels_last"
    )[0]
    got = _affine_resample(x, flip, angle, zoom)
    chex.assert_trees_all_close(got, np.asarray(expected), atol=1e-3)


@pytest.mark.parametrize(
    "shape,angle_deg,zoom,max_zoom,rotates",
    [
        ((40, 40), 36.0, 1.1, 1.1, True),  # the default recipe's extreme: indices stay within one period
        ((40, 40), -36.0, 0.9, 1.1, True),
        ((12, 60), 50.0, 1.9, 1.9, True),  # wide image, large zoom: the remainder is needed
        ((30, 20), 0.0, 1.5, 1.5, False),
        ((30, 20), 170.0, 1.0, None, True),  # no bound given: always the remainder
    ],
)
def test_affine_resample_matches_scipy_map_coordinates(shape, angle_deg, zoom, max_zoom, rotates):
    from jax.scipy import ndimage

    h, w = shape
    x = jnp.asarray(images(1, h, w, seed=3)[0])
    angle = math.radians(angle_deg)
    got = jax.jit(lambda x: _affine_resample(x, True, angle, zoom, max_zoom, rotates))(x)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.meshgrid(np.arange(h) - cy, -(np.arange(w) - cx), indexing="ij")
    src = [zoom * (math.cos(angle) * yy - math.sin(angle) * xx) + cy,
           zoom * (math.sin(angle) * yy + math.cos(angle) * xx) + cx]
    expected = ndimage.map_coordinates(x[..., 0], [jnp.asarray(s, jnp.float32) for s in src], order=1,
                                       mode="reflect")
    # Coordinates rounded in float32 either way: agree to ~2e-5 of the pixel range.
    chex.assert_trees_all_close(got[..., 0], expected, atol=5e-3)


def test_reflect_needs_no_remainder_only_where_the_geometry_allows():
    from fracjax.data.augment import _reflect_fits

    assert _reflect_fits(224, 111.5, 1.1 * math.hypot(111.5, 111.5))
    assert not _reflect_fits(12, 5.5, 1.9 * math.hypot(5.5, 29.5))
    assert not _reflect_fits(10, 4.5, 15.0)
