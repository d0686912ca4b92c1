"""README's main command, shortened: the whole pipeline on real demo photos through the public CLI.

Runs `bash scripts/demo.sh OUT --quick` exactly as `make demo` does (fewer training steps) and pins the
demo's quality floor: reconstructions resemble their inputs (PSNR) and samples of class k look like
class k (nearest training-class mean of Inception pool3 features).
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

# Measured on the quick variant (see README "What the demo shows"); floors well below the measurements
# and well above what an untrained pipeline gives (PSNR ~10 dB, class fraction ~1/9).
MIN_PSNR_DB = 14.0
MIN_OWN_CLASS_FRACTION = 0.5


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
    assert metrics["tokenizer PSNR (dB)"] > MIN_PSNR_DB
    assert metrics["samples in own class (nearest class mean)"] >= MIN_OWN_CLASS_FRACTION
    for key in ("tokenizer rFID (val, 256 px)", "samples FID vs val ref", "samples sFID"):
        assert math.isfinite(metrics[key]) and metrics[key] >= 0
    assert 0 < metrics["tokenizer codebook usage"] <= 1
    assert (out / "recon_grid.png").stat().st_size > 0
    assert (out / "sample_grid.png").stat().st_size > 0
    # Every pipeline step ran and was timed.
    steps = set(summary["timings_s"])
    assert {"prepare-train", "train-tokenizer", "evaluate-tokenizer", "extract-tokens", "train-ar",
            "sample", "evaluate-samples", "class-check"} <= steps
