"""Shard format of prepared datasets: deterministic POSIX tar files that webdataset can read as-is.

A shard ``shard-<k:06d>.tar`` holds, per image, three members sharing the key ``<source_index:08d>``:

* ``<key>.jpg`` or ``<key>.png``: the stored image (8-bit RGB, sRGB, no EXIF rotation pending),
* ``<key>.cls``: the class index as ASCII decimal,
* ``<key>.json``: ``{"src": relative source path, "wnid": class name, "label": int,
  "orig_size": [w, h], "size": [w, h], "stored": "verbatim" | "reencoded"}``.

Members are written in key order with fixed metadata (mtime 0, uid/gid 0, mode 0644, USTAR format; the
bytes are those Python's ``tarfile`` would write, produced directly because ``tarfile`` is slow), so
the same inputs give byte-identical shards (needed for resumable, reproducible preparation). Shards are
written to a temporary name and moved into place with ``os.replace``: a shard file either is complete
or does not exist.
"""
from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PREPARED_FORMAT", "PREPARED_FORMAT_VERSION", "ShardSample", "write_shard", "read_shard_index", "shard_name"]


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


PREPARED_FORMAT = "vfmtok-prepared-data"  # manifest.json `format` of a prepared dataset folder
PREPARED_FORMAT_VERSION = 1
_BLOCK = 512
_RECORD = 20 * _BLOCK  # tar record size: archives are padded to a multiple of it (as tarfile does)


def _ustar_header(name: str, size: int) -> bytes:
    """512-byte USTAR header, byte-identical to ``tarfile`` with mode 0644, uid/gid 0, mtime 0, no names."""
    raw = name.encode("ascii")
    if len(raw) > 100:
        raise ValueError(f"tar member name too long: {name!r}")
    header = bytearray(_BLOCK)
    header[0:len(raw)] = raw
    header[100:108] = b"0000644\0"
    header[108:116] = b"0000000\0"
    header[116:124] = b"0000000\0"
    header[124:136] = b"%011o\0" % size
    header[136:148] = b"00000000000\0"
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:265] = b"ustar\x0000"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def write_shard(path: str | os.PathLike, samples: list[ShardSample]) -> list[tuple[str, str, int, int, int]]:
    """Write ``samples`` atomically to ``path`` (temp file in the same folder, then ``os.replace``).

    Returns:
        The shard index, as :func:`read_shard_index` would return it.

    Raises:
        ValueError: a key that is not 8 digits or an extension other than jpg/png.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    index = []
    try:
        with open(tmp, "wb") as handle:
            pos = 0
            for sample in samples:
                if len(sample.key) != 8 or not sample.key.isdigit() or sample.ext not in ("jpg", "png"):
                    raise ValueError(f"bad shard sample key/ext {sample.key!r}/{sample.ext!r}")
                members = ((sample.ext, sample.data), ("cls", str(int(sample.label)).encode()),
                           ("json", json.dumps(sample.meta, sort_keys=True).encode()))
                for ext, data in members:
                    handle.write(_ustar_header(f"{sample.key}.{ext}", len(data)))
                    if ext == sample.ext:
                        index.append((sample.key, ext, pos + _BLOCK, len(data), int(sample.label)))
                    handle.write(data)
                    pad = -len(data) % _BLOCK
                    handle.write(b"\0" * pad)
                    pos += _BLOCK + len(data) + pad
            end = pos + 2 * _BLOCK
            handle.write(b"\0" * (2 * _BLOCK + (-end % _RECORD)))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return index


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
