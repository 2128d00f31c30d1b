"""Rewrites of a converted graph (:mod:`fracjax.deploy.onnx_graph`) into the form onnxruntime
runs fastest, each exact up to float rounding (the export's parity check bounds the total):

* a per-channel Sub, Mul, Div or Add by a constant right after a convolution (the inference
  BatchNorm, a convolution's bias) goes into the convolution's weights and bias;
* zero padding before convolutions goes into their ``pads``;
* ``max(x, 0)`` becomes Relu, ``min(max(x + 3, 0), 6) / 6`` HardSigmoid and ``x`` times that
  HardSwish: the activations onnxruntime fuses into the convolution before them; other
  ``min(max(x, a), b)`` become Clip;
* a sum over H and W divided by H * W (``jnp.mean``) becomes GlobalAveragePool;
* the input's ``x * a + b`` goes into the first convolution's weights, leaving ``x - v``;
* a run of per-channel constants with no convolution before it (DenseNet's pre-activation
  BatchNorm) becomes one BatchNormalization; a run that is the identity goes;
* what no output needs is dropped.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from fracjax.deploy.onnx_graph import Graph, Node


def _producers(graph: Graph) -> Dict[str, Node]:
    return {out: node for node in graph.nodes for out in node.outputs}


def _consumers(graph: Graph) -> Dict[str, List[Node]]:
    users: Dict[str, List[Node]] = {}
    for node in graph.nodes:
        for name in node.inputs:
            users.setdefault(name, []).append(node)
    return users


def _scalar(graph: Graph, name: str) -> Optional[float]:
    value = graph.constants.get(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def _per_channel(value: np.ndarray, channels: int) -> Optional[np.ndarray]:
    """A constant that varies at most along NCHW's channel axis, as (channels,); else None."""
    if value.ndim > 4:
        return None
    shape = (1,) * (4 - value.ndim) + value.shape
    if shape[0] != 1 or shape[2:] != (1, 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(shape[1]), (channels,)).astype(value.dtype)


def _fold_one_affine(graph: Graph, conv: Node, user: Node) -> bool:
    """Fold ``user`` (Sub/Mul/Div/Add of the convolution's output by a constant) into ``conv``."""
    if user.op not in ("Add", "Sub", "Mul", "Div") or len(user.inputs) != 2:
        return False
    first = user.inputs[0] == conv.outputs[0]
    other = user.inputs[1] if first else user.inputs[0]
    if other not in graph.constants or (user.op in ("Sub", "Div") and not first):
        return False
    weight = graph.constants[conv.inputs[1]]
    factor = _per_channel(graph.constants[other], weight.shape[0])
    if factor is None or (user.op == "Div" and not np.all(factor != 0)):
        return False
    bias = graph.constants[conv.inputs[2]] if len(conv.inputs) > 2 else np.zeros(weight.shape[0], weight.dtype)
    if user.op == "Add":
        bias = bias + factor
    elif user.op == "Sub":
        bias = bias - factor
    else:
        factor = factor if user.op == "Mul" else 1.0 / factor
        weight, bias = weight * factor[:, None, None, None], bias * factor
    conv.inputs = [conv.inputs[0], graph.constant(weight.astype(weight.dtype), "weight"),
                   graph.constant(bias.astype(weight.dtype), "bias")]
    conv.outputs = list(user.outputs)
    graph.nodes.remove(user)
    return True


def fold_affine_into_convolutions(graph: Graph, outputs: Sequence[str]) -> None:
    folding = True
    while folding:
        folding = False
        users = _consumers(graph)
        for conv in [n for n in graph.nodes if n.op == "Conv" and n.outputs[0] not in outputs]:
            after = users.get(conv.outputs[0], [])
            if len(after) == 1 and _fold_one_affine(graph, conv, after[0]):
                folding = True
                break


