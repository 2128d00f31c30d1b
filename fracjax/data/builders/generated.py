"""``synthetic_fracture``: the generated data set (:mod:`fracjax.data.synthetic`),
the main job's default; needs no files."""

from __future__ import annotations

import dataclasses
from typing import Tuple

import tensorflow_datasets as tfds

from fracjax.data import synthetic
from fracjax.data.builders.base import SaysWhatItPrepares, encode_png, features_of, map_in_processes
from fracjax.metrics import LABEL_NAMES

SYNTHETIC_SECONDS_PER_PIXEL = 1.2e-6  # generating and encoding one synthetic image, per pixel, on one core


@dataclasses.dataclass
class SyntheticFractureConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    num_train: int = 2000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0


def _synthetic_png(job: Tuple[int, str, int, int]):
    seed, split, index, size = job
    image, label, boxes = synthetic.generate_example_with_boxes(
        seed, split, index, synthetic.SyntheticConfig(size=size)
    )
    return index, encode_png(image), label, boxes


class SyntheticFracture(SaysWhatItPrepares, tfds.core.GeneratorBasedBuilder):
    """Procedural radiograph-like images of long bones, fractured or not
    (:mod:`fracjax.data.synthetic`). Same features and splits as
    ``fracture_xray``; the default main job's data set."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Long bones, joints, fractures (displaced, angulated) and confounders.",
        "1.1.0": "The same images, with each fracture's box (for the pointing game).",
    }
    BUILDER_CONFIGS = [
        SyntheticFractureConfig(
            name="128", image_size=128, num_train=6000,
            description="6,000 / 500 / 500 images at 128x128: the default, sized for training on a CPU in minutes.",
        ),
        SyntheticFractureConfig(name="224", description="2,000 / 500 / 500 images at 224x224."),
        SyntheticFractureConfig(
            name="large", num_train=8000, num_validation=1000, num_test=1000,
            description="8,000 / 1,000 / 1,000 images at 224x224.",
        ),
        SyntheticFractureConfig(
            name="quick", image_size=128, num_train=3000,
            description="3,000 / 500 / 500 images at 128x128: the data of fracjax train --quick (the 128 config's "
                        "size: a from-scratch model learns far sooner there than at 96 px).",
        ),
        SyntheticFractureConfig(
            name="tiny", image_size=96, num_train=128, num_validation=64, num_test=64,
            description="128 / 64 / 64 images at 96x96, for tests and smoke runs.",
        ),
    ]
    DEFAULT_CONFIG_NAME = "128"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _preparing_what(self) -> str:
        c = self.builder_config
        return (f"generating {c.num_train:,} / {c.num_validation:,} / {c.num_test:,} images at "
                f"{c.image_size}x{c.image_size} (no download, once)")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Procedurally generated radiograph-like images of long bones with (label 1) or without "
                "(label 0) a fracture; confounders at equal rates in both classes. Made by "
                "fracjax.data.synthetic; needs no download."
            ),
            features=features_of(self.builder_config.image_size, ("boxes",)),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        counts = {"train": c.num_train, "validation": c.num_validation, "test": c.num_test}
        return {split: self._generate_examples(split, n) for split, n in counts.items()}

    def _generate_examples(self, split, n):
        c = self.builder_config
        jobs = [(c.seed, split, i, c.image_size) for i in range(n)]
        seconds = n * c.image_size**2 * SYNTHETIC_SECONDS_PER_PIXEL
        for index, png, label, boxes in map_in_processes(_synthetic_png, jobs, seconds=seconds):
            name = f"{split}/{LABEL_NAMES[label]}/{index:05d}.png"
            yield name, {"image": png, "label": label, "filename": name, "boxes": boxes}
