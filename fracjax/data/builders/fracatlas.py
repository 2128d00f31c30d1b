"""TFDS builder ``fracatlas``: FracAtlas (Abedeen et al., Sci Data 2023), from
the unzipped archive (``manual_dir``).

What it reads: ``dataset.csv`` (one row per image: ``image_id``, the region
flags ``hand leg hip shoulder mixed``, ``hardware``, ``multiscan``,
``fractured``, ``fracture_count``, the view flags ``frontal lateral
oblique``), the images under ``images/Fractured`` and ``images/Non_fractured``,
and the fracture boxes from ``Annotations/`` (YOLO ``.txt``, else PASCAL VOC
``.xml``). FracAtlas has no classification split: the default one is drawn
here, grouped (near-duplicate X-rays, found by the leakage audit, stay in one
split), stratified by class, 70/15/15, seeded.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import xml.etree.ElementTree as ElementTree
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from fracjax.data.builders import base
from fracjax.data.builders.base import Record

REGIONS = ("hand", "leg", "hip", "shoulder")
VIEWS = ("frontal", "lateral", "oblique")
NEEDED_COLUMNS = ("image_id", "fractured")


def find_fracatlas_root(manual_dir: str, max_depth: int = 3) -> str:
    """The folder holding ``dataset.csv`` (any case), ``manual_dir`` or below."""
    found = base.search_down(manual_dir, lambda _, names: "dataset.csv" in {n.lower() for n in names}, max_depth)
    if found is None:
        raise FileNotFoundError(f"no dataset.csv inside {manual_dir}; unzip the FracAtlas archive "
                                f"({base.FRACATLAS_URL}) there")
    return found


def _files_by_name(folder: str) -> Dict[str, str]:
    """{lower-case file name: path relative to ``folder``'s parent}, walking ``folder``."""
    out: Dict[str, str] = {}
    for rel in base.files_under(folder, os.path.dirname(folder), extensions=None):
        out.setdefault(rel.rsplit("/", 1)[-1].lower(), rel)
    return out


def _child(root: str, name: str) -> Optional[str]:
    for n in os.listdir(root):
        if n.lower() == name and os.path.isdir(os.path.join(root, n)):
            return os.path.join(root, n)
    return None


def yolo_boxes(text: str, where: str) -> np.ndarray:
    """YOLO rows ``class cx cy w h`` (normalised) -> (N, 4) (ymin, xmin, ymax, xmax)."""
    rows = []
    for line, row in enumerate(text.splitlines(), start=1):
        if not row.strip():
            continue
        try:
            _, cx, cy, w, h = (float(v) for v in row.split()[:5])
        except ValueError:
            raise ValueError(f"{where}:{line}: expected 'class cx cy w h', got {row!r}") from None
        rows.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
    return np.clip(np.asarray(rows, np.float32).reshape(-1, 4), 0.0, 1.0)


def voc_boxes(text: str, where: str) -> np.ndarray:
    """PASCAL VOC XML (pixel boxes and the image size) -> (N, 4) normalised."""
    try:
        tree = ElementTree.fromstring(text)
        width, height = float(tree.findtext("size/width")), float(tree.findtext("size/height"))
        rows = [[float(o.findtext(f"bndbox/{k}")) for k in ("ymin", "xmin", "ymax", "xmax")]
                for o in tree.iter("object")]
    except (ElementTree.ParseError, TypeError, ValueError) as err:
        raise ValueError(f"{where}: not a PASCAL VOC annotation ({err})") from None
    boxes = np.asarray(rows, np.float32).reshape(-1, 4) / np.asarray([height, width, height, width], np.float32)
    return np.clip(boxes, 0.0, 1.0)


def _flag(row: Dict[str, str], column: str, where: str) -> int:
    value = (row.get(column) or "0").strip()
    if value not in ("0", "1"):
        raise ValueError(f"{where}: column {column!r} must be 0 or 1, got {value!r}")
    return int(value)


def _fields(row: Dict[str, str], where: str) -> Dict[str, object]:
    regions = [r for r in REGIONS if _flag(row, r, where)]
    part = "mixed" if _flag(row, "mixed", where) or len(regions) > 1 else (regions[0] if regions else "unknown")
    view = "+".join(v for v in VIEWS if _flag(row, v, where)) or "unknown"
    return {"body_part": part, "view": view, "hardware": _flag(row, "hardware", where)}


def _boxes(stem: str, annotations: Dict[str, str], root: str) -> np.ndarray:
    for ext, parse in ((".txt", yolo_boxes), (".xml", voc_boxes)):
        rel = annotations.get(stem + ext)
        if rel is not None:
            with open(os.path.join(root, rel)) as f:
                return parse(f.read(), rel)
    return np.zeros((0, 4), np.float32)


def list_fracatlas(root: str) -> Tuple[List[Record], List[Dict[str, str]]]:
    """Every row of dataset.csv whose image exists, with its fields and boxes;
    rows whose image is missing are skipped with the reason."""
    csv_name = next(n for n in os.listdir(root) if n.lower() == "dataset.csv")
    csv_path = os.path.join(root, csv_name)
    images = _child(root, "images")
    if images is None:
        raise FileNotFoundError(f"{root}: no images/ folder beside {csv_name}")
    files = _files_by_name(images)
    annotation_folder = _child(root, "annotations")
    annotations = _files_by_name(annotation_folder) if annotation_folder is not None else {}
    records, skipped = [], []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        missing = [c for c in NEEDED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{csv_path}: no column(s) {missing} (found {columns})")
        for line, raw in enumerate(reader, start=2):
            row = {(k or "").strip().lower(): (v or "") for k, v in raw.items()}
            where = f"{csv_path}:{line}"
            image_id = row["image_id"].strip()
            rel = files.get(image_id.lower())
            if rel is None:
                skipped.append({"path": image_id, "reason": f"listed in {csv_name} line {line} but missing"})
                continue
            fields = _fields(row, where)
            fields["boxes"] = _boxes(os.path.splitext(image_id.lower())[0], annotations, root)
            records.append(Record(rel, _flag(row, "fractured", where), fields))
    if not records:
        raise FileNotFoundError(f"{csv_path}: none of its images is in {images}")
    return records, skipped


@dataclasses.dataclass
class FracAtlasConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    fractions: Tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, validation, test
    seed: int = 0


class FracAtlas(base.DecodedThenSplit, tfds.core.GeneratorBasedBuilder):
    """FracAtlas: 4,083 radiographs (717 fractured) of hand, leg, hip and
    shoulder, with body part, view, hardware and the fracture boxes."""

    name = "fracatlas"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Grouped 70/15/15 split; body part, view, hardware, boxes."}
    BUILDER_CONFIGS = [FracAtlasConfig(name="224", description="224x224; a grouped, stratified 70/15/15 split.")]
    DEFAULT_CONFIG_NAME = "224"
    DESCRIPTION = ("FracAtlas: musculoskeletal radiographs labelled fractured / not fractured, with fracture "
                   "boxes. No official classification split: a grouped, stratified one.")
    HOMEPAGE = base.FRACATLAS_URL
    EXTRAS = ("body_part", "view", "hardware", "boxes")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Download FracAtlas.zip from {base.FRACATLAS_URL}, unzip it, and pass the
    folder holding dataset.csv and images/ (or any folder above it) as manual_dir.
    """

    def _preparing_what(self) -> str:
        size = self.builder_config.image_size
        return f"decoding FracAtlas to {size}x{size} grey, auditing near-duplicates, a grouped split (no download)"

    def _records(self, dl_manager):
        root = find_fracatlas_root(dl_manager.manual_dir)
        records, skipped = list_fracatlas(root)
        return root, records, skipped

    def _assign(self, records, pngs):
        c = self.builder_config
        fractions = dict(zip(base.SPLITS, c.fractions, strict=True))
        return base.grouped_splits(records, pngs, fractions=fractions, seed=c.seed)
