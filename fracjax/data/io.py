"""Decoding X-ray files to grey uint8 arrays.

``read_image(path)`` returns (H, W, 1) uint8 for PNG (8- and 16-bit), JPEG
(grey, RGB, CMYK; EXIF orientation applied), BMP, TIFF and DICOM. The rules:

* High bit-depth data (16-bit PNG/TIFF, DICOM) is rescaled (or windowed) onto
  the full 0..255 range, never clamped: Pillow's ``convert("L")`` of a 16-bit
  image clips everything above 255 to white.
* Colour becomes luminance (ITU-R 601); alpha is composited over black (a
  transparent pixel carries no signal).
* DICOM: the modality LUT (rescale slope/intercept) first, then the VOI LUT or
  the first window centre/width, else the full range; MONOCHROME1 is inverted
  so that bone is bright, as in MONOCHROME2.
* Anything unreadable raises :class:`ImageDecodeError` (a ValueError) naming
  the file and the cause.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Callable, Optional, Tuple, Union

import numpy as np

from fracjax.data.screening import Observations

PathLike = Union[str, os.PathLike]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
DICOM_EXTENSIONS = (".dcm", ".dicom")


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


def _row_chunks(height: int, width: int):
    rows = max(1, ROW_CHUNK_PIXELS // max(width, 1))
    return (slice(r, min(r + rows, height)) for r in range(0, height, rows))


def _by_rows(values: np.ndarray, convert, shape: Optional[Tuple[int, ...]] = None) -> np.ndarray:
    """``convert`` applied to blocks of rows of ``values`` (H, W, ...) into a
    uint8 (H, W, ...) array: memory is the input, the output and one block's
    float temporaries, never float64 copies of the whole image."""
    out = np.empty(values.shape if shape is None else shape, np.uint8)
    for rows in _row_chunks(values.shape[0], values.shape[1] if values.ndim > 1 else 1):
        out[rows] = convert(values[rows])
    return out


def rescale_to_uint8(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map [low, high] (default: the data's min and max) linearly onto 0..255."""
    values = np.asarray(values)
    low = float(np.min(values)) if low is None else low
    high = float(np.max(values)) if high is None else high
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("non-finite pixel values")
    return _by_rows(values, lambda block: scale_block(block, (low, high)))


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
    return _by_rows(values, lambda block: scale_block(block, scaling))


def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) values, in float64."""
    rgb = rgb.astype(np.float64)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _is_dicom(path: PathLike) -> bool:
    if os.fspath(path).lower().endswith(DICOM_EXTENSIONS):
        return True
    try:
        with open(path, "rb") as f:
            return _dicom_preamble(f.read(132))
    except OSError:
        return False


def _dicom_preamble(head: bytes) -> bool:
    """A DICOM file's 128-byte preamble and its "DICM" marker."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def _pil_rows(image, convert: Callable) -> np.ndarray:
    """(H, W) uint8 from ``convert`` of blocks of rows of a PIL image: memory
    is Pillow's decoded image, the output and one block."""
    width, height = image.size
    out = np.empty((height, width), np.uint8)
    for rows in _row_chunks(height, width):
        out[rows] = convert(image.crop((0, rows.start, width, rows.stop)))
    return out


def _round_u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def _rgba_grey(block, seen: Optional[Observations] = None) -> np.ndarray:
    arr = np.asarray(block.convert("RGBA")).astype(np.float64)
    if seen is not None:
        seen.count_colour(arr[..., :3] * (arr[..., 3:] / 255.0))  # as seen over black
    return _round_u8(luminance(arr[..., :3]) * arr[..., 3] / 255.0)


def _rgb_grey(block, seen: Optional[Observations] = None) -> np.ndarray:
    rgb = np.asarray(block.convert("RGB"))
    if seen is not None:
        seen.count_colour(rgb)
    return _round_u8(luminance(rgb))


def _la_grey(block) -> np.ndarray:
    arr = np.asarray(block).astype(np.float64)
    return _round_u8(arr[..., 0] * arr[..., 1] / 255.0)


_EIGHT_BIT = {
    "1": lambda block: np.asarray(block.convert("L")),
    "L": np.asarray,
    "LA": _la_grey,
    "P": _rgba_grey,  # via the palette's RGBA, block by block
    "PA": _rgba_grey,
    "RGBA": _rgba_grey,
}
# RGB, RGBX, CMYK, YCbCr, LAB, HSV: Pillow converts these to RGB exactly (8-bit in, 8-bit out).
_COLOUR = ("RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV")


