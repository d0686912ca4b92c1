"""Shard format of prepared datasets: deterministic POSIX tar files that webdataset can read as-is.

A shard ``shard-<k:06d>.tar`` holds, per image, three members sharing the key ``<source_index:08d>``:

* ``<key>.jpg`` or ``<key>.png``: the stored image (8-bit RGB, sRGB, no EXIF rotation pending),
* ``<key>.cls``: the class index as ASCII decimal,
* ``<key>.json``: ``{"src": relative source path, "wnid": class name, "label": int,
  "orig_size": [w, h], "size": [w, h], "stored": "verbatim" | "reencoded"}``.

Members are written in key order with fixed metadata (mtime 0, uid/gid 0, mode 0644, USTAR format), so
the same inputs give byte-identical shards (needed for resumable, reproducible preparation). Shards are
written to a temporary name and moved into place with ``os.replace``: a shard file either is complete
or does not exist.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ShardSample", "write_shard", "read_shard_index", "shard_name", "file_sha256"]


@dataclass
class ShardSample:
    """One image to write: ``key`` (the 8-digit source index), encoded bytes, extension, label, metadata."""

    key: str
    data: bytes
    ext: str
    label: int
    meta: dict


def shard_name(index: int) -> str:
    """``shard-<index:06d>.tar``."""
    return f"shard-{index:06d}.tar"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: str | os.PathLike, samples: list[ShardSample]) -> None:
    """Write ``samples`` atomically to ``path`` (temp file in the same folder, then ``os.replace``).

    Raises:
        ValueError: a key that is not 8 digits or an extension other than jpg/png.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for sample in samples:
                if len(sample.key) != 8 or not sample.key.isdigit() or sample.ext not in ("jpg", "png"):
                    raise ValueError(f"bad shard sample key/ext {sample.key!r}/{sample.ext!r}")
                _add(tar, f"{sample.key}.{sample.ext}", sample.data)
                _add(tar, f"{sample.key}.cls", str(int(sample.label)).encode())
                _add(tar, f"{sample.key}.json", json.dumps(sample.meta, sort_keys=True).encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_shard_index(path: str | os.PathLike) -> list[tuple[str, str, int, int, int]]:
    """Index the images of a shard without reading image data.

    Returns:
        ``[(key, ext, data_offset, size, label), ...]`` in stored order; ``data_offset``/``size`` in bytes
        locate the encoded image inside the tar file.

    Raises:
        ValueError: an image member without its ``.cls`` member, or a malformed tar.
    """
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext in ("jpg", "png"):
                    images[key] = (ext, member.offset_data, member.size)
                    order.append(key)
                elif ext == "cls":
                    labels[key] = int(tar.extractfile(member).read())
    except tarfile.TarError as exc:
        raise ValueError(f"{path}: not a readable shard ({exc})") from None
    missing = [k for k in order if k not in labels]
    if missing:
        raise ValueError(f"{path}: images without .cls label: {missing[:5]}")
    return [(k, images[k][0], images[k][1], images[k][2], labels[k]) for k in order]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
