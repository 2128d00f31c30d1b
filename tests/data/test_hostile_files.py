"""Hostile files: size limits from the header, bounded memory while
decoding, and nothing but ImageDecodeError from any bytes."""

import io as bytes_io
import os
import subprocess
import sys
import tempfile

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.data import get_testdata_file

from fracjax.data import io

SIDE = 3000  # 9 M pixels: large enough that bytes per pixel dominate the fixed costs


@pytest.fixture(scope="module")
def large_images(tmp_path_factory):
    d = tmp_path_factory.mktemp("large")
    grey16 = np.zeros((SIDE, SIDE), np.uint16)
    grey16[::5] = 40000
    grey16[:, ::3] += 1000
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[::7] = 200
    rgba[..., 3] = 255
    paths = {"rgba": d / "rgba.png", "grey16": d / "grey16.png", "grey8": d / "grey8.png"}
    Image.fromarray(rgba).save(paths["rgba"])
    Image.fromarray(grey16).save(paths["grey16"])
    Image.fromarray((grey16 // 256).astype(np.uint8)).save(paths["grey8"])
    return paths


DECODE_UNDER_LIMIT = """
import resource, sys
from fracjax.data import io
def data_bytes():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmData"))
path, bytes_per_pixel = sys.argv[1], float(sys.argv[2])
limit = data_bytes() + int(bytes_per_pixel * {pixels})
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
try:
    print("decoded", io.read_image(path).shape)
except io.ImageDecodeError as err:
    print("refused:", err.reason)
"""


def decode_under_limit(path, bytes_per_pixel):
    code = DECODE_UNDER_LIMIT.format(pixels=SIDE * SIDE)
    done = subprocess.run([sys.executable, "-c", code, str(path), str(bytes_per_pixel)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


# Decoded pixels in Pillow + the uint8 output + fixed-size blocks: ~2 bytes per pixel
# for 8-bit grey, ~3 for 16-bit, ~5 for RGBA (before: 4, 38 and 80 bytes per pixel).
@pytest.mark.parametrize("kind,bytes_per_pixel", [("grey8", 3), ("grey16", 4.5), ("rgba", 8)])
def test_decoding_memory_is_bounded_per_pixel(large_images, kind, bytes_per_pixel):
    assert decode_under_limit(large_images[kind], bytes_per_pixel) == f"decoded ({SIDE}, {SIDE}, 1)"


def test_running_out_of_memory_is_one_unreadable_file_not_a_crash(large_images):
    assert decode_under_limit(large_images["rgba"], 1) == "refused: out of memory while decoding"


def test_the_pixel_limit_is_checked_from_the_header(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("L", (4000, 3000)).save(path)
    with pytest.raises(io.ImageDecodeError, match=r"4000 x 3000 = 12,000,000 pixels is more than the limit of "
                                                   r"1,000,000"):
        io.read_image(path, max_pixels=1_000_000)
    monkeypatch.setenv("FRACJAX_MAX_PIXELS", "1000000")
    with pytest.raises(io.ImageDecodeError, match="more than the limit"):
        io.read_image(path)
    monkeypatch.setenv("FRACJAX_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="FRACJAX_MAX_PIXELS must be a whole number"):
        io.read_image(path)
    monkeypatch.delenv("FRACJAX_MAX_PIXELS")
    assert io.read_image(path).shape == (3000, 4000, 1)  # under the default limit


def test_a_dicom_declaring_a_huge_image_is_refused_before_decoding(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))  # 1 KB of RLE pixel data
    ds.Rows, ds.Columns = 8192, 8192
    ds.save_as(tmp_path / "huge.dcm")
    assert os.path.getsize(tmp_path / "huge.dcm") < 10_000
    with pytest.raises(io.ImageDecodeError, match="8192 x 8192 = 67,108,864 pixels is more than the limit"):
        io.read_image(tmp_path / "huge.dcm")


def test_a_memory_error_inside_a_decoder_becomes_an_image_decode_error(tmp_path, monkeypatch):
    path = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(path)

    def exhausted(*args):
        raise MemoryError

    monkeypatch.setattr(io, "_read_pil", exhausted)
    with pytest.raises(io.ImageDecodeError, match="x.png: out of memory while decoding"):
        io.read_image(path)


def _valid_files():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (24, 20), dtype=np.uint8)
    files = {}
    for fmt, image in (("PNG", Image.fromarray(grey)), ("JPEG", Image.fromarray(grey)),
                       ("BMP", Image.fromarray(grey)), ("TIFF", Image.fromarray(grey.astype(np.uint16) * 200)),
                       ("PNG16", Image.fromarray(grey.astype(np.uint16) * 200))):
        buffer = bytes_io.BytesIO()
        image.save(buffer, format=fmt.replace("16", ""))
        files[fmt] = buffer.getvalue()
    with open(get_testdata_file("MR_small.dcm"), "rb") as f:
        files["DICOM"] = f.read()
    return files


VALID = _valid_files()
SUFFIX = {"PNG": ".png", "PNG16": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "DICOM": ".dcm"}


def _read_bytes(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "f" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        try:
            out = io.read_image(path, max_pixels=4_000_000)
        except io.ImageDecodeError as err:
            assert err.path == path
            return None
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[-1] == 1
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.sampled_from(sorted(set(SUFFIX.values())) + [""]))
def test_random_bytes_only_ever_raise_image_decode_error(data, suffix):
    _read_bytes(data, suffix)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(VALID)), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                                min_size=1, max_size=8), st.integers(0, 10**6))
def test_mutated_valid_files_decode_or_raise_image_decode_error(fmt, flips, cut):
    data = bytearray(VALID[fmt])
    for position, value in flips:
        data[position % len(data)] = value
    _read_bytes(bytes(data[: max(1, len(data) - cut % 64)]), SUFFIX[fmt])
