"""`benchmarks/gpu_check.sh --smoke`: the one-GPU check script runs end to end on CPU (so it cannot rot)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "WORK": str(tmp_path / "work"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--smoke"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = (tmp_path / "out" / "gpu_check.md").read_text()
    # one row per step; CPU runs fp32 whatever --mixed-precision says, so bf16 and fp32 codes agree exactly
    assert "(9, 1, 64) codes, 100.000 % identical" in summary
    assert "| train-tokenizer tiny no | preset=tiny" in summary and "s/step" in summary
    assert '"step": 3' in summary  # the FSDP run's last metrics line
    assert "batch-1 decode step eager" in summary and "weight-read bound" in summary
    assert "inception cpu vs cpu: max abs diff / max |feature|: pool3 0.0e+00" in summary
    assert "| train-ar no batch 2 images x 2 | RAR-tiny" in summary and "4 sequences/step" in summary
    assert "RAR sample RAR-tiny: kv-cache" in summary and "same tokens: True" in summary
    assert "| sample | RAR-tiny batch-1 decode step eager" in summary  # the RAR row of benchmarks/sample.py
    samples = tmp_path / "work" / "samples_eager" / "samples.npz"
    assert samples.is_file() and (tmp_path / "out" / "fsdp.log").is_file()
