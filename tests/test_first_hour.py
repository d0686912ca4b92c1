"""A researcher's first hour (issue #19): the design's usage examples, typed as in the docs, in one working folder.

Each command either works or fails with its one-line fix; where the default is unusable on a CPU (train-ar's
GPT-B for the paper's 300 epochs), the test checks the fix line and then runs the command with that fix.
Sizes are tiny (9 demo classes x 2 photos of 64 px, a 56 px tokenizer, 2 training steps).
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vfmtok.cli.main import app
from vfmtok.metrics.inception import random_inception_state_dict


def _vfmtok(line: str):
    """Run `vfmtok ...` as typed (shell words) in the current folder; returns (exit code, output)."""
    words = shlex.split(line)
    assert words[0] == "vfmtok"
    result = CliRunner().invoke(app, words[1:])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_design_examples_as_typed(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    torch.save(random_inception_state_dict(0), tmp_path / "inception.pth")
    monkeypatch.setenv("VFMTOK_INCEPTION_WEIGHTS", str(tmp_path / "inception.pth"))  # the documented lookup
    code, out = _vfmtok("vfmtok demo-data photos --train-per-class 2 --val-per-class 1 --size 64")
    assert code == 0, out
    code, out = _vfmtok("vfmtok prepare-data photos ref_data --split val --npz REF.npz --no-progress")
    assert code == 0, out

    # (a) the docs' tiny tokenizer, trained first: default --out runs/tokenizer-tiny
    code, out = _vfmtok("vfmtok train-tokenizer photos/ --preset tiny --set image_size=56 "
                        "--set 'pixel_ch_mult=[1,1,2,2]' --steps 2 --batch-size 4 --disc none --perceptual-weight 0")
    assert code == 0, out
    assert (tmp_path / "runs" / "tokenizer-tiny" / "tokenizer.safetensors").is_file()

    # (b) extract-tokens finds that run by itself
    code, out = _vfmtok("vfmtok extract-tokens photos/ out/")
    assert code == 0, out
    assert "newest tokenizer run" in out and (tmp_path / "out" / "manifest.json").is_file()

    # (c) the default GPT-B for 300 epochs cannot run on a CPU: one line with the fix, nothing written
    code, out = _vfmtok("vfmtok train-ar --tokens out/")
    assert code == 2
    error = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--model GPT-tiny --steps 200" in error[0], out
    assert not list((tmp_path / "runs").glob("ar-*"))
    fix = re.search(r"`(--model GPT-tiny --steps \d+ --ema-decay [0-9.]+)`", error[0]).group(1).replace("200", "2")
    code, out = _vfmtok(f"vfmtok train-ar --tokens out/ {fix}")
    assert code == 0, out

    # (d) sample finds the newest GPT run and says where everything went, and what to run next
    code, out = _vfmtok("vfmtok sample --class 3 -n 8")
    assert code == 0, out
    folder = Path(re.search(r"output folder: (\S+)", out).group(1))
    assert re.search(rf"samples: {re.escape(str(folder / 'samples.npz'))}", out)
    assert re.search(rf"grid: +{re.escape(str(folder / 'grid.png'))}", out)
    assert (tmp_path / folder / "grid.png").is_file()
    with np.load(tmp_path / folder / "samples.npz") as data:
        assert data["arr_0"].shape == (8, 256, 256, 3) and data["arr_1"].tolist() == [3] * 8
    command = re.search(r"next: (vfmtok evaluate .*--ref REF\.npz)", out).group(1)

    # (e) the printed command, pasted
    code, out = _vfmtok(command)
    assert code == 0, out
    fid = float(re.search(r"FID: ([0-9.]+)", out).group(1))
    assert np.isfinite(fid) and fid >= 0


def test_default_cpu_run_refusal_threshold():
    from vfmtok.jobs.train_ar import CPU_DEFAULT_RUN_MINUTES, CPU_TFLOPS_BOUND, refuse_long_default_run

    # 6 x N x tokens x steps FLOPs at the bound: exactly the threshold passes, 1 % more is refused
    steps = int(CPU_DEFAULT_RUN_MINUTES * 60 * CPU_TFLOPS_BOUND * 1e12 / (6 * 1e6 * 1000))
    refuse_long_default_run("GPT-tiny", 1_000_000, 1000, steps)
    with pytest.raises(ValueError, match=r"needs at least 5 min on this CPU; for a first run add `--model GPT-tiny"):
        refuse_long_default_run("GPT-B", 1_000_000, 1000, int(steps * 1.01) + 1)
    with pytest.raises(ValueError, match=r"at least 2\.6 h"):  # GPT-B-sized, 300 paper epochs of 18 x 256 tokens
        refuse_long_default_run("GPT-B", 111_000_000, 18 * 256, 300)


def test_a_folder_named_vfmtok_in_the_working_directory_does_not_shadow_the_package(tmp_path):
    """A newcomer who clones into ./vfmtok and runs Python from the parent folder: the clone folder must not be
    imported as an empty namespace package ("module 'vfmtok' has no attribute 'load_tokenizer'"), as it was with
    setuptools' import-hook editable install; the installed package wins."""
    import subprocess
    import sys

    (tmp_path / "vfmtok").mkdir()  # what `git clone URL` leaves beside the user's scripts
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import vfmtok; print(vfmtok.__file__); print(callable(vfmtok.load_tokenizer))"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    origin, has_api = res.stdout.split()
    repo = Path(__file__).resolve().parents[1]
    assert Path(origin).resolve() == (repo / "vfmtok" / "__init__.py").resolve() and has_api == "True"
