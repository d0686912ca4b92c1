"""Improved precision and recall (Kynkäänniemi et al. 2019) as the ADM evaluator computes them.

ADM (``shared/reference/evaluation.md`` section 1.6): pool3 features of the reference images (``arr_0``,
"real") and of the samples ("generated"); squared Euclidean distances ``|u|^2 - 2 u.v + |v|^2`` clamped at
0, computed in float16 and recomputed in float32 only if a float16 block has a non-finite value; the
manifold radius of a point is the squared distance to its k-th nearest neighbour within its own set
(k = 3, the self-distance counts as the 0-th); precision = fraction of generated points inside at least
one real hypersphere (distance <= radius), recall = fraction of real points inside at least one generated
hypersphere.

float16 here is computed the way a GPU float16 GEMM does it on any device: inputs and squared norms
rounded to float16, the dot products accumulated in float32 and rounded to float16, the sum formed in
float16. Memory: rows and columns are processed in blocks (default 10 000 x 10 000, ~0.4 GB per float32
block); the k nearest distances are merged block by block, so no N x M buffer is ever held. At
50 000 x 10 000 x 2048 the peak is about 1.5 GB (see ``benchmarks/evaluate.py``).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["BLOCK_SIZE", "NEIGHBOURHOOD_K", "manifold_radii", "pairwise_sq_distances", "precision_recall"]

NEIGHBOURHOOD_K = 3
BLOCK_SIZE = 10_000


def _sq_distances(u: torch.Tensor, v: torch.Tensor, half: bool) -> torch.Tensor:
    if half:
        u16, v16 = u.half(), v.half()
        norm_u = (u16 * u16).sum(dim=1, keepdim=True, dtype=torch.float32).half()
        norm_v = (v16 * v16).sum(dim=1, keepdim=True, dtype=torch.float32).half()
        dots = (u16.float() @ v16.float().T).half()
        return (norm_u - 2 * dots + norm_v.T).clamp_min(0)
    u32, v32 = u.float(), v.float()
    norm_u = (u32 * u32).sum(dim=1, keepdim=True)
    norm_v = (v32 * v32).sum(dim=1, keepdim=True)
    return (norm_u - 2 * (u32 @ v32.T) + norm_v.T).clamp_min(0)


def pairwise_sq_distances(u: torch.Tensor, v: torch.Tensor, fp16: bool = True) -> torch.Tensor:
    """Squared Euclidean distances between rows, float16 first with a float32 fallback (ADM).

    Args:
        u: (A, D) float features; v: (B, D) float features (same device).
        fp16: try float16 first (ADM behaviour); False computes in float32 directly.

    Returns:
        (A, B) float32 distances >= 0 (values carry float16 rounding unless the fallback was taken).
    """
    if fp16:
        dist = _sq_distances(u, v, half=True)
        if torch.isfinite(dist).all():
            return dist.float()
    return _sq_distances(u, v, half=False)


def manifold_radii(features: torch.Tensor, k: int = NEIGHBOURHOOD_K, block_size: int = BLOCK_SIZE,
                   fp16: bool = True) -> torch.Tensor:
    """Squared distance of each point to its k-th nearest neighbour in the same set (self = 0-th).

    Args:
        features: (N, D) float, N > k.
        k: neighbourhood size (ADM: 3).
        block_size: rows and columns per distance block (memory ~ block_size^2 * 10 bytes).
        fp16: see :func:`pairwise_sq_distances`.

    Returns:
        (N,) float32 radii (the (k+1)-th smallest of each row of the full distance matrix).

    Raises:
        ValueError: N <= k.
    """
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall needs more than k={k} points per set, got {n}")
    radii = torch.empty(n, dtype=torch.float32, device=features.device)
    for r0 in range(0, n, block_size):
        rows = features[r0 : r0 + block_size]
        best = None
        for c0 in range(0, n, block_size):
            dist = pairwise_sq_distances(rows, features[c0 : c0 + block_size], fp16)
            merged = dist if best is None else torch.cat([best, dist], dim=1)
            best = torch.topk(merged, min(k + 1, merged.shape[1]), dim=1, largest=False).values
            del dist, merged
        radii[r0 : r0 + block_size] = best.max(dim=1).values
    return radii


def precision_recall(real: torch.Tensor | np.ndarray, generated: torch.Tensor | np.ndarray,
                     k: int = NEIGHBOURHOOD_K, block_size: int = BLOCK_SIZE, fp16: bool = True,
                     device: torch.device | str | None = None) -> tuple[float, float]:
    """ADM precision and recall of generated features against real (reference) features.

    Args:
        real: (N_r, D) reference pool3 features (ADM: the 10 000 ``arr_0`` images of the reference batch).
        generated: (N_g, D) sample pool3 features.
        k: neighbourhood size (3). block_size: distance block edge. fp16: float16-first distances.
        device: where to compute (default: the device of ``real`` if a tensor, else CPU).

    Returns:
        ``(precision, recall)`` in [0, 1]: precision = share of generated points within some real
        point's k-NN radius; recall = share of real points within some generated point's radius.

    Raises:
        ValueError: feature widths differ or a set has <= k points.
    """
    real_t = torch.as_tensor(np.asarray(real) if not torch.is_tensor(real) else real)
    gen_t = torch.as_tensor(np.asarray(generated) if not torch.is_tensor(generated) else generated)
    if real_t.ndim != 2 or gen_t.ndim != 2 or real_t.shape[1] != gen_t.shape[1]:
        raise ValueError(f"precision_recall: feature shapes {tuple(real_t.shape)} and {tuple(gen_t.shape)} disagree")
    target = torch.device(device) if device is not None else real_t.device
    real_t, gen_t = real_t.to(target, torch.float32), gen_t.to(target, torch.float32)
    radii_real = manifold_radii(real_t, k, block_size, fp16)
    radii_gen = manifold_radii(gen_t, k, block_size, fp16)
    real_inside = torch.zeros(real_t.shape[0], dtype=torch.bool, device=target)
    gen_inside = torch.zeros(gen_t.shape[0], dtype=torch.bool, device=target)
    for r0 in range(0, real_t.shape[0], block_size):
        rows = real_t[r0 : r0 + block_size]
        for c0 in range(0, gen_t.shape[0], block_size):
            dist = pairwise_sq_distances(rows, gen_t[c0 : c0 + block_size], fp16)
            gen_inside[c0 : c0 + block_size] |= (dist <= radii_real[r0 : r0 + block_size, None]).any(dim=0)
            real_inside[r0 : r0 + block_size] |= (dist <= radii_gen[None, c0 : c0 + block_size]).any(dim=1)
            del dist
    return int(gen_inside.sum()) / gen_inside.numel(), int(real_inside.sum()) / real_inside.numel()
