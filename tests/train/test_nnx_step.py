"""An NNX user's optimizer step on fracjax's NNX view matches fracjax's own train step."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import fracjax
from fracjax.train import optim
from fracjax.train.steps import StepConfig, make_train_step, weighted_bce
from tests.helpers import random_variables

SIZE = 32


def test_one_nnx_adamw_step_matches_make_train_step_with_the_same_mask():
    # No dropout (its random numbers come from different streams) and no augmentation.
    model = fracjax.models.create("mobilenet_v3_small", head="hybrid", head_dropout=0.0,
                                  head_blocks=[(64, 3, 0.0), (32, 3, 0.0)])
    variables = dict(random_variables(model, SIZE, seed=2))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (4, SIZE, SIZE, 1)), jnp.uint8),
             "label": jnp.asarray([0, 1, 1, 0], jnp.int32)}
    config = StepConfig(augment=None)

    step = make_train_step(model, variables["params"], phase=1, learning_rate=1e-2, weight_decay=1e-2,
                           config=config)
    state, _ = step.compiled(step.init_state(variables, jax.random.key(0)), step.parallel.put_batch(batch))

    view = fracjax.models.to_nnx(model, variables, image_size=SIZE)
    mask = optim.trainable_mask(variables["params"], phase=1)
    optimizer = nnx.Optimizer(view, optim.make_optimizer(mask, 1e-2, weight_decay=1e-2), wrt=nnx.Param)

    @nnx.jit
    def nnx_step(view, optimizer, images, labels):
        def loss_fn(view):
            logits = view(images.astype(jnp.float32), train=True, mutable=["batch_stats"])[:, 0]
            total, weight = weighted_bce(logits, labels, jnp.ones(labels.shape, bool), config)
            return total / weight

        optimizer.update(view, nnx.grad(loss_fn)(view))

    nnx_step(view, optimizer, batch["image"], batch["label"])
    after = fracjax.models.to_linen_variables(view)
    chex.assert_trees_all_close(after["params"], jax.device_get(state.params), atol=1e-6, rtol=1e-5)
    chex.assert_trees_all_close(after["batch_stats"], jax.device_get(state.batch_stats), atol=1e-6, rtol=1e-5)
    # Phase 1: the backbone did not move, the head did.
    chex.assert_trees_all_equal(after["params"]["backbone"], variables["params"]["backbone"])
    assert not np.allclose(after["params"]["head"]["classifier"]["kernel"],
                           variables["params"]["head"]["classifier"]["kernel"])
