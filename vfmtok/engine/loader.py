"""Training data for the tokenizer: prepared shards or an image folder, ADM random crop + flip, resumable order.

`open_image_dataset(DATA)` picks `vfmtok.data.PreparedDataset` when DATA holds a prepare-data `manifest.json`,
else `vfmtok.data.ImageFolderDataset`. `AugmentedImages` wraps it for `RankDisjointSampler`, whose items are
`(index, epoch, position)`: the crop and flip of an item are drawn from `numpy.random.default_rng([seed, epoch,
position])`, so they are the same for any number of workers or ranks and after resumption.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from vfmtok.data.crops import adm_random_crop
from vfmtok.engine.sampler import RankDisjointSampler
from vfmtok.imageops import image_to_tensor


def _pil_identity(image: Image.Image) -> Image.Image:
    return image


def open_image_dataset(root: str | os.PathLike) -> Dataset:
    """Map-style dataset of `(PIL RGB image, label)` over prepared data or an image folder.

    Raises:
        FileNotFoundError: if `root` does not exist. ValueError: layout errors from `vfmtok.data`.
    """
    from vfmtok.data.datasets import ImageFolderDataset, PreparedDataset

    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"training data {root} does not exist (expected prepare-data output or an image folder)")
    if (root / "manifest.json").is_file():
        return PreparedDataset(root, transform=_pil_identity)
    return ImageFolderDataset(root, transform=_pil_identity)


class AugmentedImages(Dataset):
    """ADM random crop (crop fraction `min_crop_frac`..1) at `size` + horizontal flip (p=0.5), [-1, 1] floats.

    Indexed by `(index, epoch, position)` items from `RankDisjointSampler` (a plain int uses epoch 0, position
    = index). Returns `(image (3, size, size) float32 in [-1, 1], label int, index int)`.

    Args:
        base: dataset of `(PIL image, label)`.
        size: output side in pixels (the tokenizer's image size).
        seed: augmentation seed.
        min_crop_frac: smallest crop fraction (official 0.8).
        flip_p: horizontal flip probability (official 0.5).
    """

    def __init__(self, base: Dataset, size: int, seed: int = 0, min_crop_frac: float = 0.8, flip_p: float = 0.5) -> None:
        self.base, self.size, self.seed = base, int(size), int(seed)
        self.min_crop_frac, self.flip_p = min_crop_frac, flip_p

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int, int]):
        index, epoch, pos = (item, 0, item) if isinstance(item, int) else item
        image, label = self.base[index][:2]
        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        rng = np.random.default_rng([self.seed, epoch, pos])
        arr = adm_random_crop(image.convert("RGB"), self.size, rng, self.min_crop_frac, 1.0)
        if rng.random() < self.flip_p:
            arr = arr[:, ::-1]
        return image_to_tensor(arr), int(label), int(index)


def make_loader(
    dataset: Dataset, sampler: RankDisjointSampler, micro_batch: int, num_workers: int = 0, seed: int = 0
) -> DataLoader:
    """DataLoader over `dataset` in `sampler` order, `micro_batch` items per batch, no shuffling of its own.

    The loader gets its own `torch.Generator` so creating iterators never consumes the global torch RNG (keeps
    resumed runs bit-exact).
    """
    if sampler.per_rank % micro_batch:
        raise ValueError(f"per-rank batch {sampler.per_rank} is not divisible by the micro-batch {micro_batch}")
    return DataLoader(
        dataset,
        batch_size=micro_batch,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=False,  # the sampler only yields complete global batches
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
        generator=torch.Generator().manual_seed(seed),
    )
