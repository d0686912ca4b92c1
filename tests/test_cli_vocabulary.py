"""One vocabulary of options across subcommands (issue #19 item 6): same spelling and default for the shared
options, `--progress/--no-progress` everywhere, paths typed as paths, and `--help` without type noise."""
from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from vfmtok.cli import common
from vfmtok.cli.main import app

runner = CliRunner()
COMMANDS = sorted(typer.main.get_command(app).commands)


def _params(name: str) -> dict:
    return {p.name: p for p in typer.main.get_command(app).commands[name].params}


def test_every_command_is_listed():
    assert COMMANDS == sorted(["prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "sample", "evaluate",
                               "demo-data", "convert", "push", "reproduce"])


@pytest.mark.parametrize("name", ["", *COMMANDS])
def test_help_renders_without_type_noise_and_with_capital_arguments(name):
    result = runner.invoke(app, [name, "--help"] if name else ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert "<bool>" not in out and "<list[" not in out, out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    arguments = usage.split("[OPTIONS]", 1)[1].split()
    for arg in arguments:
        word = arg.strip("{}[].")
        assert word == word.upper() and word, f"{name}: argument {arg} is not in capitals ({usage.strip()})"
    cmd = typer.main.get_command(app) if not name else typer.main.get_command(app).commands[name]
    for param in cmd.params:
        if param.param_type_name == "argument":
            assert param.metavar and param.metavar.isupper(), (name, param.name)
            assert param.metavar in out


def test_help_texts_with_brackets_render_literally():
    # `hf://OWNER/REPO[/PATH][@REV]` used to be read as rich markup: MarkupError for the closing tag [/PATH]
    for name in ("extract-tokens", "sample"):
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        assert "REPO[/PATH][@REV]" in result.output


def test_shared_options_have_one_spelling_and_default():
    seen: dict[str, dict[str, tuple]] = {}
    for name in COMMANDS:
        for pname, p in _params(name).items():
            if pname in ("num_workers", "progress", "mixed_precision", "device", "seed", "print_every"):
                default = getattr(p.default, "value", p.default)
                seen.setdefault(pname, {})[name] = (tuple(p.opts), tuple(p.secondary_opts), default)
    # every command with a data loader, a bar or a precision has the option, under the same name
    assert set(seen["num_workers"]) == {"prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "evaluate"}
    assert set(seen["progress"]) == {"prepare-data", "train-tokenizer", "extract-tokens", "train-ar", "sample",
                                     "evaluate", "reproduce"}
    for pname, by_command in seen.items():
        values = set(by_command.values())
        if pname == "mixed_precision":  # evaluate: Inception in fp32 by default, as the ADM evaluator
            assert by_command.pop("evaluate") == (("--mixed-precision",), (), "no")
            values = set(by_command.values())
        assert len(values) == 1, (pname, by_command)
    assert set(seen["progress"].values()) == {(("--progress",), ("--no-progress",), True)}
    assert set(seen["num_workers"].values()) == {(("--num-workers",), (), common.DEFAULT_NUM_WORKERS)}
    assert set(seen["mixed_precision"].values()) == {(("--mixed-precision",), (), "bf16")}
    assert common.DEFAULT_NUM_WORKERS == min(4, len(__import__("os").sched_getaffinity(0)))


def test_options_that_do_nothing_are_gone():
    assert not {"seed", "device", "mixed_precision"} & set(_params("prepare-data"))
    assert "seed" not in _params("extract-tokens") and "seed" not in _params("evaluate")
    # prepare-data's old --workers still works (hidden alias of --num-workers)
    assert _params("prepare-data")["workers"].hidden


def test_mixed_precision_help_speaks_of_its_command():
    texts = {name: _params(name)["mixed_precision"].help for name in COMMANDS if "mixed_precision" in _params(name)}
    assert len(set(texts.values())) == len(texts)
    assert "Inception" in texts["evaluate"] and "fp32" in texts["evaluate"]
    assert "encoder" in texts["extract-tokens"] and "GPT" in texts["train-ar"] and "decoder" in texts["sample"]


def test_weights_options_are_paths():
    for name, pname in (("train-tokenizer", "disc_weights"), ("train-tokenizer", "encoder_weights"),
                        ("sample", "encoder_weights"), ("evaluate", "inception_weights")):
        assert _params(name)[pname].bare_type() == "Path", (name, pname)


def test_num_workers_is_clamped_to_the_available_cpus(monkeypatch, capsys):
    monkeypatch.setattr(common.os, "sched_getaffinity", lambda pid: {0, 1, 5})
    assert common.clamp_workers(8) == 3
    assert "--num-workers 8 is more than the 3 CPU(s) available" in capsys.readouterr().err
    assert common.clamp_workers(3) == 3 and common.clamp_workers(0) == 0
    assert capsys.readouterr().err == ""


def test_prepare_data_old_workers_name_is_accepted(tmp_path):
    result = runner.invoke(app, ["prepare-data", str(tmp_path / "missing"), str(tmp_path / "out"), "--workers", "2"])
    assert result.exit_code == 2 and "--workers" not in result.output, result.output  # parsed, then DATA refused
    assert re.search(r"missing", result.output)
