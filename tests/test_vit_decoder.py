"""ViT mask-token decoder: official key layout and counts, parity with the authors' tiny fixture, the causal
mask, the position-table resampling rule."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vfmtok.io.weights import load_official_pt, pick_state_dict
from vfmtok.models.attention import causal_mask
from vfmtok.models.vit_decoder import ViTDecoder, ViTDecoderConfig, resample_pos_grid

PREFIX = "decode_transformer."


def tiny_config(info: dict) -> ViTDecoderConfig:
    """The decoder config of the fixture, read from info.json (official yaml names)."""
    p = info["transformer_config"]["decoder_config"]["params"]
    grid = p["image_size"] // p["patch_size"]
    return ViTDecoderConfig(dim=p["dim"], depth=p["depth"], num_heads=p["num_head"], mlp_dim=p["mlp_dim"],
                            num_slots=p["n_carrier"], dec_grid=grid, attn_dropout=p["dropout"])


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
    """(decoder loaded strictly from the fixture's ema, fixture outputs)."""
    d = fixtures_dir / "tok_tiny"
    info = json.loads((d / "info.json").read_text())
    path = d / "tokenizer_checkpoint.pt"
    entry, state = pick_state_dict(load_official_pt(path), path)
    assert entry == "ema"
    model = ViTDecoder(tiny_config(info)).eval()
    model.load_state_dict({k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}, strict=True)
    return model, load_file(d / "outputs.safetensors")


# ---------------------------------------------------------------------------------------------
# Official layout
# ---------------------------------------------------------------------------------------------
def test_full_config_keys_shapes_and_count_match_official(reference_dir):
    manifest = json.loads((reference_dir / "checkpoints" / "vfmtok_tokenizer_keys.json").read_text())
    official = {e["key"][len(PREFIX):]: tuple(e["shape"]) for e in manifest["keys"] if e["key"].startswith(PREFIX)}
    with torch.device("meta"):
        model = ViTDecoder(ViTDecoderConfig())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 19_900_448
    assert manifest["param_count_per_top_level_module"]["decode_transformer"] == 19_900_448
    assert ViTDecoderConfig().ffn_hidden == 1368


def test_bad_config_and_bad_slots_raise(tiny):
    with pytest.raises(ValueError, match="num_heads"):
        ViTDecoderConfig(dim=64, num_heads=5)
    model, out = tiny
    with pytest.raises(ValueError, match="expected slots"):
        model.forward_pixels(out["post_quant"][:, :100])


# ---------------------------------------------------------------------------------------------
# Parity with the authors' implementation (tok_tiny)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def test_pixel_pass_matches_fixture(tiny):
    model, out = tiny
    grid = model.forward_pixels(out["post_quant"])
    assert grid.shape == out["pixel_grid_tokens"].shape == (2, 64, 21, 21)
    torch.testing.assert_close(grid, out["pixel_grid_tokens"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_semantic_pass_matches_fixture(tiny):
    model, out = tiny
    pred = model.forward_semantic(out["post_quant"])
    assert pred.shape == (2, 576, 1024)
    torch.testing.assert_close(pred, out["semantic_pred"], atol=1e-4, rtol=0)
    pixels, both = model(out["post_quant"], with_semantic=True)
    assert torch.equal(both, pred) and torch.equal(pixels, model.forward_pixels(out["post_quant"]))
    assert model(out["post_quant"])[1] is None


def test_attention_dropout_only_in_training(tiny):
    model, out = tiny
    slots = out["post_quant"][:1]
    with torch.no_grad():
        ref = model.forward_pixels(slots)
        model.train()
        try:
            torch.manual_seed(0)
            a = model.forward_pixels(slots)
            torch.manual_seed(1)
            b = model.forward_pixels(slots)
        finally:
            model.eval()
        assert torch.equal(model.forward_pixels(slots), ref)
    assert model.transformer.layers[0].attn1.dropout == 0.1
    assert not torch.allclose(a, b) and not torch.allclose(a, ref)


# ---------------------------------------------------------------------------------------------
# Causal structure
# ---------------------------------------------------------------------------------------------
def naive_transformer(model: ViTDecoder, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Independent forward: explicit masked softmax per head, written from the description."""
    heads = model.cfg.num_heads
    for layer in model.transformer.layers:
        h = F.layer_norm(tokens, (tokens.shape[-1],), layer.norm1.weight, layer.norm1.bias, 1e-5)
        a = layer.attn1
        q, k, v = (F.linear(h, m.weight, m.bias) for m in (a.q_proj, a.k_proj, a.v_proj))
        bsz, n, d = q.shape
        q, k, v = (t.reshape(bsz, n, heads, d // heads).transpose(1, 2) for t in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        logits = logits.masked_fill(~mask, float("-inf"))
        att = (logits.softmax(-1) @ v).transpose(1, 2).reshape(bsz, n, d)
        tokens = tokens + F.linear(att, a.out_proj.weight, a.out_proj.bias)
        h = F.layer_norm(tokens, (d,), layer.norm2.weight, layer.norm2.bias, 1e-5)
        gate, val = F.linear(h, layer.ffnet.w12.weight, layer.ffnet.w12.bias).chunk(2, -1)
        tokens = tokens + F.linear(F.silu(gate) * val, layer.ffnet.w3.weight, layer.ffnet.w3.bias)
    return tokens


@torch.no_grad()
def test_transformer_uses_the_lower_triangular_mask(tiny):
    model, _ = tiny
    tokens = torch.randn(2, 40, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[j <= i for j in range(40)] for i in range(40)])
    assert torch.equal(causal_mask(40), mask)
    torch.testing.assert_close(model.transformer(tokens), naive_transformer(model, tokens, mask), atol=1e-5, rtol=0)
    # and not a full (bidirectional) mask
    full = naive_transformer(model, tokens, torch.ones(40, 40, dtype=torch.bool))
    assert (model.transformer(tokens) - full).abs().max() > 1e-3


@torch.no_grad()
def test_memory_slot_j_changes_nothing_before_j(tiny):
    model, out = tiny
    memory = model._memory(out["post_quant"][:1])
    j = 100
    seq = torch.cat([memory, torch.randn(1, 20, 64)], dim=1)
    moved = seq.clone()
    moved[:, j] += 1.0
    a, b = model.transformer(seq), model.transformer(moved)
    assert torch.equal(a[:, :j], b[:, :j])
    assert (a[:, j:] - b[:, j:]).abs().amax(-1).min() > 0  # every later position (slots and queries) sees it


@torch.no_grad()
def test_every_mask_token_sees_the_last_slot_and_registers_influence_nothing(tiny):
    model, out = tiny
    slots = out["post_quant"][:1].clone()
    ref = model.forward_pixels(slots)
    ref_sem = model.forward_semantic(slots)
    slots[:, -1] += 1.0
    changed = (model.forward_pixels(slots) - ref).abs().amax(1)  # (1, 21, 21)
    assert changed.min() > 0
    saved = model.register_tokens.data.clone()
    try:
        model.register_tokens.data.normal_(std=5.0)
        assert torch.equal(model.forward_pixels(out["post_quant"][:1]), ref)
        assert torch.equal(model.forward_semantic(out["post_quant"][:1]), ref_sem)
    finally:
        model.register_tokens.data.copy_(saved)


@torch.no_grad()
def test_mask_tokens_are_causal_in_raster_order(tiny):
    model, out = tiny
    slots = out["post_quant"][:1]
    ref = model.forward_semantic(slots)
    k = 300
    saved = model.position_embedding.data.clone()
    try:
        # the semantic pass uses the 24x24 table unresized; a non-constant change (a constant one would vanish
        # in the LayerNorm that follows) of mask token k's position
        bump = torch.randn(saved.shape[-1], generator=torch.Generator().manual_seed(0))
        model.position_embedding.data[:, 1 + k] += bump
        moved = model.forward_semantic(slots)
    finally:
        model.position_embedding.data.copy_(saved)
    assert torch.equal(moved[:, :k], ref[:, :k])
    assert (moved[:, k:] - ref[:, k:]).abs().amax(-1).min() > 1e-4  # token k and every later token see it


# ---------------------------------------------------------------------------------------------
# Position-table resampling
# ---------------------------------------------------------------------------------------------
def naive_bicubic_scale(table: np.ndarray, out_size: int, scale: float) -> np.ndarray:
    """Separable cubic convolution (A = -0.75), source x = (dst + 0.5) / scale - 0.5, border-clamped taps."""
    n = table.shape[0]

    def weights(t: float) -> list[float]:
        a = -0.75
        def near(x): return ((a + 2) * x - (a + 3)) * x * x + 1
        def far(x): return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
        return [far(t + 1), near(t), near(1 - t), far(2 - t)]

    def resize_axis(arr: np.ndarray) -> np.ndarray:  # along axis 0
        rows = []
        for dst in range(out_size):
            src = (dst + 0.5) / scale - 0.5
            base = math.floor(src)
            w = weights(src - base)
            rows.append(sum(w[i] * arr[min(max(base - 1 + i, 0), n - 1)] for i in range(4)))
        return np.stack(rows)

    return resize_axis(resize_axis(table).swapaxes(0, 1)).swapaxes(0, 1)


def test_pixel_positions_use_scale_factor_not_size(tiny):
    model, _ = tiny
    table = model.position_embedding[:, 1:].detach()  # (1, 576, 64)
    ours = resample_pos_grid(table, 21)
    grid = table.reshape(1, 24, 24, 64).permute(0, 3, 1, 2)
    explicit = F.interpolate(grid, scale_factor=21.1 / 24, mode="bicubic", align_corners=False)
    explicit = explicit.permute(0, 2, 3, 1).reshape(1, 441, 64)
    assert torch.equal(ours, explicit)
    naive = naive_bicubic_scale(table[0].reshape(24, 24, 64).double().numpy(), 21, 21.1 / 24)
    np.testing.assert_allclose(ours[0].reshape(21, 21, 64).numpy(), naive, atol=1e-5, rtol=0)
    by_size = F.interpolate(grid, size=21, mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 441, 64)
    assert (ours - by_size).abs().max() > 1e-2  # the "+0.1" rule is not a plain resize to 21
    assert torch.equal(model.pixel_positions(), ours)


def test_resampling_generalises_to_other_grids(tiny):
    model, out = tiny
    table = model.position_embedding[:, 1:].detach()
    assert resample_pos_grid(table, 24) is table  # same grid: the table itself (official shortcut)
    for g in (16, 32):
        res = resample_pos_grid(table, g)
        naive = naive_bicubic_scale(table[0].reshape(24, 24, 64).double().numpy(), g, (g + 0.1) / 24)
        np.testing.assert_allclose(res[0].reshape(g, g, 64).numpy(), naive, atol=1e-5, rtol=0)
    with torch.no_grad():
        assert model.forward_pixels(out["post_quant"][:1], grid=16).shape == (1, 64, 16, 16)
    with pytest.raises(ValueError, match="square"):
        resample_pos_grid(torch.zeros(1, 10, 4), 3)


def test_training_backward_reaches_every_live_parameter(tiny):
    model, out = tiny
    slots = out["post_quant"][:1].clone().requires_grad_(True)
    model.train()
    try:
        pixels, semantic = model(slots, with_semantic=True)
        (pixels.square().mean() + semantic.square().mean()).backward()
    finally:
        model.eval()
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    assert slots.grad is not None and slots.grad.abs().sum() > 0
    dead = {name for name, g in grads.items() if g is None or not g.abs().sum() > 0}
    assert dead == {"register_tokens"}  # the registers sit last under the causal mask
