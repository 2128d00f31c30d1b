"""The paper's comparison in one command: the hybrid MobileNetV3-Small against
ResNet50, VGG-16 and DenseNet121, same data, head and budget.

    fracjax compare                        # synthetic set, 96 px, 5 min per model, into runs/comparison/
    fracjax compare --models mobilenet_v3_small resnet50 --budget-minutes 0 --phase2-epochs 3
    fracjax compare --dataset fracture_xray --manual-dir ~/fracture --image-size 224 \
        --audit audit.json --pretrained mobilenet_v3_small=imagenet --pretrained resnet50=r50_notop.h5

Writes comparison.md, comparison.json, roc.png and report.html into --out, and
each model's run (checkpoints, report.html) into --out/<model>/. Run it again
after a kill: finished models are reused and a half-trained one resumes.

The defaults give every model the same 5 minutes of training and fit 2 CPU
cores in about 30 minutes: what a model reaches in that time is the
comparison (a model 20x cheaper per image takes 20x more steps). Trained from
scratch, the large baselines stay near chance there. For the paper's setting
give --pretrained weights per model (or imagenet) and a larger budget.
"""

import argparse
import sys

from fracjax.argparsing import CommandParser
from fracjax.comparison import ComparisonConfig, run_comparison
from fracjax.train.cli import add_options, options_from_args


def main(argv=None, prog: str = "fracjax compare") -> int:
    p = CommandParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, ComparisonConfig)  # every flag from the config's declarations (fracjax.comparison)
    config = ComparisonConfig(**options_from_args(p.parse_args(argv), ComparisonConfig))
    try:
        config.validate()
        for model in config.models:  # every model's flags are checked before any training
            config.train_config(model).validate()
    except ValueError as err:
        p.error(str(err))
    from fracjax.models.weights import KerasWeightsError
    from fracjax.train import ResumeError

    try:
        result = run_comparison(config)
    except (KerasWeightsError, ResumeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with open(result["paths"]["comparison.md"]) as f:
        print(f.read())
    return 0

