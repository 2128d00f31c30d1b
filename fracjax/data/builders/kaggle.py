"""``fracture_xray``: the Kaggle "Fracture Multi-Region X-ray Data", read from
the folder the user downloaded (``manual_dir``), as published or re-split by
near-duplicate group (the ``grouped`` configurations)."""

from __future__ import annotations

import dataclasses

import tensorflow_datasets as tfds

from fracjax.data.builders.base import (
    KAGGLE_URL,
    DecodedThenSplit,
    Record,
    find_split_root,
    grouped_splits,
    list_split_files,
)


@dataclasses.dataclass
class FractureXrayConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    grouped: bool = False  # re-split so that near-duplicates lie in one split


class FractureXray(DecodedThenSplit, tfds.core.GeneratorBasedBuilder):
    """The Kaggle "Fracture Multi-Region X-ray Data" (binary), from a folder the
    user downloaded. Unreadable files are skipped and listed in
    ``info.metadata["skipped"]`` (``strict=True`` makes them an error).

    The ``grouped`` configurations re-split it leakage-free: every group of
    near-duplicate X-rays (the leakage audit) lies in one split; groups
    already inside one split stay there, those spanning splits move to where
    the per-split, per-class counts stay closest to the published ones; each
    moved file and why is in ``info.metadata["split"]["moves"]``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Grey uint8 images, Keras-style bilinear resize, skipped files in metadata."}
    BUILDER_CONFIGS = [
        FractureXrayConfig(name="224", image_size=224, description="Images resized to 224x224."),
        FractureXrayConfig(name="384", image_size=384, description="Images resized to 384x384."),
        FractureXrayConfig(name="grouped", image_size=224, grouped=True,
                           description="224x224, re-split so that near-duplicate X-rays never span splits."),
        FractureXrayConfig(name="grouped_384", image_size=384, grouped=True,
                           description="384x384, re-split so that near-duplicate X-rays never span splits."),
    ]
    DEFAULT_CONFIG_NAME = "224"
    DESCRIPTION = (
        "Fracture Multi-Region X-ray Data: 10,580 radiographs (upper and lower limbs, lumbar, hips, knees) "
        "labelled fractured / not fractured, merged by its authors from three earlier Kaggle sets. It holds "
        "copies of the same X-ray within and across splits: run `fracjax audit` before trusting a test score."
    )
    HOMEPAGE = KAGGLE_URL
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the archive from {KAGGLE_URL}, unzip it, and pass the folder as
    manual_dir (the unzipped folder itself, or any folder below it that holds
    train/ val/ test/):

      tfds.builder("fracture_xray", data_dir=D).download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=M))
    """

    def _preparing_what(self) -> str:
        size = self.builder_config.image_size
        then = ", auditing near-duplicates and re-splitting by group" if self.builder_config.grouped else ""
        return f"decoding the manual_dir's images to {size}x{size} grey{then} (no download)"

    def _records(self, dl_manager):
        root = find_split_root(dl_manager.manual_dir)
        return root, [Record(rel, label, split=split) for split, items in list_split_files(root).items()
                      for rel, label in items], []

    def _assign(self, records, pngs):
        given = [r.split for r in records]
        if self.builder_config.grouped:
            return grouped_splits(records, pngs, given=given)
        return given, {"kind": "published"}