def fold_padding_into_convolutions(graph: Graph) -> None:
    users = _consumers(graph)
    for pad in [n for n in graph.nodes if n.op == "Pad"]:
        pads = graph.constants.get(pad.inputs[1])
        after = users.get(pad.outputs[0], [])
        if (pads is None or len(pads) != 8 or _scalar(graph, pad.inputs[2]) != 0.0 or pads[[0, 1, 4, 5]].any()
                or not after or any(n.op != "Conv" or n.inputs[0] != pad.outputs[0] for n in after)):
            continue
        extra = [int(pads[i]) for i in (2, 3, 6, 7)]  # top, left, bottom, right
        for conv in after:
            conv.attrs["pads"] = [mine + more for mine, more in zip(conv.attrs["pads"], extra, strict=True)]
            conv.inputs[0] = pad.inputs[0]


def _operands(graph: Graph, node: Node, op: str, constant: float):
    """(the non-constant input) when ``node`` is ``op`` of it and the scalar ``constant``; else None."""
    found = _with_scalar(graph, node, op)
    if found is not None and np.isclose(_scalar(graph, found[1]), constant, rtol=1e-6, atol=0.0):
        return found[0]
    return None


def _with_scalar(graph: Graph, node: Optional[Node], op: str):
    """(the other input, the scalar constant's name) when ``node`` is ``op`` of a scalar; else None."""
    if node is None or node.op != op or len(node.inputs) != 2:
        return None
    for mine, theirs in ((0, 1), (1, 0)):
        if _scalar(graph, node.inputs[theirs]) is not None:
            return node.inputs[mine], node.inputs[theirs]
    return None


def name_activations(graph: Graph, outputs: Sequence[str]) -> None:
    """Relu, HardSigmoid and HardSwish where their arithmetic is spelt out."""
    producers, users = _producers(graph), _consumers(graph)

    def only_use(name: str) -> bool:
        return len(users.get(name, [])) == 1 and name not in outputs

    for node in list(graph.nodes):  # node: the "/ 6"; walking up: Min(., 6), Max(., 0), Add(x, 3)
        min_out = _operands(graph, node, "Mul", 1.0 / 6.0)
        max_out = _operands(graph, producers.get(min_out), "Min", 6.0) if min_out and only_use(min_out) else None
        add_out = _operands(graph, producers.get(max_out), "Max", 0.0) if max_out and only_use(max_out) else None
        x = _operands(graph, producers.get(add_out), "Add", 3.0) if add_out and only_use(add_out) else None
        if x is None:
            continue
        for name in (min_out, max_out, add_out):
            graph.nodes.remove(producers[name])
        node.op, node.inputs, node.attrs = "HardSigmoid", [x], {"alpha": 1.0 / 6.0, "beta": 0.5}
    producers, users = _producers(graph), _consumers(graph)
    for node in list(graph.nodes):
        if node.op == "Mul" and len(node.inputs) == 2:
            for x, gate in (node.inputs, node.inputs[::-1]):
                sigmoid = producers.get(gate)
                if sigmoid is not None and sigmoid.op == "HardSigmoid" and sigmoid.inputs == [x] and only_use(gate):
                    graph.nodes.remove(sigmoid)
                    node.op, node.inputs, node.attrs = "HardSwish", [x], {}
                    break
    producers, users = _producers(graph), _consumers(graph)
    for node in list(graph.nodes):  # min(max(x, low), high): Clip
        capped = _with_scalar(graph, node, "Min")
        floored = _with_scalar(graph, producers.get(capped[0]), "Max") if capped and only_use(capped[0]) else None
        if floored:
            graph.nodes.remove(producers[capped[0]])
            node.op, node.inputs = "Clip", [floored[0], floored[1], capped[1]]
    for node in graph.nodes:
        x = _operands(graph, node, "Max", 0.0)
        if x is not None:
            node.op, node.inputs = "Relu", [x]


