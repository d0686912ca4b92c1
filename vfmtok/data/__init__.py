"""Data: decoding policy, ADM crops, dataset layouts, prepared shards, readers, ADM npz, demo data.

Names below are importable from ``vfmtok.data`` and resolved lazily (importing ``vfmtok.data`` does not
import torch; only the dataset readers need it). See ``docs/data.md``.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "decode_image": "decode", "DecodeError": "decode", "DecodedImage": "decode",
    "adm_center_crop": "crops", "adm_random_crop": "crops", "ten_crop": "crops", "to_tensor_m11": "crops",
    "AdmCenterCrop": "crops", "AdmRandomCrop": "crops",
    "discover": "layouts", "load_classes": "layouts", "LayoutError": "layouts",
    "prepare_dataset": "prepare", "PrepareSettings": "prepare", "NpzRequest": "prepare", "PrepareError": "prepare",
    "PreparedDataset": "datasets", "PreparedStream": "datasets", "ImageFolderDataset": "datasets",
    "partition": "datasets", "read_manifest": "datasets",
    "NpzWriter": "adm_npz", "inspect_npz": "adm_npz", "iter_npz_images": "adm_npz", "read_npz_array": "adm_npz",
    "build_demo_data": "demo", "DemoSettings": "demo",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"vfmtok.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'vfmtok.data' has no attribute {name!r}")
