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
    (["extract-tokens", "no_such_folder", "out", "--tokenizer", "no_such_run"], "DATA no_such_folder: not a folder"),
    (["train-ar", "--tokens", "no_such_store"], "--tokens no_such_store: no token store there"),
    (["evaluate", "samples.npz", "--ref", "ref.npz"], "SAMPLES samples.npz: file not found"),
]


@pytest.mark.parametrize("args, message", CASES, ids=[c[0][0] for c in CASES])
def test_bad_argument_is_refused_without_importing_torch(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path, capture_output=True, text=True)
    assert "EXIT 2 TORCH False" in proc.stdout, proc.stdout + proc.stderr
    assert message in proc.stderr
