"""`vfmtok extract-tokens`: crop geometry, multi-process byte identity, resume after a kill, refusal to mix."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vfmtok.device import set_tf32, tf32_settings
from vfmtok.io import hashing
from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import reader as tsr
from vfmtok.data.token_store import writer as tsw
from vfmtok.data.views import make_views, view_names
from vfmtok.jobs.extract import ExtractOptions, StoreMismatchError, extract_tokens, plan_batches

TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------
# Fakes: a deterministic tokenizer (pure function of pixels) and an in-memory image source
# ---------------------------------------------------------------------------------------------
@dataclass
class FakeConfig:
    image_size: int = 16
    codebook_size: int = 50
    num_tokens: int = 16


class FakeTokenizer(torch.nn.Module):
    """codes[b, p] = floor(mean of 4x4 patch p in [0, 1] * 700 + 3 p) mod K; second-nearest = code + 1 mod K."""

    def __init__(self, codebook_size: int = 50) -> None:
        super().__init__()
        self.config = FakeConfig(codebook_size=codebook_size)
        self.register_buffer("scale", torch.tensor(700.0))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        b, _, s, _ = images.shape
        g = int(self.config.num_tokens**0.5)
        patches = images.reshape(b, 3, g, s // g, g, s // g).mean(dim=(1, 3, 5)).reshape(b, -1)
        pos = torch.arange(g * g)
        return (((patches + 1) / 2 * self.scale).floor().long() + 3 * pos) % self.config.codebook_size

    def encode_topk(self, images: torch.Tensor, k: int) -> torch.Tensor:
        first = self.encode(images)
        return torch.stack([(first + j) % self.config.codebook_size for j in range(k)], dim=-1)


class FakeSource:
    """N images of varied sizes (deterministic from the index), label = index mod 3."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed
        self.classes = ["n000", "n001", "n002"]
        self.description = {"kind": "fake", "n": n}
        self.fingerprint = hashlib.sha256(f"fake-{n}-{seed}".encode()).hexdigest()

    def __len__(self) -> int:
        return self.n

    def load(self, index: int):
        rng = np.random.default_rng([self.seed, index])
        h, w = int(rng.integers(18, 40)), int(rng.integers(18, 40))
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)), index % 3


def run_extract(out, n=7, **kw):
    opts = ExtractOptions(**{"num_workers": 0, "batch_size": 2, "progress": False, "device": "cpu", **kw})
    return extract_tokens(FakeSource(n), out, FakeTokenizer(), options=opts, command="test")


# ---------------------------------------------------------------------------------------------
# Independent references
# ---------------------------------------------------------------------------------------------
def adm_center_crop_reference(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion `center_crop_arr`, re-derived here for the test."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    y, x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[y : y + size, x : x + size]


@pytest.mark.parametrize("size", [16, 30, 20])  # ten-crop sizes 17, 33, 22: offsets 0.5, 1.5 (round half even), 1
def test_ten_crop_views_match_torchvision_tencrop(size):
    import torchvision.transforms.functional as TF

    img = Image.fromarray(np.random.default_rng(size).integers(0, 256, (57, 83, 3), dtype=np.uint8))
    views = make_views(img, size, "ten-crop")
    big = Image.fromarray(adm_center_crop_reference(img, int(size * 1.1)))
    expected = np.stack([np.array(c) for c in TF.ten_crop(big, [size, size])])
    assert views.shape == (10, 3, size, size) and views.dtype == np.uint8
    np.testing.assert_array_equal(views.transpose(0, 2, 3, 1), expected)
    assert len(view_names("ten-crop")) == 10


def test_flip_and_none_views_are_adm_centre_crop_and_mirror():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 31, 3), dtype=np.uint8))
    crop = adm_center_crop_reference(img, 16)
    np.testing.assert_array_equal(make_views(img, 16, "none")[0].transpose(1, 2, 0), crop)
    flip = make_views(img, 16, "flip").transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(flip[0], crop)
    np.testing.assert_array_equal(flip[1], crop[:, ::-1])


