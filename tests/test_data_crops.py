"""ADM centre/random crops against hand-computed steps; ten-crop against torchvision; tensor scaling."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.data.crops import (AdmCenterCrop, AdmRandomCrop, adm_box_halve, adm_center_crop, adm_random_crop,
                               ten_crop)
from vfmtok.imageops import from_uint8, image_to_tensor


def _smooth(w: int, h: int) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)), ((x + 3 * y) % 256)], -1)
    return Image.fromarray(arr.astype(np.uint8))


def test_center_crop_exact_box_halving_against_block_means():
    """1024x768 -> 192: two BOX halvings (768 >= 384, 384 >= 384) to 256x192, no resize, left = 32."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, (192, 256, 3), dtype=np.uint8)
    image = Image.fromarray(blocks.repeat(4, 0).repeat(4, 1))  # constant 4x4 blocks: halving means are exact
    assert image.size == (1024, 768)
    np.testing.assert_array_equal(adm_center_crop(image, 192), blocks[:, 32:224])


def test_center_crop_follows_hand_computed_steps():
    """1030x700 -> 256: halve once to 515x350 (350 < 512), scale 256/350 -> (377, 256), left = (377-256)//2 = 60."""
    image = _smooth(1030, 700)
    halved = image.resize((515, 350), Image.BOX)
    resized = np.asarray(halved.resize((377, 256), Image.BICUBIC))
    np.testing.assert_array_equal(adm_center_crop(image, 256), resized[0:256, 60:316])


def test_center_crop_upsamples_small_images():
    """100x80 -> 256: no halving, scale 3.2 -> (320, 256), left = 32."""
    image = _smooth(100, 80)
    expected = np.asarray(image.resize((320, 256), Image.BICUBIC))[:, 32:288]
    out = adm_center_crop(image, 256)
    assert out.dtype == np.uint8 and out.shape == (256, 256, 3)
    np.testing.assert_array_equal(out, expected)


def test_box_halve_stops_below_twice_the_target():
    image = _smooth(1700, 1000)
    assert adm_box_halve(image, 256).size == (850, 500)  # 1000 >= 512 -> 500; 500 < 512 stops
    assert adm_box_halve(image, 250).size == (425, 250)  # 500 >= 500 -> halve again; 250 < 500 stops
    assert adm_box_halve(image, 200).size == (425, 250)  # 250 < 400 stops
    assert adm_box_halve(image, 600).size == (1700, 1000)


class ScriptedRng:
    """Stand-in generator: checks the requested integer ranges and returns scripted draws."""

    def __init__(self, script):
        self.script = list(script)

    def integers(self, low, high):
        (exp_low, exp_high), value = self.script.pop(0)
        assert (low, high) == (exp_low, exp_high)
        return value


def test_random_crop_ranges_and_steps_match_adm():
    """336 target, fractions 0.8-1.0 -> short side drawn from 336..420; 1000x900 with s = 400:
    halve to 500x450 (450 < 800), resize to (444, 400), crop at (top 10, left 100)."""
    image = _smooth(1000, 900)
    rng = ScriptedRng([((336, 421), 400), ((0, 65), 10), ((0, 109), 100)])
    out = adm_random_crop(image, 336, rng)
    resized = np.asarray(image.resize((500, 450), Image.BOX).resize((444, 400), Image.BICUBIC))
    np.testing.assert_array_equal(out, resized[10:346, 100:436])
    assert not rng.script


def test_random_crop_covers_the_scale_range_and_differs_between_draws():
    image = _smooth(300, 200)
    rng = np.random.default_rng(1)
    crops = [adm_random_crop(image, 64, rng) for _ in range(20)]
    assert all(c.shape == (64, 64, 3) and c.dtype == np.uint8 for c in crops)
    assert len({c.tobytes() for c in crops}) == 20
    with pytest.raises(ValueError, match="min_crop_frac"):
        adm_random_crop(image, 64, rng, min_crop_frac=0.0)


def test_ten_crop_matches_torchvision():
    from torchvision.transforms.functional import ten_crop as tv_ten_crop

    arr = np.random.default_rng(2).integers(0, 256, (11, 14, 3), dtype=np.uint8)
    ours = ten_crop(arr, 6)
    theirs = tv_ten_crop(torch.from_numpy(arr).permute(2, 0, 1), [6, 6])
    assert ours.shape == (10, 6, 6, 3)
    for mine, ref in zip(ours, theirs):
        np.testing.assert_array_equal(mine, ref.permute(1, 2, 0).numpy())


def test_to_tensor_scales_to_minus_one_one():
    arr = np.array([[[0, 127, 255]]], np.uint8)
    tensor = from_uint8(torch.from_numpy(arr))
    assert tensor.shape == (3, 1, 1) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor.flatten(), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))


def test_transforms_return_minus_one_one_tensors_and_flip():
    image = _smooth(90, 70)
    torch.manual_seed(0)
    random_crop = AdmRandomCrop(48, flip_p=1.0)
    tensor = random_crop(image)
    assert tensor.shape == (3, 48, 48) and tensor.min() >= -1 and tensor.max() <= 1
    # the smooth image's red channel grows with x; a flipped crop decreases along x
    assert (tensor[0, :, 0] > tensor[0, :, -1]).all()
    centre = AdmCenterCrop(48)(image)
    torch.testing.assert_close(centre, image_to_tensor(adm_center_crop(image, 48)))
