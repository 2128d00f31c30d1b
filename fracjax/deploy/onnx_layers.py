"""Lowerings of the primitives that have axes: convolution, padding, pooling, reductions,
shapes, concatenation and matrix products, each mapped from the jaxpr's NHWC to the graph's
NCHW (see :mod:`fracjax.deploy.onnx_graph`). Importing this module registers them."""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import numpy as np

from fracjax.deploy.onnx_graph import (
    PHYSICAL_AXIS,
    TO_PHYSICAL,
    ConversionError,
    Graph,
    Tensor,
    _materialise,
    from_logical,
    is_static,
    lowering,
    operand,
    permute,
    physical_shape,
    reshape_target,
    result,
    to_logical,
)

INT64_MIN = np.iinfo(np.int64).min


def _ints(graph: Graph, values: Sequence[int], hint: str = "ints") -> str:
    return graph.constant(np.asarray(list(values), np.int64), hint)


def _physical_axes(rank: int, axes: Sequence[int]) -> List[int]:
    return [PHYSICAL_AXIS[a] for a in axes] if rank == 4 else [int(a) for a in axes]


def _spatial_pads(padding: Sequence[Sequence[int]]) -> List[int]:
    """lax's ((top, bottom), (left, right)) as ONNX's [top, left, bottom, right]."""
    (top, bottom), (left, right) = [(int(lo), int(hi)) for lo, hi in padding]
    if min(top, bottom, left, right) < 0:
        raise ConversionError(f"a negative padding {tuple(padding)} (a cropping convolution)")
    return [top, left, bottom, right]


def _tensor_input(ins, what: str) -> Tensor:
    if not isinstance(ins[0], Tensor) or any(isinstance(v, Tensor) for v in ins[1:]):
        raise ConversionError(f"{what} whose weights or settings are computed at run time")
    return ins[0]


@lowering("conv_general_dilated")
def _conv(graph, eqn, ins):
    x = _tensor_input(ins, "a convolution")
    params = eqn.params
    numbers = params["dimension_numbers"]
    if x.rank != 4 or tuple(numbers.lhs_spec) != (0, 3, 1, 2) or tuple(numbers.out_spec) != (0, 3, 1, 2):
        raise ConversionError(f"a convolution whose input or output is not NHWC ({numbers})")
    if any(d != 1 for d in params["lhs_dilation"]) or params["batch_group_count"] != 1:
        raise ConversionError("a convolution with a dilated input or batch groups")
    weight = np.transpose(np.asarray(ins[1]), tuple(numbers.rhs_spec))  # (out, in / groups, kh, kw)
    attrs = {"kernel_shape": list(weight.shape[2:]), "strides": [int(s) for s in params["window_strides"]],
             "pads": _spatial_pads(params["padding"]), "dilations": [int(d) for d in params["rhs_dilation"]],
             "group": int(params["feature_group_count"])}
    return result(graph.add("Conv", [x.name, graph.constant(weight, "weight")], attrs), eqn)


@lowering("pad")
def _pad(graph, eqn, ins):
    x = _tensor_input(ins, "a padding")
    config = [(int(lo), int(hi), int(interior)) for lo, hi, interior in eqn.params["padding_config"]]
    if any(lo < 0 or hi < 0 or interior for lo, hi, interior in config):
        raise ConversionError(f"a padding that crops or dilates ({config})")
    order = TO_PHYSICAL if x.rank == 4 else range(x.rank)
    pads = [config[i][0] for i in order] + [config[i][1] for i in order]
    fill = graph.constant(np.asarray(ins[1], x.dtype).reshape(()), "fill")
    return result(graph.add("Pad", [x.name, _ints(graph, pads, "pads"), fill], {"mode": "constant"}), eqn)


def _pool_attrs(eqn, x: Tensor):
    params = eqn.params
    window, strides, padding = params["window_dimensions"], params["window_strides"], params["padding"]
    unit_ends = all(window[i] == 1 and strides[i] == 1 and tuple(padding[i]) == (0, 0) for i in (0, 3))
    dilated = any(d != 1 for d in (*params["base_dilation"], *params["window_dilation"]))
    if x.rank != 4 or not unit_ends or dilated:
        raise ConversionError(f"a pooling window {window} / {strides} that is not spatial")
    return {"kernel_shape": [int(w) for w in window[1:3]], "strides": [int(s) for s in strides[1:3]],
            "pads": _spatial_pads(padding[1:3])}


