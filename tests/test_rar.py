"""RAR generator: parity with the authors' VFMTok-RAR (rar_tiny fixture), manifests, KV cache, loading, orders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from vfmtok.models.gpt_io import create_gpt, load_gpt, save_gpt
from vfmtok.models.rar import RAR, draw_orders, permute_tokens, random_order_prob
from vfmtok.models.rar_config import RAR_PRESETS, RARConfig
from vfmtok.models.rar_io import create_rar, infer_rar_config, is_rar_checkpoint, load_rar, save_rar
from vfmtok.guidance import cfg_scales
from vfmtok.sampling import generate, guide

# run -> (S, p) of the authors' sampler; cfg0 = no guidance (their S = 0 means "conditional only").
RUNS = {"cfg0": (0.0, 1.0), "cfg4_pow1": (4.0, 1.0), "cfg16_pow2.75": (16.0, 2.75)}
NEAR_TIE = 1e-5  # greedy_<run>_prob_margin below this is a near-tie (fixtures/README.md)
NULL = 10  # the fixture's null class label (10 classes)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(fixtures_dir: Path) -> dict:
    folder = fixtures_dir / "rar_tiny"
    if not folder.is_dir():
        pytest.skip(f"rar_tiny parity fixture not found at {folder}")
    return {"path": folder / "model.safetensors", "model": load_rar(folder / "model.safetensors"),
            "out": load_file(str(folder / "outputs.safetensors")),
            "info": json.loads((folder / "info.json").read_text())}


def ours_options(run: str) -> dict:
    """Our `generate` options reproducing the authors' run: their S = 0 (no guidance) is our cfg_scale 1."""
    scale, power = RUNS[run]
    return {"cfg_scale": scale or 1.0, "cfg_schedule": "cosine", "cfg_power": power}


def authors_scales(scale: float, power: float) -> torch.Tensor:
    """The authors' schedule, computed as their `generate` does (float32 torch): (256,)."""
    step = torch.arange(256) / 256
    return (scale - 1) * ((1 - torch.cos((step ** torch.tensor([power])) * torch.pi)) * 1 / 2) + 1


def small_rar(seed: int = 0, **overrides) -> RAR:
    """RAR-tiny on 16 tokens, vocab 32, 5 classes; every weight re-drawn so the zero-init adaLN layers matter."""
    torch.manual_seed(seed)
    opts = {"vocab_size": 32, "num_classes": 5, "seq_len": 16, **overrides}
    model = create_rar("RAR-tiny", **opts)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.normal_(0.0, 0.1 if param.ndim > 1 else 0.05)
            if "norm" in name and name.endswith(".weight"):
                param.add_(1.0)
    return model.eval()


# --- parity with the authors' implementation -------------------------------------------------------------
def test_fixture_config_inferred_and_counted(official):
    model, info = official["model"], official["info"]
    assert model.config == RARConfig(dim=64, n_layer=2, n_head=4, mlp_dim=256, vocab_size=64, num_classes=10)
    assert model.num_params() == info["num_params"] == 354_048
    assert model.config.null_id == info["none_condition_id"] == 75
    labels = official["out"]["labels"].clone()
    labels[3] = NULL  # the fixture's row 3 is fed the null id
    assert torch.equal(model.condition_ids(labels), official["out"]["condition_ids"])


