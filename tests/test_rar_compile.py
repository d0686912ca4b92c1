"""RAR static decode step and compiled decoding (inductor on CPU): the position-tensor step against the int step and
the full recompute (raw logits), compiled tokens against eager KV-cache and recompute tokens, `vfmtok sample
--compile` bytes against eager."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.models.rar import RAR
from vfmtok.models.rar_io import save_rar
from vfmtok.sampling import compiled_decode, generate

sys.path.insert(0, str(Path(__file__).parent))
from test_rar import small_rar  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NULL = 5  # null class of the models below (5 classes)


def random_rar(seed: int, **overrides) -> RAR:
    """One-block RAR-tiny on 16 tokens, vocab 32, 5 classes; every weight re-drawn (the zero-init adaLN layers too)."""
    return small_rar(seed, **{"n_layer": 1, **overrides})


@pytest.fixture(scope="module")
def model() -> RAR:
    return random_rar(7)


def _step_logits(model: RAR, labels: torch.Tensor, tokens: torch.Tensor, step) -> torch.Tensor:
    """Teacher-forced KV-cache decoding: prefill, then `step(t)` feeding token t-1 for t = 1..L (the last call
    fills slot L+1, the unused prediction); (B, L+1, V) logits."""
    model.setup_cache(labels.shape[0])
    out = [model.prefill(labels)[:, -1]]
    for t in range(1, model.config.seq_len + 1):
        out.append(step(tokens[:, t - 1 : t], t)[:, -1])
    return torch.stack(out, 1)


def test_static_step_logits_equal_int_step_and_full_recompute(model):
    """Position-tensor step, eager and compiled (one graph for all 16 steps), vs the slicing step and the
    teacher-forced forward, on a CFG layout [cond | null]."""
    labels = torch.tensor([1, 4, NULL, NULL])
    tokens = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    compiled = compiled_decode(model, torch.device("cpu"))

    def graph_step(tok: torch.Tensor, t: int) -> torch.Tensor:
        if t == 1:  # compiles (or reuses this model's graph)
            return compiled(model, tok, torch.tensor([t]))
        with torch._dynamo.config.patch(error_on_recompile=True):  # every later step replays that one graph
            return compiled(model, tok, torch.tensor([t]))

    with torch.no_grad():
        full = model(tokens, labels)[0]  # (4, 17, 32)
        by_int = _step_logits(model, labels, tokens, lambda tok, t: model.decode(tok, t))
        by_tensor = _step_logits(model, labels, tokens, lambda tok, t: model.decode(tok, torch.tensor([t])))
        by_graph = _step_logits(model, labels, tokens, graph_step)
    torch.testing.assert_close(by_int, full, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_tensor, by_int, atol=1e-5, rtol=0)
    torch.testing.assert_close(by_graph, by_int, atol=1e-5, rtol=0)
    assert (by_int[:, 1:] - by_int[:, :1]).abs().max() > 0.1  # the steps really differ (positions, condition)
    # every slot of the cache was written (cls, condition, 16 tokens): the static step reaches the last slot
    assert (model.blocks[0].attn.v_cache.abs().sum(dim=(0, 1, 3)) > 0).all()


@pytest.mark.parametrize("opts", [{"temperature": 0.0, "cfg_schedule": "cosine", "cfg_power": 2.75},
                                  {"temperature": 0.9, "top_k": 8, "seed": 4},
                                  {"cfg_schedule": "cosine", "cfg_power": 2.75, "seed": 5},
                                  {"cfg_schedule": "cosine", "cfg_interval": 3, "seed": 6}])
def test_compiled_generate_gives_the_eager_and_recompute_tokens(model, opts):
    """CFG scale 4 (4 rows: one graph, shared with the logits test); greedy, seeded top-k, the authors' cosine ramp,
    the CFG interval (RAR keeps every row to the end, as in eager decoding)."""
    labels = torch.tensor([1, 3])
    compiled = generate(model, labels, cfg_scale=4.0, compile=True, **opts)
    ptr = model.blocks[0].attn.k_cache.data_ptr()
    assert model.cache_batch == 4  # kept allocated for the next compiled call
    again = generate(model, labels, cfg_scale=4.0, compile=True, **opts)
    assert model.blocks[0].attn.k_cache.data_ptr() == ptr and torch.equal(again, compiled)  # same memory, no leftovers
    eager = generate(model, labels, cfg_scale=4.0, **opts)
    recompute = generate(model, labels, cfg_scale=4.0, use_cache=False, **opts)
    assert torch.equal(compiled, eager) and torch.equal(compiled, recompute), (compiled, eager, recompute)
    assert len(set(compiled.flatten().tolist())) > 4


def test_setup_cache_reuses_memory_zeroed_and_decode_needs_prefill():
    model = random_rar(8)
    model.setup_cache(2)
    attn = model.blocks[0].attn
    ptrs = attn.k_cache.data_ptr(), model.cond_cache.data_ptr()
    with torch.no_grad():
        model.prefill(torch.tensor([1, 2]))
        model.decode(torch.tensor([[3], [4]]), torch.tensor([1]))
    assert attn.k_cache.abs().sum() > 0 and model.cond_cache.abs().sum() > 0
    model.setup_cache(2)
    assert (attn.k_cache.data_ptr(), model.cond_cache.data_ptr()) == ptrs
    assert attn.k_cache.abs().sum() == 0 and attn.v_cache.abs().sum() == 0 and model.cond_cache.abs().sum() == 0
    with pytest.raises(RuntimeError, match="prefill"):
        model.decode(torch.tensor([[3], [4]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="position tensor"):
        model.prefill(torch.tensor([1, 2]))
        model.decode(torch.tensor([[3], [4]]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="cache batch 2"):
        model.prefill(torch.tensor([1, 2, 3]))
    model.reset_cache()
    assert model.cond_cache is None and not list(model.buffers()) and not any("cache" in k for k in model.state_dict())


def test_sample_cli_compile_gives_the_same_npz_bytes(tmp_path):
    """`vfmtok sample --compile` on a tiny RAR run (cosine guidance, 2 labels x 2 CFG rows: one graph) vs eager."""
    from vfmtok.models.tokenizer_io import save_tokenizer

    torch.manual_seed(0)
    save_tokenizer(vfmtok.create_tokenizer("tiny", encoder_weights="random", codebook_size=32, num_queries=16),
                   tmp_path / "tok")
    save_rar(random_rar(9), tmp_path / "rar")
    cfg_file = tmp_path / "rar" / "config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "tokenizer": str(tmp_path / "tok")}))
    outs = {}
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        for flag in ([], ["--compile"]):
            out = outs[bool(flag)] = Path(f"out_{bool(flag)}")
            res = CliRunner().invoke(app, ["sample", "--ckpt", "rar", "--class", "1,3", "-n", "2", "--batch-size", "2",
                                           "--cfg-scale", "4", "--cfg-schedule", "cosine", "--cfg-power", "2.75",
                                           "--image-size", "32", "--no-png", "--no-progress", "--device", "cpu",
                                           "--out", str(out), *flag])
            assert res.exit_code == 0, res.output
    finally:
        os.chdir(old)
    npz = {k: (tmp_path / v / "samples.npz").read_bytes() for k, v in outs.items()}
    assert npz[True] == npz[False]
    with np.load(tmp_path / outs[True] / "samples.npz") as data:
        assert data["arr_1"].tolist() == [1, 3] and data["arr_0"].shape == (2, 32, 32, 3)
        assert data["arr_0"][0].std() > 0  # real pixels
    settings = {k: json.loads((tmp_path / v / "sample_config.json").read_text())["settings"] for k, v in outs.items()}
    assert settings[True].pop("decode") == "compiled" and settings[True] == settings[False]
