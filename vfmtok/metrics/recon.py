"""Reconstruction metrics for tokenizers: PSNR and SSIM (codebook usage: `vfmtok.metrics.codebook`).

Conventions (``shared/reference/evaluation.md`` section 1.8): images compared as float RGB in [0, 1]
(uint8 / 255). PSNR and SSIM use ``data_range = 1``. The official LlamaGen/VFMTok validation scripts call
scikit-image's SSIM with ``data_range = 2.0`` on [0, 1] images, which inflates SSIM; that number is
available as :func:`ssim` with ``data_range=2.0`` and must be labelled "SSIM (official data_range=2
variant)" wherever it is shown.

SSIM here is scikit-image's ``structural_similarity`` defaults re-implemented in torch (batched, any
device): 7 x 7 uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N / (N - 1) with N = 49), mean over
the valid (un-padded) region, then over channels.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim"]

_WIN = 7


def _check(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (B, C, H, W) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB: ``10 log10(data_range^2 / MSE)``.

    Args:
        a, b: float (B, C, H, W) images in [0, data_range].
        data_range: peak value (1 for [0, 1] images).

    Returns:
        float64 (B,) PSNR; +inf for identical images.

    Raises:
        ValueError: shapes differ or not 4-D.
    """
    _check(a, b)
    mse = ((a.double() - b.double()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM, equal to ``skimage.metrics.structural_similarity(..., channel_axis=-1, data_range=...)``.

    Args:
        a, b: float (B, C, H, W) images, H, W >= 7.
        data_range: 1 for [0, 1] images (correct); 2.0 reproduces the official scripts' variant (label it).

    Returns:
        float64 (B,) SSIM in [-1, 1].

    Raises:
        ValueError: shapes differ, not 4-D, or smaller than the 7 x 7 window.
    """
    _check(a, b)
    if min(a.shape[-2:]) < _WIN:
        raise ValueError(f"SSIM needs images of at least {_WIN}x{_WIN}, got {tuple(a.shape[-2:])}")
    x, y = a.double(), b.double()
    mean = lambda t: F.avg_pool2d(t, _WIN, stride=1)  # noqa: E731 - valid region only (skimage crops the border)
    n = _WIN * _WIN
    cov_norm = n / (n - 1)
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    smap = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return smap.mean(dim=(2, 3)).mean(dim=1)
