"""Fit (or refit) a checkpoint's out-of-distribution detector on its run's training split, choose
its threshold on validation, save it beside the checkpoint and measure it against the built-in
probe set of generated non-radiographs.

    fracjax calibrate-ood runs/mobilenet_v3_small_hybrid
    fracjax calibrate-ood RUN --data-csv site/labels.csv --json ood.json

Every run does this at its end; this command is for a checkpoint from before the detector existed,
or after the data changed. The data: the run's own (from its config.json), or as for ``fracjax
evaluate``. Checked before any work: the run, the data folder or CSV, the output file's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fracjax.argparsing import CommandParser


def parser(prog: str) -> argparse.ArgumentParser:
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder or checkpoint folder")
    p.add_argument("--dataset", help="TFDS name (default: the run's, from its config.json)")
    p.add_argument("--data-dir", help="TFDS data_dir (default: the run's)")
    p.add_argument("--manual-dir", help="the downloaded files, where the set is not prepared yet")
    own = p.add_mutually_exclusive_group()
    own.add_argument("--data-folder", help="your own X-rays: a folder of class subfolders (instead of --dataset)")
    own.add_argument("--data-csv", help="your own X-rays: a CSV of path,label[,patient][,study][,split]")
    p.add_argument("--seed", type=int, default=0, help="which training images are sampled (at most 4,000)")
    p.add_argument("--json", help="write the measurement to this file")
    return p


def main(argv=None, prog: str = "fracjax calibrate-ood") -> int:
    from fracjax.commands.evaluate import check_data, run_data_options

    args = parser(prog).parse_args(argv)
    args.split, args.audit, args.threshold, args.bootstrap = "train", None, None, 0
    try:
        run_data_options(args)
        check_data(args)
        measured = _calibrate(args)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    print(f"OOD detector of {args.run}: threshold {measured['threshold']:.3f} (accepts {measured['accept']:.0%} of "
          f"validation); AUROC against generated non-radiographs {measured['auroc_vs_probes']:.3f}; flags "
          f"{measured['test']['detector']:.1%} of test (n = {measured['test']['n']}) and "
          f"{measured['probes']['detector']:.1%} of the probes (n = {measured['probes']['n']})")
    for kind, row in measured["by_kind"].items():
        print(f"  {kind:<16} n = {row['n']:<3} flagged by the detector {row['detector']:.0%}, "
              f"with the input checks {row['flagged']:.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(measured, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def _calibrate(args):
    import fracjax
    from fracjax.checkpoint import write_run_warnings
    from fracjax.commands.evaluate import data_splits
    from fracjax.deploy.card import run_folder_of
    from fracjax.evaluation import detector
    from fracjax.evaluation.evaluator import _examples, fit_run_detector

    classifier = fracjax.Classifier.from_checkpoint(args.run)
    splits = data_splits(args)
    fit_run_detector(classifier, splits["train"], splits["validation"], args.seed)
    measured = detector.measure(classifier, list(_examples(splits["test"], "test", None).images), seed=args.seed)
    # The run's record follows: its warnings (saved with the checkpoint) and report.json's figures.
    write_run_warnings(classifier.checkpoint, detector.refreshed(classifier.warnings, measured))
    report = os.path.join(run_folder_of(classifier.checkpoint) or "", "report.json")
    if os.path.isfile(report):
        with open(report) as f:
            content = json.load(f)
        content["ood"] = measured
        content["warnings"] = detector.refreshed(content.get("warnings", []), measured)
        with open(report, "w") as f:
            json.dump(content, f, indent=1)
    return measured
