"""Pixel values onto the 0..255 scale, and the limits every decoder keeps.

One rule (:func:`pixel_values`) for arrays given to ``predict`` and for
high-bit-depth files; conversion in blocks of rows (:func:`by_rows`) so that a
large image never has a float64 copy in memory; the pixel-count limit checked
from a header before anything is decoded (:func:`check_pixel_count`).
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


class ImageDecodeError(ValueError):
    """A file that cannot be decoded as an image; ``path`` and ``reason`` say why."""

    def __init__(self, path: PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")


class NotAnImageError(ImageDecodeError):
    """A file in no image format the decoders know (as opposed to a damaged image)."""


class ImageTooLargeError(ImageDecodeError):
    """An image with more pixels than the decoders' limit, refused from its header."""


ROW_CHUNK_PIXELS = 1 << 18  # pixels converted at a time: float temporaries stay a few MB at any image size


def row_chunks(height: int, width: int):
    rows = max(1, ROW_CHUNK_PIXELS // max(width, 1))
    return (slice(r, min(r + rows, height)) for r in range(0, height, rows))


def by_rows(values: np.ndarray, convert, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """``convert`` applied to blocks of rows of ``values`` (H, W, ...) into a
    uint8 (H, W, ...) array: memory is the input, the output and one block's
    float temporaries, never float64 copies of the whole image."""
    out = np.empty(values.shape if shape is None else shape, np.uint8)
    for rows in row_chunks(values.shape[0], values.shape[1] if values.ndim > 1 else 1):
        out[rows] = convert(values[rows])
    return out


def rescale_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map [low, high] (default: the data's min and max) linearly onto 0..255."""
    values = np.asarray(values)
    low = float(np.min(values)) if low is None else low
    high = float(np.max(values)) if high is None else high
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("non-finite pixel values")
    return by_rows(values, lambda block: scale_block(block, (low, high)))


Scaling = Optional[Tuple[float, float]]  # None: values are 0..255 already; (low, high): rescale that range


def value_scaling(kind: str, low: float, high: float, source: str) -> Scaling:
    """How pixels of dtype kind ``kind`` ("u8", "int" or "float") with these
    extremes reach 0..255 (the rule :func:`pixel_values` documents)."""
    if kind == "u8":
        return None
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError(f"{source}: the image holds NaN or infinite pixel values")
    if kind == "int" or not (0.0 <= low and high <= 255.0):
        return (float(low), float(high))
    if 0.0 < high <= 1.0:
        warnings.warn(f"{source}: float pixels all within [0, 1] are read as 0..255 values (a nearly black "
                      "image); multiply a [0, 1]-scaled image by 255 first", stacklevel=4)
    return None


def scale_block(block: np.ndarray, scaling: Scaling) -> np.ndarray:
    """Some rows of pixels -> uint8 by ``scaling`` (see :func:`value_scaling`)."""
    if scaling is None:
        if block.dtype == np.uint8:
            return block
        return np.clip(np.round(block), 0, 255).astype(np.uint8)
    low, high = scaling
    if high <= low:
        return np.zeros(block.shape, np.uint8)
    scaled = (block.astype(np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def _kind(dtype: np.dtype) -> str:
    if dtype == np.uint8:
        return "u8"
    if dtype.kind in "iu":
        return "int"
    if dtype.kind == "f":
        return "float"
    raise ValueError(f"pixels of dtype {dtype} are not numbers")


def pixel_values(values: np.ndarray, source: str = "the array") -> np.ndarray:
    """Pixels of any numeric type on the 0..255 scale, as uint8; the one rule
    for arrays given to ``predict`` and for high-bit-depth files:

    * uint8 (and bool) values are taken as they are;
    * wider integers (uint16, int16, int32: 16-bit PNG/TIFF, DICOM) are
      rescaled from their min..max onto 0..255, never clipped;
    * floats must be finite; within [0, 255] they are pixel values (rounded),
      outside it they are rescaled from their min..max like wider integers.
      Floats within [0, 1] that are not all 0 are most likely [0, 1]-scaled
      images: a warning says so (they are still read as 0..255 values).
    """
    values = np.asarray(values)
    if values.dtype == bool:
        values = values.astype(np.uint8) * 255
    try:
        kind = _kind(values.dtype)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    if kind == "u8" or values.size == 0:
        return values.astype(np.uint8, copy=False)
    scaling = value_scaling(kind, float(np.min(values)), float(np.max(values)), source)
    return by_rows(values, lambda block: scale_block(block, scaling))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) values, in float64."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


MAX_PIXELS = 50_000_000  # about 7000 x 7000: well above real radiographs (large detectors are ~4300 x 4300)
# The longest side any decoder accepts: stitched full-leg and full-spine images are some 8,000 pixels long.
MAX_SIDE = 32_768


def pixel_limit() -> int:
    """The decoders' pixel-count limit: ``$FRACJAX_MAX_PIXELS`` or :data:`MAX_PIXELS`."""
    text = os.environ.get("FRACJAX_MAX_PIXELS")
    if text is None:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"FRACJAX_MAX_PIXELS must be a whole number of pixels, got {text!r}") from None
    if not 1 <= value <= MAX_SIDE**2:
        raise ValueError(f"FRACJAX_MAX_PIXELS must be between 1 and {MAX_SIDE**2:,} ({MAX_SIDE} squared), got {value}")
    return value


def check_pixel_count(path: PathLike, width: int, height: int, limit: int) -> None:
    """Refuse, from a header before anything is decoded, an image of more than ``limit`` pixels
    or with a side longer than :data:`MAX_SIDE` (a 1 x 5,000,000 strip is under the pixel limit
    but no radiograph, and its buffers grow with the long side)."""
    if width * height > limit:
        raise ImageTooLargeError(
            path, f"{width} x {height} = {width * height:,} pixels is more than the limit of {limit:,} "
            "(read_image(max_pixels=...) or $FRACJAX_MAX_PIXELS raise it)"
        )
    if max(width, height) > MAX_SIDE:
        raise ImageTooLargeError(
            path, f"{width} x {height}: a side of more than {MAX_SIDE:,} pixels (no radiograph is that long)")
