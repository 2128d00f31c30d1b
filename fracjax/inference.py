"""Inference from a checkpoint: no optimizer state, no training config needed.

    clf = fracjax.Classifier.from_checkpoint("runs/mobilenet_v3_small_hybrid")
    clf.predict(["xray.png", "study.dcm"])        # fracture probabilities
    clf.predict(images)                            # (N, H, W[, C]) or (H, W) pixels in [0, 255]
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax.data.io import luminance, read_image, resize_bilinear

ArrayLike = Union[np.ndarray, jax.Array]


class Classifier:
    """A trained fracture classifier: the model rebuilt from the spec saved
    with the checkpoint, its variables, and its decision threshold."""

    def __init__(self, spec: Dict[str, Any], variables: Dict[str, Any], batch_size: int = 32):
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
        self._forward = jax.jit(lambda v, x: jax.nn.sigmoid(self.model.apply(v, x, train=False)[:, 0]))

    @classmethod
    def from_checkpoint(cls, path: str, which: str = "best", batch_size: int = 32) -> "Classifier":
        """``path``: a run folder, its ``checkpoints`` folder, a ``best`` or
        ``latest`` folder, or one step folder. ``which``: best (default) or latest."""
        from fracjax.train.checkpoint import find_model_checkpoint, restore_model

        folder, step = find_model_checkpoint(path, which)
        variables, meta = restore_model(folder, step)
        spec = meta.get("model")
        if spec is None:
            raise ValueError(f"{folder}/{step}: the checkpoint carries no model spec")
        variables = jax.tree_util.tree_map(jnp.asarray, variables)
        return cls(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, batch_size)

    # -- inputs ---------------------------------------------------------------

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image, np.float32)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an image (H, W) or (H, W, C), got shape {image.shape}")
        if image.shape[-1] == 4:  # RGBA: luminance over black, as the file reader does
            rgb, alpha = image[..., :3], image[..., 3:] / 255.0
            image = luminance(rgb)[..., None].astype(np.float32) * alpha
        elif image.shape[-1] == 3:
            image = luminance(image)[..., None].astype(np.float32)
        if image.shape[:2] != (self.image_size, self.image_size):
            image = resize_bilinear(image, (self.image_size, self.image_size))
        return np.clip(image, 0.0, 255.0)

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

    def predict(self, inputs) -> np.ndarray:
        """Fracture probabilities, one per image: file paths (PNG, JPEG, BMP,
        DICOM...), an array (N, H, W[, C]) / (H, W) of pixels in [0, 255] at
        any size (resized to the model's), or a list of such arrays."""
        out = []
        for batch in self._batches(inputs):
            n = len(batch)
            if n < self.batch_size:  # pad to one shape: one compile
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
            out.append(np.asarray(self._forward(self.variables, jnp.asarray(batch)))[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def classify(self, inputs) -> List[str]:
        """Labels at the saved decision threshold."""
        labels = self.spec.get("labels", ["not_fractured", "fractured"])
        return [labels[int(p >= self.threshold)] for p in self.predict(inputs)]
