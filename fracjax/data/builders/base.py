"""What fracjax's TFDS builders share: listing a download's files and their
labels, decoding them once (in worker processes, unreadable files skipped and
listed), the grouped split, the stored features, and :class:`DecodedThenSplit`,
the public base of every builder that reads a folder.

Every builder writes array_record files, so reading them back
(``tfds.data_source``) needs no TensorFlow; images are stored PNG-encoded,
(S, S, 1) uint8, resized like Keras ``image_dataset_from_directory``
(bilinear, half-pixel centres, no antialiasing, aspect ratio not kept).
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

from fracjax.data import audit as audit_lib
from fracjax.data import splits
from fracjax.data.io import IMAGE_EXTENSIONS, ImageDecodeError, model_input, read_image
from fracjax.data.splits import SPLIT_FOLDERS, SPLITS
from fracjax.metrics import LABEL_NAMES

JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}

KAGGLE_URL = "https://www.kaggle.com/datasets/bmadushanirodrigo/fracture-multi-region-x-ray-data"
FRACATLAS_URL = "https://doi.org/10.6084/m9.figshare.22363012"
MURA_URL = "https://stanfordmlgroup.github.io/competitions/mura/"
# The data sets read from a folder the user downloaded (TFDS manual_dir): what that folder holds.
MANUAL_SETS = {
    "fracture_xray": f"the unzipped Kaggle download ({KAGGLE_URL})",
    "fracatlas": f"the unzipped FracAtlas archive, with dataset.csv and images/ ({FRACATLAS_URL})",
    "mura": f"MURA-v1.1/ from the unzipped MURA download ({MURA_URL})",
}


# What a data set may know of each example beyond image, label and filename
# (evaluation reads these: patient/study ids cluster the bootstrap, body parts
# get their own rows, studies their own metrics, boxes the pointing game).
EXTRA_FEATURES = {
    "patient": tfds.features.Text,
    "study": tfds.features.Text,
    "body_part": tfds.features.Text,
    "view": tfds.features.Text,
    "hardware": lambda: tfds.features.Scalar(dtype=np.int64),
    # (ymin, xmin, ymax, xmax) in [0, 1] of the image, one row per fracture.
    "boxes": lambda: tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
}


def features_of(size: int, extras: Sequence[str] = ()) -> tfds.features.FeaturesDict:
    features = {
        "image": tfds.features.Image(shape=(size, size, 1), dtype=np.uint8, encoding_format="png"),
        "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
        "filename": tfds.features.Text(),
    }
    features.update((name, EXTRA_FEATURES[name]()) for name in extras)
    return tfds.features.FeaturesDict(features)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 1) uint8 -> PNG bytes (TFDS encodes numpy images only with TF)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


SPAWN_SECONDS = 10.0  # starting the workers: each spawned process imports fracjax, TFDS and JAX anew


def map_in_processes(fn, items: Sequence, chunksize: int = 16, seconds: Optional[float] = None) -> Iterator:
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
# Listing a download: its files, their labels and splits.
# --------------------------------------------------------------------------


POSITIVE_NAMES = ("fractured", "fracture", "fractures", "positive", "abnormal", "yes", "1")
NEGATIVE_NAMES = ("not fractured", "non fractured", "no fracture", "unfractured", "normal", "negative", "healthy",
                  "no", "0")


def class_label(name: str) -> Optional[int]:
    """A class folder's or a CSV label's name -> 1 (fractured), 0 (not), or
    None: ``fractured``, ``positive``, ``abnormal``, ``1``...; ``not
    fractured``, ``normal``, ``0``... in any case, with ``_``/``-``/spaces."""
    key = re.sub(r"[\s_\-]+", " ", str(name).strip().lower())
    if key in POSITIVE_NAMES:
        return 1
    if key in NEGATIVE_NAMES or key.replace(" ", "") in ("notfractured", "nonfractured"):
        return 0
    return None


def files_under(folder: str, root: str, extensions: Optional[Tuple[str, ...]] = IMAGE_EXTENSIONS) -> List[str]:
    """The files below ``folder`` as paths relative to ``root`` ("/"-separated,
    sorted as walked), leaving out hidden files and folders (macOS ``._``
    copies included), OS junk and, with ``extensions``, other kinds."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.lower() in JUNK_FILES:
                continue
            if extensions is None or name.lower().endswith(extensions):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return out


def subfolders(folder: str) -> List[str]:
    return sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)) and not n.startswith("."))


