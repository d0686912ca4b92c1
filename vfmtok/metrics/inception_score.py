"""Inception Score as the ADM evaluator computes it, after a fixed-seed shuffle.

ADM (``shared/reference/evaluation.md`` section 1.5): p(y|x) = softmax(pool3 @ W) with the 1008-class fc
weight and no bias; the predictions are cut into **contiguous** chunks of 5000 (the last chunk may be
shorter); per chunk ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``; the result is the mean over chunks (no std).

Because the chunks are contiguous the score depends on sample order (a class-sorted npz gives IS ~ 60-80
instead of ~ 280). We therefore permute the samples first with ``numpy.random.default_rng(seed)
.permutation(N)``, default seed :data:`DEFAULT_SHUFFLE_SEED` = 0, recorded in the JSON output;
``shuffle_seed=None`` keeps the stored order (the TF evaluator's behaviour).

Numerics: probabilities and their logs in float64 via ``log_softmax`` (ADM takes ``np.log`` of a float32
softmax; identical up to round-off, but a probability that underflows to 0 contributes 0 (0 log 0 = 0)
instead of NaN).
"""
from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_SHUFFLE_SEED", "SPLIT_SIZE", "inception_score"]

SPLIT_SIZE = 5000
DEFAULT_SHUFFLE_SEED = 0


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def inception_score(logits: np.ndarray, split_size: int = SPLIT_SIZE,
                    shuffle_seed: int | None = DEFAULT_SHUFFLE_SEED) -> float:
    """Mean Inception Score over contiguous splits.

    Args:
        logits: (N, C) unbiased logits (pool3 @ fc.weight.T; C = 1008 for the TF Inception), N >= 1.
        split_size: chunk length (ADM: 5000).
        shuffle_seed: permute rows with ``np.random.default_rng(seed).permutation(N)`` first; None = keep order.

    Returns:
        The mean of ``exp(mean KL)`` over the ceil(N / split_size) chunks (1 <= IS <= C).

    Raises:
        ValueError: logits not 2-D, empty, or split_size < 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] < 1:
        raise ValueError(f"inception_score needs (N >= 1, C) logits, got shape {logits.shape}")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    if shuffle_seed is not None:
        logits = logits[np.random.default_rng(shuffle_seed).permutation(logits.shape[0])]
    log_p = _log_softmax(logits)
    p = np.exp(log_p)
    scores = []
    for start in range(0, len(p), split_size):
        part, log_part = p[start : start + split_size], log_p[start : start + split_size]
        with np.errstate(divide="ignore"):
            log_marginal = np.log(part.mean(axis=0, keepdims=True))
        terms = np.where(part > 0, part * (log_part - log_marginal), 0.0)  # 0 log 0 = 0
        kl = terms.sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))
