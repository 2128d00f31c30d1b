"""Sample X-rays to try fracjax on: labelled synthetic radiographs written in every format
fracjax reads, so that each README snippet and command runs on files that exist.

    fracjax samples samples/            # or fracjax.data.samples("samples/")
    fracjax predict RUN samples/        # a folder: every image file in it, recursively

``samples/fractured/`` and ``samples/not_fractured/`` (class folders, as ``--data-folder``
takes them) hold, for each class: an 8-bit PNG, a 16-bit PNG (what a radiograph exported at full
depth is), a JPEG and a DICOM file (CR modality, 12 bits stored, a window centre and width, a
patient id), and ``labels.csv`` beside them lists every file with its label and patient (the CSV
form of ``--data-csv``). They are drawn by the synthetic generator (the embedded default data
set), each from its own seed, so they are the same on every machine. Nothing is overwritten: a
file already at one of the names refuses the whole call before anything is written.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
from typing import Dict, List

import numpy as np

from fracjax.data.synthetic import SyntheticConfig, generate_image

FORMATS = ("png8", "png16", "jpeg", "dicom")
SUFFIXES = {"png8": ".png", "png16": "_16bit.png", "jpeg": ".jpg", "dicom": ".dcm"}
CLASS_FOLDERS = {1: "fractured", 0: "not_fractured"}
SEED = 20251203


def _png(image: np.ndarray, bits: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    if bits == 16:  # the 8-bit radiograph spread over 16 bits, with the low bits of a real detector
        low = np.random.default_rng(int(image.sum())).integers(0, 257, image.shape)
        wide = np.clip(image.astype(np.int64) * 257 + low - 128, 0, 65535).astype(np.uint16)
        Image.fromarray(wide).save(buffer, format="PNG")  # uint16: mode I;16
    else:
        Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _dicom(image: np.ndarray, patient: str, label: int) -> bytes:
    """A CR image: 12 bits stored in 16, MONOCHROME2, with the window that shows it all."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[patient, str(label)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[patient, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[patient, "series"])
    ds.Modality, ds.PatientID, ds.PatientName = "CR", patient, "Sample^Synthetic"
    ds.StudyDate = datetime.date(2025, 12, 3).strftime("%Y%m%d")
    ds.ImageComments = f"fracjax synthetic sample, {CLASS_FOLDERS[label]}"
    stored = (image.astype(np.uint16) * 16 + 8).astype(np.uint16)  # 0..4088 in 12 bits
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _encode(fmt: str, image: np.ndarray, patient: str, label: int) -> bytes:
    if fmt == "png8":
        return _png(image, 8)
    if fmt == "png16":
        return _png(image, 16)
    if fmt == "jpeg":
        return _jpeg(image)
    return _dicom(image, patient, label)


def plan(per_class: int = 1, image_size: int = 256) -> List[Dict[str, object]]:
    """What :func:`samples` writes: one row per file (path relative to its folder, label, patient,
    format), in writing order."""
    if per_class < 1 or image_size < 32:
        raise ValueError(f"samples: per_class must be >= 1 and image_size >= 32, got {per_class}, {image_size}")
    rows = []
    for label in (1, 0):
        for i in range(per_class):
            for k, fmt in enumerate(FORMATS):
                patient = f"SAMPLE{label}{i:02d}{k}"
                name = f"{CLASS_FOLDERS[label]}_{i + 1:02d}{SUFFIXES[fmt]}"
                rows.append({"path": f"{CLASS_FOLDERS[label]}/{name}", "label": label, "patient": patient,
                             "format": fmt, "seed": SEED + 100 * label + 10 * i + k})
    return rows


def samples(folder: str, per_class: int = 1, image_size: int = 256) -> List[str]:
    """Write the sample X-rays into ``folder`` (created if needed); the paths written. Refused,
    with nothing written, where any of them (or ``labels.csv``) exists already."""
    rows = plan(per_class, image_size)
    targets = [os.path.join(folder, r["path"]) for r in rows] + [os.path.join(folder, "labels.csv")]
    taken = [t for t in targets if os.path.lexists(t)]
    if taken:
        raise FileExistsError(f"samples: {taken[0]} exists already (and {len(taken) - 1} more); nothing written, "
                              f"choose another folder")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise NotADirectoryError(f"samples: {folder} is a file, not a folder")
    config = SyntheticConfig(size=image_size)
    encoded = []
    for row in rows:  # everything encoded before anything is written
        image = generate_image(np.random.default_rng(row["seed"]), int(row["label"]), config)[..., 0]
        encoded.append(_encode(str(row["format"]), image, str(row["patient"]), int(row["label"])))
    for label in CLASS_FOLDERS.values():
        os.makedirs(os.path.join(folder, label), exist_ok=True)
    for target, data in zip(targets, encoded, strict=False):
        with open(target, "xb") as f:
            f.write(data)
    with open(targets[-1], "x", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "patient"])
        writer.writerows([r["path"], r["label"], r["patient"]] for r in rows)
    return targets
