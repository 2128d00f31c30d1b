
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fracjax.data import io
from fracjax.data.io import ImageDecodeError, read_image, resize_bilinear


def gradient(h=40, w=60):
    return (np.add.outer(np.arange(h), np.arange(w)) * 255 // (h + w - 2)).astype(np.uint8)


def test_png_8bit_grey_is_exact(tmp_path):
    g = gradient()
    Image.fromarray(g).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (40, 60, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], g)


def test_png_16bit_is_rescaled_not_clamped(tmp_path):
    values = np.linspace(1000, 3000, 50 * 30).reshape(50, 30).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = read_image(tmp_path / "deep.png")[..., 0]
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out)) > 200  # the full range is used, nothing clipped to white
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # monotone in the stored values
    expected = np.round((values.astype(float) - 1000) / 2000 * 255)
    np.testing.assert_allclose(out, expected, atol=1)


def test_rgba_png_becomes_luminance_over_black(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 1] = 100
    rgba[..., 2] = 50
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # transparent top half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = read_image(tmp_path / "rgba.png")[..., 0]
    assert np.all(out[:5] == 0)
    assert np.all(out[5:] == round(200 * 0.299 + 100 * 0.587 + 50 * 0.114))


def test_palette_png(tmp_path):
    Image.fromarray(gradient()).convert("P").save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (40, 60, 1)
    assert abs(int(out.max()) - 255) <= 8


@pytest.mark.parametrize("mode", ["L", "RGB", "CMYK"])
def test_jpeg_modes(tmp_path, mode):
    g = gradient()
    img = Image.fromarray(g).convert(mode)
    img.save(tmp_path / "x.jpg", quality=95)
    assert Image.open(tmp_path / "x.jpg").mode == mode
    out = read_image(tmp_path / "x.jpg")[..., 0]
    assert out.shape == g.shape
    assert np.abs(out.astype(int) - g.astype(int)).mean() < 4


def test_jpeg_exif_orientation_is_applied(tmp_path):
    g = np.zeros((20, 50), np.uint8)
    g[:, :10] = 255  # bright band on the left
    img = Image.fromarray(g)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "rot.jpg")[..., 0]
    assert out.shape == (50, 20)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top


def test_bmp(tmp_path):
    Image.fromarray(gradient()).convert("RGB").save(tmp_path / "x.bmp")
    np.testing.assert_allclose(read_image(tmp_path / "x.bmp")[..., 0], gradient(), atol=1)


def test_truncated_jpeg(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / "t.jpg")
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match=r"t\.jpg.*(truncated|broken)") as info:
        read_image(tmp_path / "t.jpg")
    assert info.value.path.endswith("t.jpg")
    assert isinstance(info.value, ValueError)


def test_empty_and_text_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("radiology report, not an image\n")
    with pytest.raises(ImageDecodeError, match="notes.png: not a recognised image format"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(ImageDecodeError, match="gone.png: no such file"):
        read_image(tmp_path / "gone.png")
    (tmp_path / "scans.png").mkdir()
    with pytest.raises(ImageDecodeError, match="scans.png: a folder, not an image file"):
        read_image(tmp_path / "scans.png")


def test_dicom_ct_modality_lut_then_full_range():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    out = read_image(path)[..., 0]
    assert out.shape == hu.shape
    assert out.min() == 0 and out.max() == 255
    expected = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255)
    np.testing.assert_allclose(out, expected, atol=1)


def test_dicom_window_centre_width():
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(float)
    expected = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5), 0, 1) * 255
    out = read_image(path)[..., 0]
    np.testing.assert_allclose(out, np.round(expected), atol=1)


@pytest.mark.parametrize("function", ["SIGMOID", "LINEAR_EXACT"])
def test_dicom_voi_lut_function(tmp_path, function):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.VOILUTFunction = function
    ds.save_as(tmp_path / "f.dcm")
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    x = ds.pixel_array.astype(float)
    if function == "SIGMOID":  # PS3.3 C.11.2.1.3.2
        expected = 1 / (1 + np.exp(-4 * (x - c) / w))
    else:  # PS3.3 C.11.2.1.3.1
        expected = np.clip((x - c) / w + 0.5, 0, 1)
    out = read_image(tmp_path / "f.dcm")[..., 0]
    np.testing.assert_allclose(out, np.round(expected * 255), atol=1)
    linear = read_image(get_testdata_file("MR_small.dcm"))[..., 0]
    assert function == "LINEAR_EXACT" or np.abs(out.astype(int) - linear).max() > 10  # not windowed as LINEAR


