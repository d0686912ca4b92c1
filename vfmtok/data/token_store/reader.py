"""Token store reading: `TokenDataset`, the one reader of a store (whole store or a subset of its images), and
`check_token_store`, every check a training run makes before its first step.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vfmtok.data.token_store.format import (CODES_FILE, LABELS_FILE, MANIFEST_FILE, StoreLayout, epoch_key,
                                            read_manifest, splitmix64, view_from_key)
from vfmtok.io.hashing import sha256_file


class TokenDataset(torch.utils.data.Dataset):
    """Map-style dataset over a complete token store.

    `ds[i]` -> (codes (L,) int64 tensor, label numpy int64 scalar; DataLoader collates it to an int64
    tensor): image i's code sequence of ONE augmentation, chosen by :func:`augmentation_choice` from
    (seed, epoch, i), so an epoch is reproducible whatever the number of ranks, workers, batch size or
    order. `ds[(i, epoch, position)]` (the items of `vfmtok.engine.sampler.RankDisjointSampler`) returns
    the same as `ds[i]` after `set_epoch(epoch)`, without relying on :meth:`set_epoch` (safe with
    persistent workers). `ds[list_or_array]` -> (codes (B, L) int64, labels (B,) int64) in one vectorised read: use it
    through `DataLoader(ds, sampler=BatchSampler(sampler, B, drop_last), batch_size=None)` for the
    fastest loading (no per-sample collation).

    Call :meth:`set_epoch` before each epoch, before the DataLoader iterator is created (workers receive
    a copy of the dataset; with `persistent_workers=True` a later epoch change does not reach them).

    Worker-safe: the dataset pickles as paths and ints; each process opens read-only numpy memory maps
    on first access (no per-sample Python objects: memory stays flat, shared pages stay shared).

    A subset: with `indices` (n,) item i is store image `indices[i]` (its view is still chosen from the store
    index, so a subset reads exactly what the whole store reads for those images), and with `return_index` every
    item also carries that store index: `(codes (L,) int64, label () int64 tensor, store index () int64 tensor)`.
    This is how `train-ar` reads its training split.

    All neighbours (`all_neighbours=True`, RAR's recipe): a store made with `extract-tokens --neighbours K` holds,
    per crop view v of V = A / K, the (k+1)-th nearest code sequences at index k V + v. Then item i is the crop
    view v chosen from (seed, epoch, store index) among the V views (the same rule, modulo V) and its codes are
    all K neighbour sequences of that view: `(K, L)` int64, nearest first (collated to (B, K, L)). K = 1 for a
    store without neighbours, so it degrades to one sequence per item, shaped (1, L).

    Args:
        path: store directory.
        seed: seed of the augmentation choice.
        augmentation: None (random per item, default) or a fixed view index in [0, A).
        allow_incomplete: read an incomplete store (testing only; unwritten rows hold the sentinel).
        indices: (n,) int store rows forming the dataset (default: all N images in order).
        return_index: items are `(codes, label, store index)` tensors (see above).
        all_neighbours: items hold every neighbour sequence of one crop view (see above).

    Raises:
        FileNotFoundError / ValueError: not a token store, incomplete, `augmentation` out of range (or given with
            `all_neighbours`), or a manifest whose view count is not a multiple of its neighbour count.
    """

    def __init__(
        self,
        path: str | Path,
        seed: int = 0,
        augmentation: int | None = None,
        allow_incomplete: bool = False,
        indices: np.ndarray | None = None,
        return_index: bool = False,
        all_neighbours: bool = False,
    ) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest.get("complete") and not allow_incomplete:
            raise ValueError(
                f"{self.path}: token store is incomplete; rerun the same `vfmtok extract-tokens` command to resume"
            )
        self.layout = StoreLayout.from_manifest(self.manifest)
        if augmentation is not None and not 0 <= augmentation < self.layout.num_augmentations:
            raise ValueError(f"augmentation {augmentation} outside [0, {self.layout.num_augmentations})")
        self.seed = int(seed)
        self.augmentation = augmentation
        self._n = self.layout.num_images
        self._a = self.layout.num_augmentations
        self._rows = None if indices is None else np.asarray(indices, dtype=np.int64)
        if self._rows is not None and self._rows.size and (self._rows.min() < 0 or self._rows.max() >= self._n):
            raise ValueError(f"indices must lie in the token store's [0, {self._n})")
        self.return_index = bool(return_index)
        self.all_neighbours = bool(all_neighbours)
        self.neighbours = store_neighbours(self.manifest, self.path)
        if self.all_neighbours and augmentation is not None:
            raise ValueError("all_neighbours chooses the crop view per epoch; a fixed augmentation cannot be combined "
                             "with it")
        self._codes: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self.set_epoch(0)

    # -- properties from the manifest ---------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def classes(self) -> list[str]:
        """Class names (WordNet ids for ImageNet); label i names classes[i]."""
        return list(self.manifest["classes"])

    @property
    def vocab_size(self) -> int:
        """Codebook size K: codes are in [0, K)."""
        return self.layout.codebook_size

    @property
    def num_tokens(self) -> int:
        return self.layout.num_tokens

    @property
    def grid_size(self) -> int:
        """Side of the (square) token grid, e.g. 16 for 256 tokens."""
        return int(self.manifest["grid_size"])

    @property
    def num_augmentations(self) -> int:
        return self.layout.num_augmentations

    # -- data access ---------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draw of `epoch` (non-negative int)."""
        self.epoch = int(epoch)
        self._key = epoch_key(self.seed, self.epoch)
        self._table: np.ndarray | None = None  # (N,) views of this epoch, built on first access

    def _build_table(self) -> np.ndarray:
        """All N choices of the epoch in one vectorised pass (N bytes for A <= 256)."""
        dtype = np.uint8 if self._a <= 256 else np.int64
        if self.augmentation is not None:
            self._table = np.full(self._n, self.augmentation, dtype=dtype)
        else:
            self._table = np.empty(self._n, dtype=dtype)
            step = 1 << 20
            for start in range(0, self._n, step):
                stop = min(self._n, start + step)
                self._table[start:stop] = view_from_key(self._key, np.arange(start, stop), self._a)
        return self._table

    def _open(self) -> None:
        # Plain ndarray views of the maps: indexing a np.memmap subclass costs ~10x more per item.
        codes = np.load(self.path / CODES_FILE, mmap_mode="r")
        labels = np.load(self.path / LABELS_FILE, mmap_mode="r")
        expect = (self._n, self._a, self.layout.num_tokens)
        if codes.shape != expect or codes.dtype != self.layout.dtype or labels.shape != (self._n,):
            raise ValueError(
                f"{self.path}: codes.npy {codes.shape} {codes.dtype} / labels.npy {labels.shape} do not match the "
                f"manifest {expect} {self.layout.dtype} / ({self._n},)"
            )
        self._codes, self._labels = codes.view(np.ndarray), labels.view(np.ndarray)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_codes"] = state["_labels"] = state["_table"] = None
        return state

    def __len__(self) -> int:
        return self._n if self._rows is None else len(self._rows)

    def augmentation_of(self, index: int | np.ndarray) -> int | np.ndarray:
        """The view index (or int64 indices) item `index` returns in the current epoch."""
        if self.augmentation is not None:
            return self.augmentation if np.ndim(index) == 0 else np.full(np.shape(index), self.augmentation)
        return view_from_key(self._key, index, self._a)

    def _fetch(self, items: list[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Vectorised read of items `i` or `(i, epoch, position)` -> (codes (B, L), labels (B,), rows (B,)) int64."""
        if self._codes is None:
            self._open()
        pairs = [(int(it[0]), int(it[1])) if isinstance(it, tuple) else (int(it), self.epoch) for it in items]
        sub = np.array([p[0] for p in pairs], dtype=np.int64)
        epochs = np.array([p[1] for p in pairs], dtype=np.int64)
        if sub.size and (sub.min() < 0 or sub.max() >= len(self)):
            bad = int(sub[(sub < 0) | (sub >= len(self))][0])
            raise IndexError(f"index {bad} outside [0, {len(self)})")
        rows = sub if self._rows is None else self._rows[sub]
        views = np.empty(len(rows), dtype=np.int64)
        choices = self._a // self.neighbours if self.all_neighbours else self._a
        for e in np.unique(epochs):
            mask = epochs == e
            views[mask] = (self.augmentation if self.augmentation is not None
                           else view_from_key(epoch_key(self.seed, int(e)), rows[mask], choices))
        if self.all_neighbours:  # (B, K): view v of every neighbour rank k sits at k * V + v
            views = views[:, None] + choices * np.arange(self.neighbours)[None, :]
            rows_2d = np.broadcast_to(rows[:, None], views.shape)
            codes = torch.from_numpy(self._codes[rows_2d, views].astype(np.int64))
        else:
            codes = torch.from_numpy(self._codes[rows, views].astype(np.int64))
        return codes, torch.from_numpy(self._labels[rows].astype(np.int64)), torch.from_numpy(rows)

    def __getitem__(self, index: Any) -> tuple[torch.Tensor, Any]:
        if self.return_index or self._rows is not None or self.all_neighbours:
            if isinstance(index, (int, np.integer, tuple)):
                codes, labels, rows = self._fetch([index])
                return (codes[0], labels[0], rows[0]) if self.return_index else (codes[0], labels[0])
            codes, labels, rows = self._fetch(list(np.asarray(index, dtype=np.int64)))
            return (codes, labels, rows) if self.return_index else (codes, labels)
        if self._codes is None:
            self._open()
        table = self._table if self._table is not None else self._build_table()
        if isinstance(index, (int, np.integer)):
            if not 0 <= index < self._n:
                raise IndexError(f"index {index} outside the token store's [0, {self._n})")
            return torch.from_numpy(self._codes[index, table[index]].astype(np.int64)), self._labels[index]
        if isinstance(index, tuple):  # (index, epoch, position) item of vfmtok.engine.sampler.RankDisjointSampler
            i, epoch = int(index[0]), int(index[1])
            if not 0 <= i < self._n:
                raise IndexError(f"index {i} outside the token store's [0, {self._n})")
            if self.augmentation is not None:
                aug = self.augmentation
            elif epoch == self.epoch:
                aug = int(table[i])
            else:
                aug = splitmix64(epoch_key(self.seed, epoch) ^ i) % self._a
            return torch.from_numpy(self._codes[i, aug].astype(np.int64)), self._labels[i]
        idx = np.asarray(index, dtype=np.int64)
        if idx.ndim != 1:
            raise IndexError(f"TokenDataset index must be an int or a 1-D list of ints, got shape {idx.shape}")
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            bad = int(idx[(idx < 0) | (idx >= self._n)][0])
            raise IndexError(f"index {bad} outside the token store's [0, {self._n})")
        codes = torch.from_numpy(self._codes[idx, table[idx]].astype(np.int64))
        return codes, torch.from_numpy(self._labels[idx].astype(np.int64))

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch used by DataLoader auto-batching: one vectorised read, then split into samples."""
        if self.return_index or self._rows is not None or self.all_neighbours or (
                indices and isinstance(indices[0], tuple)):
            codes, labels, rows = self._fetch(list(indices))
            parts = (codes, labels, rows) if self.return_index else (codes, labels)
            return list(zip(*(p.unbind(0) for p in parts)))
        codes, labels = self[indices]
        return list(zip(codes.unbind(0), labels.unbind(0)))


def store_neighbours(manifest: dict[str, Any], path: str | os.PathLike = "") -> int:
    """K, the neighbour sequences per crop view of a store (`extract-tokens --neighbours K`; 1 when not recorded).

    Read from `manifest["crop"]["neighbours"]`, else `manifest["settings"]["neighbours"]`.

    Raises:
        ValueError: K < 1 or the view count A is not a multiple of K (names the manifest).
    """
    crop, settings = manifest.get("crop") or {}, manifest.get("settings") or {}
    k = int(crop.get("neighbours") or settings.get("neighbours") or 1)
    views = int(manifest.get("num_augmentations", 1))
    if k < 1 or views % k:
        raise ValueError(f"{path}/{MANIFEST_FILE}: neighbours {k} does not divide num_augmentations {views}")
    return k


# ---------------------------------------------------------------------------------------------
# Checks a training run makes before its first step
# ---------------------------------------------------------------------------------------------
class TokenStoreError(ValueError):
    """The token store cannot train this model (empty, incomplete, labels/codes out of range, size mismatch)."""


@dataclass
class StoreInfo:
    """What a (checked) token store holds: N images of A views of L = grid**2 codes in [0, vocab_size)."""

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    num_images: int
    num_augmentations: int
    num_tokens: int
    grid_size: int
    vocab_size: int
    num_classes: int
    neighbours: int = 1  # K neighbour sequences per crop view (`extract-tokens --neighbours K`)


def check_token_store(path: str | os.PathLike, chunk_rows: int = 1 << 14) -> StoreInfo:
    """Open a token store and check everything a GPT or RAR run relies on, before any training step.

    Reads the manifest, then every label and every code once (in chunks of `chunk_rows` images).

    Args:
        path: store directory.
        chunk_rows: images per chunk of the code range check.

    Returns:
        A `StoreInfo`.

    Raises:
        FileNotFoundError: no store at `path`.
        TokenStoreError: empty or incomplete store, non-square token count, missing num_classes, a label outside
            [0, num_classes), a code outside [0, codebook_size) (each names the file, index and value), or a
            neighbour count that does not divide the view count.
    """
    path = Path(path)
    manifest = read_manifest(path)
    if int(manifest.get("num_images", 0)) < 1:
        raise TokenStoreError(f"{path}: the token store is empty (num_images = {manifest.get('num_images')}); "
                              "nothing to train on")
    if not manifest.get("complete"):
        raise TokenStoreError(f"{path}: the token store is incomplete; rerun the same `vfmtok extract-tokens` "
                              "command to finish it")
    layout = StoreLayout.from_manifest(manifest)
    try:
        store_neighbours(manifest, path)
    except ValueError as err:
        raise TokenStoreError(str(err)) from None
    grid = int(manifest.get("grid_size") or 0)
    if grid * grid != layout.num_tokens:
        raise TokenStoreError(f"{path}/manifest.json: num_tokens {layout.num_tokens} is not a square token grid "
                              f"(grid_size {manifest.get('grid_size')}); the GPT needs grid_size**2 tokens")
    if "num_classes" not in manifest or int(manifest["num_classes"]) < 1:
        raise TokenStoreError(f"{path}/manifest.json: num_classes missing or < 1")
    num_classes = int(manifest["num_classes"])
    labels = np.load(path / LABELS_FILE, mmap_mode="r")
    codes = np.load(path / CODES_FILE, mmap_mode="r")
    expect = (layout.num_images, layout.num_augmentations, layout.num_tokens)
    if labels.shape != (layout.num_images,) or codes.shape != expect:
        raise TokenStoreError(f"{path}: codes.npy {codes.shape} / labels.npy {labels.shape} do not match the "
                              f"manifest {expect} / ({layout.num_images},)")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise TokenStoreError(f"{path}/{LABELS_FILE}: label {int(labels[bad[0]])} of image {int(bad[0])} is "
                              f"outside [0, num_classes = {num_classes}) ({bad.size} such labels)")
    for start in range(0, layout.num_images, chunk_rows):
        block = np.asarray(codes[start : start + chunk_rows])
        if int(block.max()) >= layout.codebook_size:
            row = start + int(np.flatnonzero(block.reshape(len(block), -1).max(axis=1) >= layout.codebook_size)[0])
            raise TokenStoreError(f"{path}/{CODES_FILE}: image {row} holds code {int(codes[row].max())}, outside "
                                  f"[0, codebook_size = {layout.codebook_size})")
    return StoreInfo(path.resolve(), manifest, sha256_file(path / MANIFEST_FILE), layout.num_images,
                     layout.num_augmentations, layout.num_tokens, grid, layout.codebook_size, num_classes,
                     store_neighbours(manifest, path))


def check_model_matches_store(config: Any, info: StoreInfo, what: str) -> None:
    """Refuse a GPT config whose vocabulary, token count or class count differs from the store's.

    Raises:
        TokenStoreError: names each differing size, the model source `what` and the store.
    """
    diffs = [f"{name}: model {mine}, store {theirs}" for name, mine, theirs in (
        ("codebook size (vocab_size)", config.vocab_size, info.vocab_size),
        ("tokens per image (grid_size**2)", config.grid_size**2, info.num_tokens),
        ("num_classes", config.num_classes, info.num_classes)) if mine != theirs]
    if diffs:
        raise TokenStoreError(f"{what} does not match the token store {info.path}: " + "; ".join(diffs))


def load_val_set(info: StoreInfo, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation sequences: view 0 of each held-out image. Returns (codes (n, L) int64, labels (n,) int64)."""
    codes = np.load(info.path / CODES_FILE, mmap_mode="r")
    labels = np.load(info.path / LABELS_FILE, mmap_mode="r")
    return torch.from_numpy(codes[indices, 0].astype(np.int64)), torch.from_numpy(labels[indices].astype(np.int64))
