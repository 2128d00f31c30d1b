"""Deployment: exported artifacts with their model cards."""

from fracjax.deploy.stablehlo import FORMATS, ExportedModel, ExportError, export, load, read_card

__all__ = ["FORMATS", "ExportError", "ExportedModel", "export", "load", "read_card"]
