"""Grad-CAM and Grad-CAM++ for any fracjax classifier.

The activation of one layer (a Linen submodule, named by its path such as
``"backbone"``, ``"backbone/block9"`` or ``"head/conv1"``) is captured with
``nn.intercept_methods``, and the gradient of the fracture logit with respect
to it is taken by adding a zero perturbation at that point and
differentiating with respect to the perturbation: one jitted forward and
backward per batch, no change to the model code.

* Grad-CAM (Selvaraju et al. 2017): channel weights are the spatially
  averaged gradients; the map is ReLU(sum_k w_k A_k).
* Grad-CAM++ (Chattopadhay et al. 2018): per-pixel weights
  alpha = g^2 / (2 g^2 + sum_ij A g^3), channel weights sum_ij alpha ReLU(g),
  in the closed form for an exponential of the score.

Maps are upsampled bilinearly to the input size and scaled to [0, 1] per
image (all zeros where the map is flat zero).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

METHODS = ("gradcam", "gradcam++")

# The last feature map of each backbone (what Grad-CAM papers use): the
# backbone's output at 1/32 of the input. Any submodule path may be given
# instead, e.g. "backbone/block8" for a finer MobileNetV3 map at 1/16.
DEFAULT_LAYER = "backbone"


class LayerNotFoundError(ValueError):
    pass


def _module_paths(model: nn.Module, variables, images) -> list:
    """Every submodule path the forward pass calls (for error messages)."""
    paths = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            paths.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
    return sorted(set(p for p in paths if p))


def _forward_with_perturbation(model: nn.Module, layer: str, variables, images, delta):
    """(logits, activation at ``layer``) with ``delta`` added to that activation."""
    captured: Dict[str, Any] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and "/".join(context.module.path) == layer:
            if "activation" in captured:
                raise LayerNotFoundError(f"layer {layer!r} is called more than once; name a single call")
            if delta is not None:
                out = out + delta.astype(out.dtype)
            captured["activation"] = out
        return out

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, train=False)
    if "activation" not in captured:
        raise LayerNotFoundError(f"no layer {layer!r} in the model")
    return logits, captured["activation"]


def layer_shape(model: nn.Module, variables, images, layer: str = DEFAULT_LAYER):
    """The activation shape of ``layer`` for ``images`` (raises
    LayerNotFoundError listing the model's layers when the name is wrong)."""
    try:
        out = jax.eval_shape(lambda v, x: _forward_with_perturbation(model, layer, v, x, None)[1], variables, images)
    except LayerNotFoundError:
        raise LayerNotFoundError(_unknown_layer_message(layer, _module_paths(model, variables, images))) from None
    return out.shape


# (model, layer, image shape without the batch, dtype) whose layer name was checked: the check
# traces the whole model, which the report's pointing game would otherwise pay once per chunk.
_CHECKED_LAYERS: set = set()


def _check_layer(model: nn.Module, variables, images, layer: str) -> None:
    key = (model, layer, tuple(images.shape[1:]), str(images.dtype))
    if key not in _CHECKED_LAYERS:
        layer_shape(model, variables, images[:1], layer)
        if len(_CHECKED_LAYERS) >= 64:
            _CHECKED_LAYERS.clear()
        _CHECKED_LAYERS.add(key)


def _unknown_layer_message(layer: str, names: Sequence[str]) -> str:
    """A short answer to a wrong layer name: close matches and the
    block-level paths, not every one of a model's hundreds of modules."""
    import difflib

    close = difflib.get_close_matches(layer, names, n=3, cutoff=0.6)
    blocks = [n for n in names if n.count("/") <= 1]
    shown = ", ".join(blocks[:24]) + (" ..." if len(blocks) > 24 else "")
    return (f"no layer {layer!r} in the model" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else ".")
            + f" Block-level layers: {shown}. Deeper paths work too "
            f"(fracjax.evaluation.gradcam.available_layers lists all {len(names)}).")


def _cam_from(activation, grads, method: str):
    a = activation.astype(jnp.float32)
    g = grads.astype(jnp.float32)
    if method == "gradcam":
        weights = jnp.mean(g, axis=(1, 2), keepdims=True)
    else:
        g2, g3 = g * g, g * g * g
        denominator = 2.0 * g2 + jnp.sum(a * g3, axis=(1, 2), keepdims=True)
        alpha = jnp.where(jnp.abs(denominator) > 1e-12, g2 / jnp.where(denominator == 0, 1.0, denominator), 0.0)
        weights = jnp.sum(alpha * jax.nn.relu(g), axis=(1, 2), keepdims=True)
    return jax.nn.relu(jnp.sum(weights * a, axis=-1))


def _normalise_and_resize(cam, size):
    cam = jax.image.resize(cam[..., None], (cam.shape[0], *size, 1), "bilinear")[..., 0]
    cam = jnp.maximum(cam, 0.0)
    peak = jnp.max(cam, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)


