"""vfmtok.jobs.demo_report: PSNR baselines and the nearest-class-mean assignment against naive computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from vfmtok.jobs.prepare import PrepareSettings, prepare_dataset
from vfmtok.jobs.demo_report import nearest_class_mean, psnr_baselines

SIZE = 16
EVAL = 24  # PSNR resolution of the baselines (evaluate uses 256); != SIZE so the resize is exercised


def _write_split(root, split: str, per_class: int, rng: np.random.Generator) -> None:
    for c, wnid in enumerate(["n01440764", "n01443537", "n01484850"]):
        folder = root / split / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.array([60 * c + 20, 200 - 50 * c, 90 + 10 * i], dtype=np.float64)
            pixels = base + rng.normal(0, 25, size=(SIZE, SIZE, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_report")
    rng = np.random.default_rng(0)
    _write_split(root, "src_train", 4, rng)
    _write_split(root, "src_val", 2, rng)
    prepare_dataset(root / "src_train", root / "train", PrepareSettings(min_size=0, store_format="png"))
    prepare_dataset(root / "src_val", root / "val", PrepareSettings(split="val", min_size=0, store_format="png"),
                    classes_file=root / "train" / "classes.json")
    return root


def _naive_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = sum((float(x) - float(y)) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size
    return 10 * math.log10(1.0 / mse)


def _load_pngs(folder):
    images, labels = [], []
    for label, class_dir in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        for path in sorted(class_dir.glob("*.png")):
            images.append(np.asarray(Image.open(path), dtype=np.float64) / 255.0)
            labels.append(label)
    return images, labels


def _as_evaluated(img: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] float H x W x 3 -> uint8 by clamp(127.5 x + 128) on [-1, 1] (float32, truncation, as the official
    evaluation) -> PIL bicubic to size x size -> [0, 1] float."""
    u8 = np.floor(np.clip((img * 2 - 1).astype(np.float32) * np.float32(127.5) + np.float32(128), 0, 255))
    return np.asarray(Image.fromarray(u8.astype(np.uint8)).resize((size, size), Image.BICUBIC), np.float64) / 255.0


def test_psnr_baselines_equal_a_naive_loop_over_the_source_pngs(prepared):
    result = psnr_baselines(prepared / "train", prepared / "val", SIZE, eval_size=EVAL)
    train, train_labels = _load_pngs(prepared / "src_train")
    val, val_labels = _load_pngs(prepared / "src_val")
    means = {c: sum(img for img, lab in zip(train, train_labels) if lab == c) / train_labels.count(c)
             for c in set(train_labels)}
    truth = [_as_evaluated(img, EVAL) for img in val]
    flat = [_naive_psnr(_as_evaluated(np.broadcast_to(img.mean(axis=(0, 1)), img.shape), EVAL), t)
            for img, t in zip(val, truth)]
    klass = [_naive_psnr(_as_evaluated(means[lab], EVAL), t) for lab, t in zip(val_labels, truth)]
    assert result["count"] == 6 and result["size"] == SIZE and result["eval_size"] == EVAL
    assert result["mean_colour_psnr"] == pytest.approx(sum(flat) / len(flat), abs=1e-9)
    assert result["class_mean_psnr"] == pytest.approx(sum(klass) / len(klass), abs=1e-9)
    # class means are closer to each image than its flat mean colour only when classes carry structure;
    # here each class is a noisy flat colour, so the own mean colour wins.
    assert result["mean_colour_psnr"] > result["class_mean_psnr"]


def test_nearest_class_mean_equals_a_naive_argmin():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(30, 5))
    labels = np.repeat([2, 5, 7], 10)
    samples = rng.normal(size=(12, 5))
    got = nearest_class_mean(feats, labels, samples)
    for sample, pred in zip(samples, got):
        best = min((float(((sample - feats[labels == c].mean(0)) ** 2).sum()), c) for c in (2, 5, 7))[1]
        assert pred == best


def test_class_check_refuses_an_unknown_reference_or_reconstructions_without_a_tokenizer(tmp_path):
    from vfmtok.jobs.demo_report import class_check

    with pytest.raises(ValueError, match="reference must be 'photos' or 'reconstructions'"):
        class_check(tmp_path / "s.npz", tmp_path, reference="recons")
    with pytest.raises(ValueError, match="'reconstructions' needs --tokenizer"):
        class_check(tmp_path / "s.npz", tmp_path, inception_weights=tmp_path / "w.pth", native_size=56,
                    reference="reconstructions")


def test_class_check_takes_the_native_size_from_the_tokenizer(prepared, tmp_path):
    import vfmtok
    from vfmtok.jobs.demo_report import class_check
    from vfmtok.models.tokenizer_io import save_tokenizer

    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random", image_size=56, pixel_ch_mult=[1, 1, 2, 2])
    save_tokenizer(tok, tmp_path / "tok")
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "s.npz", arr_0=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8),
             arr_1=np.array([0, 1, 2, 0, 1, 2]))
    result = class_check(tmp_path / "s.npz", prepared / "train", tokenizer=tmp_path / "tok",
                         reference="reconstructions")
    assert result["train_resolution"] == "56 px crops -> 64 px bicubic"
    assert result["feature"] == "tokenizer-encoder" and result["n"] == 6 and result["chance"] == pytest.approx(1 / 3)
    assert set(result) >= {"fraction", "fraction_vs_photos"}
    with pytest.raises(ValueError, match="--native-size 64 but the tokenizer .* works at 56 px"):
        class_check(tmp_path / "s.npz", prepared / "train", tokenizer=tmp_path / "tok", native_size=64)


def test_summary_explains_why_val_psnr_differs_from_the_training_log(tmp_path):
    import json

    from typer.testing import CliRunner

    from vfmtok.jobs.demo_report import app

    (tmp_path / "eval_tokenizer.json").write_text(json.dumps({"psnr": 19.25, "rfid": 332.0}))
    (tmp_path / "timings.tsv").write_text("train-tokenizer\t300\nsample\t12\n")
    res = CliRunner().invoke(app, ["summary", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "tokenizer PSNR (dB, val, 256 px)             19.25" in res.output
    assert "EMA weights" in res.output and "256 px" in res.output and "metrics.jsonl" in res.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["timings_s"] == {"train-tokenizer": 300, "sample": 12} and summary["metrics"]["tokenizer rFID (val, 256 px)"] == 332.0
    assert "baseline: class-mean image PSNR (dB)" in summary["metrics"]  # keys without the table's indentation
    assert all(k == k.strip() for k in summary["metrics"])


def test_summary_records_the_cpu_kernel_path_that_decides_the_exact_figures(tmp_path):
    """The demo's exact figures depend on ATen's CPU kernel path; summary.json records the one the run used.
    Forced to the portable kernels through ATEN_CPU_CAPABILITY, the record must say so (it is measured, not assumed)."""
    import json
    import os
    import subprocess
    import sys

    import torch

    (tmp_path / "timings.tsv").write_text("sample\t1\n")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    res = subprocess.run([sys.executable, "-m", "vfmtok.jobs.demo_report", "summary", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    recorded = json.loads((tmp_path / "summary.json").read_text())["environment"]
    cuda = (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "none")
    assert recorded == {"torch": torch.__version__, "cpu_capability": "DEFAULT", "threads": torch.get_num_threads(),
                        "cuda": cuda}
    assert "DEFAULT CPU kernels" in res.stdout and "another CPU instruction set" in res.stdout
