"""`vfmtok sample`: outputs, labels, reproducibility (batch size, 1 vs 2 processes), refusal, resume, discovery."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vfmtok
import vfmtok.sampling
from vfmtok.jobs.sample import checkpoints as sck
from vfmtok.jobs.sample import job as sj
from vfmtok.jobs.sample import options as sopt
from vfmtok.jobs.sample import plan as splan
from vfmtok.cli.main import app
from vfmtok.imageops import to_uint8

NUM_CLASSES = 10
COMMON = ["--image-size", "48", "--decode-batch", "4", "--cfg-scale", "2", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny tokenizer run and a tiny GPT run (under ROOT/runs/ar) that records it."""
    from vfmtok.models.gpt_io import save_gpt
    from vfmtok.models.tokenizer_io import save_tokenizer

    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random")
    save_tokenizer(tok, root / "tok")
    c = tok.config
    gpt = vfmtok.create_gpt("GPT-tiny", vocab_size=c.codebook_size, num_classes=NUM_CLASSES, grid_size=c.token_grid)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)  # the zero-initialised head would give uniform logits
    save_gpt(gpt, root / "runs" / "ar")
    cfg_file = root / "runs" / "ar" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "tokenizer": str(root / "tok")}))
    return root


def _invoke(args, cwd: Path):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["sample", *args])
    finally:
        os.chdir(old)


def _npz(path: Path):
    with np.load(path) as data:
        return data["arr_0"], data["arr_1"], sorted(data.files)


@pytest.fixture(scope="module")
def first_run(models):
    """7 images, 3 cycled classes, GPT batch 3, decode chunks of 4, found through ./runs discovery."""
    out = models / "out_b3"
    res = _invoke(["--class", "3", "--class", "5,7", "-n", "7", "--batch-size", "3", "--out", str(out), *COMMON], models)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_cli_writes_pngs_grid_npz_and_config(models, first_run):
    out, output = first_run
    assert "newest GPT run" in output and str(Path("runs") / "ar") in output
    images, labels, keys = _npz(out / "samples.npz")
    assert keys == ["arr_0", "arr_1"]
    assert images.dtype == np.uint8 and images.shape == (7, 48, 48, 3)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 5, 7, 3, 5, 7, 3]
    for i in range(7):  # PNGs are lossless copies of exactly the npz pixels
        png = np.asarray(Image.open(out / "images" / f"{i:06d}.png"))
        assert png.dtype == np.uint8 and np.array_equal(png, images[i])
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(7)]
    assert not (out / "parts").exists()
    # grid: 3 classes -> one row per class (indices 0,3,6 | 1,4 | 2,5), 2 px white gaps
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 + 3 * 50, 2 + 3 * 50, 3)
    for r, row in enumerate([[0, 3, 6], [1, 4], [2, 5]]):
        for c, i in enumerate(row):
            assert np.array_equal(grid[2 + 50 * r : 50 * (r + 1), 2 + 50 * c : 50 * (c + 1)], images[i])
    assert (grid[2 + 50 : 100, 2 + 100 : 150] == 255).all()  # class 5 has only 2 images: blank third tile
    cfg = json.loads((out / "sample_config.json").read_text())
    gpt_file, tok_file = models / "runs" / "ar" / "model.safetensors", models / "tok" / "tokenizer.safetensors"
    assert cfg["complete"] and cfg["world_size"] == 1 and cfg["num_samples"] == 7
    assert cfg["gpt"]["sha256"] == hashlib.sha256(gpt_file.read_bytes()).hexdigest()
    assert cfg["tokenizer"]["sha256"] == hashlib.sha256(tok_file.read_bytes()).hexdigest()
    assert cfg["settings"]["classes"] == [3, 5, 7] and cfg["settings"]["cfg_scale"] == 2.0
    assert cfg["vfmtok_version"] == vfmtok.__version__ and cfg["command"].startswith("vfmtok")
    # --mixed-precision defaults to bf16, which applies on CUDA only: this CPU run is recorded as fp32
    assert cfg["options"]["mixed_precision"] == "bf16" and cfg["settings"]["compute_dtype"] == "fp32"
    assert cfg["precision"] == {"requested": "bf16", "effective": "fp32", "device_type": "cpu"}
    assert cfg["tokenizer"]["encoder_weights"] == "none (decode-only)"  # no frozen encoder built to decode


