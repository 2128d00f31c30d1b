"""fracjax data: decoding, TFDS builders, the input pipeline, on-device
augmentation and the leakage audit.

The TFDS builders ``fracture_xray`` and ``synthetic_fracture`` are registered
when ``fracjax.data.builders`` is imported: on first use of a builder name
below, or by the functions that need them (``load_source``, ``fit``).
tensorflow_datasets is imported only then, so the on-device parts (the
augmentation, the train step) run where it is not installed.
"""

import importlib

from fracjax.data import audit, augment, pipeline  # noqa: F401
from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.data.io import ImageDecodeError, read_image, resize_bilinear
from fracjax.data.pipeline import ArraySource, TrainOrder, eval_batches, load_arrays, load_source, train_batches
from fracjax.data.synthetic import LABEL_NAMES, SyntheticConfig, generate_arrays, generate_example

__all__ = [
    "ArraySource",
    "AugmentConfig",
    "TrainOrder",
    "augment_batch",
    "eval_batches",
    "load_arrays",
    "load_source",
    "train_batches",
    "FractureXray",
    "FractureXrayConfig",
    "ImageDecodeError",
    "LABEL_NAMES",
    "SyntheticConfig",
    "SyntheticFracture",
    "SyntheticFractureConfig",
    "generate_arrays",
    "generate_example",
    "read_image",
    "resize_bilinear",
]

_BUILDER_NAMES = ("FractureXray", "FractureXrayConfig", "SyntheticFracture", "SyntheticFractureConfig")


def __getattr__(name):
    if name == "builders" or name in _BUILDER_NAMES:
        builders = importlib.import_module("fracjax.data.builders")
        return builders if name == "builders" else getattr(builders, name)
    raise AttributeError(f"module 'fracjax.data' has no attribute {name!r}")
