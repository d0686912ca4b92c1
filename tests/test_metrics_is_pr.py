"""Inception Score (hand computation, split and shuffle rules) and precision/recall (brute force, roles)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vfmtok.metrics.inception_score import inception_score
from vfmtok.metrics.precision_recall import manifold_radii, pairwise_sq_distances, precision_recall


def _hand_is(logits: np.ndarray) -> float:
    # exp(mean_x KL(p(y|x) || p(y))) with explicit Python loops.
    probs = [[math.exp(v) / sum(math.exp(u) for u in row) for v in row] for row in logits.tolist()]
    marginal = [sum(p[j] for p in probs) / len(probs) for j in range(len(probs[0]))]
    kl = [sum(p[j] * (math.log(p[j]) - math.log(marginal[j])) for j in range(len(p))) for p in probs]
    return math.exp(sum(kl) / len(kl))


def test_inception_score_matches_hand_computation_with_contiguous_splits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((7, 5)) * 3
    expected = (_hand_is(logits[:3]) + _hand_is(logits[3:6]) + _hand_is(logits[6:])) / 3  # last split of 1
    assert inception_score(logits, split_size=3, shuffle_seed=None) == pytest.approx(expected, rel=1e-12)


def test_inception_score_shuffle_uses_documented_permutation():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((10, 4)) * 2
    perm = np.random.default_rng(5).permutation(10)
    expected = inception_score(logits[perm], split_size=4, shuffle_seed=None)
    assert inception_score(logits, split_size=4, shuffle_seed=5) == pytest.approx(expected, rel=1e-12)


def test_class_sorted_order_lowers_unshuffled_inception_score():
    # The #1 peer bug: contiguous splits over a class-sorted batch. Confident one-hot-ish predictions, 4 classes.
    logits = np.repeat(np.eye(4) * 10, 25, axis=0)  # sorted by class
    sorted_is = inception_score(logits, split_size=25, shuffle_seed=None)
    shuffled_is = inception_score(logits, split_size=25, shuffle_seed=0)
    assert sorted_is == pytest.approx(1.0, abs=1e-6)
    assert shuffled_is > 2.5


def _brute_force_pr(real: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    r_real, r_gen = radii(real), radii(gen)
    d = ((real[:, None] - gen[None]) ** 2).sum(-1)  # (N_real, N_gen)
    precision = np.mean([(d[:, j] <= r_real).any() for j in range(len(gen))])
    recall = np.mean([(d[i, :] <= r_gen).any() for i in range(len(real))])
    return float(precision), float(recall)


@pytest.mark.parametrize("block_size", [1000, 7, 3])
def test_precision_recall_matches_brute_force(block_size):
    rng = np.random.default_rng(2)
    real = rng.standard_normal((40, 6))
    gen = rng.standard_normal((33, 6)) * 1.3 + 0.4
    expected = _brute_force_pr(real, gen, 3)
    got = precision_recall(real, gen, k=3, block_size=block_size, fp16=False)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1  # the case discriminates


def test_precision_recall_roles_of_real_and_generated():
    # Generated points collapse onto a small part of the real manifold: high precision, low recall.
    rng = np.random.default_rng(3)
    real = rng.uniform(-1, 1, (200, 2))
    gen = rng.uniform(-0.2, 0.2, (200, 2))
    precision, recall = precision_recall(real, gen, k=3, fp16=False)
    assert precision > 0.95 and recall < 0.2
    assert (precision, recall) == pytest.approx(_brute_force_pr(real, gen, 3), abs=1e-12)
    swapped = precision_recall(gen, real, k=3, fp16=False)
    assert swapped[0] < 0.2 and swapped[1] > 0.95


def test_fp16_distances_follow_fp16_rounding_and_fall_back_on_overflow():
    rng = np.random.default_rng(4)
    u = torch.from_numpy(rng.uniform(0, 3, (5, 64))).float()
    v = torch.from_numpy(rng.uniform(0, 3, (4, 64))).float()
    exact = ((u[:, None].double() - v[None].double()) ** 2).sum(-1)
    d16 = pairwise_sq_distances(u, v, fp16=True)
    assert d16.dtype == torch.float32
    assert torch.equal(d16, d16.half().float())  # values are representable in fp16
    torch.testing.assert_close(d16.double(), exact, rtol=2e-2, atol=0.5)
    big = u * 300  # squared norms ~ 1e7 overflow fp16 -> float32 path
    d_big = pairwise_sq_distances(big, v, fp16=True)
    assert torch.isfinite(d_big).all()
    torch.testing.assert_close(d_big.double(), ((big[:, None].double() - v[None].double()) ** 2).sum(-1), rtol=1e-5, atol=1)


def test_manifold_radius_is_kth_neighbour_excluding_self():
    points = torch.tensor([[0.0], [1.0], [3.0], [6.0], [10.0]])
    radii = manifold_radii(points, k=3, block_size=2, fp16=False)
    assert radii[0].item() == 36.0  # point 0: squared distances 0, 1, 9, 36, 100
    brute = np.sort(((points - points.T) ** 2).numpy(), axis=1)[:, 3]
    assert radii.numpy().tolist() == brute.tolist()
