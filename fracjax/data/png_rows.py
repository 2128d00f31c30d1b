"""Whether a PNG holds all its rows.

Pillow decodes a PNG whose compressed data ends early, but properly (a zlib
stream that says it is complete), without complaint and leaves the missing
rows black: a radiograph cut in half would be classified as if whole. This
module inflates the IDAT data once more, counting bytes and holding none,
and compares the count with what the header's size, bit depth, colour type
and interlacing need.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO, Iterator, Tuple

from fracjax.data.pixels import ImageDecodeError, PathLike

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
# Adam7: (first row, first column, row step, column step) of each of the seven passes.
ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1))
CHUNK = 1 << 20


def needed_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """The inflated IDAT bytes of a complete image: each row of each pass, plus its filter byte."""
    bits = CHANNELS[colour_type] * bit_depth
    passes = ADAM7 if interlaced else ((0, 0, 1, 1),)
    total = 0
    for row0, col0, row_step, col_step in passes:
        rows = max(0, (height - row0 + row_step - 1) // row_step)
        cols = max(0, (width - col0 + col_step - 1) // col_step)
        if rows and cols:
            total += rows * (1 + (cols * bits + 7) // 8)
    return total


def _chunks(f: BinaryIO) -> Iterator[Tuple[bytes, bytes]]:
    while True:
        head = f.read(8)
        if len(head) < 8:
            return
        length, kind = struct.unpack(">I4s", head)
        yield kind, f.read(length)
        f.read(4)  # the CRC: Pillow has checked it
        if kind == b"IEND":
            return


def check_complete(source, path: PathLike) -> None:
    """Raise ImageDecodeError if the PNG at ``source`` (a path or a seekable binary file, read from
    its start) holds fewer rows than its header declares."""
    f = open(source, "rb") if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__") else source
    try:
        f.seek(0)
        if f.read(8) != SIGNATURE:
            return
        inflater, produced, header = zlib.decompressobj(), 0, None
        for kind, data in _chunks(f):
            if kind == b"IHDR":
                header = struct.unpack(">IIBBBBB", data[:13])
            elif kind == b"IDAT" and not inflater.eof:
                pending = data
                while pending and not inflater.eof:
                    produced += len(inflater.decompress(pending, CHUNK))
                    pending = inflater.unconsumed_tail
    finally:
        if f is not source:
            f.close()
    if header is None or header[3] not in CHANNELS:
        return  # Pillow has read it, so this is a header this count does not know: leave it to Pillow
    width, height, bit_depth, colour_type, _, _, interlace = header
    needed = needed_bytes(width, height, bit_depth, colour_type, bool(interlace))
    if produced < needed:
        raise ImageDecodeError(path, f"its image data ends early: {produced:,} of the {needed:,} bytes its "
                                     f"{width} x {height} header needs (rows missing)")
