"""Decoding X-ray files to grey uint8 arrays.

``read_image(path)`` returns (H, W, 1) uint8 for PNG (8- and 16-bit), JPEG
(grey, RGB, CMYK; EXIF orientation applied), BMP, TIFF and DICOM. The rules:

* High bit-depth data (16-bit PNG/TIFF, DICOM) is rescaled (or windowed) onto
  the full 0..255 range, never clamped: Pillow's ``convert("L")`` of a 16-bit
  image clips everything above 255 to white.
* Colour becomes luminance (ITU-R 601); alpha is composited over black (a
  transparent pixel carries no signal).
* DICOM (:mod:`fracjax.data.dicom`): the modality LUT first, then the VOI
  LUT or the first window, else the full range; MONOCHROME1 inverted.
* Anything unreadable raises :class:`ImageDecodeError` (a ValueError) naming
  the file and the cause.
"""

from __future__ import annotations

import functools
import io
import os
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from fracjax.data import png_rows
from fracjax.data.dicom import read_dicom
from fracjax.data.pixels import (
    MAX_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    NotAnImageError,
    PathLike,
    check_pixel_count,
    luminance,
    pixel_limit,
    pixel_values,
    rescale_to_uint8,
    row_chunks,
    scale_block,
    value_scaling,
)
from fracjax.data.screening import Observations

# What the other modules of fracjax and its users import from here (defined in pixels).
__all__ = [
    "DICOM_EXTENSIONS", "IMAGE_EXTENSIONS", "MAX_PIXELS", "PIL_FORMATS", "READ_FORMATS", "ImageDecodeError",
    "ImageTooLargeError", "NotAnImageError",
    "decode_image", "image_files", "gaussian_blur", "grey_pixels", "luminance", "model_input", "pixel_limit",
    "pixel_values", "read_image", "rescale_to_uint8", "resize_bilinear", "scale_block", "to_uint8", "value_scaling",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
# The only Pillow plugins ever asked to open a file, whatever its name: never one that hands the
# file to an outside program (EPS runs Ghostscript) and none the documentation does not list.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
READ_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "DICOM")
DICOM_EXTENSIONS = (".dcm", ".dicom")


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
    for rows in row_chunks(height, width):
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


def _let_pillow_open(limit: int) -> None:
    """Pillow refuses images of more than twice ``Image.MAX_IMAGE_PIXELS`` at open, before our
    own limit is checked: a limit raised past it ($FRACJAX_MAX_PIXELS) raises Pillow's with it,
    so that the one limit said in errors is ours (and a server answers 413, not 422)."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit


def _read_pil(source, path: PathLike, limit: int, seen: Optional[Observations] = None) -> np.ndarray:
    """``source``: a path or a binary file object; ``path``: its name in errors."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _let_pillow_open(limit)
    try:
        with warnings.catch_warnings():
            # Pillow warns on a large header at open; our own limit, checked next, decides.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source, formats=PIL_FORMATS)
        with image:
            check_pixel_count(path, *image.size, limit)  # from the header, before decoding
            image.load()  # decode now: a truncated file fails here, not later
            if image.format == "PNG":  # one whose data ends early but cleanly loads with black rows
                png_rows.check_complete(source, path)
            ImageOps.exif_transpose(image, in_place=True)  # (not a copy: it would double the memory)
            grey = _pil_to_grey(image, path, seen)
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise NotAnImageError(path, f"not a recognised image format (fracjax reads {', '.join(READ_FORMATS)})") \
            from None
    except Image.DecompressionBombError as err:  # only past a limit raised elsewhere in this process
        raise ImageTooLargeError(path, f"{err} (Pillow's own limit)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageDecodeError(path, f"{type(err).__name__}: {err}") from None
    return grey


def image_files(paths: Sequence[PathLike]) -> List[str]:
    """``paths`` with each folder replaced by the image files in it and below (by extension,
    :data:`IMAGE_EXTENSIONS`, sorted; hidden files and folders left out). A file is kept as
    given, even one that does not exist: reading it then says why. A folder without any image
    file is refused by name."""
    out: List[str] = []
    for path in map(os.fspath, paths):
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for root, folders, files in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files)
                      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise ValueError(f"{path}: a folder with no image files ({', '.join(IMAGE_EXTENSIONS)}) in it or below")
        out += found
    return out


