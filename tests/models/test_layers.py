import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fracjax.models import layers, migrate


def test_depthwise_module_params_do_not_depend_on_impl():
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 8))
    mods = [layers.DepthwiseConv2D((3, 3), (2, 2), padding="KERAS", impl=i) for i in ("shift", "lax")]
    v = mods[0].init(jax.random.key(1), x)
    chex.assert_shape(v["params"]["kernel"], (3, 3, 1, 8))
    chex.assert_trees_all_close(mods[0].apply(v, x), mods[1].apply(v, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["matmul", "lax", "auto"])
@pytest.mark.parametrize("kernel,strides,padding,bias", [((1, 1), 1, "SAME", True), ((3, 3), 2, "VALID", False),
                                                         ((3, 3), (1, 2), ((1, 0), (2, 1)), True)])
def test_conv_module_has_flax_s_parameters_and_results(impl, kernel, strides, padding, bias):
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    ours = layers.Conv(4, kernel, strides=strides, padding=padding, use_bias=bias, impl=impl)
    theirs = nn.Conv(4, kernel, strides=strides, padding=padding, use_bias=bias)
    v = ours.init(jax.random.key(1), x)
    chex.assert_trees_all_equal(v, theirs.init(jax.random.key(1), x))  # same names, shapes and initial values
    v = jax.tree.map(lambda a: a + 0.1, v)
    chex.assert_trees_all_close(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)


def test_conv_with_in_channels_takes_grey_as_the_channel_repeated():
    grey = jax.random.uniform(jax.random.key(0), (2, 15, 16, 1), minval=-1.0, maxval=1.0)
    rgb = jnp.repeat(grey, 3, axis=-1)
    ours = layers.Conv(8, (3, 3), strides=(2, 2), padding="SAME", use_bias=False, in_channels=3)
    plain = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
    v = ours.init(jax.random.key(1), grey)
    chex.assert_trees_all_equal_shapes(v, plain.init(jax.random.key(1), rgb))
    chex.assert_trees_all_close(ours.apply(v, grey), plain.apply(v, rgb), rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(ours.apply(v, rgb), plain.apply(v, rgb), rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda v: (ours.apply(v, grey) ** 2).sum())(v)
    g_plain = jax.grad(lambda v: (plain.apply(v, rgb) ** 2).sum())(v)
    chex.assert_trees_all_close(g_ours, g_plain, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="input channels"):
        ours.apply(v, jnp.ones((1, 8, 8, 2)))


@pytest.mark.parametrize("shape", [(4, 6, 5, 8), (16, 3)])
def test_batch_norm_matches_flax_in_train_and_inference_mode(shape):
    x = jax.random.normal(jax.random.key(0), shape) * 3 + 2
    r = jax.random.normal(jax.random.key(1), shape)
    ours = layers.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3)
    v = ref.init(jax.random.key(2), x)
    chex.assert_trees_all_equal_structs(v, ours.init(jax.random.key(2), x))
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), v)

    def loss(module, v, x):
        y, updates = module.apply(v, x, mutable=["batch_stats"])
        return (y * r).sum() + (y ** 2).sum(), (y, updates)

    # Values, running-average updates, and gradients for parameters and input.
    got = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(ours, v, x)
    want = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(ref, v, x)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(layers.BatchNorm(True, epsilon=1e-3).apply(v, x),
                                nn.BatchNorm(True, epsilon=1e-3).apply(v, x))


def test_batch_norm_axis_name_averages_statistics_and_gradients_like_flax():
    x = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 6)) * 2 - 1  # (devices, batch, h, w, c)
    r = jax.random.normal(jax.random.key(1), x.shape)
    v = nn.BatchNorm(False).init(jax.random.key(2), x[0])

    def per_device(module):
        def loss(v, x, r):
            y, updates = module.apply(v, x, mutable=["batch_stats"])
            return (y * r).sum() + (y ** 2).sum(), updates

        grad = jax.grad(loss, argnums=(0, 1), has_aux=True)
        return jax.vmap(grad, in_axes=(None, 0, 0), axis_name="devices")(v, x, r)

    got = per_device(layers.BatchNorm(False, momentum=0.9, axis_name="devices"))
    want = per_device(nn.BatchNorm(False, momentum=0.9, axis_name="devices"))
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)


class _Separate(nn.Module):
    """A Conv and a BatchNorm, each its own module (ConvBN keeps the same variables, the BatchNorm's under its
    own name: fracjax.models.migrate moves one tree into the other)."""

    features: int
    kernel: tuple = (1, 1)
    strides: int = 1
    train: bool = True
    in_channels: int = None

    @nn.compact
    def __call__(self, x):
        x = layers.Conv(self.features, self.kernel, strides=self.strides, use_bias=False, impl="lax",
                        in_channels=self.in_channels, name="expand")(x)
        return layers.BatchNorm(not self.train, momentum=0.9, epsilon=1e-3, name="expand_bn")(x)


class _Joint(nn.Module):
    """The same two layers as one ConvBN, inside a parent as in the models."""

    features: int
    kernel: tuple = (1, 1)
    strides: int = 1
    train: bool = True
    in_channels: int = None
    impl: str = "auto"
    fold: bool = True

    @nn.compact
    def __call__(self, x):
        return layers.ConvBN(self.features, self.kernel, strides=self.strides, in_channels=self.in_channels,
                             train=self.train, momentum=0.9, epsilon=1e-3, impl=self.impl, fold=self.fold,
                             name="expand", norm_name="expand_bn")(x)


