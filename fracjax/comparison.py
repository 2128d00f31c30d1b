"""The paper's comparison: the hybrid MobileNetV3-Small against DenseNet121,
VGG-16 and ResNet50, trained with the same data, head and budget, evaluated
on one test set, written as ``comparison.md``, ``comparison.json``,
``roc.png`` and ``report.html`` (``fracjax compare`` is the command).

Each model trains into its own run folder under the comparison folder. A
model whose run holds ``report.json`` is done and is not trained again; one
with checkpoints but no report resumes; so a killed comparison continues
where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

import fracjax
from fracjax.evaluation import figures, stats
from fracjax.evaluation import report as report_lib
from fracjax.inference import Classifier
from fracjax.train import fit, make_config
from fracjax.train.checks import MAX_BOOTSTRAP, at_least, between, positive, seed_range
from fracjax.train.config import HEADS, check_fields, option

PAPER_MODELS = ("mobilenet_v3_small", "resnet50", "vgg16", "densenet121")
BUDGET_ONLY = 10_000  # early-stopping patience (epochs) that leaves stopping to the budget


def _model_and_weights(text: str) -> Tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected MODEL=PATH, got {text!r}")
    model, path = text.split("=", 1)
    return model, path


def _count_or_all(text: str) -> Optional[int]:
    return int(text) or None  # 0: all


def _minutes_or_none(text: str) -> Optional[float]:
    return float(text) or None  # 0: no budget


@dataclasses.dataclass
class ComparisonConfig:
    """The comparison's options, declared once (their flags, help and checks
    are made from these declarations, as training's are)."""

    models: Sequence[str] = option(PAPER_MODELS, "models to train and compare", nargs="+",
                                   choices=tuple(fracjax.models.available()), metavar="MODEL")
    out: str = option(os.path.join("runs", "comparison"), "comparison folder", metavar="DIR")
    # Shared by every model: the same data, head and budget.
    dataset: str = option("synthetic_fracture", "TFDS name (synthetic_fracture, fracture_xray[/config])")
    data_dir: Optional[str] = option(None, "TFDS data_dir", metavar="DIR")
    manual_dir: Optional[str] = option(None, "the Kaggle download (fracture_xray)", metavar="DIR")
    head: str = option("hybrid", "the head on every backbone", choices=HEADS)
    image_size: Optional[int] = option(96, "train and test at this size", check=at_least(32))
    train_examples: Optional[int] = option(2000, "use the first N training examples (0: all)", check=at_least(1),
                                           parse=_count_or_all, metavar="N")
    # The same training-time budget for every model (minutes of steps;
    # compiling and evaluation not counted): each trains phase 1, then phase 2
    # until the budget is spent, with reduce-on-plateau (patience 3) instead of
    # a cosine schedule (whose length would depend on the model's speed) and
    # no early stopping (from scratch, learning starts after a few hundred
    # steps of flat validation AUROC). None: the epoch counts below, cosine.
    budget_minutes: Optional[float] = option(5.0, "the same training time for every model (0: no budget; train the "
                                             "epochs below)", check=positive, parse=_minutes_or_none)
    phase1_epochs: int = option(1, "epochs with the backbone frozen", check=at_least(0))
    phase2_epochs: int = option(40, "fine-tuning epochs (an upper bound under a budget)", check=at_least(0))
    batch_size: int = option(32, "global batch size", check=at_least(1))
    seed: int = option(0, "seed of every model's run", check=seed_range)
    audit: Optional[str] = option(None, "leakage audit JSON (fracjax audit --clean-test): clean-test columns",
                                  metavar="FILE")
    bootstrap: int = option(1000, "bootstrap resamples for the intervals", check=between(0, MAX_BOOTSTRAP))
    # Per model: {model: Keras weights file}; a pretrained model fine-tunes
    # with ``pretrained_phase2_lr`` (Keras guidance) instead of the default.
    pretrained: Dict[str, str] = option({}, "Keras ImageNet weights of one model's backbone: a file or 'imagenet' "
                                        "(repeat per model)", parse=_model_and_weights, append=dict,
                                        metavar="MODEL=PATH")
    pretrained_phase2_lr: float = option(1e-5, "phase 2 learning rate of pretrained models", check=positive)
    progress: bool = option(False, "progress bars while training")
    latency_repeats: int = option(20, "one-image latency: the median of this many runs", check=at_least(1),
                                  cli=False)

    def validate(self) -> "ComparisonConfig":
        """Each option's declared checks, then those across options; ValueError names the flag."""
        check_fields(self)
        if not self.models:
            raise ValueError("--models: name at least one model")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"--models: a model is named twice in {list(self.models)}")
        for name, path in self.pretrained.items():
            if name not in self.models:
                raise ValueError(f"--pretrained {name}={path}: {name} is not among --models")
            if path != "imagenet" and not os.path.isfile(path):
                raise ValueError(f"--pretrained {name}={path}: no such file (or 'imagenet')")
        return self

    def train_config(self, model: str):
        pretrained = self.pretrained.get(model)
        values = dict(
            model=model, head=self.head, dataset=self.dataset, data_dir=self.data_dir, manual_dir=self.manual_dir,
            image_size=self.image_size, train_examples=self.train_examples, phase1_epochs=self.phase1_epochs,
            phase2_epochs=self.phase2_epochs, batch_size=self.batch_size, seed=self.seed, audit=self.audit,
            bootstrap=self.bootstrap, pretrained=pretrained, out=self.out, name=model, progress=self.progress,
            train_minutes=self.budget_minutes,
        )
        if self.budget_minutes:
            values.update(schedule="plateau", plateau_patience=3, early_stopping_patience=BUDGET_ONLY)
        if pretrained:
            values["phase2_lr"] = self.pretrained_phase2_lr
        return make_config(**values)


