"""Precision and recall of the leakage audit on synthetic images with
planted transformed copies (symmetry, crop up to 10%, resize, brightness and
contrast).

    python benchmarks/audit_synthetic.py --images 1000 --copies 200
"""

import argparse
import time

from fracjax.data import audit, synthetic


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--copies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, _ = synthetic.generate_arrays(args.images, "train", seed=1000 + args.seed)
    start = time.perf_counter()
    result = audit.planted_precision_recall(images, args.copies, seed=args.seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(result)


if __name__ == "__main__":
    main()
