"""Generation: parity with the authors' sampler, KV cache vs recompute, CFG, filters, reproducibility."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_io import create_gpt, load_gpt
from vfmtok.guidance import cfg_scales
from vfmtok.sampling import generate, inverse_cdf, pick_tokens, top_k_filter, top_p_filter

RUNS = ("cfg1.0", "cfg1.5", "cfg4.0", "cfg4.0_interval50")
NEAR_TIE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(fixtures_dir: Path) -> dict:
    folder = fixtures_dir / "gpt_tiny"
    return {
        "model": load_gpt(folder / "gpt_checkpoint.pt"),
        "out": load_file(str(folder / "outputs.safetensors")),
        "meta": json.loads((folder / "outputs.json").read_text()),
    }


@pytest.fixture(scope="module")
def small() -> GPT:
    """Random GPT-tiny, 4x4 grid (L = 16), vocab 32, 5 classes, non-zero head."""
    torch.manual_seed(0)
    model = create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    return model.eval()


def run_options(official: dict, run: str) -> dict:
    meta = official["meta"]
    return {"cfg_scale": meta[f"generate.{run}.cfg_scale"], "cfg_interval": meta[f"generate.{run}.cfg_interval"]}


# --- parity with the authors' sampler ------------------------------------------------------------------
@pytest.mark.parametrize("run", RUNS)
def test_greedy_generation_matches_official_tokens(official, run):
    out = official["out"]
    reference = out[f"generate.{run}.tokens"].long()
    margin = out[f"generate.{run}.top12_margin"]
    greedy = "top_k" if run == "cfg1.0" else "temperature"  # top-k 1 and T = 0 are both argmax
    extra = {"top_k": 1, "seed": 123} if greedy == "top_k" else {"temperature": 0.0}
    codes = generate(official["model"], out["gen_labels"], **run_options(official, run), **extra)
    assert codes.dtype == torch.int64 and codes.shape == (2, 256)
    for row in range(2):
        ties = (margin[row] < NEAR_TIE).nonzero().flatten()
        stop = int(ties[0]) if len(ties) else 256  # identical up to the first recorded near-tie
        assert torch.equal(codes[row, :stop], reference[row, :stop]), f"{run} row {row}"


@pytest.mark.parametrize("run", RUNS)
def test_official_raw_step_logits_through_kv_cache(official, run):
    """Feed the official tokens through our cache: every step's raw logits equal theirs (atol 1e-4)."""
    out, model = official["out"], official["model"]
    tokens = out[f"generate.{run}.tokens"].long()
    labels = out["gen_labels"]
    rows = official["meta"][f"generate.{run}.kv_cache_batch"]
    if rows == 4:
        labels, tokens = torch.cat([labels, torch.full_like(labels, 10)]), tokens.repeat(2, 1)
    with torch.no_grad():
        model.setup_cache(rows)
        assert model.cache_len == official["meta"][f"generate.{run}.kv_cache_len"] == 264
        steps = [model.prefill(labels)[:, -1]] + [model.decode(tokens[:, t - 1 : t], t)[:, -1] for t in range(1, 256)]
        model.reset_cache()
    ours = torch.stack(steps)
    theirs = torch.stack([out[f"generate.{run}.raw_step_logits.{t}"] for t in range(256)])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("run", RUNS)
def test_guided_argmax_matches_official_tokens_teacher_forced(official, run):
    """Robust check over all 256 steps: guided argmax = official token wherever the margin > 1e-4."""
    out, model, opts = official["out"], official["model"], run_options(official, run)
    tokens, labels = out[f"generate.{run}.tokens"].long(), out["gen_labels"]
    with torch.no_grad():
        cond = model(tokens[:, :-1], labels)[0]
        uncond = model(tokens[:, :-1], torch.full_like(labels, 10))[0]
    scales = torch.tensor(cfg_scales(256, opts["cfg_scale"], interval=opts["cfg_interval"]))[None, :, None]
    guided = torch.where(scales == 1.0, cond, uncond + scales * (cond - uncond))
    clear = out[f"generate.{run}.top12_margin"] > NEAR_TIE
    assert torch.equal(guided.argmax(-1)[clear], tokens[clear])
    if run == "cfg4.0_interval50":
        assert torch.all(scales[0, :52] == 4.0) and torch.all(scales[0, 52:] == 1.0)


