"""Command line of ``examples/train.py`` (and ``python -m fracjax.train``)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

import fracjax
from fracjax.models.pretrained import WeightsUnavailableError
from fracjax.models.weights import KerasWeightsError
from fracjax.train.config import DTYPES, PARALLEL_MODES, SCHEDULES, TrainConfig
from fracjax.train.loop import NonFiniteLossError, ResumeError, fit

DEFAULTS = TrainConfig()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _unfreeze(text: str):
    if text == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of top backbone groups, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="examples/train.py",
        description=(
            "Train a fracture classifier in two phases: phase 1 trains the head with the backbone frozen, "
            "phase 2 fine-tunes the backbone. With no arguments: the paper's hybrid MobileNetV3-Small on the "
            "embedded synthetic data set (prepared on first use), into runs/<name>/."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULTS.model, choices=fracjax.models.available(), help="backbone architecture")
    g.add_argument("--head", default=DEFAULTS.head, choices=["hybrid", "linear"],
                   help="hybrid: the paper's conv blocks + GAP + dropout + dense; linear: GAP + dropout + dense")
    g.add_argument("--pretrained", metavar="imagenet|PATH",
                   help="Keras ImageNet weights of the backbone: 'imagenet' (the file keras.applications uses, "
                   "fetched once, hash-checked, cached in $FRACJAX_CACHE or ~/.cache/fracjax) or a weights file "
                   "(include_top=False, .weights.h5 or legacy .h5); checked against --model before training")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=DEFAULTS.dataset,
                   help="TFDS name: synthetic_fracture (embedded), fracture_xray (the Kaggle set, needs --manual-dir), "
                   "with an optional /config, e.g. fracture_xray/384")
    g.add_argument("--manual-dir", metavar="DIR", help="folder holding the unzipped Kaggle download (fracture_xray)")
    g.add_argument("--data-dir", metavar="DIR", help="TFDS data_dir (default: TFDS's, ~/tensorflow_datasets)")
    g.add_argument("--image-size", type=_positive_int, help="train at this size (default: the data set's stored size)")
    g.add_argument("--train-examples", type=_positive_int, metavar="N", help="use the first N training examples")
    g.add_argument("--no-in-memory", dest="in_memory", action="store_false",
                   help="stream from disk instead of holding the decoded splits in memory")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=_positive_int, default=DEFAULTS.batch_size, help="global batch size")
    g.add_argument("--phase1-epochs", type=_non_negative_int, default=DEFAULTS.phase1_epochs, help="epochs with the backbone frozen")
    g.add_argument("--phase2-epochs", type=_non_negative_int, default=DEFAULTS.phase2_epochs, help="fine-tuning epochs")
    g.add_argument("--lr", type=_positive_float, default=DEFAULTS.lr, help="phase 1 peak learning rate (AdamW)")
    g.add_argument("--phase2-lr", type=_positive_float, default=DEFAULTS.phase2_lr,
                   help="phase 2 peak learning rate (with ImageNet weights, try 1e-5 as the Keras guide does)")
    g.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay, help="AdamW decoupled weight decay (kernels only)")
    g.add_argument("--schedule", default=DEFAULTS.schedule, choices=SCHEDULES,
                   help="cosine: warm-up then cosine decay per phase; plateau: halve on a validation-loss plateau")
    g.add_argument("--unfreeze", type=_unfreeze, default=DEFAULTS.unfreeze,
                   help="phase 2: 'all' or the number of top backbone groups to fine-tune")
    g.add_argument("--backbone-bn", default="auto", choices=["auto", "train", "inference"],
                   help="phase 2 backbone BatchNorm: train (batch statistics), inference (running statistics, the "
                   "Keras guidance for a pretrained backbone), auto (inference with --pretrained, else train)")
    g.add_argument("--backbone-bn-momentum", type=float, metavar="M",
                   help="momentum of the backbone's BatchNorm running statistics (default: the Keras value with "
                   "--pretrained, 0.9 from scratch)")
    g.add_argument("--grad-clip", type=_positive_float, default=DEFAULTS.grad_clip, help="global-norm gradient clipping")
    g.add_argument("--label-smoothing", type=float, default=DEFAULTS.label_smoothing)
    g.add_argument("--class-weights", type=float, nargs=2, metavar=("NOT_FRACTURED", "FRACTURED"), help="loss weights per class")
    g.add_argument("--no-augment", dest="augment", action="store_false", help="no flip/rotation/zoom/contrast augmentation")
    g.add_argument("--early-stopping-patience", type=_positive_int, default=DEFAULTS.early_stopping_patience,
                   help="stop a phase after this many epochs without a better validation AUROC")
    g.add_argument("--train-minutes", type=_positive_float, metavar="MIN",
                   help="training-time budget: stop at the epoch end after which one more epoch would pass it "
                   "(compiling not counted, each epoch's validation counted); the epoch counts become upper bounds")
    g.add_argument("--threshold", type=float, default=DEFAULTS.threshold, help="decision threshold on the fracture probability")
    g = p.add_argument_group("evaluation")
    g.add_argument("--audit", metavar="JSON", help="leakage audit of the data set (python -m fracjax.data.audit "
                   "--json A --clean-test): the report adds metrics on the clean test examples")
    g.add_argument("--bootstrap", type=_non_negative_int, default=DEFAULTS.bootstrap,
                   help="bootstrap resamples for the test metrics' 95%% intervals (0: none)")
    g.add_argument("--no-report", dest="report", action="store_false",
                   help="skip the end-of-run calibration and report.html (report.json is always written)")
    g = p.add_argument_group("running")
    g.add_argument("--parallel", default=DEFAULTS.parallel, choices=PARALLEL_MODES,
                   help="jit: one program over a device mesh (NamedSharding); pmap: the older per-device map")
    g.add_argument("--dtype", default=DEFAULTS.dtype, choices=DTYPES, help="compute dtype (parameters stay float32)")
    g.add_argument("--seed", type=int, default=DEFAULTS.seed)
    g.add_argument("--out", default=DEFAULTS.out, help="parent folder of run folders")
    g.add_argument("--name", help="run folder name (default: <model>_<head>)")
    g.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    g.add_argument("--checkpoint-every", type=_non_negative_int, default=0, metavar="STEPS",
                   help="also checkpoint every STEPS steps inside an epoch")
    g.add_argument("--max-steps", type=_positive_int, help="stop after this many steps in all (smoke runs)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def config_from_args(argv: Optional[List[str]] = None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values = vars(args)
    values["backbone_bn_train"] = {"auto": None, "train": True, "inference": False}[values.pop("backbone_bn")]
    if values.get("class_weights") is not None:
        values["class_weights"] = tuple(values["class_weights"])
    return TrainConfig(**values)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        config = config_from_args(argv)
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    try:
        fit(config)
    except (KerasWeightsError, WeightsUnavailableError, ResumeError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
