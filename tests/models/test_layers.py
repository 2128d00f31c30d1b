import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fracjax.models import layers


@pytest.mark.parametrize(
    "size,kernel,stride,padding",
    [
        (12, 3, 1, "SAME"),
        (13, 3, 1, "SAME"),
        (12, 3, 2, "KERAS"),
        (13, 3, 2, "KERAS"),
        (12, 5, 1, "SAME"),
        (11, 5, 1, "VALID"),
        (14, 5, 2, "KERAS"),
        (15, 5, 2, "KERAS"),
        (9, 3, 2, "SAME"),
        (12, 3, 2, "VALID"),  # the last row and column are read by no window
        (14, 5, 2, "VALID"),
        (10, 3, 1, ((3, 2), (0, 3))),  # padding wider than the kernel: the generic input gradient
    ],
)
def test_shift_depthwise_matches_lax_value_and_gradients(size, kernel, stride, padding):
    kx, kk, kg = jax.random.split(jax.random.key(size * 100 + kernel * 10 + stride), 3)
    channels = 6
    x = jax.random.normal(kx, (2, size, size + 1, channels))  # non-square on purpose
    w = jax.random.normal(kk, (kernel, kernel, 1, channels))

    def run(impl):
        def f(x, w):
            return layers.depthwise_conv(x, w, (stride, stride), padding, impl=impl)

        y = f(x, w)
        cot = jax.random.normal(kg, y.shape)
        _, vjp = jax.vjp(f, x, w)
        return y, vjp(cot)

    y_shift, (dx_shift, dw_shift) = jax.jit(lambda: run("shift"))()
    y_lax, (dx_lax, dw_lax) = jax.jit(lambda: run("lax"))()
    chex.assert_equal_shape([y_shift, y_lax])
    chex.assert_trees_all_close(y_shift, y_lax, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(dx_shift, dx_lax, rtol=1e-5, atol=1e-5)
    chex.assert_trees_all_close(dw_shift, dw_lax, rtol=1e-5, atol=1e-4)


def test_shift_depthwise_second_call_does_not_recompile():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 1, 4))
    f = jax.jit(jax.grad(lambda x, w: layers.depthwise_conv(x, w, impl="shift").sum(), argnums=1))
    f(x, w)
    f(x + 1, w)
    assert f._cache_size() == 1


def test_depthwise_module_params_do_not_depend_on_impl():
    x = jax.random.normal(jax.random.key(0), (2, 10, 10, 8))
    mods = [layers.DepthwiseConv2D((3, 3), (2, 2), padding="KERAS", impl=i) for i in ("shift", "lax")]
    v = mods[0].init(jax.random.key(1), x)
    chex.assert_shape(v["params"]["kernel"], (3, 3, 1, 8))
    chex.assert_trees_all_close(mods[0].apply(v, x), mods[1].apply(v, x), rtol=1e-5, atol=1e-5)


def test_depthwise_impl_selection(monkeypatch):
    assert layers.resolve_depthwise_impl("auto") == ("shift" if jax.default_backend() == "cpu" else "lax")
    assert layers.resolve_depthwise_impl("lax") == "lax"
    monkeypatch.setattr(layers, "_default_impl", "lax")
    assert layers.resolve_depthwise_impl("auto") == "lax"
    assert layers.resolve_depthwise_impl("shift") == "shift"
    with pytest.raises(ValueError, match="depthwise impl"):
        layers.resolve_depthwise_impl("fast")
    with pytest.raises(ValueError, match="depthwise impl"):
        layers.set_default_depthwise_impl("cuda")