# --- KV cache vs recompute, reproducibility ---------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 3, 4])
def test_kv_cache_matches_full_recompute(small, batch):
    labels = torch.arange(batch) % 5
    for opts in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 7}, {"temperature": 0.8, "top_p": 0.9, "seed": 8}):
        cached = generate(small, labels, cfg_scale=2.5, **opts)
        full = generate(small, labels, cfg_scale=2.5, use_cache=False, **opts)
        assert torch.equal(cached, full), opts


def test_sample_depends_only_on_seed_and_index(small):
    labels = torch.tensor([0, 4, 2, 2, 1])
    together = generate(small, labels, cfg_scale=1.5, seed=11)
    alone = torch.cat([generate(small, labels[i : i + 1], cfg_scale=1.5, seed=11, sample_indices=[i]) for i in range(5)])
    assert torch.equal(together, alone)
    # reordered batch with its indices: same samples; another seed: different samples
    perm = torch.tensor([3, 0, 4, 1, 2])
    assert torch.equal(generate(small, labels[perm], cfg_scale=1.5, seed=11, sample_indices=perm), together[perm])
    assert not torch.equal(generate(small, labels, cfg_scale=1.5, seed=12), together)
    # the two identical labels (2, 2) at indices 2 and 3 still get independent streams
    assert not torch.equal(together[2], together[3])


def test_temperature_zero_is_deterministic_argmax(small):
    a = generate(small, [1, 3], temperature=0.0, seed=1)
    b = generate(small, [1, 3], temperature=0.0, seed=2, top_k=5, top_p=0.5)
    assert torch.equal(a, b)
    assert torch.equal(generate(small, [1, 3], top_k=1, seed=3), a)
    logits = torch.tensor([[0.0, 3.0, -1.0], [2.0, 1.0, 2.5]])
    assert pick_tokens(logits, 0.0, 0, 1.0, None).tolist() == [1, 2]


