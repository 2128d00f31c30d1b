"""Where batches and the train state live, and how the step is compiled, over
one 1-D ``data`` mesh of the chosen devices:

* ``jit`` (the default): one program for the mesh; the batch is sharded, the
  state replicated, and XLA inserts the collectives (BatchNorm statistics are
  those of the global batch by construction).
* ``pmap`` (the per-device mode, opt-in): the step is written per device and
  mapped with ``jax.shard_map``; its explicit collectives (``psum`` of the
  gradients, ``pmean`` of BatchNorm's moments) run over the mesh axis, so the
  model is built with ``bn_axis_name=Parallel.AXIS``. It keeps the name of the
  ``jax.pmap`` it replaced (pmap is in maintenance mode since JAX 0.8) and its
  numerics, and it honours ``devices``.

The step function is the same for both (:mod:`fracjax.train.steps`); placement
is the same too; only compilation differs, and it differs here alone.
"""

from __future__ import annotations

import functools
from typing import Dict, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODES = ("jit", "pmap")


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

    AXIS = "data"  # the mesh's axis: the per-device step's collectives and the model's BatchNorm name it

    def __init__(self, mode: str = "jit", devices: Optional[Sequence[jax.Device]] = None):
        if mode not in MODES:
            raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), (self.AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.sharded = NamedSharding(self.mesh, PartitionSpec(self.AXIS))

    @property
    def count(self) -> int:
        return len(self.devices)

    @property
    def axis_name(self) -> Optional[str]:
        """The collective axis the step and the model's BatchNorm use (the per-device mode only)."""
        return self.AXIS if self.mode == "pmap" else None

    def put_batch(self, batch: Dict[str, np.ndarray]):
        return {k: jax.make_array_from_process_local_data(self.sharded, v) for k, v in batch.items()}

    def ahead(self, batches: Iterable[Dict[str, np.ndarray]]) -> Iterator[Dict[str, jax.Array]]:
        """``batches`` placed on the devices one ahead of their use: the next
        batch is copied while the step dispatched before it runs."""
        placed = None
        for batch in batches:
            upcoming = self.put_batch(batch)
            if placed is not None:
                yield placed
            placed = upcoming
        if placed is not None:
            yield placed

    def put_state(self, state):
        if jax.process_count() > 1:  # device_put reaches only this process's devices
            return jax.tree_util.tree_map(lambda x: replicated_global(x, self.replicated), state)
        return jax.device_put(state, self.replicated)

    def compile_step(self, step_fn):
        """``step_fn(state, batch, axis_name=...)`` compiled for this mode; the state is donated."""
        shardings = dict(in_shardings=(self.replicated, self.sharded), out_shardings=(self.replicated, self.replicated))
        if self.mode == "jit":
            return jax.jit(step_fn, **shardings, donate_argnums=0)
        # check_vma=False: the step sums its gradients itself (psum), as under pmap; with the check on,
        # differentiating a replicated parameter would sum them a second time.
        per_device = jax.shard_map(
            functools.partial(step_fn, axis_name=self.AXIS), mesh=self.mesh,
            in_specs=(PartitionSpec(), PartitionSpec(self.AXIS)), out_specs=(PartitionSpec(), PartitionSpec()),
            check_vma=False,
        )
        return jax.jit(per_device, **shardings, donate_argnums=0)
