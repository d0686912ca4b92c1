"""Deterministic, rank-disjoint, per-epoch-shuffled sampling with dropped incomplete batches.

Epoch `e` uses the permutation `numpy.random.default_rng([seed, e]).permutation(N)`. Its first
`steps_per_epoch * global_batch` entries are cut into consecutive global batches (the incomplete tail is
dropped); rank `r` of `W` gets the `r`-th contiguous `global_batch / W` slice of every global batch. So, within an
epoch, ranks see disjoint samples, and the set of samples of optimizer step `s` is independent of the world size
and of the gradient-accumulation split. Each item is `(index, epoch, position)`: the augmentation of a sample
depends only on `(seed, epoch, position)` (see `vfmtok.engine.loader.AugmentedImages`), never on workers or
resumption. Resuming mid-epoch is `set_epoch(epoch, start_step)`.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler


class RankDisjointSampler(Sampler[tuple[int, int, int]]):
    """Per-rank sampler for a map-style dataset of `num_samples` items.

    Args:
        num_samples: dataset length N.
        global_batch: samples per optimizer step summed over ranks and accumulation micro-batches.
        rank, world_size: this process and the number of processes.
        seed: shuffling seed.
        shuffle: False keeps the natural order 0..N-1 every epoch.

    Raises:
        ValueError: if `global_batch` is not divisible by `world_size`, or N < global_batch (no full batch).
    """

    def __init__(
        self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1, seed: int = 0, shuffle: bool = True
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"RankDisjointSampler: rank {rank} not in [0, world_size={world_size})")
        if global_batch % world_size:
            raise ValueError(f"global batch size {global_batch} is not divisible by the number of processes {world_size}")
        if num_samples < global_batch:
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch} "
                "(incomplete batches are dropped); use a smaller --batch-size"
            )
        self.num_samples, self.global_batch = int(num_samples), int(global_batch)
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, int(seed), shuffle
        self.per_rank = global_batch // world_size
        self.steps_per_epoch = num_samples // global_batch
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select epoch `epoch` and skip its first `start_step` global batches (for resumption)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def permutation(self, epoch: int) -> np.ndarray:
        """(N,) int64: the sample order of `epoch` (identical on every rank)."""
        if not self.shuffle:
            return np.arange(self.num_samples, dtype=np.int64)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples).astype(np.int64)

    def step_indices(self, epoch: int, step_in_epoch: int, rank: int | None = None) -> np.ndarray:
        """(global_batch / W,) int64: dataset indices that `rank` (default: this rank) gets at a step of an epoch."""
        rank = self.rank if rank is None else rank
        lo = step_in_epoch * self.global_batch + rank * self.per_rank
        return self.permutation(epoch)[lo : lo + self.per_rank]

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        perm = self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            lo = step * self.global_batch + self.rank * self.per_rank
            for pos in range(lo, lo + self.per_rank):
                yield int(perm[pos]), self.epoch, pos

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.per_rank
