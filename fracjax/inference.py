"""Inference from a checkpoint: no optimizer state, no training config needed.

    clf = fracjax.Classifier.from_checkpoint("runs/mobilenet_v3_small_hybrid")
    clf.predict(["xray.png", "study.dcm"])        # fracture probabilities
    clf.predict(images)                            # (N, H, W[, C]) or (H, W) pixels in [0, 255]
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax.checkpoint import find_model_checkpoint, restore_model
from fracjax.data.io import model_input, read_image
from fracjax.metrics import LABEL_NAMES, apply_temperature, probabilities_from_logits

ArrayLike = Union[np.ndarray, jax.Array]


class Classifier:
    """A trained fracture classifier: the model rebuilt from the spec saved
    with the checkpoint, its variables, and its decision threshold."""

    def __init__(
        self,
        spec: Dict[str, Any],
        variables: Dict[str, Any],
        batch_size: int = 32,
        calibration: Optional[Dict[str, Any]] = None,
    ):
        self.spec = dict(spec)
        self.model = fracjax.models.create(
            spec["model"],
            head=spec["head"],
            num_classes=int(spec.get("num_classes", 1)),
            **{k: spec[k] for k in ("head_blocks", "head_dropout") if spec.get(k) is not None},
        )
        self.variables = variables
        self.image_size = int(spec["image_size"])
        self.threshold = float(spec.get("threshold", 0.5))
        self.batch_size = batch_size
        self.set_calibration(calibration)
        self._forward = jax.jit(lambda v, x: self.model.apply(v, x, train=False)[:, 0].astype(jnp.float32))

    def set_calibration(self, calibration: Optional[Dict[str, Any]]) -> None:
        """Temperature scaling and operating points fitted on validation
        (fracjax.evaluation.calibrate_checkpoint); None: raw probabilities."""
        self.calibration = dict(calibration or {})
        self.temperature = float(self.calibration.get("temperature", 1.0))
        self.operating_points = dict(self.calibration.get("operating_points", {}))

    @classmethod
    def from_checkpoint(cls, path: str, which: str = "best", batch_size: int = 32) -> "Classifier":
        """``path``: a run folder, its ``checkpoints`` folder, a ``best`` or
        ``latest`` folder, or one step folder. ``which``: best (default) or latest."""
        folder, step = find_model_checkpoint(path, which)
        variables, meta = restore_model(folder, step)
        spec = meta.get("model")
        if spec is None:
            raise ValueError(f"{folder}/{step}: the checkpoint carries no model spec")
        variables = jax.tree_util.tree_map(jnp.asarray, variables)
        calibration = read_calibration(os.path.join(folder, str(step)))
        return cls(
            spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, batch_size, calibration
        )
    # -- inputs ---------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return model_input(image, self.image_size)

    @staticmethod
    def _images(inputs) -> Iterable[np.ndarray]:
        """One image at a time from paths, arrays or a list of either."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)):
            for item in inputs:
                yield read_image(item) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
            return
        array = np.asarray(inputs)
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
            yield array  # (H, W) or (H, W, C)
        elif array.ndim in (3, 4):
            yield from array  # (N, H, W) or (N, H, W, C)
        else:
            raise ValueError(f"expected (N, H, W[, C]) or (H, W[, C]) pixels, got shape {array.shape}")
    def _batches(self, inputs) -> Iterable[np.ndarray]:
        batch: List[np.ndarray] = []
        for image in self._images(inputs):
            batch.append(self._prepare(image))
            if len(batch) == self.batch_size:
                yield np.stack(batch)
                batch = []
        if batch:
            yield np.stack(batch)
    # -- prediction -------------------------------------------------------------
    def logits(self, inputs) -> np.ndarray:
        """The model's fracture logits (float32, before temperature scaling)."""
        out = []
        for batch in self._batches(inputs):
            n = len(batch)
            if n < self.batch_size:  # pad to one shape: one compile
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
            out.append(np.asarray(self._forward(self.variables, jnp.asarray(batch)))[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)
    def predict(self, inputs, calibrated: bool = True) -> np.ndarray:
        """Fracture probabilities (float64), one per image: file paths (PNG,
        JPEG, BMP, DICOM...), an array (N, H, W[, C]) / (H, W) of pixels in
        [0, 255] at any size (made grey, resized to the model's and rounded
        to uint8, as in training), or a list of such arrays.
        ``calibrated``: divide the logits by the temperature fitted on
        validation, when the checkpoint has one."""
        return probabilities_from_logits(self.logits(inputs), self.temperature if calibrated else 1.0)

    def calibrate(self, probabilities) -> np.ndarray:
        """Raw model probabilities -> calibrated ones (identity without a temperature)."""
        if self.temperature == 1.0:
            return np.asarray(probabilities, np.float64)
        return apply_temperature(probabilities, self.temperature)

    def threshold_for(self, operating_point: Optional[str] = None) -> float:
        """The decision threshold: the saved one, or an operating point chosen
        on validation (``"youden"``, ``"sensitivity_0.95"``...)."""
        if operating_point is None:
            return self.threshold
        if operating_point not in self.operating_points:
            raise KeyError(
                f"no operating point {operating_point!r}; this checkpoint has {sorted(self.operating_points) or 'none'}"
            )
        return float(self.operating_points[operating_point])
    def classify(self, inputs, operating_point: Optional[str] = None) -> List[str]:
        """Labels at the saved decision threshold, or at a named operating point."""
        labels = self.spec.get("labels", list(LABEL_NAMES))
        threshold = self.threshold_for(operating_point)
        return [labels[int(p >= threshold)] for p in self.predict(inputs)]

CALIBRATION_FILE = "calibration.json"

def read_calibration(step_folder: str) -> Optional[Dict[str, Any]]:
    """The calibration saved inside a checkpoint's step folder, if any."""
    import json
    path = os.path.join(step_folder, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)

def write_calibration(step_folder: str, calibration: Dict[str, Any]) -> str:
    """Write atomically (a temporary file renamed into place), so a killed
    run leaves the old file or the new one, never half of one."""
    import json
    path = os.path.join(step_folder, CALIBRATION_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(calibration, f, indent=1)
    os.replace(tmp, path)
    return path
