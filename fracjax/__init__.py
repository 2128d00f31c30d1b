"""fracjax: bone-fracture classification of X-ray images in JAX/Flax."""

import importlib

__version__ = "0.1.0"

from fracjax import caches  # noqa: E402

# Before anything compiles: every command and the Python API share the XLA compilation cache.
caches.enable_compilation_cache()

from fracjax import models  # noqa: E402

# Loaded on first use: fracjax.data imports tensorflow_datasets and grain.
_LAZY = {"data", "train", "inference", "evaluation", "deploy"}


def __getattr__(name):
    if name == "Classifier":
        from fracjax.inference import Classifier

        return Classifier
    if name == "export":
        from fracjax.deploy import export

        return export
    if name == "evaluate":
        from fracjax.evaluation import evaluate

        return evaluate
    if name in _LAZY:
        return importlib.import_module(f"fracjax.{name}")
    raise AttributeError(f"module 'fracjax' has no attribute {name!r}")


__all__ = [
    "Classifier",
    "evaluate",
    "export",
    "deploy",
    "models",
    "data",
    "train",
    "inference",
    "evaluation",
    "__version__",
]
