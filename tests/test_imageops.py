"""uint8 conversion: the official rounding rule on hand-made values, the fixture's uint8 images, the inverse."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vfmtok.imageops import from_uint8, resize_bicubic, to_uint8


def as_images(values: list[float]) -> torch.Tensor:
    """(1, 3, 1, n) images whose three channels all hold `values`."""
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1).expand(1, 3, 1, -1).contiguous()


def test_rounding_rule_on_hand_made_values():
    values = [-1.0, 1.0, 0.0, -5.0, 7.0, 0.5, -0.5, 1.0 / 255.0, -1e-4, float("-inf")]
    # floor(127.5 v + 128) clamped: 0, 255.5 -> 255, 128, clamp, clamp, 191.75 -> 191, 64.25 -> 64,
    # 128.5 -> 128, 127.987 -> 127, -inf -> 0
    expected = [0, 255, 128, 0, 255, 191, 64, 128, 127, 0]
    got = to_uint8(as_images(values))
    assert got.shape == (1, 1, len(values), 3) and got.dtype == torch.uint8
    assert got[0, 0, :, 0].tolist() == expected
    assert torch.equal(got[..., 0], got[..., 2])


def test_matches_float32_floor_formula_on_random_values():
    rng = np.random.default_rng(0)
    v = rng.uniform(-1.3, 1.3, size=(2, 3, 9, 11)).astype(np.float32)
    expected = np.floor(np.clip(v * np.float32(127.5) + np.float32(128.0), 0, 255)).astype(np.uint8)
    got = to_uint8(v)  # numpy in, numpy out
    assert isinstance(got, np.ndarray) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected.transpose(0, 2, 3, 1))
    # half precision input is upcast first
    assert torch.equal(to_uint8(torch.from_numpy(v).bfloat16()), to_uint8(torch.from_numpy(v).bfloat16().float()))


def test_fixture_uint8_images_reproduced_exactly(fixtures_dir):
    out = load_file(fixtures_dir / "tok_tiny" / "outputs.safetensors")
    assert torch.equal(to_uint8(out["decoded"]), out["uint8_336"])
    assert torch.equal(to_uint8(out["decoded"], 256), out["uint8_256"])
    assert torch.equal(to_uint8(out["decoded_from_codes"], (256, 256)), out["uint8_256"])
    # the resize has no antialias and happens before clamping: either change breaks the match
    antialiased = F.interpolate(out["decoded"], size=256, mode="bicubic", align_corners=False, antialias=True)
    assert not torch.equal(to_uint8(antialiased), out["uint8_256"])
    clamped_first = resize_bicubic(out["decoded"].clamp(-1, 1), 256)
    assert not torch.equal(to_uint8(clamped_first), out["uint8_256"])


def test_from_uint8_is_the_exact_inverse():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16, 1).expand(2, 16, 16, 3).contiguous()
    images = from_uint8(pixels)
    assert images.shape == (2, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() == -1.0 and images.max() == 1.0
    torch.testing.assert_close(images[0, 0].flatten(), torch.arange(256) / 127.5 - 1, atol=1e-6, rtol=0)
    assert torch.equal(to_uint8(images), pixels)
    np.testing.assert_array_equal(to_uint8(from_uint8(pixels[0].numpy())[None]), pixels[:1].numpy())


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="floating-point"):
        to_uint8(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        to_uint8(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="size"):
        to_uint8(torch.zeros(1, 3, 4, 4), size=0)
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(torch.zeros(1, 4, 4, 3))