def _pil_to_grey(image, path: PathLike, seen: Optional[Observations] = None) -> np.ndarray:
    """A loaded PIL image -> (H, W) uint8, without clamping high bit depths; colour counted into ``seen``."""
    mode = image.mode
    if mode in _EIGHT_BIT:
        convert = _EIGHT_BIT[mode]
        return _pil_rows(image, functools.partial(convert, seen=seen) if convert is _rgba_grey else convert)
    if mode in _COLOUR:
        return _pil_rows(image, functools.partial(_rgb_grey, seen=seen))
    # High bit depth: I;16 (16-bit PNG), I;16B, I (32-bit int), F (float): one
    # scaling from the whole image's extremes, applied block by block.
    if mode.startswith("I;16") or mode in ("I", "F"):
        low, high = image.getextrema()
        scaling = value_scaling("float" if mode == "F" else "int", low, high, os.fspath(path))
        return _pil_rows(image, lambda block: scale_block(_numeric(block), scaling))
    raise ImageDecodeError(path, f"unsupported image mode {mode!r}")


def _numeric(block) -> np.ndarray:
    arr = np.asarray(block)
    return arr if arr.dtype.kind in "iuf" else np.asarray(block.convert("I"))


MAX_PIXELS = 50_000_000  # about 7000 x 7000: well above real radiographs (large detectors are ~4300 x 4300)


def pixel_limit() -> int:
    """The decoders' pixel-count limit: ``$FRACJAX_MAX_PIXELS`` or :data:`MAX_PIXELS`."""
    text = os.environ.get("FRACJAX_MAX_PIXELS")
    if text is None:
        return MAX_PIXELS
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"FRACJAX_MAX_PIXELS must be a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise ValueError(f"FRACJAX_MAX_PIXELS must be >= 1, got {value}")
    return value