def forward_flops(model, variables, image_size: int) -> float:
    """XLA's count of floating-point operations for one image's forward pass."""
    one = jnp.zeros((1, image_size, image_size, 1), jnp.float32)
    cost = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, one).compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per program
        cost = cost[0] if cost else None
    return float(cost.get("flops", float("nan"))) if cost else float("nan")


def one_image_latency_ms(classifier, image_size: int, repeats: int = 20) -> float:
    """Median wall time of ``predict`` on one image (compiled first)."""
    image = np.full((image_size, image_size), 128, np.uint8)
    single = type(classifier)(classifier.spec, classifier.variables, batch_size=1, calibration=classifier.calibration)
    single.predict(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        single.predict(image)
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


def _parameter_count(variables) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"])))


def _row(model: str, run_dir: str, config: ComparisonConfig) -> Dict[str, Any]:
    """One table row from a finished run folder (report.json, evaluation.json, the checkpoint)."""
    with open(os.path.join(run_dir, "report.json")) as f:
        run_report = json.load(f)
    with open(os.path.join(run_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    classifier = Classifier.from_checkpoint(run_dir)
    size = classifier.image_size
    predictions = evaluation["test"]["predictions"]
    labels = np.array([p["label"] for p in predictions])
    # Folders written before logits were recorded carry only probabilities; both rank the same way.
    logits = np.array([p.get("logit", p["probability"]) for p in predictions])
    metrics = evaluation["test"]["metrics"]
    clean = evaluation["test"].get("clean")
    return {
        "model": model,
        "pretrained": run_report.get("pretrained"),
        "test": metrics,
        "clean_test": clean,
        "parameters": _parameter_count(classifier.variables),
        "forward_gflops": forward_flops(classifier.model, classifier.variables, size) / 1e9,
        "train_seconds": run_report["timing"]["train_seconds"],
        "train_steps": run_report["timing"].get("train_steps"),
        "wall_seconds": run_report["timing"]["wall_seconds"],
        "train_images_per_s": run_report["timing"]["train_images_per_s"],
        "latency_ms": one_image_latency_ms(classifier, size, config.latency_repeats),
        "image_size": size,
        "run_dir": os.path.relpath(run_dir, config.out),
        "labels": labels.tolist(),
        "logits": logits.tolist(),  # what the ROC ranks, as the table's AUROC does
    }


def _cell(metrics: Optional[Dict[str, Any]], key: str, digits: int = 3) -> str:
    if not metrics or metrics.get(key) is None:
        return "-"
    return stats.format_interval(metrics[key], (metrics.get("intervals") or {}).get(key), digits)


COLUMNS = (
    "model", "accuracy", "AUROC", "sensitivity", "specificity", "F1", "kappa", "clean acc.", "clean AUROC",
    "params (M)", "GFLOPs", "train (s)", "steps", "train img/s", "latency (ms)",
)


def table_rows(rows: List[Dict[str, Any]]) -> List[List[str]]:
    out = []
    for r in rows:
        t, c = r["test"], r["clean_test"]
        name = r["model"] + (" (ImageNet)" if r.get("pretrained") else "")
        out.append([
            name, _cell(t, "accuracy"), _cell(t, "auroc"), _cell(t, "sensitivity"), _cell(t, "specificity"),
            _cell(t, "f1"), _cell(t, "kappa"), _cell(c, "accuracy"), _cell(c, "auroc"),
            f"{r['parameters'] / 1e6:.2f}", f"{r['forward_gflops']:.3f}", f"{r['train_seconds']:.0f}",
            str(r.get("train_steps") or "-"), f"{r['train_images_per_s']:.1f}", f"{r['latency_ms']:.1f}",
        ])
    return out


def markdown(rows: List[Dict[str, Any]], config: ComparisonConfig) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(rows)]
    n = rows[0]["test"]["n"] if rows else 0
    lines.append("")
    budget = (
        f"the same budget of {config.budget_minutes:g} min of training per model (compiling not counted, "
        f"each epoch's validation counted: {config.phase1_epochs} frozen epoch(s), then fine-tuning until the "
        "budget is spent, "
        "reduce-on-plateau learning rate, no early stopping)"
        if config.budget_minutes
        else f"{config.phase1_epochs} + {config.phase2_epochs} epochs (frozen + fine-tuning)"
    )
    lines.append(
        f"{config.dataset}, test n={n}, {config.image_size or 'stored'} px, head '{config.head}', "
        f"{config.train_examples or 'all'} training examples, {budget}, "
        f"batch {config.batch_size}, seed {config.seed}. [..] = 95% bootstrap interval "
        f"({config.bootstrap} resamples). Clean columns: test examples without a near-copy in train/validation "
        f"({'audit ' + config.audit if config.audit else 'no audit given'}). GFLOPs: one image's forward pass (XLA "
        "count); latency: one image, this machine's CPU."
    )
    return "\n".join(lines) + "\n"


def run_comparison(config: ComparisonConfig, log=print) -> Dict[str, Any]:
    """Train (or resume, or reuse) every model, then write the outputs."""
    config.validate()
    # Every weights file is checked against its architecture before any training.
    for model, path in config.pretrained.items():
        size = config.image_size or fracjax.models.input_contract(model).default_size
        fracjax.models.load_keras_weights(model, path, image_size=size)
    os.makedirs(config.out, exist_ok=True)
    rows = []
    for model in config.models:
        run_dir = os.path.join(config.out, model)
        done = os.path.exists(os.path.join(run_dir, "report.json")) and os.path.exists(
            os.path.join(run_dir, "evaluation.json"))
        if done:
            log(f"{model}: finished earlier, reusing {run_dir}")
        else:
            started = os.path.isdir(os.path.join(run_dir, "checkpoints"))
            train_config = config.train_config(model).replace(resume=started)
            log(f"{model}: {'resuming' if started else 'training'} into {run_dir}")
            fit(train_config)
        rows.append(_row(model, run_dir, config))
        # Written after every model: a killed comparison keeps what it has.
        _write(rows, config)
    paths = _write(rows, config, final=True)
    log(f"wrote {', '.join(paths.values())}")
    return {"rows": rows, "paths": paths}


def _write(rows: List[Dict[str, Any]], config: ComparisonConfig, final: bool = False) -> Dict[str, str]:
    paths = {name: os.path.join(config.out, name) for name in ("comparison.md", "comparison.json")}
    with open(paths["comparison.md"], "w") as f:
        f.write(markdown(rows, config))
    with open(paths["comparison.json"], "w") as f:
        json.dump({"config": dataclasses.asdict(config), "rows": rows}, f, indent=1, default=str)
    if final:
        paths["roc.png"] = os.path.join(config.out, "roc.png")
        curves = {r["model"]: (np.array(r["labels"]), np.array(r["logits"])) for r in rows}
        roc_png = figures.roc_pr(curves, paths["roc.png"])
        paths["report.html"] = os.path.join(config.out, "report.html")
        body = [
            "<h2>Models</h2>",
            report_lib.html_table(COLUMNS, table_rows(rows)),
            "<p class='note'>" + markdown(rows, config).strip().splitlines()[-1] + "</p>",
            "<h2>ROC and precision-recall</h2>",
            report_lib.png_tag(roc_png, "ROC of every model"),
            "<h2>Each model's report</h2><ul>",
        ]
        body += [f"<li><a href='{r['run_dir']}/report.html'>{r['model']}</a></li>" for r in rows]
        body.append("</ul>")
        with open(paths["report.html"], "w") as f:
            f.write(report_lib.page("fracjax comparison", body))
    return paths
