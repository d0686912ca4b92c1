"""Conversions between model-space images (float, [-1, 1], NCHW) and uint8 pixels (NHWC).

The rule reproduces the authors' decode-to-image path (`decode_codes_to_img`, CVMI-Lab/VFMTok @ 828c780;
shared/reference/checkpoints/README.md section 3.4), which every reported number (rFID, gFID, ...) went
through:

1. Optional resize (evaluation uses 336 -> 256): bicubic `F.interpolate`, align_corners=False, **no
   antialias**, on the raw unclamped float values (bicubic can overshoot [-1, 1]).
2. u = 127.5 * v + 128 (two float32 roundings: multiply, then add), clamped to [0, 255], then cast to uint8
   by truncation. So u = floor(127.5 * v + 128) = round-half-up of 127.5 * (v + 1):
   -1 -> 0, 0 -> 128, 1 -> 255 (255.5 floored), anything <= -1 -> 0, >= 1 -> 255.

The inverse, `from_uint8`, is the official data pipeline's normalisation (torchvision ToTensor then
Normalize(0.5, 0.5)): v = (u / 255 - 0.5) / 0.5. `to_uint8(from_uint8(u)) == u` exactly for every u.
"""
from __future__ import annotations

from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _check_images(images: Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{name}: expected float images (B, 3, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {images.dtype}")


def resize_bicubic(images: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Bicubic resize exactly as the official decode path: align_corners=False, no antialias, no clamping.

    Args:
        images: (B, C, H, W) float; computed in float32 (output float32).
        size: target side S (square) or (H', W').

    Returns:
        (B, C, H', W') float32; the input itself (as float32) when the size already matches.

    Raises:
        ValueError: bad shape, dtype or size.
    """
    _check_images(images, "resize_bicubic")
    out_hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(out_hw) != 2 or min(out_hw) < 1:
        raise ValueError(f"resize_bicubic: size must be a positive int or (H, W), got {size!r}")
    images = images.float()
    if tuple(images.shape[-2:]) == out_hw:
        return images
    return F.interpolate(images, size=out_hw, mode="bicubic", align_corners=False, antialias=False)


@overload
def to_uint8(images: Tensor, size: int | tuple[int, int] | None = None) -> Tensor: ...
@overload
def to_uint8(images: np.ndarray, size: int | tuple[int, int] | None = None) -> np.ndarray: ...


def to_uint8(images, size=None):
    """Convert decoder outputs to uint8 pixels (the official rule; see the module docstring).

    Args:
        images: (B, 3, H, W) float tensor or numpy array, nominally in [-1, 1] (any range accepted; values
            are clamped after the affine map). Half/bfloat16 inputs are upcast to float32 first.
        size: optional target side S or (H', W'); the resize happens before quantisation (step 1).

    Returns:
        (B, H', W', 3) uint8, same container type as the input (a torch tensor stays on its device).

    Raises:
        ValueError: not a 4-D floating-point (B, 3, H, W) input, or a bad size.
    """
    if isinstance(images, np.ndarray):
        return to_uint8(torch.from_numpy(images), size).numpy()
    if not isinstance(images, Tensor):
        raise ValueError(f"to_uint8: expected a torch.Tensor or numpy array, got {type(images).__name__}")
    _check_images(images, "to_uint8")
    images = images.float() if size is None else resize_bicubic(images, size)
    pixels = (images * 127.5 + 128.0).clamp_(0.0, 255.0).to(torch.uint8)
    return rearrange(pixels, "b c h w -> b h w c").contiguous()


def uint8_to_unit(pixels: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [-1, 1], elementwise, any shape and layout: v = (u / 255 - 0.5) / 0.5.

    The official data pipeline's normalisation (torchvision ToTensor then Normalize(0.5, 0.5)); bit-identical to
    `u / 127.5 - 1` for all 256 values.
    """
    return pixels.float().div(255.0).sub(0.5).div(0.5)


def image_to_tensor(image: np.ndarray) -> Tensor:
    """One uint8 (H, W, 3) numpy image (e.g. an ADM crop) -> float32 (3, H, W) tensor in [-1, 1] (`from_uint8`).

    The array is made contiguous and, when read-only (a view of a PIL image), copied, so torch gets memory it may
    own.

    Raises:
        ValueError: not uint8 (H, W, 3).
    """
    image = np.ascontiguousarray(image)
    if not image.flags.writeable:
        image = image.copy()
    return from_uint8(torch.from_numpy(image))


@overload
def from_uint8(pixels: Tensor) -> Tensor: ...
@overload
def from_uint8(pixels: np.ndarray) -> np.ndarray: ...


def from_uint8(pixels):
    """Convert uint8 pixels to model-space floats: v = (u / 255 - 0.5) / 0.5, in [-1, 1].

    Args:
        pixels: (B, H, W, 3) or (H, W, 3) uint8 tensor or numpy array (NHWC, as `to_uint8` returns and as
            ADM npz batches store).

    Returns:
        (B, 3, H, W) (or (3, H, W)) float32, same container type as the input; 0 -> -1, 255 -> 1,
        128 -> 0.00392 (1/255).

    Raises:
        ValueError: not uint8, or not (..., H, W, 3)-shaped.
    """
    if isinstance(pixels, np.ndarray):
        return from_uint8(torch.from_numpy(pixels)).numpy()
    if not isinstance(pixels, Tensor):
        raise ValueError(f"from_uint8: expected a torch.Tensor or numpy array, got {type(pixels).__name__}")
    if pixels.dtype != torch.uint8 or pixels.ndim not in (3, 4) or pixels.shape[-1] not in (1, 3):
        raise ValueError(
            f"from_uint8: expected uint8 (B, H, W, 3) or (H, W, 3), got {pixels.dtype} {tuple(pixels.shape)}"
        )
    images = uint8_to_unit(pixels)
    return rearrange(images, "... h w c -> ... c h w").contiguous()
