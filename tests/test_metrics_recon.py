"""PSNR / SSIM against scikit-image, codebook usage against a hand count."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vfmtok.metrics.codebook import CodebookUsage
from vfmtok.metrics.recon import psnr, ssim


def _pair():
    photo = data.astronaut()[100:164, 200:260].astype(np.float64) / 255  # 64 x 60 x 3 real photo crop
    noisy = np.clip(photo + np.random.default_rng(0).normal(0, 0.05, photo.shape), 0, 1)
    return photo, noisy


def _t(img):
    return torch.from_numpy(img).permute(2, 0, 1)[None]


def test_psnr_matches_scikit_image():
    photo, noisy = _pair()
    assert psnr(_t(photo), _t(noisy)).item() == pytest.approx(peak_signal_noise_ratio(photo, noisy, data_range=1.0), rel=1e-10)


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_matches_scikit_image_defaults(data_range):
    photo, noisy = _pair()
    expected = structural_similarity(photo, noisy, channel_axis=-1, data_range=data_range)
    assert ssim(_t(photo), _t(noisy), data_range).item() == pytest.approx(expected, rel=1e-9)


def test_official_data_range_2_variant_is_higher():
    photo, noisy = _pair()
    assert ssim(_t(photo), _t(noisy), 2.0).item() > ssim(_t(photo), _t(noisy), 1.0).item()


def test_ssim_and_psnr_are_per_image_in_a_batch():
    photo, noisy = _pair()
    batch_a = torch.cat([_t(photo), _t(photo)])
    batch_b = torch.cat([_t(noisy), _t(photo)])
    values = ssim(batch_a, batch_b)
    assert values[1].item() == pytest.approx(1.0) and values[0].item() < 0.99
    assert torch.isinf(psnr(batch_a, batch_b)[1])


def test_codebook_usage_and_perplexity_match_hand_count():
    usage = CodebookUsage(8)
    usage.update(torch.tensor([[0, 1, 1], [3, 3, 3]]))
    usage.update(torch.tensor([1]))
    assert usage.counts.tolist() == [1, 3, 0, 3, 0, 0, 0, 0]
    assert usage.usage() == pytest.approx(3 / 8)
    p = np.array([1, 3, 3]) / 7
    assert usage.perplexity() == pytest.approx(float(np.exp(-(p * np.log(p)).sum())))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        usage.update(torch.tensor([8]))