def test_default_precision_is_bf16_on_cuda_and_fp32_on_cpu():
    from vfmtok.device import autocast_dtype

    default = sj.SampleOptions().mixed_precision
    assert default == "bf16"
    assert autocast_dtype(default, torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(default, torch.device("cpu")) is None


def test_npz_pixels_equal_an_independent_generate_decode_convert(models, first_run):
    from vfmtok.models.gpt_io import load_gpt

    images, labels, _ = _npz(first_run[0] / "samples.npz")
    gpt = load_gpt(models / "runs" / "ar")
    tok = vfmtok.load_tokenizer(models / "tok", encoder_weights="random")
    codes = vfmtok.generate(gpt, labels.tolist(), cfg_scale=2.0, seed=0)  # all 7 at once, indices 0..6
    expected = np.concatenate([to_uint8(tok.decode_codes(codes[s : s + 4]), size=48).numpy() for s in (0, 4)])
    np.testing.assert_array_equal(images, expected)
    assert len({images[i].tobytes() for i in range(7)}) == 7


def test_batch_size_does_not_change_the_npz_bytes(models, first_run):
    out = models / "out_b5"
    res = _invoke(["--class", "3,5,7", "-n", "7", "--batch-size", "5", "--out", str(out), *COMMON], models)
    assert res.exit_code == 0, res.output
    assert (out / "samples.npz").read_bytes() == (first_run[0] / "samples.npz").read_bytes()


def test_compiled_decoding_gives_the_same_npz_bytes(models):
    """--compile (inductor on CPU, one graph: 2 labels x 2 CFG rows) vs eager: same pixels; recorded in settings."""
    outs = {}
    for flag in ([], ["--compile"]):
        out = outs[bool(flag)] = models / f"out_compile_{bool(flag)}"
        res = _invoke(["--class", "3,5", "-n", "2", "--batch-size", "2", "--no-png", "--out", str(out), *COMMON, *flag],
                      models)
        assert res.exit_code == 0, res.output
    assert _npz(outs[True] / "samples.npz")[0].tobytes() == _npz(outs[False] / "samples.npz")[0].tobytes()
    settings = {k: json.loads((outs[k] / "sample_config.json").read_text())["settings"] for k in outs}
    assert settings[True].pop("decode") == "compiled" and "decode" not in settings[False]
    assert settings[True] == settings[False]


@pytest.mark.dist
def test_two_processes_give_the_same_npz_bytes_as_one(models, first_run):
    out = models / "out_dist"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vfmtok",
           "sample", "--class", "3,5,7", "-n", "7", "--batch-size", "2", "--out", str(out), *COMMON]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=models, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "samples.npz").read_bytes() == (first_run[0] / "samples.npz").read_bytes()
    assert json.loads((out / "sample_config.json").read_text())["world_size"] == 2
    assert len(list((out / "images").glob("*.png"))) == 7


def test_class_ids_are_validated_before_any_work(models):
    out = models / "out_bad"
    res = _invoke(["--ckpt", "runs/ar", "--class", "2,10", "-n", "2", "--out", str(out), *COMMON], models)
    assert res.exit_code == 2
    assert "--class 10 out of range" in res.output and "[0, 10)" in res.output
    assert not out.exists()
    res = _invoke(["--class", "x", "-n", "2", *COMMON], models)
    assert res.exit_code == 2 and "integer class ids" in res.output
    res = _invoke(["--class", "1", "--labels", "balanced", *COMMON], models)
    assert res.exit_code == 2 and "not both" in res.output


def test_refuses_other_settings_unless_overwrite_and_skips_a_finished_rerun(models):
    out = models / "out_refuse"
    args = ["--ckpt", "runs/ar", "--class", "1", "-n", "1"]
    base = [*args, "--out", str(out), *COMMON]
    assert _invoke(base, models).exit_code == 0
    before = (out / "samples.npz").read_bytes()
    again = _invoke(base, models)
    assert again.exit_code == 0 and "nothing to do" in again.output
    other = _invoke([*base, "--seed", "1"], models)
    assert other.exit_code == 2 and "other settings" in other.output and "seed: 0 -> 1" in other.output
    assert (out / "samples.npz").read_bytes() == before
    forced = _invoke([*base, "--seed", "1", "--overwrite"], models)
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "sample_config.json").read_text())["settings"]["seed"] == 1
    assert (out / "samples.npz").read_bytes() != before
    foreign = models / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = _invoke([*args, "--out", str(foreign), *COMMON], models)
    assert res.exit_code == 2 and "not a vfmtok sample folder" in res.output


