"""RAR generators in the Hub layout: save_pretrained -> from_pretrained (bit-identical weights, identical logits),
`vfmtok convert` of the authors' RAR safetensors (checked against the authors' logits), `vfmtok push` of a
`train-ar --model RAR-tiny` run to the fake Hub of tests/fake_hub.py and `vfmtok sample --ckpt hf://...` giving the
local run's samples, and the error for a folder whose config.json names an unknown model kind."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import vfmtok
from test_train_rar import cfg_for, tiny_tokenizer_and_store
from vfmtok.cli.main import app
from vfmtok.io.hashing import sha256_file
from vfmtok.io.hub import AUTHORS_FILES, AUTHORS_REPO
from vfmtok.jobs.train_ar import train_ar
from vfmtok.models.rar import RAR, draw_orders
from vfmtok.models.rar_io import create_rar, load_rar, save_rar

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def random_rar() -> RAR:
    """RAR-tiny on 16 tokens, vocab 32, 5 classes; every weight re-drawn so the zero-init adaLN layers matter."""
    torch.manual_seed(0)
    model = create_rar("RAR-tiny", vocab_size=32, num_classes=5, seq_len=16)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.1)
    return model.eval()


def test_save_pretrained_from_pretrained_round_trip(tmp_path):
    model = random_rar()
    vfmtok.save_pretrained(model, tmp_path / "rar", extra={"note": "provenance"})
    assert sorted(p.name for p in (tmp_path / "rar").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "rar" / "config.json").read_text())
    assert cfg["format"] == "vfmtok.rar" and cfg["rar_config"] == dataclasses.asdict(model.config)
    assert cfg["note"] == "provenance"
    card = (tmp_path / "rar" / "README.md").read_text()
    assert "RAR (randomized autoregressive" in card and f'vfmtok.load_rar("{tmp_path / "rar"}")' in card
    assert "| mlp_dim | 256 |" in card and "format `vfmtok.rar`" in card

    g = torch.Generator().manual_seed(1)
    tokens, labels = torch.randint(0, 32, (3, 16), generator=g), torch.tensor([0, 4, 5])  # 5 = the null class
    orders = draw_orders(3, 16, 1.0, g)
    with torch.no_grad():
        want = [model(tokens, labels)[0], model(tokens, labels, orders=orders)[0]]
    want_codes = vfmtok.generate(model, torch.tensor([1, 3]), cfg_scale=4.0, seed=2)
    own = model.state_dict()
    for load in (vfmtok.from_pretrained, vfmtok.load_gpt, load_rar):
        back = load(tmp_path / "rar")
        assert isinstance(back, RAR) and back.config == model.config and not back.training
        state = back.state_dict()
        assert list(state) == list(own)
        assert all(state[k].dtype == v.dtype and torch.equal(state[k], v) for k, v in own.items())
        with torch.no_grad():
            got = [back(tokens, labels)[0], back(tokens, labels, orders=orders)[0]]
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert torch.equal(vfmtok.generate(back, torch.tensor([1, 3]), cfg_scale=4.0, seed=2), want_codes)
    assert not torch.equal(want[0], want[1])  # the orders matter: equal logits above are not vacuous
    vfmtok.save_pretrained(back, tmp_path / "again")  # byte-reproducible weights file
    again, first = (tmp_path / d / "model.safetensors" for d in ("again", "rar"))
    assert again.read_bytes() == first.read_bytes()


def test_unknown_model_kind_is_refused_with_the_format_named(tmp_path):
    folder = tmp_path / "odd"
    save_rar(random_rar(), folder)
    doc = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**doc, "format": "vfmtok.diffusion"}))
    with pytest.raises(ValueError, match=r"odd/config.json: unknown model kind: format 'vfmtok.diffusion'; vfmtok "
                                         r"loads format 'vfmtok.gpt', 'vfmtok.rar', 'vfmtok-tokenizer'"):
        vfmtok.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"config.json: format 'vfmtok.diffusion' is not a generator vfmtok can load"):
        vfmtok.load_gpt(folder)
    res = runner.invoke(app, ["push", str(folder), str(tmp_path / "out")])
    assert res.exit_code == 2 and "unknown model kind: format 'vfmtok.diffusion'" in res.output
    assert not (tmp_path / "out" / "model.safetensors").exists()
    (folder / "config.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "format"}))
    with pytest.raises(ValueError, match='no "format" entry'):
        vfmtok.from_pretrained(folder)


def test_convert_the_authors_rar_file_and_push_it(fixtures_dir, hub, tmp_path):
    """authors/RAR-L served by the fake Hub (the rar_tiny fixture's bytes) -> convert -> the authors' logits."""
    fixture = fixtures_dir / "rar_tiny"
    hub.add_repo(AUTHORS_REPO, {AUTHORS_FILES["RAR-L"]: (fixture / "model.safetensors").read_bytes()})
    res = runner.invoke(app, ["convert", "authors/RAR-L", str(tmp_path / "conv")])
    assert res.exit_code == 0, res.output
    assert "converted rar authors/RAR-L" in res.output
    cfg = json.loads((tmp_path / "conv" / "config.json").read_text())
    assert cfg["format"] == "vfmtok.rar" and cfg["weights"] == "live"
    assert cfg["converted_from"]["sha256"] == sha256_file(fixture / "model.safetensors")
    assert cfg["converted_from"]["source"] == "authors/RAR-L" and cfg["converted_from"]["entry"] is None
    theirs = load_file(str(fixture / "model.safetensors"))
    ours = load_file(str(tmp_path / "conv" / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], v.float()) for k, v in theirs.items())

    res = runner.invoke(app, ["push", str(tmp_path / "conv"), "hf://user/rar-authors"])
    assert res.exit_code == 0, res.output
    back = vfmtok.from_pretrained("hf://user/rar-authors")
    out = load_file(str(fixture / "outputs.safetensors"))  # the authors' modeling/rar.py on these weights
    labels = out["labels"].clone()
    labels[3] = 10  # the fixture's row 3 is fed the null condition (10 classes)
    with torch.no_grad():
        logits = back(out["tokens"], labels)[0]
    torch.testing.assert_close(logits, out["tf_logits_raster"], atol=1e-4, rtol=0)

    res = runner.invoke(app, ["convert", "authors/RAR-L", str(tmp_path / "x"), "--kind", "gpt"])
    assert res.exit_code == 2 and "holds a RAR generator" in res.output
    res = runner.invoke(app, ["convert", "authors/RAR-L", str(tmp_path / "x"), "--n-head", "4"])
    assert res.exit_code == 2 and "GPT override(s) n_head apply to GPT files only" in res.output
    vfmtok.save_pretrained(vfmtok.create_gpt("GPT-tiny", vocab_size=16, num_classes=2, grid_size=2), tmp_path / "g")
    res = runner.invoke(app, ["convert", str(tmp_path / "g" / "model.safetensors"), str(tmp_path / "x")])
    assert res.exit_code == 2 and "without any RAR key" in res.output and not (tmp_path / "x").exists()


def _sample(ckpt: str, out) -> dict:
    res = runner.invoke(app, ["sample", "--ckpt", ckpt, "-n", "3", "--class", "1,2,3", "--cfg-scale", "4",
                              "--cfg-schedule", "cosine", "--cfg-power", "2.75", "--seed", "5", "--image-size", "32",
                              "--no-png", "--no-progress", "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    with np.load(out / "samples.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return {"arrays": arrays, "config": json.loads((out / "sample_config.json").read_text())}


def test_push_a_rar_run_then_sample_from_the_hub(hub, tmp_path):
    store = tiny_tokenizer_and_store(tmp_path)
    sha = sha256_file(tmp_path / "tok" / "tokenizer.safetensors")
    run = tmp_path / "runs" / "rar"
    train_ar(cfg_for(store, run, steps=2, lr=3e-2))
    res = runner.invoke(app, ["push", str(run), "hf://user/rar-tiny"])
    assert res.exit_code == 0, res.output
    repo = hub.repos["user/rar-tiny"]["files"]
    assert sorted(repo) == ["README.md", "config.json", "model.safetensors"]  # no checkpoints/, metrics, samples
    assert repo["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert json.loads(repo["config.json"]) == json.loads((run / "config.json").read_text())
    card = repo["README.md"].decode()
    assert 'vfmtok.load_rar("hf://user/rar-tiny")' in card and "| n_layer | 2 |" in card
    assert '"step": 2' in card and sha in card  # last metrics.jsonl line, tokenizer sha256 (data fingerprint)

    local = _sample(str(run), tmp_path / "s-local")
    remote = _sample("hf://user/rar-tiny", tmp_path / "s-hub")
    assert remote["config"]["gpt"]["path"].startswith(str(tmp_path / "hf-cache"))  # really read from the Hub cache
    weights_sha = sha256_file(run / "model.safetensors")
    assert remote["config"]["gpt"]["sha256"] == local["config"]["gpt"]["sha256"] == weights_sha
    assert remote["config"]["tokenizer"]["sha256_verified_against_run"] is True
    assert local["arrays"].keys() == remote["arrays"].keys() == {"arr_0", "arr_1"}
    assert local["arrays"]["arr_0"].shape == (3, 32, 32, 3) and local["arrays"]["arr_1"].tolist() == [1, 2, 3]
    assert all(np.array_equal(local["arrays"][k], remote["arrays"][k]) for k in local["arrays"])
    assert local["arrays"]["arr_0"].std() > 0  # not a blank image on both sides
