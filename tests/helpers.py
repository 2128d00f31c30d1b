"""Helpers several test modules share."""

import jax
import jax.numpy as jnp

import fracjax
from fracjax.inference import Classifier


def random_classifier(seed: int, batch_size: int, image_size: int = 32) -> Classifier:
    """A randomly initialised MobileNetV3-Small with a linear head, as a Classifier."""
    spec = {"model": "mobilenet_v3_small", "head": "linear", "image_size": image_size, "threshold": 0.5}
    model = fracjax.models.create("mobilenet_v3_small", head="linear")
    variables = model.init(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 1)))
    return Classifier(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]},
                      batch_size=batch_size)