@pytest.mark.parametrize(
    "kernel,stride,padding,groups",
    [((1, 1), 1, "SAME", 1), ((1, 1), 1, "VALID", 1), ((1, 1), 2, "SAME", 1), ((3, 3), 1, "SAME", 1),
     ((1, 1), 1, "SAME", 2)],
)
def test_conv_matmul_matches_lax_value_and_gradients(kernel, stride, padding, groups):
    kx, kk, kg = jax.random.split(jax.random.key(7), 3)
    x = jax.random.normal(kx, (2, 9, 10, 8))
    w = jax.random.normal(kk, (*kernel, 8 // groups, 12))

    def run(impl):
        def f(x, w):
            return layers.conv_general_dilated(
                x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups, impl=impl)

        y = f(x, w)
        _, vjp = jax.vjp(f, x, w)
        return y, vjp(jax.random.normal(kg, y.shape))

    y_mm, grads_mm = jax.jit(lambda: run("matmul"))()
    y_lax, grads_lax = jax.jit(lambda: run("lax"))()
    chex.assert_equal_shape([y_mm, y_lax])
    chex.assert_trees_all_close((y_mm, grads_mm), (y_lax, grads_lax), rtol=1e-5, atol=1e-4)


def test_conv_matmul_takes_pointwise_and_small_patch_convolutions_only():
    x = jnp.ones((2, 6, 6, 40))  # 3x3x40 and 1x1x40 patches: too big for the patch path

    def primitives(kernel, strides, x=x):
        w = jnp.ones((*kernel, x.shape[-1], 3))
        jaxpr = jax.make_jaxpr(lambda x, w: layers.conv_general_dilated(
            x, w, strides, "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), impl="matmul"))(x, w)
        return {e.primitive.name for e in jaxpr.jaxpr.eqns}

    assert "dot_general" in primitives((1, 1), (1, 1))
    assert "conv_general_dilated" not in primitives((1, 1), (1, 1))
    assert "conv_general_dilated" in primitives((3, 3), (1, 1))
    assert "conv_general_dilated" in primitives((1, 1), (2, 2))
    assert "conv_general_dilated" not in primitives((3, 3), (2, 2), x[..., :3])


def test_conv_module_keeps_flax_parameters_and_impl_selection(monkeypatch):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    ours, theirs = layers.Conv(4, (1, 1)), nn.Conv(4, (1, 1))
    v = ours.init(jax.random.key(1), x)
    chex.assert_trees_all_equal_shapes(v, theirs.init(jax.random.key(1), x))
    chex.assert_trees_all_close(ours.apply(v, x), theirs.apply(v, x), rtol=1e-5, atol=1e-5)
    assert layers.resolve_conv_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "lax")
    monkeypatch.setattr(layers, "_default_conv_impl", "lax")
    assert layers.resolve_conv_impl("auto") == "lax"
    with pytest.raises(ValueError, match="conv impl"):
        layers.set_default_conv_impl("onednn")


@pytest.mark.parametrize("kernel,stride,channels", [((3, 3), 2, 1), ((3, 3), 2, 3), ((3, 3), 1, 3), ((2, 3), 2, 2)])
def test_small_patch_conv_matches_lax_value_and_gradients(kernel, stride, channels):
    kx, kk, kg = jax.random.split(jax.random.key(3), 3)
    x = jax.random.normal(kx, (2, 11, 12, channels))
    w = jax.random.normal(kk, (*kernel, channels, 5))

    def run(impl):
        def f(x, w):
            return layers.conv_general_dilated(x, w, (stride, stride), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"), impl=impl)

        y = f(x, w)
        _, vjp = jax.vjp(f, x, w)
        return y, vjp(jax.random.normal(kg, y.shape))

    jaxpr = jax.make_jaxpr(lambda: run("matmul"))()
    assert "conv_general_dilated" not in {e.primitive.name for e in jaxpr.jaxpr.eqns}
    chex.assert_trees_all_close(jax.jit(lambda: run("matmul"))(), jax.jit(lambda: run("lax"))(),
                                rtol=1e-5, atol=1e-4)


def test_repeated_channel_conv_on_grey_equals_conv_on_repeated_grey():
    grey = jax.random.uniform(jax.random.key(0), (2, 15, 16, 1), minval=-1.0, maxval=1.0)
    rgb = jnp.repeat(grey, 3, axis=-1)
    ours = layers.RepeatedChannelConv(8, (3, 3), strides=(2, 2), padding="SAME", use_bias=False)
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


class _ConvThenNorm(nn.Module):
    """A 1x1 conv and a BatchNorm through layers.conv_batch_norm (as MobileNetV3's expand)."""

    features: int
    train: bool = True
    axis_name: str = None
    strides: int = 1  # flax also takes an int

    @nn.compact
    def __call__(self, x):
        conv = layers.Conv(self.features, (1, 1), strides=self.strides, use_bias=False, name="expand")
        norm = layers.BatchNorm(use_running_average=not self.train, momentum=0.9, epsilon=1e-3,
                                axis_name=self.axis_name, name="expand_bn")
        return layers.conv_batch_norm(conv, norm, x)


def _conv_then_norm_loss(module, r):
    def loss(v, x):
        y, updates = module.apply(v, x, mutable=["batch_stats"])
        return (y * r).sum() + (y ** 2).sum(), (y, updates)

    return loss


def _folded(module, v, x) -> bool:
    jaxpr = jax.make_jaxpr(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(v, x)
    return "pointwise_conv_batch_norm_train" in str(jaxpr)


def _assert_fold_matches_conv_then_norm(monkeypatch, module, v, x, r):
    """Values, running-average updates and gradients (kernel, scale, bias,
    input) of the folded path ("matmul" impl) against conv, then BatchNorm's
    own pass ("lax" impl). The folded kernel gradient sums terms that cancel
    (x^T g against the x^T x correction) before BatchNorm's projection, so its
    float32 error scales with the largest entry, not each entry (against
    float64: ~3e-5 of the largest kernel gradient, conv + BN ~7e-6)."""
    grad = jax.value_and_grad(_conv_then_norm_loss(module, r), argnums=(0, 1), has_aux=True)
    monkeypatch.setattr(layers, "_default_conv_impl", "matmul")
    assert _folded(module, v, x)
    got = jax.jit(lambda v, x: grad(v, x))(v, x)  # a new function each time: jit's cache would keep the first trace
    monkeypatch.setattr(layers, "_default_conv_impl", "lax")
    assert not _folded(module, v, x)
    want = jax.jit(lambda v, x: grad(v, x))(v, x)
    chex.assert_trees_all_equal_structs(got, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-5 * float(jnp.max(jnp.abs(b)))),
                 got, want)
    chex.assert_tree_all_finite(got)


@pytest.mark.parametrize("c_in,c_out,chunked_rows", [(3, 8, 65536), (4, 24, 65536), (4, 24, 0)])
def test_conv_batch_norm_folds_a_widening_pointwise_conv_with_the_same_results(monkeypatch, c_in, c_out,
                                                                              chunked_rows):
    monkeypatch.setattr(layers, "CHUNKED_ROWS", chunked_rows)  # 0: x^T x and x^T g summed per image
    # Non-zero-mean, correlated input channels: the statistics come from x^T x.
    base = jax.random.normal(jax.random.key(0), (4, 5, 6, c_in))
    x = jax.nn.relu(base + 0.5 * base[..., :1]) + 0.3
    r = jax.random.normal(jax.random.key(1), (*x.shape[:-1], c_out))
    module = _ConvThenNorm(c_out)
    v = module.init(jax.random.key(2), x)
    chex.assert_trees_all_equal_shapes(v, {"params": {"expand": {"kernel": jnp.zeros((1, 1, c_in, c_out))},
                                                      "expand_bn": {"scale": jnp.zeros(c_out), "bias": jnp.zeros(c_out)}},
                                           "batch_stats": {"expand_bn": {"mean": jnp.zeros(c_out),
                                                                         "var": jnp.zeros(c_out)}}})
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), v)
    _assert_fold_matches_conv_then_norm(monkeypatch, module, v, x, r)


def test_conv_batch_norm_folds_only_widening_train_mode_pointwise_convs(monkeypatch):
    monkeypatch.setattr(layers, "_default_conv_impl", "matmul")
    x = jnp.ones((2, 4, 4, 8))
    for module, folds in ((_ConvThenNorm(16), True), (_ConvThenNorm(12), False),  # 1.5x: x^T x too dear
                          (_ConvThenNorm(16, train=False), False), (_ConvThenNorm(16, strides=2), False)):
        v = module.init(jax.random.key(0), x)
        assert _folded(module, v, x) is folds, module
    # Inference mode still applies the running statistics to conv(x).
    module = _ConvThenNorm(16, train=False)
    v = module.init(jax.random.key(0), x)
    v = jax.tree.map(lambda a: a + 0.5, v)
    kernel = v["params"]["expand"]["kernel"]
    bn = v["params"]["expand_bn"]
    stats = v["batch_stats"]["expand_bn"]
    z = layers.pointwise_matmul_conv(x, kernel)
    want = (z - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-3) * bn["scale"] + bn["bias"]
    chex.assert_trees_all_close(module.apply(v, x), want, rtol=1e-5, atol=1e-5)


class _StemThenNorm(nn.Module):
    """A grey stem (RepeatedChannelConv, 3x3/2) and its BatchNorm through layers.conv_batch_norm."""

    features: int = 16
    strides: tuple = (2, 2)

    @nn.compact
    def __call__(self, x):
        conv = layers.RepeatedChannelConv(self.features, (3, 3), strides=self.strides, use_bias=False,
                                          padding="SAME", name="stem_conv")
        norm = layers.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-3, name="stem_bn")
        return layers.conv_batch_norm(conv, norm, x)


@pytest.mark.parametrize("strides,features", [((2, 2), 16), ((1, 1), 12)])
def test_conv_batch_norm_folds_a_small_patch_stem_on_its_patches(monkeypatch, strides, features):
    x = jax.random.uniform(jax.random.key(0), (3, 9, 10, 1), minval=-1.0, maxval=1.0) + 0.2
    module = _StemThenNorm(features, strides)
    v = module.init(jax.random.key(2), x)
    assert v["params"]["stem_conv"]["kernel"].shape == (3, 3, 3, features)  # the RGB kernel, as before
    v = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), v)
    y = module.apply(v, x, mutable=["batch_stats"])[0]
    r = jax.random.normal(jax.random.key(1), y.shape)
    _assert_fold_matches_conv_then_norm(monkeypatch, module, v, x, r)
    # An RGB stem's 27-value patches outgrow 16 features: not folded.
    monkeypatch.setattr(layers, "_default_conv_impl", "matmul")
    rgb = jnp.concatenate([x] * 3, axis=-1)
    assert not _folded(_StemThenNorm(16), _StemThenNorm(16).init(jax.random.key(2), rgb), rgb)


