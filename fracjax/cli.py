"""The ``fracjax`` command: ``fracjax <subcommand> [options]``.

Each subcommand is a module with ``main(argv, prog)``; ``examples/*.py`` are
thin wrappers around the same functions.
"""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

SUBCOMMANDS = {
    "train": ("fracjax.train.cli", "train a classifier (two-phase transfer learning) and report on test"),
    "evaluate": ("fracjax.commands.evaluate", "a trained run's metrics with intervals on a data set split"),
    "compare": ("fracjax.commands.compare", "the paper's comparison: the hybrid against the baselines, same budget"),
    "predict": ("fracjax.commands.predict", "fracture probabilities of X-ray files from a trained run"),
    "explain": ("fracjax.commands.explain", "Grad-CAM overlays of X-ray files from a trained run"),
    "calibrate-ood": ("fracjax.commands.calibrate_ood", "fit a run's out-of-distribution detector and measure it"),
    "audit": ("fracjax.commands.audit", "near-duplicate X-rays within and across a data set's splits"),
    "export": ("fracjax.commands.export", "a trained run as a StableHLO or ONNX artifact with its model card"),
    "serve": ("fracjax.commands.serve", "a page and a JSON API for X-rays, from an export or a run"),
    "samples": ("fracjax.commands.samples", "sample X-rays to try it on (PNG 8/16-bit, JPEG, DICOM; labelled)"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: fracjax <subcommand> [options]   (fracjax <subcommand> --help for its options)", "",
             "subcommands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"fracjax: unknown subcommand {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    if name in ("train", "compare"):
        from fracjax.hostmem import reexec_with_malloc_hugepages

        reexec_with_malloc_hugepages()  # XLA:CPU's per-step scratch memory on huge pages (fracjax/hostmem.py)
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return _run(module.main, rest, f"fracjax {name}")


def _run(command, argv: List[str], prog: str) -> int:
    try:
        return int(command(argv, prog=prog) or 0)
    except SystemExit as done:  # argparse's exits keep their status
        return done.code if isinstance(done.code, int) else 2


if __name__ == "__main__":
    sys.exit(main())
