"""TFDS builders: ``fracture_xray`` (the Kaggle download, via ``manual_dir``)
and ``synthetic_fracture`` (procedural, needs no files).

Both write array_record files, so reading them back (``tfds.data_source``)
needs no TensorFlow; images are stored PNG-encoded, (S, S, 1) uint8, resized
like Keras ``image_dataset_from_directory`` (bilinear, half-pixel centres, no
antialiasing, aspect ratio not kept). Importing this module registers both.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import multiprocessing
import os
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from fracjax.data import synthetic
from fracjax.data.io import IMAGE_EXTENSIONS, ImageDecodeError, model_input, read_image
from fracjax.metrics import LABEL_NAMES

log = logging.getLogger(__name__)

# Folder name of each split in the download -> TFDS split name.
SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}

KAGGLE_URL = "https://www.kaggle.com/datasets/bmadushanirodrigo/fracture-multi-region-x-ray-data"


def _features(size: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8, encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            "filename": tfds.features.Text(),
        }
    )


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 1) uint8 -> PNG bytes (TFDS encodes numpy images only with TF)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


SYNTHETIC_SECONDS_PER_PIXEL = 1.2e-6  # generating and encoding one synthetic image, per pixel, on one core
SPAWN_SECONDS = 10.0  # starting the workers: each spawned process imports fracjax, TFDS and JAX anew


def _map_in_processes(fn, items: Sequence, chunksize: int = 16, seconds: Optional[float] = None) -> Iterator:
    """Ordered ``map`` over worker processes (spawned: JAX may be loaded and
    multithreaded here, which makes fork unsafe); in-process for small jobs:
    fewer than 64 items, or ``seconds`` (the caller's estimate of the whole
    map in one process) under what starting the workers costs."""
    small = len(items) < 64 or (seconds is not None and seconds < SPAWN_SECONDS)
    if small or _workers() == 1:
        yield from map(fn, items)
        return
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(_workers(), mp_context=ctx) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)


# --------------------------------------------------------------------------
# The real data set.
# --------------------------------------------------------------------------


def class_label(folder_name: str) -> Optional[int]:
    """``fractured`` -> 1, ``not fractured`` (any case, ``_``/``-``/space) -> 0."""
    key = re.sub(r"[\s_\-]+", " ", folder_name.strip().lower())
    if key == "fractured":
        return 1
    if key in ("not fractured", "notfractured", "non fractured", "unfractured"):
        return 0
    return None


def find_split_root(manual_dir: os.PathLike, max_depth: int = 4) -> str:
    """The folder that holds ``train/ val/ test/`` (any case): ``manual_dir``
    itself or the shallowest folder below it (the Kaggle zip nests
    ``Bone_Fracture_Binary_Classification/`` twice)."""
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder; download the data set from {KAGGLE_URL}")
    level = [manual_dir]
    for _ in range(max_depth + 1):
        found = []
        for folder in level:
            names = {n.lower() for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))}
            if "train" in names and "test" in names and ("val" in names or "validation" in names):
                found.append(folder)
        if found:
            return sorted(found)[0]
        level = [
            os.path.join(folder, n)
            for folder in level
            for n in sorted(os.listdir(folder))
            if os.path.isdir(os.path.join(folder, n)) and not n.startswith(".")
        ]
    raise FileNotFoundError(
        f"no folder with train/, val/ and test/ inside {manual_dir} (searched {max_depth} levels down). "
        f"Unzip the Kaggle download ({KAGGLE_URL}) there; the expected layout is "
        "Bone_Fracture_Binary_Classification/Bone_Fracture_Binary_Classification/{train,val,test}/"
        "{fractured,not fractured}/*.jpg"
    )


def list_split_files(root: str) -> Dict[str, List[Tuple[str, int]]]:
    """{tfds split: [(path relative to root, label), ...]} sorted by path."""
    out: Dict[str, List[Tuple[str, int]]] = {}
    for split_folder in sorted(os.listdir(root)):
        split = SPLIT_FOLDERS.get(split_folder.lower())
        split_path = os.path.join(root, split_folder)
        if split is None or not os.path.isdir(split_path):
            continue
        files = out.setdefault(split, [])
        for class_folder in sorted(os.listdir(split_path)):
            class_path = os.path.join(split_path, class_folder)
            if not os.path.isdir(class_path) or class_folder.startswith("."):
                continue
            label = class_label(class_folder)
            if label is None:
                raise ValueError(
                    f"{class_path}: unknown class folder {class_folder!r}; expected 'fractured' and 'not fractured'"
                )
            for dirpath, dirnames, filenames in os.walk(class_path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith(".") or name.lower() in JUNK_FILES:
                        continue
                    if not name.lower().endswith(IMAGE_EXTENSIONS):
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    files.append((rel.replace(os.sep, "/"), label))
        files.sort()
    missing = [s for s in ("train", "validation", "test") if not out.get(s)]
    if missing:
        raise FileNotFoundError(f"{root}: no images for split(s) {missing}")
    return out


def _decode_for_store(job: Tuple[str, str, int]):
    """Worker: (root, relative path, size) -> (relative path, PNG bytes | None, reason)."""
    root, rel, size = job
    try:
        image = model_input(read_image(os.path.join(root, rel)), size)
    except ImageDecodeError as err:
        return rel, None, err.reason
    return rel, encode_png(image), ""


class _NoOpenCvAdvice(logging.Filter):
    """TFDS advises installing OpenCV on the first PNG it decodes; PIL
    decodes our 8-bit grey PNGs exactly, so the advice is noise here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("OpenCV is not installed. We recommend")


