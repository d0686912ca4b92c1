"""The CLI contract: every subcommand exists, has help, takes --seed/--device/--mixed-precision where they act."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vfmtok import __version__
from vfmtok.cli.main import app

SUBCOMMANDS = ["prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "sample", "evaluate"]
# the shared options each command takes: only those that change what it does (prepare-data is a deterministic
# CPU job; extract-tokens and evaluate are deterministic, so they have no --seed)
SHARED = {
    "prepare-data": (),
    "train-tokenizer": ("--seed", "--device", "--mixed-precision"),
    "extract-tokens": ("--device", "--mixed-precision"),
    "train-ar": ("--seed", "--device", "--mixed-precision"),
    "sample": ("--seed", "--device", "--mixed-precision"),
    "evaluate": ("--device", "--mixed-precision"),
}
runner = CliRunner()


def test_version_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"vfmtok {__version__}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_lists_shared_options(name):
    result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--seed", "--device", "--mixed-precision"):  # not --shuffle-seed
        shown = re.search(rf"(?<![\w-]){option}(?![\w-])", result.output) is not None
        assert shown == (option in SHARED[name]), f"{name} --help: {option}"


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "vfmtok", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