@functools.lru_cache(maxsize=16)
def _compiled(model: nn.Module, layer: str, target: int) -> Callable:
    """One jitted forward and backward giving every method's maps: the methods differ only in
    how they weigh the same activation and gradient, so they share a compilation and a pass."""
    def cams(variables, images):
        images = images.astype(jnp.float32)

        def score(delta):
            logits, activation = _forward_with_perturbation(model, layer, variables, images, delta)
            # One score per image; the sum's gradient is each image's own.
            logit = logits[:, 0].astype(jnp.float32)
            return jnp.sum(logit if target == 1 else -logit), (activation, logit)

        shape = jax.eval_shape(lambda: _forward_with_perturbation(model, layer, variables, images, None)[1])
        delta = jnp.zeros(shape.shape, shape.dtype)
        grads, (activation, logit) = jax.grad(score, has_aux=True)(delta)
        raw = {method: _cam_from(activation, grads, method) for method in METHODS}
        maps = {method: _normalise_and_resize(cam, images.shape[1:3]) for method, cam in raw.items()}
        return maps, jax.nn.sigmoid(logit), raw

    return jax.jit(cams)


def _check_method_and_target(method: str, target: int) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if target not in (0, 1):
        raise ValueError(f"target must be 0 or 1, got {target!r}")


def _as_batch(images):
    images = jnp.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"expected images (N, H, W[, C]), got shape {images.shape}")
    return images


def grad_cam(
    model: nn.Module,
    variables,
    images,
    layer: str = DEFAULT_LAYER,
    method: str = "gradcam",
    target: int = 1,
) -> Dict[str, np.ndarray]:
    """Class-activation maps of ``images`` (N, H, W, C) pixels in [0, 255].

    ``target`` 1 explains "fractured", 0 "not fractured". Returns ``maps``
    (N, H, W) in [0, 1] at the input size, ``raw`` (N, h, w) at the layer's
    resolution (before scaling) and ``probabilities`` (N,)."""
    _check_method_and_target(method, target)
    images = _as_batch(images)
    _check_layer(model, variables, images, layer)  # a clear error for a wrong name
    maps, probs, raw = _compiled(model, layer, target)(variables, images)
    return {"maps": np.asarray(maps[method]), "raw": np.asarray(raw[method]), "probabilities": np.asarray(probs)}


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """An RGB uint8 picture: the grey X-ray with the map in a blue-to-red
    colour scale on top (no matplotlib needed)."""
    grey = np.asarray(image, np.float32)
    if grey.ndim == 3:
        grey = grey[..., 0] if grey.shape[-1] == 1 else grey.mean(axis=-1)
    grey = np.clip(grey, 0, 255) / 255.0
    c = np.clip(np.asarray(cam, np.float32), 0.0, 1.0)
    # A short "jet"-like ramp: blue -> cyan -> yellow -> red.
    r = np.clip(1.5 - np.abs(4.0 * c - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * c - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * c - 1.0), 0.0, 1.0)
    heat = np.stack([r, g, b], axis=-1)
    weight = alpha * c[..., None]  # cold regions keep the X-ray visible
    rgb = (1.0 - weight) * grey[..., None] + weight * heat
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def explain_classifier(classifier, inputs, layer: str = DEFAULT_LAYER, method: str = "gradcam", target: int = 1):
    """Grad-CAM of a :class:`fracjax.Classifier` on paths or arrays (any
    size; prepared as ``predict`` prepares them). Returns ``images`` (the
    model-size inputs), ``maps``, ``probabilities`` (calibrated like
    ``predict``)."""
    images = classifier.prepare(inputs)
    if not len(images):
        raise ValueError("no images to explain")
    out = grad_cam(classifier.model, classifier.variables, images, layer, method, target)
    out["probabilities"] = classifier.calibrate(out["probabilities"])
    out["images"] = images
    return out


EXPLAIN_CHUNK = 16  # images per call of explain_in_chunks: one compiled shape whatever the count


def explain_in_chunks(classifier, inputs, layer: str = DEFAULT_LAYER, method: str = "gradcam",
                      chunk: int = EXPLAIN_CHUNK) -> Dict[str, np.ndarray]:
    """:func:`explain_classifier` over any number of inputs in padded chunks
    of ``chunk`` (one compilation serves the report's grid and the pointing
    game). Returns ``images`` and ``maps``."""
    out = explain_methods_in_chunks(classifier, inputs, layer, (method,), chunk)
    return {"images": out["images"], "maps": out["maps"][method]}


def explain_methods_in_chunks(classifier, inputs, layer: str = DEFAULT_LAYER, methods: Sequence[str] = METHODS,
                              chunk: int = EXPLAIN_CHUNK) -> Dict[str, Any]:
    """Every one of ``methods``' maps from one forward and backward per chunk: ``images`` and
    ``maps`` ({method: (N, H, W)})."""
    for method in methods:
        _check_method_and_target(method, 1)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("no images to explain")
    images, maps = [], {method: [] for method in methods}
    for start in range(0, len(inputs), chunk):
        part = inputs[start:start + chunk]
        prepared = classifier.prepare(part + [part[-1]] * (chunk - len(part)))
        batch = _as_batch(prepared)
        _check_layer(classifier.model, classifier.variables, batch, layer)
        out = _compiled(classifier.model, layer, 1)(classifier.variables, batch)[0]
        images.append(prepared[: len(part)])
        for method in methods:
            maps[method].append(np.asarray(out[method])[: len(part)])
    return {"images": np.concatenate(images), "maps": {m: np.concatenate(v) for m, v in maps.items()}}


def available_layers(model: nn.Module, variables, image_size: int, channels: int = 1) -> Sequence[str]:
    return _module_paths(model, variables, jnp.zeros((1, image_size, image_size, channels), jnp.float32))
