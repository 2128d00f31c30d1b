"""DICOM files to grey uint8: the modality LUT (rescale slope/intercept)
first, then the VOI LUT or the first window centre/width, else the full
range; MONOCHROME1 inverted so that bone is bright, as in MONOCHROME2; colour
as luminance. The size is checked from the header before the pixels are
decoded, and only the first frame of a multi-frame file is decoded."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from typing import Callable, Optional, Tuple

import numpy as np

from fracjax.data.pixels import (
    ImageDecodeError,
    ImageTooLargeError,
    PathLike,
    by_rows,
    check_pixel_count,
    luminance,
    rescale_to_uint8,
    row_chunks,
    scale_block,
)
from fracjax.data.screening import Observations

MAX_META_BYTES = 1 << 20  # a file meta group is some hundreds of bytes
INFLATE_CHUNK = 1 << 22
PIXEL_DATA = 0x7FE00010


def _window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """A DICOM window onto 0..255 by its VOI LUT Function (PS3.3 C.11.2.1.2
    LINEAR, C.11.2.1.3.1 LINEAR_EXACT, C.11.2.1.3.2 SIGMOID)."""
    function = (function or "LINEAR").strip().upper()
    if function == "SIGMOID":
        out = 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - centre) / max(width, 1e-12), -700, 700)))
    elif function == "LINEAR_EXACT":
        width = max(width, 1e-12)
        out = np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    elif function == "LINEAR":
        width = max(width, 1.0)
        low = centre - 0.5 - (width - 1) / 2
        scaled = (values - (centre - 0.5)) / (width - 1 if width > 1 else 1) + 0.5
        out = np.where(values <= low, 0.0, np.where(values > low + width - 1, 1.0, scaled))
    else:
        raise ValueError(f"unknown VOILUTFunction {function!r}")
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _voi_lut(values: np.ndarray, item, signed: bool) -> np.ndarray:
    """A VOI LUT (PS3.3 C.11.2): entries below/above the first/last mapped
    value saturate; the output range is 0 .. 2**bits - 1, mapped onto 0..255.
    (Done here: pydicom 3.0's apply_voi_lut wraps values past the table.)"""
    count, first, bits = (int(v) for v in item.LUTDescriptor)
    count = count or 65536
    element = item["LUTData"]
    data = element.value
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, dtype="<u2" if bits > 8 or len(data) == 2 * count else np.uint8)
    table = np.asarray(data, np.float64).reshape(-1)[:count]
    if first >= 2**15 and signed:  # a descriptor value stored unsigned for signed data (any value < 0)
        first -= 2**16
    index = np.clip(np.round(values).astype(np.int64) - first, 0, len(table) - 1)
    return rescale_to_uint8(table[index], 0.0, float(2**bits - 1))


def _first(value) -> float:
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def _dicom_pixels(source, path: PathLike, limit: int):
    """(dataset, the first frame's pixels), the size checked from the header before decoding."""
    try:
        ds = _read_dataset(source, path, limit)
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples, bits = int(ds.get("SamplesPerPixel", 1) or 1), int(ds.get("BitsAllocated", 16) or 16)
    except ImageDecodeError:
        raise
    except Exception as err:  # pydicom raises many types for bad files
        raise ImageDecodeError(path, f"DICOM: {type(err).__name__}: {err}") from None
    check_pixel_count(path, columns, rows, limit)
    if samples not in (1, 3) or bits not in (1, 8, 16, 32):  # a decoder's buffer grows with both
        raise ImageDecodeError(path, f"DICOM: {samples} samples per pixel of {bits} bits is not an X-ray")
    try:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)  # decode the first frame only
        return ds, ds.pixel_array
    except MemoryError:
        raise
    except Exception as err:
        raise ImageDecodeError(path, f"DICOM: {type(err).__name__}: {err}") from None


