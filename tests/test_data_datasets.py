"""Readers over prepared data: random access, rank x worker partitioning, plain image folders."""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from vfmtok.data.crops import AdmCenterCrop
from vfmtok.data.datasets import ImageFolderDataset, PreparedDataset, PreparedStream, partition
from vfmtok.data.decode import DecodeError, decode_image
from vfmtok.jobs.prepare import PrepareSettings, prepare_dataset


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    src = root / "src"
    rng = np.random.default_rng(0)
    for c in range(3):
        (src / f"n0{c}").mkdir(parents=True)
        for i in range(c + 4):  # 4 + 5 + 6 = 15 images: uneven splits
            arr = np.full((12 + i, 14, 3), 20 * c + i, np.uint8)
            arr[0, 0] = rng.integers(0, 256, 3)
            Image.fromarray(arr).save(src / f"n0{c}" / f"{i}.png")
    (src / "n01" / "broken.png").write_bytes(b"\x89PNG broken")
    prepare_dataset(src, root / "out", PrepareSettings(shard_size=4))
    return src, root / "out"


@pytest.mark.parametrize("n, world", [(15, 2), (15, 4), (3, 4), (0, 3), (17, 5)])
def test_partition_is_disjoint_cover_with_balanced_sizes(n, world):
    blocks = [partition(n, r, world) for r in range(world)]
    assert [i for b in blocks for i in b] == list(range(n))
    assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_map_dataset_returns_source_images_and_labels(prepared):
    src, out = prepared
    dataset = PreparedDataset(out)
    assert len(dataset) == 15 and dataset.classes == ["n00", "n01", "n02"]
    image, label = dataset[6]  # 4 of n00, then n01's sorted files 0.png, 1.png, 2.png -> index 6 = n01/2.png
    assert label == 1 and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(decode_image(src / "n01" / "2.png").image))
    assert dataset[-1][1] == 2
    with pytest.raises(IndexError):
        dataset[15]


def test_two_ranks_two_workers_read_each_image_exactly_once(prepared):
    _, out = prepared
    crop = AdmCenterCrop(8)
    reference = PreparedDataset(out, transform=crop)
    seen = []
    for rank in range(2):
        stream = PreparedStream(out, transform=crop, return_index=True, rank=rank, world_size=2)
        loader = DataLoader(stream, batch_size=2, num_workers=2)
        for indices, images, labels in loader:
            for i, image, label in zip(indices.tolist(), images, labels.tolist()):
                ref_image, ref_label = reference[i]
                torch.testing.assert_close(image, ref_image, rtol=0, atol=0)
                assert label == ref_label
                seen.append(i)
        assert labels.dtype == torch.int64
    assert sorted(seen) == list(range(15)) and len(seen) == 15


def test_stream_without_workers_keeps_source_order(prepared):
    _, out = prepared
    stream = PreparedStream(out, return_index=True, rank=1, world_size=3)
    assert [i for i, _, _ in stream] == list(range(5, 10))


def test_transform_gives_minus_one_one_tensors(prepared):
    _, out = prepared
    image, label = PreparedDataset(out, transform=AdmCenterCrop(8))[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and -1 <= image.min() <= image.max() <= 1


def test_image_folder_dataset_matches_prepared_dataset(prepared):
    src, out = prepared
    folder = ImageFolderDataset(src, classes=str(out / "classes.json"))
    prepared_ds = PreparedDataset(out)
    assert len(folder) == 16  # the broken PNG is only found when read
    assert folder.classes == prepared_ds.classes
    assert list(folder.labels) == [0] * 4 + [1] * 6 + [2] * 6
    image, label = folder[0]
    np.testing.assert_array_equal(image, prepared_ds[0][0])
    with pytest.raises(DecodeError, match="broken.png"):
        folder[9]


def test_unfinished_preparation_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "vfmtok-prepared-data", "format_version": 1, '
                                            '"status": "in_progress"}')
    with pytest.raises(ValueError, match="did not finish"):
        PreparedDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        PreparedDataset(tmp_path / "missing")