logging.getLogger("absl").addFilter(_NoOpenCvAdvice())


class _SaysWhatItPrepares:
    """TFDS announces "Downloading and preparing dataset Unknown size" for
    every builder; ours download nothing, so they say what they do instead."""

    def _preparing_what(self) -> str:
        raise NotImplementedError

    def _log_download_bytes(self) -> None:
        print(f"preparing {self.name}/{self.builder_config.name}: {self._preparing_what()} -> {self.data_dir}",
              flush=True)

    def _log_download_done(self) -> None:
        print(f"{self.name}/{self.builder_config.name} is ready in {self.data_dir}", flush=True)


@dataclasses.dataclass
class FractureXrayConfig(tfds.core.BuilderConfig):
    image_size: int = 224


class FractureXray(_SaysWhatItPrepares, tfds.core.GeneratorBasedBuilder):
    """The Kaggle "Fracture Multi-Region X-ray Data" (binary), from a folder the
    user downloaded. Unreadable files are skipped and listed in
    ``info.metadata["skipped"]`` (``strict=True`` makes them an error)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Grey uint8 images, Keras-style bilinear resize, skipped files in metadata."}
    BUILDER_CONFIGS = [
        FractureXrayConfig(name="224", image_size=224, description="Images resized to 224x224."),
        FractureXrayConfig(name="384", image_size=384, description="Images resized to 384x384."),
    ]
    DEFAULT_CONFIG_NAME = "224"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download the archive from {KAGGLE_URL}, unzip it, and pass the folder as
    manual_dir (the unzipped folder itself, or any folder below it that holds
    train/ val/ test/):

      tfds.builder("fracture_xray", data_dir=D).download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=M))
    """

    def __init__(self, *, strict: bool = False, file_format=None, **kwargs):
        self.strict = strict
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _preparing_what(self) -> str:
        size = self.builder_config.image_size
        return f"decoding the manual_dir's images to {size}x{size} grey (no download)"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Fracture Multi-Region X-ray Data: 10,580 radiographs (upper and lower limbs, lumbar, "
                "hips, knees) labelled fractured / not fractured, merged by its authors from three "
                "earlier Kaggle sets. It holds copies of the same X-ray within and across splits: run "
                "fracjax.data.audit before trusting a test score."
            ),
            features=_features(size),
            supervised_keys=("image", "label"),
            homepage=KAGGLE_URL,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        root = find_split_root(dl_manager.manual_dir)
        files = list_split_files(root)
        self.info.metadata["skipped"] = []
        self.info.metadata["source_root"] = os.path.basename(os.path.normpath(root))
        return {split: self._generate_examples(root, items, split) for split, items in files.items()}

    def _generate_examples(self, root, items, split):
        size = self.builder_config.image_size
        labels = dict(items)
        skipped = []
        jobs = [(root, rel, size) for rel, _ in items]
        for rel, png, reason in _map_in_processes(_decode_for_store, jobs):
            if png is None:
                if self.strict:
                    raise ImageDecodeError(os.path.join(root, rel), reason)
                skipped.append({"path": rel, "reason": reason})
                continue
            yield rel, {"image": png, "label": labels[rel], "filename": rel}
        if len(skipped) == len(items):  # (TFDS would fail on an empty split with a bare AssertionError)
            first = skipped[0] if skipped else {"path": "-", "reason": "no files"}
            raise ValueError(f"fracture_xray: none of the {len(items)} image file(s) of the {split} split in {root} "
                             f"is readable (the first, {first['path']}: {first['reason']})")
        if skipped:
            log.warning(
                "fracture_xray: skipped %d unreadable file(s) in %s (see info.metadata['skipped']): %s",
                len(skipped),
                split,
                ", ".join(s["path"] for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
            )
            self.info.metadata["skipped"].extend(skipped)


# --------------------------------------------------------------------------
# The synthetic data set.
# --------------------------------------------------------------------------


@dataclasses.dataclass
class SyntheticFractureConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    num_train: int = 2000
    num_validation: int = 500
    num_test: int = 500
    seed: int = 0


def _synthetic_png(job: Tuple[int, str, int, int]):
    seed, split, index, size = job
    image, label = synthetic.generate_example(seed, split, index, synthetic.SyntheticConfig(size=size))
    return index, encode_png(image), label


class SyntheticFracture(_SaysWhatItPrepares, tfds.core.GeneratorBasedBuilder):
    """Procedural radiograph-like images of long bones, fractured or not
    (:mod:`fracjax.data.synthetic`). Same features and splits as
    ``fracture_xray``; the default main job's data set."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Long bones, joints, fractures (displaced, angulated) and confounders."}
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
            features=_features(self.builder_config.image_size),
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
        for index, png, label in _map_in_processes(_synthetic_png, jobs, seconds=seconds):
            name = f"{split}/{LABEL_NAMES[label]}/{index:05d}.png"
            yield name, {"image": png, "label": label, "filename": name}
