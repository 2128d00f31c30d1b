"""Keras oracles for the parity and weight-import tests.

Each oracle is a ``keras.applications`` model with random weights and
randomised BatchNorm statistics and gammas (Keras's defaults are the identity,
which would hide a mis-mapped variable), built once per test module.
"""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest


def randomize_batchnorm(model, seed: int) -> None:
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c),  # gamma
                    rng.normal(0.0, 0.2, c),  # beta
                    rng.normal(0.0, 0.2, c),  # moving mean
                    rng.uniform(0.5, 1.5, c),  # moving variance
                ]
            )


def _random_weights(model, seed: int) -> None:
    """Seeded host draws for every non-BatchNorm weight: kernels from Keras's
    default Glorot-uniform distribution (its fans: the window times the in or
    out channels), biases small and non-zero (a zero bias would hide a
    mis-mapped one)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights or isinstance(layer, keras.layers.BatchNormalization):
            continue
        drawn = []
        for w in weights:
            if w.ndim == 1:
                drawn.append(rng.normal(0.0, 0.05, w.shape))
                continue
            window = int(np.prod(w.shape[:-2]))
            limit = np.sqrt(6.0 / (window * (w.shape[-2] + w.shape[-1])))
            drawn.append(rng.uniform(-limit, limit, w.shape))
        layer.set_weights([d.astype(w.dtype) for d, w in zip(drawn, weights, strict=True)])


def build_oracle(application: str, size: int, seed: int, include_top: bool = False, **kwargs):
    """A ``keras.applications`` model without weights, given seeded random
    ones. Keras's own initializers are replaced by zeros while it builds: they
    run eagerly, one compiled random draw per distinct shape (DenseNet169
    builds in 31 s with them, 3.6 s without), and every weight is drawn anew."""
    from unittest import mock

    import keras

    keras.utils.set_random_seed(seed)
    zeros = lambda self, shape, dtype=None: np.zeros(shape, "float32")  # noqa: E731
    with mock.patch.object(keras.initializers.VarianceScaling, "__call__", zeros):
        model = getattr(keras.applications, application)(
            include_top=include_top, weights=None, input_shape=(size, size, 3), **kwargs
        )
    _random_weights(model, seed)
    randomize_batchnorm(model, seed)
    return model


def keras_forward(model, x) -> np.ndarray:
    """The oracle's inference-mode output. ``predict`` compiles Keras's own
    forward pass (jit on its JAX backend): calling the model instead runs it
    op by op, 5-7x slower for the deep ones (DenseNet169: 55 s against 8 s)."""
    return np.asarray(model.predict(np.asarray(x), batch_size=len(x), verbose=0))


_KERAS2_SUFFIXES = [
    ("squeeze_excite_conv_1", "squeeze_excite/Conv_1"),
    ("squeeze_excite_conv", "squeeze_excite/Conv"),
    ("expand_bn", "expand/BatchNorm"),
    ("depthwise_bn", "depthwise/BatchNorm"),
    ("project_bn", "project/BatchNorm"),
]


def keras2_name(name: str) -> str:
    """Keras 3 MobileNetV3 layer name -> the name Keras 2 gave it (what the
    downloadable legacy weight files carry). Other names pass through."""
    if name in ("conv", "conv_1"):
        return name.capitalize()
    if name in ("conv_bn", "conv_1_bn"):
        return name[:-3].capitalize() + "/BatchNorm"
    m = re.fullmatch(r"(expanded_conv(?:_\d+)?)_(.+)", name)
    if m:
        block, rest = m.groups()
        for k3, k2 in _KERAS2_SUFFIXES:
            if rest == k3:
                return f"{block}/{k2}"
        return f"{block}/{rest}"
    return name


_VAR_NAMES = {
    4: ["gamma", "beta", "moving_mean", "moving_variance"],
    2: ["kernel", "bias"],
    1: ["kernel"],
}


def write_legacy_h5(model, path, rename=keras2_name) -> None:
    """Write ``model``'s weights in the legacy HDF5 layout that
    ``keras.applications`` downloads: every layer listed in ``layer_names``
    (weightless ones too), weights under ``<layer>/<layer>/<var>:0``."""
    names = [rename(layer.name) for layer in model.layers]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode("utf8") for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.13.1"
        for layer, name in zip(model.layers, names, strict=True):
            group = f.create_group(name)
            weights = [np.asarray(w) for w in layer.get_weights()]
            kind = "depthwise_kernel" if layer.__class__.__name__ == "DepthwiseConv2D" else None
            var_names = _VAR_NAMES[len(weights)] if weights else []
            if kind:
                var_names = [kind]
            weight_names = [f"{name}/{v}:0" for v in var_names]
            group.attrs["weight_names"] = np.array([w.encode("utf8") for w in weight_names])
            for wname, value in zip(weight_names, weights, strict=True):
                group.create_dataset(wname, data=value)


@pytest.fixture(scope="session")
def keras():
    import keras as keras_module

    assert keras_module.backend.backend() == "jax", "the oracle must run on Keras's JAX backend"
    return keras_module
