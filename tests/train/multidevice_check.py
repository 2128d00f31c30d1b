"""Run in a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8:
the same training steps on 1 device, jit-sharded over 8, and in the per-device
mode (``--parallel pmap``, compiled with jax.shard_map) over 8 and over 4 of them.
Prints a JSON dict of the largest relative differences against 1 device."""

import json
import sys

import jax
import numpy as np
import optax

import fracjax
from fracjax.data.augment import AugmentConfig
from fracjax.train.parallel import Parallel
from fracjax.train.steps import StepConfig, make_train_step

assert jax.device_count() == 8, jax.devices()
SIZE, BATCH, STEPS = 48, 16, 3
options = dict(head_blocks=[16], head_dropout=0.0)
model = fracjax.models.create("mobilenet_v3_small", head="hybrid", **options)
pmap_model = fracjax.models.create("mobilenet_v3_small", head="hybrid", bn_axis_name=Parallel.AXIS, **options)
variables = fracjax.models.registry.init_variables(model, SIZE, seed=0)
rng = np.random.default_rng(0)
batches = [
    {
        "image": rng.integers(0, 255, (BATCH, SIZE, SIZE, 1), dtype=np.uint8),
        "label": (np.arange(BATCH) % 2).astype(np.int32),
    }
    for _ in range(STEPS)
]
phase = int(sys.argv[1]) if len(sys.argv) > 1 else 2
# Plain SGD, not the AdamW of training: Adam divides each update by that
# parameter's own gradient scale, so where a gradient is nearly zero (inside
# the zero-initialised residual branches after one step) summation-order noise
# becomes a sizeable step and the comparison measures rounding, not parallelism.
tx = optax.sgd(0.5)
# Backbone BN in inference mode (the default): in training mode the gradient of a BN bias that feeds
# a linear layer and another training-mode BN is exactly zero, and Adam turns its rounding noise into
# +-lr steps whose signs differ between summation orders. The head BN trains on global-batch statistics.
config = StepConfig(backbone_train=False, augment=AugmentConfig())


def run(parallel, model):
    step = make_train_step(model, variables["params"], phase=phase, config=config, parallel=parallel, tx=tx)
    state = step.init_state(variables, jax.random.key(1))
    for b in batches:
        state, m = step.compiled(state, parallel.put_batch(b))
    on = {d.id for leaf in jax.tree_util.tree_leaves(state) for d in leaf.sharding.device_set}
    return jax.device_get(state), float(m["loss"]), sorted(on)


def rel(a, b):
    """Largest absolute difference over the tree, relative to the tree's largest value."""
    a, b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    diff = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b, strict=True))
    return diff / max(float(np.max(np.abs(np.asarray(y)))) for y in b)


one, loss1, _ = run(Parallel("jit", jax.devices()[:1]), model)
sharded, loss8, _ = run(Parallel("jit"), model)
pmapped, lossp, _ = run(Parallel("pmap"), pmap_model)
four = jax.devices()[4:]
pmapped4, lossp4, on4 = run(Parallel("pmap", four), pmap_model)
moved = rel(one.params, variables["params"])
print(json.dumps({
    "jit8_params": rel(sharded.params, one.params),
    "jit8_stats": rel(sharded.batch_stats, one.batch_stats),
    "pmap_params": rel(pmapped.params, one.params),
    "pmap_stats": rel(pmapped.batch_stats, one.batch_stats),
    "pmap4_params": rel(pmapped4.params, one.params),
    "pmap4_on": on4 == sorted(d.id for d in four),
    "loss": [loss1, loss8, lossp, lossp4],
    "moved": moved,
}))
