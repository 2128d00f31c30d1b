"""Export a trained classifier as a StableHLO artifact that needs only jax.

    fracjax.deploy.export("runs/mobilenet_v3_small_hybrid", "exported/")   # or Classifier.export(...)
    model = fracjax.deploy.load("exported/")                               # checks the sha256 first
    model(images)   # {"probability": (N,), "logit": (N,)} for (N, S, S[, 1]) grey pixels in [0, 255]

The exported function takes float32 ``(batch, S, S, 1)`` grey pixels at the
run's image size, with a symbolic batch; rounds and clips them as training's
preprocessing does, runs the model with each platform's own layer
implementations (the kernels are chosen per platform when the function is
lowered), and returns the calibrated fracture probability and the raw logit.
``model.json`` beside it is the model card (:mod:`fracjax.deploy.card`).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from fracjax.hashing import file_digest

FORMATS = ("stablehlo",)
PLATFORMS = ("cpu", "cuda", "tpu")
ARTIFACT = {"stablehlo": "model.stablehlo"}
CARD = "model.json"


class ExportError(ValueError):
    """An export that cannot be made, or an exported folder that cannot be trusted."""


def sha256_of(path: str) -> str:
    return file_digest(path, "sha256")


def serving_function(classifier):
    """pixels (N, S, S, 1) float32 -> (calibrated probability, logit), float32."""
    model, variables, temperature = classifier.model, classifier.variables, float(classifier.temperature)

    def serve(pixels):
        x = jnp.clip(jnp.round(pixels), 0.0, 255.0)  # what model_input's rounding to uint8 does
        logit = model.apply(variables, x, train=False)[:, 0].astype(jnp.float32)
        return jax.nn.sigmoid(logit / temperature), logit

    return serve


def _check_request(fmt: str, out_dir: str, force: bool) -> None:
    if fmt not in FORMATS:
        raise ExportError(f"--format: {fmt!r} is not one of {FORMATS}")
    if os.path.exists(out_dir) and not force:
        raise ExportError(f"--out: {out_dir} exists; pass --force (force=True) to replace it")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ExportError(f"--out: cannot write in {parent}")


def _classifier(source):
    from fracjax.inference import Classifier

    if isinstance(source, Classifier):
        return source
    return Classifier.from_checkpoint(os.fspath(source))  # no best checkpoint: FileNotFoundError naming it


def export(source, out_dir: str, format: str = "stablehlo", *, force: bool = False,
           platforms: Sequence[str] = PLATFORMS) -> str:
    """Export ``source`` (a run or checkpoint folder, or a Classifier) into
    ``out_dir``: the artifact and ``model.json``. Checked before any work: the
    format, and that ``out_dir`` does not exist (``force``: replace it).
    Written to a temporary folder and renamed, so a failed export leaves
    nothing that looks complete. Returns ``out_dir``."""
    from fracjax.deploy.card import model_card

    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_request(format, out_dir, force)
    classifier = _classifier(source)
    serialized, lowered_for = _stablehlo(classifier, platforms)
    partial = f"{out_dir}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        artifact = ARTIFACT[format]
        with open(os.path.join(partial, artifact), "wb") as f:
            f.write(serialized)
        card = model_card(classifier, artifact, sha256_of(os.path.join(partial, artifact)), format, lowered_for)
        with open(os.path.join(partial, CARD), "w") as f:
            json.dump(card, f, indent=1)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a failed export leaves nothing behind
        raise
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return out_dir


def _stablehlo(classifier, platforms: Sequence[str]):
    """(serialized bytes, the platforms lowered): every asked platform that lowers (cpu at least)."""
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
    return bytes(exported.serialize()), list(exported.platforms)


class ExportedModel:
    """A loaded artifact: call it on grey pixels (N, S, S[, 1]), uint8 or float in [0, 255]."""

    def __init__(self, exported, card: Dict):
        self.exported, self.card = exported, card
        self.image_size = int(card["input"]["shape"][1])

    def __call__(self, pixels) -> Dict[str, np.ndarray]:
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"expected grey pixels (N, {self.image_size}, {self.image_size}[, 1]); got shape "
                             f"{np.shape(pixels)} (resize with fracjax.data.io.model_input first)")
        probability, logit = self.exported.call(jnp.asarray(x, jnp.float32))
        return {"probability": np.asarray(probability), "logit": np.asarray(logit)}


def load(out_dir: Union[str, os.PathLike]) -> ExportedModel:
    """An exported folder's model, after checking its artifact against the card's sha256."""
    from jax import export as jax_export

    card = read_card(out_dir)
    path = os.path.join(os.fspath(out_dir), card["artifact"])
    if sha256_of(path) != card["sha256"]:
        raise ExportError(f"{path}: its sha256 does not match {CARD}'s: the artifact was changed or damaged")
    with open(path, "rb") as f:
        return ExportedModel(jax_export.deserialize(bytearray(f.read())), card)


def read_card(out_dir: Union[str, os.PathLike]) -> Dict:
    path = os.path.join(os.fspath(out_dir), CARD)
    if not os.path.isfile(path):
        raise ExportError(f"{out_dir}: no {CARD}: not a fracjax export folder")
    with open(path) as f:
        card = json.load(f)
    if card.get("format") not in FORMATS or not os.path.isfile(os.path.join(os.fspath(out_dir), card["artifact"])):
        raise ExportError(f"{path}: names a format or artifact that is not there ({card.get('format')}, "
                          f"{card.get('artifact')})")
    return card
