"""Several training processes on JAX's own multi-controller runtime
(``jax.distributed``): one process per host (or per GPU), each reading its
slice of every global batch, all running the same program over all devices.

Process 0 serves the coordinator; every process sends it heartbeats, and a
process that stops sending them for ``--heartbeat-timeout`` seconds (killed,
crashed, its host gone) makes JAX stop every other process with "another task
died" instead of leaving them waiting in a collective forever. On CPU the
collectives go through gloo.
"""

from __future__ import annotations

from typing import Optional

import jax

BARRIER_TIMEOUT_S = 3600  # waiting for process 0's end-of-run evaluation and report


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, detect: bool = False, heartbeat_timeout: int = 100) -> bool:
    """Join the runtime (before any JAX computation) when given a coordinator
    or asked to ``detect`` one; True when this is one process of several."""
    if coordinator is None and not detect:
        return jax.process_count() > 1
    if not jax.distributed.is_initialized():
        # Gloo carries the CPU backend's collectives between processes (other
        # backends have their own); it must be chosen before the backend starts.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        options = dict(heartbeat_timeout_seconds=heartbeat_timeout)
        if coordinator is not None:
            jax.distributed.initialize(coordinator, num_processes, process_id, **options)
        else:
            jax.distributed.initialize(**options)
    return jax.process_count() > 1


def from_config(run) -> bool:
    """:func:`initialize` as a run's ``RunConfig`` says."""
    return initialize(run.coordinator, run.num_processes, run.process_id, run.distributed, run.heartbeat_timeout)


def is_primary() -> bool:
    """Whether this process writes the run's files and prints (process 0)."""
    return jax.process_index() == 0


def barrier(name: str, timeout_s: int = BARRIER_TIMEOUT_S) -> None:
    """Wait until every process reaches ``name`` (nothing with one process)."""
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.sync_global_processes(f"fracjax:{name}", timeout=timeout_s)


def describe() -> str:
    return (f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} of "
            f"{jax.device_count()} {jax.devices()[0].platform} devices")


def say(msg: str) -> None:
    """Print for the run: process 0 speaks for a run of several processes (asking
    JAX which process this is before jax.distributed starts would start the
    backend too early, so a run not yet distributed always prints)."""
    if not jax.distributed.is_initialized() or is_primary():
        print(msg, flush=True)