def _check_pixel_count(path: PathLike, width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise ImageTooLargeError(
            path, f"{width} x {height} = {width * height:,} pixels is more than the limit of {limit:,} "
            "(read_image(max_pixels=...) or $FRACJAX_MAX_PIXELS raise it)"
        )


def _read_pil(source, path: PathLike, limit: int, seen: Optional[Observations] = None) -> np.ndarray:
    """``source``: a path or a binary file object; ``path``: its name in errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            # Pillow warns on a large header at open; our own limit, checked next, decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            _check_pixel_count(path, *image.size, limit)  # from the header, before decoding
            image.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(image, in_place=True)  # (not a copy: it would double the memory)
            grey = _pil_to_grey(image, path, seen)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise NotAnImageError(path, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ImageDecodeError(path, f"{type(err).__name__}: {err}") from None
    return grey


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
    _check_pixel_count(path, columns, rows, limit)
    try:
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            ds.pixel_array_options(index=0)  # decode the first frame only
        return ds, ds.pixel_array
    except MemoryError:
        raise
    except Exception as err:
        raise ImageDecodeError(path, f"DICOM: {type(err).__name__}: {err}") from None


def _read_dicom(source, path: PathLike, limit: int, seen: Optional[Observations] = None) -> np.ndarray:
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

            return _by_rows(pixels, convert, pixels.shape[:2])
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
    for rows in _row_chunks(*pixels.shape[:2]):
        values = modality(pixels[rows])
        low, high = min(low, float(np.min(values))), max(high, float(np.max(values)))
    return low, high


def _dicom_grey(pixels: np.ndarray, ds, modality: Callable) -> np.ndarray:
    """The modality LUT, then the VOI LUT, the first window or the full
    range, block by block (the extremes, where needed, from a first pass)."""
    if "WindowCenter" in ds and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        centre, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")
        return _by_rows(pixels, lambda block: _window(modality(block), centre, width, function))
    low, high = _extremes(pixels, modality)
    if "VOILUTSequence" in ds:
        item = ds.VOILUTSequence[0]
        return _by_rows(pixels, lambda block: _voi_lut(modality(block), item, low < 0))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("non-finite pixel values")
    return _by_rows(pixels, lambda block: scale_block(modality(block), (low, high)))


def read_image(path: PathLike, max_pixels: Optional[int] = None, seen: Optional[Observations] = None) -> np.ndarray:
    """Decode ``path`` to an (H, W, 1) uint8 grey image (see the module doc).
    ``max_pixels``: refuse larger images from their header, before decoding
    (default: :func:`pixel_limit`). ``seen``: filled with what the input
    checks need (:mod:`fracjax.data.screening`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageDecodeError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise ImageDecodeError(path, "empty file")
    return _decode(path, path, _is_dicom(path), max_pixels, seen)


def decode_image(data: bytes, name: str, max_pixels: Optional[int] = None,
                 seen: Optional[Observations] = None) -> np.ndarray:
    """:func:`read_image` of a file's bytes held in memory (an upload):
    ``name`` (the file's name) is used in errors and, by its extension,
    with the DICOM preamble, to tell DICOM from other formats."""
    if not data:
        raise ImageDecodeError(name, "empty file")
    dicom = name.lower().endswith(DICOM_EXTENSIONS) or _dicom_preamble(data[:132])
    return _decode(io.BytesIO(data), name, dicom, max_pixels, seen)


def _decode(source, path: PathLike, dicom: bool, max_pixels: Optional[int], seen: Optional[Observations]) -> np.ndarray:
    limit = pixel_limit() if max_pixels is None else max_pixels
    try:
        grey = _read_dicom(source, path, limit, seen) if dicom else _read_pil(source, path, limit, seen)
    except MemoryError:  # one hostile file must not stop a build: it is one more unreadable file
        raise ImageDecodeError(path, "out of memory while decoding") from None
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ImageDecodeError(path, f"decoded to an unusable shape {grey.shape}")
    return grey[..., None]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D array, reflect padding, radius 3 sigma
    (none below sigma 0.05). The kernel takes the image's float precision."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.result_type(image.dtype, np.float32))
    pad = np.pad(image, radius, mode="reflect")
    rows = sum(k[i] * pad[:, i : i + image.shape[1]] for i in range(2 * radius + 1))
    return sum(k[i] * rows[i : i + image.shape[0], :] for i in range(2 * radius + 1))


def resize_bilinear(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and no antialiasing: what Keras
    ``image_dataset_from_directory`` (``tf.image.resize``) does; aspect ratio
    is not kept. (H, W, C) -> (size[0], size[1], C), float32."""
    h, w = image.shape[:2]
    out_h, out_w = size
    img = image.astype(np.float32)

    def axis(n_in, n_out):
        pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
        low = np.floor(pos)
        frac = (pos - low).astype(np.float32)
        lo = np.clip(low, 0, n_in - 1).astype(np.int64)
        hi = np.clip(low + 1, 0, n_in - 1).astype(np.int64)
        return lo, hi, frac

    y0, y1, fy = axis(h, out_h)
    x0, x1, fx = axis(w, out_w)
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def grey_pixels(image, source: str = "the array", seen: Optional[Observations] = None) -> np.ndarray:
    """Pixels as (H, W, 1) float64 on the 0..255 scale: (H, W) and (H, W, 1)
    as they are, RGB as luminance, RGBA as luminance over black (as
    :func:`read_image` does for files); values of any dtype by
    :func:`pixel_values`; colour counted into ``seen``."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"{source}: expected an image (H, W) or (H, W, C) with C in 1, 3, 4; got shape "
                         f"{array.shape}")
    array = pixel_values(array, source).astype(np.float64)
    if array.shape[-1] == 1:
        return array
    if seen is not None:
        seen.count_colour(array[..., :3] * (array[..., 3:] / 255.0) if array.shape[-1] == 4 else array)
    if array.shape[-1] == 4:
        return (luminance(array[..., :3]) * array[..., 3] / 255.0)[..., None]
    return luminance(array)[..., None]


def model_input(image, size: int, source: str = "the array", seen: Optional[Observations] = None) -> np.ndarray:
    """The one preprocessing between decoded pixels and every model: grey,
    bilinear resize to ``size`` x ``size`` (aspect ratio not kept), rounded to
    uint8 as the stored data sets are. Training, evaluation, ``Classifier``
    and the exports all go through here, so one image gives one number."""
    grey = grey_pixels(image, source, seen)
    if grey.shape[:2] != (size, size):
        grey = resize_bilinear(grey, (size, size))
    return to_uint8(grey)
