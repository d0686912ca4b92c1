"""`vfmtok reproduce`: --tiny end to end (twice: the second run's expected values are the first run's), file
resolution (--files, caches, the fake Hub and plain URLs on 127.0.0.1, offline listing), a RAR target on a tiny RAR,
resumable URL downloads."""
from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vfmtok
from fake_hub import FakeHub
from vfmtok.cli.main import app
from vfmtok.io.download import DownloadError, download_url
from vfmtok.io.hashing import sha256_file
from vfmtok.jobs.reproduce import files as rfiles
from vfmtok.metrics.inception import random_inception_state_dict

runner = CliRunner()


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty HF, torch hub and vfmtok caches under tmp_path; no Inception env var; network state left to the test."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VFMTOK_CACHE", str(tmp_path / "vfmtok"))
    monkeypatch.delenv("VFMTOK_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


SMALL_SAMPLE_WARNINGS = (r"samples: \d+ images < 50000; FID/sFID are biased high",
                         r"reference: 6 images < 10000; precision/recall")


def invoke_warned(args: list[str]):
    """`runner.invoke` of a reproduce run on a few images: evaluate must warn that FID and P/R of so few images are
    not comparable to published numbers (both warnings, asserted here rather than left to leak)."""
    with pytest.warns(UserWarning) as caught:
        res = runner.invoke(app, args)
    texts = [str(w.message) for w in caught]
    for pattern in SMALL_SAMPLE_WARNINGS:
        assert any(re.search(pattern, t) for t in texts), (pattern, texts)
    return res


@pytest.mark.slow
def test_tiny_end_to_end_twice(tmp_path):
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random")
    gpt = vfmtok.create_gpt("GPT-tiny", vocab_size=tok.config.codebook_size, num_classes=4,
                            grid_size=tok.config.token_grid)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    vfmtok.save_pretrained(tok, tmp_path / "tok")
    vfmtok.save_pretrained(gpt, tmp_path / "gpt")
    torch.save(random_inception_state_dict(0), tmp_path / "inception.pth")
    ref = np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    common = ["--tiny", "--tokenizer", str(tmp_path / "tok"), "--ckpt", str(tmp_path / "gpt"), "--ref",
              str(tmp_path / "ref.npz"), "--inception-weights", str(tmp_path / "inception.pth"), "-n", "8",
              "--image-size", "64", "--cfg-scale", "1.5", "--device", "cpu", "--no-progress", "--eval-batch-size", "8",
              "--fid-method", "eigh"]
    first = invoke_warned(["reproduce", *common, "--out", str(tmp_path / "r1")])
    assert first.exit_code == 0, first.output
    doc = json.loads((tmp_path / "r1" / "reproduce.json").read_text())
    (run,) = doc["runs"]
    assert run["cfg_scale"] == 1.5 and run["paper"] == {} and run["difference"] == {}
    assert set(run["metrics"]) == {"fid", "sfid", "inception_score", "precision", "recall"}
    assert all(isinstance(v, float) for v in run["metrics"].values())
    with np.load(tmp_path / "r1" / "samples-cfg1.5" / "samples.npz") as npz:
        assert npz["arr_0"].shape == (8, 64, 64, 3) and npz["arr_1"].tolist() == [0, 1, 2, 3] * 2  # balanced
    files = doc["files"]
    assert files["ref"]["sha256"] == sha256_file(tmp_path / "ref.npz")
    assert files["ckpt"]["sha256"] == "folder" and files["inception_weights"]["sha256"] == sha256_file(
        tmp_path / "inception.pth")
    p = doc["protocol"]
    assert (p["num_samples"], p["cfg_scales"], p["temperature"], p["top_k"], p["top_p"], p["seed"]) == (
        8, [1.5], 1.0, 0, 1.0, 0)
    assert "labels" in p and "tf32_matmul" in p and doc["versions"]["vfmtok"] == vfmtok.__version__
    assert doc["wall_time_s"] > 0 and doc["gpu"]
    assert run["markdown"] in first.output and (tmp_path / "r1" / "reproduce.md").read_text().strip() == run["markdown"]

    (tmp_path / "r1" / "reproduce.json").rename(tmp_path / "first.json")
    second = invoke_warned(["reproduce", *common, "--out", str(tmp_path / "r1"), "--expected",
                            str(tmp_path / "first.json")])  # resumes the samples, re-evaluates
    assert second.exit_code == 0, second.output
    assert "already holds these 8 samples" in second.output
    (run2,) = json.loads((tmp_path / "r1" / "reproduce.json").read_text())["runs"]
    assert run2["paper"] == run["metrics"]  # same seed, same settings: the same numbers to the last bit
    assert run2["difference"] == {k: 0.0 for k in run["metrics"]}
    assert f"{run['metrics']['fid']:.3f} ({run['metrics']['fid']})" in run2["markdown"]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_rar_target_samples_a_tiny_rar_with_the_authors_guidance(tmp_path):
    """`reproduce rar-l` on local tiny files: the real RAR path with the target's defaults (scale 16, cosine
    power 2.75), compared with the authors' RAR-L row; the samples are the `generate` tokens of that guidance."""
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random")
    c = tok.config
    rar = vfmtok.create_rar("RAR-tiny", vocab_size=c.codebook_size, num_classes=4, seq_len=c.num_tokens)
    torch.nn.init.normal_(rar.lm_head.weight, std=0.5)
    from vfmtok.models.rar_io import save_rar

    vfmtok.save_pretrained(tok, tmp_path / "tok")
    save_rar(rar, tmp_path / "rar")
    torch.save(random_inception_state_dict(0), tmp_path / "inception.pth")
    np.savez(tmp_path / "ref.npz", arr_0=np.random.default_rng(0).integers(0, 256, (6, 64, 64, 3), dtype=np.uint8))
    res = invoke_warned(["reproduce", "rar-l", "--tokenizer", str(tmp_path / "tok"), "--ckpt", str(tmp_path / "rar"),
                         "--ref", str(tmp_path / "ref.npz"), "--inception-weights", str(tmp_path / "inception.pth"),
                         "-n", "4", "--image-size", "64", "--device", "cpu", "--no-progress", "--eval-batch-size",
                         "4", "--fid-method", "eigh", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "r" / "reproduce.json").read_text())
    (run,) = doc["runs"]
    p = doc["protocol"]
    assert (run["cfg_scale"], p["cfg_schedule"], p["cfg_power"], p["temperature"], p["top_k"]) == (16.0, "cosine", 2.75,
                                                                                                   1.0, 0)
    assert run["paper"] == {"fid": 1.44, "sfid": 6.03, "inception_score": 312.8, "precision": 0.78, "recall": 0.66}
    assert set(run["difference"]) == set(run["paper"]) and "VFMTok-RAR README, with CFG" in run["paper_row"]
    sample_cfg = json.loads((tmp_path / "r" / "samples-cfg16" / "sample_config.json").read_text())
    assert sample_cfg["gpt"]["config"]["n_layer"] == 2 and "target_aware" not in json.dumps(sample_cfg["gpt"]["config"])
    # the images are the tokenizer's decoding of `generate`'s tokens under the authors' guidance, sample by sample
    with np.load(tmp_path / "r" / "samples-cfg16" / "samples.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert labels.tolist() == [0, 1, 2, 3]
    codes = vfmtok.generate(rar.eval(), torch.arange(4), cfg_scale=16.0, cfg_schedule="cosine", cfg_power=2.75,
                            seed=0, sample_indices=list(range(4)))
    from vfmtok.imageops import to_uint8
    from vfmtok.models.tokenizer_io import load_tokenizer

    with torch.no_grad():
        expected = to_uint8(load_tokenizer(tmp_path / "tok", with_encoder=False).decode_codes(codes), size=64).numpy()
    assert np.abs(images.astype(int) - expected.astype(int)).max() <= 1


def test_offline_lists_every_missing_file_before_any_work(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = caches / "out"
    res = runner.invoke(app, ["reproduce", "gpt-b", "--out", str(out)])
    assert res.exit_code == 2 and not out.exists()
    assert "4 input file(s) missing" in res.output
    for name, url in [("vfmtok-tokenizer.pt", "/yexiguafu/VFMTok/resolve/main/DINOv2/tokenizer/vfmtok-tokenizer.pt"),
                      ("GPT-B-300e.pt", "/yexiguafu/VFMTok/resolve/main/DINOv2/GPT-B/GPT-B-300e.pt"),
                      (rfiles.INCEPTION_FILE, rfiles.INCEPTION_URL), (rfiles.VIRTUAL_FILE, rfiles.VIRTUAL_URL)]:
        assert name in res.output and url in res.output
    assert str(caches / "torch" / "hub" / "checkpoints" / rfiles.INCEPTION_FILE) in res.output
    res = runner.invoke(app, ["reproduce", "tokenizer", "--out", str(out)])
    assert res.exit_code == 2 and "ImageNet val folder" in res.output and "dinov2_vitl14_reg4_pretrain.pth" in res.output
    res = runner.invoke(app, ["reproduce", "rar-xl", "--out", str(out)])  # RAR: the same listing, its own file
    assert res.exit_code == 2 and "4 input file(s) missing" in res.output and not out.exists()
    assert "/yexiguafu/VFMTok/resolve/main/VFMTok-RAR/RAR-vanilla/vfmtok-rar-xl.safetensors" in res.output


def test_files_dir_hub_and_urls_then_cache_hits(caches, monkeypatch):
    blobs = {name: os.urandom(3000 + i) for i, name in enumerate(("tok", "gpt", "inc", "ref"))}
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_repo("yexiguafu/VFMTok", {"DINOv2/tokenizer/vfmtok-tokenizer.pt": blobs["tok"],
                                          "DINOv2/GPT-B/GPT-B-300e.pt": blobs["gpt"]})
        hub.files.update({"inc.pth": blobs["inc"], "ref.npz": blobs["ref"]})
        monkeypatch.setattr(rfiles, "INCEPTION_URL", f"{hub.endpoint}/files/inc.pth")
        monkeypatch.setattr(rfiles, "VIRTUAL_URL", f"{hub.endpoint}/files/ref.npz")
        res = runner.invoke(app, ["reproduce", "gpt-b", "--fetch-only", "--no-progress"])
        assert res.exit_code == 2 and "does not match the published 6726825d" in res.output  # wrong file refused
        assert not (caches / "torch" / "hub" / "checkpoints" / rfiles.INCEPTION_FILE).exists()
        monkeypatch.setattr(rfiles, "INCEPTION_SHA256_PREFIX", hashlib.sha256(blobs["inc"]).hexdigest()[:8])
        res = runner.invoke(app, ["reproduce", "gpt-b", "--fetch-only", "--no-progress"])
        assert res.exit_code == 0, res.output
        assert (caches / "torch" / "hub" / "checkpoints" / rfiles.INCEPTION_FILE).read_bytes() == blobs["inc"]
        assert (caches / "vfmtok" / "ref_batches" / rfiles.VIRTUAL_FILE).read_bytes() == blobs["ref"]
        hits = dict(hub.hits)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the server is gone: everything now comes from the caches
    res = runner.invoke(app, ["reproduce", "gpt-b", "--fetch-only"])
    assert res.exit_code == 0, res.output
    assert str(caches / "hf") in res.output
    assert hits == {"yexiguafu/VFMTok/DINOv2/tokenizer/vfmtok-tokenizer.pt": 1, "yexiguafu/VFMTok/DINOv2/GPT-B/"
                    "GPT-B-300e.pt": 1, "inc.pth": 2, "ref.npz": 1}  # each file fetched once (inc.pth: refused once)
    files_dir = caches / "given"
    (files_dir / "sub").mkdir(parents=True)
    (files_dir / "sub" / "GPT-B-300e.pt").write_bytes(b"x")
    res = runner.invoke(app, ["reproduce", "gpt-b", "--fetch-only", "--files", str(files_dir)])
    assert res.exit_code == 0 and f"ckpt: {files_dir / 'sub' / 'GPT-B-300e.pt'}" in res.output


def test_download_url_resumes_a_partial_file(tmp_path):
    data = os.urandom(3 << 20)
    with FakeHub() as hub:
        hub.files["big.bin"] = data
        hub.truncate_once.add("big.bin")
        dest = tmp_path / "d" / "big.bin"
        with pytest.raises(DownloadError, match="resume"):
            download_url(f"{hub.endpoint}/files/big.bin", dest, progress=False)
        part = dest.with_name("big.bin.part")
        assert 0 < part.stat().st_size < len(data) and not dest.exists()
        got = download_url(f"{hub.endpoint}/files/big.bin", dest, sha256=hashlib.sha256(data).hexdigest(),
                           progress=False)
        assert got.read_bytes() == data and not part.exists()
        assert hub.ranges == [f"big.bin bytes={len(data) // 2}-"]
        with pytest.raises(DownloadError, match="HTTP 404"):
            download_url(f"{hub.endpoint}/files/none.bin", tmp_path / "none.bin", progress=False)
