"""FID/sFID maths: closed form for Gaussians, sqrtm vs eigenvalue paths, ADM numerics (eps retry, clamp)."""
from __future__ import annotations

import numpy as np
import pytest

from vfmtok.metrics.fid import FidNumericsError, feature_statistics, frechet_distance, trace_sqrt_product


def _random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.standard_normal((dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_fid_matches_closed_form_for_diagonal_gaussians():
    # For commuting (diagonal) covariances, FID = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    s1, s2 = rng.uniform(0.5, 3.0, 16), rng.uniform(0.5, 3.0, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    for method in ("sqrtm", "eig", "eigh"):
        assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2), method) == pytest.approx(expected, rel=1e-10)


def test_fid_matches_closed_form_for_scaled_covariance():
    # sigma2 = c^2 sigma1 -> tr sqrt(s1 s2) = c tr s1, FID = |dmu|^2 + (1 - c)^2 tr s1.
    rng = np.random.default_rng(1)
    sigma = _random_spd(rng, 32)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    c = 1.7
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu2, c**2 * sigma) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_and_eigenvalue_paths_agree_on_full_covariances():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 64), _random_spd(rng, 64)
    values = {m: trace_sqrt_product(s1, s2, m) for m in ("sqrtm", "eig", "eigh")}
    # independent: tr sqrt(S1 S2) = sum of singular values of S1^(1/2) S2^(1/2) (nuclear norm)
    w1, v1 = np.linalg.eigh(s1)
    w2, v2 = np.linalg.eigh(s2)
    nuclear = np.linalg.svd((v1 * np.sqrt(w1)) @ v1.T @ (v2 * np.sqrt(w2)) @ v2.T, compute_uv=False).sum()
    for method, value in values.items():
        assert value == pytest.approx(nuclear, rel=1e-9), method


def test_sample_statistics_are_float64_unbiased():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((50, 5)).astype(np.float32)
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    centred = feats.astype(np.float64) - feats.astype(np.float64).mean(0)
    np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-12)


def test_fid_of_identical_rank_deficient_statistics_is_zero_not_negative():
    # Few samples in high dimension (rank-deficient covariances) trigger round-off; the result is clamped at 0.
    rng = np.random.default_rng(4)
    mu, sigma = feature_statistics(rng.standard_normal((6, 40)))
    for method in ("sqrtm", "eig", "eigh"):
        value = frechet_distance(mu, sigma, mu, sigma, method)
        assert 0.0 <= value < 1e-6, (method, value)


def test_singular_product_triggers_eps_retry(monkeypatch):
    # ADM: when sqrtm returns non-finite values, retry with 1e-6 on both diagonals (and warn).
    import scipy.linalg

    real_sqrtm = scipy.linalg.sqrtm
    calls = []

    def flaky_sqrtm(matrix):
        calls.append(matrix.copy())
        if len(calls) == 1:
            return np.full_like(matrix, np.nan)
        return real_sqrtm(matrix)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    with pytest.warns(UserWarning, match="1e-06"):
        value = trace_sqrt_product(s1, s2, "sqrtm")
    np.testing.assert_allclose(calls[1], (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2)))
    assert value == pytest.approx(np.sqrt(9.0 + 10e-6 + 1e-12) + np.sqrt(4.0 + 5e-6 + 1e-12), rel=1e-12)


def test_large_imaginary_diagonal_raises(monkeypatch):
    import scipy.linalg

    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: np.eye(2) * (1 + 0.01j))
    with pytest.raises(FidNumericsError, match="imaginary"):
        trace_sqrt_product(np.eye(2), np.eye(2), "sqrtm")


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="mismatched statistics"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_a_singular_covariance_product_warns_with_its_cause_and_keeps_the_exact_value():
    """diag(1, 0, 0, 4) squared: singular, and tr sqrt = 1 + 4 exactly. scipy's bare "Matrix is singular" LinAlgWarning
    becomes one warning that says why (fewer images than feature dimensions); the value is unchanged."""
    import warnings

    from scipy.linalg import LinAlgWarning

    from vfmtok.metrics.fid import trace_sqrt_product

    sigma = np.diag([1.0, 0.0, 0.0, 4.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = trace_sqrt_product(sigma, sigma, method="sqrtm")
    assert value == pytest.approx(5.0, abs=1e-9)
    assert not any(issubclass(w.category, LinAlgWarning) for w in caught)
    (w,) = caught
    assert "fid: Matrix is singular" in str(w.message) and "fewer images than feature dimensions" in str(w.message)
