"""TFDS builder ``mura``: Stanford's MURA v1.1 musculoskeletal radiographs,
from the folder the user downloaded (``manual_dir`` holding ``MURA-v1.1/``).

Labels belong to studies (``{split}_labeled_studies.csv``: study folder,
0/1); every image of a study gets its study's label. Examples carry the body
part, the patient and the study, so that evaluation can report study-level
metrics per body part and resample patients. The public ``valid`` set is
the test split; the validation split is carved from ``train`` by patient
(no patient in both), stratified by class.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

from fracjax.data import splits
from fracjax.data.builders import base
from fracjax.data.builders.base import Record

SOURCE_SPLITS = ("train", "valid")
STUDY_FOLDER = re.compile(r"^study\d+_(positive|negative)$", re.IGNORECASE)


def find_mura_root(manual_dir: str, max_depth: int = 3) -> str:
    """``MURA-v1.1`` inside ``manual_dir`` (or ``manual_dir`` itself): the
    folder holding ``train/`` and ``valid/``."""
    def holds_splits(folder, names):
        return {"train", "valid"} <= {n.lower() for n in names if os.path.isdir(os.path.join(folder, n))}

    found = base.search_down(manual_dir, holds_splits, max_depth)
    if found is None:
        raise FileNotFoundError(f"no MURA-v1.1 folder (with train/ and valid/) inside {manual_dir}; "
                                f"unzip the MURA download ({base.MURA_URL}) there")
    return found


def _inside(root: str, listed: str) -> str:
    """A path as the CSVs list it (``MURA-v1.1/train/...``) relative to ``root``."""
    parts = [p for p in listed.strip().replace("\\", "/").split("/") if p]
    for i, part in enumerate(parts):
        if part.lower() in SOURCE_SPLITS:
            return "/".join(parts[i:])
    return "/".join(parts)


def study_labels(root: str, split: str) -> Optional[Dict[str, int]]:
    """{study folder relative to root: 0/1} from ``{split}_labeled_studies.csv``
    (no header), None when the file is missing; a bad row is an error naming
    the file and line."""
    path = os.path.join(root, f"{split}_labeled_studies.csv")
    if not os.path.exists(path):
        return None
    out = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or row[1].strip() not in ("0", "1"):
                raise ValueError(f"{path}:{line}: expected 'study folder,0|1', got {','.join(row)!r}")
            out[_inside(root, row[0]).rstrip("/")] = int(row[1])
    return out


def _listed_images(root: str, split: str) -> Optional[List[Tuple[str, int]]]:
    """(path relative to root, line) of ``{split}_image_paths.csv``, None when missing."""
    path = os.path.join(root, f"{split}_image_paths.csv")
    if not os.path.exists(path):
        return None
    with open(path, newline="") as f:
        return [(_inside(root, row[0]), line) for line, row in enumerate(csv.reader(f), start=1)
                if row and row[0].strip()]


def _walked_images(root: str, split: str) -> List[Tuple[str, int]]:
    return [(rel, 0) for rel in base.files_under(os.path.join(root, split), root, (".png",))]


def _record(rel: str, labels: Optional[Dict[str, int]], split: str) -> Tuple[Optional[Record], str]:
    """The record of one image path, or (None, why it is skipped)."""
    parts = rel.split("/")
    if len(parts) != 5 or not STUDY_FOLDER.match(parts[3]):
        return None, "not in the MURA layout train|valid/XR_<PART>/patient<N>/study<N>_<positive|negative>/"
    study = "/".join(parts[:4])
    if labels is not None:
        if study not in labels:
            return None, f"its study is not in {split}_labeled_studies.csv"
        label = labels[study]
    else:
        label = int(STUDY_FOLDER.match(parts[3]).group(1).lower() == "positive")
    part = re.sub(r"^xr_", "", parts[1].lower())
    return Record(rel, label, {"patient": parts[2], "study": study, "body_part": part}, split), ""


def list_mura(root: str) -> Tuple[List[Record], List[Dict[str, str]]]:
    """Every image of train and valid with its study's label, and the files
    skipped (listed but missing, or outside the layout) with the reason."""
    records, skipped = [], []
    for split in SOURCE_SPLITS:
        labels = study_labels(root, split)
        listed = _listed_images(root, split)
        for rel, line in listed if listed is not None else _walked_images(root, split):
            where = f"{split}_image_paths.csv line {line}" if line else rel
            if os.path.basename(rel).startswith("."):
                skipped.append({"path": rel, "reason": "a hidden file (macOS metadata), not an image"})
            elif not os.path.isfile(os.path.join(root, rel)):
                skipped.append({"path": rel, "reason": f"listed in {where} but missing"})
            else:
                record, why = _record(rel, labels, split)
                if record is None:
                    skipped.append({"path": rel, "reason": why})
                else:
                    records.append(record)
    if not any(r.split == "train" for r in records) or not any(r.split == "valid" for r in records):
        raise FileNotFoundError(f"{root}: no MURA images in train/ and valid/ ({len(records)} found)")
    return records, skipped


@dataclasses.dataclass
class MuraConfig(tfds.core.BuilderConfig):
    image_size: int = 224
    validation_fraction: float = 0.1  # of train's patients, carved off as validation
    seed: int = 0


class Mura(base.DecodedThenSplit, tfds.core.GeneratorBasedBuilder):
    """MURA v1.1 (40,561 images, 14,863 studies, 12,173 patients, seven upper
    extremity parts), image-level examples with body part, patient and study."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Images with study labels, body part, patient and study ids; patient-grouped validation."}
    BUILDER_CONFIGS = [
        MuraConfig(name="224", description="Images resized to 224x224; validation: 10% of train's patients."),
        MuraConfig(name="320", image_size=320, description="Images resized to 320x320 (the MURA paper's size)."),
    ]
    DEFAULT_CONFIG_NAME = "224"
    DESCRIPTION = ("MURA v1.1: upper-extremity radiographs labelled normal/abnormal per study by radiologists "
                   "(abnormal is stored as label 1). Test = the public valid set; validation = a patient-grouped "
                   "tenth of train.")
    HOMEPAGE = base.MURA_URL
    EXTRAS = ("patient", "study", "body_part")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Request and download MURA v1.1 from {base.MURA_URL}, unzip it, and pass
    the folder holding MURA-v1.1/ (or MURA-v1.1/ itself) as manual_dir.
    """

    def _preparing_what(self) -> str:
        size = self.builder_config.image_size
        return f"decoding MURA-v1.1's images to {size}x{size} grey, splitting train by patient (no download)"

    def _records(self, dl_manager):
        root = find_mura_root(dl_manager.manual_dir)
        records, skipped = list_mura(root)
        return root, records, skipped

    def _assign(self, records, pngs):
        c = self.builder_config
        train = [i for i, r in enumerate(records) if r.split == "train"]
        groups = splits.connected_groups(len(train), keys=[records[i].fields["patient"] for i in train])
        fractions = {"train": 1.0 - c.validation_fraction, "validation": c.validation_fraction}
        carved, _ = splits.grouped_split([records[i].label for i in train], groups, fractions=fractions, seed=c.seed)
        names = ["test"] * len(records)
        for i, name in zip(train, carved, strict=True):
            names[i] = name
        labels = [r.label for r in records]
        said = {"kind": "grouped", "grouped_by": ["patient"], "test": "the public valid set",
                "fractions": fractions, "seed": c.seed, "sizes": splits.split_summary(labels, names), "moves": []}
        return names, said
