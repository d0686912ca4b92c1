"""Fréchet distance (FID / sFID) with the ADM evaluator's numerics.

ADM (``guided-diffusion/evaluations/evaluator.py``, itself from TTUR; ``shared/reference/evaluation.md``
section 1.4): statistics in float64 (mean and unbiased ``np.cov``, N - 1), trace term from
``scipy.linalg.sqrtm(sigma1 @ sigma2)``; if that has non-finite entries, retry with 1e-6 added to both
diagonals; if complex, raise when a diagonal imaginary part exceeds 1e-3, else keep the real part.
We additionally clamp the result at 0 (a Fréchet distance is never negative; tiny negative values are
round-off). The eigenvalue path (torch-fidelity / torchmetrics) computes tr sqrt(S1 S2) as the sum of the
real parts of the square roots of the eigenvalues of S1 S2; both are exposed.
"""
from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

__all__ = ["FidNumericsError", "feature_statistics", "frechet_distance", "trace_sqrt_product"]

SQRTM_EPS = 1e-6
IMAG_ATOL = 1e-3


class FidNumericsError(ValueError):
    """sqrtm produced a diagonal imaginary component above 1e-3 (as the ADM evaluator raises)."""


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of features, in float64 (ADM's ``np.mean`` / ``np.cov(rowvar=False)``).

    Args:
        features: (N, D) float array, N >= 2 (float32 activations as produced by Inception).

    Returns:
        ``(mu, sigma)``: float64 (D,) and (D, D).

    Raises:
        ValueError: not 2-D or fewer than 2 rows.
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_statistics needs (N >= 2, D) features, got shape {features.shape}")
    mu = np.mean(features, axis=0, dtype=np.float64)
    sigma = np.cov(features.astype(np.float64, copy=False), rowvar=False)
    return mu, np.atleast_2d(sigma)


def _sqrtm(linalg, matrix: np.ndarray) -> np.ndarray:
    # ADM calls sqrtm(..., disp=False); SciPy >= 1.17 deprecates `disp` and returns the matrix alone.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", linalg.LinAlgWarning)
        result = linalg.sqrtm(matrix)
    for w in caught:
        if issubclass(w.category, linalg.LinAlgWarning):  # say why, instead of scipy's bare "Matrix is singular"
            warnings.warn(f"fid: {w.message} The covariance product of {matrix.shape[0]}-d features is singular or "
                          f"ill-conditioned, as it is when either set has fewer images than feature dimensions; "
                          f"its FID/sFID is only a rough figure.", stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result[0] if isinstance(result, tuple) else result


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray, method: Literal["sqrtm", "eig", "eigh"] = "sqrtm") -> float:
    """tr (sigma1 sigma2)^(1/2).

    Args:
        sigma1, sigma2: (D, D) symmetric PSD float64 matrices.
        method: ``"sqrtm"`` (ADM/TTUR: scipy sqrtm, eps retry, imaginary check), ``"eig"`` (torch-fidelity:
            sum of sqrt of the real parts of the eigenvalues of sigma1 @ sigma2, negatives clipped to 0), or
            ``"eigh"`` (symmetric form: eigenvalues of sigma1^(1/2) sigma2 sigma1^(1/2), same value in exact
            arithmetic, ~20x faster at D = 2048 because it only needs symmetric eigensolvers).

    Returns:
        The trace as a Python float.

    Raises:
        FidNumericsError: sqrtm path, diagonal imaginary part > 1e-3.
        ValueError: unknown method.
    """
    if method == "sqrtm":
        from scipy import linalg

        covmean = _sqrtm(linalg, sigma1.dot(sigma2))
        if not np.isfinite(covmean).all():
            warnings.warn(f"fid: sqrtm of the covariance product is singular; adding {SQRTM_EPS} to the diagonals")
            offset = np.eye(sigma1.shape[0]) * SQRTM_EPS
            covmean = _sqrtm(linalg, (sigma1 + offset).dot(sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=IMAG_ATOL):
                largest = np.max(np.abs(covmean.imag))
                raise FidNumericsError(f"fid: imaginary component {largest} in sqrtm exceeds {IMAG_ATOL}")
            covmean = covmean.real
        return float(np.trace(covmean))
    if method == "eigh":
        import torch  # float64 LAPACK through torch (MKL), ~1.7x faster than numpy's OpenBLAS here

        s1, s2 = torch.from_numpy(np.ascontiguousarray(sigma1)), torch.from_numpy(np.ascontiguousarray(sigma2))
        values, vectors = torch.linalg.eigh(s1)
        root1 = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
        inner = root1 @ s2 @ root1
        return float(torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum())
    if method == "eig":
        eigenvalues = np.linalg.eigvals(sigma1.dot(sigma2))
        return float(np.sqrt(np.clip(eigenvalues.real, 0, None)).sum())
    raise ValueError(f"unknown trace method {method!r} (expected 'sqrtm', 'eig' or 'eigh')")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     method: Literal["sqrtm", "eig", "eigh"] = "sqrtm") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), the FID/sFID formula.

    ``||mu1 - mu2||^2 + tr sigma1 + tr sigma2 - 2 tr (sigma1 sigma2)^(1/2)``, clamped at 0.

    Args:
        mu1, mu2: (D,) means; sigma1, sigma2: (D, D) covariances (cast to float64; 1-D/0-D promoted).
        method: see :func:`trace_sqrt_product` (``"sqrtm"`` = ADM numerics, the default).

    Returns:
        The distance (>= 0) as a Python float.

    Raises:
        ValueError: shapes disagree. FidNumericsError: see :func:`trace_sqrt_product`.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: mismatched statistics mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs "
            f"{sigma2.shape} (reference statistics from a different feature layer?)"
        )
    diff = mu1 - mu2
    value = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2, method)
    return max(float(value), 0.0)
