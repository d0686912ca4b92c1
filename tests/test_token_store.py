"""Token store: on-disk layout, writer done-tracking and validation, and the TokenDataset reader."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import reader as tsr
from vfmtok.data.token_store import writer as tsw


def make_store(path, n=11, a=3, l_=6, k=40, num_classes=4, seed=0, complete=True):
    """A store filled by the writer in two chunks; returns (codes, labels) written."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, k, (n, a, l_))
    labels = rng.integers(0, num_classes, n)
    tsw.create_store(path, tsf.StoreLayout(n, a, l_, k), {"num_classes": num_classes, "grid_size": 0})
    with tsw.StoreWriter(path) as writer:
        half = n // 2
        writer.write(np.arange(half, n), codes[half:], labels[half:])
        writer.write(np.arange(half), codes[:half], labels[:half])
    if complete:
        tsw.finalize_store(path)
    return codes, labels


def test_codes_dtype_widens_above_65536_entries():
    assert tsf.codes_dtype(16384) == np.uint16 and tsf.codes_dtype(65536) == np.uint16
    assert tsf.codes_dtype(65537) == np.uint32
    with pytest.raises(ValueError, match="codebook_size"):
        tsf.codes_dtype(0)


def test_store_files_are_plain_npy_with_manifest(tmp_path):
    codes, labels = make_store(tmp_path)
    stored = np.load(tmp_path / "codes.npy")
    assert stored.dtype == np.uint16 and stored.shape == (11, 3, 6)
    np.testing.assert_array_equal(stored, codes)
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["format"] == "vfmtok-token-store" and manifest["dtype"] == "uint16"
    assert manifest["counts"]["per_class"] == np.bincount(labels, minlength=4).tolist()
    assert not (tmp_path / "progress.npy").exists()


def test_wide_codebook_round_trips_codes_above_uint16(tmp_path):
    n, k = 5, 70000
    codes = np.array([0, 65535, 65536, 69999, 12345])[:, None, None] * np.ones((1, 2, 3), dtype=np.int64)
    tsw.create_store(tmp_path, tsf.StoreLayout(n, 2, 3, k), {"num_classes": 1})
    with tsw.StoreWriter(tmp_path) as writer:
        writer.write(np.arange(n), codes, np.zeros(n, dtype=np.int64))
    tsw.finalize_store(tmp_path)
    stored = np.load(tmp_path / "codes.npy")
    assert stored.dtype == np.uint32
    np.testing.assert_array_equal(stored, codes)
    ds = tsr.TokenDataset(tmp_path, augmentation=1)
    assert ds[3][0].tolist() == [69999] * 3 and ds.vocab_size == k


def test_rows_become_done_only_on_flush(tmp_path):
    n = 6
    tsw.create_store(tmp_path, tsf.StoreLayout(n, 1, 2, 10), {"num_classes": 2})
    writer = tsw.StoreWriter(tmp_path)
    writer.write(np.array([1, 2, 4]), np.ones((3, 1, 2), dtype=np.int64), np.array([0, 1, 1]))
    assert not writer.done_mask().any()  # written, not yet flushed
    writer.flush()
    np.testing.assert_array_equal(writer.done_mask(), [0, 1, 1, 0, 1, 0])
    writer.close()
    with pytest.raises(ValueError, match=r"3 image\(s\) not encoded yet \(first: index 0\)"):
        tsw.finalize_store(tmp_path)


def test_validation_catches_rows_marked_done_but_unwritten(tmp_path):
    n = 4
    tsw.create_store(tmp_path, tsf.StoreLayout(n, 2, 3, 10), {"num_classes": 2})
    with tsw.StoreWriter(tmp_path) as writer:
        writer.write(np.array([0, 1, 3]), np.zeros((3, 2, 3), dtype=np.int64), np.array([0, 1, 1]))
    progress = np.load(tmp_path / "progress.npy", mmap_mode="r+")
    progress[2] = 1  # a lying done-mask: row 2 never written
    progress.flush()
    del progress
    with pytest.raises(ValueError, match="unfilled or outside"):
        tsw.finalize_store(tmp_path)
    labels = np.load(tmp_path / "labels.npy", mmap_mode="r+")
    labels[2] = 0  # even with a label, the sentinel codes are caught
    labels.flush()
    del labels
    with pytest.raises(ValueError, match="image 2 holds codes >= codebook_size 10"):
        tsw.finalize_store(tmp_path)


def test_writer_refuses_bad_rows(tmp_path):
    tsw.create_store(tmp_path, tsf.StoreLayout(4, 1, 2, 10), {"num_classes": 2})
    with tsw.StoreWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="outside \\[0, 10\\)"):
            writer.write(np.array([0]), np.full((1, 1, 2), 10), np.array([0]))
        with pytest.raises(ValueError, match="increasing"):
            writer.write(np.array([2, 1]), np.zeros((2, 1, 2)), np.array([0, 0]))
        with pytest.raises(ValueError, match="do not match"):
            writer.write(np.array([0]), np.zeros((1, 2, 2)), np.array([0]))


def test_augmentation_choice_scalar_equals_vectorised_and_is_uniformish():
    idx = np.arange(4000)
    vec = tsf.augmentation_choice(7, 3, idx, 10)
    assert [tsf.augmentation_choice(7, 3, int(i), 10) for i in idx[:200]] == vec[:200].tolist()
    counts = np.bincount(vec, minlength=10)
    assert counts.min() > 300 and counts.max() < 500  # 400 expected each
    assert (tsf.augmentation_choice(7, 4, idx, 10) != vec).mean() > 0.8  # a new epoch draws anew