def _loss_and_grads(module, v, x, r):
    def loss(v, x):
        y, updates = module.apply(v, x, mutable=["batch_stats"])
        return (y * r).sum() + (y ** 2).sum(), (y, updates)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(v, x)


@pytest.mark.parametrize("c_in,features,kernel,strides,in_channels", [
    (4, 16, (1, 1), 1, None),  # a widening pointwise conv: folds
    (8, 4, (1, 1), 1, None),  # narrowing: conv, then BatchNorm
    (1, 16, (3, 3), 2, 3),  # the grey stem on its patches
])
def test_conv_bn_keeps_the_separate_layers_variables_and_results(c_in, features, kernel, strides, in_channels):
    base = jax.random.normal(jax.random.key(0), (3, 9, 10, c_in))
    x = jax.nn.relu(base + 0.5 * base[..., :1]) + 0.3
    separate = _Separate(features, kernel, strides, in_channels=in_channels)
    v = separate.init(jax.random.key(1), x)
    target = jax.eval_shape(_Joint(features, kernel, strides, in_channels=in_channels).init, jax.random.key(1), x)
    assert set(target["params"]["expand"]) == {"kernel", "expand_bn"}  # the BatchNorm is ConvBN's own child

    def joint(tree):
        return migrate.upgrade_variables(tree, {k: target[k] for k in tree})

    for impl in ("matmul", "lax", "auto"):
        chex.assert_trees_all_equal(_Joint(features, kernel, strides, in_channels=in_channels, impl=impl)
                                    .init(jax.random.key(1), x), joint(v))
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), v)
    r = jax.random.normal(jax.random.key(4), separate.apply(v, x, mutable=["batch_stats"])[0].shape)
    (loss, (y, updates)), (grad_v, grad_x) = _loss_and_grads(separate, v, x, r)
    want = (loss, (y, joint(updates))), (joint(grad_v), grad_x)
    for impl in ("matmul", "lax"):
        got = _loss_and_grads(_Joint(features, kernel, strides, in_channels=in_channels, impl=impl), joint(v), x, r)
        # The folded kernel gradient's float32 error scales with its largest entry (tests/ops/test_batch_norm.py).
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5 * float(jnp.max(jnp.abs(b)))),
                     got, want)
    inference = _Joint(features, kernel, strides, train=False, in_channels=in_channels)
    chex.assert_trees_all_close(inference.apply(joint(v), x), _Separate(features, kernel, strides, train=False,
                                                                  in_channels=in_channels).apply(v, x),
                                rtol=1e-5, atol=1e-5)


def _folds(module, x) -> bool:
    v = module.init(jax.random.key(0), x)
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(v, x)
    return "pointwise_conv_batch_norm_train" in str(jaxpr)


def test_conv_bn_folds_by_its_fields_in_train_mode_only():
    x = jnp.ones((2, 4, 4, 8))
    assert _folds(_Joint(16, impl="matmul"), x)
    assert not _folds(_Joint(16, impl="matmul", fold=False), x)
    assert not _folds(_Joint(16, impl="lax"), x)
    assert not _folds(_Joint(16, impl="matmul", train=False), x)


@pytest.mark.parametrize(
    "expanded,squeeze", [(16, 8), (96, 24), (240, 64), (120, 32), (144, 40), (288, 72), (576, 144)]
)
def test_make_divisible_gives_the_keras_se_widths(expanded, squeeze):
    assert layers.make_divisible(expanded * 0.25) == squeeze


def test_activations():
    x = jnp.linspace(-6.0, 6.0, 101)
    chex.assert_trees_all_close(layers.hard_swish(x), jax.nn.hard_swish(x), atol=1e-6)
    chex.assert_trees_all_close(layers.hard_sigmoid(x), np.clip(np.asarray(x) + 3, 0, 6) / 6, atol=1e-6)


def test_to_rgb():
    grey = jnp.arange(12.0).reshape(1, 2, 2, 3)[..., :1]
    chex.assert_shape(layers.to_rgb(grey), (1, 2, 2, 3))
    with pytest.raises(ValueError, match="channels"):
        layers.to_rgb(jnp.ones((1, 2, 2, 2)))


@pytest.mark.parametrize(
    "mode, family", [("tf", "mobilenet_v3"), ("caffe", "resnet"), ("caffe", "vgg16"), ("torch", "densenet")]
)
def test_preprocess_input_matches_keras(keras, mode, family):
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, family).preprocess_input(rgb.copy())
    if family == "mobilenet_v3":  # Keras's is a no-op there: the model rescales inside
        expected = rgb / 127.5 - 1.0
    chex.assert_trees_all_close(layers.preprocess_input(jnp.asarray(rgb), mode), expected, rtol=1e-6, atol=1e-5)
    grey = rgb[..., :1]
    chex.assert_trees_all_close(
        layers.preprocess_input(jnp.asarray(grey), mode),
        layers.preprocess_input(jnp.asarray(np.repeat(grey, 3, -1)), mode),
    )


def test_preprocess_input_rejects_unknown_mode():
    with pytest.raises(ValueError, match="preprocessing mode"):
        layers.preprocess_input(jnp.ones((1, 2, 2, 3)), "imagenet")
