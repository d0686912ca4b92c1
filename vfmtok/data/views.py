"""The views of an image that `vfmtok extract-tokens` encodes (token store `aug` protocols).

Crop protocol at the tokenizer's input size S (all views are uint8 RGB, S x S):

- `none`: the ADM centre crop (guided-diffusion `center_crop_arr`: BOX halving while the short side is
  >= 2 S, BICUBIC resize of the short side to S, centre crop). V = 1 view.
- `flip`: that crop and its horizontal mirror. V = 2 views: [crop, flip(crop)].
- `ten-crop`: LlamaGen's `extract_codes_c2i.py --ten-crop` protocol (shared/reference/vfmtok.md 3.2): the
  ADM centre crop at C = int(S * 1.1), then torchvision `TenCrop(S)`. V = 10 views, in torchvision's order:
  0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right, 4 centre (offset round((C - S) / 2), Python
  rounding), then 5..9 = the same five crops taken from the horizontally mirrored C x C image. Hence view
  5 = mirror(view 1), 6 = mirror(view 0), 7 = mirror(view 3), 8 = mirror(view 2); view 9 = mirror(view 4)
  only when C - S is even (at S = 336, C = 369: view 9 mirrors original columns 17..352, view 4 shows 16..351).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from einops import rearrange

from vfmtok.data.crops import adm_center_crop, ten_crop

AUGMENTATIONS = ("none", "flip", "ten-crop")
TEN_CROP_SCALE = 1.1  # LlamaGen `--crop-range`
TEN_CROP_NAMES = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")


def view_names(aug: str) -> list[str]:
    """Names of the V views of `aug`, in stored order (see the module docstring)."""
    if aug == "none":
        return ["centre"]
    if aug == "flip":
        return ["centre", "centre-flipped"]
    if aug == "ten-crop":
        return [*TEN_CROP_NAMES, *(f"{n}-of-flipped" for n in TEN_CROP_NAMES)]
    raise ValueError(f"--aug {aug!r}: expected one of {', '.join(AUGMENTATIONS)}")


def make_views(image: Any, size: int, aug: str) -> np.ndarray:
    """The V views of one decoded image for protocol `aug`, as (V, 3, size, size) uint8.

    Uses `vfmtok.data.crops.adm_center_crop` (pixel-identical to guided-diffusion's `center_crop_arr`)
    and `vfmtok.data.crops.ten_crop` (torchvision `TenCrop` order).

    Args:
        image: a decoded RGB PIL image (`vfmtok.data.decode.decode_image(...).image`).
        size: tokenizer input size S in pixels.
        aug: 'none' | 'flip' | 'ten-crop'.

    Returns:
        (V, 3, size, size) uint8 array, views in the order of :func:`view_names`.

    Raises:
        ValueError: unknown `aug`, or not an RGB PIL image.
    """
    if aug == "none":
        views = adm_center_crop(image, size)[None]
    elif aug == "flip":
        crop = adm_center_crop(image, size)
        views = np.stack([crop, crop[:, ::-1]])
    elif aug == "ten-crop":
        views = ten_crop(adm_center_crop(image, int(size * TEN_CROP_SCALE)), size)
    else:
        raise ValueError(f"--aug {aug!r}: expected one of {', '.join(AUGMENTATIONS)}")
    return np.ascontiguousarray(rearrange(views, "v h w c -> v c h w"))