def test_resume_generates_only_missing_chunks(models, first_run, monkeypatch):
    """An interrupted DIR (config written, chunk 0 committed, chunk 1 not) is finished, not restarted."""
    out = models / "out_resume"
    shutil.copytree(first_run[0], out)
    cfg = json.loads((out / "sample_config.json").read_text())
    (out / "sample_config.json").write_text(json.dumps({**cfg, "complete": False}))
    images, _, _ = _npz(out / "samples.npz")
    (out / "samples.npz").unlink()
    (out / "parts").mkdir()
    np.save(out / "parts" / "chunk_000000.npy", images[:4])
    (out / "images" / "000001.png").unlink()  # a PNG lost from a done chunk is rewritten from its shard
    opts = sopt.SampleOptions(num_samples=7, classes=[3, 5, 7], cfg_scale=2.0, batch_size=3, decode_batch=4,
                            image_size=48, device="cpu", progress=False)
    seen = []
    real_generate = vfmtok.sampling.generate

    def counting_generate(*args, sample_indices=None, **kwargs):
        seen.extend(sample_indices)
        return real_generate(*args, sample_indices=sample_indices, **kwargs)

    monkeypatch.setattr(vfmtok.sampling, "generate", counting_generate)
    messages = []
    sj.run_sample(models / "runs" / "ar", None, out, opts, log=messages.append)
    assert seen == [4, 5, 6] and any("1 of 2 chunks already done" in m for m in messages)
    assert (out / "samples.npz").read_bytes() == (first_run[0] / "samples.npz").read_bytes()
    assert np.array_equal(np.asarray(Image.open(out / "images" / "000001.png")), images[1])
    assert json.loads((out / "sample_config.json").read_text())["complete"] and not (out / "parts").exists()


def test_label_rules():
    np.testing.assert_array_equal(splan.make_labels(7, 10, classes=[4, 1]), [4, 1, 4, 1, 4, 1, 4])
    np.testing.assert_array_equal(splan.make_labels(23, 10, mode="balanced"), np.arange(23) % 10)
    rand = splan.make_labels(20000, 10, mode="random", seed=5)
    for i in (0, 1, 777, 19999):  # independent evaluation of the documented formula
        h = int.from_bytes(hashlib.blake2b(f"vfmtok-label:5:{i}".encode(), digest_size=8).digest(), "little")
        assert rand[i] == (h * 10) // 2**64
    np.testing.assert_array_equal(splan.make_labels(50, 10, mode="random", seed=5), rand[:50])  # depends on (seed, i)
    assert (splan.make_labels(50, 10, mode="random", seed=6) != rand[:50]).any()
    counts = np.bincount(rand, minlength=10)
    assert counts.min() > 1800 and counts.max() < 2200  # 2000 expected, sd ~42
    assert rand.dtype == np.int64
    with pytest.raises(ValueError, match="--class 10 out of range"):
        splan.make_labels(3, 10, classes=[0, 10])


def test_grid_rows_by_class_or_square():
    assert splan.grid_rows(np.array([3, 5, 3, 5, 3])) == [[0, 2, 4], [1, 3]]
    assert splan.grid_rows(np.arange(100) % 50) == [list(range(s, s + 8)) for s in range(0, 64, 8)]
    assert splan.grid_rows(np.zeros(5, dtype=np.int64)) == [[0, 1, 2], [3, 4]]
    nine = np.arange(72) % 9  # the demo: 9 classes interleaved -> one row of 64 // 9 = 7 per class
    assert splan.grid_rows(nine) == [[c + 9 * j for j in range(7)] for c in range(9)]


def test_latest_run_discovery_and_tokenizer_resolution(models, tmp_path):
    src = models / "runs" / "ar"
    for name, mtime in (("a", 100), ("b/deep", 300), ("c", 200), ("b/checkpoints/step_1", 900)):
        shutil.copytree(src, tmp_path / "runs" / name)
        os.utime(tmp_path / "runs" / name / "model.safetensors", (mtime, mtime))
    (tmp_path / "runs" / "other").mkdir()
    (tmp_path / "runs" / "other" / "model.safetensors").write_bytes(b"x")  # no vfmtok.gpt config.json
    assert sck.find_latest_gpt_run(tmp_path / "runs") == tmp_path / "runs" / "b" / "deep"
    with pytest.raises(FileNotFoundError, match="no GPT run found"):
        sck.find_latest_gpt_run(tmp_path / "empty")
    ck = sck.resolve_checkpoints(None, None, tmp_path / "runs")
    assert ck.chosen_automatically and ck.tokenizer == models / "tok"
    bare = tmp_path / "bare"
    shutil.copytree(src, bare)
    cfg = json.loads((bare / "config.json").read_text())
    del cfg["tokenizer"]
    (bare / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="no tokenizer recorded"):
        sck.resolve_checkpoints(bare, None)
    assert sck.resolve_checkpoints(bare, models / "tok").tokenizer_file == models / "tok" / "tokenizer.safetensors"
    (tmp_path / "store").mkdir()  # no "tokenizer" entry: the token store manifest names it
    (tmp_path / "store" / "manifest.json").write_text(json.dumps({"tokenizer": {"path": str(models / "tok")}}))
    (bare / "config.json").write_text(json.dumps({**cfg, "token_store": "../store"}))
    assert sck.resolve_checkpoints(bare, None).tokenizer == models / "tok"
    with pytest.raises(FileNotFoundError, match="--tokenizer vfmtok-tokenizer.pt"):
        sck.resolve_checkpoints(_fake_official(tmp_path), None)