@lowering("reduce_window_max")
def _max_pool(graph, eqn, ins):
    x = _tensor_input(ins, "a max pool")
    return result(graph.add("MaxPool", [x.name], _pool_attrs(eqn, x)), eqn)


@lowering("reduce_window_sum")
def _sum_pool(graph, eqn, ins):
    x = _tensor_input(ins, "a sum pool")
    attrs = _pool_attrs(eqn, x)
    mean = graph.add("AveragePool", [x.name], {**attrs, "count_include_pad": 1})
    area = graph.constant(np.asarray(np.prod(attrs["kernel_shape"]), x.dtype))
    return result(graph.add("Mul", [mean, area]), eqn)


REDUCTIONS = {"reduce_sum": "ReduceSum", "reduce_max": "ReduceMax", "reduce_min": "ReduceMin"}


@lowering(*REDUCTIONS)
def _reduce(graph, eqn, ins):
    x = _tensor_input(ins, "a reduction")
    axes = sorted(_physical_axes(x.rank, eqn.params["axes"]))
    name = graph.add(REDUCTIONS[eqn.primitive.name], [x.name, _ints(graph, axes, "axes")], {"keepdims": 0})
    if eqn.primitive.name == "reduce_sum" and axes == [2, 3] and all(is_static(d) for d in x.shape[1:3]):
        graph.spatial_sums[name] = int(x.shape[1] * x.shape[2])  # a mean's first half (onnx_fuse.average_pools)
    if x.rank == 4:  # what is left is in physical order; the jaxpr expects it in logical order
        left = [TO_PHYSICAL[i] for i in range(4) if i not in axes]
        shape = [physical_shape(x.shape)[i] for i in range(4) if i not in axes]
        name = permute(graph, name, shape, [left.index(a) for a in sorted(left)])
    return result(name, eqn)


@lowering("broadcast_in_dim")
def _broadcast(graph, eqn, ins):
    x = _tensor_input(ins, "a broadcast")
    shape, dims = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
    if dims == tuple(range(x.rank)) and len(shape) == x.rank:  # only unit axes grow: in the graph's layout
        grow = [1 if a == s else s for a, s in zip(x.shape, shape, strict=True)]
        if not all(is_static(g) for g in grow):
            raise ConversionError(f"a broadcast to {shape} along the batch")
        return result(graph.add("Expand", [x.name, _ints(graph, physical_shape(grow))]), eqn)
    name = to_logical(graph, x)
    missing = [i for i in range(len(shape)) if i not in dims]
    if missing:
        name = graph.add("Unsqueeze", [name, _ints(graph, missing, "axes")])
    middle = [x.shape[dims.index(i)] if i in dims else 1 for i in range(len(shape))]
    grow = [is_static(m) and m == 1 and not (is_static(s) and s == 1) for m, s in zip(middle, shape, strict=True)]
    if any(grow):
        if not all(is_static(s) for s, g in zip(shape, grow, strict=True) if g):
            raise ConversionError(f"a broadcast to {shape} along the batch")
        name = graph.add("Expand", [name, _ints(graph, [s if g else 1 for s, g in zip(shape, grow, strict=True)])])
    return result(from_logical(graph, name, shape), eqn)


def _reshaped(graph, x: Tensor, op: str, argument: str, shape) -> str:
    return from_logical(graph, graph.add(op, [to_logical(graph, x), argument]), shape)


@lowering("reshape")
def _reshape(graph, eqn, ins):
    x = _tensor_input(ins, "a reshape")
    if eqn.params.get("dimensions") is not None:
        raise ConversionError("a reshape that transposes")
    shape = tuple(eqn.params["new_sizes"])
    target = graph.constant(reshape_target(shape, x.shape), "shape")
    return result(_reshaped(graph, x, "Reshape", target, shape), eqn)


@lowering("squeeze")
def _squeeze(graph, eqn, ins):
    x = _tensor_input(ins, "a squeeze")
    shape = tuple(eqn.outvars[0].aval.shape)
    return result(_reshaped(graph, x, "Squeeze", _ints(graph, eqn.params["dimensions"], "axes"), shape), eqn)


