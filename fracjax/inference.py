"""Inference from a checkpoint: no optimizer state, no training config needed.

    clf = fracjax.Classifier.from_checkpoint("runs/mobilenet_v3_small_hybrid")
    clf.predict(["xray.png", "study.dcm"])        # fracture probabilities
    clf.predict(images)                            # (N, H, W[, C]) or (H, W) pixels in [0, 255]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax import ood
from fracjax.checkpoint import find_model_checkpoint, read_calibration, read_ood, read_run_warnings, restore_model
from fracjax.data.io import model_input, read_image
from fracjax.data.screening import Observations, input_check
from fracjax.metrics import LABEL_NAMES, apply_temperature, format_thresholds, probabilities_from_logits
from fracjax.models import migrate

OUTSIDE = "outside what this model was trained on"

ERRORS = ("raise", "skip")
MIN_SIDE = 8  # the narrowest image a batch (N, H, W) may hold: (64, 64, 2) is no batch of 64 images


def _one_image(shape) -> bool:
    return len(shape) == 2 or (len(shape) == 3 and shape[-1] in (1, 3, 4))


@dataclasses.dataclass
class Predictions:
    """``predict(..., errors="skip")``: ``probabilities`` has one entry per
    input, NaN where the input failed; ``failed`` maps those inputs'
    positions to why. ``flagged`` maps the inputs that the input checks
    (:mod:`fracjax.data.screening`) or the OOD detector (:mod:`fracjax.ood`)
    found outside what the model was trained on to the reason: they have a
    probability, but no label by default."""

    probabilities: np.ndarray
    failed: Dict[int, str]
    flagged: Dict[int, str] = dataclasses.field(default_factory=dict)
    ood_scores: Optional[np.ndarray] = None  # higher: more unusual; NaN where failed; None: no detector

    @property
    def ok(self) -> np.ndarray:
        """A boolean mask of the inputs that were predicted."""
        return _predicted(len(self.probabilities), self.failed)

    @property
    def in_distribution(self) -> np.ndarray:
        """A boolean mask of the inputs that were predicted and that neither the input checks nor the
        OOD detector flagged."""
        return _predicted(len(self.probabilities), {**self.failed, **self.flagged})


def label_of(probability: float, threshold: float, labels=LABEL_NAMES) -> str:
    """The one labelling rule (the CLI, the API and the server): fractured at or above the threshold."""
    return labels[int(probability >= threshold)]


def format_threshold(threshold: float) -> str:
    """A threshold with the digits that tell it from 0.5 (0.49978, not 0.500)."""
    return format_thresholds([threshold])[0]


def _backbone_stage(module, method_name: str) -> bool:
    return method_name == "__call__" and len(module.scope.path) == 2 and module.scope.path[0] == "backbone"


def logits_and_stages(model, variables, x):
    """(fracture logits (N,) float32, [the global average (N, C_j) of each backbone stage the OOD
    detector reads]): one forward pass, the stages' outputs captured on the way (in execution
    order; :func:`fracjax.ood.stage_indices` chooses which)."""
    logits, state = model.apply(variables, x, train=False, capture_intermediates=_backbone_stage,
                                mutable=["intermediates"])
    outputs = [called["__call__"][0] for called in state["intermediates"]["backbone"].values()]
    outputs = [out for out in outputs if getattr(out, "ndim", 0) == 4]
    pooled = [jnp.mean(outputs[i].astype(jnp.float32), axis=(1, 2)) for i in ood.stage_indices(len(outputs))]
    # The first class by a slice, not an index: an index is a gather where the batch is symbolic (ONNX export).
    return jax.lax.index_in_dim(logits, 0, axis=1, keepdims=False).astype(jnp.float32), pooled


def _predicted(count: int, failed: Dict[int, str]) -> np.ndarray:
    mask = np.ones(count, bool)
    mask[list(failed)] = False
    return mask


def build_model(spec: Dict[str, Any], kernels=None):
    """The Linen module a checkpoint's model spec describes; ``kernels``: a
    kit of layer implementations (:func:`fracjax.models.create`)."""
    options = {k: spec[k] for k in ("head_blocks", "head_dropout") if spec.get(k) is not None}
    return fracjax.models.create(spec["model"], head=spec["head"], num_classes=int(spec.get("num_classes", 1)),
                                 kernels=kernels, **options)


def _current_layout(spec: Dict[str, Any], variables: Dict[str, Any], where: str) -> Dict[str, Any]:
    """The saved variables in the current model's layout (a checkpoint from
    before a layout change is moved into it, values unchanged)."""
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    if spec.get("variables_layout", 1) >= migrate.VARIABLES_LAYOUT:
        return variables
    target = migrate.abstract_variables(build_model(spec), int(spec["image_size"]))
    return migrate.upgrade_variables(variables, target, where)


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
        self.checkpoint: Optional[str] = None  # the step folder it was restored from
        self.warnings: List[str] = []  # what its run's evaluation warned of (saved beside the checkpoint)
        self.model = build_model(spec)
        self.variables = variables
        self.image_size = int(spec["image_size"])
        self.threshold = float(spec.get("threshold", 0.5))
        self.batch_size = batch_size
        self.set_calibration(calibration)
        self.detector: Optional[Dict[str, np.ndarray]] = None  # the OOD detector (fracjax.ood), if fitted
        self._forward = jax.jit(lambda variables, x: logits_and_stages(self.model, variables, x))
        self._ood = jax.jit(ood.scores)

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
        where = os.path.join(folder, str(step))
        variables, meta = restore_model(folder, step)  # checksums verified; errors name ``where``
        spec = meta.get("model")
        if spec is None:
            raise ValueError(f"{where}: the checkpoint carries no model spec")
        variables = jax.tree_util.tree_map(jnp.asarray, _current_layout(spec, variables, where))
        calibration = read_calibration(where)
        classifier = cls(
            spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, batch_size, calibration
        )
        classifier.checkpoint = os.path.abspath(where)  # a model card names it: from any folder
        classifier.warnings = read_run_warnings(where)
        classifier.detector = ood.from_arrays(read_ood(where), where)
        return classifier
    # -- inputs ---------------------------------------------------------------
    def _items(self, inputs) -> List[Tuple[str, Callable[[], Tuple[np.ndarray, Optional[str]]]]]:
        """(name, load) for each input image; ``load()`` decodes and
        preprocesses it and runs the input checks: (model input, the reason
        it is not a radiograph or None). Errors are the item's own, raised
        when loaded."""
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [inputs]
        if isinstance(inputs, (list, tuple)):
            return [self._item(f"item {i}", item) for i, item in enumerate(inputs)]
        array = np.asarray(inputs)
        if _one_image(array.shape):
            return [self._item("the array", array)]
        if array.ndim == 4 or (array.ndim == 3 and array.shape[-1] >= MIN_SIDE):
            return [self._item(f"image {i}", image) for i, image in enumerate(array)]
        raise ValueError(f"expected pixels (H, W), (H, W, C) with C in 1, 3, 4, or a batch (N, H, W) / (N, H, W, C); "
                         f"got shape {array.shape}")

    def _item(self, name: str, item) -> Tuple[str, Callable[[], Tuple[np.ndarray, Optional[str]]]]:
        def load():
            seen = Observations()
            if isinstance(item, (str, os.PathLike)):
                pixels = model_input(read_image(item, seen=seen), self.image_size, os.fspath(item))
            else:
                pixels = model_input(item, self.image_size, name, seen)
            return pixels, input_check(seen, pixels)

        return (os.fspath(item) if isinstance(item, (str, os.PathLike)) else name), load

    def _batches(self, items, errors: str, failed: Dict[int, str],
                 flagged: Optional[Dict[int, str]] = None) -> Iterable[Tuple[List[int], np.ndarray]]:
        """(item indices, batch) of the items that load; a failure raises
        (``errors="raise"``) or is recorded in ``failed`` ("skip"); the input
        checks' reasons go to ``flagged``."""
        indices: List[int] = []
        batch: List[np.ndarray] = []
        flagged = {} if flagged is None else flagged
        for i, (name, load) in enumerate(items):
            try:
                pixels, reason = load()
                batch.append(pixels)
                if reason:
                    flagged[i] = reason
            except (ValueError, OSError, MemoryError) as err:  # ImageDecodeError is a ValueError
                said = str(err) if name in str(err) else f"{name}: {err}"
                if errors == "raise":
                    if said == str(err):
                        raise
                    raise ValueError(said) from err
                failed[i] = said
                continue
            indices.append(i)
            if len(batch) == self.batch_size:
                yield indices, np.stack(batch)
                indices, batch = [], []
        if batch:
            yield indices, np.stack(batch)

    def prepare(self, inputs) -> np.ndarray:
        """The model inputs (N, S, S, 1) uint8 of ``inputs`` (as ``predict`` takes them)."""
        batches = [batch for _, batch in self._batches(self._items(inputs), "raise", {})]
        return np.concatenate(batches) if batches else np.zeros((0, self.image_size, self.image_size, 1), np.uint8)

    # -- prediction -------------------------------------------------------------
    def logits(self, inputs, errors: str = "raise") -> np.ndarray:
        """The model's fracture logits (float32, before temperature scaling);
        with ``errors="skip"`` NaN for the items that fail (``predict`` says why)."""
        return self._run(inputs, errors, {})[0]

    def features(self, inputs) -> List[np.ndarray]:
        """The pooled backbone stage features the OOD detector reads: one (N, C_j) float32 array per stage."""
        return self._run(inputs, "raise", {})[1]

    def ood_scores(self, stages: List[np.ndarray]) -> Optional[np.ndarray]:
        """OOD scores (N,) of per-stage features (higher: more unusual; rows with NaN stay NaN);
        None without a detector."""
        if self.detector is None or not stages:
            return None
        stages = [np.asarray(s, np.float32) for s in stages]
        out = np.full(len(stages[0]), np.nan, np.float32)
        finite = np.all([np.all(np.isfinite(s), axis=1) for s in stages], axis=0)
        if finite.any():
            out[finite] = np.asarray(self._ood(self.detector, [s[finite] for s in stages]))
        return out

    def _run(self, inputs, errors: str, failed: Dict[int, str],
             flagged: Optional[Dict[int, str]] = None) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(logits (N,), per-stage pooled features [(N, C_j)]), NaN for the items that failed."""
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
        items = self._items(inputs)
        logits = np.full((len(items),), np.nan, np.float32)
        stages: List[np.ndarray] = []
        for indices, batch in self._batches(items, errors, failed, flagged):
            n = len(batch)
            if n < self.batch_size:  # pad to one shape: one compile
                batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]), batch.dtype)])
            batch_logits, pooled = jax.device_get(self._forward(self.variables, jnp.asarray(batch)))
            if not stages:
                stages = [np.full((len(items), p.shape[1]), np.nan, np.float32) for p in pooled]
            logits[indices] = batch_logits[:n]
            for stage, p in zip(stages, pooled, strict=True):
                stage[indices] = p[:n]
        return logits, stages

    def predict(self, inputs, calibrated: bool = True, errors: str = "raise"):
        """Fracture probabilities (float64), one per image.

        ``inputs``: a file path (PNG, JPEG, BMP, TIFF, DICOM...), a list of
        paths and/or arrays, or an array: one image (H, W) or (H, W, C) with
        C in 1, 3, 4 (grey, RGB, RGBA), or a batch (N, H, W, C) or (N, H, W)
        (a 3-D array is a batch only when its last axis is not 1, 3 or 4 and
        at least ``MIN_SIDE`` wide; anything else is a ValueError). Pixels
        of any size are made grey, resized to the model's size and rounded to
        uint8 as in training; their values are read by
        :func:`fracjax.data.io.pixel_values` (uint8 as is; uint16 and other
        integers rescaled from min..max as the same 16-bit file from disk;
        floats as 0..255 values; NaN or infinity is a ValueError).
        ``calibrated``: divide the logits by the temperature fitted on
        validation, when the checkpoint has one.
        ``errors``: "raise" (default) stops at the first item that cannot be
        read, naming it; "skip" returns a :class:`Predictions` with NaN for
        the items that failed and why in ``failed``, and the input checks'
        findings in ``flagged`` (a photograph, a CT slice, a blank frame:
        :mod:`fracjax.data.screening`), which plain arrays do not carry: use
        ``errors="skip"`` or :meth:`classify` where inputs may not be X-rays.
        """
        failed: Dict[int, str] = {}
        flagged: Dict[int, str] = {}
        logits, features = self._run(inputs, errors, failed, flagged)
        probabilities = np.full(logits.shape, np.nan)
        read = _predicted(len(logits), failed)
        probabilities[read] = probabilities_from_logits(logits[read], self.temperature if calibrated else 1.0)
        if errors == "raise":
            return probabilities
        scores = self.ood_scores(features)
        if scores is not None:
            for k in np.flatnonzero(read & (scores > self.detector["threshold"])):
                flagged.setdefault(int(k), self._unlike(float(scores[k])))
        return Predictions(probabilities, failed, flagged, scores)

    def _unlike(self, score: float) -> str:
        return ood.unlike_reason(score, float(self.detector["threshold"]))

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
    def classify(self, inputs, operating_point: Optional[str] = None, force_label: bool = False) -> List[Optional[str]]:
        """Labels at the saved decision threshold, or at a named operating point;
        None for an input outside what the model was trained on (the input
        checks), unless ``force_label``."""
        labels = self.spec.get("labels", list(LABEL_NAMES))
        threshold = self.threshold_for(operating_point)
        predicted = self.predict(inputs, errors="skip")
        if predicted.failed:
            first = min(predicted.failed)
            raise ValueError(predicted.failed[first])
        return [None if (k in predicted.flagged and not force_label) else label_of(p, threshold, labels)
                for k, p in enumerate(predicted.probabilities)]
