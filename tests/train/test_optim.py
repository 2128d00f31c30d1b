"""Masked freezing: frozen leaves stay bitwise unchanged and hold no Adam moments."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fracjax
from fracjax.train import optim
from fracjax.train.steps import StepConfig, TrainState, train_step

SIZE = 64


@pytest.fixture(scope="module")
def setup():
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid", head_blocks=[32], head_dropout=0.1)
    x = jnp.zeros((1, SIZE, SIZE, 1))
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 255, (8, SIZE, SIZE, 1), dtype=np.uint8)),
        "label": jnp.asarray(np.arange(8) % 2),
    }
    return model, variables, batch


def run_steps(model, variables, batch, phase, unfreeze="all", steps=3, backbone_train=False):
    labels = optim.trainable_labels(variables["params"], phase, unfreeze)
    tx = optim.make_optimizer(variables["params"], phase, 1e-2, weight_decay=0.1, unfreeze=unfreeze, grad_clip=1.0)
    state = TrainState.create(variables["params"], variables["batch_stats"], tx, jax.random.key(1))
    step = jax.jit(
        functools.partial(
            train_step, apply_fn=model.apply, tx=tx, labels=labels, config=StepConfig(backbone_train=backbone_train)
        )
    )
    for _ in range(steps):
        state, m = step(state, batch)
        assert np.isfinite(float(m["loss"]))
    return state, labels


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def test_phase1_freezes_backbone_bitwise_and_trains_head(setup):
    model, variables, batch = setup
    state, labels = run_steps(model, variables, batch, phase=1)
    before = variables["params"]
    for (path, new), old in zip(_leaves(state.params["backbone"]), jax.tree_util.tree_leaves(before["backbone"])):
        assert np.array_equal(np.asarray(new).view(np.uint32), np.asarray(old).view(np.uint32)), path
    changed = [
        not np.array_equal(new, old)
        for new, old in zip(jax.tree_util.tree_leaves(state.params["head"]), jax.tree_util.tree_leaves(before["head"]))
    ]
    assert all(changed)
    # Backbone BatchNorm ran on running statistics: its statistics did not move.
    chex.assert_trees_all_equal(state.batch_stats["backbone"], variables["batch_stats"]["backbone"])


def test_frozen_leaves_have_no_adam_moments(setup):
    _, variables, _ = setup
    params = variables["params"]
    tx = optim.make_optimizer(params, 1, 1e-3)
    opt_state = tx.init(params)
    moment_elements = sum(x.size for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "size") and x.ndim > 0)
    head_elements = sum(x.size for x in jax.tree_util.tree_leaves(params["head"]))
    # mu and nu for every head parameter, nothing for the backbone.
    assert moment_elements == 2 * head_elements
    labels = optim.trainable_labels(params, 1)
    assert set(jax.tree_util.tree_leaves(labels["backbone"])) == {optim.FROZEN}


def test_negative_zero_survives(setup):
    params = {"backbone": {"w": jnp.array([-0.0, 1.0])}, "head": {"w": jnp.array([1.0])}}
    labels = optim.trainable_labels(params, 1)
    out = optim.apply_updates(params, {"backbone": {"w": jnp.zeros(2)}, "head": {"w": jnp.ones(1)}}, labels)
    assert np.signbit(np.asarray(out["backbone"]["w"])[0])


def test_phase2_top_groups_only(setup):
    model, variables, batch = setup
    groups = optim.backbone_groups(variables["params"]["backbone"])
    assert groups[0] == ["stem_bn", "stem_conv"] and groups[-1] == ["last_bn", "last_conv"]
    assert [g[0] for g in groups[1:-1]] == [f"block{i}" for i in range(11)]
    state, labels = run_steps(model, variables, batch, phase=2, unfreeze=2)
    for name, old in variables["params"]["backbone"].items():
        same = all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree_util.tree_leaves(state.params["backbone"][name]), jax.tree_util.tree_leaves(old))
        )
        assert same == (name not in ("block10", "last_conv", "last_bn")), name


def test_phase2_all_and_bn_mode(setup):
    model, variables, batch = setup
    state, _ = run_steps(model, variables, batch, phase=2, steps=1)
    assert not np.array_equal(state.params["backbone"]["stem_conv"]["kernel"], variables["params"]["backbone"]["stem_conv"]["kernel"])
    chex.assert_trees_all_equal(state.batch_stats["backbone"], variables["batch_stats"]["backbone"])
    state, _ = run_steps(model, variables, batch, phase=2, steps=1, backbone_train=True)
    assert not np.array_equal(state.batch_stats["backbone"]["stem_bn"]["mean"], variables["batch_stats"]["backbone"]["stem_bn"]["mean"])


def test_bad_unfreeze():
    params = {"backbone": {"block0": {"k": jnp.ones(1)}}, "head": {"k": jnp.ones(1)}}
    with pytest.raises(ValueError, match="unfreeze"):
        optim.trainable_labels(params, 2, 5)
    with pytest.raises(ValueError, match="phase"):
        optim.trainable_labels(params, 3)


def test_cosine_schedule_warms_up_and_decays():
    sched = optim.learning_rate_schedule("cosine", 1e-3, total_steps=100, warmup_steps=10)
    assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(100)) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule("step", 1e-3, 10)
