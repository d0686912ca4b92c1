"""Shard writer: byte-identical to Python's tarfile (USTAR, fixed metadata), index offsets point at the data."""
from __future__ import annotations

import io
import json
import tarfile

import pytest

from vfmtok.data.shards import ShardSample, read_shard_index, write_shard


def _samples():
    return [ShardSample("00000003", b"\xff\xd8" + bytes(range(256)) * 3, "jpg", 7, {"src": "a/b.JPEG"}),
            ShardSample("00000010", b"\x89PNG" + b"x" * 512, "png", 0, {"src": "c.png", "size": [4, 5]}),
            ShardSample("00000011", b"", "jpg", 12, {})]


def test_shard_bytes_equal_tarfile_ustar_output(tmp_path):
    path = tmp_path / "shard-000000.tar"
    index = write_shard(path, _samples())
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in _samples():
            for ext, data in ((s.ext, s.data), ("cls", str(s.label).encode()),
                              ("json", json.dumps(s.meta, sort_keys=True).encode())):
                info = tarfile.TarInfo(f"{s.key}.{ext}")
                info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                    len(data), 0, 0o644, 0, 0, "", "")
                tar.addfile(info, io.BytesIO(data))
    assert path.read_bytes() == buf.getvalue()
    assert index == read_shard_index(path)
    raw = path.read_bytes()
    for (key, ext, offset, size, label), sample in zip(index, _samples()):
        assert raw[offset : offset + size] == sample.data and label == sample.label and key == sample.key


def test_bad_key_leaves_no_file(tmp_path):
    with pytest.raises(ValueError, match="bad shard sample"):
        write_shard(tmp_path / "s.tar", [ShardSample("12", b"x", "jpg", 0, {})])
    assert list(tmp_path.iterdir()) == []
