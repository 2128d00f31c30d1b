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

import fracjax
from fracjax.comparison import PAPER_MODELS, ComparisonConfig, run_comparison

DEFAULTS = ComparisonConfig()


def _pretrained(text: str):
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    model, path = text.split("=", 1)
    return model, path


def main(argv=None, prog: str = "fracjax compare") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS), choices=fracjax.models.available(),
                   help="models to train and compare")
    p.add_argument("--out", default=DEFAULTS.out, help="comparison folder")
    p.add_argument("--dataset", default=DEFAULTS.dataset, help="TFDS name (synthetic_fracture, fracture_xray[/config])")
    p.add_argument("--data-dir", help="TFDS data_dir")
    p.add_argument("--manual-dir", help="the Kaggle download (fracture_xray)")
    p.add_argument("--head", default=DEFAULTS.head, choices=["hybrid", "linear"])
    p.add_argument("--image-size", type=int, default=DEFAULTS.image_size, help="train and test at this size")
    p.add_argument("--train-examples", type=int, default=DEFAULTS.train_examples,
                   help="use the first N training examples (0: all)")
    p.add_argument("--budget-minutes", type=float, default=DEFAULTS.budget_minutes,
                   help="the same training time for every model (0: no budget; train the epochs below)")
    p.add_argument("--phase1-epochs", type=int, default=DEFAULTS.phase1_epochs)
    p.add_argument("--phase2-epochs", type=int, default=DEFAULTS.phase2_epochs,
                   help="fine-tuning epochs (an upper bound under a budget)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--audit", help="leakage audit JSON (fracjax audit --clean-test): clean-test columns")
    p.add_argument("--bootstrap", type=int, default=DEFAULTS.bootstrap, help="bootstrap resamples for the intervals")
    p.add_argument("--pretrained", type=_pretrained, action="append", default=[], metavar="MODEL=PATH",
                   help="Keras ImageNet weights of one model's backbone: a file or 'imagenet' (repeat per model)")
    p.add_argument("--pretrained-phase2-lr", type=float, default=DEFAULTS.pretrained_phase2_lr,
                   help="phase 2 learning rate of pretrained models")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    args = p.parse_args(argv)
    config = ComparisonConfig(
        models=args.models, out=args.out, dataset=args.dataset, data_dir=args.data_dir, manual_dir=args.manual_dir,
        head=args.head, image_size=args.image_size, train_examples=args.train_examples or None,
        budget_minutes=args.budget_minutes or None,
        phase1_epochs=args.phase1_epochs, phase2_epochs=args.phase2_epochs, batch_size=args.batch_size,
        seed=args.seed, audit=args.audit, bootstrap=args.bootstrap, pretrained=dict(args.pretrained),
        pretrained_phase2_lr=args.pretrained_phase2_lr, progress=args.progress,
    )
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

