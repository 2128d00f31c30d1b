"""Build the paper's hybrid MobileNetV3-Small classifier and run it on a batch.

    python examples/classify.py                           # random init, a random X-ray-sized batch
    python examples/classify.py --weights imagenet        # Keras's ImageNet backbone (fetched once, cached)
    python examples/classify.py --weights mnv3s.weights.h5   # or a Keras weights file you have

The head is untrained here, so the probabilities mean nothing; what this shows
is the model, its input contract, weight loading and the speed of a jitted
forward pass. To train, run examples/train.py; to classify X-rays with a
trained run, examples/predict.py.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import fracjax


def count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilenet_v3_small", choices=fracjax.models.available())
    parser.add_argument("--head", default="hybrid", choices=["hybrid", "linear"])
    parser.add_argument("--weights", help="backbone weights: 'imagenet' or a Keras weights file (include_top=False)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.size < 32:
        parser.error("--batch must be >= 1 and --size >= 32")

    model = fracjax.models.create(args.model, head=args.head)
    contract = fracjax.models.input_contract(args.model)
    images = np.random.default_rng(0).uniform(0, 255, (args.batch, args.size, args.size, 1)).astype(np.float32)

    variables = jax.jit(lambda k: model.init(k, images[:1]))(jax.random.key(0))
    if args.weights:
        backbone = fracjax.models.load_keras_weights(args.model, args.weights, image_size=args.size)
        variables = fracjax.models.with_backbone_variables(variables, backbone)
        print(f"loaded backbone weights from {args.weights}")

    print(f"{args.model} + {args.head} head: {count(variables['params']['backbone']):,} backbone and "
          f"{count(variables['params']['head']):,} head parameters "
          f"(+{count(variables['batch_stats']):,} BatchNorm statistics)")
    print(f"input: grey or RGB pixels in {contract.pixel_range}, preprocessing '{contract.preprocessing}' "
          f"inside the model, default size {contract.default_size}")

    predict = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x, train=False)[:, 0]))
    start = time.perf_counter()
    probs = np.asarray(predict(variables, images))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    probs = np.asarray(predict(variables, images))
    run_s = time.perf_counter() - start
    print(f"fracture probabilities ({'untrained head' if args.weights else 'untrained model'}): "
          + " ".join(f"{p:.4f}" for p in probs))
    print(f"first call (compile + run) {compile_s:.1f} s; then {run_s * 1e3:.0f} ms for {args.batch} images "
          f"({args.batch / run_s:.0f} images/s on {jax.default_backend()})")


if __name__ == "__main__":
    main()
