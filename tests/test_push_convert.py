"""`vfmtok convert` (the authors' .pt -> our run layout) and `vfmtok push` / save_pretrained / from_pretrained, against
the fake Hub of tests/fake_hub.py: what comes back loads and gives the same codes and tokens."""
from __future__ import annotations

import argparse
import json

import pytest
import torch
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.io.hashing import sha256_file

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny tokenizer run and a tiny GPT run with the provenance train-ar records, plus a metrics.jsonl."""
    root = tmp_path_factory.mktemp("push")
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder_weights="random").eval()
    gpt = vfmtok.create_gpt("GPT-tiny", vocab_size=tok.config.codebook_size, num_classes=4,
                            grid_size=tok.config.token_grid).eval()
    torch.nn.init.normal_(gpt.output.weight, std=0.5)
    vfmtok.save_pretrained(tok, root / "tok")
    vfmtok.save_pretrained(gpt, root / "gpt", extra={
        "command": "vfmtok train-ar tokens runs/ar --gpt GPT-tiny", "token_store": "tokens",
        "token_store_manifest_sha256": "ab" * 32, "tokenizer_sha256": "cd" * 32})
    (root / "gpt" / "metrics.jsonl").write_text('{"step": 10, "loss_gpt": 5.5}\n{"step": 20, "loss_gpt": 4.25}\n')
    return root, tok, gpt


def _tokens(gpt):
    return vfmtok.generate(gpt, torch.tensor([1, 3]), cfg_scale=1.5, temperature=1.0, seed=7)


def test_push_and_from_pretrained_round_trip(runs, hub, tmp_path):
    root, tok, gpt = runs
    res = runner.invoke(app, ["push", str(root / "gpt"), "hf://user/tiny-gpt"])
    assert res.exit_code == 0, res.output
    assert sorted(hub.repos["user/tiny-gpt"]["files"]) == ["README.md", "config.json", "model.safetensors"]
    assert hub.repos["user/tiny-gpt"]["files"]["model.safetensors"] == (root / "gpt" / "model.safetensors").read_bytes()
    card = hub.repos["user/tiny-gpt"]["files"]["README.md"].decode()
    assert "vfmtok train-ar tokens runs/ar --gpt GPT-tiny" in card and "ab" * 32 in card
    assert '"loss_gpt": 4.25' in card and 'vfmtok.load_gpt("hf://user/tiny-gpt")' in card
    back = vfmtok.from_pretrained("hf://user/tiny-gpt")
    assert torch.equal(_tokens(back), _tokens(gpt))

    res = runner.invoke(app, ["push", str(root / "tok"), "user/tiny-tok"])
    assert res.exit_code == 0, res.output
    tok_back = vfmtok.from_pretrained("hf://user/tiny-tok", encoder_weights="random")
    images = torch.rand(2, 3, tok.config.image_size, tok.config.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok_back.encode(images), tok.encode(images))

    local = tmp_path / "clone"
    res = runner.invoke(app, ["push", str(root / "gpt"), str(local)])
    assert res.exit_code == 0, res.output
    assert torch.equal(_tokens(vfmtok.load_gpt(local)), _tokens(gpt))
    res = runner.invoke(app, ["push", str(tmp_path), "user/x"])
    assert res.exit_code == 2 and "config.json" in res.output


def test_convert_authors_gpt_and_tokenizer(runs, fixtures_dir, tmp_path):
    src = fixtures_dir / "gpt_tiny" / "gpt_checkpoint.pt"
    res = runner.invoke(app, ["convert", str(src), str(tmp_path / "gpt"), "--n-head", "4"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "gpt" / "config.json").read_text())
    assert cfg["format"] == "vfmtok.gpt" and cfg["converted_from"]["sha256"] == sha256_file(src)
    ours, theirs = vfmtok.load_gpt(tmp_path / "gpt"), vfmtok.load_gpt(src, n_head=4)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())

    _, tok, _ = runs  # an official-layout tokenizer file: our keys are the authors' keys (io/official.py)
    state = {k: v for k, v in tok.state_dict().items()}
    state["slot_quantize.codebook_used"] = torch.zeros(16)
    torch.save({"ema": state, "steps": 3, "args": argparse.Namespace(image_size=56)}, tmp_path / "vfmtok-tokenizer.pt")
    res = runner.invoke(app, ["convert", str(tmp_path / "vfmtok-tokenizer.pt"), str(tmp_path / "tok"),
                              "--config", "tiny"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((tmp_path / "tok" / "config.json").read_text())
    assert cfg["format"] == "vfmtok-tokenizer" and cfg["encoder_weights"] == "pretrained"
    back = vfmtok.load_tokenizer(tmp_path / "tok", encoder_weights="random")
    images = torch.rand(2, 3, tok.config.image_size, tok.config.image_size) * 2 - 1
    with torch.no_grad():
        assert torch.equal(back.encode(images), tok.encode(images))
    res = runner.invoke(app, ["convert", str(tmp_path / "nothing.pt"), str(tmp_path / "x")])
    assert res.exit_code == 2 and "nothing.pt" in res.output