def test_truncated_shard_is_reported(prepared, tmp_path):
    import shutil

    _, out = prepared
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shard = copy / "shard-000001.tar"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match="shard-000001.tar: 1000 bytes"):
        PreparedDataset(copy)


def test_open_shard_files_stay_bounded_below_a_low_file_limit(tmp_path):
    # more shards than the process may open files: a reader that keeps every shard open fails with EMFILE
    src, out = tmp_path / "src", tmp_path / "out"
    for c in range(2):
        (src / f"n0{c}").mkdir(parents=True)
        for i in range(45):
            Image.fromarray(np.full((6, 6, 3), 100 * c + i, np.uint8)).save(src / f"n0{c}" / f"{i:02d}.png")
    prepare_dataset(src, out, PrepareSettings(shard_size=1))  # 90 shards of one image
    script = f"""
import os, resource
import numpy as np
from vfmtok.data.datasets import PreparedDataset
ds = PreparedDataset({str(out)!r})
expected = np.array([100 * c + i for c in range(2) for i in range(45)])  # pixel value of source item k
limit = len(os.listdir("/proc/self/fd")) + 32 + 8  # the default bound is 32 open shards
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
assert len(ds.shard_paths) == 90 > limit - 8, (len(ds.shard_paths), limit)
most = 0
for i in [*range(len(ds)), *np.random.default_rng(0).permutation(len(ds)).tolist(), 0, 1, 0, 1]:
    image, label = ds[i]
    assert image[0, 0, 0] == expected[ds.source_index[i]] and label == ds.source_index[i] // 45, i
    most = max(most, len(ds._handles))
ds.close()
print("max_open", most, "after_close", len(ds._handles))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["max_open", "32", "after_close", "0"]


def _python_objects_reachable(obj) -> int:
    """Objects reachable from the instance attributes of `obj` (not following classes or modules)."""
    seen, stack = set(), list(vars(obj).values())
    while stack:
        o = stack.pop()
        if id(o) not in seen and not isinstance(o, (type, types.ModuleType)):
            seen.add(id(o))
            stack.extend(gc.get_referents(o))
    return len(seen)


def _private_dirty_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Private_Dirty:"):
            return int(line.split()[1])
    raise RuntimeError("no Private_Dirty in /proc/self/smaps_rollup")


@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    for c in range(4):
        (root / f"n{c:08d}").mkdir()
        for i in range(5000):
            (root / f"n{c:08d}" / f"{i:05d}.JPEG").touch()  # listed by the layout; decoding fails (not needed)
    return root


def test_image_folder_index_holds_no_per_file_python_objects(many_files):
    dataset = ImageFolderDataset(many_files)
    assert len(dataset) == 20000 and dataset.labels.tolist() == [i // 5000 for i in range(20000)]
    assert dataset.path(5001) == many_files / "n00000001" / "00001.JPEG" and dataset.path(-1).name == "04999.JPEG"
    with pytest.raises(IndexError, match="20000"):
        dataset.path(20000)
    # a list of (Path, label) reaches > 2 objects per file; the numpy index a few dozen in all
    assert _python_objects_reachable(dataset) < 200


def test_forked_worker_does_not_copy_the_image_folder_index(many_files):
    # what a DataLoader worker does with the parent's dataset: index every item (the decode fails on these
    # empty files, after the index lookup). Reference counting on per-file objects would dirty (copy) their pages.
    dataset = ImageFolderDataset(many_files)
    with pytest.raises(DecodeError, match="00000.JPEG"):
        dataset[0]  # warm-up in the parent (the decoder's lazy imports and caches)
    gc.collect()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report private dirty memory growth (KiB), then exit without pytest's cleanup
        try:
            before = 0
            for i in range(len(dataset)):
                if i == 2000:  # the first items warm up the allocator; measure the other 18,000
                    before = _private_dirty_kib()
                try:
                    dataset[i]
                except DecodeError:
                    pass
            os.write(write, str(_private_dirty_kib() - before).encode())
        finally:
            os._exit(0)
    os.close(write)
    grown = int(os.read(read, 64) or b"-1")
    os.close(read)
    os.waitpid(pid, 0)
    assert 0 <= grown < 1024, f"worker copied {grown} KiB of the parent's pages"
