"""`vfmtok train-tokenizer` end to end on real photos (tiny preset at 56 px so it runs in seconds on CPU)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

from vfmtok.cli.main import app
from vfmtok.engine.checkpoint import read_checkpoint
from vfmtok.engine.metrics_log import read_metrics
from vfmtok.engine.trainer import TIME_KEYS

SMALL = ["--preset", "tiny", "--set", "image_size=56", "--set", "pixel_ch_mult=[1,1,2,2]"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from vfmtok.data.demo import DemoSettings, build_demo_data

    root = tmp_path_factory.mktemp("photos")
    build_demo_data(root, DemoSettings(train_per_class=1, val_per_class=1, size=64))
    return root  # 9 real photos in ImageNet layout (train/<wnid>/*.JPEG)


def _train(data, out, *extra):
    args = ["train-tokenizer", str(data), "--out", str(out), *SMALL, "--batch-size", "2", "--disc", "patchgan",
            "--disc-start", "3", "--ema-decay", "0.5", "--save-every", "2", "--log-every", "1", "--grid-every", "2",
            "--num-workers", "0", "--no-progress", "--device", "cpu", "--lr", "1e-3", "--warmup-steps", "2", *extra]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def _flatten(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def test_four_steps_equal_two_plus_resume_plus_two_across_the_disc_start(photos, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    fast = ("--perceptual-weight", "0")  # LPIPS is exercised by the next test
    _train(photos, straight, "--steps", "4", *fast)
    _train(photos, split, "--steps", "2", *fast)
    out = _train(photos, split, "--steps", "4", "--resume", *fast)
    assert "trained 4 steps" in out.output
    a, _, meta = read_checkpoint(straight / "checkpoints" / "step_00000004")
    b, _, _ = read_checkpoint(split / "checkpoints" / "step_00000004")
    fa, fb = _flatten(a), _flatten(b)
    assert fa.keys() == fb.keys() and meta["step"] == 4
    assert any(k.startswith("/optimizers/disc/state") for k in fa)  # the discriminator did train
    for k in fa:
        if isinstance(fa[k], torch.Tensor):
            assert torch.equal(fa[k], fb[k]), k
        else:
            assert fa[k] == fb[k], k
    strip = lambda recs: [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in recs]  # noqa: E731
    ma, mb = read_metrics(straight / "metrics.jsonl"), read_metrics(split / "metrics.jsonl")
    assert strip(ma) == strip(mb) and [r["step"] for r in ma] == [1, 2, 3, 4]
    assert "g_adv" not in ma[2] and ma[3]["adv_weight"] == 0.5 and "d_hinge" in ma[3]
    ta, tb = load_file(straight / "tokenizer.safetensors"), load_file(split / "tokenizer.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_run_outputs_ema_export_metrics_and_grids(photos, tmp_path, caplog, monkeypatch):
    import vfmtok

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # LPIPS must not write torchvision's cache (#19)
    run = tmp_path / "run"
    _train(photos, run, "--steps", "2")
    assert not (tmp_path / "torch").exists()
    # --warmup-steps 2 over a 2-step run: the peak lr is never reached, and the run says so
    assert ("warm-up of 2 steps is not shorter than the run (2 steps): the learning rate never reaches --lr 0.001 "
            "(last step: 0.0005)") in caplog.text
    recs = read_metrics(run / "metrics.jsonl")
    for key in ("loss_tok", "pixel", "perceptual", "semantic", "vq_codebook", "vq_commit", "lr_tok", "grad_norm_tok",
                "images_per_s", "sec_per_step", "codebook_usage", "psnr", "skipped_steps"):
        assert key in recs[-1], key
    assert recs[0]["lr_tok"] == pytest.approx(1e-7) and recs[1]["lr_tok"] == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2)
    # codebook usage = distinct codes / 1024 over the 2 steps x 2 images x 64 tokens seen so far
    assert 0 < recs[-1]["codebook_usage"] <= 256 / 1024 and recs[-1]["usage_window_fill"] == 256 / 65536
    state, _, _ = read_checkpoint(run / "checkpoints" / "step_00000002")
    exported = load_file(run / "tokenizer.safetensors")
    for name, shadow in state["ema"]["tok"]["shadow"].items():
        assert torch.equal(exported[name], shadow), name
    assert not any(k.startswith("vfm") for k in exported)  # frozen encoder excluded
    config = json.loads((run / "config.json").read_text())
    assert config["tokenizer"]["image_size"] == 56 and config["training"]["total_steps"] == 2
    assert config["weights"] == "ema" and config["training"]["disc"] == "patchgan"
    tok = vfmtok.load_tokenizer(run)
    assert tok.encode(torch.zeros(1, 3, 56, 56)).shape == (1, 64)
    grid = Image.open(run / "grids" / "step_00000002.png")
    assert grid.size == (2 * 56 + 3 * 2, 2 * 56 + 3 * 2)  # 2 inputs above, 2 reconstructions below


def test_existing_run_needs_resume(photos, tmp_path):
    run = tmp_path / "run"
    _train(photos, run, "--steps", "1", "--perceptual-weight", "0", "--disc", "none")
    result = CliRunner().invoke(app, ["train-tokenizer", str(photos), "--out", str(run), *SMALL, "--steps", "2",
                                      "--batch-size", "2", "--device", "cpu", "--num-workers", "0"])
    assert result.exit_code == 2 and "--resume" in result.output


@pytest.mark.slow
def test_tiny_tokenizer_learns_to_reconstruct_real_photos(tmp_path):
    """Overfitting 4 real photos: reconstruction PSNR of the exported (EMA) tokenizer rises by > 1.5 dB in 20 steps."""
    import shutil

    import vfmtok
    from vfmtok.data.crops import adm_center_crop
    from vfmtok.imageops import image_to_tensor
    from vfmtok.data.demo import DemoSettings, build_demo_data
    from vfmtok.engine.loader import open_image_dataset

    full = tmp_path / "full"
    build_demo_data(full, DemoSettings(train_per_class=1, val_per_class=1, size=64))
    data = tmp_path / "four"
    for wnid in sorted(p.name for p in (full / "train").iterdir())[:4]:
        shutil.copytree(full / "train" / wnid, data / "train" / wnid)
    images = torch.stack([image_to_tensor(adm_center_crop(img, 56)) for img, _ in open_image_dataset(data)])

    def psnr(tok):
        tok.eval()
        with torch.no_grad():
            recon = tok.decode_codes(tok.encode(images)).clamp(-1, 1)
        mse = ((recon - images) / 2).pow(2).flatten(1).mean(1)
        return float((10 * torch.log10(1 / mse)).mean())

    torch.manual_seed(0)  # the trainer seeds its model init with --seed 0 the same way
    before = psnr(vfmtok.create_tokenizer("tiny", image_size=56, pixel_ch_mult=(1, 1, 2, 2)))
    run = tmp_path / "run"
    args = ["train-tokenizer", str(data), "--out", str(run), *SMALL, "--steps", "20", "--batch-size", "4",
            "--lr", "3e-3", "--warmup-steps", "0", "--ema-decay", "0", "--perceptual-weight", "0", "--disc", "none",
            "--save-every", "0", "--grid-every", "0", "--num-workers", "0", "--no-progress", "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    after = psnr(vfmtok.load_tokenizer(run))
    print(f"PSNR before {before:.2f} dB, after 20 steps {after:.2f} dB")
    assert after > before + 1.5
