"""fracjax data: decoding, TFDS builders, the input pipeline, on-device
augmentation and the leakage audit.

Importing this package registers the TFDS builders ``fracture_xray`` and
``synthetic_fracture``.
"""

from fracjax.data import audit, augment, builders, pipeline  # noqa: F401  (builders registers the TFDS builders)
from fracjax.data.augment import AugmentConfig, augment_batch
from fracjax.data.builders import FractureXray, FractureXrayConfig, SyntheticFracture, SyntheticFractureConfig
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