@pytest.mark.parametrize("n,b,w", [(7, 2, 2), (9, 4, 3), (2, 4, 3), (1, 1, 2)])
def test_plan_batches_is_a_disjoint_contiguous_cover(n, b, w):
    seen = [i for r in range(w) for batch in plan_batches(n, b, w, r) for i in batch]
    assert seen == list(range(n))  # in order, each index once, nothing padded
    assert [list(x) for x in plan_batches(n, b, 1, 0)] == [
        list(x) for r in range(w) for x in plan_batches(n, b, w, r)
    ]  # same batch grid whatever the world size


# ---------------------------------------------------------------------------------------------
# Store content and layout
# ---------------------------------------------------------------------------------------------
def _reference_codes(source: FakeSource, aug: str, neighbours: int) -> np.ndarray:
    """(N, A, L) computed image by image with the reference crops and a direct encode call."""
    import torchvision.transforms.functional as TF

    tok, size, rows = FakeTokenizer(), 16, []
    for i in range(len(source)):
        img, _ = source.load(i)
        if aug == "ten-crop":
            big = Image.fromarray(adm_center_crop_reference(img, int(size * 1.1)))
            views = [np.array(c) for c in TF.ten_crop(big, [size, size])]
        else:
            crop = adm_center_crop_reference(img, size)
            views = [crop, crop[:, ::-1]][: 2 if aug == "flip" else 1]
        x = torch.from_numpy(np.stack(views).transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
        topk = tok.encode_topk(x, neighbours)  # (V, L, k)
        rows.append(np.concatenate([topk[..., k].numpy() for k in range(neighbours)], axis=0))
    return np.stack(rows)


@pytest.mark.parametrize("aug,neighbours", [("none", 1), ("flip", 2), ("ten-crop", 1)])
def test_store_holds_every_image_views_and_label(tmp_path, aug, neighbours):
    set_tf32(True)  # extraction turns TF32 off: its fp32 regions (quantizer distances) must be true fp32
    manifest = run_extract(tmp_path / "s", n=5, aug=aug, neighbours=neighbours)
    assert manifest["tf32"] == {"enabled": False, **tf32_settings()} == {"enabled": False, "cuda_matmul": False,
                                                                         "cudnn": False}
    codes = np.load(tmp_path / "s" / "codes.npy")
    expected = _reference_codes(FakeSource(5), aug, neighbours)
    assert codes.dtype == np.uint16 and codes.shape == expected.shape
    np.testing.assert_array_equal(codes, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "labels.npy"), np.arange(5) % 3)
    assert manifest["complete"] and manifest["num_augmentations"] == expected.shape[1]
    assert manifest["counts"]["per_class"] == [2, 2, 1]
    assert [a["view"] for a in manifest["augmentations"]] == view_names(aug) * neighbours
    assert not (tmp_path / "s" / "progress.npy").exists()
    tsw.validate_store(tmp_path / "s")


def test_refuses_store_of_other_settings_unless_overwrite(tmp_path):
    out = tmp_path / "s"
    run_extract(out, aug="none")
    before = (out / "codes.npy").read_bytes()
    with pytest.raises(StoreMismatchError, match="aug: store has 'none', requested 'flip'"):
        run_extract(out, aug="flip")
    assert (out / "codes.npy").read_bytes() == before  # untouched
    with pytest.raises(StoreMismatchError, match="tokenizer_"):
        extract_tokens(FakeSource(7), out, FakeTokenizer(codebook_size=60),
                       options=ExtractOptions(num_workers=0, progress=False, device="cpu"))
    manifest = run_extract(out, aug="flip", overwrite=True)
    assert manifest["num_augmentations"] == 2 and np.load(out / "codes.npy").shape == (7, 2, 16)


def test_neighbours_2_needs_a_top2_capable_tokenizer(tmp_path):
    class NearestOnly(FakeTokenizer):
        encode_topk = None

    with pytest.raises(ValueError, match="--neighbours 2 needs a tokenizer with encode_topk"):
        extract_tokens(FakeSource(3), tmp_path / "s", NearestOnly(), options=ExtractOptions(neighbours=2))
    assert not (tmp_path / "s").exists()