def class_files(root: str, folder: str, allow_empty: bool = True) -> List[Tuple[str, int]]:
    """(path relative to root, label) of the images in ``folder``'s class
    subfolders; a folder with another name (or, unless ``allow_empty``, one
    without images) is a ValueError naming it."""
    out = []
    for name in subfolders(folder):
        path = os.path.join(folder, name)
        label = class_label(name)
        if label is None:
            raise ValueError(f"{path}: class folder {name!r} is neither fractured ({', '.join(POSITIVE_NAMES)}) "
                             f"nor not fractured ({', '.join(NEGATIVE_NAMES)})")
        files = files_under(path, root)
        if not files and not allow_empty:
            raise ValueError(f"{path}: the class folder {name!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        out.extend((rel, label) for rel in files)
    return out


def search_down(top: os.PathLike, wanted, max_depth: int) -> Optional[str]:
    """The shallowest folder at or below ``top`` (``max_depth`` levels down,
    the first by name at its level) for which ``wanted(folder, names)`` holds;
    ``names``: what ``os.listdir`` gives for it."""
    level = [os.fspath(top)]
    for _ in range(max_depth + 1):
        for folder in sorted(level):
            if wanted(folder, os.listdir(folder)):
                return folder
        level = [os.path.join(f, n) for f in level for n in sorted(os.listdir(f))
                 if os.path.isdir(os.path.join(f, n)) and not n.startswith(".")]
    return None


def find_split_root(manual_dir: os.PathLike, max_depth: int = 4) -> str:
    """The folder that holds ``train/ val/ test/`` (any case): ``manual_dir``
    itself or the shallowest folder below it (the Kaggle zip nests
    ``Bone_Fracture_Binary_Classification/`` twice)."""
    manual_dir = os.fspath(manual_dir)
    if not os.path.isdir(manual_dir):
        raise FileNotFoundError(f"manual_dir {manual_dir} is not a folder; download the data set from {KAGGLE_URL}")

    def holds_splits(folder, names):
        folders = {n.lower() for n in names if os.path.isdir(os.path.join(folder, n))}
        return {"train", "test"} <= folders and bool({"val", "validation"} & folders)

    found = search_down(manual_dir, holds_splits, max_depth)
    if found is None:
        raise FileNotFoundError(
            f"no folder with train/, val/ and test/ inside {manual_dir} (searched {max_depth} levels down). "
            f"Unzip the Kaggle download ({KAGGLE_URL}) there; the expected layout is "
            "Bone_Fracture_Binary_Classification/Bone_Fracture_Binary_Classification/{train,val,test}/"
            "{fractured,not fractured}/*.jpg"
        )
    return found


def list_split_files(root: str) -> Dict[str, List[Tuple[str, int]]]:
    """{tfds split: [(path relative to root, label), ...]} sorted by path."""
    out: Dict[str, List[Tuple[str, int]]] = {}
    for split_folder in sorted(os.listdir(root)):
        split = SPLIT_FOLDERS.get(split_folder.lower())
        split_path = os.path.join(root, split_folder)
        if split is None or not os.path.isdir(split_path):
            continue
        out.setdefault(split, []).extend(class_files(root, split_path))
        out[split].sort()
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
    except MemoryError:  # one file past what this machine holds is one skipped file, not a failed build
        return rel, None, "out of memory while decoding and resizing"
    return rel, encode_png(image), ""


@dataclasses.dataclass(frozen=True)
class Record:
    """One image file of a data set before decoding: its path relative to the
    data set's root, its label, what else is known of it (``EXTRA_FEATURES``)
    and, where the data set gives one, its split."""

    path: str
    label: int
    fields: Dict[str, object] = dataclasses.field(default_factory=dict)
    split: Optional[str] = None


def decode_records(root: str, records: Sequence[Record], size: int, strict: bool, name: str):
    """Decode every record's image (in worker processes). Returns the
    readable records, their PNGs and the skipped files ({path, reason});
    ``strict`` makes an unreadable file an error."""
    kept, pngs, skipped = [], [], []
    jobs = [(root, r.path, size) for r in records]
    for record, (rel, png, reason) in zip(records, map_in_processes(_decode_for_store, jobs), strict=True):
        if png is None:
            if strict:
                raise ImageDecodeError(os.path.join(root, rel), reason)
            skipped.append({"path": rel, "reason": reason})
            continue
        kept.append(record)
        pngs.append(png)
    if records and not kept:
        first = skipped[0]
        raise ValueError(f"{name}: none of the {len(records)} image file(s) in {root} is readable "
                         f"(the first, {first['path']}: {first['reason']})")
    return kept, pngs, skipped


def say_skipped(name: str, skipped: Sequence[Dict[str, str]]) -> None:
    """The files left out, said as the builder's other lines are (printed), not in logging's raw
    "WARNING:name:" form; all of them are in info.metadata['skipped']."""
    if skipped:
        print(f"{name}: skipped {len(skipped)} file(s) (listed in info.metadata['skipped']): "
              + ", ".join(f"{s['path']} ({s['reason']})" for s in skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
              flush=True)


def png_pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)))[..., None]


