"""Arrays in a notebook as a data folder: ``fit(config, data=(x, y))``.

Images given as arrays become PNG files in a folder of the layout
:mod:`fracjax.data.builders.image_folder` reads, so they take the same road as
a user's own folder: the same decoding, the same checks (unreadable images,
one class only, the leakage audit and its grouped split), the same numbers.
Each image's pixels go through :func:`fracjax.data.pixels.pixel_values` (the
rule ``predict`` applies to arrays: uint8 as is, wider integers rescaled from
their min..max, floats as 0..255 values) and are written as 8-bit grey or RGB
PNG, which decodes back to exactly those values.

The folder is named by a hash of the arrays, under ``$FRACJAX_CACHE/arrays``
(``~/.cache/fracjax``): the same arrays give the same folder (prepared once,
and a resumed run finds its data), other arrays another. Everything is checked
before the first file is written.

Splits: ``data`` alone is split by the folder builder (70/15/15, stratified,
near-duplicates kept together). With ``validation`` (and ``test``) the splits
are as given; a missing test split is drawn from ``data`` (a seeded,
stratified 15%), never taken from validation, which early stopping has seen.
"""

from __future__ import annotations

import hashlib
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from fracjax import caches
from fracjax.data.pixels import pixel_values
from fracjax.metrics import LABEL_NAMES

Pair = Tuple[Sequence, Sequence]
TEST_FRACTION = 0.15


def checked_images(images, labels, name: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """(uint8 images, int labels) of one split, or ValueError naming ``name`` and the example."""
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.dtype != object:
        images = list(images)  # (N, H, W) or (N, H, W, C)
    images = list(images)
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(images):
        raise ValueError(f"{name}: {len(images)} images but labels of shape {labels.shape}")
    if not np.isin(labels, (0, 1)).all() or labels.dtype.kind not in "biuf":
        raise ValueError(f"{name}: labels must be 0 (not fractured) or 1 (fractured), got {np.unique(labels)[:5]}")
    out = []
    for i, image in enumerate(images):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or min(array.shape[:2]) < 1:
            raise ValueError(f"{name}[{i}]: an image is (H, W) or (H, W, C) with C 1, 3 or 4, got {array.shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"{name}[{i}]: NaN or infinite pixels")
        out.append(pixel_values(array[..., :3] if array.ndim == 3 else array, f"{name}[{i}]"))
    if not out:
        raise ValueError(f"{name}: no images")
    return out, labels.astype(np.int64)


def _draw_test(images: List[np.ndarray], labels: np.ndarray, seed: int):
    """(train, test) of one split: a seeded 15% of each class as test."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(labels), bool)
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        test[rng.permutation(members)[:int(round(TEST_FRACTION * len(members)))]] = True
    pick = [(i for i in range(len(labels)) if not test[i]), (i for i in range(len(labels)) if test[i])]
    return [([images[i] for i in chosen], labels[chosen]) for chosen in (list(p) for p in pick)]


def layout(data: Pair, validation: Optional[Pair] = None, test: Optional[Pair] = None,
           seed: int = 0) -> Dict[Optional[str], Tuple[List[np.ndarray], np.ndarray]]:
    """{split folder (None: no split folders): (images, labels)}, every array checked."""
    splits = {"train": checked_images(*data, "data")}
    if validation is None and test is None:
        return {None: splits["train"]}
    if validation is not None:
        splits["val"] = checked_images(*validation, "validation")
    if test is not None:
        splits["test"] = checked_images(*test, "test")
    if validation is None or test is None:
        drawn = "test" if test is None else "val"
        (splits["train"], splits[drawn]) = _draw_test(*splits["train"], seed)
    return splits


def content_key(splits) -> str:
    digest = hashlib.sha256()
    for split in sorted(splits, key=str):
        images, labels = splits[split]
        digest.update(f"{split}:{len(images)}:".encode() + labels.tobytes())
        for image in images:
            digest.update(str(image.shape).encode() + image.tobytes())
    return digest.hexdigest()[:20]


def write_array_folder(data: Pair, validation: Optional[Pair] = None, test: Optional[Pair] = None,
                       seed: int = 0, root: Optional[str] = None) -> str:
    """The folder holding these arrays as PNG files (written once; the same arrays, the same folder)."""
    from PIL import Image

    splits = layout(data, validation, test, seed)
    folder = os.path.join(root or os.path.join(caches.cache_root(), "arrays"), content_key(splits))
    if os.path.isfile(os.path.join(folder, ".complete")):
        return folder
    partial = f"{folder}.partial-{os.getpid()}"
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            where = os.path.join(partial, *([split] if split else []), LABEL_NAMES[int(label)])
            os.makedirs(where, exist_ok=True)
            Image.fromarray(image).save(os.path.join(where, f"{i:06d}.png"))
    open(os.path.join(partial, ".complete"), "w").close()
    try:
        os.rename(partial, folder)  # whole or not at all: a crash leaves a .partial folder, never a half one
    except OSError:  # another process wrote the same arrays first
        import shutil

        shutil.rmtree(partial, ignore_errors=True)
    return folder
