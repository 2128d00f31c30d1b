"""Where batches and the train state live: ``jax.jit`` over a 1-D ``data``
mesh (the default) or ``jax.pmap`` over the same devices (opt-in). The step
function is the same for both (:mod:`fracjax.train.steps`); only placement
and compilation differ, and they differ here alone.
"""

from __future__ import annotations

import functools
from typing import Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("jit", "pmap")


def replicate_for_pmap(tree, devices: Sequence[jax.Device]):
    """One copy per device along a new leading axis, laid out as pmap wants
    (``jax.device_put_replicated`` is gone from JAX)."""
    sharding = NamedSharding(Mesh(np.array(devices), ("replica",)), PartitionSpec("replica"))
    return jax.tree_util.tree_map(lambda x: jax.device_put(jnp.stack([x] * len(devices)), sharding), tree)


def replicated_global(x, sharding: NamedSharding):
    """``x`` (the same value in every process) as one array replicated over
    ``sharding``'s devices, which span processes; PRNG keys stay keys."""
    if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(replicated_global(jax.random.key_data(x), sharding),
                                        impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


class Parallel:
    """Places batches and states and compiles steps for one mode."""

    AXIS = "batch"  # pmap's axis name: the model's BatchNorm must be built with it

    def __init__(self, mode: str = "jit", devices: Optional[Sequence[jax.Device]] = None):
        if mode not in MODES:
            raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def axis_name(self) -> Optional[str]:
        """The collective axis the step and the model's BatchNorm use (pmap only)."""
        return self.AXIS if self.mode == "pmap" else None

    def put_batch(self, batch: Dict[str, np.ndarray]):
        if self.mode == "pmap":
            n = jax.local_device_count()
            return jax.tree_util.tree_map(lambda x: x.reshape(n, -1, *x.shape[1:]), batch)
        return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

    def put_state(self, state):
        if self.mode == "pmap":
            return replicate_for_pmap(state, [d for d in self.devices if d.process_index == jax.process_index()])
        if jax.process_count() > 1:  # device_put reaches only this process's devices
            return jax.tree_util.tree_map(lambda x: replicated_global(x, self.replicated), state)
        return jax.device_put(state, self.replicated)

    def get_state(self, state):
        """The state as one copy (pmap keeps one per device)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: x[0], state)
        return state

    def compile_step(self, step_fn):
        """``step_fn(state, batch, axis_name=...)`` compiled for this mode; the state is donated."""
        if self.mode == "pmap":
            return jax.pmap(functools.partial(step_fn, axis_name=self.AXIS), axis_name=self.AXIS, donate_argnums=0)
        return jax.jit(
            step_fn, in_shardings=(self.replicated, self.sharded), out_shardings=(self.replicated, self.replicated),
            donate_argnums=0,
        )

    def step_metrics(self, metrics):
        """The step's metrics as one copy (they are already global sums)."""
        if self.mode == "pmap":
            return jax.tree_util.tree_map(lambda x: x[0], metrics)
        return metrics
