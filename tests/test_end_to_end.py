"""README's main command, shortened: the whole pipeline on real demo photos through the public CLI.

Runs `bash scripts/demo.sh OUT --quick` exactly as `make demo` does (fewer training steps) and pins the
demo's quality floor: reconstructions resemble their inputs (PSNR clearly above what a reconstruction
without any image-specific detail scores: the class-mean image, recomputed here independently of
`demo_report`) and samples of class k look like class k (nearest training-class mean of Inception pool3
features).
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Measured on the quick variant (2026-12-01, 2 CPU cores, AVX-512 kernels): tokenizer PSNR 17.83 dB against a
# class-mean-image baseline of 15.76 dB (+2.07 dB; both 56 px crops compared at 256 px, evaluate's protocol), 0.65 of
# the samples nearest their own class mean (chance 1/9); on another machine (2026-11-29) 17.70 dB and 0.76, as the
# figures move with the CPU's kernels (docs/quickstart.md). Floors below the measurements and well above an untrained
# pipeline (PSNR ~9 dB, fraction ~1/9).
MIN_PSNR_GAIN_OVER_CLASS_MEAN_DB = 1.0
MIN_OWN_CLASS_FRACTION = 0.5


def _class_mean_psnr(train_dir: Path, val_dir: Path, size: int, eval_size: int = 256) -> float:
    """Mean PSNR (dB) of each val centre crop against the mean of its class's train centre crops (numpy/PIL), under
    `evaluate`'s protocol: both to uint8 by clamp(127.5 x + 128) on [-1, 1], PIL bicubic to 256, compared in [0, 1]."""
    import numpy as np
    from PIL import Image

    from vfmtok.data.crops import adm_center_crop
    from vfmtok.data.datasets import PreparedDataset

    def crops(folder):
        ds = PreparedDataset(folder)
        pairs = [(adm_center_crop(Image.fromarray(ds[i][0]), size).astype(np.float64) / 255.0, int(ds[i][1]))
                 for i in range(len(ds))]
        return [p[0] for p in pairs], np.array([p[1] for p in pairs])

    def evaluated(img):
        u8 = np.floor(np.clip((img * 2 - 1).astype(np.float32) * np.float32(127.5) + np.float32(128), 0, 255))
        resized = Image.fromarray(u8.astype(np.uint8)).resize((eval_size, eval_size), Image.BICUBIC)
        return np.asarray(resized, dtype=np.float64) / 255.0

    train, train_labels = crops(train_dir)
    val, val_labels = crops(val_dir)
    means = {c: np.mean([im for im, lab in zip(train, train_labels) if lab == c], axis=0)
             for c in set(train_labels.tolist())}
    return float(np.mean([10 * np.log10(1.0 / np.mean((evaluated(means[lab]) - evaluated(im)) ** 2))
                          for im, lab in zip(val, val_labels)]))


@pytest.mark.slow
def test_demo_pipeline_quick_variant(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), str(out), "--quick"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "vfmtok demo summary" in proc.stdout

    summary = json.loads((out / "summary.json").read_text())
    metrics = summary["metrics"]
    tok_eval = json.loads((out / "eval_tokenizer.json").read_text())
    baseline = _class_mean_psnr(out / "data" / "train", out / "data" / "val", tok_eval["image_size"])
    assert metrics["baseline: class-mean image PSNR (dB)"] == pytest.approx(baseline, abs=1e-6)
    assert metrics["tokenizer PSNR (dB, val, 256 px)"] > baseline + MIN_PSNR_GAIN_OVER_CLASS_MEAN_DB
    assert metrics["samples in own class (nearest class mean)"] >= MIN_OWN_CLASS_FRACTION
    for key in ("tokenizer rFID (val, 256 px)", "samples FID vs val ref", "samples sFID"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    assert 0 < metrics["tokenizer codebook usage"] <= 1
    assert (out / "recon_grid.png").stat().st_size > 0
    assert (out / "sample_grid.png").stat().st_size > 0
    # Every pipeline step ran and was timed.
    steps = set(summary["timings_s"])
    assert {"prepare-train", "train-tokenizer", "evaluate-tokenizer", "psnr-baselines", "extract-tokens", "train-ar",
            "sample", "evaluate-samples", "class-check"} <= steps
