"""Fracture probabilities for X-ray files, from a trained run's best checkpoint.

    python examples/predict.py runs/mobilenet_v3_small_hybrid xray1.png xray2.jpg study.dcm
"""

import argparse
import sys

import fracjax
from fracjax.checkpoint import CheckpointCorruptError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="run folder or checkpoint folder")
    parser.add_argument("files", nargs="+", help="images: PNG, JPEG, BMP, TIFF, DICOM")
    parser.add_argument("--which", default="best", choices=["best", "latest"])
    args = parser.parse_args(argv)
    try:
        clf = fracjax.Classifier.from_checkpoint(args.checkpoint, which=args.which)
    except (FileNotFoundError, CheckpointCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = clf.predict(args.files, errors="skip")  # a bad file is reported, the rest still run
    width = max(len(f) for f in args.files)
    print(f"{'file':<{width}}  p(fractured)  label (threshold {clf.threshold:g})")
    for k, (path, p) in enumerate(zip(args.files, result.probabilities)):
        if k in result.failed:
            print(f"{path:<{width}}  {'-':>12}  unreadable: {result.failed[k]}")
            continue
        print(f"{path:<{width}}  {p:12.4f}  {'fractured' if p >= clf.threshold else 'not fractured'}")
    return 1 if result.failed else 0

if __name__ == "__main__":
    sys.exit(main())
