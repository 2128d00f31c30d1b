"""The model behind ``fracjax serve``: an exported folder (StableHLO or ONNX)
or a run's checkpoint, with its model card, operating points and, where a
checkpoint is at hand, Grad-CAM. No web framework here: the app
(:mod:`fracjax.deploy.server`) and the tests use it alike."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import os
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from fracjax.data.io import (
    ImageDecodeError,
    ImageTooLargeError,
    NotAnImageError,
    decode_image,
    model_input,
    resize_bilinear,
    to_uint8,
)
from fracjax.data.screening import Observations, input_check
from fracjax.deploy.common import CARD, ExportError

PREVIEW_SIDE = 512  # the longest side of the pictures sent back to the page


@dataclasses.dataclass
class ServedModel:
    """``run``: float32 pixels (N, S, S, 1) -> (calibrated probabilities, logits)."""

    run: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray]]
    card: Dict[str, Any]
    image_size: int
    explainer: Any = None  # a fracjax.Classifier whose Grad-CAM is shown, or None
    no_explanation: str = ""  # why there is none

    @property
    def operating_points(self) -> Dict[str, float]:
        return {name: float(point["threshold"]) for name, point in self.card.get("operating_points", {}).items()}

    def threshold(self, operating_point: Optional[str], threshold: Optional[float]) -> Tuple[str, float]:
        """(name, value) of the decision threshold a request asks for (default: the saved one)."""
        if threshold is not None:
            if operating_point:
                raise ValueError("give operating_point or threshold, not both")
            if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
                raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
            return "threshold", float(threshold)
        name = operating_point or "saved_threshold"
        if name not in self.operating_points:
            raise ValueError(f"operating_point {name!r} is not one of {sorted(self.operating_points)}")
        return name, self.operating_points[name]

    def explain(self, pixels: np.ndarray, method: str) -> np.ndarray:
        """The Grad-CAM map (S, S) in [0, 1] of one model input (S, S, 1)."""
        from fracjax.evaluation.gradcam import grad_cam

        if self.explainer is None:
            raise ValueError(f"no Grad-CAM for this model: {self.no_explanation}")
        return grad_cam(self.explainer.model, self.explainer.variables, pixels[None], method=method)["maps"][0]


def open_served(path: str) -> ServedModel:
    """An export folder (it holds ``model.json``) or a run / checkpoint folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder (a run folder or an export folder)")
    if os.path.isfile(os.path.join(path, CARD)):
        return _from_export(path)
    return _from_checkpoint(path)


def _from_checkpoint(path: str) -> ServedModel:
    import jax

    from fracjax.deploy.card import model_card
    from fracjax.deploy.common import serving_function
    from fracjax.inference import Classifier

    classifier = Classifier.from_checkpoint(path)
    card = model_card(classifier, None, None, "checkpoint", {"platforms": [jax.default_backend()]})
    serve = jax.jit(serving_function(classifier))
    return ServedModel(lambda x: tuple(np.asarray(v) for v in serve(x)), card, classifier.image_size, classifier)


def _from_export(path: str) -> ServedModel:
    from fracjax.deploy.artifacts import load, parity

    model = load(path)  # the sha256 checked
    run = model.run
    explainer, why = None, ""
    checkpoint = model.card.get("checkpoint")
    if not checkpoint or not os.path.isdir(checkpoint):
        why = f"the checkpoint the model card names ({checkpoint}) is not on this machine"
    else:
        try:
            from fracjax.inference import Classifier

            explainer = Classifier.from_checkpoint(checkpoint)
            parity(explainer, run)  # the checkpoint still computes what the artifact does
        except (OSError, ValueError, ExportError) as err:
            explainer, why = None, f"the checkpoint {checkpoint} cannot explain this artifact ({err})"
    return ServedModel(run, model.card, model.image_size, explainer, why)


class UploadError(ValueError):
    """One uploaded file that cannot be classified; ``status`` is its HTTP status."""

    def __init__(self, name: str, status: int, reason: str):
        self.name, self.status, self.reason = name, status, reason
        super().__init__(f"{name}: {reason}")


def decode_upload(data: bytes, name: str, image_size: int,
                  max_pixels: Optional[int]) -> Tuple[np.ndarray, np.ndarray, Optional[str]]:
    """(the decoded grey image (H, W, 1) uint8, the model's input (S, S, 1) uint8, the reason the input
    checks give for it not being a radiograph or None) of one upload."""
    seen = Observations()
    try:
        grey = decode_image(data, name, max_pixels, seen)
    except ImageTooLargeError as err:
        raise UploadError(name, 413, err.reason) from None
    except NotAnImageError as err:
        raise UploadError(name, 415, err.reason) from None
    except ImageDecodeError as err:
        raise UploadError(name, 422, err.reason) from None
    pixels = model_input(grey, image_size, name)
    return grey, pixels, input_check(seen, pixels)


def preview(grey: np.ndarray) -> np.ndarray:
    """The picture the page shows: the image with its longest side at most ``PREVIEW_SIDE``."""
    h, w = grey.shape[:2]
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    if scale == 1.0:
        return grey
    return to_uint8(resize_bilinear(grey, (max(1, round(h * scale)), max(1, round(w * scale)))))


def overlay_on(picture: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """The map (S, S) of the squeezed model input stretched back onto the picture's shape, then overlaid."""
    from fracjax.evaluation.gradcam import overlay

    stretched = resize_bilinear(np.asarray(cam, np.float32)[..., None], picture.shape[:2])[..., 0]
    return overlay(picture, stretched)


def png_base64(pixels: np.ndarray) -> str:
    from PIL import Image

    array = np.asarray(pixels)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
