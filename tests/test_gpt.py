"""GPT model: parity with the authors' LlamaGen GPT (gpt_tiny fixture), presets, cache, loading, saving."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmtok.io.weights import load_official_pt
from vfmtok.models.gpt_config import GPT_PRESETS, gpt_preset
from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_config import GPTConfig
from vfmtok.models.gpt_io import create_gpt, load_gpt, save_gpt
from vfmtok.models.gpt_layers import rope_table_2d

OFFICIAL = ("GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-2B", "GPT-3B")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt_fixture(fixtures_dir: Path) -> dict:
    folder = fixtures_dir / "gpt_tiny"
    return {"ckpt": folder / "gpt_checkpoint.pt", "out": load_file(str(folder / "outputs.safetensors"))}


def small_gpt(seed: int = 0, **overrides) -> GPT:
    """A random GPT-tiny on a 4x4 grid with a non-zero head (so logits are informative)."""
    torch.manual_seed(seed)
    model = create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4, **overrides)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    return model.eval()


# --- parity with the authors' implementation -----------------------------------------------------
def test_rope_table_matches_official_freqs_cis(gpt_fixture):
    official = gpt_fixture["out"]["freqs_cis"]
    ours = rope_table_2d(head_dim=16, grid_size=16)
    assert ours.shape == official.shape == (257, 8, 2)
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=0)
    assert torch.equal(ours[0], torch.zeros(8, 2))


def test_teacher_forced_logits_and_loss_match_official(gpt_fixture):
    out = gpt_fixture["out"]
    model = load_gpt(gpt_fixture["ckpt"])
    assert model.config == GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=64, num_classes=10, grid_size=16)
    with torch.no_grad():
        logits, loss = model(out["tokens"][:, :-1], out["labels"], targets=out["tokens"])
    assert logits.dtype == torch.float32 and logits.shape == (4, 256, 64)
    torch.testing.assert_close(logits, out["tf_logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(loss, out["tf_loss"], atol=1e-5, rtol=0)


def test_official_loader_uses_ema_not_decoy_model(gpt_fixture):
    ckpt = load_official_pt(gpt_fixture["ckpt"])
    model = load_gpt(gpt_fixture["ckpt"])
    key = "layers.0.attention.wqkv.weight"
    assert torch.equal(model.state_dict()[key], ckpt["ema"][key])
    assert not torch.equal(ckpt["model"][key], ckpt["ema"][key])


# --- presets ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OFFICIAL)
def test_preset_keys_shapes_and_param_counts_match_official(name, reference_dir):
    ref = json.loads((reference_dir / "checkpoints" / f"gpt_keys_{name}.json").read_text())
    with torch.device("meta"):
        model = create_gpt(name)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {e["key"]: e["shape"] for e in ref["keys"]}
    assert model.num_params() == ref["param_count"]
    assert model.num_params(non_embedding=True) == ref["param_count_non_embedding"]
    assert model.config.ffn_hidden == ref["config"]["ffn_hidden"]
    assert model.config.head_dim == ref["config"]["head_dim"]


def test_all_presets_registered():
    assert set(OFFICIAL) | {"GPT-tiny"} <= set(GPT_PRESETS)
    assert gpt_preset("GPT-L").dim == 1024
    with pytest.raises(KeyError, match="GPT-B"):
        create_gpt("GPT-Z")
    with pytest.raises(ValueError, match="n_heads"):
        create_gpt("GPT-tiny", n_heads=3)


def test_init_is_normal_002_with_zero_head():
    torch.manual_seed(0)
    model = create_gpt("GPT-tiny", vocab_size=512, num_classes=100)
    assert torch.count_nonzero(model.output.weight) == 0
    for weight in (model.tok_embeddings.weight, model.layers[0].attention.wqkv.weight, model.layers[1].feed_forward.w2.weight):
        assert abs(weight.std().item() - 0.02) < 0.002 and abs(weight.mean().item()) < 0.002
    assert torch.equal(model.norm.weight, torch.ones(64))


def test_flops_per_token_closed_form():
    cfg = GPTConfig(dim=64, n_layer=2, n_head=4, vocab_size=32, num_classes=5, grid_size=4)
    model = GPT(cfg)
    d, h, L = 64, 256, 16
    per_layer = 3 * d * d + d * d + 3 * d * h
    forward = 2 * (2 * per_layer + d * 32) + 4 * 2 * L * d
    assert model.flops_per_token(training=False) == forward
    assert model.flops_per_token() == 3 * forward


def test_param_groups_decay_matrices_only():
    model = small_gpt()
    decay, no_decay = model.param_groups(0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(no_decay["params"]) == 2 * 2 + 1  # two RMSNorms per layer + final norm


# --- behaviour ---------------------------------------------------------------------------------------
def test_logits_never_depend_on_later_tokens():
    model = small_gpt()
    torch.manual_seed(1)
    tokens = torch.randint(0, 32, (2, 15))
    labels = torch.tensor([1, 4])
    with torch.no_grad():
        base, _ = model(tokens, labels)
        for j in (0, 7, 14):  # input token j sits at position j + 1 and predicts nothing before it
            changed = tokens.clone()
            changed[:, j] = (changed[:, j] + 5) % 32
            logits, _ = model(changed, labels)
            torch.testing.assert_close(logits[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
            assert (logits[:, j + 1 :] - base[:, j + 1 :]).abs().max() > 1e-3


def test_kv_cache_logits_match_teacher_forcing():
    model = small_gpt()
    torch.manual_seed(2)
    tokens, labels = torch.randint(0, 32, (3, 15)), torch.tensor([0, 2, 5])  # 5 = null class
    with torch.no_grad():
        full, _ = model(tokens, labels)
        model.setup_cache(3)
        assert model.layers[0].attention.k_cache.shape == (3, 4, 24, 16)  # 1 + 16 -> 24
        steps = [model.prefill(labels)] + [model.decode(tokens[:, t - 1 : t], t) for t in range(1, 16)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        model.setup_cache(3)  # fresh cache: chunked prefill + multi-token decode
        chunked = torch.cat([model.prefill(labels, tokens[:, :5]), model.decode(tokens[:, 5:], 6)], 1)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
        model.reset_cache()
    assert "k_cache" not in " ".join(model.state_dict())
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.prefill(labels)


def test_class_dropout_replaces_labels_by_null_in_training_only():
    model = small_gpt(class_dropout=0.3)
    table = model.cls_embedding.embedding_table.weight
    labels = torch.full((4000,), 2)
    model.train()
    torch.manual_seed(3)
    emb = model.cls_embedding(labels)
    is_null = (emb == table[5]).all(-1)
    assert ((emb == table[2]).all(-1) | is_null).all()
    assert abs(is_null.float().mean().item() - 0.3) < 0.03
    model.eval()
    assert (model.cls_embedding(labels) == table[2]).all()


def test_activation_checkpointing_gives_identical_loss_and_gradients():
    model = small_gpt(seed=6).train()
    tokens, labels = torch.randint(0, 32, (3, 15)), torch.tensor([0, 1, 2])
    targets = torch.cat([tokens, torch.randint(0, 32, (3, 1))], 1)
    grads = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(7)  # same dropout masks in both runs
        loss = model(tokens, labels, targets)[1]
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert grads[0][1][0].abs().sum() > 0


def test_forward_rejects_out_of_range_ids():
    model = small_gpt()
    with pytest.raises(ValueError, match=r"class label ids must be in \[0, 6\)"):
        model(torch.zeros(1, 3, dtype=torch.long), torch.tensor([6]))
    with pytest.raises(ValueError, match=r"image token ids must be in \[0, 32\)"):
        model(torch.full((1, 3), 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="at most L-1 = 15"):
        model(torch.zeros(1, 16, dtype=torch.long), torch.tensor([0]))


# --- loading and saving ------------------------------------------------------------------------------
def _official_layout(model: GPT, path: Path, args: argparse.Namespace | None) -> dict:
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    decoy = {k: v + 1.0 for k, v in ema.items()}
    ckpt = {"model": decoy, "ema": ema, "steps": 10, **({"args": args} if args is not None else {})}
    torch.save(ckpt, path)
    return ema


def test_synthetic_official_checkpoint_loads_strictly(tmp_path):
    model = small_gpt(seed=4)
    args = argparse.Namespace(gpt_model="GPT-tiny", latent_size=4, vocab_size=32)
    ema = _official_layout(model, tmp_path / "ckpt.pt", args)
    loaded = load_gpt(tmp_path / "ckpt.pt")
    assert loaded.config == model.config and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in ema.items())
    # no args: the head count comes from the file name, the grid from an override
    _official_layout(model, tmp_path / "GPT-tiny-1e.pt", None)
    assert load_gpt(tmp_path / "GPT-tiny-1e.pt", grid_size=4).config == model.config


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("drop", "1 missing key.*layers.1.ffn_norm.weight"),
        ("extra", "1 unexpected key.*layers.0.attention.kv_cache.k_cache"),
        ("shape", "shape mismatch.*layers.0.attention.wo.weight"),
    ],
)
def test_broken_official_checkpoint_fails_naming_the_key(tmp_path, breakage, message):
    state = small_gpt().state_dict()
    if breakage == "drop":
        del state["layers.1.ffn_norm.weight"]
    elif breakage == "extra":
        state["layers.0.attention.kv_cache.k_cache"] = torch.zeros(1)
    else:
        state["layers.0.attention.wo.weight"] = torch.zeros(64, 32)
    torch.save({"ema": state, "args": argparse.Namespace(gpt_model="GPT-tiny", latent_size=4)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        load_gpt(tmp_path / "bad.pt")


def test_unknown_head_count_needs_override(tmp_path):
    model = create_gpt(GPTConfig(dim=96, n_layer=1, n_head=3, vocab_size=16, num_classes=2, grid_size=4))
    torch.save({"ema": model.state_dict()}, tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="n_head"):
        load_gpt(tmp_path / "custom.pt")
    assert load_gpt(tmp_path / "custom.pt", n_head=3, grid_size=4).config == model.config


def test_save_load_round_trip(tmp_path):
    model = small_gpt(seed=5)
    weights = save_gpt(model, tmp_path / "run")
    assert weights == tmp_path / "run" / "model.safetensors"
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["format"] == "vfmtok.gpt" and doc["gpt_config"]["grid_size"] == 4
    tokens, labels = torch.randint(0, 32, (2, 15)), torch.tensor([3, 1])
    with torch.no_grad():
        expected, _ = model(tokens, labels)
        for source in (tmp_path / "run", weights):
            assert torch.equal(load_gpt(source)(tokens, labels)[0], expected)
        (tmp_path / "run" / "config.json").unlink()  # the config also lives in the safetensors metadata
        assert torch.equal(load_gpt(weights)(tokens, labels)[0], expected)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_gpt(tmp_path)


def test_saved_weights_are_byte_reproducible(tmp_path):
    """safetensors orders a multi-entry metadata header at random; save_gpt canonicalises it (sorted keys)."""
    import hashlib
    import struct

    from safetensors import safe_open

    model = small_gpt(seed=5)
    files = [save_gpt(model, tmp_path / f"run{i}") for i in range(8)]
    digests = {hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    assert len(digests) == 1, "equal weights must give equal files"
    raw = files[0].read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == ["format", "gpt_config"]
    assert not list(tmp_path.glob("run0/*.tmp"))
    with safe_open(str(files[0]), "pt") as fh:  # still a valid safetensors file with the same tensors
        assert fh.metadata()["format"] == "vfmtok.gpt"
        for name, value in model.state_dict().items():
            assert torch.equal(fh.get_tensor(name), value)


def test_training_forward_without_id_checks_makes_no_host_sync():
    # on the meta device any read of a value on the host (int(ids.max()), .item()) raises: a forward that runs
    # there makes no device -> host sync; the training step uses it (the token store was checked beforehand)
    torch.manual_seed(0)
    model = create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4)
    codes, labels = torch.randint(0, 32, (2, 16)), torch.tensor([0, 5])
    ref_logits, ref_loss = model(codes[:, :-1], labels, targets=codes)
    logits, loss = model(codes[:, :-1], labels, targets=codes, check_ids=False)
    assert torch.equal(logits, ref_logits) and torch.equal(loss, ref_loss)
    meta = model.to("meta")
    logits, loss = meta(codes[:, :-1].to("meta"), labels.to("meta"), targets=codes.to("meta"), check_ids=False)
    assert logits.shape == (2, 16, 32) and loss.shape == () and logits.device.type == "meta"
    with pytest.raises((NotImplementedError, RuntimeError)):  # the checked forward reads ids on the host
        meta(codes[:, :-1].to("meta"), labels.to("meta"), targets=codes.to("meta"))
    with pytest.raises(ValueError, match=r"image token ids must be in \[0, 32\)"):  # the check itself stays
        create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4)(torch.full((1, 3), 32), torch.tensor([0]))
