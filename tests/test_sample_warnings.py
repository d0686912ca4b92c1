"""`vfmtok sample` warns about an unfinished GPT run and about near-identical samples (issue #19 item 3)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.jobs.sample.checkpoints import unfinished_run_message
from vfmtok.jobs.sample.output import NEAR_IDENTICAL_SPREAD, PixelSpread

ARGS = ["--class", "1,2", "-n", "4", "--image-size", "32", "--decode-batch", "4", "--no-progress", "--device", "cpu",
        "--no-png"]


def _runs(root, blind_decoder: bool, run_state: dict):
    """A tiny tokenizer (optionally one whose decoder ignores the codes) and a GPT run recording it."""
    from vfmtok.models.gpt_io import save_gpt
    from vfmtok.models.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random")
    if blind_decoder:  # the decoder's input projection maps every code to the same vector
        with torch.no_grad():
            tok.post_slots_quant.weight.zero_()
    save_tokenizer(tok, root / "tok")
    c = tok.config
    gpt = vfmtok.create_gpt("GPT-tiny", vocab_size=c.codebook_size, num_classes=4, grid_size=c.token_grid)
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    save_gpt(gpt, root / "runs" / "ar")
    cfg_file = root / "runs" / "ar" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "tokenizer": str(root / "tok"), **run_state}))


def _sample(root, monkeypatch):
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["sample", *ARGS, "--out", str(root / "s")])
    assert result.exit_code == 0, result.output
    record = json.loads((root / "s" / "sample_config.json").read_text())
    return result.output, record


def test_unfinished_run_and_identical_samples_are_flagged(tmp_path, monkeypatch):
    _runs(tmp_path, blind_decoder=True, run_state={"step": 2, "interrupted": True, "train": {"total_steps": 500}})
    output, record = _sample(tmp_path, monkeypatch)
    warnings = [line for line in output.splitlines() if line.startswith("warning:")]
    assert any("is unfinished: 2 steps done of 500 planned (interrupted)" in w for w in warnings), output
    assert any("near-identical" in w for w in warnings), output
    with np.load(tmp_path / "s" / "samples.npz") as data:
        images = data["arr_0"]
    assert record["pixel_spread"] == pytest.approx(images.astype(np.float64).std(axis=0).mean(), abs=1e-3)
    assert record["pixel_spread"] < NEAR_IDENTICAL_SPREAD


def test_finished_run_with_a_working_decoder_gives_no_warning(tmp_path, monkeypatch):
    _runs(tmp_path, blind_decoder=False, run_state={"step": 500, "interrupted": False, "train": {"total_steps": 500}})
    output, record = _sample(tmp_path, monkeypatch)
    assert "warning:" not in output, output
    assert record["pixel_spread"] > NEAR_IDENTICAL_SPREAD


def test_unfinished_run_message_rules(tmp_path):
    assert unfinished_run_message(tmp_path, None) is None  # the authors' .pt: nothing recorded
    assert unfinished_run_message(tmp_path, {"format": "vfmtok.gpt"}) is None
    done = {"step": 10, "interrupted": False, "train": {"total_steps": 10}}
    assert unfinished_run_message(tmp_path, done) is None
    assert "3 steps done of 10 planned" in unfinished_run_message(tmp_path, {**done, "step": 3})
    assert "(interrupted)" in unfinished_run_message(tmp_path, {**done, "interrupted": True})


def test_pixel_spread_matches_numpy_std_across_samples():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    spread = PixelSpread()
    for chunk in (images[:3], images[3:4], images[4:]):
        spread.add(chunk)
    assert spread.value() == pytest.approx(images.astype(np.float64).std(axis=0).mean(), abs=1e-4)
    one = PixelSpread()
    one.add(images[:1])
    assert one.value() is None
    same = PixelSpread()
    same.add(np.repeat(images[:1], 4, axis=0))
    assert same.value() == 0.0
