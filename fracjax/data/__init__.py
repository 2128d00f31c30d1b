"""fracjax data: decoding, TFDS builders, the input pipeline, on-device
augmentation and the leakage audit.

``import fracjax.data`` registers the TFDS builders ``fracture_xray`` and
``synthetic_fracture`` (so ``tfds.builder("fracture_xray", ...)`` works
after it) wherever tensorflow_datasets is installed; where it is not, the
rest (decoding, the augmentation, the train step) still imports and runs.
"""

import importlib

from fracjax.data import augment, pipeline  # noqa: F401
from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.data.io import ImageDecodeError, read_image, resize_bilinear
from fracjax.data.pipeline import ArraySource, TrainOrder, eval_batches, load_arrays, train_batches
from fracjax.data.prepare import from_folder, load_source
from fracjax.data.sample_files import samples
from fracjax.data.synthetic import SyntheticConfig, generate_arrays, generate_example
from fracjax.metrics import LABEL_NAMES

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
    "from_folder",
    "read_image",
    "resize_bilinear",
    "samples",
]

_BUILDER_NAMES = ("FractureXray", "FractureXrayConfig", "SyntheticFracture", "SyntheticFractureConfig")


def __getattr__(name):
    if name == "audit":
        return importlib.import_module("fracjax.data.audit")
    if name == "builders" or name in _BUILDER_NAMES:
        builders = importlib.import_module("fracjax.data.builders")
        return builders if name == "builders" else getattr(builders, name)
    raise AttributeError(f"module 'fracjax.data' has no attribute {name!r}")


try:
    from fracjax.data import builders  # noqa: F401,E402  (registers the TFDS builders)
except ImportError:  # no (or a broken) tensorflow_datasets: raised again where a builder is asked for
    pass