def test_dicom_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mono2 = read_image(get_testdata_file("CT_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "mono1.dcm")
    mono1 = read_image(tmp_path / "mono1.dcm")
    np.testing.assert_array_equal(mono1, 255 - mono2)


def test_dicom_voi_lut_sequence(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.RescaleSlope, ds.RescaleIntercept
    lut = pydicom.Dataset()
    first, n = int(ds.pixel_array.min()), 256
    lut.LUTDescriptor = [n, first, 8]
    # identity over [first, first + n), saturating above
    lut.add_new(0x00283006, "US", list(range(n)))
    ds.VOILUTSequence = pydicom.Sequence([lut])
    ds.save_as(tmp_path / "voi.dcm")
    out = read_image(tmp_path / "voi.dcm")[..., 0]
    x = ds.pixel_array.astype(int)
    np.testing.assert_array_equal(out, np.clip(x - first, 0, 255))


def test_dicom_rgb_and_magic_without_extension(tmp_path):
    path = get_testdata_file("SC_rgb_small_odd.dcm")
    rgb = pydicom.dcmread(path).pixel_array.astype(float)
    copy = tmp_path / "no_extension"
    copy.write_bytes(open(path, "rb").read())
    out = read_image(copy)[..., 0]
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(out, np.round(luma), atol=1)


def test_truncated_dicom():
    with pytest.raises(ImageDecodeError, match="MR_truncated.dcm"):
        read_image(get_testdata_file("MR_truncated.dcm"))


def test_resize_bilinear_half_pixel_centres():
    img = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    same = resize_bilinear(img, (4, 4))
    np.testing.assert_allclose(same, img)
    up = resize_bilinear(img, (8, 8))[..., 0]
    # Half-pixel centres: output pixel 1 samples input position 0.25.
    assert up[0, 0] == 0.0 and abs(up[0, 1] - 0.25) < 1e-6
    down = resize_bilinear(img, (2, 2))[..., 0]
    # Position 0.5 between rows/cols 0 and 1: the mean of a 2x2 block.
    np.testing.assert_allclose(down, [[2.5, 4.5], [10.5, 12.5]])


def test_decode_image_of_bytes_is_read_image_of_the_file(tmp_path):
    import pydicom.data
    from PIL import Image

    rng = np.random.default_rng(7)
    grey = rng.integers(0, 256, (30, 20), dtype=np.uint8)
    paths = [str(tmp_path / name) for name in ("a.png", "a.jpg", "a.bmp", "a16.png", "a.tif")]
    for path, image in zip(paths, [grey, grey, grey, grey.astype(np.uint16) * 257, grey], strict=True):
        Image.fromarray(image).save(path)
    paths.append(pydicom.data.get_testdata_file("CT_small.dcm"))
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        np.testing.assert_array_equal(io.decode_image(data, "upload" + os.path.splitext(path)[1]), io.read_image(path))
    with open(paths[-1], "rb") as f:  # DICOM known by its preamble, whatever the name
        np.testing.assert_array_equal(io.decode_image(f.read(), "noname"), io.read_image(paths[-1]))


def test_decode_image_tells_not_an_image_and_too_large_from_damaged():
    from PIL import Image

    with pytest.raises(io.NotAnImageError, match="notes.txt: not a recognised image format"):
        io.decode_image(b"just some text", "notes.txt")
    buffer = __import__("io").BytesIO()
    Image.new("L", (300, 200)).save(buffer, "PNG")
    with pytest.raises(io.ImageTooLargeError, match="300 x 200 = 60,000 pixels"):
        io.decode_image(buffer.getvalue(), "big.png", max_pixels=50_000)
    with pytest.raises(io.ImageDecodeError, match="cut.png") as damaged:
        io.decode_image(buffer.getvalue()[:60], "cut.png")
    assert not isinstance(damaged.value, (io.NotAnImageError, io.ImageTooLargeError))
    with pytest.raises(io.ImageDecodeError, match="empty file"):
        io.decode_image(b"", "e.png")
