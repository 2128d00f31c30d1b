"""Deployment: exported artifacts (StableHLO, ONNX) with their model cards."""

from fracjax.deploy.artifacts import FORMATS, ExportedModel, export, load, read_card
from fracjax.deploy.common import ExportError

__all__ = ["FORMATS", "ExportError", "ExportedModel", "export", "load", "read_card"]