def _read_dataset(source, path: PathLike, limit: int):
    """``pydicom.dcmread``, except for a deflated data set: pydicom would inflate it whole before
    any size is known (a 1 MB file can inflate to gigabytes), so it is inflated here under a byte
    budget: what the largest image within ``limit`` pixels could need."""
    import pydicom

    opened = open(source, "rb") if isinstance(source, (str, os.PathLike)) else source
    try:
        start = opened.tell()
        head = opened.read(132 + 12)
        if head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00" or head[136:138] != b"UL":
            opened.seek(start)
            return pydicom.dcmread(opened)  # no file meta group: nothing can say the data is deflated
        meta_end = 132 + 12 + struct.unpack("<I", head[140:144])[0]
        if meta_end > MAX_META_BYTES:
            raise ImageDecodeError(path, f"DICOM: a file meta group of {meta_end:,} bytes")
        opened.seek(start)
        meta = pydicom.dcmread(io.BytesIO(opened.read(meta_end)), force=True)
        if meta.file_meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            opened.seek(start)
            return pydicom.dcmread(opened)
        inflated = _inflate(opened.read(), budget=limit * 4 + MAX_META_BYTES, path=path)
    finally:
        if opened is not source:
            opened.close()
    dataset = pydicom.filereader.read_dataset(io.BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
    meta.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian  # what it is once inflated
    return pydicom.dataset.FileDataset(os.fspath(path), dataset, preamble=meta.preamble, file_meta=meta.file_meta,
                                       is_implicit_VR=False, is_little_endian=True)


def _inflate(data: bytes, budget: int, path: PathLike) -> bytes:
    """Raw deflate of ``data``, refused as soon as the output passes ``budget`` bytes, or what the
    header inflated first declares (rows x columns x samples x bytes x frames), if that is less."""
    inflater, out, size = zlib.decompressobj(-zlib.MAX_WBITS), [], 0
    pending = data
    while pending and not inflater.eof:
        chunk = inflater.decompress(pending, INFLATE_CHUNK)
        if not out:
            budget = min(budget, _declared_bytes(chunk) or budget)
        size += len(chunk)
        if size > budget:
            raise ImageTooLargeError(path, f"DICOM: a deflated data set that inflates past {budget:,} bytes, "
                                           "more than its header's image needs")
        out.append(chunk)
        pending = inflater.unconsumed_tail
    return b"".join(out)


def _declared_bytes(head: bytes) -> Optional[int]:
    """The bytes a data set whose first bytes are ``head`` needs: those before its pixel data,
    the pixels its header declares, and room for elements after them; None if unknown."""
    import pydicom

    stream = io.BytesIO(head)
    try:
        with warnings.catch_warnings():  # a guess at a header: pydicom's complaints about it say nothing
            warnings.simplefilter("ignore")
            ds = pydicom.filereader.read_dataset(stream, is_implicit_VR=False, is_little_endian=True,
                                                 stop_when=lambda tag, vr, length: tag == PIXEL_DATA)
        pixels = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
                  * -(-int(ds.BitsAllocated) // 8) * max(1, int(ds.get("NumberOfFrames", 1) or 1)))
    except Exception:  # a header longer than the first chunk, or none: the pixel limit's budget holds
        return None
    return stream.tell() + pixels + MAX_META_BYTES


def read_dicom(source, path: PathLike, limit: int, seen: Optional[Observations] = None) -> np.ndarray:
    try:
        from pydicom.pixels import apply_modality_lut
    except ImportError as err:  # pragma: no cover - pydicom is a declared dependency
        raise ImageDecodeError(path, f"DICOM support needs pydicom ({err})") from None
    ds, pixels = _dicom_pixels(source, path, limit)
    if seen is not None:
        seen.modality = str(ds.get("Modality", "") or "").strip().upper() or None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            if photometric.startswith("YBR"):
                from pydicom.pixels import convert_color_space

                pixels = convert_color_space(pixels, photometric, "RGB")
            full = (0.0, float(2 ** int(ds.BitsStored) - 1))

            def convert(block):
                if seen is not None:
                    seen.count_colour(block * (255.0 / full[1]))
                return scale_block(luminance(block), full)

            return by_rows(pixels, convert, pixels.shape[:2])
        raise ImageDecodeError(path, f"DICOM photometric interpretation {photometric} is not supported")
    try:
        grey = _dicom_grey(pixels, ds, lambda block: apply_modality_lut(block, ds).astype(np.float64))
    except (ImageDecodeError, MemoryError):
        raise
    except Exception as err:
        raise ImageDecodeError(path, f"DICOM LUT: {type(err).__name__}: {err}") from None
    if photometric == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _extremes(pixels: np.ndarray, modality: Callable) -> Tuple[float, float]:
    """(min, max) of the modality-LUT values, in one pass over blocks of rows."""
    low, high = np.inf, -np.inf
    for rows in row_chunks(*pixels.shape[:2]):
        values = modality(pixels[rows])
        low, high = min(low, float(np.min(values))), max(high, float(np.max(values)))
    return low, high


def _dicom_grey(pixels: np.ndarray, ds, modality: Callable) -> np.ndarray:
    """The modality LUT, then the VOI LUT, the first window or the full
    range, block by block (the extremes, where needed, from a first pass)."""
    if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return by_rows(pixels, lambda block: _window(modality(block), centre, width, function))
    low, high = _extremes(pixels, modality)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        return by_rows(pixels, lambda block: _voi_lut(modality(block), item, low < 0))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("non-finite pixel values")
    return by_rows(pixels, lambda block: scale_block(modality(block), (low, high)))
