"""The CLI contract: every subcommand exists, has help, shares --seed/--device/--mixed-precision."""
from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from vfmtok import __version__
from vfmtok.cli.main import app

SUBCOMMANDS = ["prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "sample", "evaluate"]
runner = CliRunner()


def test_version_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"vfmtok {__version__}"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_lists_shared_options(name):
    result = runner.invoke(app, [name, "--help"])
    assert result.exit_code == 0, result.output
    for option in ("--seed", "--device", "--mixed-precision"):
        assert option in result.output, f"{name} --help lacks {option}"


def test_console_script_runs_as_module():
    out = subprocess.run([sys.executable, "-m", "vfmtok", "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout
