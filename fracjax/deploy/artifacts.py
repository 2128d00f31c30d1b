"""Export a trained classifier as an artifact that needs no fracjax, with its model card.

    fracjax.deploy.export("runs/mobilenet_v3_small_hybrid", "exported/")       # StableHLO (jax only)
    fracjax.deploy.export(run, "exported_onnx/", format="onnx")                # ONNX (onnxruntime)
    model = fracjax.deploy.load("exported/")          # checks the sha256 first, either format
    model(images)   # {"probability": (N,), "logit": (N,)} for (N, S, S[, 1]) grey pixels in [0, 255]

The exported function takes float32 ``(batch, S, S, 1)`` grey pixels at the
run's image size, with a symbolic batch; rounds and clips them as training's
preprocessing does, runs the model, and returns the calibrated fracture
probability and the raw logit. Before an artifact is written it is run on
seeded images and must agree with :class:`fracjax.Classifier` to
``PARITY_TOLERANCE``. ``model.json`` beside it is the model card
(:mod:`fracjax.deploy.card`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
from typing import Dict, Union

import numpy as np

from fracjax.deploy.common import CARD, PARITY_TOLERANCE, ExportError, probe_pixels, sha256_of
from fracjax.metrics import is_number

OUTPUTS = ("probability", "logit", "ood_score")  # the third only where the model has an OOD detector
OOD_PARITY_TOLERANCE = 1e-4

FORMATS = {"stablehlo": "fracjax.deploy.stablehlo", "onnx": "fracjax.deploy.onnx_model"}


def _format(name: str):
    return importlib.import_module(FORMATS[name])


MAX_IMAGE_SIZE = 4096  # the largest model input any card may declare (the training option's own bound)
EXPORT_FILES = (CARD, "model.stablehlo", "model.onnx")  # all an export folder holds, whatever its format


def _check_request(fmt: str, out_dir: str, force: bool, source) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {tuple(FORMATS)}")
    if isinstance(source, (str, os.PathLike)):
        inside = os.path.realpath(os.fspath(source))
        if os.path.commonpath([inside, os.path.realpath(out_dir)]) == os.path.realpath(out_dir):
            raise ExportError(f"--out: {out_dir} holds the run being exported ({os.fspath(source)}); choose "
                              "another folder")
    if os.path.lexists(out_dir):
        if not force:
            raise ExportError(f"--out: {out_dir} exists; pass --force (force=True) to replace it")
        _check_replaceable(out_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ExportError(f"--out: cannot write in {parent}")


def _check_replaceable(out_dir: str) -> None:
    """``--force`` replaces an earlier export and nothing else: never a file, a run, a checkpoint."""
    if os.path.islink(out_dir) or not os.path.isdir(out_dir):
        raise ExportError(f"--out: {out_dir} is not a folder; --force replaces only an earlier export folder")
    other = sorted(set(os.listdir(out_dir)) - set(EXPORT_FILES))
    if other:
        raise ExportError(f"--out: {out_dir} holds {', '.join(other[:5])}{' ...' if len(other) > 5 else ''}, which "
                          f"no export writes (an export holds only {', '.join(EXPORT_FILES)}); --force replaces only "
                          "an earlier export, so nothing was removed")


def _classifier(source):
    from fracjax.inference import Classifier

    if isinstance(source, Classifier):
        return source
    return Classifier.from_checkpoint(os.fspath(source))  # no best checkpoint: FileNotFoundError naming it


def parity(classifier, run) -> Dict[str, float]:
    """How far ``run`` (an artifact's runner) is from ``classifier`` on seeded images; refused past the tolerance."""
    pixels = probe_pixels(classifier.image_size)
    outputs = run(pixels)
    expected = classifier.predict(pixels, errors="skip")
    difference = float(np.max(np.abs(np.asarray(outputs[0], np.float64) - expected.probabilities)))
    if not difference <= PARITY_TOLERANCE:  # NaN fails too
        raise ExportError(f"the exported model's probabilities differ from fracjax's by {difference:.3g} "
                          f"(more than {PARITY_TOLERANCE:g}); nothing written")
    checked = {"images": len(pixels), "max_probability_difference": difference, "tolerance": PARITY_TOLERANCE}
    if expected.ood_scores is not None:  # a sum over hundreds of squares: compared relative to its size
        scale = np.maximum(1.0, np.abs(expected.ood_scores))
        relative = float(np.max(np.abs(np.asarray(outputs[2], np.float64) - expected.ood_scores) / scale))
        if len(outputs) != 3 or not relative <= OOD_PARITY_TOLERANCE:
            raise ExportError(f"the exported model's OOD scores differ from fracjax's by {relative:.3g} (relative; "
                              f"more than {OOD_PARITY_TOLERANCE:g}); nothing written")
        checked["max_ood_score_relative_difference"] = relative
    return checked


def export(source, out_dir: str, format: str = "stablehlo", *, force: bool = False, **options) -> str:
    """Export ``source`` (a run or checkpoint folder, or a Classifier) into
    ``out_dir``: the artifact and ``model.json``. Checked before any work: the
    format, and that ``out_dir`` does not exist (``force``: replace it, if it is an
    earlier export and nothing else).
    ``options`` go to the format's ``serialize`` (StableHLO: ``platforms``).
    Written to a temporary folder and renamed, so a failed export leaves
    nothing that looks complete. Returns ``out_dir``."""
    from fracjax.deploy import card

    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_request(format, out_dir, force, source)
    classifier = _classifier(source)
    module = _format(format)
    blob, details = module.serialize(classifier, **options)
    details["parity"] = parity(classifier, module.runner(blob))
    partial = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        path = os.path.join(partial, module.ARTIFACT)
        with open(path, "wb") as f:
            f.write(blob)
        written = card.model_card(classifier, module.ARTIFACT, sha256_of(path), format, details)
        with open(os.path.join(partial, CARD), "w") as f:
            json.dump(written, f, indent=1)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed export leaves nothing behind
        raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return out_dir


class ExportedModel:
    """A loaded artifact: call it on grey pixels (N, S, S[, 1]), uint8 or float in [0, 255]."""

    def __init__(self, run, card: Dict):
        self.run, self.card = run, card
        self.image_size = int(card["input"]["shape"][1])

    def __call__(self, pixels) -> Dict[str, np.ndarray]:
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected grey pixels (N, {self.image_size}, {self.image_size}[, 1]); got shape "
                             f"{np.shape(pixels)} (resize with fracjax.data.io.model_input first)")
        if x.dtype.kind not in "biuf" or (x.dtype.kind == "f" and not np.all(np.isfinite(x))):
            raise ValueError("pixels must be finite numbers (NaN or infinity in the input; predict refuses them "
                             "too)")
        outputs = [np.asarray(output) for output in self.run(x.astype(np.float32))]
        # Two outputs, or three where the model has an OOD detector: the names of those it has.
        return dict(zip(OUTPUTS[: len(outputs)], outputs, strict=True))


