"""Your own data: a folder of class subfolders, or a CSV of
``path,label[,patient][,study][,split]``, as a TFDS data set (``image_folder``).

    builder = fracjax.data.from_folder("xrays/")           # class subfolders
    builder = fracjax.data.from_folder("xrays/labels.csv")  # a CSV beside the images

Folders: ``<class>/`` or ``<split>/<class>/`` (``train``, ``val``/``validation``,
``test``, any case); class names such as ``fractured``, ``fracture``,
``positive``, ``abnormal``, ``1`` mean fractured and ``not fractured``,
``normal``, ``negative``, ``0`` mean not. Images: PNG, JPEG, BMP, TIFF, DICOM.
CSV paths are relative to the CSV's folder and must stay inside it.

Splits: as given (the split folders or column), else a seeded, stratified
70/15/15 split that keeps each patient (the CSV's column, else DICOM
PatientID) and each group of near-duplicate images (the leakage audit) in one
split. Unreadable images and rows naming missing files are skipped and listed
in ``info.metadata["skipped"]``; a malformed CSV row is an error naming the
file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import re
from typing import Dict, Iterator, List, Tuple

import tensorflow_datasets as tfds

from fracjax.data import splits
from fracjax.data.builders import base
from fracjax.data.builders.base import Record, class_files, class_label, subfolders
from fracjax.data.io import DICOM_EXTENSIONS
from fracjax.data.splits import SPLIT_FOLDERS


def list_folder(root: str) -> List[Record]:
    """Records of ``root/<class>/`` or ``root/<split>/<class>/``."""
    folders = {n: SPLIT_FOLDERS[n.lower()] for n in subfolders(root) if n.lower() in SPLIT_FOLDERS} or {"": None}
    records = [Record(rel, label, {}, split) for n, split in folders.items()
               for rel, label in class_files(root, os.path.join(root, n), allow_empty=False)]
    _need_both_classes(records, root)
    return records


def _need_both_classes(records: List[Record], where: str) -> None:
    for label, name in ((1, "fractured"), (0, "not fractured")):
        if not any(r.label == label for r in records):
            raise ValueError(f"{where}: no {name} images (an empty class); both classes are needed")


def _csv_row(row: Dict[str, str], root: str, where: str) -> Tuple[str, Record]:
    """(the row's path as written, its record); errors name ``where`` (file:line)."""
    if any("\x00" in value for value in row.values() if isinstance(value, str)):
        raise ValueError(f"{where}: a NUL byte in the row (not a text CSV)")
    path = (row.get("path") or "").strip()
    if not path:
        raise ValueError(f"{where}: empty path")
    full = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([full, os.path.realpath(root)]) != os.path.realpath(root):
        raise ValueError(f"{where}: path {path!r} is outside the CSV's folder {root}")
    label = class_label(row.get("label") or "")
    if label is None:
        raise ValueError(f"{where}: label must be 0 or 1 (or a class name), got {row.get('label')!r}")
    split = None
    if (row.get("split") or "").strip():
        split = SPLIT_FOLDERS.get(row["split"].strip().lower())
        if split is None:
            raise ValueError(f"{where}: split must be train, val/validation or test, got {row['split']!r}")
    fields = {k: row[k].strip() for k in ("patient", "study") if (row.get(k) or "").strip()}
    rel = os.path.relpath(full, os.path.realpath(root)).replace(os.sep, "/")
    return path, Record(rel, label, fields, split)


def _csv_rows(csv_path: str) -> Iterator[Tuple[int, Dict[str, str]]]:
    """(line number, row with lower-case column names) of each row that is not blank; a file
    that is not a CSV of text (a NUL byte, a field past the csv module's limit, bytes that are
    not UTF-8) is a ValueError naming the line."""
    reader = None
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [(c or "").strip().lower() for c in reader.fieldnames or []]
            if "path" not in columns or "label" not in columns:
                raise ValueError(f"{csv_path}:1: the header must name the columns path,label[,patient][,study]"
                                 f"[,split], got {','.join(columns) or 'nothing'}")
            for raw in reader:
                row = {(k or "").strip().lower(): (v or "") for k, v in raw.items() if k is not None}
                if any(isinstance(v, str) and v.strip() for v in row.values()):
                    yield reader.line_num, row
    except csv.Error as err:
        where = reader.line_num + 1 if reader else 1  # the failing row starts after the last line read
        raise ValueError(f"{csv_path}:{where}: not a readable CSV row ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{csv_path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def list_csv(csv_path: str) -> Tuple[str, List[Record], List[Dict[str, str]]]:
    """(root: the CSV's folder, records, rows naming missing files as {path, reason})."""
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"--data-csv: no such file {csv_path}")
    root = os.path.dirname(os.path.abspath(csv_path))
    records, skipped, lines = [], [], {}
    for line, row in _csv_rows(csv_path):
        written, record = _csv_row(row, root, f"{csv_path}:{line}")
        if record.path in lines:  # one image with two rows: which label, which split?
            raise ValueError(f"{csv_path}:{line}: {written!r} is listed again (first on line "
                             f"{lines[record.path]}); list each image once")
        lines[record.path] = line
        if os.path.isfile(os.path.join(root, record.path)):
            records.append(record)
        else:
            skipped.append({"path": written, "reason": f"listed in {os.path.basename(csv_path)} line {line} "
                                                       "but missing"})
    given = {r.split is not None for r in records}
    if len(given) > 1:
        raise ValueError(f"{csv_path}: some rows name a split and some do not; give every row one or none")
    _need_both_classes(records, csv_path)
    return root, records, skipped


def dicom_patients(root: str, records: List[Record]) -> List[Record]:
    """Records with the DICOM PatientID (and StudyInstanceUID) of their files,
    where the row did not give them."""
    import pydicom

    out = []
    for r in records:
        if r.path.lower().endswith(DICOM_EXTENSIONS) and "patient" not in r.fields:
            try:
                head = pydicom.dcmread(os.path.join(root, r.path), stop_before_pixels=True)
            except Exception:  # unreadable: decoding reports it
                out.append(r)
                continue
            fields = dict(r.fields)
            for key, tag in (("patient", "PatientID"), ("study", "StudyInstanceUID")):
                if str(getattr(head, tag, "") or "").strip() and key not in fields:
                    fields[key] = str(getattr(head, tag)).strip()
            r = dataclasses.replace(r, fields=fields)
        out.append(r)
    return out


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    source: str = ""  # a folder or a CSV file
    image_size: int = 224
    fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    audit: bool = True  # group near-duplicates when drawing a split


class ImageFolder(base.DecodedThenSplit, tfds.core.GeneratorBasedBuilder):
    """A user's folder or CSV of X-rays (see the module's docstring); made
    through :func:`from_folder`, which names the configuration after the source."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Class folders or a CSV; given or grouped splits; patient and study ids."}
    BUILDER_CONFIGS = [ImageFolderConfig(name="unset", description="made by fracjax.data.from_folder")]
    EXTRAS = ("patient", "study")

    def _preparing_what(self) -> str:
        c = self.builder_config
        return f"decoding {c.source} to {c.image_size}x{c.image_size} grey"

    @property
    def DESCRIPTION(self) -> str:  # noqa: N802  (the builders' class attribute, per source here)
        return f"X-rays from {self.builder_config.source}"

    def _records(self, dl_manager):
        source = self.builder_config.source
        if os.path.isdir(source):
            root, records, skipped = source, list_folder(source), []
        else:
            root, records, skipped = list_csv(source)
        return root, dicom_patients(root, records), skipped

    def _assign(self, records, pngs):
        c = self.builder_config
        if records[0].split is not None:
            names = [r.split for r in records]
            return names, {"kind": "given", "sizes": splits.split_summary([r.label for r in records], names)}
        keys = [r.fields.get("patient") for r in records]
        return base.grouped_splits(records, pngs, keys=keys if any(keys) else None,
                                   fractions=dict(zip(base.SPLITS, c.fractions, strict=True)), seed=c.seed,
                                   audit=c.audit)


def folder_config(source: str, image_size: int = 224, seed: int = 0, audit: bool = True) -> ImageFolderConfig:
    """The configuration of ``source``: named after its path, size, seed and contents (one
    prepared copy per source in the TFDS data_dir, made again when a label, a row or a file
    changes: :func:`contents_digest`)."""
    path = os.path.abspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such folder or CSV file: {source}")
    return ImageFolderConfig(name=f"{config_prefix(path, image_size, seed, audit)}{contents_digest(path)}", source=path,
                             image_size=image_size, seed=seed, audit=audit, description=f"X-rays from {path}")


def config_prefix(path: str, image_size: int, seed: int, audit: bool) -> str:
    """What the names of every prepared copy of ``path`` at these settings start with."""
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(path.rstrip(os.sep)).lower()).strip("_")[:40] or "data"
    return f"{slug}_{image_size}_{hashlib.sha256(f'{path}|{image_size}|{seed}|{audit}'.encode()).hexdigest()[:10]}_"


def contents_digest(path: str) -> str:
    """A digest of what a build reads from ``path``: a CSV's bytes, and the relative path, size and
    modification time of every image file it lists (or the folder holds)."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        root, files = path, [r.path for r in list_folder(path)]
    else:
        with open(path, "rb") as f:
            digest.update(f.read())
        root, records, _ = list_csv(path)
        files = [r.path for r in records]
    for rel in sorted(files):
        stat = os.stat(os.path.join(root, rel))
        digest.update(f"{rel}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:10]
