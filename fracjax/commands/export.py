"""Export a trained run's best checkpoint as an artifact with its model card.

    fracjax export runs/mobilenet_v3_small_hybrid --out exported/
    fracjax export RUN --format stablehlo --out DIR --force      # replace DIR

StableHLO: ``jax.export``, a symbolic batch, lowered for cpu, cuda and tpu,
loadable with jax alone (README, "Deployment"). ``model.json`` beside it is
the model card (metrics with intervals, operating points, intended use).
"""

from __future__ import annotations

import argparse
import sys

from fracjax.argparsing import CommandParser
from fracjax.checkpoint import CheckpointCorruptError
from fracjax.deploy import FORMATS, ExportError, export, read_card


def main(argv=None, prog: str = "fracjax export") -> int:
    parser = CommandParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="run folder or checkpoint folder")
    parser.add_argument("--out", required=True, help="folder to create for the artifact and model.json")
    parser.add_argument("--format", default="stablehlo", choices=FORMATS)
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    try:
        out = export(args.run, args.out, args.format, force=args.force)
    except (ExportError, FileNotFoundError, CheckpointCorruptError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    card = read_card(out)
    print(f"exported {card['model']['model']}/{card['model']['head']} ({card['parameters']:,} parameters) for "
          f"{', '.join(card['platforms'])} -> {out}/{card['artifact']} (sha256 {card['sha256'][:12]}...), "
          f"model card {out}/model.json")
    return 0
