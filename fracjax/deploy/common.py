"""What every export format shares: the function exported, its error type, digests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fracjax import ood
from fracjax.hashing import file_digest
from fracjax.inference import logits_and_stages

CARD = "model.json"
PARITY_TOLERANCE = 1e-5  # on probabilities: an artifact further from fracjax than this is not written


class ExportError(ValueError):
    """An export that cannot be made, or an exported folder that cannot be trusted."""


def sha256_of(path: str) -> str:
    return file_digest(path, "sha256")


def output_names(classifier):
    """What the served function returns: the OOD score too where the classifier has a detector."""
    return ("probability", "logit") + (("ood_score",) if classifier.detector is not None else ())


def serving_function(classifier, model=None):
    """pixels (N, S, S, 1) float32 -> (calibrated probability, logit[, ood score]), float32:
    :func:`output_names`. ``model``: the classifier's architecture built with another kernel kit
    (same parameters); default the classifier's own."""
    model = classifier.model if model is None else model
    variables, temperature = classifier.variables, float(classifier.temperature)
    detector = classifier.detector

    def serve(pixels):
        x = jnp.clip(jnp.round(pixels), 0.0, 255.0)  # what model_input's rounding to uint8 does
        logit, stages = logits_and_stages(model, variables, x)  # as Classifier runs it
        outputs = (jax.nn.sigmoid(logit / temperature), logit)
        return outputs + ((ood.scores(detector, stages),) if detector is not None else ())

    return serve


def probe_pixels(image_size: int, count: int = 2) -> np.ndarray:
    """Seeded random grey images on which an artifact must agree with fracjax before it is written."""
    return np.random.default_rng(0).integers(0, 256, (count, image_size, image_size, 1)).astype(np.float32)