def test_folded_conv_batch_norm_axis_name_matches_conv_then_batch_norm():
    x = jax.nn.relu(jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4)) + 0.2)  # (devices, batch, h, w, c)
    r = jax.random.normal(jax.random.key(1), (*x.shape[:-1], 12))
    kernel = jax.random.normal(jax.random.key(2), (1, 1, 4, 12))
    scale, bias = 1 + 0.1 * jnp.arange(12.0), 0.05 * jnp.arange(12.0)

    def per_device(fn):
        def loss(x, kernel, scale, bias, r):
            y, mean, var = fn(x, kernel, scale, bias)
            return (y * r).sum() + (y ** 2).sum(), (mean, var)

        grad = jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True)
        return jax.vmap(grad, in_axes=(0, None, None, None, 0), axis_name="devices")(x, kernel, scale, bias, r)

    got = per_device(lambda x, k, s, b: layers.pointwise_conv_batch_norm_train(x, k, s, b, 1e-3, "devices"))
    want = per_device(lambda x, k, s, b: layers.batch_norm_train(layers.pointwise_matmul_conv(x, k), s, b, 1e-3,
                                                                 "devices"))
    # Two float32 summation orders: on 2026-12-01's machine one input-gradient element of 384 (values up
    # to ~10) differed by 2.3e-5, at the session's first commit too; a wrong term in the fold is >= 1e-2.
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


def test_depthwise_rejects_wrong_kernel_shape():
    with pytest.raises(ValueError, match="kernel must be"):
        layers.depthwise_conv(jnp.ones((1, 8, 8, 4)), jnp.ones((3, 3, 4, 1)))


def test_keras_correct_pad_even_and_odd():
    assert layers.keras_correct_pad((224, 224), (3, 3)) == ((0, 1), (0, 1))
    assert layers.keras_correct_pad((224, 224), (5, 5)) == ((1, 2), (1, 2))
    assert layers.keras_correct_pad((225, 28), (3, 5)) == ((1, 1), (1, 2))
    # At even sizes it equals "SAME".
    assert layers.resolve_padding("KERAS", (56, 56), (5, 5), (2, 2)) == layers.same_pad((56, 56), (5, 5), (2, 2))
    assert layers.resolve_padding("KERAS", (57, 57), (3, 3), (1, 1)) == ((1, 1), (1, 1))
    with pytest.raises(ValueError, match="padding"):
        layers.resolve_padding("FULL", (8, 8), (3, 3), (1, 1))


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
