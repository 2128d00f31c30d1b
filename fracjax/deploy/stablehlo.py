"""StableHLO through ``jax.export``: a symbolic batch, lowered for cpu, cuda
and tpu (where it lowers here), each platform with its own layer kernels
(the "auto" kit resolves per platform when lowered). Loading needs only jax."""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from fracjax.deploy.common import serving_function

ARTIFACT = "model.stablehlo"
PLATFORMS = ("cpu", "cuda", "tpu")


def serialize(classifier, platforms: Sequence[str] = PLATFORMS) -> Tuple[bytes, Dict]:
    """(the artifact's bytes, what the card says of it): every asked platform that lowers (cpu at least)."""
    from jax import export as jax_export

    (batch,) = jax_export.symbolic_shape("batch")
    size = classifier.image_size
    spec = jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32)
    fn = jax.jit(serving_function(classifier))
    try:
        exported = jax_export.export(fn, platforms=list(platforms))(spec)
    except Exception:  # a platform that does not lower here (tpu without its plugin): the others
        platforms = [p for p in platforms if p != "tpu"]
        exported = jax_export.export(fn, platforms=platforms)(spec)
    return bytes(exported.serialize()), {"platforms": list(exported.platforms)}


def runner(blob: bytes) -> Callable[[np.ndarray], Tuple[np.ndarray, ...]]:
    """float32 pixels (N, S, S, 1) -> (probability, logit[, ood score]), on this process's default platform."""
    from jax import export as jax_export

    exported = jax_export.deserialize(bytearray(blob))

    def run(pixels: np.ndarray):
        return tuple(np.asarray(out) for out in exported.call(jnp.asarray(pixels, jnp.float32)))

    run.input_shape = tuple(exported.in_avals[0].shape)[1:]  # checked against the card's (S, S, 1)
    return run
