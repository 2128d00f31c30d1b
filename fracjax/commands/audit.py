"""``fracjax audit``: exact and near-duplicate X-rays within and across the
splits of a prepared data set (:mod:`fracjax.data.audit`), printed and
optionally written as JSON (``--clean-test`` adds the test examples with no
near-copy in train or validation, which ``fracjax evaluate --audit`` reads).

    fracjax audit --dataset fracture_xray --data-dir D --json audit.json --clean-test
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fracjax.argparsing import CommandParser
from fracjax.data.audit import AuditConfig, audit
from fracjax.data.prepare import load_source
from fracjax.data.splits import SPLITS


def _check_writable(parser: argparse.ArgumentParser, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error(f"--json: no such folder: {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        parser.error(f"--json: cannot write {path}")


MAX_CANDIDATES = 1000  # each is a pair to verify per image: more is hours, not thoroughness
MAX_WORKERS = 256


def main(argv=None, prog: str = "fracjax audit") -> int:
    parser = CommandParser(
        prog=prog,
        description="Find exact and near-duplicate X-rays within and across the splits of a prepared data set.",
    )
    parser.add_argument("--dataset", default="fracture_xray", help="TFDS name, e.g. fracture_xray or fracture_xray/384")
    parser.add_argument("--data-dir", default=None, help="TFDS data_dir the set was prepared in")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), help="the splits compared (default: all)")
    parser.add_argument("--json", dest="json_path", help="write the pairs (and clean test list) here")
    parser.add_argument(
        "--clean-test", action="store_true", help="also list test examples with no near-copy in train/validation"
    )
    parser.add_argument("--threshold", type=float, default=AuditConfig.threshold,
                        help="a pair is a near-copy at this verified similarity or above, in (0, 1] "
                             f"(1.0: exact; default {AuditConfig.threshold})")
    parser.add_argument("--candidates", type=int, default=AuditConfig.candidates,
                        help="most similar thumbnails kept per image before verification "
                             f"(more: slower, misses fewer; default {AuditConfig.candidates})")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes verifying candidate pairs (0: one per CPU core, at most 8)")
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    if not 1 <= args.candidates <= MAX_CANDIDATES:
        parser.error(f"--candidates must be in [1, {MAX_CANDIDATES}], got {args.candidates}")
    if not 0 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be in [0, {MAX_WORKERS}] (0: one per CPU core), got {args.workers}")

    if args.json_path:
        _check_writable(parser, args.json_path)  # before the audit's work, not after it
    try:
        sources = {split: load_source(args.dataset, split, args.data_dir) for split in args.splits}
        config = AuditConfig(threshold=args.threshold, candidates=args.candidates, workers=args.workers)
        report = audit(sources, config, clean_test=args.clean_test)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.summary())
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report.to_json(), f, indent=1)
        print(f"wrote {args.json_path}")
    return 0
