"""ADM centre crop, ADM random crop, ten-crop, and the uint8 -> [-1, 1] tensor conversion.

Protocols reproduced (``shared/reference/evaluation.md`` section 1.8, ``vfmtok.md`` section 2):

* **ADM centre crop** (guided-diffusion ``center_crop_arr``; LlamaGen's val/rFID batches): while the short
  side is at least twice the target, halve the image with a BOX filter (``resize((w // 2, h // 2), BOX)``);
  then BICUBIC-resize so the short side equals the target (``scale = target / min(w, h)``, new size
  ``(round(w * scale), round(h * scale))`` with Python's round); then take the centre
  ``target x target`` window at ``top = (H - target) // 2``, ``left = (W - target) // 2``.
* **ADM random crop** (guided-diffusion ``random_crop_arr``; the VFMTok tokenizer's training
  augmentation, crop fraction 0.8-1.0): draw the resized short side ``s`` uniformly from the integers
  ``ceil(target / max_frac) .. ceil(target / min_frac)`` (336 -> 336..420), BOX-halve while the short side
  is at least ``2 * s``, BICUBIC-resize the short side to ``s``, and cut a ``target`` window at a uniform
  random offset. The random draws come from an explicit generator instead of Python's global ``random``.
* **Ten-crop** (torchvision ``TenCrop`` order, used by LlamaGen's code extraction after an ADM centre
  crop at 1.1x the size): four corners and the centre, then the same five of the horizontally flipped image.
"""
from __future__ import annotations

import math

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # torch is imported lazily so that prepare-data does not pay for it
    import torch

__all__ = ["adm_box_halve", "adm_center_crop", "adm_random_crop", "ten_crop", "AdmRandomCrop",
           "AdmCenterCrop"]


def _check(image: Image.Image, size: int) -> None:
    if not isinstance(image, Image.Image) or image.mode != "RGB":
        raise ValueError(f"expected a PIL RGB image (use vfmtok.data.decode.decode_image), got {image!r}")
    if size < 1:
        raise ValueError(f"crop size must be >= 1, got {size}")


def adm_box_halve(image: Image.Image, short_side: int) -> Image.Image:
    """BOX-halve ``image`` while its short side is at least ``2 * short_side`` (the ADM pre-shrink).

    Args:
        image: PIL image (any mode).
        short_side: the short side the caller will resize to next (pixels, >= 1).

    Returns:
        The halved image (the input object itself when no halving applies); its short side is then
        ``< 2 * short_side`` unless it already was.
    """
    while min(image.size) >= 2 * short_side:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    return image


def _resize_short_side(image: Image.Image, short_side: int) -> np.ndarray:
    image = adm_box_halve(image, short_side)
    scale = short_side / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    return np.asarray(image)


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """ADM centre crop (module docstring), pixel-identical to guided-diffusion's ``center_crop_arr``.

    Args:
        image: PIL ``RGB`` image of any size (upsampled with BICUBIC when smaller than ``size``).
        size: output side in pixels.

    Returns:
        uint8 array (size, size, 3), RGB 0..255.

    Raises:
        ValueError: not an RGB PIL image, or ``size < 1``.
    """
    _check(image, size)
    arr = _resize_short_side(image, size)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def adm_random_crop(image: Image.Image, size: int, rng: np.random.Generator, min_crop_frac: float = 0.8,
                    max_crop_frac: float = 1.0) -> np.ndarray:
    """ADM random crop (module docstring): random short side in ``[size/max_frac, size/min_frac]``, random window.

    Args:
        image: PIL ``RGB`` image.
        size: output side in pixels (336 for the VFMTok tokenizer).
        rng: numpy generator providing the three draws (short side, top, left), in that order.
        min_crop_frac, max_crop_frac: crop fraction range, ``0 < min <= max <= 1`` (VFMTok: 0.8, 1.0).

    Returns:
        uint8 array (size, size, 3). No flip (apply it separately, p = 0.5 in VFMTok).

    Raises:
        ValueError: bad image, size or fractions.
    """
    _check(image, size)
    if not 0 < min_crop_frac <= max_crop_frac <= 1:
        raise ValueError(f"need 0 < min_crop_frac <= max_crop_frac <= 1, got {min_crop_frac}, {max_crop_frac}")
    low, high = math.ceil(size / max_crop_frac), math.ceil(size / min_crop_frac)
    short_side = int(rng.integers(low, high + 1))
    arr = _resize_short_side(image, short_side)
    top = int(rng.integers(0, arr.shape[0] - size + 1))
    left = int(rng.integers(0, arr.shape[1] - size + 1))
    return np.ascontiguousarray(arr[top : top + size, left : left + size])


def ten_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """Ten ``size x size`` crops in torchvision ``TenCrop`` order.

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five of the horizontally
    flipped image. The centre window starts at ``round((H - size) / 2)``, ``round((W - size) / 2)``
    (torchvision's ``center_crop`` rounding).

    Args:
        arr: uint8 (H, W, 3) image with H, W >= size.
        size: crop side in pixels.

    Returns:
        Array (10, size, size, 3) with the input dtype.

    Raises:
        ValueError: image smaller than ``size`` or not (H, W, C).
    """
    if arr.ndim != 3 or arr.shape[0] < size or arr.shape[1] < size:
        raise ValueError(f"ten_crop: need an (H, W, C) image with H, W >= {size}, got shape {arr.shape}")
    h, w = arr.shape[:2]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    crops = []
    for img in (arr, arr[:, ::-1]):
        for y, x in ((0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)):
            crops.append(img[y : y + size, x : x + size])
    return np.ascontiguousarray(np.stack(crops))



class AdmRandomCrop:
    """Training transform: ADM random crop + horizontal flip (p = ``flip_p``) -> float (3, size, size) in [-1, 1].

    Randomness comes from ``torch``'s default generator (seeded per DataLoader worker by PyTorch), so
    workers draw different crops and a run is reproducible from ``torch.manual_seed``.

    Args:
        size: output side (336 for VFMTok).
        min_crop_frac, max_crop_frac: see :func:`adm_random_crop`.
        flip_p: probability of a horizontal flip.
    """

    def __init__(self, size: int, min_crop_frac: float = 0.8, max_crop_frac: float = 1.0, flip_p: float = 0.5):
        self.size, self.min_crop_frac, self.max_crop_frac, self.flip_p = size, min_crop_frac, max_crop_frac, flip_p

    def __call__(self, image: Image.Image) -> "torch.Tensor":
        import torch

        from vfmtok.imageops import image_to_tensor

        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        arr = adm_random_crop(image, self.size, rng, self.min_crop_frac, self.max_crop_frac)
        if rng.random() < self.flip_p:
            arr = arr[:, ::-1]
        return image_to_tensor(arr)


class AdmCenterCrop:
    """Evaluation transform: ADM centre crop -> float (3, size, size) in [-1, 1]."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> "torch.Tensor":
        from vfmtok.imageops import image_to_tensor

        return image_to_tensor(adm_center_crop(image, self.size))
