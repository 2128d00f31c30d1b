"""Masked freezing: frozen leaves stay bitwise unchanged and hold no Adam
moments; reduce-on-plateau inside the optimizer state; the public step factory."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fracjax
from fracjax.train import optim
from fracjax.train.steps import StepConfig, make_train_step
from tests.helpers import init_once

SIZE = 64


@pytest.fixture(scope="module")
def setup():
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid", head_blocks=[32], head_dropout=0.1)
    x = jnp.zeros((1, SIZE, SIZE, 1))
    variables = init_once(model, x)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 255, (8, SIZE, SIZE, 1), dtype=np.uint8)),
        "label": jnp.asarray(np.arange(8) % 2),
    }
    return model, variables, batch


def run_steps(model, variables, batch, phase, unfreeze="all", steps=3, backbone_train=False):
    step = make_train_step(model, variables["params"], phase=phase, learning_rate=1e-2, unfreeze=unfreeze,
                           weight_decay=0.1, grad_clip=1.0, config=StepConfig(backbone_train=backbone_train))
    state = step.init_state(variables, jax.random.key(1))
    for _ in range(steps):
        state, m = step.compiled(state, step.parallel.put_batch(batch))
        assert np.isfinite(float(m["loss"]))
    return state, step.trainable


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


def test_phase1_freezes_backbone_bitwise_and_trains_head(setup):
    model, variables, batch = setup
    state, _ = run_steps(model, variables, batch, phase=1)
    before = variables["params"]
    for (path, new), old in zip(
        _leaves(state.params["backbone"]), jax.tree_util.tree_leaves(before["backbone"]), strict=True
    ):
        assert np.array_equal(np.asarray(new).view(np.uint32), np.asarray(old).view(np.uint32)), path
    changed = [
        not np.array_equal(new, old)
        for new, old in zip(
            jax.tree_util.tree_leaves(state.params["head"]), jax.tree_util.tree_leaves(before["head"]), strict=True
        )
    ]
    assert all(changed)
    # Backbone BatchNorm ran on running statistics: its statistics did not move.
    chex.assert_trees_all_equal(state.batch_stats["backbone"], variables["batch_stats"]["backbone"])


def test_frozen_leaves_have_no_adam_moments(setup):
    _, variables, _ = setup
    params = variables["params"]
    mask = optim.trainable_mask(params, 1)
    tx = optim.make_optimizer(mask, 1e-3)
    opt_state = tx.init(params)
    moment_elements = sum(x.size for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "size") and x.ndim > 0)
    head_elements = sum(x.size for x in jax.tree_util.tree_leaves(params["head"]))
    # mu and nu for every head parameter, nothing for the backbone.
    assert moment_elements == 2 * head_elements
    assert set(jax.tree_util.tree_leaves(mask["backbone"])) == {False}
    assert set(jax.tree_util.tree_leaves(mask["head"])) == {True}


def test_negative_zero_survives(setup):
    params = {"backbone": {"w": jnp.array([-0.0, 1.0])}, "head": {"w": jnp.array([1.0])}}
    mask = optim.trainable_mask(params, 1)
    out = optim.apply_updates(params, {"backbone": {"w": jnp.zeros(2)}, "head": {"w": jnp.ones(1)}}, mask)
    assert np.signbit(np.asarray(out["backbone"]["w"])[0])


def test_phase2_top_groups_only(setup):
    model, variables, batch = setup
    groups = optim.backbone_groups(variables["params"]["backbone"])
    # A ConvBN keeps its BatchNorm under its own name: the stem and the last convolution are one group each.
    assert groups[0] == ["stem_conv"] and groups[-1] == ["last_conv"]
    assert [g[0] for g in groups[1:-1]] == [f"block{i}" for i in range(11)]
    state, _ = run_steps(model, variables, batch, phase=2, unfreeze=2)
    for name, old in variables["params"]["backbone"].items():
        same = all(
            np.array_equal(a, b)
            for a, b in zip(
                jax.tree_util.tree_leaves(state.params["backbone"][name]), jax.tree_util.tree_leaves(old), strict=True
            )
        )
        assert same == (name not in ("block10", "last_conv", "last_bn")), name


def test_phase2_all_and_bn_mode(setup):
    model, variables, batch = setup
    state, _ = run_steps(model, variables, batch, phase=2, steps=1)
    assert not np.array_equal(
        state.params["backbone"]["stem_conv"]["kernel"], variables["params"]["backbone"]["stem_conv"]["kernel"]
    )
    chex.assert_trees_all_equal(state.batch_stats["backbone"], variables["batch_stats"]["backbone"])
    state, _ = run_steps(model, variables, batch, phase=2, steps=1, backbone_train=True)
    assert not np.array_equal(
        state.batch_stats["backbone"]["stem_conv"]["stem_bn"]["mean"],
        variables["batch_stats"]["backbone"]["stem_conv"]["stem_bn"]["mean"]
    )


def test_bad_unfreeze():
    params = {"backbone": {"block0": {"k": jnp.ones(1)}}, "head": {"k": jnp.ones(1)}}
    with pytest.raises(ValueError, match="unfreeze"):
        optim.trainable_mask(params, 2, 5)
    with pytest.raises(ValueError, match="phase"):
        optim.trainable_mask(params, 3)


def test_cosine_schedule_warms_up_and_decays():
    sched = optim.learning_rate_schedule("cosine", 1e-3, total_steps=100, warmup_steps=10)
    assert float(sched(0)) == 0.0 and float(sched(10)) == pytest.approx(1e-3)
    assert float(sched(100)) == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="schedule"):
        optim.learning_rate_schedule("step", 1e-3, 10)


def test_the_factory_leaves_the_callers_variables_alive(setup):
    model, variables, batch = setup
    step = make_train_step(model, variables["params"], phase=1)
    state = step.init_state(variables, jax.random.key(1))
    state, _ = step.compiled(state, step.parallel.put_batch(batch))  # donates the state, not `variables`
    chex.assert_tree_all_finite(variables)
    assert int(state.step) == 1


def test_reduce_on_plateau_lives_in_the_optimizer_state():
    import optax

    params = {"backbone": {"w": jnp.ones((2, 2))}, "head": {"w": jnp.ones((3, 3))}}
    plateau = optax.contrib.reduce_on_plateau(factor=0.5, patience=1)
    tx = optim.make_optimizer(optim.trainable_mask(params, 1), 1e-2, plateau=plateau)
    state = tx.init(params)
    scales = [optim.plateau_scale(state)]
    for loss in (1.0, 0.5, 0.5, 0.5):  # better, then two epochs without improvement
        state = optim.observe_plateau(state, plateau, loss)
        scales.append(optim.plateau_scale(state))
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.25]
    updates, after = tx.update(params, state, params)  # a step applies the scale and leaves the plateau alone

    def plateau_node(opt_state):
        def is_plateau(n):
            return isinstance(n, optax.contrib.ReduceLROnPlateauState)

        return [n for n in jax.tree_util.tree_leaves(opt_state, is_leaf=is_plateau) if is_plateau(n)]

    assert len(plateau_node(state)) == 1
    chex.assert_trees_all_equal(plateau_node(after), plateau_node(state))
    plain = optim.make_optimizer(optim.trainable_mask(params, 1), 1e-2)
    unscaled, _ = plain.update(params, plain.init(params), params)
    chex.assert_trees_all_close(updates["head"], jax.tree_util.tree_map(lambda u: 0.25 * u, unscaled["head"]))
    assert optim.plateau_scale(plain.init(params)) == 1.0
