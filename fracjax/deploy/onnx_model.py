"""ONNX written by fracjax's own converter, run by onnxruntime; a dynamic batch.

The served function (:func:`fracjax.deploy.common.serving_function`, the one StableHLO exports
too) is traced with a symbolic batch and the portable kernel kit (lax's convolutions), and its
jaxpr is written as an ONNX graph (:mod:`fracjax.deploy.onnx_graph`): channels first inside,
the parameters and everything computed from them folded into constants, each BatchNorm and
padding folded into its convolution, and the activations named as onnxruntime fuses them
(:mod:`fracjax.deploy.onnx_fuse`). The graph's input is the contract's NHWC grey pixels; one
reshape turns them channels-first.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from fracjax.deploy import onnx_layers  # noqa: F401 -- registers the lowerings with axes
from fracjax.deploy.common import ExportError, output_names, serving_function
from fracjax.deploy.onnx_fuse import optimise
from fracjax.deploy.onnx_graph import ConversionError, Graph, Tensor, from_logical, to_logical, walk

ARTIFACT = "model.onnx"
OPSET = 18  # onnxruntime 1.14 and newer run it (ReduceMean with axes as an input needs 18)
CONVERTER = "fracjax.deploy.onnx_graph"
NEEDS = "pip install 'fracjax[onnx]' (onnx and onnxruntime)"


def _onnx():
    try:
        import onnx
    except ImportError as err:
        raise ExportError(f"--format onnx needs the onnx package: {NEEDS} ({err})") from None
    return onnx


def convert(fn: Callable, size: int, names: Sequence[str]):
    """``fn`` (pixels (N, size, size, 1) float32 -> a tuple of (N,) arrays) as an ONNX model."""
    import jax
    import jax.numpy as jnp

    onnx = _onnx()
    (batch,) = jax.export.symbolic_shape("batch")
    closed = jax.make_jaxpr(fn)(jax.ShapeDtypeStruct((batch, size, size, 1), jnp.float32))
    graph = Graph()
    shape = (batch, size, size, 1)
    pixels = Tensor(from_logical(graph, "pixels", shape), shape, np.dtype(np.float32))
    outs = walk(graph, closed.jaxpr, closed.consts, [pixels])
    if len(outs) != len(names) or not all(isinstance(o, Tensor) for o in outs):
        raise ConversionError("the served function's outputs are not all computed from the pixels")
    for out, name in zip(outs, names, strict=True):
        graph.add("Identity", [to_logical(graph, out)], hint="out")
        graph.nodes[-1].outputs = [name]
    optimise(graph, names)
    return _model_proto(onnx, graph, shape, outs, names)


def _model_proto(onnx, graph: Graph, shape, outs, names):
    from onnx import helper, numpy_helper

    def value_info(name, dims, dtype):
        dims = [d if isinstance(d, (int, np.integer)) else "batch" for d in dims]
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)

    nodes = [helper.make_node(n.op, n.inputs, n.outputs, name=f"{n.op}_{i}", **n.attrs)
             for i, n in enumerate(graph.nodes)]
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in graph.constants.items()]
    proto = helper.make_graph(nodes, "fracjax_classifier", [value_info("pixels", shape, np.float32)],
                              [value_info(n, o.shape, o.dtype) for n, o in zip(names, outs, strict=True)],
                              initializers)
    model = helper.make_model(proto, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fracjax")
    model.ir_version = 8  # onnxruntime 1.14+ reads it
    onnx.checker.check_model(model, full_check=True)
    return model


def serialize(classifier) -> Tuple[bytes, Dict]:
    """(the artifact's bytes, what the card says of it)."""
    from importlib.metadata import version

    from fracjax.inference import build_model

    fn = serving_function(classifier, build_model(classifier.spec, kernels="portable"))
    try:
        model = convert(fn, classifier.image_size, list(output_names(classifier)))
    except ConversionError as err:
        raise ExportError(f"--format onnx: {err}; nothing written") from None
    converter = f"{CONVERTER} (fracjax {version('fracjax')}, onnx {version('onnx')})"
    return model.SerializeToString(), {"platforms": ["onnxruntime"], "opset": OPSET, "converter": converter}


def runner(blob: bytes) -> Callable[[np.ndarray], Tuple[np.ndarray, ...]]:
    """float32 pixels (N, S, S, 1) -> (probability, logit[, ood score]), by onnxruntime on the CPU,
    with all its graph optimisations (the layout and fusions it adds to what the file holds)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ExportError(f"running an ONNX export needs onnxruntime: {NEEDS} ({err})") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = onnxruntime.InferenceSession(blob, options, providers=["CPUExecutionProvider"])

    names = [output.name for output in session.get_outputs()]

    def run(pixels: np.ndarray):
        return tuple(session.run(names, {"pixels": np.asarray(pixels, np.float32)}))

    run.input_shape = tuple(session.get_inputs()[0].shape)[1:]  # checked against the card's (S, S, 1)

    return run