def _affine_step(graph: Graph, node: Node, x: str):
    """(multiply, add) that ``node`` applies to ``x`` (a scalar or NCHW per-channel constant), else None."""
    if node.op not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2 or x not in node.inputs:
        return None
    first = node.inputs[0] == x
    other = graph.constants.get(node.inputs[1] if first else node.inputs[0])
    if other is None or (node.op in ("Sub", "Div") and not first):
        return None
    shape = (1,) * (4 - other.ndim) + other.shape if other.ndim <= 4 else None
    if other.size != 1 and (shape is None or shape[0] != 1 or shape[2:] != (1, 1)):
        return None
    c = other.reshape(-1).astype(np.float64) if other.size != 1 else float(other.reshape(()))
    if node.op == "Add":
        return 1.0, c
    if node.op == "Sub":
        return 1.0, -c
    if node.op == "Mul":
        return c, 0.0
    return (1.0 / c, 0.0) if np.all(np.asarray(c) != 0.0) else None


def collapse_affine_chains(graph: Graph, outputs: Sequence[str]) -> None:
    """Runs of per-channel Add/Sub/Mul/Div by constants (a BatchNorm that follows no convolution,
    as in DenseNet's pre-activation layers) as one BatchNormalization; a run that multiplies by 1
    and adds 0 (a sum pool's area, then the mean's division by it) is dropped."""
    users = _consumers(graph)
    for start in list(graph.nodes):
        if start not in graph.nodes or start.op not in ("Add", "Sub", "Mul", "Div"):
            continue
        x = next((i for i in start.inputs if i not in graph.constants), None)
        chain, scale, shift, name = [], 1.0, 0.0, x
        node = start
        while node is not None and (step := _affine_step(graph, node, name)) is not None:
            chain.append(node)
            scale, shift = scale * step[0], shift * step[0] + step[1]
            name = node.outputs[0]
            after = users.get(name, [])
            node = after[0] if len(after) == 1 and name not in outputs else None
        identity = np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(shift) == 0.0)
        if len(chain) < 2 or (len(chain) == 2 and np.size(scale) == np.size(shift) == 1 and not identity):
            continue  # nothing to gain: two scalar operations stay two
        at = graph.nodes.index(chain[-1])  # the replacement goes where the run ended
        graph.nodes[at:at + 1] = _affine_nodes(graph, x, scale, shift, chain)
        for done in chain[:-1]:
            graph.nodes.remove(done)


def _affine_nodes(graph: Graph, x: str, scale, shift, chain: List[Node]) -> List[Node]:
    """What computes ``x * scale + shift`` into the run's output: nothing but an Identity where it is
    the identity, Mul and Add for scalars (the rank is not known here), else a BatchNormalization."""
    end = list(chain[-1].outputs)
    if np.all(np.asarray(scale) == 1.0) and np.all(np.asarray(shift) == 0.0):
        return [Node("Identity", [x], end)]
    dtype = next(graph.constants[i].dtype for n in chain for i in n.inputs if i in graph.constants)
    channels = max(np.size(scale), np.size(shift))
    scale, shift = (np.broadcast_to(np.asarray(v, np.float64), (channels,)).astype(dtype) for v in (scale, shift))
    if channels == 1:
        scaled = graph.fresh("scaled")
        return [Node("Mul", [x, graph.constant(scale.reshape(()))], [scaled]),
                Node("Add", [scaled, graph.constant(shift.reshape(()))], end)]
    names = [graph.constant(v, "affine") for v in (scale, shift, np.zeros(channels, dtype), np.ones(channels, dtype))]
    return [Node("BatchNormalization", [x, *names], end, {"epsilon": 0.0})]


def _input_scaling(graph: Graph, conv: Node, producers, users):
    """(x, a, b, the two nodes) where ``conv`` reads ``x * a + b`` (scalars a != 0, b), else None."""
    shift_node = producers.get(conv.inputs[0])
    shifted = _with_scalar(graph, shift_node, "Add") or _with_scalar(graph, shift_node, "Sub")
    if not shifted or (shift_node.op == "Sub" and shift_node.inputs[1] != shifted[1]):
        return None
    scale_node = producers.get(shifted[0])
    scaled = _with_scalar(graph, scale_node, "Mul")
    if not scaled or len(users.get(shifted[0], [])) != 1 or len(users.get(conv.inputs[0], [])) != 1:
        return None
    a, b = _scalar(graph, scaled[1]), _scalar(graph, shifted[1]) * (-1.0 if shift_node.op == "Sub" else 1.0)
    return (scaled[0], a, b, (scale_node, shift_node)) if a != 0.0 else None


