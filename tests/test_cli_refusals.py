"""Bad arguments are refused before any heavy import (torch, timm): the refusal is one line and quick.

The speed itself is measured in benchmarks/cli_startup.py; this checks the cause of slow refusals: that the
command exits with code 2 and its error line without importing torch.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
from vfmtok.cli.main import app
try:
    app(sys.argv[1:], prog_name="vfmtok")
except SystemExit as exit:
    code = exit.code
print("EXIT", code, "TORCH", "torch" in sys.modules)
"""

CASES = [
    (["prepare-data", "no_such_folder", "out"], "no_such_folder"),
    (["train-tokenizer", "no_such_folder"], "DATA no_such_folder: not found"),
    (["train-tokenizer", ".", "--encoder-weights", "no_such.pth"], "--encoder-weights no_such.pth: file not found"),
    (["train-tokenizer", ".", "--set", "codebook_size"], "--set 'codebook_size': expected KEY=VALUE"),
    (["extract-tokens", "no_such_folder", "out", "--tokenizer", "no_such_run"], "DATA no_such_folder: not a folder"),
    (["train-ar", "--tokens", "no_such_store"], "--tokens no_such_store: no token store there"),
    (["sample", "--class", "-3", "-n", "4"], "--class -3: class ids must be >= 0"),
    (["sample", "--class", "3", "--cfg-schedule", "cosine", "--cfg-power", "0"], "cfg_power must be > 0"),
    (["sample", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["evaluate", "samples.npz", "--ref", "ref.npz"], "SAMPLES samples.npz: file not found"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(c[0][:3]) for c in CASES])
def test_bad_argument_is_refused_without_importing_torch(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True)
    assert "EXIT 2 TORCH False" in proc.stdout, proc.stdout + proc.stderr
    assert message in proc.stderr