def test_reader_returns_every_image_with_its_label(tmp_path):
    codes, labels = make_store(tmp_path)
    for a in range(3):
        ds = tsr.TokenDataset(tmp_path, augmentation=a)
        got = [ds[i] for i in range(len(ds))]
        np.testing.assert_array_equal(torch.stack([c for c, _ in got]).numpy(), codes[:, a])
        np.testing.assert_array_equal([int(y) for _, y in got], labels)
        assert got[0][0].dtype == torch.int64 and got[0][1].dtype == np.int64
    codes_b, labels_b = tsr.TokenDataset(tmp_path, augmentation=2)[[3, 0, 7]]  # vectorised batch read
    np.testing.assert_array_equal(codes_b.numpy(), codes[[3, 0, 7], 2])
    assert labels_b.dtype == torch.int64 and labels_b.tolist() == labels[[3, 0, 7]].tolist()


def test_reader_random_augmentation_is_reproducible_per_seed_epoch_index(tmp_path):
    codes, _ = make_store(tmp_path)
    ds = tsr.TokenDataset(tmp_path, seed=5)
    ds.set_epoch(2)
    choice = tsf.augmentation_choice(5, 2, np.arange(11), 3)
    for i in range(11):
        np.testing.assert_array_equal(ds[i][0].numpy(), codes[i, choice[i]])
    batched = ds.__getitems__([4, 0, 10])
    assert [c.tolist() for c, _ in batched] == [ds[i][0].tolist() for i in (4, 0, 10)]
    np.testing.assert_array_equal(ds[np.array([4, 0, 10])][0].numpy(), codes[[4, 0, 10], choice[[4, 0, 10]]])
    # sampler items (index, epoch, position) carry their epoch: independent of set_epoch
    other = tsf.augmentation_choice(5, 7, np.arange(11), 3)
    for i in range(11):
        np.testing.assert_array_equal(ds[(i, 7, 0)][0].numpy(), codes[i, other[i]])
        np.testing.assert_array_equal(ds[(i, 2, 5)][0].numpy(), codes[i, choice[i]])


def test_reader_in_dataloader_workers_matches_direct_reads_and_pickles_small(tmp_path):
    codes, labels = make_store(tmp_path, n=23)
    ds = tsr.TokenDataset(tmp_path, seed=1)
    ds.set_epoch(1)
    ds[0]  # open the memory maps in this process; they must not travel to workers
    assert len(pickle.dumps(ds)) < 4000
    choice = tsf.augmentation_choice(1, 1, np.arange(23), 3)
    sampler = torch.utils.data.BatchSampler(range(23), 4, drop_last=False)
    for loader in (torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2),  # per-sample collation
                   torch.utils.data.DataLoader(ds, sampler=sampler, batch_size=None, num_workers=2)):  # vectorised
        got_codes, got_labels = zip(*loader)
        np.testing.assert_array_equal(torch.cat(got_codes).numpy(), codes[np.arange(23), choice])
        np.testing.assert_array_equal(torch.cat(got_labels).numpy(), labels)
        assert got_labels[0].dtype == torch.int64


def test_reader_stays_within_the_store(tmp_path):
    make_store(tmp_path, n=5)
    ds = tsr.TokenDataset(tmp_path)
    for bad in (5, -1, 100):
        with pytest.raises(IndexError, match="outside the token store"):
            ds[bad]
    with pytest.raises(IndexError):
        ds.__getitems__([0, 5])
    with pytest.raises(IndexError):
        ds[[-1, 2]]
    with pytest.raises(ValueError, match="augmentation 3 outside"):
        tsr.TokenDataset(tmp_path, augmentation=3)


def test_reader_refuses_incomplete_or_foreign_store(tmp_path):
    make_store(tmp_path / "inc", complete=False)
    with pytest.raises(ValueError, match="incomplete"):
        tsr.TokenDataset(tmp_path / "inc")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text(json.dumps({"format": "vfmtok-prepared-data"}))
    with pytest.raises(ValueError, match="not a token store"):
        tsr.TokenDataset(tmp_path / "other")
    with pytest.raises(FileNotFoundError, match="not a token store"):
        tsr.TokenDataset(tmp_path / "missing")


def test_store_differences_names_nested_keys():
    existing = {"settings": {"aug": "flip", "tokenizer_config": {"codebook_size": 10, "dim": 4}}}
    want = {"aug": "flip", "tokenizer_config": {"codebook_size": 12, "dim": 4}}
    assert tsf.store_differences(existing, want) == ["tokenizer_config.codebook_size: store has 10, requested 12"]
    assert tsf.store_differences(existing, existing["settings"]) == []


def test_reader_refuses_arrays_that_disagree_with_the_manifest(tmp_path):
    make_store(tmp_path, n=5)
    np.save(tmp_path / "codes.npy", np.zeros((5, 3, 7), dtype=np.uint16))  # L = 7, manifest says 6
    with pytest.raises(ValueError, match="do not match the manifest"):
        tsr.TokenDataset(tmp_path)[0]
    with pytest.raises(ValueError, match="manifest says"):
        tsw.validate_store(tmp_path)
