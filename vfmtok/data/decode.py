"""The one image-decoding policy of vfmtok: any file -> 8-bit sRGB ``PIL.Image`` (mode ``"RGB"``), or a reason.

Every command that reads images (prepare-data, the image-folder readers, extract-tokens on folders)
goes through :func:`decode_image`, so a picture gives the same pixels everywhere. The policy:

1. The format is detected from the content, not the file extension (ImageNet train holds a PNG and
   CMYK JPEGs named ``.JPEG``). Callers decide which extensions are candidates (:data:`IMAGE_EXTENSIONS`).
2. The file is fully decoded (``Image.load``). Truncated data, zero-byte files, non-image content,
   decompression bombs (Pillow's default ``MAX_IMAGE_PIXELS``) and unsupported modes raise
   :class:`DecodeError` with a one-line reason. No process-wide Pillow setting is changed (no
   ``LOAD_TRUNCATED_IMAGES``, no ``MAX_IMAGE_PIXELS`` change).
3. EXIF orientation is applied (``ImageOps.exif_transpose``), so a rotated phone photo comes out upright.
4. An embedded ICC profile is honoured: pixels are converted to sRGB with LittleCMS (perceptual intent).
   Without a profile, RGB is taken as sRGB and CMYK is converted with Pillow's device formula
   (Adobe-inverted CMYK JPEGs are un-inverted by Pillow's decoder).
5. Modes: ``L``/``1``/``I;16*``/``I``/``F`` grey -> replicated to RGB; 16-bit data is **scaled**
   (``round(v * 255 / 65535)``), never clipped; ``I``/``F`` are scaled from their own type range
   (``I``: 0..65535 as written by 16-bit PNG/TIFF decoders; ``F``: 0.0..1.0, clipped outside, unless its
   maximum exceeds 2.0: then the file holds 0..255 floats, which are rounded and clipped to 0..255; NaN -> 0).
   ``P`` (palette) -> its RGB colours; ``P`` with a transparent index, ``RGB``/``L`` with a colour-key
   (PNG ``tRNS``), ``PA``, ``LA``, ``La``, ``RGBA``, ``RGBa`` -> **alpha-composited on white**
   (255, 255, 255): a transparent pixel shows white, the
   usual background of product photos and web graphics. ``YCbCr``, ``LAB``, ``HSV`` -> RGB conversion.
   16-bit RGB(A) PNGs are reduced to 8 bits by Pillow's decoder (high byte, ``v >> 8``: scaled, within
   one level of ``round(v * 255 / 65535)``). Animated images (GIF, APNG, WebP) give their first frame.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ALPHA_BACKGROUND", "DecodeError", "DecodedImage", "decode_image", "to_rgb"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm", ".pnm"})
"""File extensions (lower-case) treated as image candidates by the dataset layouts."""

FLOAT_UNIT_RANGE_MAX = 2.0
"""A float (mode ``F``) image whose maximum exceeds this is taken as 0..255 data, else as 0..1 data."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Colour that transparent pixels are composited on (white)."""

_SRGB = ImageCms.createProfile("sRGB")
_ORIENTATION = 0x0112  # EXIF tag
_MAGIC_NUMBERS = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"),
                  (b"MM\x00*", "TIFF"), (b"RIFF", "WEBP"), (b"BM", "BMP"))


class DecodeError(ValueError):
    """A file that the decoding policy rejects; ``str(err)`` is a one-line reason (no path)."""


@dataclass
class DecodedImage:
    """Result of :func:`decode_image`.

    Attributes:
        image: ``PIL.Image`` in mode ``"RGB"`` (8 bits per channel, sRGB).
        format: detected container format (``"JPEG"``, ``"PNG"``, ...).
        mode: the source's Pillow mode before conversion (``"CMYK"``, ``"P"``, ``"I;16"``, ...).
        transformed: True when the pixels differ from a plain decode of an RGB file, i.e. a mode conversion,
            EXIF rotation or ICC conversion took place (a stored copy must then be re-encoded).
    """

    image: Image.Image
    format: str
    mode: str
    transformed: bool


