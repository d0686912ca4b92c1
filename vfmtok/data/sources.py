"""Random-access image sources for encoding a dataset: prepared data or a folder of images, through the data
layer's readers, with the content fingerprint a token store records (`vfmtok extract-tokens`)."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Protocol

from vfmtok.io import hashing


class ImageSource(Protocol):
    """Random-access images of a dataset, in source-index order.

    Attributes:
        classes: class names; labels index this list.
        description: JSON-able provenance (kind, path, manifest sha256, ...) for the store's manifest.
        fingerprint: sha256 hex identifying the source's content listing (settings compatibility key).
    """

    classes: list[str]
    description: dict[str, Any]
    fingerprint: str

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[Any, int]:
        """(PIL.Image RGB, label int) of image `index`."""
        ...


def _keep_pil(image: Any) -> Any:
    """Dataset transform that returns the decoded PIL image unchanged (module-level: picklable)."""
    return image


class DatasetSource:
    """:class:`ImageSource` over `vfmtok.data.datasets.PreparedDataset` or `ImageFolderDataset`.

    Args:
        dataset: a map-style dataset built with `transform=_keep_pil` (items (PIL RGB, label)).
        description: provenance for the manifest.
        fingerprint: content fingerprint (sha256 hex).
        paths: per-index file paths (image folders) to name the file in decode errors.
    """

    def __init__(self, dataset: Any, description: dict[str, Any], fingerprint: str,
                 paths: list[Any] | None = None) -> None:
        self.dataset, self.description, self.fingerprint, self.paths = dataset, description, fingerprint, paths
        self.classes = list(dataset.classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[Any, int]:
        from vfmtok.data.decode import DecodeError

        try:
            image, label = self.dataset[index]
        except DecodeError as err:
            where = self.paths[index] if self.paths is not None else f"image {index}"
            raise DecodeError(f"{where}: {err} (run `vfmtok prepare-data` to skip undecodable files)") from err
        return image, int(label)


def open_image_source(path: str | Path, split: str = "train") -> DatasetSource:
    """Open DATA for extraction: prepared data (has manifest.json) or a folder of images.

    Prepared data: `PreparedDataset`, fingerprint = sha256 of its manifest.json. Image folder (any layout of
    `vfmtok.data.layouts.discover`, `split` picks train/ or val/ of an ImageNet root): `ImageFolderDataset`,
    fingerprint = sha256 of the listing (relative path and label per file): the images a store is made of, so a
    rerun after a corrected or replaced file resumes over the same images; the byte sizes are recorded beside it
    (`sizes_sha256`, provenance only).

    Raises:
        FileNotFoundError: `path` does not exist. ValueError / LayoutError: unusable data (message says why).
    """
    from vfmtok.data.datasets import ImageFolderDataset, PreparedDataset

    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"DATA {root} is not a directory (expected prepared data or an image folder)")
    if (root / "manifest.json").is_file():
        dataset = PreparedDataset(root, transform=_keep_pil)
        desc = {"kind": "prepared-data", "path": str(root.resolve()),
                "manifest_sha256": hashing.sha256_file(root / "manifest.json")}
        return DatasetSource(dataset, desc, desc["manifest_sha256"])
    dataset = ImageFolderDataset(root, split=split, transform=_keep_pil)
    digest, sizes = hashlib.sha256(), hashlib.sha256()
    base = root.resolve()
    for i in range(len(dataset)):
        file, label = dataset.path(i), int(dataset.labels[i])
        rel = file.relative_to(base).as_posix() if file.is_relative_to(base) else str(file)
        digest.update(f"{rel}|{label}\n".encode())
        sizes.update(f"{rel}|{file.stat().st_size}\n".encode())
    desc = {"kind": "image-folder", "path": str(base), "split": split, "listing_sha256": digest.hexdigest(),
            "sizes_sha256": sizes.hexdigest()}
    return DatasetSource(dataset, desc, digest.hexdigest())  # the dataset's DecodeError names the file
