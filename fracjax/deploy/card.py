"""The model card written beside every exported artifact: what the model
is, what it takes and gives, how it was measured, and what it is not for."""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Dict, Optional

import jax
import numpy as np

import fracjax
from fracjax.data.screening import input_check_rules
from fracjax.metrics import jsonable

INTENDED_USE = (
    "Research use only. This model classifies a single radiograph as fractured or not fractured; it is not a "
    "medical device, has not been validated prospectively or across hospitals, scanners or populations, and must "
    "not be used to make or replace a clinical decision. Its metrics come from the data set named here, which may "
    "hold near-copies of the same X-ray across splits (see 'data.audited'); on other data it may perform worse."
)


def run_folder_of(checkpoint: Optional[str]) -> Optional[str]:
    """The run folder of a ``<run>/checkpoints/<best|latest>/<step>`` folder, if it is one."""
    if not checkpoint:
        return None
    parts = os.path.normpath(checkpoint).split(os.sep)
    if len(parts) >= 4 and parts[-3] == "checkpoints" and parts[-1].isdigit():
        return os.sep.join(parts[:-3])
    return None


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _operating_points(classifier) -> Dict[str, Dict[str, Any]]:
    measured = classifier.calibration.get("operating_point_metrics", {})
    points = {"saved_threshold": {"threshold": classifier.threshold}}
    for name, threshold in classifier.operating_points.items():
        points[name] = {"threshold": float(threshold), **{f"validation_{k}": v for k, v in
                                                          measured.get(name, {}).items()}}
    return points


def _ood(classifier, report: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The OOD detector's rule and how it was measured (None: the model has no detector)."""
    if classifier.detector is None:
        return None
    from fracjax import ood

    measured = (report or {}).get("ood") or {}
    return {"method": ood.METHOD, "threshold": float(classifier.detector["threshold"]),
            "accepts_of_validation": ood.ACCEPT, "auroc_vs_generated_non_radiographs": measured.get("auroc_vs_probes"),
            "test_flagged": (measured.get("test") or {}).get("detector"),
            "rule": "ood_score > threshold: no label; say the input is outside what this model was trained on"}


def trained_on(run: Optional[str]) -> Dict[str, Any]:
    """``dataset``, ``data_dir``, ``audit`` and ``data_folder`` (a folder or
    CSV of the user's own X-rays, else None) of a run, from its config.json
    (None where unknown)."""
    config = _read_json(os.path.join(run, "config.json")) if run else None
    train = (config or {}).get("train", {})
    data = train.get("data", {})
    own = data.get("data_folder") or data.get("data_csv")
    return {"dataset": own or data.get("dataset"), "data_dir": data.get("data_dir"),
            "audit": train.get("evaluation", {}).get("audit"), "data_folder": own,
            "image_size": data.get("image_size")}


def _data(report: Optional[Dict[str, Any]], run: Optional[str]) -> Dict[str, Any]:
    data = dict((report or {}).get("data") or {})
    config = trained_on(run)
    data["audited"] = bool(config["audit"]) or "clean_test" in (report or {})
    data.setdefault("dataset", config["dataset"])
    return data


def model_card(classifier, artifact: str, sha256: str, fmt: str, details: Dict[str, Any]) -> Dict[str, Any]:
    """The card of ``classifier`` exported to ``artifact`` (a file name); ``details``: the format's
    own (``platforms``, and for ONNX ``opset`` and ``converter``) and the export's parity check."""
    run = run_folder_of(classifier.checkpoint)
    report = _read_json(os.path.join(run, "report.json")) if run else None
    spec, size = classifier.spec, classifier.image_size
    contract = spec.get("input_contract") or fracjax.models.input_contract(spec["model"]).to_dict()
    card = {
        "format": fmt, "artifact": artifact, "sha256": sha256, **details,
        "model": {k: spec.get(k) for k in ("model", "head", "head_blocks", "head_dropout", "num_classes", "labels")},
        "parameters": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(classifier.variables["params"]))),
        "input": {"shape": ["batch", size, size, 1], "dtype": "float32", "pixel_range": [0, 255],
                  "preprocessing": "grey pixels at the model's size; inside the artifact they are rounded and "
                  f"clipped to 0..255, then scaled as Keras '{contract.get('preprocessing')}' does. Images of "
                  "another size: fracjax.data.io.model_input (bilinear, half-pixel centres, aspect ratio not "
                  "kept, rounded to uint8), as in training"},
        "outputs": {"probability": "calibrated fracture probability, sigmoid(logit / temperature)",
                    "logit": "the model's raw fracture logit",
                    **({"ood_score": "how unlike the training X-rays the input is (higher: more unusual); above "
                                     "ood.threshold the input is outside what this model was trained on"}
                       if classifier.detector is not None else {})},
        "ood": _ood(classifier, report),
        "temperature": classifier.temperature,
        "warnings": list(classifier.warnings),  # the run's evaluation: read before trusting any output
        "input_checks": input_check_rules(),
        "operating_points": _operating_points(classifier),
        "test": (report or {}).get("test"), "clean_test": (report or {}).get("clean_test"),
        "data": _data(report, run),
        "checkpoint": classifier.checkpoint,
        "versions": {"fracjax": fracjax.__version__, "jax": jax.__version__, "jaxlib": _jaxlib_version()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "intended_use": INTENDED_USE,
    }
    return jsonable(card)


def _jaxlib_version() -> str:
    import jaxlib

    return getattr(jaxlib, "__version__", "unknown")
