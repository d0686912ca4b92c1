"""ADM npz: streaming reads match np.load, the writer produces what np.load expects, errors are clear."""
from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest

from vfmtok.data.adm_npz import NpzWriter, inspect_npz, iter_npz_images, read_npz_array


def _images(n: int, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_writer_round_trip_matches_np_load(tmp_path):
    images = _images(11)
    labels = np.arange(11, dtype=np.int32) * 7 % 5
    out = tmp_path / "batch.npz"
    with NpzWriter(out, count=11, height=5, width=7) as writer:
        for start in (0, 4, 8):
            writer.write(images[start : start + 4], labels[start : start + 4])
    loaded = np.load(out)
    assert sorted(loaded.files) == ["arr_0", "arr_1"]
    assert loaded["arr_0"].dtype == np.uint8 and loaded["arr_0"].shape == (11, 5, 7, 3)
    assert loaded["arr_1"].dtype == np.int64
    np.testing.assert_array_equal(loaded["arr_0"], images)
    np.testing.assert_array_equal(loaded["arr_1"], labels.astype(np.int64))
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_writer_without_labels_writes_only_arr_0(tmp_path):
    out = tmp_path / "s.npz"
    with NpzWriter(out, count=3, height=5, width=7, with_labels=False) as writer:
        writer.write(_images(3))
    assert np.load(out).files == ["arr_0"]


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_iter_streams_batches_equal_to_np_load(tmp_path, saver):
    images = _images(13, seed=1)
    path = tmp_path / "x.npz"
    saver(path, images, np.arange(13))
    batches = list(iter_npz_images(path, batch_size=5))
    assert [len(b) for b in batches] == [5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(batches), np.load(path)["arr_0"])
    np.testing.assert_array_equal(read_npz_array(path, "arr_1"), np.arange(13))


def test_iter_streams_deflated_member_without_full_read(tmp_path):
    """A deflated member is decompressed incrementally: the first batch needs only a prefix of the file."""
    images = np.zeros((200, 16, 16, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(200)
    path = tmp_path / "big.npz"
    np.savez_compressed(path, images)
    reads = []
    original = zipfile.ZipExtFile.read

    def counting_read(self, n=-1):
        data = original(self, n)
        reads.append(len(data) if n is None or n < 0 else n)
        return data

    zipfile.ZipExtFile.read = counting_read
    try:
        first = next(iter_npz_images(path, batch_size=2))
    finally:
        zipfile.ZipExtFile.read = original
    assert first.shape == (2, 16, 16, 3) and list(first[:, 0, 0, 0]) == [0, 1]
    assert max(reads) <= 2 * 16 * 16 * 3, f"requested {max(reads)} bytes at once"


def test_fortran_order_falls_back_to_full_load(tmp_path):
    images = np.asfortranarray(_images(6, seed=3))
    path = tmp_path / "f.npz"
    np.savez(path, images)
    assert inspect_npz(path).fortran_order["arr_0"]
    np.testing.assert_array_equal(np.concatenate(list(iter_npz_images(path, 4))), images)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_npy_header_versions_are_parsed(tmp_path, version):
    images = _images(4, seed=4)
    buf = io.BytesIO()
    header = {"descr": "|u1", "fortran_order": False, "shape": images.shape}
    if version == (3, 0):  # numpy writes v3 only for unicode field names; build it by hand
        text = repr(header).encode("utf-8")
        text += b" " * ((64 - (12 + len(text) + 1) % 64) % 64) + b"\n"
        buf.write(b"\x93NUMPY\x03\x00" + struct.pack("<I", len(text)) + text)
    else:
        np.lib.format.write_array_header_1_0(buf, header) if version == (1, 0) else \
            np.lib.format.write_array_header_2_0(buf, header)
    buf.write(images.tobytes())
    path = tmp_path / "v.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arr_0.npy", buf.getvalue())
    info = inspect_npz(path)
    assert info.keys == ["arr_0"] and info.shapes["arr_0"] == (4, 5, 7, 3) and info.dtypes["arr_0"] == np.uint8
    np.testing.assert_array_equal(np.concatenate(list(iter_npz_images(path, 3))), images)


def test_inspect_lists_keys_shapes_dtypes(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, _images(2), mu=np.zeros(8), sigma=np.eye(8, dtype=np.float32))
    info = inspect_npz(path)
    assert sorted(info.keys) == ["arr_0", "mu", "sigma"]
    assert info.shapes == {"arr_0": (2, 5, 7, 3), "mu": (8,), "sigma": (8, 8)}
    assert info.dtypes == {"arr_0": np.uint8, "mu": np.float64, "sigma": np.float32}


def test_missing_key_names_available_keys(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, _images(1))
    with pytest.raises(KeyError, match="arr_0"):
        read_npz_array(path, "mu")


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (np.zeros((2, 5, 7, 3), np.float32), np.zeros(2, np.int64), "uint8"),
        (np.zeros((2, 5, 6, 3), np.uint8), np.zeros(2, np.int64), "shape"),
        (np.zeros((2, 5, 7, 3), np.uint8), np.zeros(3, np.int64), "labels"),
        (np.zeros((2, 5, 7, 3), np.uint8), np.zeros(2, np.float32), "labels"),
        (np.zeros((5, 5, 7, 3), np.uint8), np.zeros(5, np.int64), "exceed"),
    ],
)
def test_writer_rejects_bad_batches_and_leaves_nothing(tmp_path, images, labels, match):
    out = tmp_path / "bad.npz"
    with pytest.raises(ValueError, match=match):
        with NpzWriter(out, count=4, height=5, width=7) as writer:
            writer.write(images, labels)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_writer_short_count_raises_and_keeps_old_file(tmp_path):
    out = tmp_path / "keep.npz"
    np.savez(out, np.ones((1, 1, 1, 3), np.uint8))
    with pytest.raises(ValueError, match="declared count 4"):
        with NpzWriter(out, count=4, height=5, width=7) as writer:
            writer.write(_images(3), np.zeros(3, np.int64))
    assert np.load(out)["arr_0"].shape == (1, 1, 1, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npz"]