def test_teacher_forced_logits_match_official_raster_and_permuted(official):
    out, model = official["out"], official["model"]
    labels = out["labels"].clone()
    labels[3] = NULL
    with torch.no_grad():
        raster, no_loss = model(out["tokens"], labels)
        perm, loss = model(out["tokens"], labels, orders=out["orders"], targets=out["tokens"])
    assert raster.shape == perm.shape == (4, 257, 64) and raster.dtype == torch.float32 and no_loss is None
    torch.testing.assert_close(raster, out["tf_logits_raster"], atol=1e-4, rtol=0)
    torch.testing.assert_close(perm, out["tf_logits_perm"], atol=1e-4, rtol=0)
    assert (perm - raster).abs().max() > 0.1  # the order changes the logits: the test can tell them apart
    assert torch.equal(permute_tokens(out["tokens"], out["orders"]), out["tf_labels_perm"])
    torch.testing.assert_close(loss.reshape(1), out["tf_loss_perm"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("run", RUNS)
def test_kv_cache_raw_step_logits_match_official(official, run):
    """Our KV-cache decoder, teacher-forced on the official sampled tokens, gives their raw logits of every step."""
    out, model = official["out"], official["model"]
    tokens, labels = out[f"gen_{run}_tokens"], out["gen_labels"]
    raw = out[f"gen_{run}_raw_step_logits"]  # (rows, 256, 64): conditional rows first, then null rows
    if raw.shape[0] == 4:
        labels, tokens = torch.cat([labels, torch.full_like(labels, NULL)]), tokens.repeat(2, 1)
    assert torch.equal(out[f"gen_{run}_steps"], torch.arange(256))
    with torch.no_grad():
        model.setup_cache(raw.shape[0])
        steps = [model.prefill(labels)[:, -1]] + [model.decode(tokens[:, t - 1 : t], t)[:, -1] for t in range(1, 256)]
        model.reset_cache()
    torch.testing.assert_close(torch.stack(steps, 1), raw, atol=1e-4, rtol=0)


@pytest.mark.parametrize("run", ["cfg4_pow1", "cfg16_pow2.75"])
def test_guided_logits_with_our_schedule_match_authors_formula(official, run):
    """Guided logits from our cache + `cfg_scales(cosine)` equal the authors' formula on their raw logits."""
    out, model = official["out"], official["model"]
    scale, power = RUNS[run]
    tokens, labels = out[f"gen_{run}_tokens"], out["gen_labels"]
    raw = out[f"gen_{run}_raw_step_logits"]
    ours_s = cfg_scales(256, scale, schedule="cosine", power=power)
    theirs_s = authors_scales(scale, power)
    assert ours_s[0] == 1.0 and abs(ours_s[255] - scale) < 1e-3 * scale
    torch.testing.assert_close(torch.tensor(ours_s, dtype=torch.float32), theirs_s, atol=1e-6 * scale, rtol=0)
    theirs = raw[2:] + (raw[:2] - raw[2:]) * theirs_s[None, :, None]
    with torch.no_grad():
        model.setup_cache(4)
        rows, fed = torch.cat([labels, torch.full_like(labels, NULL)]), tokens.repeat(2, 1)
        logits = model.prefill(rows, fed[:, :255])  # chunked prefill: the logits of all 256 steps at once
        model.reset_cache()
    ours = torch.stack([guide(logits[:2, t], logits[2:, t], ours_s[t]) for t in range(256)], 1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    top2 = theirs.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 1e-4
    assert clear.float().mean() > 0.95
    assert torch.equal(ours.argmax(-1)[clear], theirs.argmax(-1)[clear])


@pytest.mark.parametrize("run", RUNS)
def test_greedy_generation_matches_official(official, run):
    out, model = official["out"], official["model"]
    reference, margin = out[f"greedy_{run}_tokens"], out[f"greedy_{run}_prob_margin"]
    codes = generate(model, out["gen_labels"], temperature=0.0, **ours_options(run))
    assert codes.dtype == torch.int64 and codes.shape == (2, 256)
    for row in range(2):
        ties = (margin[row] < NEAR_TIE).nonzero().flatten()
        stop = int(ties[0]) if len(ties) else 256
        assert stop > 20 and torch.equal(codes[row, :stop], reference[row, :stop]), f"{run} row {row}"
    # robust over all 256 steps: teacher-forced guided argmax = official greedy token wherever not a near-tie
    scale, power = RUNS[run]
    scales = torch.tensor(cfg_scales(256, scale or 1.0, "cosine", power))[None, :, None]
    with torch.no_grad():
        cond = model(reference, out["gen_labels"])[0][:, :256]
        uncond = model(reference, torch.full_like(out["gen_labels"], NULL))[0][:, :256]
    guided = torch.where(scales == 1.0, cond, uncond + scales * (cond - uncond))
    clear = margin > NEAR_TIE
    assert torch.equal(guided.argmax(-1)[clear], reference[clear])


# --- manifests of the released models ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["RAR-L", "RAR-XL", "RAR-XXL"])
def test_preset_matches_authors_manifest_key_for_key(name, reference_dir):
    ref = json.loads((reference_dir / "checkpoints" / f"rar_keys_{name}.json").read_text())
    with torch.device("meta"):
        model = create_rar(name)
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, shape) for k, (shape, _dtype) in ref["keys"].items()]  # same keys, shapes and order
    assert model.num_params() == ref["num_params"]
    rc = ref["config"]
    cfg = model.config
    assert (cfg.dim, cfg.n_layer, cfg.n_head, cfg.mlp_dim, cfg.vocab_size, cfg.num_classes, cfg.seq_len) == (
        rc["hidden_size"], rc["num_hidden_layers"], rc["num_attention_heads"], rc["intermediate_size"],
        rc["codebook_size"], rc["condition_num_classes"], rc["image_seq_len"])
    # the config inferred from the file's shapes is the preset's
    state = {k: torch.empty(shape, device="meta") for k, (shape, _dtype) in ref["keys"].items()}
    assert infer_rar_config(state, name) == cfg


def test_xl_mlp_width_taken_from_the_file(reference_dir):
    """RAR's paper XL uses F = 5120, the authors' yaml 4096: whatever fc1 holds is accepted."""
    ref = json.loads((reference_dir / "checkpoints" / "rar_keys_RAR-XL.json").read_text())
    state = {k: torch.empty(shape, device="meta") for k, (shape, _dtype) in ref["keys"].items()}
    for key in [k for k in state if ".mlp.fc" in k]:
        shape = list(state[key].shape)
        state[key] = torch.empty([5120 if s == 4096 else s for s in shape], device="meta")
    assert infer_rar_config(state, "xl.safetensors").mlp_dim == 5120


# --- KV cache, causality ------------------------------------------------------------------------------------
def test_kv_cache_logits_equal_full_recompute():
    model = small_rar(1)
    torch.manual_seed(2)
    tokens, labels = torch.randint(0, 32, (3, 16)), torch.tensor([0, 4, 5])  # 5 = null class
    with torch.no_grad():
        full, _ = model(tokens, labels)  # (3, 17, 32)
        model.setup_cache(3)
        assert model.blocks[0].attn.k_cache.shape == (3, 4, 18, 16)
        steps = [model.prefill(labels)] + [model.decode(tokens[:, t - 1 : t], t) for t in range(1, 17)]
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
        model.setup_cache(3)  # fresh cache: chunked prefill + multi-token decode
        chunked = torch.cat([model.prefill(labels, tokens[:, :5]), model.decode(tokens[:, 5:], 6)], 1)
        torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
        model.reset_cache()
    assert not any("cache" in k for k in model.state_dict())
    with pytest.raises(RuntimeError, match="setup_cache"):
        model.prefill(labels)


@pytest.mark.parametrize("opts", [{"temperature": 0.0, "cfg_scale": 3.0, "cfg_schedule": "cosine", "cfg_power": 2.75},
                                  {"temperature": 1.0, "cfg_scale": 1.0, "seed": 3},
                                  {"temperature": 1.0, "cfg_scale": 6.5, "cfg_schedule": "cosine", "seed": 4}])
def test_generate_kv_cache_equals_full_recompute(opts):
    model = small_rar(3)
    labels = torch.tensor([0, 2, 4])
    cached = generate(model, labels, **opts)
    assert torch.equal(cached, generate(model, labels, use_cache=False, **opts))
    assert cached.shape == (3, 16) and len(set(cached.flatten().tolist())) > 3


def test_logits_never_depend_on_later_tokens_in_any_order():
    model = small_rar(4)
    torch.manual_seed(5)
    tokens, labels = torch.randint(0, 32, (2, 16)), torch.tensor([1, 3])
    orders = draw_orders(2, 16, 1.0, torch.Generator().manual_seed(0))
    with torch.no_grad():
        base, _ = model(tokens, labels, orders)
        for j in (0, 7, 15):  # the j-th token in the order sits at slot 2 + j; rows 0..j are computed before it
            changed, rows = tokens.clone(), torch.arange(2)
            changed[rows, orders[:, j]] = (tokens[rows, orders[:, j]] + 5) % 32
            logits, _ = model(changed, labels, orders)
            torch.testing.assert_close(logits[:, : j + 1], base[:, : j + 1], atol=1e-6, rtol=0)
            assert (logits[:, j + 1 :] - base[:, j + 1 :]).abs().max() > 1e-3


# --- training helpers ---------------------------------------------------------------------------------------
def test_random_order_probability_anneal():
    assert random_order_prob(0) == random_order_prob(124_999) == random_order_prob(125_000) == 1.0
    assert random_order_prob(140_625) == 0.75 and random_order_prob(156_250) == 0.5
    assert random_order_prob(187_500) == random_order_prob(250_000) == 0.0
    assert random_order_prob(15, 10, 20) == 0.5 and random_order_prob(10, 10, 10) == 0.0
    with pytest.raises(ValueError, match="anneal_start"):
        random_order_prob(5, 20, 10)


def test_draw_orders_probability_and_reproducibility():
    identity = torch.arange(8)
    assert torch.equal(draw_orders(50, 8, 0.0, torch.Generator().manual_seed(0)), identity.expand(50, 8))
    always = draw_orders(50, 8, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(always.sort(-1).values, identity.expand(50, 8))
    assert not (always == identity).all(-1).any()  # 50 random permutations of 8: identity has chance 1/40320
    half = draw_orders(2000, 8, 0.5, torch.Generator().manual_seed(1))
    assert abs((half != identity).any(-1).float().mean().item() - 0.5) < 0.05
    assert torch.equal(half, draw_orders(2000, 8, 0.5, torch.Generator().manual_seed(1)))
    assert half.dtype == torch.int64 and draw_orders(0, 8, 0.5, torch.Generator()).shape == (0, 8)


def test_class_dropout_replaces_labels_by_null_in_training_only():
    model = small_rar(6, dropout=0.0, attn_dropout=0.0, class_dropout=0.5)
    tokens, labels = torch.randint(0, 32, (400, 4)), torch.full((400,), 2)
    with torch.no_grad():
        cond, _ = model(tokens, labels)
        null, _ = model(tokens, torch.full_like(labels, 5))
        model.train()
        torch.manual_seed(7)
        mixed, _ = model(tokens, labels)
        model.eval()
    is_cond = (mixed - cond).abs().amax((1, 2)) < 1e-6
    is_null = (mixed - null).abs().amax((1, 2)) < 1e-6
    assert (is_cond ^ is_null).all() and abs(is_null.float().mean().item() - 0.5) < 0.1


def test_initial_weights_follow_the_authors_init():
    torch.manual_seed(0)
    model = create_rar("RAR-tiny", vocab_size=512, num_classes=100)
    for block in [*model.blocks, model.adaln_before_head]:
        assert torch.count_nonzero(block.adaLN_modulation[1].weight) == 0
    assert torch.count_nonzero(model.cls_token) == 0 and torch.count_nonzero(model.lm_head.bias) == 0
    for weight in (model.embeddings.weight, model.pos_embed, model.blocks[1].mlp.fc2.weight, model.lm_head.weight):
        assert abs(weight.std().item() - 0.02) < 0.002
    assert torch.equal(model.blocks[0].attn.q_norm.weight, torch.ones(16))


def test_activation_checkpointing_gives_identical_loss_and_gradients():
    model = small_rar(8).train()
    tokens, labels = torch.randint(0, 32, (3, 16)), torch.tensor([0, 1, 2])
    orders = draw_orders(3, 16, 1.0, torch.Generator().manual_seed(2))
    results = []
    for checkpointing in (False, True):
        model.activation_checkpointing = checkpointing
        model.zero_grad()
        torch.manual_seed(9)  # same dropout masks in both runs
        loss = model(tokens, labels, orders, targets=tokens)[1]
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_loss_is_cross_entropy_against_permuted_tokens():
    model = small_rar(10)
    tokens, labels = torch.randint(0, 32, (2, 16)), torch.tensor([1, 2])
    orders = draw_orders(2, 16, 1.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits, loss = model(tokens, labels, orders, targets=tokens)
    naive = 0.0
    for b in range(2):
        for j in range(16):
            row = logits[b, j].double()
            naive += (torch.logsumexp(row, 0) - row[tokens[b, orders[b, j]]]).item()
    assert math.isclose(loss.item(), naive / 32, rel_tol=1e-5)


def test_bad_inputs_are_refused_with_clear_errors():
    model = small_rar()
    tokens, labels = torch.zeros(1, 16, dtype=torch.long), torch.tensor([0])
    with pytest.raises(ValueError, match=r"class label ids must be in \[0, 6\)"):
        model(tokens, torch.tensor([6]))
    with pytest.raises(ValueError, match=r"image token ids must be in \[0, 32\)"):
        model(torch.full((1, 16), 32), labels)
    with pytest.raises(ValueError, match="at most seq_len = 16"):
        model(torch.zeros(1, 17, dtype=torch.long), labels)
    with pytest.raises(ValueError, match="permutation"):
        model(tokens, labels, orders=torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="full sequence"):
        model(tokens[:, :4], labels, orders=torch.arange(16)[None])
    with pytest.raises(KeyError, match="RAR-L"):
        create_rar("RAR-Z")
    with pytest.raises(ValueError, match="n_heads"):
        create_rar("RAR-tiny", n_heads=3)
    assert set(RAR_PRESETS) == {"RAR-tiny", "RAR-L", "RAR-XL", "RAR-XXL"}


# --- loading and saving -------------------------------------------------------------------------------------
@pytest.mark.parametrize("breakage, message", [
    ("drop", r"1 missing key.*blocks\.1\.attn\.k_norm\.bias"),
    ("extra", r"1 unexpected key.*blocks\.0\.attn\.k_cache"),
    ("shape", r"shape mismatch.*blocks\.0\.mlp\.fc2\.weight: checkpoint \(64, 128\) vs model \(64, 256\)"),
])
def test_strict_load_names_the_offending_key(tmp_path, breakage, message):
    state = {k: v.clone() for k, v in create_rar("RAR-tiny", vocab_size=16, num_classes=3).state_dict().items()}
    if breakage == "drop":
        del state["blocks.1.attn.k_norm.bias"]
    elif breakage == "extra":
        state["blocks.0.attn.k_cache"] = torch.zeros(1)
    else:
        state["blocks.0.mlp.fc2.weight"] = torch.zeros(64, 128)
    save_file(state, str(tmp_path / "model.safetensors"))  # the authors' layout: a plain state dict
    with pytest.raises(ValueError, match=message):
        load_rar(tmp_path / "model.safetensors")


def test_save_load_round_trip_and_load_gpt_dispatch(tmp_path, official):
    model = small_rar(11)
    weights = save_rar(model, tmp_path / "run")
    doc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert doc["format"] == "vfmtok.rar" and doc["rar_config"]["seq_len"] == 16
    tokens, labels = torch.randint(0, 32, (2, 16)), torch.tensor([3, 1])
    with torch.no_grad():
        expected, _ = model(tokens, labels)
        for source in (tmp_path / "run", weights):
            loaded = load_rar(source)
            assert isinstance(loaded, RAR) and not loaded.training and loaded.config == model.config
            assert torch.equal(loaded(tokens, labels)[0], expected)
            assert torch.equal(load_gpt(source)(tokens, labels)[0], expected)  # load_gpt hands RAR files over
        (tmp_path / "run" / "config.json").unlink()  # the config also lives in the safetensors metadata
        assert load_rar(weights).config == model.config
    # the authors' file (no config anywhere) through load_gpt; a GPT run still loads as a GPT
    assert isinstance(load_gpt(official["path"]), RAR) and is_rar_checkpoint(official["path"].parent)
    gpt_dir = tmp_path / "gpt"
    save_gpt(create_gpt("GPT-tiny", vocab_size=16, num_classes=3, grid_size=2), gpt_dir)
    assert not is_rar_checkpoint(gpt_dir) and not is_rar_checkpoint(gpt_dir / "model.safetensors")
    assert type(load_gpt(gpt_dir)).__name__ == "GPT"
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_rar(tmp_path)
