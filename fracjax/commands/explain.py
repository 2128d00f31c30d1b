"""Grad-CAM overlays for X-ray files, from a trained run's best checkpoint.

    fracjax explain runs/mobilenet_v3_small_hybrid xray1.png study.dcm
    fracjax explain RUN FILES... --method gradcam++ --layer backbone/block8 --out explained/

Writes one PNG per file (the X-ray beside its overlay) into --out and prints
the calibrated fracture probability of each. An unreadable file is reported
and skipped; the others are still explained.
"""

import argparse
import os
import sys

import numpy as np

import fracjax
from fracjax.argparsing import CommandParser
from fracjax.checkpoint import CheckpointCorruptError
from fracjax.data.io import ImageDecodeError, image_files, read_image
from fracjax.evaluation import gradcam


def save_pair(path: str, image: np.ndarray, cam: np.ndarray, caption: str) -> None:
    """The X-ray beside its overlay, with ``caption`` written below them."""
    from PIL import Image, ImageDraw

    grey = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., :1], 3, axis=-1)
    side = np.concatenate([grey, np.full((grey.shape[0], 4, 3), 255, np.uint8), gradcam.overlay(image, cam)], axis=1)
    picture = Image.fromarray(side)
    picture = (
        picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST) if picture.height < 200 else picture
    )
    framed = Image.new("RGB", (picture.width, picture.height + 18), "white")
    framed.paste(picture, (0, 0))
    ImageDraw.Draw(framed).text((4, picture.height + 3), caption, fill="black")
    framed.save(path)


def output_names(paths, method: str):
    """One overlay name per input, never two alike: the stem (a_gradcam.png);
    inputs that share a stem keep their extension (a_png_gradcam.png,
    a_jpg_gradcam.png); any still alike (one name in two folders) get an
    index (a_png_gradcam_2.png)."""
    suffix = method.replace("++", "pp")
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    wanted = [f"{stem}_{suffix}" if stems.count(stem) == 1 else f"{os.path.basename(p).replace('.', '_')}_{suffix}"
              for stem, p in zip(stems, paths, strict=True)]
    names, taken = [], set()
    for name in wanted:
        unique, k = name, 1
        while unique in taken:
            k += 1
            unique = f"{name}_{k}"
        taken.add(unique)
        names.append(unique + ".png")
    return names


def main(argv=None, prog: str = "fracjax explain") -> int:
    parser = CommandParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="run folder or checkpoint folder")
    parser.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER",
                        help="images (PNG, JPEG, BMP, TIFF, DICOM), or folders searched for them recursively")
    parser.add_argument("--out", default="explained", help="folder for the overlays")
    parser.add_argument("--method", default="gradcam", choices=gradcam.METHODS)
    parser.add_argument("--layer", default=gradcam.DEFAULT_LAYER,
                        help="module path of the explained activation, e.g. backbone, backbone/block8, head/conv1")
    parser.add_argument("--target", default="fractured", choices=["fractured", "not_fractured"],
                        help="which class's evidence to show")
    args = parser.parse_args(argv)
    try:
        args.files = image_files(args.files)  # before the model loads: an empty folder is said now
    except ValueError as err:
        parser.error(str(err))
    try:
        os.makedirs(args.out, exist_ok=True)  # before any work: a bad --out fails now, not after Grad-CAM
        if not os.access(args.out, os.W_OK):
            raise PermissionError(f"--out: cannot write in {args.out}")
        clf = fracjax.Classifier.from_checkpoint(args.checkpoint)
    except (OSError, CheckpointCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    readable, failed = [], 0
    for path in args.files:
        try:
            readable.append((path, read_image(path)))
        except (ImageDecodeError, FileNotFoundError) as err:
            print(f"{path}: unreadable, skipped ({err})")
            failed += 1
    if not readable:
        return 1
    try:
        out = gradcam.explain_classifier(clf, [image for _, image in readable], layer=args.layer,
                                         method=args.method, target=int(args.target == "fractured"))
    except gradcam.LayerNotFoundError as err:
        print(f"error: --layer: {err}", file=sys.stderr)
        return 2
    width = max(len(p) for p, _ in readable)
    print(f"{'file':<{width}}  p(fractured)  overlay")
    names = output_names([path for path, _ in readable], args.method)
    for k, (path, _) in enumerate(readable):
        target = os.path.join(args.out, names[k])
        p = float(out["probabilities"][k])
        save_pair(target, out["images"][k], out["maps"][k], f"p(fractured) = {p:.3f}  ({args.method}, {args.target})")
        print(f"{path:<{width}}  {p:12.4f}  {target}")
    return 1 if failed else 0
