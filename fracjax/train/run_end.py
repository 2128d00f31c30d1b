"""The end of a run: the training curves, the test evaluation of the best
checkpoint through the restored ``Classifier`` (the path users take, so the
numbers here are theirs) with calibration and report.html, and ``report.json``.
Process 0 evaluates and writes; the others wait for it."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

import jax

from fracjax.evaluation import evaluate_run, figures
from fracjax.evaluation.stats import format_interval
from fracjax.metrics import jsonable
from fracjax.train import distributed, event_log
from fracjax.train.context import RunContext, data_name
from fracjax.train.distributed import say
from fracjax.train.state import RunState, history_json


def finish(ctx: RunContext, run: RunState) -> Dict[str, Any]:
    ctx.checkpoints.close()
    history = history_json(run.history)
    if history and distributed.is_primary():
        figures.training_curves(history, os.path.join(ctx.run_dir, "curves.png"))
    report = jsonable(training_report(ctx, run))
    if distributed.is_primary():
        evaluation_start = time.perf_counter()
        report.update(final_evaluation(ctx, history, report["data"]["split"].get("kind")))
        report["timing"]["evaluation_seconds"] = round(time.perf_counter() - evaluation_start, 1)
        report["timing"]["wall_seconds"] = round(time.perf_counter() - ctx.clock.start, 1)
        with open(os.path.join(ctx.run_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        test = report["test"]
        say(
            f"test (best checkpoint, step {report['best_step']}): accuracy {test['accuracy']:.3f}, AUROC "
            f"{_with_interval(test, 'auroc')}, sensitivity {test['sensitivity']:.3f}, specificity "
            f"{test['specificity']:.3f} -> {ctx.run_dir}"
        )
        for warning in report["warnings"]:
            say(f"WARNING: {warning}")
        _log_events(ctx, run, report)
    distributed.barrier("evaluated")  # the others wait for process 0's evaluation and report
    return report


def _log_events(ctx: RunContext, run: RunState, report: Dict[str, Any]) -> None:
    """The test metrics (with their intervals) and the report's figures, at the run's last step."""
    ctx.events.scalars(event_log.flat_metrics("test", report["test"]), run.step)
    ctx.events.image_files({f"report/{name}": os.path.join(ctx.run_dir, f"{name}.png")
                            for name in ("curves", "roc", "gradcam")}, run.step)


def training_report(ctx: RunContext, run: RunState) -> Dict[str, Any]:
    config, progress, clock = ctx.config, run.progress, ctx.clock
    best = next((r for r in run.history if r.step == progress.best_step), None)
    metadata = ctx.builder.info.metadata
    return {
        "validation": best.validation if best else None,
        "best_step": progress.best_step,
        "stopped_early": progress.stopped_early,
        "budget": {"train_minutes": config.optim.train_minutes, "spent": progress.budget_spent}
        if config.optim.train_minutes else None,
        "model": ctx.spec,
        "data": {
            "dataset": data_name(config.data),
            "examples": {s: len(src) for s, src in ctx.splits.items()},
            "skipped": metadata.get("skipped", []) if metadata else [],
            # Which split: the data set's published one, or grouped (and by what), with the moves.
            "split": (metadata.get("split") if metadata else None) or {"kind": "published"},
        },
        "pretrained": ctx.pretrained_note,
        "timing": {
            "train_seconds": round(clock.train_seconds, 1),
            "train_steps": run.step,
            "train_images_per_s": round(clock.steady_images / max(clock.steady_seconds, 1e-9), 2),
        },
        "devices": f"{ctx.parallel.count} x {jax.devices()[0].platform}",
    }


def _with_interval(metrics: Dict[str, Any], key: str) -> str:
    return format_interval(metrics.get(key), (metrics.get("intervals") or {}).get(key), 4)


def final_evaluation(ctx: RunContext, history, split_kind: Optional[str]) -> Dict[str, Any]:
    """Test metrics of the best checkpoint, with calibration and report.html unless ``--no-report``;
    ``split_kind``: which split the data set's builder drew (said in the report)."""
    e, splits = ctx.config.evaluation, ctx.splits
    done = evaluate_run(ctx.run_dir, splits["validation"], splits["test"], audit=e.audit, history=history,
                        report=e.report, calibrate=e.report, bootstrap=e.bootstrap, seed=ctx.config.run.seed, log=say,
                        train=splits["train"], split_kind=split_kind)
    result = done.result
    out: Dict[str, Any] = {"test": result.metrics, "warnings": result.warnings(), "ood": result.ood}
    if result.clean is not None:
        out["clean_test"] = result.clean
    if done.calibration is not None:
        out["calibration"] = done.calibration
    if done.report:
        say(f"report: {done.report}")
    return jsonable(out)
