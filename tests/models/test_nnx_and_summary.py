"""The NNX view of a model (fracjax.models.to_nnx) and the Keras-style summary."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fracjax
from tests.helpers import random_variables

SIZE = 32


@pytest.fixture(scope="module")
def linen():
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid")
    variables = dict(random_variables(model, SIZE, seed=4))
    # BatchNorm statistics away from (0, 1), so that a view that ignored them would show.
    variables["batch_stats"] = jax.tree.map(lambda a: a + 0.25, variables["batch_stats"])
    return model, variables


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 1)), jnp.float32)


def test_the_view_holds_the_variables_as_nnx_params_and_batch_stats(linen):
    model, variables = linen
    view = fracjax.models.to_nnx(model, variables, image_size=SIZE)
    params = nnx.state(view, nnx.Param)
    assert len(jax.tree_util.tree_leaves(params)) == len(jax.tree_util.tree_leaves(variables["params"]))
    chex.assert_trees_all_equal(fracjax.models.to_linen_variables(view), variables)


def both(model, variables, view, images, **kwargs):
    """(the view's logits, its Linen variables after the call, Linen's logits and updates), in one jit
    (op by op, two MobileNetV3 passes take ~30 s on 2 cores)."""
    graphdef, state = nnx.split(view)

    @jax.jit
    def run(state, variables, images):
        view = nnx.merge(graphdef, state)
        logits = view(images, **kwargs)
        linen = model.apply(variables, images, **kwargs)
        return logits, fracjax.models.to_linen_variables(view), linen

    return run(state, variables, images)


def test_the_view_computes_the_linen_logits_in_inference(linen, images):
    model, variables = linen
    view = fracjax.models.to_nnx(model, variables, image_size=SIZE)
    logits, _, expected = both(model, variables, view, images)
    chex.assert_trees_all_close(logits, expected, atol=0, rtol=0)


def test_in_training_the_view_moves_its_batch_stats_as_linen_does(linen, images):
    model, variables = linen
    view = fracjax.models.to_nnx(model, variables, image_size=SIZE)
    # The backbone's BatchNorm in training mode; no dropout, so both are deterministic.
    logits, after, (expected, updates) = both(model, variables, view, images, train=False, backbone_train=True,
                                              mutable=["batch_stats"])
    chex.assert_trees_all_close(logits, expected, atol=0, rtol=0)
    chex.assert_trees_all_close(after["batch_stats"], updates["batch_stats"], atol=0, rtol=0)
    assert not np.allclose(after["batch_stats"]["backbone"]["stem_conv"]["stem_bn"]["mean"],
                           variables["batch_stats"]["backbone"]["stem_conv"]["stem_bn"]["mean"])


def test_variables_that_do_not_fit_are_refused_by_path(linen):
    model, variables = linen
    params = jax.tree.map(lambda a: a, variables["params"])
    del params["head"]["classifier"]
    with pytest.raises(ValueError, match="lack params/head/classifier"):
        fracjax.models.to_nnx(model, {"params": params, "batch_stats": variables["batch_stats"]}, image_size=SIZE)
    params = jax.tree.map(lambda a: a, variables["params"])
    params["head"]["classifier"]["kernel"] = jnp.zeros((5, 1))
    with pytest.raises(ValueError, match=r"params/head/classifier/kernel: the variables hold shape \(5, 1\)"):
        fracjax.models.to_nnx(model, {"params": params, "batch_stats": variables["batch_stats"]}, image_size=SIZE)


def test_the_summary_counts_every_parameter_once_and_the_convolutions_flops(linen):
    model, variables = linen
    lines = []
    table = fracjax.models.summary(model, image_size=224, print_fn=lines.append)
    totals = table["totals"]
    assert totals["params"] == sum(a.size for a in jax.tree_util.tree_leaves(variables["params"]))
    assert totals["statistics"] == sum(a.size for a in jax.tree_util.tree_leaves(variables["batch_stats"]))
    rows = {r["block"]: r for r in table["rows"]}
    # The stem: a 3x3 convolution, stride 2, of the grey image into 16 channels (its RGB kernel summed).
    assert rows["backbone/stem_conv"]["output"] == (112, 112, 16)
    assert rows["backbone/stem_conv"]["flops"] == 2 * 112 * 112 * 3 * 3 * 1 * 16
    # The head's first block: a 3x3 convolution of the 7x7x576 features into 256 channels.
    assert rows["head/conv0"]["flops"] == 2 * 7 * 7 * 3 * 3 * 576 * 256
    assert math.isclose(totals["flops"], sum(r["flops"] for r in table["rows"]))
    # XLA's own count adds BatchNorm and activations and leaves out the taps that fall on padding
    # (Keras, torchinfo and this summary count whole kernels): at 224 px they agree within a tenth.
    x = jnp.zeros((1, 224, 224, 1))
    cost = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, x).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert 0.9 < totals["flops"] / cost["flops"] < 1.1
    assert "total" in lines[0] and f"{totals['params']:,}" in lines[0]


def test_the_summary_takes_a_name(capsys):
    table = fracjax.models.summary("vgg16", image_size=32, head="linear")
    assert "backbone/" in capsys.readouterr().out
    assert table["rows"][0]["block"].startswith("backbone/") and table["totals"]["params"] > 14_000_000