def _fake_official(tmp_path: Path) -> Path:
    path = tmp_path / "GPT-B-300e.pt"
    path.write_bytes(b"not read by resolve_checkpoints")
    return path


def test_mismatched_gpt_and_tokenizer_are_refused(models, tmp_path):
    from vfmtok.models.gpt_io import save_gpt

    tok_cfg = vfmtok.load_tokenizer(models / "tok", encoder_weights="random").config
    for name, kwargs, match in (("vocab", {"vocab_size": 512, "grid_size": tok_cfg.token_grid}, "vocabulary 512"),
                                ("grid", {"vocab_size": tok_cfg.codebook_size, "grid_size": 4}, "16 tokens")):
        gpt = vfmtok.create_gpt("GPT-tiny", num_classes=NUM_CLASSES, **kwargs)
        save_gpt(gpt, tmp_path / name)
        res = _invoke(["--ckpt", str(tmp_path / name), "--tokenizer", str(models / "tok"), "-n", "1",
                       "--out", str(tmp_path / f"o_{name}"), *COMMON], models)
        assert res.exit_code == 2 and match in res.output and "not trained together" in res.output
    run = tmp_path / "sha"
    shutil.copytree(models / "runs" / "ar", run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, "tokenizer_sha256": "0" * 64}))
    res = _invoke(["--ckpt", str(run), "-n", "1", "--out", str(tmp_path / "o_sha"), *COMMON], models)
    assert res.exit_code == 2 and "not the one this GPT was trained with" in res.output


def test_tokenizer_sha_check_accepts_file_sha_or_the_token_store_fingerprint(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"tokenizer": {"file_sha256": "f" * 64, "weights_sha256": "w" * 64}}))
    src = Path("tok")
    assert sck.verify_tokenizer_sha(None, "f" * 64, src) is None
    assert sck.verify_tokenizer_sha({"tokenizer_sha256": "f" * 64}, "f" * 64, src) is True
    assert sck.verify_tokenizer_sha({"tokenizer_sha256": "w" * 64, "token_store": str(store)}, "f" * 64, src) is True
    with pytest.raises(ValueError, match="not the one this GPT was trained with"):  # fingerprint of another file
        sck.verify_tokenizer_sha({"tokenizer_sha256": "w" * 64, "token_store": str(store)}, "e" * 64, src)


def test_class_names_in_errors_and_grid_row_labels(tmp_path):
    from PIL import Image

    from vfmtok.data.class_names import class_label, describe_class, imagenet_name
    from vfmtok.jobs.sample.output import render_grid

    assert imagenet_name("n01440764") == "tench" and imagenet_name("n00000000") is None  # timm's WordNet table
    assert describe_class(0, ["n01440764", "cup"]) == "0 (n01440764 tench)"
    assert describe_class(1, ["n01440764", "cup"]) == "1 (cup)" and describe_class(5, None) == "5"
    assert class_label(0, ["n01440764"]) == "tench" and class_label(0, ["cup"]) == "cup"
    with pytest.raises(ValueError, match=r"--class 12 out of range.*its classes: 0 \(n01440764 tench\), 1 \(cup\)"):
        splan.make_labels(4, 2, classes=[12], class_names=["n01440764", "cup"])
    tiles = [[np.full((8, 8, 3), 50, np.uint8)] * 2, [np.full((8, 8, 3), 200, np.uint8)]]
    plain = render_grid(tiles)
    labelled = render_grid(tiles, row_labels=["tench", "cup"], label_width=40)
    assert labelled.shape == (plain.shape[0], plain.shape[1] + 40, 3)
    np.testing.assert_array_equal(labelled[:, 40:], plain)  # tiles unchanged, shifted right
    margin = labelled[:, :40]
    assert (margin < 128).any() and (margin[: 2 + 8] < 128).any() and (margin[2 + 8 + 2 :] < 128).any()  # text per row
    Image.fromarray(labelled).save(tmp_path / "grid.png")