def _composite_on_background(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")


def to_rgb(image: Image.Image) -> tuple[Image.Image, bool]:
    """Convert a fully loaded Pillow image to 8-bit sRGB RGB following the module policy (steps 3-5).

    Args:
        image: a loaded ``PIL.Image`` of any mode.

    Returns:
        ``(rgb_image, transformed)``: mode ``"RGB"`` image; ``transformed`` is False only when the input
        was an RGB image without EXIF rotation or ICC profile (pixels unchanged).

    Raises:
        DecodeError: a mode with no defined conversion.
    """
    transformed = False
    if image.getexif().get(_ORIENTATION, 1) not in (1, None):
        image = ImageOps.exif_transpose(image)
        transformed = True
    icc = image.info.get("icc_profile")
    mode = image.mode
    if icc and mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if mode in ("RGBA", "LA"):
                alpha = image.getchannel("A")
                base = image.convert("RGB" if mode == "RGBA" else "L")
                rgb = ImageCms.profileToProfile(base, src, _SRGB, outputMode="RGB")
                rgb.putalpha(alpha)
                return _composite_on_background(rgb), True
            return ImageCms.profileToProfile(image, src, _SRGB, outputMode="RGB"), True
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # broken or mismatched profile: fall back to the device conversion below
    if mode in ("RGB", "L") and "transparency" in image.info:  # PNG colour-key (tRNS) transparency
        return _composite_on_background(image.convert("RGBA")), True
    if mode == "RGB":
        return image, transformed
    if mode in ("L", "1", "CMYK", "YCbCr", "HSV"):
        return image.convert("RGB"), True
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        return ImageCms.profileToProfile(image, lab, _SRGB, outputMode="RGB"), True
    if mode == "P":
        if "transparency" in image.info:
            return _composite_on_background(image.convert("RGBA")), True
        return image.convert("RGB"), True
    if mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return _composite_on_background(image.convert("RGBA")), True
    if mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64)
        return _grey_to_rgb(np.round(grey * (255.0 / 65535.0)).astype(np.uint8)), True
    if mode == "I":
        grey = np.clip(np.asarray(image).astype(np.float64), 0, 65535)
        return _grey_to_rgb(np.round(grey * (255.0 / 65535.0)).astype(np.uint8)), True
    if mode == "F":
        grey = np.asarray(image).astype(np.float64)
        top = float(np.nanmax(grey)) if grey.size else 0.0
        scale = 1.0 if top > FLOAT_UNIT_RANGE_MAX else 255.0  # a 0..255 float image, else 0..1
        grey = np.clip(np.nan_to_num(grey, nan=0.0), 0.0, 255.0 / scale)
        return _grey_to_rgb(np.round(grey * scale).astype(np.uint8)), True
    raise DecodeError(f"unsupported image mode {mode!r}")


def decode_image(source: str | os.PathLike | bytes) -> DecodedImage:
    """Decode a file (or its bytes) to 8-bit sRGB following the module policy.

    Args:
        source: a path or the encoded bytes.

    Returns:
        :class:`DecodedImage` with a mode ``"RGB"`` image (values 0..255, sRGB).

    Raises:
        DecodeError: empty file, unreadable file, not an image, truncated or corrupt data, decompression
            bomb, or unsupported mode; the message is a one-line reason.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise DecodeError(f"cannot read file: {exc.strerror or exc}") from exc
    if not data:
        raise DecodeError("empty file (0 bytes)")
    fmt = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt, mode = image.format or "unknown", image.mode
            image.load()
    except UnidentifiedImageError:
        for magic, name in _MAGIC_NUMBERS:
            if data.startswith(magic):
                raise DecodeError(f"corrupt or truncated {name} data: unreadable header") from None
        raise DecodeError("not an image (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise DecodeError(f"corrupt or truncated {fmt} data: {exc}") from None
    if image.width < 1 or image.height < 1:
        raise DecodeError(f"empty image size {image.size}")
    rgb, transformed = to_rgb(image)
    if rgb.mode != "RGB":  # defensive: every branch above returns RGB
        raise DecodeError(f"conversion produced mode {rgb.mode!r}")
    return DecodedImage(image=rgb, format=fmt, mode=mode, transformed=transformed)

