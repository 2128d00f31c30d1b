"""Fracture probabilities for X-ray files, from a trained run's checkpoint.

    fracjax predict runs/mobilenet_v3_small_hybrid xray1.png xray2.jpg study.dcm
    fracjax predict RUN FILES... --operating-point sensitivity_0.95 --csv predictions.csv

Decisions at the saved threshold, a validation operating point
(``--operating-point youden``...) or ``--threshold``. An unreadable file is
reported and skipped; the others are still predicted (exit status 1 then).
A file the input checks find outside what the model was trained on (a
photograph, a CT or MR slice, a blank frame) gets its probability but no
label, with the reason; ``--force-label`` labels it anyway.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from typing import List, Optional

import fracjax
from fracjax.argparsing import CommandParser
from fracjax.checkpoint import CheckpointCorruptError
from fracjax.data.io import image_files
from fracjax.inference import OUTSIDE, format_threshold, label_of

COLUMNS = ["file", "probability", "label", "in_distribution", "ood_score", "reason", "error"]


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", help="run folder or checkpoint folder")
    parser.add_argument("files", nargs="+", metavar="FILE_OR_FOLDER",
                        help="images (PNG, JPEG, BMP, TIFF, DICOM), or folders searched for them recursively")
    parser.add_argument("--which", default="best", choices=["best", "latest"],
                        help="the run's best checkpoint (by validation AUROC; default) or its latest step")
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument("--operating-point", metavar="NAME",
                          help="a threshold chosen on validation: youden, sensitivity_0.9, sensitivity_0.95")
    decision.add_argument("--threshold", type=float, help="decide at this fracture probability, in (0, 1)")
    parser.add_argument("--csv", metavar="FILE", help="also write the results as CSV")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--force-label", action="store_true",
                        help="label the files the input checks find outside what the model was trained on too")
    return parser


def _check_outputs(parser: argparse.ArgumentParser, args) -> None:
    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        parser.error(f"--threshold must be in (0, 1), got {args.threshold}")
    inputs = {os.path.realpath(f) for f in args.files}
    for flag, path in (("--csv", args.csv), ("--json", args.json)):
        if not path:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            parser.error(f"{flag}: cannot write in {folder}")
        if os.path.isdir(path):
            parser.error(f"{flag}: {path} is a folder; name the file to write")
        if os.path.realpath(path) in inputs:
            parser.error(f"{flag}: {path} is one of the images to classify; it would be overwritten")
    if args.csv and args.json and os.path.realpath(args.csv) == os.path.realpath(args.json):
        parser.error("--csv and --json name the same file")


def results(clf, files: List[str], threshold: float, force_label: bool = False) -> List[dict]:
    """One row per file (``COLUMNS``): its probability and label, whether it passed the input checks
    and why not, or why it was not read."""
    predicted = clf.predict(files, errors="skip")
    labels = clf.spec.get("labels") or None
    rows = []
    for k, (path, p) in enumerate(zip(files, predicted.probabilities, strict=True)):
        if k in predicted.failed:
            rows.append({"file": path, "probability": None, "label": None, "in_distribution": None,
                         "ood_score": None, "reason": None, "error": predicted.failed[k]})
            continue
        reason = predicted.flagged.get(k)
        label = None if reason and not force_label else label_of(p, threshold, *([labels] if labels else []))
        score = None if predicted.ood_scores is None else float(predicted.ood_scores[k])  # None: no detector
        rows.append({"file": path, "probability": float(p), "label": label, "in_distribution": reason is None,
                     "ood_score": score, "reason": reason, "error": None})
    return rows


def _write(rows: List[dict], csv_path: Optional[str], json_path: Optional[str], threshold: float,
           warnings: List[str]) -> None:
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"threshold": threshold, "warnings": warnings, "results": rows}, f, indent=1)


def main(argv=None, prog: str = "fracjax predict") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    _check_outputs(parser, args)
    try:
        args.files = image_files(args.files)  # before the model loads: an empty folder is said now
    except ValueError as err:
        parser.error(str(err))
    try:
        clf = fracjax.Classifier.from_checkpoint(args.checkpoint, which=args.which)
        threshold = args.threshold if args.threshold is not None else clf.threshold_for(args.operating_point)
    except (FileNotFoundError, CheckpointCorruptError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    rows = results(clf, args.files, threshold, args.force_label)
    if clf.warnings:  # the run's own warnings travel with its model
        more = f" (and {len(clf.warnings) - 1} more: see the run's report)" if len(clf.warnings) > 1 else ""
        print(f"WARNING from this model's evaluation: {clf.warnings[0]}{more}")
    width = max(len(f) for f in args.files)
    print(f"{'file':<{width}}  p(fractured)  label (threshold {format_threshold(threshold)})")
    for row in rows:
        if row["error"]:
            print(f"{row['file']:<{width}}  {'-':>12}  unreadable: {row['error']}")
        elif row["reason"]:
            said = f"{row['label']}, though " if row["label"] else ""
            print(f"{row['file']:<{width}}  {row['probability']:12.4f}  {said}{OUTSIDE}: {row['reason']}")
        else:
            print(f"{row['file']:<{width}}  {row['probability']:12.4f}  {row['label']}")
    _write(rows, args.csv, args.json, threshold, clf.warnings)
    return 1 if any(row["error"] for row in rows) else 0