# --- CFG ---------------------------------------------------------------------------------------------------
def naive_greedy(model: GPT, labels: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Independent reference: full recompute per step, separate cond/uncond passes, explicit formula."""
    seq = torch.zeros(labels.shape[0], 0, dtype=torch.long)
    null = torch.full_like(labels, model.config.num_classes)
    with torch.no_grad():
        for s in scales:
            cond = model(seq, labels)[0][:, -1]
            uncond = model(seq, null)[0][:, -1]
            guided = cond if s == 1.0 else uncond + s * (cond - uncond)
            seq = torch.cat([seq, guided.argmax(-1, keepdim=True)], 1)
    return seq


def test_cfg_scales_closed_forms():
    L, s = 16, 3.0
    assert cfg_scales(L, s) == [3.0] * L
    assert cfg_scales(L, s, "linear") == pytest.approx([1 + 2 * t / 16 for t in range(L)])
    cos = cfg_scales(L, s, "cosine", power=2.75)
    assert cos == pytest.approx([1 + 2 * (1 - math.cos(math.pi * (t / 16) ** 2.75)) / 2 for t in range(L)])
    assert cos[0] == 1.0 and cos[8] == pytest.approx(1 + (1 - math.cos(math.pi * 0.5**2.75)))
    assert cfg_scales(L, s, interval=3) == [3.0] * 5 + [1.0] * 11  # tokens 0..N+1 guided
    assert cfg_scales(L, s, "linear", interval=0)[:3] == pytest.approx([1.0, 1.125, 1.0])


@pytest.mark.parametrize(
    "opts",
    [
        {"cfg_scale": 3.0},
        {"cfg_scale": 0.5},
        {"cfg_scale": 4.0, "cfg_schedule": "linear"},
        {"cfg_scale": 4.0, "cfg_schedule": "cosine", "cfg_power": 2.0},
        {"cfg_scale": 3.0, "cfg_interval": 5},
        {"cfg_scale": 0.0},
    ],
)
def test_cfg_generation_matches_naive_formula(small, opts):
    labels = torch.tensor([0, 3, 4])
    scales = cfg_scales(16, opts["cfg_scale"], opts.get("cfg_schedule", "constant"), opts.get("cfg_power", 1.0),
                        opts.get("cfg_interval", -1))
    assert torch.equal(generate(small, labels, temperature=0.0, **opts), naive_greedy(small, labels, scales))


def _rows_seen(model: GPT, **opts) -> list[int]:
    seen: list[int] = []
    handle = model.tok_embeddings.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        generate(model, [1, 2], temperature=0.0, **opts)
    finally:
        handle.remove()
    return seen


def test_scale_one_is_single_conditional_pass_and_scale_zero_unconditional(small):
    assert set(_rows_seen(small, cfg_scale=1.0)) == {2}
    assert set(_rows_seen(small, cfg_scale=1.0, cfg_schedule="cosine")) == {2}
    assert set(_rows_seen(small, cfg_scale=2.0)) == {4}
    assert set(_rows_seen(small, cfg_scale=0.0)) == {2}  # null rows only
    unconditional = naive_greedy(small, torch.tensor([1, 2]), [0.0] * 16)
    assert torch.equal(generate(small, [1, 2], cfg_scale=0.0, temperature=0.0), unconditional)
    assert torch.equal(unconditional[0], unconditional[1])  # the label no longer matters


# --- filters -----------------------------------------------------------------------------------------------
def test_top_k_filter_on_hand_made_logits():
    logits = torch.tensor([[1.0, 4.0, 2.0, 3.0, 0.0]])
    kept = top_k_filter(logits, 2)
    assert torch.isfinite(kept).tolist() == [[False, True, False, True, False]]
    assert torch.equal(kept[torch.isfinite(kept)], torch.tensor([4.0, 3.0]))
    assert torch.equal(top_k_filter(logits, 0), logits) and torch.equal(top_k_filter(logits, 9), logits)
    assert torch.equal(top_k_filter(logits, 5), logits)
    u = torch.tensor([0.999])
    assert pick_tokens(logits, 1.0, 1, 1.0, u).tolist() == [1]  # top-k 1 = greedy whatever the draw


def test_top_p_filter_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.05, 0.5, 0.25, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(top_p_filter(logits, p))[0].nonzero().flatten().tolist()  # noqa: E731
    assert kept(0.4) == [1]  # 0.5 already reaches 0.4
    assert kept(0.6) == [1, 2]  # 0.75 >= 0.6
    assert kept(0.8) == [1, 2, 3]  # 0.9 >= 0.8
    tie = kept(0.92)  # 0.9 < 0.92 <= 0.95: exactly one of the two 0.05 tokens joins
    assert len(tie) == 4 and {1, 2, 3} < set(tie)
    assert kept(0.97) == [0, 1, 2, 3, 4]
    assert kept(1.0) == [0, 1, 2, 3, 4]


def test_top_p_uses_temperature_scaled_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    u = torch.tensor([0.99])  # a draw in the tail picks the last kept token
    # T = 1: p = (0.665, 0.245, 0.090); top-p 0.85 keeps {0, 1}
    assert pick_tokens(logits, 1.0, 0, 0.85, u).tolist() == [1]
    # T = 0.25: p = (0.982, 0.018, ~0); top-p 0.85 keeps {0}
    assert pick_tokens(logits, 0.25, 0, 0.85, u).tolist() == [0]
    # T = 4: p = (0.419, 0.327, 0.254); top-p 0.85 keeps all three
    assert pick_tokens(logits, 4.0, 0, 0.85, u).tolist() == [2]


def test_inverse_cdf_draws_and_never_picks_zero_probability():
    probs = torch.tensor([[0.2, 0.0, 0.5, 0.3, 0.0]]).repeat(6, 1)
    u = torch.tensor([0.0, 0.1999, 0.2, 0.6999, 0.7, 1.0 - 2**-53], dtype=torch.float64)
    assert inverse_cdf(probs, u).tolist() == [0, 0, 2, 2, 3, 3]
    # sampled frequencies follow the probabilities
    draws = inverse_cdf(probs[:1].repeat(20000, 1), torch.rand(20000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
    freq = torch.bincount(draws, minlength=5).double() / 20000
    torch.testing.assert_close(freq, probs[0].double(), atol=0.015, rtol=0)


# --- validation --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"labels": [0, 5]}, r"class id 5 out of range.*\[0, 5\)"),
        ({"labels": [-1]}, r"class id -1 out of range"),
        ({"labels": [0.5]}, "integer class ids"),
        ({"cfg_scale": -0.1}, "cfg_scale must be"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -2}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"cfg_schedule": "exp"}, "cfg_schedule 'exp'"),
        ({"cfg_power": 0.0}, "cfg_power"),
        ({"cfg_interval": -3}, "cfg_interval"),
        ({"sample_indices": [0]}, "sample_indices"),
    ],
)
def test_bad_options_rejected_before_any_work(small, kwargs, message):
    calls: list[int] = []
    handle = small.tok_embeddings.register_forward_hook(lambda m, i, o: calls.append(1))
    args = {"labels": [0, 1], **kwargs}
    try:
        with pytest.raises(ValueError, match=message):
            generate(small, **args)
    finally:
        handle.remove()
    assert calls == [] and small.layers[0].attention.k_cache is None
