"""The decoding policy: every mode becomes 8-bit RGB with the right colours; bad files give a reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFile

from vfmtok.data.decode import ALPHA_BACKGROUND, DecodeError, decode_image

RNG = np.random.default_rng(0)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
    out = decode_image(data)
    assert out.image.mode == "RGB"
    arr = np.asarray(out.image)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3
    return arr


def test_rgb_png_is_unchanged():
    rgb = RNG.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    out = decode_image(_encode(Image.fromarray(rgb), "PNG"))
    np.testing.assert_array_equal(np.asarray(out.image), rgb)
    assert not out.transformed and out.format == "PNG"


def test_grayscale_is_replicated_to_three_channels():
    grey = RNG.integers(0, 256, (7, 5), dtype=np.uint8)
    np.testing.assert_array_equal(_decode(_encode(Image.fromarray(grey, "L"), "PNG")), np.stack([grey] * 3, -1))


def test_bilevel_image_maps_to_black_and_white():
    bits = RNG.integers(0, 2, (6, 8)).astype(bool)
    arr = _decode(_encode(Image.fromarray(bits), "PNG"))
    np.testing.assert_array_equal(arr, np.stack([bits * 255] * 3, -1).astype(np.uint8))


def test_cmyk_tiff_without_profile_uses_device_formula():
    cmy = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    cmyk = np.concatenate([cmy, np.zeros((4, 6, 1), np.uint8)], -1)  # K = 0: RGB = 255 - CMY exactly
    arr = _decode(_encode(Image.fromarray(cmyk, "CMYK"), "TIFF"))
    np.testing.assert_array_equal(arr, 255 - cmy)


def test_cmyk_jpeg_gives_correct_colours():
    cmyk = np.zeros((32, 32, 4), np.uint8)
    cmyk[:, :16, 0] = 255  # cyan -> (0, 255, 255)
    cmyk[:, 16:, 1] = 255  # magenta -> (255, 0, 255)
    arr = _decode(_encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)).astype(int)
    assert np.abs(arr[4:28, 2:12] - [0, 255, 255]).max() <= 8
    assert np.abs(arr[4:28, 20:30] - [255, 0, 255]).max() <= 8


def test_palette_image_gives_palette_colours():
    colours = np.array([[255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    index = RNG.integers(0, 3, (5, 7), dtype=np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.ravel().tolist())
    np.testing.assert_array_equal(_decode(_encode(image, "PNG")), colours[index])


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_composited_on_white(fmt):
    colours = np.array([[255, 0, 0], [0, 0, 255]], np.uint8)
    index = np.array([[0, 1, 1], [1, 0, 0]], np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette(colours.ravel().tolist())
    arr = _decode(_encode(image, fmt, transparency=0))
    expected = np.where(index[..., None] == 0, np.array(ALPHA_BACKGROUND, np.uint8), colours[index])
    np.testing.assert_array_equal(arr, expected)


def test_rgba_is_alpha_composited_on_white():
    rgb = RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    alpha = np.array([0, 64, 128, 200, 255, 255], np.uint8)[None, :].repeat(6, 0)
    arr = _decode(_encode(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG")).astype(float)
    a = alpha[..., None] / 255.0
    expected = rgb * a + 255.0 * (1 - a)
    assert np.abs(arr - expected).max() <= 1.0
    np.testing.assert_array_equal(arr[:, 0], 255)  # fully transparent -> white
    np.testing.assert_array_equal(arr[:, 4], rgb[:, 4])  # opaque -> unchanged


def test_la_is_alpha_composited_on_white():
    grey = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    alpha = np.full((4, 4), 100, np.uint8)
    arr = _decode(_encode(Image.fromarray(np.dstack([grey, alpha]), "LA"), "PNG")).astype(float)
    expected = grey * (100 / 255) + 255 * (155 / 255)
    assert np.abs(arr - expected[..., None]).max() <= 1.0


def test_16bit_grey_png_is_scaled_not_clipped():
    values = np.array([[0, 255, 256, 32767], [32768, 40000, 65280, 65535]], np.uint16)
    image = Image.fromarray(values)  # mode I;16
    assert image.mode.startswith("I;16")
    arr = _decode(_encode(image, "PNG"))
    expected = np.round(values.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(arr[..., 0], expected)
    assert arr[0, 2, 0] == 1 and arr[1, 0, 0] == 128  # a clipping conversion would give 255 for both


def test_32bit_int_and_float_tiffs_are_scaled():
    ints = np.array([[0, 1000, 65535, 70000]], np.int32)
    arr = _decode(_encode(Image.fromarray(ints, "I"), "TIFF"))
    np.testing.assert_array_equal(arr[0, :, 0], np.round(np.minimum(ints[0], 65535) * 255 / 65535).astype(np.uint8))
    floats = np.array([[-0.5, 0.0, 0.25, 1.0, 2.0]], np.float32)
    arr = _decode(_encode(Image.fromarray(floats, "F"), "TIFF"))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 0, 64, 255, 255])


@pytest.mark.parametrize("orientation, expected", [
    (2, lambda a: a[:, ::-1]),
    (3, lambda a: a[::-1, ::-1]),
    (6, lambda a: np.rot90(a, k=-1)),  # "rotate 90 CW to display"
    (8, lambda a: np.rot90(a, k=1)),
])
def test_exif_orientation_is_applied(orientation, expected):
    rgb = RNG.integers(0, 256, (4, 7, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    out = decode_image(_encode(image, "PNG", exif=exif.tobytes()))
    np.testing.assert_array_equal(np.asarray(out.image), expected(rgb))
    assert out.transformed


def test_embedded_icc_profile_is_converted_to_srgb():
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = decode_image(_encode(Image.fromarray(rgb), "PNG", icc_profile=profile))
    assert out.transformed  # went through LittleCMS
    assert np.abs(np.asarray(out.image).astype(int) - rgb).max() <= 2  # sRGB -> sRGB is (almost) identity


def test_png_named_jpeg_is_decoded_by_content(tmp_path):
    rgb = RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    path = tmp_path / "disguised.JPEG"
    path.write_bytes(_encode(Image.fromarray(rgb), "PNG"))
    out = decode_image(path)
    assert out.format == "PNG"
    np.testing.assert_array_equal(np.asarray(out.image), rgb)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"this is a text file, not a picture\n", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "corrupt or truncated"),
])
def test_bad_bytes_raise_decode_error_with_reason(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_image(data)


def test_truncated_jpeg_is_rejected_and_global_setting_untouched():
    rgb = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(rgb), "JPEG", quality=90)
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is before is False
    assert Image.MAX_IMAGE_PIXELS is not None


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(DecodeError, match="cannot read"):
        decode_image(tmp_path / "nope.png")


def _png16_rgb(values: np.ndarray) -> bytes:
    """Minimal 16-bit-per-channel RGB PNG written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = values.shape
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16bit_rgb_png_is_scaled_within_one_level():
    values = np.array([[[0, 255, 256], [32768, 40000, 65535]]], np.uint16)
    arr = _decode(_png16_rgb(values)).astype(int)
    exact = np.round(values.astype(float) * 255 / 65535)
    assert np.abs(arr - exact).max() <= 1
    assert arr[0, 0, 2] == 1 and arr[0, 1, 0] == 128 and arr[0, 1, 2] == 255  # clipping would give 255, 255


def test_rgb_colour_key_transparency_is_composited_on_white():
    rgb = np.array([[[1, 2, 3], [200, 100, 50]]], np.uint8)
    arr = _decode(_encode(Image.fromarray(rgb), "PNG", transparency=(1, 2, 3)))
    np.testing.assert_array_equal(arr, [[ALPHA_BACKGROUND, [200, 100, 50]]])


def test_float_tiff_holding_0_to_255_is_not_saturated():
    floats = np.array([[0.0, 0.4, 17.6, 128.0, 254.6, 300.0, np.nan]], np.float32)
    arr = _decode(_encode(Image.fromarray(floats, "F"), "TIFF"))
    np.testing.assert_array_equal(arr[0, :, 0], [0, 0, 18, 128, 255, 255, 0])  # the [0, 1] rule gave 255 from 17.6 on
