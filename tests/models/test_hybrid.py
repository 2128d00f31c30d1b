"""The hybrid classifier, the heads and the registry."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fracjax
from fracjax.models import hybrid
from tests.helpers import init_once

SIZE = 96  # small images keep these tests fast; shapes are size-agnostic


@pytest.fixture(scope="module")
def model_and_vars():
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
    x = np.zeros((2, SIZE, SIZE, 1), np.float32)
    variables = init_once(model, x, train=False)
    return model, variables


def images(seed, n=4):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 1)).astype(np.float32)


def test_tree_splits_into_backbone_and_head(model_and_vars):
    _, variables = model_and_vars
    assert set(variables["params"]) == {"backbone", "head"}
    assert set(variables["batch_stats"]) == {"backbone", "head"}
    head = variables["params"]["head"]
    assert set(head) == {"conv0", "bn0", "conv1", "bn1", "classifier"}
    chex.assert_shape(head["conv0"]["kernel"], (3, 3, 576, 256))
    chex.assert_shape(head["conv1"]["kernel"], (3, 3, 256, 128))
    chex.assert_shape(head["classifier"]["kernel"], (128, 1))


def train_forward(model, variables, x, backbone_train, seed=0):
    return _train_forward(model, variables, x, backbone_train, seed)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _train_forward(model, variables, x, backbone_train, seed):
    return model.apply(
        variables,
        x,
        train=True,
        backbone_train=backbone_train,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(seed)},
    )


def test_train_updates_head_statistics_only(model_and_vars):
    model, variables = model_and_vars
    logits, updates = train_forward(model, variables, images(1), backbone_train=False)
    chex.assert_shape(logits, (4, 1))
    chex.assert_tree_all_finite(logits)
    # Backbone statistics bitwise unchanged; every head BN statistic moved.
    chex.assert_trees_all_equal(updates["batch_stats"]["backbone"], variables["batch_stats"]["backbone"])
    for name in ("bn0", "bn1"):
        for stat in ("mean", "var"):
            old = variables["batch_stats"]["head"][name][stat]
            new = updates["batch_stats"]["head"][name][stat]
            assert not np.allclose(old, new), f"head {name}/{stat} did not update"


def test_backbone_train_updates_backbone_statistics(model_and_vars):
    model, variables = model_and_vars
    _, updates = train_forward(model, variables, images(2), backbone_train=True)
    old = variables["batch_stats"]["backbone"]["stem_conv"]["stem_bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["backbone"]["stem_conv"]["stem_bn"]["mean"], old)


def test_backbone_in_inference_mode_is_independent_of_the_batch(model_and_vars):
    # With running statistics, an example's backbone features do not depend on
    # its batch mates (they would with batch statistics).
    model, variables = model_and_vars
    x = images(3)
    feats = jax.jit(lambda batch: model.apply(variables, batch, method=lambda m, b: m.backbone(b, train=False)))
    chex.assert_trees_all_close(feats(x)[:1], feats(x[:1]), rtol=1e-5, atol=1e-5)


def test_dropout_follows_train(model_and_vars):
    model, variables = model_and_vars
    x = images(4)
    a, _ = train_forward(model, variables, x, backbone_train=False, seed=1)
    b, _ = train_forward(model, variables, x, backbone_train=False, seed=2)
    assert not np.allclose(a, b)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    e1 = apply(variables, x)
    e2 = apply(variables, x)
    chex.assert_trees_all_equal(e1, e2)


def test_eval_logits_depend_on_input(model_and_vars):
    model, variables = model_and_vars
    out = jax.jit(model.apply)(variables, np.concatenate([images(5, 2), np.zeros((2, SIZE, SIZE, 1), np.float32)]))
    chex.assert_shape(out, (4, 1))
    assert np.ptp(np.asarray(out)) > 0


@pytest.mark.parametrize("head,num_classes", [("hybrid", 3), ("linear", 1), ("linear", 4)])
def test_heads_and_class_counts(head, num_classes):
    model = fracjax.models.create("mobilenet_v3_small", head=head, num_classes=num_classes)
    x = jnp.zeros((2, 64, 64, 3))
    shapes = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert shapes.shape == (2, num_classes)


def test_custom_head_blocks():
    model = fracjax.models.create(
        "mobilenet_v3_small", head="hybrid", head_blocks=[64, (32, 1, 0.1)], head_dropout=0.0
    )
    x = jnp.zeros((1, 64, 64, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]["head"]
    assert params["conv0"]["kernel"].shape == (3, 3, 576, 64)
    assert params["conv1"]["kernel"].shape == (1, 1, 64, 32)
    with pytest.raises(ValueError, match="invalid head block"):
        hybrid.parse_blocks([(64, 3, 1.5)])


def test_bare_backbone():
    model = fracjax.models.create("mobilenet_v3_large", head=None)
    x = jnp.zeros((1, 64, 64, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert out.shape == (1, 2, 2, 960)


def test_registry_names_and_errors():
    assert {"mobilenet_v3_small", "mobilenet_v3_large"} <= set(fracjax.models.available())
    contract = fracjax.models.input_contract("mobilenet_v3_small")
    assert contract.pixel_range == (0.0, 255.0) and contract.preprocessing == "tf"
    assert contract.feature_channels == 576
    with pytest.raises(ValueError, match="unknown model 'mobilenet_v4'.*mobilenet_v3_small"):
        fracjax.models.create("mobilenet_v4")
    with pytest.raises(ValueError, match="head must be"):
        fracjax.models.create("mobilenet_v3_small", head="mlp")
    with pytest.raises(TypeError, match="unknown option.*'widht'"):
        fracjax.models.create("mobilenet_v3_small", widht=2)
    with pytest.raises(ValueError, match="num_classes"):
        fracjax.models.create("mobilenet_v3_small", num_classes=0)
    with pytest.raises(TypeError, match="head_blocks"):
        fracjax.models.create("mobilenet_v3_small", head="linear", head_blocks=[32])
    # Below the stated minimum size the model refuses instead of computing on a 1x1 map.
    small = fracjax.models.create("mobilenet_v3_small", head="linear")
    assert small.min_size == contract.min_size == 32
    with pytest.raises(ValueError, match=r"at least 32x32 px, got shape \(1, 16, 16, 1\)"):
        jax.eval_shape(lambda x: small.init(jax.random.key(0), x), jnp.zeros((1, 16, 16, 1)))


def test_bfloat16_compute_keeps_float32_params_and_logits():
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid", dtype=jnp.bfloat16)
    x = jnp.zeros((1, 64, 64, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert {leaf.dtype for leaf in jax.tree_util.tree_leaves(variables)} == {jnp.dtype("float32")}
    assert jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x)).dtype == jnp.float32
