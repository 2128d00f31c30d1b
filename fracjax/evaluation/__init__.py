"""Evaluation: metrics with bootstrap intervals and clean-test columns,
operating points, calibration (temperature scaling), Grad-CAM, figures and
self-contained HTML reports.

    result = fracjax.evaluate(fracjax.Classifier.from_checkpoint(run), "synthetic_fracture")
    print(result.table())
"""

from fracjax.evaluation import stats  # noqa: F401
from fracjax.evaluation.calibration import calibrate
from fracjax.evaluation.evaluator import (
    EvaluationResult,
    RunEvaluation,
    calibrate_checkpoint,
    clean_filenames,
    evaluate,
    evaluate_run,
)
from fracjax.evaluation.gradcam import DEFAULT_LAYER, LayerNotFoundError, grad_cam, overlay

__all__ = [
    "DEFAULT_LAYER",
    "EvaluationResult",
    "RunEvaluation",
    "LayerNotFoundError",
    "calibrate",
    "calibrate_checkpoint",
    "clean_filenames",
    "evaluate",
    "evaluate_run",
    "grad_cam",
    "overlay",
    "stats",
]