@lowering("slice")
def _slice(graph, eqn, ins):
    x = _tensor_input(ins, "a slice")
    starts, limits = eqn.params["start_indices"], eqn.params["limit_indices"]
    strides = eqn.params["strides"] or (1,) * x.rank
    axes = [a for a in range(x.rank) if (starts[a], limits[a], strides[a]) != (0, x.shape[a], 1)]
    if not axes:  # the whole value (the one logit of a one-class head)
        return dataclasses.replace(x)
    inputs = [x.name, _ints(graph, [starts[a] for a in axes]), _ints(graph, [limits[a] for a in axes]),
              _ints(graph, _physical_axes(x.rank, axes)), _ints(graph, [strides[a] for a in axes])]
    return result(graph.add("Slice", inputs), eqn)


@lowering("rev")
def _rev(graph, eqn, ins):
    x = _tensor_input(ins, "a reversal")
    axes = list(eqn.params["dimensions"])
    inputs = [x.name, _ints(graph, [-1] * len(axes)), _ints(graph, [INT64_MIN] * len(axes)),
              _ints(graph, _physical_axes(x.rank, axes)), _ints(graph, [-1] * len(axes))]
    return result(graph.add("Slice", inputs), eqn)


@lowering("concatenate")
def _concatenate(graph, eqn, ins):
    names = [v.name if isinstance(v, Tensor) else operand(graph, _materialise(v, var.aval))
             for v, var in zip(ins, eqn.invars, strict=True)]
    axis = _physical_axes(len(eqn.outvars[0].aval.shape), [eqn.params["dimension"]])[0]
    return result(graph.add("Concat", names, {"axis": axis}), eqn)


@lowering("stack")
def _stack(graph, eqn, ins):
    axis = int(eqn.params["axis"])
    shape = tuple(eqn.outvars[0].aval.shape)
    parts = []
    for v, var in zip(ins, eqn.invars, strict=True):
        name = to_logical(graph, v) if isinstance(v, Tensor) else graph.constant(_materialise(v, var.aval))
        parts.append(graph.add("Unsqueeze", [name, _ints(graph, [axis], "axes")]))
    return result(from_logical(graph, graph.add("Concat", parts, {"axis": axis}), shape), eqn)


@lowering("dot_general")
def _dot(graph, eqn, ins):
    x = _tensor_input(ins, "a matrix product")
    (contract_x, contract_w), (batch_x, batch_w) = eqn.params["dimension_numbers"]
    weight = np.asarray(ins[1])
    if batch_x or batch_w or x.rank == 4 or weight.ndim != 2 or tuple(contract_x) != (x.rank - 1,):
        raise ConversionError(f"a matrix product {eqn.params['dimension_numbers']} other than features @ matrix")
    weight = weight if tuple(contract_w) == (0,) else weight.T
    return result(graph.add("MatMul", [x.name, graph.constant(weight, "matrix")]), eqn)


@lowering("copy", "copy_p", "optimization_barrier")
def _identity(graph, eqn, ins):
    return [v for v in ins]


@lowering("gather")
def _gather(graph, eqn, ins):
    """Indexing one axis with constant indices (``x[..., ::-1]`` or ``x[:, 0]`` with a symbolic
    batch) as ONNX Gather; any other gather is refused."""
    x = _tensor_input(ins, "a gather")
    numbers, indices = eqn.params["dimension_numbers"], np.asarray(ins[1])
    axes = tuple(numbers.start_index_map)
    taken = len(axes) == 1 and tuple(numbers.collapsed_slice_dims) == axes and indices.ndim == 2
    axis = axes[0] if taken else -1
    if not (taken and indices.shape[1] == 1 and not numbers.operand_batching_dims
            and tuple(numbers.offset_dims) == tuple(i for i in range(x.rank) if i != axis)
            and all(s == (1 if i == axis else x.shape[i]) for i, s in enumerate(eqn.params["slice_sizes"]))):
        raise ConversionError(f"a gather other than constant indices along one axis ({numbers})")
    if is_static(x.shape[axis]) and np.array_equal(indices[:, 0], np.arange(x.shape[axis])):
        return dataclasses.replace(x)  # every index in order: the value itself
    taken_at = graph.constant(indices[:, 0].astype(np.int64), "indices")
    return result(graph.add("Gather", [x.name, taken_at], {"axis": _physical_axes(x.rank, [axis])[0]}), eqn)