def test_refuses_non_store_directory(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StoreMismatchError, match="not a token store"):
        run_extract(tmp_path / "s", overwrite=True)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "manifest.json").write_text(json.dumps({"format": "vfmtok-prepared"}))
    with pytest.raises(StoreMismatchError, match="not a token store"):
        run_extract(tmp_path / "p", overwrite=True)


# ---------------------------------------------------------------------------------------------
# Processes: torchrun with 2 ranks, and a hard kill
# ---------------------------------------------------------------------------------------------
_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
from test_extract_tokens import FakeSource, FakeTokenizer
from vfmtok.jobs.extract import ExtractOptions, extract_tokens
out, kill_after, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def on_batch(count):
    if count == kill_after:
        os._exit(9)  # like SIGKILL: no cleanup, no flush

opts = ExtractOptions(aug="flip", batch_size=2, num_workers=workers, progress=False, device="cpu", flush_batches=2)
extract_tokens(FakeSource(n), out, FakeTokenizer(), options=opts, command="test", on_batch=on_batch)
"""


def _script(tmp_path: Path) -> Path:
    path = tmp_path / "extract_script.py"
    path.write_text(_SCRIPT.format(tests=str(TESTS)))
    return path


def _store_bytes(out: Path) -> tuple[bytes, bytes]:
    return (out / "codes.npy").read_bytes(), (out / "labels.npy").read_bytes()


def test_torchrun_two_ranks_equal_one_process_byte_for_byte(tmp_path):
    n = 9  # odd: 5 batches of 2 (the last short) over 2 ranks
    run_extract(tmp_path / "one", n=n, aug="flip")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(_script(tmp_path)), str(tmp_path / "two"), "0", str(n), "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _store_bytes(tmp_path / "two") == _store_bytes(tmp_path / "one")
    one, two = tsf.read_manifest(tmp_path / "one"), tsf.read_manifest(tmp_path / "two")
    assert two["world_size"] == 2 and two["settings"] == one["settings"] and two["counts"] == one["counts"]


def test_resume_after_kill_finishes_identical_to_uninterrupted(tmp_path):
    n, out = 9, tmp_path / "killed"
    proc = subprocess.run([sys.executable, str(_script(tmp_path)), str(out), "3", str(n), "0"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr[-3000:]
    manifest = tsf.read_manifest(out)
    assert not manifest["complete"]
    done = np.load(out / "progress.npy")
    np.testing.assert_array_equal(done, [1, 1, 1, 1, 0, 0, 0, 0, 0])  # batches 0-1 flushed, batch 2 not yet
    with pytest.raises(ValueError, match="incomplete"):
        tsr.TokenDataset(out)
    batches = []
    opts = ExtractOptions(aug="flip", batch_size=2, num_workers=0, progress=False, device="cpu")
    extract_tokens(FakeSource(n), out, FakeTokenizer(), options=opts, on_batch=batches.append)
    assert batches == [1, 2, 3]  # only batches 2, 3, 4 were encoded again
    run_extract(tmp_path / "clean", n=n, aug="flip")
    assert _store_bytes(out) == _store_bytes(tmp_path / "clean")
    assert tsf.read_manifest(out)["complete"]


# ---------------------------------------------------------------------------------------------
# The CLI with the real `tiny` tokenizer, on an image folder and on prepared data
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import vfmtok
    from vfmtok.models.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("tok") / "run"
    save_tokenizer(vfmtok.create_tokenizer("tiny"), run)
    return run


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs") / "folder"
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        (root / wnid).mkdir(parents=True)
        for j in range(2 + c):  # 2 + 3 = 5 images, different sizes, JPEG and PNG
            arr = rng.integers(0, 256, (100 + 17 * j, 140 - 9 * j, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / wnid / f"img{j}.{'png' if j % 2 else 'JPEG'}")
    return root


def test_cli_extracts_folder_with_tiny_tokenizer(tmp_path, tiny_run, image_folder):
    from typer.testing import CliRunner

    import vfmtok
    from vfmtok.cli.main import app

    out = tmp_path / "store"
    args = ["extract-tokens", str(image_folder), str(out), "--tokenizer", str(tiny_run), "--aug", "flip",
            "--neighbours", "2", "--batch-size", "3", "--num-workers", "0", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    codes, labels = np.load(out / "codes.npy"), np.load(out / "labels.npy")
    assert codes.shape == (5, 4, 64) and codes.dtype == np.uint16
    np.testing.assert_array_equal(labels, [0, 0, 1, 1, 1])
    # independent: decode with PIL, reference ADM crop, one direct encode call per image
    tok = vfmtok.load_tokenizer(tiny_run)
    files = sorted(image_folder.glob("*/*"))
    for i, path in enumerate(files):
        crop = adm_center_crop_reference(Image.open(path).convert("RGB"), 112)
        x = torch.from_numpy(np.stack([crop, crop[:, ::-1]]).transpose(0, 3, 1, 2).copy()).float() / 127.5 - 1
        first, second = tok.encode(x, return_second=True)
        np.testing.assert_array_equal(codes[i], torch.cat([first, second]).numpy())
    manifest = tsf.read_manifest(out)
    assert manifest["codebook_size"] == 1024 and manifest["grid_size"] == 8
    assert manifest["source"]["kind"] == "image-folder" and manifest["classes"] == ["n01440764", "n01443537"]
    assert manifest["tokenizer"]["file_sha256"] == hashing.sha256_file(tiny_run / "tokenizer.safetensors")
    # same command again: nothing to do; other settings: refused with one clear line
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.output
    refused = CliRunner().invoke(app, [*args[:5], "--aug", "none", *args[7:]])
    assert refused.exit_code == 2 and "aug: store has 'flip', requested 'none'" in refused.output


def test_cli_extracts_prepared_data_same_codes_as_folder(tmp_path, tiny_run, image_folder):
    from typer.testing import CliRunner

    from vfmtok.cli.main import app
    from vfmtok.jobs.prepare import PrepareSettings, prepare_dataset

    prepare_dataset(image_folder, tmp_path / "prep", PrepareSettings(min_size=0, shard_size=2), command_line=["t"])
    common = ["--tokenizer", str(tiny_run), "--num-workers", "1", "--device", "cpu", "--no-progress"]
    for data, out in ((tmp_path / "prep", tmp_path / "a"), (image_folder, tmp_path / "b")):
        result = CliRunner().invoke(app, ["extract-tokens", str(data), str(out), *common])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "codes.npy").read_bytes() == (tmp_path / "b" / "codes.npy").read_bytes()
    assert tsf.read_manifest(tmp_path / "a")["source"]["kind"] == "prepared-data"
    dataset = tsr.TokenDataset(tmp_path / "a")
    assert (dataset.num_classes, dataset.vocab_size, dataset.grid_size, len(dataset)) == (2, 1024, 8, 5)
    assert dataset.classes == ["n01440764", "n01443537"]


def test_cli_rerun_after_fixing_a_bad_file_resumes_over_the_same_images(tmp_path, tiny_run, image_folder):
    import shutil

    from typer.testing import CliRunner

    from vfmtok.cli.main import app

    folder = tmp_path / "folder"
    shutil.copytree(image_folder, folder)
    bad = folder / "n01443537" / "img2.JPEG"  # the last image: batches before it are written first
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[: len(good_bytes) // 3])  # truncated JPEG
    out = tmp_path / "store"
    args = ["extract-tokens", str(folder), str(out), "--tokenizer", str(tiny_run), "--batch-size", "2",
            "--num-workers", "0", "--device", "cpu", "--no-progress"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code != 0 and "img2.JPEG" in first.output + str(first.exception)
    assert not tsf.read_manifest(out)["complete"]
    bad.write_bytes(good_bytes)  # the user fixes the file (its size changes back)
    second = CliRunner().invoke(app, args)
    assert second.exit_code == 0, second.output
    ref = tmp_path / "ref"
    assert CliRunner().invoke(app, [args[0], str(image_folder), str(ref), *args[3:]]).exit_code == 0
    np.testing.assert_array_equal(np.load(out / "codes.npy"), np.load(ref / "codes.npy"))
