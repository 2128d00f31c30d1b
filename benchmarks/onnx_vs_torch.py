"""fracjax's ONNX against PyTorch's, side by side in one onnxruntime process.

    pip install -e ".[bench,onnx]"
    python benchmarks/onnx_vs_torch.py                       # hybrid MobileNetV3-Small, 224 px
    python benchmarks/onnx_vs_torch.py --models resnet50 vgg16 densenet121 --pairs 15

Both graphs hold the same architecture with the paper's hybrid head and random weights:
fracjax's is ``fracjax.export(..., format="onnx")`` (its parity check included; it takes grey
pixels and returns the probability and the logit), PyTorch's is torchvision's model exported by
``torch.onnx.export`` (TorchScript exporter, opset 18, dynamic batch; it takes RGB). Both run in
one onnxruntime process with the same session options (every graph optimisation, default
threads), and their calls alternate (A B A B ...), so a slow spell of a shared machine falls on
both alike. Reported per batch size: each side's median time and the median of the per-pair
ratios (PyTorch's time / fracjax's: above 1, fracjax is faster). The same row is in
``benchmarks/compare.py`` (peers ``export-onnx`` and ``torch-onnx``, each in its own process).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402 -- the peers' models, built once for every benchmark


def fracjax_session(model_name: str, size: int):
    import jax
    import jax.numpy as jnp

    import fracjax
    from fracjax.inference import Classifier

    model = fracjax.models.create(model_name, head="hybrid")
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, size, size, 1)), train=False))(jax.random.key(0))
    spec = {"model": model_name, "head": "hybrid", "image_size": size, "threshold": 0.5}
    classifier = Classifier(spec, {"params": variables["params"], "batch_stats": variables["batch_stats"]}, 32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = fracjax.export(classifier, os.path.join(tmp, "e"), format="onnx")
        with open(os.path.join(folder, "model.onnx"), "rb") as f:
            return compare.onnx_session(f.read())


def torch_session(model_name: str, size: int):
    import torch

    model = compare.torch_hybrid(model_name).eval()
    buffer = io.BytesIO()
    example = torch.zeros((1, 3, size, size))
    torch.onnx.export(model, (example,), buffer, input_names=["pixels"], output_names=["logit"], opset_version=18,
                      dynamic_axes={"pixels": {0: "batch"}, "logit": {0: "batch"}}, dynamo=False)
    return compare.onnx_session(buffer.getvalue())


def alternate(ours, theirs, grey: np.ndarray, rgb: np.ndarray, pairs: int):
    """(our times, their times, per-pair ratios theirs / ours), calls alternating."""
    mine, other = [], []
    for session, x in ((ours, grey), (theirs, rgb)):
        for _ in range(2):
            session.run(None, {"pixels": x})  # warm-up: onnxruntime plans each shape on its first call
    for _ in range(pairs):
        for session, x, times in ((ours, grey, mine), (theirs, rgb, other)):
            start = time.perf_counter()
            session.run(None, {"pixels": x})
            times.append(time.perf_counter() - start)
    return mine, other, [b / a for a, b in zip(mine, other, strict=True)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["mobilenet_v3_small"], choices=sorted(compare.TORCHVISION))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=60, help="alternating timed pairs at the batch size (x4 at 1)")
    args = parser.parse_args(argv)
    import onnxruntime

    print(f"{os.cpu_count()} CPU(s); onnxruntime {onnxruntime.__version__}; {args.size}x{args.size}; "
          f"median of alternating pairs; ratio = PyTorch's time / fracjax's (>1: fracjax faster)")
    images, _ = compare.random_batch(args.batch, args.size)
    grey = images.astype(np.float32)
    rgb = np.ascontiguousarray(np.repeat(grey, 3, -1).transpose(0, 3, 1, 2) / 255.0)
    for model_name in args.models:
        ours, theirs = fracjax_session(model_name, args.size), torch_session(model_name, args.size)
        for batch, pairs in ((args.batch, args.pairs), (1, 4 * args.pairs)):
            mine, other, ratios = alternate(ours, theirs, grey[:batch], rgb[:batch], pairs)
            a, b = statistics.median(mine), statistics.median(other)
            print(f"{model_name:<20} batch {batch:>3}: fracjax {batch / a:8.1f} img/s {a * 1e3:8.2f} ms | "
                  f"PyTorch {batch / b:8.1f} img/s {b * 1e3:8.2f} ms | ratio {statistics.median(ratios):.2f}x "
                  f"(pairs {len(ratios)}, quartiles {np.percentile(ratios, 25):.2f}-{np.percentile(ratios, 75):.2f})",
                  flush=True)


if __name__ == "__main__":
    main()
