"""Torch datasets over prepared data (``vfmtok prepare-data`` output) and over plain image folders.

* :class:`PreparedDataset` - map-style, random access through ``index.npz`` (one ``seek`` + ``read`` per
  image); use it with a sampler for training.
* :class:`PreparedStream` - iterable, in source-index order, split across ranks x DataLoader workers
  into contiguous blocks without duplicates or drops (no padding); use it for inference passes such as
  ``extract-tokens``.
* :class:`ImageFolderDataset` - the same item format straight from a folder of class folders (or any
  layout of :func:`vfmtok.data.layouts.discover`), decoded with the same policy.

Items are ``(image, label)`` (or ``(index, image, label)`` with ``return_index=True``): ``image`` is
``transform(pil_rgb_image)`` when a transform is given (e.g. :class:`vfmtok.data.crops.AdmRandomCrop` ->
float (3, H, W) in [-1, 1]), otherwise a uint8 numpy array (H, W, 3); ``label`` is a Python int
(collated to an int64 tensor), ``index`` the position in the prepared dataset (0..N-1).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vfmtok.data.decode import DecodeError, decode_image
from vfmtok.data.layouts import discover, load_classes
from vfmtok.data.shards import PREPARED_FORMAT, PREPARED_FORMAT_VERSION

__all__ = ["PreparedDataset", "PreparedStream", "ImageFolderDataset", "partition", "read_manifest"]


def partition(n: int, rank: int, world_size: int) -> range:
    """Contiguous block of ``range(n)`` owned by ``rank`` of ``world_size`` (sizes differ by at most one).

    Blocks are disjoint and cover ``0..n-1`` exactly; ``rank`` r gets ``[r*n//W, (r+1)*n//W)``.

    Raises:
        ValueError: ``world_size < 1`` or ``rank`` outside ``0..world_size-1``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return range(rank * n // world_size, (rank + 1) * n // world_size)


def read_manifest(root: str | os.PathLike) -> dict:
    """Load and check ``root/manifest.json`` of a prepared dataset.

    Raises:
        FileNotFoundError: no manifest (not a prepared dataset).
        ValueError: unfinished preparation or unknown format version.
    """
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{root} is not a prepared dataset (no manifest.json); run `vfmtok prepare-data`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != PREPARED_FORMAT or manifest.get("format_version") != PREPARED_FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                         f"{PREPARED_FORMAT} v{PREPARED_FORMAT_VERSION}")
    if manifest.get("status") != "complete":
        raise ValueError(f"{path}: preparation did not finish (status {manifest.get('status')!r}); rerun the "
                         f"same prepare-data command to resume it")
    return manifest


MAX_OPEN_SHARDS = 32  # shard files a reader keeps open per process (least recently used closed first)


class _PreparedBase:
    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, return_index: bool = False,
                 max_open_files: int = MAX_OPEN_SHARDS):
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be >= 1, got {max_open_files}")
        self.root = Path(root)
        self.manifest = read_manifest(self.root)
        self.classes = load_classes(self.root / "classes.json")
        with np.load(self.root / "index.npz") as index:
            self.shard = index["shard"]
            self.offset = index["offset"]
            self.size = index["size"]
            self.labels = index["label"]
            self.source_index = index["source_index"]
        self.shard_paths = [self.root / s["name"] for s in self.manifest["shards"]]
        for path, shard in zip(self.shard_paths, self.manifest["shards"]):
            size = path.stat().st_size if path.is_file() else None
            if size != shard["bytes"]:
                raise ValueError(f"{path}: {'missing' if size is None else f'{size} bytes'}, manifest says "
                                 f"{shard['bytes']} bytes; rerun prepare-data (with --overwrite if needed)")
        self.transform, self.return_index = transform, return_index
        self.max_open_files = int(max_open_files)
        self._handles: OrderedDict[int, BinaryIO] = OrderedDict()  # shard -> open file, least recently used first
        self._pid = None

    def __len__(self) -> int:
        return len(self.labels)

    def _read(self, i: int) -> bytes:
        if self._pid != os.getpid():  # file handles must not be shared across forked workers
            self._handles, self._pid = OrderedDict(), os.getpid()
        shard = int(self.shard[i])
        handle = self._handles.pop(shard, None)
        if handle is None:
            # full ImageNet has 1,282 shards, more than a usual `ulimit -n` of 1024: keep a bounded LRU set open
            while len(self._handles) >= self.max_open_files:
                self._handles.popitem(last=False)[1].close()
            handle = open(self.shard_paths[shard], "rb")
        self._handles[shard] = handle  # now the most recently used
        handle.seek(int(self.offset[i]))
        return handle.read(int(self.size[i]))

    def close(self) -> None:
        """Close the shard files this process holds open (reading again reopens them)."""
        while self._handles:
            self._handles.popitem()[1].close()

    def _item(self, i: int):
        image = decode_image(self._read(i)).image
        out = self.transform(image) if self.transform is not None else np.asarray(image)
        label = int(self.labels[i])
        return (i, out, label) if self.return_index else (out, label)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = OrderedDict(), None
        return state


