"""A Keras-style summary of a model: one row per block (each child of the backbone and the
head), its output shape, its parameters and its FLOPs, then the totals.

    >>> fracjax.models.summary("mobilenet_v3_small", image_size=224)

FLOPs are those of the convolutions and dense layers (2 per multiply-add, as the input really
arrives: a grey X-ray meets the RGB stem's kernel summed over its channels), which is what
architectures are compared by; BatchNorm and activations add a few percent that XLA's own count
includes (``compare.py`` prints that one). Shapes come from tracing, so nothing is computed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple, Union

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.traverse_util import flatten_dict


def _calls(model: nn.Module, image_size: int):
    """(variables' shapes, {module path: (input shape, output shape)}) for one grey image."""
    seen: Dict[Tuple[str, ...], Tuple] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and args and hasattr(args[0], "shape") and hasattr(out, "shape"):
            seen.setdefault(tuple(module.scope.path), (tuple(args[0].shape), tuple(out.shape)))
        return out

    def init():
        with nn.intercept_methods(record):
            return model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 1)), train=False)

    return jax.eval_shape(init), seen


def _flops(kernel_shape: Tuple[int, ...], calls: Tuple) -> int:
    """Multiply-adds x 2 of a layer with this kernel, given its (input, output) shapes."""
    (in_shape, out_shape) = calls
    if len(kernel_shape) == 2:  # dense
        return 2 * kernel_shape[0] * kernel_shape[1]
    kh, kw, per_group, features = kernel_shape
    channels_in = in_shape[-1] if per_group != 1 else 1  # depthwise: one input channel per output
    return 2 * math.prod(out_shape[1:3]) * kh * kw * min(channels_in, per_group) * features


def _block_of(path: Tuple[str, ...]) -> Tuple[str, ...]:
    return path[:2]


def summarize(model: nn.Module, image_size: int = 224) -> Dict[str, Any]:
    """The summary as data: ``rows`` (block, output shape, trainable and BatchNorm-statistic
    parameters, FLOPs) and the totals."""
    shapes, calls = _calls(model, image_size)
    rows: Dict[Tuple[str, ...], Dict[str, Any]] = {}
    for path, call in calls.items():
        if len(path) == 2:
            rows[path] = {"block": "/".join(path), "output": call[1][1:], "params": 0, "statistics": 0, "flops": 0}
    for collection, key in (("params", "params"), ("batch_stats", "statistics")):
        for path, leaf in flatten_dict(dict(shapes.get(collection, {}))).items():
            row = rows.get(_block_of(path))
            if row is not None:
                row[key] += math.prod(leaf.shape)
            if collection == "params" and path[-1] == "kernel" and path[:-1] in calls and row is not None:
                row["flops"] += _flops(tuple(leaf.shape), calls[path[:-1]])
    listed = list(rows.values())
    totals = {key: sum(r[key] for r in listed) for key in ("params", "statistics", "flops")}
    every = {k: sum(math.prod(v.shape) for v in flatten_dict(dict(shapes.get(c, {}))).values())
             for k, c in (("params", "params"), ("statistics", "batch_stats"))}
    if every != {k: totals[k] for k in every}:
        raise AssertionError(f"the summary's rows miss parameters: {totals} against {every}")
    return {"rows": listed, "totals": totals, "image_size": image_size}


def summary(model: Union[str, nn.Module], image_size: int = 224, head: str = "hybrid",
            print_fn: Callable[[str], Any] = print) -> Dict[str, Any]:
    """Print the table of :func:`summarize` (``model``: a name for :func:`fracjax.models.create`
    with ``head``, or a built model) and return it."""
    if isinstance(model, str):
        from fracjax.models.registry import create

        name, model = model, create(model, head=head)
    else:
        name = type(model).__name__
    table = summarize(model, image_size)
    lines = [f"{name}, {image_size}x{image_size} grey input", f"{'block':<28} {'output':>18} {'params':>12} "
             f"{'BN stats':>10} {'MFLOPs':>10}", "-" * 82]
    for r in table["rows"]:
        lines.append(f"{r['block']:<28} {str(r['output']):>18} {r['params']:>12,} {r['statistics']:>10,} "
                     f"{r['flops'] / 1e6:>10.1f}")
    t = table["totals"]
    lines += ["-" * 82, f"{'total':<28} {'':>18} {t['params']:>12,} {t['statistics']:>10,} {t['flops'] / 1e6:>10.1f}",
              f"parameters {t['params']:,} trainable + {t['statistics']:,} BatchNorm statistics; "
              f"{t['flops'] / 1e9:.3f} GFLOPs per image (convolutions and dense layers)"]
    print_fn("\n".join(lines))
    return table
