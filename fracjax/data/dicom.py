"""DICOM files to grey uint8: the modality LUT (rescale slope/intercept)
first, then the VOI LUT or the first window centre/width, else the full
range; MONOCHROME1 inverted so that bone is bright, as in MONOCHROME2; colour
as luminance. The size is checked from the header before the pixels are
decoded, and only the first frame of a multi-frame file is decoded."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np

from fracjax.data.pixels import (
    ImageDecodeError,
    PathLike,
    by_rows,
    check_pixel_count,
    luminance,
    rescale_to_uint8,
    row_chunks,
    scale_block,
)
from fracjax.data.screening import Observations


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
    import pydicom

    try:
        ds = pydicom.dcmread(source)
        rows, columns = int(ds.Rows), int(ds.Columns)
    except Exception as err:  # pydicom raises many types for bad files
        raise ImageDecodeError(path, f"DICOM: {type(err).__name__}: {err}") from None
    check_pixel_count(path, columns, rows, limit)
    try:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)  # decode the first frame only
        return ds, ds.pixel_array
    except MemoryError:
        raise
    except Exception as err:
        raise ImageDecodeError(path, f"DICOM: {type(err).__name__}: {err}") from None


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