def fold_scaling_into_convolutions(graph: Graph, outputs: Sequence[str]) -> None:
    """``x * a + b`` (the input's rescaling to [-1, 1]) into the convolution it feeds, as
    ``a * (x - v)`` with ``v = -b / a``: the weights times a, and x - v, which the convolution pads
    with zeros as it padded x * a + b (one subtraction left of two operations)."""
    producers, users = _producers(graph), _consumers(graph)
    for conv in [n for n in graph.nodes if n.op == "Conv"]:
        found = _input_scaling(graph, conv, producers, users)
        if found is None or any(n.outputs[0] in outputs for n in found[3]):
            continue
        x, a, b, (scale_node, shift_node) = found
        weight = graph.constants[conv.inputs[1]]
        conv.inputs[1] = graph.constant((weight * a).astype(weight.dtype), "weight")
        shift_node.op, shift_node.inputs = "Sub", [x, graph.constant(np.asarray(-b / a, weight.dtype), "centre")]
        graph.nodes.remove(scale_node)


def _mean_chain(graph: Graph, start: str, users, area: int):
    """The nodes from a spatial sum ``start`` to its division by ``area`` (shape-only ops between), or None."""
    chain, name = [], start
    while len(users.get(name, [])) == 1:
        node = users[name][0]
        if node.op in ("Unsqueeze", "Reshape"):
            chain.append(node)
            name = node.outputs[0]
            continue
        divisor = _scalar(graph, node.inputs[1]) if node.op == "Div" and node.inputs[0] == name else None
        return chain + [node] if divisor == float(area) else None
    return None


def average_pools(graph: Graph, outputs: Sequence[str]) -> None:
    """A sum over H and W divided by H * W (jnp.mean) as GlobalAveragePool, which onnxruntime
    runs in its blocked layout (a ReduceSum makes it leave that layout and come back)."""
    users = _consumers(graph)
    for node in [n for n in graph.nodes if n.op == "ReduceSum" and n.outputs[0] in graph.spatial_sums]:
        chain = _mean_chain(graph, node.outputs[0], users, graph.spatial_sums[node.outputs[0]])
        if chain is None or any(n.outputs[0] in outputs for n in chain[:-1]):
            continue
        keep_dims = len(chain) > 1
        if keep_dims:  # it must end as (N, C, 1, 1), what GlobalAveragePool gives
            target = graph.constants.get(chain[-2].inputs[1]) if chain[-2].op == "Reshape" else None
            if target is None or len(target) != 4 or list(target[2:]) != [1, 1]:
                continue
        node.op, node.inputs = "GlobalAveragePool", [node.inputs[0]]
        node.attrs = {}
        if keep_dims:
            node.outputs = list(chain[-1].outputs)
        else:
            pooled = graph.fresh("pooled")
            node.outputs = [pooled]
            chain[-1].op, chain[-1].inputs, chain[-1].attrs = "Flatten", [pooled], {"axis": 1}
            chain = chain[:-1]
        for done in chain:
            graph.nodes.remove(done)


def prune(graph: Graph, outputs: Sequence[str]) -> None:
    """Drop the nodes no output needs, then the constants no node reads."""
    needed = set(outputs)
    kept = []
    for node in reversed(graph.nodes):
        if any(out in needed for out in node.outputs):
            kept.append(node)
            needed.update(node.inputs)
    graph.nodes = kept[::-1]
    graph.constants = {k: v for k, v in graph.constants.items() if k in needed}


def optimise(graph: Graph, outputs: Sequence[str]) -> None:
    fold_padding_into_convolutions(graph)
    average_pools(graph, outputs)
    prune(graph, outputs)
    name_activations(graph, outputs)  # first: hard-sigmoid's "+ 3" would go into a convolution's bias
    fold_affine_into_convolutions(graph, outputs)
    fold_scaling_into_convolutions(graph, outputs)
    collapse_affine_chains(graph, outputs)
    prune(graph, outputs)
