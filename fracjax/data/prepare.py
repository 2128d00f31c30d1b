"""A TFDS set made ready for training: prepared once (the real sets from the
folder the user downloaded, ``manual_dir``; the synthetic set generated), then
its three splits as indexable sources, optionally cut, resized and held in
memory.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fracjax.data import pipeline
from fracjax.data.io import model_input
from fracjax.data.splits import SPLITS


class SubsetSource:
    """The first ``n`` examples of a source."""

    def __init__(self, source, n: int):
        self.source, self.n = source, min(n, len(source))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.source[i]


def prepare_dataset(name: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                    log: Callable[[str], None] = print):
    """Prepare the TFDS set ``name`` if it is missing; return its builder.
    Errors name the flag to change (``--dataset``, ``--manual-dir``)."""
    import tensorflow_datasets as tfds

    from fracjax.data import builders  # noqa: F401  (registers the builders)

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:
        raise ValueError(f"--dataset: cannot load {name!r} ({pipeline.first_line(err)}); fracjax's data sets: "
                         "synthetic_fracture, fracture_xray, fracatlas, mura (or any TFDS name)") from None
    if builder.is_prepared():
        return builder
    download_config = None
    download = builders.MANUAL_SETS.get(name.split("/")[0])
    if download is not None:
        if not manual_dir:
            raise FileNotFoundError(f"{name} is not prepared in {builder.data_dir}; pass --manual-dir with the "
                                    f"folder holding {download}")
        if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
            raise FileNotFoundError(
                f"--manual-dir {manual_dir} is {'empty' if os.path.isdir(manual_dir) else 'missing'}"
                f": it should hold {download}"
            )
        download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    return prepare_builder(builder, download_config, log)


def prepare_builder(builder, download_config=None, log: Callable[[str], None] = print):
    """Prepare ``builder`` unless it is; return it."""
    import tensorflow_datasets as tfds

    if builder.is_prepared():
        return builder
    start = time.perf_counter()
    # TFDS's own bars (one per split, plus shuffling) say less than the
    # builder's line and flood a notebook; training has its own bars.
    tfds.display_progress_bar(False)
    made = _first_missing_folder(builder)
    try:
        builder.download_and_prepare(download_config=download_config)  # says what it prepares, from where
    except BaseException:
        # TFDS removes its own temporary folder, not the set's folders it made around it: an empty
        # fracture_xray/ would look prepared-but-broken to the next run.
        if made is not None and os.path.isdir(made):
            shutil.rmtree(made, ignore_errors=True)
            log(f"preparation failed: removed {made}, which it had made")
        raise
    log(f"prepared in {time.perf_counter() - start:.0f} s")
    return builder


def _first_missing_folder(builder) -> Optional[str]:
    """The outermost of the set's folders (name/config/version, under the data dir) that does not exist yet."""
    root = os.path.abspath(str(builder.data_dir_root))
    missing, folder = None, os.path.abspath(str(builder.data_dir))
    while folder.startswith(root + os.sep) and not os.path.exists(folder):
        missing, folder = folder, os.path.dirname(folder)
    return missing


def load_source(dataset: str, split: str, data_dir: Optional[str] = None):
    """``tfds.data_source`` of a prepared data set (array_record; no TensorFlow)."""
    import tensorflow_datasets as tfds

    from fracjax.data import builders  # noqa: F401  (registers our builders)

    try:
        return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
    except Exception as err:
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise FileNotFoundError(
            f"data set {dataset!r} split {split!r} is not prepared under {where} ({pipeline.first_line(err)})"
        ) from None


def available_splits(dataset: str, data_dir: Optional[str] = None) -> List[str]:
    """The splits a prepared data set holds (train, validation, test for fracjax's builders)."""
    import tensorflow_datasets as tfds

    from fracjax.data import builders  # noqa: F401  (registers our builders)

    try:
        return list(tfds.builder(dataset, data_dir=data_dir).info.splits)
    except Exception as err:
        raise FileNotFoundError(f"data set {dataset!r} is not prepared ({pipeline.first_line(err)})") from None