def grouped_splits(records: Sequence[Record], pngs: Sequence[bytes], *, keys=None, fractions=None, given=None,
                   seed: int = 0, audit: bool = True) -> Tuple[List[str], Dict[str, object]]:
    """A split name per record such that near-duplicate images (found by the
    leakage audit) and records sharing a key (a patient) lie in one split;
    and what was done, for ``info.metadata["split"]``."""
    pairs = []
    if audit:
        pairs = [(i, j) for i, j, _ in audit_lib.find_duplicates([png_pixels(p) for p in pngs])]
    groups = splits.connected_groups(len(records), pairs, keys or ())
    labels = [r.label for r in records]
    names, moves = splits.grouped_split(labels, groups, fractions=fractions, given=given, seed=seed)
    sizes = np.bincount(groups)
    said = {
        "kind": "grouped",
        "grouped_by": (["near-duplicates (leakage audit)"] if audit else []) + (["patient"] if keys else []),
        "near_duplicate_pairs": len(pairs),
        "groups_of_several": int(np.sum(sizes > 1)),
        "examples_in_groups_of_several": int(np.sum(sizes[sizes > 1])),
        "seed": seed,
        "sizes": splits.split_summary(labels, names),
        "moves": [{"path": records[m.index].path, "from": m.source, "to": m.target, "reason": m.reason}
                  for m in moves],
    }
    if fractions is not None:
        said["fractions"] = dict(fractions)
    return names, said


# A field a record does not know: no boxes, hardware -1, empty text.
UNKNOWN_FIELD = {"boxes": np.zeros((0, 4), np.float32), "hardware": -1}


def stored_example(record: Record, png: bytes, extras: Sequence[str]) -> Dict[str, object]:
    example = {"image": png, "label": record.label, "filename": record.path}
    example.update((name, record.fields.get(name, UNKNOWN_FIELD.get(name, ""))) for name in extras)
    return example


class NoOpenCvAdvice(logging.Filter):
    """TFDS advises installing OpenCV on the first PNG it decodes (PIL
    decodes our 8-bit grey PNGs exactly), and warns of a "custom data
    configuration" for every user folder (``image_folder`` is made of them):
    noise here."""

    NOISE = ("OpenCV is not installed. We recommend", "Using custom data configuration: ImageFolderConfig",
             "Variant folder ")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOISE)


logging.getLogger("absl").addFilter(NoOpenCvAdvice())


class SaysWhatItPrepares:
    """TFDS announces "Downloading and preparing dataset Unknown size" for
    every builder; ours download nothing, so they say what they do instead."""

    def _preparing_what(self) -> str:
        raise NotImplementedError

    def _log_download_bytes(self) -> None:
        print(f"preparing {self.name}/{self.builder_config.name}: {self._preparing_what()} -> {self.data_dir}",
              flush=True)

    def _log_download_done(self) -> None:
        print(f"{self.name}/{self.builder_config.name} is ready in {self.data_dir}", flush=True)


def empty_split_error(name: str, root: str, split: str, records: Sequence[Record], skipped: Sequence[Dict[str, str]],
                      kind: Optional[str]) -> ValueError:
    """Why ``split`` came out empty: its own files were all unreadable (a set
    with given splits), or too few images to draw it (a set split here).
    TFDS itself would fail on an empty split with a bare AssertionError."""
    if kind not in ("given", "published"):
        return ValueError(f"{name}: no examples for the {split} split in {root} ({len(records) - len(skipped)} "
                          "readable images): too few images to split")
    own = {r.path for r in records if r.split == split}
    first = next((s for s in skipped if s["path"] in own), {"path": "-", "reason": "no files"})
    return ValueError(f"{name}: none of the {len(own)} image file(s) of the {split} split in {root} is readable "
                      f"(the first, {first['path']}: {first['reason']})")


class DecodedThenSplit(SaysWhatItPrepares):
    """A builder that lists its records, decodes them all, then splits them
    (grouped: a split can only be drawn once near-duplicates are known).
    Subclasses give ``EXTRAS``, ``_records`` and ``_assign``."""

    EXTRAS: Sequence[str] = ()
    DESCRIPTION = ""
    HOMEPAGE: Optional[str] = None

    def __init__(self, *, strict: bool = False, file_format=None, **kwargs):
        self.strict = strict  # an unreadable image: an error instead of a skipped file
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION,
            features=features_of(self.builder_config.image_size, self.EXTRAS),
            supervised_keys=("image", "label"), homepage=self.HOMEPAGE, metadata=tfds.core.MetadataDict(),
        )

    def _records(self, dl_manager) -> Tuple[str, List[Record], List[Dict[str, str]]]:
        """(root, records, files skipped while listing as {path, reason})."""
        raise NotImplementedError

    def _assign(self, records: List[Record], pngs: List[bytes]) -> Tuple[List[str], Dict[str, object]]:
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        root, records, unlisted = self._records(dl_manager)
        size = self.builder_config.image_size
        kept, pngs, skipped = decode_records(root, records, size, self.strict, self.name)
        names, said = self._assign(kept, pngs)
        empty = [s for s in SPLITS if s not in names]
        if empty:
            raise empty_split_error(self.name, root, empty[0], records, skipped, said.get("kind"))
        self.info.metadata["skipped"] = unlisted + skipped
        say_skipped(self.name, unlisted + skipped)
        self.info.metadata["split"] = said
        self.info.metadata["source_root"] = os.path.basename(os.path.normpath(root))
        return {split: self._generate_examples(kept, pngs, names, split) for split in SPLITS}

    def _generate_examples(self, records, pngs, names, split):
        for record, png, name in zip(records, pngs, names, strict=True):
            if name == split:
                yield record.path, stored_example(record, png, self.EXTRAS)