def read_image(path: PathLike, max_pixels: Optional[int] = None, seen: Optional[Observations] = None) -> np.ndarray:
    """Decode ``path`` to an (H, W, 1) uint8 grey image (see the module doc).
    ``max_pixels``: refuse larger images from their header, before decoding
    (default: :func:`pixel_limit`). ``seen``: filled with what the input
    checks need (:mod:`fracjax.data.screening`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageDecodeError(path, "a folder, not an image file" if os.path.isdir(path) else "no such file")
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
        grey = read_dicom(source, path, limit, seen) if dicom else _read_pil(source, path, limit, seen)
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
    is not kept. (H, W, C) -> (size[0], size[1], C), float32.

    Rows are resized first unless that would make the intermediate many times larger than
    both input and output (a thin strip made taller: 1 x 30,000 to 224 x 224 would hold
    224 x 30,000 floats); then columns go first, which may move a value by a float32 rounding.
    Memory stays within a few copies of the larger of input and output."""
    h, w = image.shape[:2]
    out_h, out_w = size
    if out_h * w <= 16 * max(h * w, out_h * out_w):
        return _resize_axis(_resize_axis(image, 0, out_h), 1, out_w)
    return _resize_axis(_resize_axis(image, 1, out_w), 0, out_h)


def _resize_axis(image: np.ndarray, axis: int, n_out: int) -> np.ndarray:
    """One axis of :func:`resize_bilinear`: two taps per output position, float32."""
    n_in = image.shape[axis]
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(pos)
    frac = (pos - low).astype(np.float32)
    lo = np.clip(low, 0, n_in - 1).astype(np.int64)
    hi = np.clip(low + 1, 0, n_in - 1).astype(np.int64)
    shape = [1] * image.ndim
    shape[axis] = n_out
    frac = frac.reshape(shape)
    # Gathered before the float32 copy: only the taps are ever held as floats.
    return np.take(image, lo, axis).astype(np.float32) * (1 - frac) + np.take(image, hi, axis).astype(np.float32) * frac


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def grey_pixels(image, source: str = "the array", seen: Optional[Observations] = None) -> np.ndarray:
    """Pixels as (H, W, 1) float64 on the 0..255 scale: (H, W) and (H, W, 1)
    as they are, RGB as luminance, RGBA as luminance over black, rounded to
    whole grey levels (as :func:`read_image` does for files); values of any dtype by
    :func:`pixel_values`; colour counted into ``seen``."""
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise ValueError(f"{source}: expected an image (H, W) or (H, W, C) with C in 1, 3, 4; got shape "
                         f"{array.shape}")
    check_pixel_count(source, array.shape[1], array.shape[0], pixel_limit())  # the files' limits, before any copy
    array = pixel_values(array, source).astype(np.float64)
    if array.shape[-1] == 1:
        return array
    if seen is not None:
        seen.count_colour(array[..., :3] * (array[..., 3:] / 255.0) if array.shape[-1] == 4 else array)
    # Rounded to whole grey levels as the file decoders round them (_rgb_grey, _rgba_grey): a colour
    # image gives the model the same input as an array and as a PNG file.
    if array.shape[-1] == 4:
        return _round_u8(luminance(array[..., :3]) * array[..., 3] / 255.0)[..., None].astype(np.float64)
    return _round_u8(luminance(array))[..., None].astype(np.float64)


def model_input(image, size: int, source: str = "the array", seen: Optional[Observations] = None) -> np.ndarray:
    """The one preprocessing between decoded pixels and every model: grey,
    bilinear resize to ``size`` x ``size`` (aspect ratio not kept), rounded to
    uint8 as the stored data sets are. Training, evaluation, ``Classifier``
    and the exports all go through here, so one image gives one number."""
    grey = grey_pixels(image, source, seen)
    if grey.shape[:2] != (size, size):
        grey = resize_bilinear(grey, (size, size))
    return to_uint8(grey)