def load(out_dir: Union[str, os.PathLike]) -> ExportedModel:
    """An exported folder's model (either format), after checking its artifact against the card's sha256."""
    card = read_card(out_dir)
    path = os.path.join(os.fspath(out_dir), card["artifact"])
    with open(path, "rb") as f:
        blob = f.read()
    if hashlib.sha256(blob).hexdigest() != card["sha256"]:
        raise ExportError(f"{path}: its sha256 does not match {CARD}'s: the artifact was changed or damaged")
    try:
        run = _format(card["format"]).runner(blob)
    except ExportError:
        raise
    except Exception as err:  # the runtimes raise many kinds for a file that is not their format
        first = (str(err).splitlines() or [""])[0][:300]
        raise ExportError(f"{path}: not a loadable {card['format']} model ({type(err).__name__}: {first})") from None
    declared = tuple(card["input"]["shape"][1:])
    if tuple(getattr(run, "input_shape", declared)) != declared:
        raise ExportError(f"{path}: takes inputs of shape {run.input_shape}, not the card's {declared}")
    return ExportedModel(run, card)


def read_card(out_dir: Union[str, os.PathLike]) -> Dict:
    """An export folder's model card, checked field by field (:func:`check_card`)."""
    path = os.path.join(os.fspath(out_dir), CARD)
    if not os.path.isfile(path):
        raise ExportError(f"{out_dir}: no {CARD}: not a fracjax export folder")
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as err:
        raise ExportError(f"{path}: not readable JSON ({err})") from None
    check_card(card, path)
    if not os.path.isfile(os.path.join(os.fspath(out_dir), card["artifact"])):
        raise ExportError(f"{path}: names an artifact that is not there ({card['artifact']})")
    return card


def check_card(card, path: str) -> None:
    """Raise ExportError naming the first field of a model card that no export writes: the
    values a server and ``deploy.load`` act on (format, artifact, digest, input size,
    temperature, thresholds, warnings) must be what an export could have written."""
    def refuse(field: str, why: str):
        raise ExportError(f"{path}: {field} {why}: not a card fracjax wrote, or one edited since")

    if not isinstance(card, dict):
        refuse("the card", "is not a JSON object")
    if card.get("format") not in FORMATS:
        refuse("format", f"{card.get('format')!r} is not one of {tuple(FORMATS)}")
    if card.get("artifact") not in EXPORT_FILES[1:]:  # a file name of this folder, never a path
        refuse("artifact", f"{card.get('artifact')!r} is not one of {EXPORT_FILES[1:]}")
    if not (isinstance(card.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", card["sha256"])):
        refuse("sha256", "is not a SHA-256 digest")
    shape = (card.get("input") or {}).get("shape") if isinstance(card.get("input"), dict) else None
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1] == shape[2] and shape[3] == 1
            and is_number(shape[1]) and 1 <= shape[1] <= MAX_IMAGE_SIZE and shape[1] == int(shape[1])):
        refuse("input.shape", f"{shape!r} is not [batch, S, S, 1] with S in 1..{MAX_IMAGE_SIZE}")
    if not (is_number(card.get("temperature")) and 0 < card["temperature"] < float("inf")):
        refuse("temperature", f"{card.get('temperature')!r} is not a finite number above 0")
    points = card.get("operating_points", {})
    if not isinstance(points, dict) or not all(isinstance(p, dict) for p in points.values()):
        refuse("operating_points", "is not a mapping of names to {threshold: ...}")
    for name, point in points.items():
        if not (is_number(point.get("threshold")) and 0.0 <= point["threshold"] <= 1.0):
            refuse(f"operating_points.{name}.threshold", f"{point.get('threshold')!r} is not in [0, 1]")
    ood = card.get("ood")
    if ood is not None and not (isinstance(ood, dict) and is_number(ood.get("threshold"))
                                and abs(ood["threshold"]) < float("inf")):
        refuse("ood.threshold", "is not a finite number")
    if not (isinstance(card.get("warnings", []), list) and all(isinstance(w, str) for w in card.get("warnings", []))):
        refuse("warnings", "is not a list of sentences")
