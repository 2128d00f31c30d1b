"""Small files that would cost gigabytes (issue 35, items 1-2): a deflated DICOM inflated under a
budget, a long thin image refused from its header and resized in bounded memory, arrays under the
files' limits, only the listed formats opened, Pillow's own limit answered as ours."""

import io as bytes_io
import struct
import subprocess
import sys
import tracemalloc
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fracjax.data import io
from fracjax.data.pixels import MAX_SIDE


def _deflated(ds) -> bytes:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = bytes_io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _meta_end(data: bytes) -> int:
    return 132 + 12 + struct.unpack("<I", data[140:144])[0]


def _bomb(inflated_mb: int, header: bool = True) -> bytes:
    """A deflated DICOM whose data set inflates to ``inflated_mb`` MB of zeros (after CT_small's own
    header and pixels when ``header``): about 1 KB per MB on disk."""
    data = _deflated(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    body = zlib.decompress(data[_meta_end(data):], -zlib.MAX_WBITS) if header else b""
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    head = packer.compress(body)
    inflated = b"".join(packer.compress(zeros) for _ in range(inflated_mb))
    return data[:_meta_end(data)] + head + inflated + packer.flush()


def test_a_deflated_dicom_decodes_as_its_plain_twin():
    plain = get_testdata_file("CT_small.dcm")
    data = _deflated(pydicom.dcmread(plain))
    assert pydicom.dcmread(bytes_io.BytesIO(data)).file_meta.TransferSyntaxUID.name.startswith("Deflated")
    np.testing.assert_array_equal(io.decode_image(data, "ct.dcm"), io.read_image(plain))


def test_a_deflated_dicom_is_inflated_no_further_than_its_header_declares(tmp_path):
    bomb = _bomb(256)
    assert len(bomb) < 400_000  # 256 MB behind a 128 x 128 header
    with pytest.raises(io.ImageTooLargeError, match=r"inflates past 1,\d{3},\d{3} bytes"):
        io.decode_image(bomb, "bomb.dcm")
    # Without a header to read, the pixel limit sets the budget: 4 bytes a pixel.
    with pytest.raises(io.ImageTooLargeError, match="inflates past 1,064,960 bytes"):
        io.decode_image(_bomb(8, header=False), "bomb.dcm", max_pixels=4096)
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    with pytest.raises(io.ImageTooLargeError, match="bomb.dcm"):
        io.read_image(tmp_path / "bomb.dcm")


REFUSED_UNDER_LIMIT = """
import resource, sys
from fracjax.data import io
def data_bytes():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + (48 << 20), resource.RLIM_INFINITY))
try:
    io.read_image(sys.argv[1])
    print("decoded")
except io.ImageTooLargeError as err:
    print("refused:", err.reason)
"""


def test_a_deflated_bomb_is_refused_in_bounded_memory(tmp_path):
    """1 GB behind a 1 MB file (pydicom alone inflates it whole): refused within 48 MB of heap."""
    path = tmp_path / "bomb.dcm"
    path.write_bytes(_bomb(1024))
    done = subprocess.run([sys.executable, "-c", REFUSED_UNDER_LIMIT, str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("refused: DICOM: a deflated data set that inflates past")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` grey pixels and holds one empty IDAT."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_a_long_thin_image_is_refused_from_its_header():
    data = _png_header(5_000_000, 1)  # 5 M pixels: under the pixel limit
    assert len(data) < 100
    with pytest.raises(io.ImageTooLargeError, match=f"5000000 x 1: a side of more than {MAX_SIDE:,} pixels"):
        io.decode_image(data, "strip.png")
    with pytest.raises(io.ImageTooLargeError, match="a side of more than"):
        io.grey_pixels(np.zeros((1, 5_000_000), np.uint8), "strip")


def test_resizing_a_strip_holds_about_its_output_not_its_length_times_it():
    strip = np.full((1, MAX_SIDE, 1), 200, np.uint8)
    tracemalloc.start()
    try:
        out = io.model_input(strip, 224)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (224, 224, 1) and np.all(out == 200)
    assert peak < 8 << 20, peak  # rows first would hold 224 x 32,768 floats (29 MB) several times


def test_arrays_meet_the_files_pixel_limit_before_any_copy(monkeypatch):
    monkeypatch.setenv("FRACJAX_MAX_PIXELS", "10000")
    with pytest.raises(io.ImageTooLargeError, match="the array: 200 x 100 = 20,000 pixels is more than the limit"):
        io.model_input(np.zeros((100, 200), np.float32), 32)
    monkeypatch.setenv("FRACJAX_MAX_PIXELS", str(MAX_SIDE**2 + 1))
    with pytest.raises(ValueError, match="FRACJAX_MAX_PIXELS must be between 1 and"):
        io.pixel_limit()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"


@pytest.mark.parametrize("kind", ["GIF", "WEBP", "PPM", "ICO", "EPS"])
def test_only_the_listed_formats_are_opened_whatever_the_name(kind, monkeypatch):
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))  # would run gs
    if kind == "EPS":
        data = EPS
    else:
        buffer = bytes_io.BytesIO()
        Image.new("L", (8, 8), 90).save(buffer, format=kind)
        data = buffer.getvalue()
    with pytest.raises(io.NotAnImageError, match="fracjax reads PNG, JPEG, BMP, TIFF, DICOM"):
        io.decode_image(data, "xray.png")
    assert not ran


def test_past_pillows_own_limit_is_too_large_and_a_raised_limit_raises_pillows(monkeypatch):
    data = _png_header(20_000, 10_000)  # 200 M pixels: past twice Pillow's default MAX_IMAGE_PIXELS
    monkeypatch.setenv("FRACJAX_MAX_PIXELS", str(400_000_000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    with pytest.raises(io.ImageDecodeError) as raised:
        io.decode_image(data, "big.png")
    # Our limit allows it, so Pillow must not refuse it: it gets as far as decoding the empty IDAT.
    assert not isinstance(raised.value, io.ImageTooLargeError) and "Decompression" not in str(raised.value)
    # Under the default limit Pillow refuses it first: a too-large image all the same (413, not 422).
    monkeypatch.delenv("FRACJAX_MAX_PIXELS")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)
    with pytest.raises(io.ImageTooLargeError, match="Pillow's own limit"):
        io.decode_image(data, "big.png")


def test_a_png_whose_data_ends_early_is_refused_not_filled_with_black():
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    half = b"".join(b"\x00" + bytes([200]) * 40 for _ in range(20))  # 20 of 40 rows, a complete zlib stream
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(half)) + chunk(b"IEND", b""))
    assert Image.open(bytes_io.BytesIO(data)).load() is not None  # Pillow alone reads it, black below row 20
    with pytest.raises(io.ImageDecodeError, match="its image data ends early: 820 of the 1,640 bytes"):
        io.decode_image(data, "half.png")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
@pytest.mark.parametrize("interlace", [0, 1])
def test_every_complete_png_passes_the_row_count(mode, interlace):
    grey = np.random.default_rng(3).integers(0, 256, (37, 53), dtype=np.uint8)
    image = Image.fromarray(grey.astype(np.uint16) * 200) if mode == "I;16" else Image.fromarray(grey).convert(mode)
    buffer = bytes_io.BytesIO()
    image.save(buffer, format="PNG", interlace=interlace)
    assert io.decode_image(buffer.getvalue(), "x.png").shape == (37, 53, 1)
