"""A trained run's metrics on a data set split, with bootstrap intervals
(and the clean subset's beside them, given the leakage audit).

    fracjax evaluate runs/mobilenet_v3_small_hybrid                 # the run's own data set, test split
    fracjax evaluate RUN --dataset fracture_xray --manual-dir M --audit audit.json
    fracjax evaluate RUN --split validation --operating-point sensitivity_0.95 --json metrics.json
    fracjax evaluate RUN --dataset mura --manual-dir M --study-aggregate max   # study-level rows, per body part
    fracjax evaluate RUN --data-csv site_b/labels.csv                          # your own X-rays

The numbers are those of fracjax.evaluate, the report and Classifier.predict
(one implementation). Checked before any work: the run, the audit file, the
output file's folder, the threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Optional

from fracjax.argparsing import CommandParser
from fracjax.train.checks import MAX_BOOTSTRAP


def parser(prog: str) -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--dataset", help="TFDS name (default: the run's, from its config.json)")
    p.add_argument("--data-dir", help="TFDS data_dir (default: the run's)")
    p.add_argument("--manual-dir", help="the downloaded files, where the set is not prepared yet "
                                        "(fracture_xray, fracatlas, mura)")
    own = p.add_mutually_exclusive_group()
    own.add_argument("--data-folder", help="your own X-rays: a folder of class subfolders (instead of --dataset)")
    own.add_argument("--data-csv", help="your own X-rays: a CSV of path,label[,patient][,study][,split]")
    p.add_argument("--split", default="test",
                   help="train, validation, test (default), several joined with '+', or all (every image)")
    p.add_argument("--audit", help="the leakage audit's JSON (fracjax audit --json): a clean-subset column")
    point = p.add_mutually_exclusive_group()
    point.add_argument("--operating-point", help="a threshold chosen on validation: youden, sensitivity_0.95...")
    point.add_argument("--threshold", type=float, help="a decision threshold in (0, 1]")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples for the intervals (0: none)")
    p.add_argument("--uncalibrated", action="store_true", help="without the temperature fitted on validation")
    p.add_argument("--cluster-by", default="auto", choices=("auto", "patient", "study", "none"),
                   help="what the bootstrap resamples: auto (patients, else studies, where the data set knows "
                        "them), or images (none)")
    p.add_argument("--study-aggregate", default="mean", choices=("mean", "max"),
                   help="a study's probability from its images' (data sets with studies: MURA)")
    p.add_argument("--no-localise", action="store_true",
                   help="skip the pointing game (Grad-CAM against fracture boxes, where the data set has them)")
    p.add_argument("--json", help="write the metrics (and each example's prediction) to this file")
    return p


def run_data(run: str) -> Dict[str, Optional[str]]:
    """The data set and data_dir a run was trained on, from its config.json (if any);
    ``run`` is a run folder or any checkpoint folder inside one."""
    from fracjax.checkpoint import find_model_checkpoint
    from fracjax.deploy.card import run_folder_of, trained_on

    folder, step = find_model_checkpoint(run, "best")  # FileNotFoundError naming the folder
    return trained_on(run_folder_of(os.path.join(folder, str(step))))


def run_data_options(args) -> None:
    """Fill in the data options a command was not given from the run's own config.json."""
    data = run_data(args.run)
    if not (args.dataset or args.data_folder or args.data_csv) and data["data_folder"]:
        own = data["data_folder"]
        args.data_folder, args.data_csv = (own, None) if os.path.isdir(own) else (None, own)
    args.dataset = args.dataset or (None if args.data_folder or args.data_csv else data["dataset"])
    args.data_dir = args.data_dir or data["data_dir"]
    args.stored_size = data["image_size"] or 224  # the run's own folder is prepared at the size it trained on


def _check(args) -> None:
    """Every refusal before any data preparation or compilation."""
    if args.audit and not os.path.isfile(args.audit):
        raise FileNotFoundError(f"--audit: no such file {args.audit}")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    if not 0 <= args.bootstrap <= MAX_BOOTSTRAP:
        raise ValueError(f"--bootstrap must be in [0, {MAX_BOOTSTRAP:,}], got {args.bootstrap}")
    check_data(args)


def check_data(args) -> None:
    """The data and output options' refusals (shared with calibrate-ood)."""
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise PermissionError(f"--json: cannot write in {folder}")
    own = args.data_folder or args.data_csv
    if own and not os.path.exists(own):
        raise FileNotFoundError(f"--data-{'folder' if args.data_folder else 'csv'}: no such file or folder {own}")
    if own:  # a folder or CSV is always split three ways: the name is checked before it is prepared
        from fracjax.data.pipeline import split_names
        from fracjax.data.prepare import SPLITS

        split_names(args.split, SPLITS)
    if not args.dataset and not own:
        raise ValueError(f"--dataset: {args.run} has no config.json naming its data set; pass --dataset")


def main(argv=None, prog: str = "fracjax evaluate") -> int:
    from fracjax.metrics import jsonable

    args = parser(prog).parse_args(argv)
    try:
        run_data_options(args)
        _check(args)
        result = _evaluate(args)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    print(f"{args.run} on {args.dataset or args.data_folder or args.data_csv} {args.split}:\n{result.table()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(jsonable(result.to_json(with_predictions=True)), f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _evaluate(args):
    import fracjax
    from fracjax.data.prepare import prepare_dataset

    classifier = fracjax.Classifier.from_checkpoint(args.run)
    threshold = classifier.threshold_for(args.operating_point) if args.operating_point else args.threshold
    options = dict(audit=args.audit, threshold=threshold, calibrated=not args.uncalibrated, bootstrap=args.bootstrap,
                   cluster_by=args.cluster_by, study_aggregate=args.study_aggregate, localise=not args.no_localise)
    if args.data_folder or args.data_csv:
        return fracjax.evaluate(classifier, data_splits(args), args.split, **options)
    prepare_dataset(args.dataset, args.data_dir, args.manual_dir)
    return fracjax.evaluate(classifier, args.dataset, args.split, data_dir=args.data_dir, **options)


def data_splits(args) -> Dict[str, object]:
    """split -> source of the data the options name (a folder or CSV, or a TFDS set), prepared if need be."""
    own = args.data_folder or args.data_csv
    if own:
        from fracjax.data.prepare import from_folder

        return dict(from_folder(own, image_size=args.stored_size, data_dir=args.data_dir).as_data_source())
    from fracjax.data.prepare import available_splits, load_source, prepare_dataset

    prepare_dataset(args.dataset, args.data_dir, args.manual_dir)
    return {s: load_source(args.dataset, s, args.data_dir) for s in available_splits(args.dataset, args.data_dir)}

