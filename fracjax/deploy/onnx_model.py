"""ONNX through jax2onnx, run by onnxruntime; a dynamic batch.

Two things jax2onnx needs from us: the model is traced with the portable
kernel kit (lax's convolutions: the CPU kit's padding does not convert with a
symbolic batch), and the graph's ``value_info`` is cleared (shapes recorded
before jax2onnx removed layout transposes; onnxruntime's shape inference
rejects them). The pooling layers pass their window by keyword, as its
pooling plugins read it.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np

from fracjax.deploy.common import ExportError, output_names, serving_function

ARTIFACT = "model.onnx"
OPSET = 18  # onnxruntime 1.14 and newer run it (ReduceMean with axes as an input needs 18)
NEEDS = "pip install 'fracjax[onnx]' (jax2onnx and onnxruntime)"


def _converter():
    try:
        from jax2onnx import to_onnx
    except ImportError as err:
        raise ExportError(f"--format onnx needs jax2onnx: {NEEDS} ({err})") from None
    return to_onnx


def serialize(classifier) -> Tuple[bytes, Dict]:
    """(the artifact's bytes, what the card says of it)."""
    from importlib.metadata import version

    from fracjax.inference import build_model

    to_onnx = _converter()
    size = classifier.image_size
    fn = serving_function(classifier, build_model(classifier.spec, kernels="portable"))
    proto = to_onnx(fn, inputs=[("batch", size, size, 1)], input_names=["pixels"],
                    output_names=list(output_names(classifier)), opset=OPSET, model_name="fracjax_classifier")
    del proto.graph.value_info[:]
    converter = f"jax2onnx {version('jax2onnx')}"
    return proto.SerializeToString(), {"platforms": ["onnxruntime"], "opset": OPSET, "converter": converter}


def runner(blob: bytes) -> Callable[[np.ndarray], Tuple[np.ndarray, ...]]:
    """float32 pixels (N, S, S, 1) -> (probability, logit[, ood score]), by onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"running an ONNX export needs onnxruntime: {NEEDS} ({err})") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise
    session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

    names = [output.name for output in session.get_outputs()]

    def run(pixels: np.ndarray):
        return tuple(session.run(names, {"pixels": np.asarray(pixels, np.float32)}))

    return run