def from_folder(source: str, image_size: int = 224, data_dir: Optional[str] = None, seed: int = 0,
                audit: bool = True, strict: bool = False, log=print):
    """Prepare (once) and return the TFDS builder of a folder or CSV of X-rays."""
    from fracjax.data.builders.image_folder import ImageFolder, config_prefix, folder_config

    config = folder_config(source, image_size, seed, audit)
    builder = ImageFolder(config=config, data_dir=data_dir, strict=strict)
    if not builder.is_prepared():
        configs = os.path.dirname(os.path.dirname(str(builder.data_dir)))
        prefix = config_prefix(config.source, image_size, seed, audit)
        earlier = sorted(n for n in os.listdir(configs) if n.startswith(prefix)) if os.path.isdir(configs) else []
        if earlier:
            log(f"{source} changed since it was prepared (a row, a label or a file differs): preparing it again "
                f"(the earlier copy stays in {os.path.join(configs, earlier[-1])}; delete it to free the space)")
    return prepare_builder(builder, None, log)


def stored_image_size(builder) -> int:
    return int(builder.info.features["image"].shape[0])


def load_splits(builder, train_examples: Optional[int] = None, image_size: Optional[int] = None,
                in_memory: bool = False) -> Dict[str, Any]:
    """{"train", "validation", "test"} sources: the first ``train_examples``
    of train, every image at ``image_size`` (default: as stored; resized
    through :func:`fracjax.data.io.model_input`, the one preprocessing)."""
    sources = builder.as_data_source()
    missing = [s for s in SPLITS if s not in sources]
    if missing:
        raise ValueError(f"--dataset {builder.info.full_name}: no split(s) {missing}")
    splits = {s: sources[s] for s in SPLITS}
    empty = [s for s in SPLITS if len(splits[s]) == 0]
    if empty:
        raise ValueError(f"--dataset {builder.info.full_name}: no examples in split(s) {empty} "
                         f"({', '.join(f'{s} {len(splits[s])}' for s in SPLITS)}); were its files unreadable? "
                         "(see the builder's info.metadata['skipped'])")
    if train_examples:
        splits["train"] = SubsetSource(splits["train"], train_examples)
    stored = stored_image_size(builder)
    size = image_size or stored
    for split, source in list(splits.items()):
        if in_memory or size != stored:
            source = pipeline.load_arrays(source)
            if size != stored:
                source = _resized(source, size)
        splits[split] = source
    return splits


def class_counts(source) -> np.ndarray:
    """Examples per class (index = label) of a source; an in-memory one
    answers from its labels, a TFDS one is read once."""
    labels = getattr(source, "labels", None)
    if labels is None:
        labels = np.array([int(source[i]["label"]) for i in range(len(source))], np.int64)
    return np.bincount(np.asarray(labels, np.int64), minlength=2)


def check_classes(splits: Dict[str, Any], dataset: str, class_names, need=("train", "validation")) -> Dict[str, list]:
    """Both classes in each split of ``need`` (training learns one class
    from one-class data; validation AUROC is undefined without both), else a
    ValueError naming the split, the class and every split's counts.
    Returns {split: per-class counts}."""
    counts = {split: class_counts(source).tolist() for split, source in splits.items()}
    said = "; ".join(f"{split}: " + ", ".join(f"{n} {name}" for n, name in zip(c, class_names, strict=True))
                     for split, c in counts.items())
    for split in need:
        missing = [name for n, name in zip(counts[split], class_names, strict=True) if n == 0]
        if missing:
            raise ValueError(f"--dataset {dataset}: the {split} split has no {' and no '.join(missing)} "
                             f"examples ({said}); training needs both classes in train and validation")
    return counts


def _resized(source: pipeline.ArraySource, size: int) -> pipeline.ArraySource:
    images = np.stack([model_input(im, size) for im in source.images])
    return pipeline.ArraySource(images, source.labels, source.filenames, source.fields)