class PreparedDataset(_PreparedBase, Dataset):
    """Map-style dataset over a prepared folder.

    Args:
        root: prepare-data output folder (``manifest.json`` status complete).
        transform: callable on the decoded PIL RGB image; None returns uint8 (H, W, 3) arrays.
        return_index: also return the dataset index.
        max_open_files: shard files kept open per process (DataLoader worker), least recently used closed first
            (>= 1; default 32, far below a usual ``ulimit -n`` of 1024 even with many workers).

    Attributes:
        classes: class names in index order; labels: int64 (N,) array of class indices; manifest: dict.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_manifest`; ValueError also for a missing or
            truncated shard, and max_open_files < 1.
    """

    def __getitem__(self, i: int):
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        return self._item(i % len(self))


class PreparedStream(_PreparedBase, IterableDataset):
    """Iterable dataset in source-index order, partitioned over ranks x DataLoader workers.

    Rank ``rank`` owns :func:`partition` ``(N, rank, world_size)``; inside a DataLoader, worker w of W takes
    :func:`partition` of that block again. Concatenating every (rank, worker) stream yields each image once.

    Args:
        root, transform, return_index, max_open_files: as :class:`PreparedDataset`.
        rank, world_size: this process's rank and the number of ranks (default: from torch.distributed if
            initialised, else 0 and 1).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, return_index: bool = False,
                 rank: int | None = None, world_size: int | None = None, max_open_files: int = MAX_OPEN_SHARDS):
        super().__init__(root, transform, return_index, max_open_files)
        if rank is None or world_size is None:
            dist = torch.distributed
            initialised = dist.is_available() and dist.is_initialized()
            rank = dist.get_rank() if initialised else 0
            world_size = dist.get_world_size() if initialised else 1
        self.rank, self.world_size = rank, world_size
        self.block = partition(len(self), rank, world_size)

    def indices(self) -> range:
        """Indices this (rank, current worker) yields."""
        info = get_worker_info()
        if info is None:
            return self.block
        sub = partition(len(self.block), info.id, info.num_workers)
        return self.block[sub.start : sub.stop]

    def __iter__(self) -> Iterator:
        for i in self.indices():
            yield self._item(i)


class ImageFolderDataset(Dataset):
    """Map-style dataset over an unprepared folder, decoded with :func:`vfmtok.data.decode.decode_image`.

    Files rejected by the layout (non-image extensions, unlabeled) are left out; an undecodable image
    raises :class:`vfmtok.data.decode.DecodeError` when accessed (prepare the folder to skip them).

    The file index lives in numpy arrays (all paths in one uint8 buffer + end offsets, labels int64), not in a
    list of Python objects: DataLoader workers read it without touching reference counts, so forked workers keep
    sharing the parent's pages (a list of ``(Path, label)`` tuples costs every worker ~175 MB per epoch at 10^6
    files through copy-on-write).

    Args:
        root: class-folder dataset or ImageNet root (see :func:`vfmtok.data.layouts.discover`).
        split: ``"train"`` or ``"val"``.
        classes: fixed class index (list or a ``classes.json`` path).
        transform, return_index: as :class:`PreparedDataset`.

    Attributes:
        classes: class names in index order; labels: int64 (N,) array of class indices.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", classes: list[str] | str | None = None,
                 transform: Callable | None = None, return_index: bool = False):
        if isinstance(classes, (str, os.PathLike)):
            classes = load_classes(classes)
        sources = discover(root, split, classes=classes)
        self.classes = sources.classes
        index = {c: i for i, c in enumerate(self.classes)}
        kept = [it for it in sources.items if it.reject is None]
        encoded = [os.fsencode(it.path) for it in kept]
        self._path_bytes = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        self._path_ends = np.cumsum([len(e) for e in encoded], dtype=np.int64)
        self.labels = np.asarray([index[it.wnid] for it in kept], dtype=np.int64)
        self.transform, self.return_index = transform, return_index

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> Path:
        """Path of image ``i`` (0 <= i < N, or negative from the end).

        Raises:
            IndexError: ``i`` out of range.
        """
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        i %= n
        start = int(self._path_ends[i - 1]) if i else 0
        return Path(os.fsdecode(self._path_bytes[start : int(self._path_ends[i])].tobytes()))

    def __getitem__(self, i: int):
        path, label = self.path(i), int(self.labels[i])
        try:
            image = decode_image(path).image
        except DecodeError as exc:
            raise DecodeError(f"{path}: {exc}") from None
        out = self.transform(image) if self.transform is not None else np.asarray(image)
        return (i, out, label) if self.return_index else (out, label)
