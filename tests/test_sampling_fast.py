"""Sampling speed paths and devices: KV-cache dtype under autocast, where the float64 draw runs, compiled decoding
and the CFG-interval batch drop (each checked against an independent path)."""
from __future__ import annotations

import pytest
import torch

from vfmtok.models.gpt import GPT
from vfmtok.models.gpt_io import create_gpt
from vfmtok.sampling import generate

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small() -> GPT:
    """Random GPT-tiny, 4x4 grid (L = 16), vocab 32, 5 classes, non-zero head."""
    torch.manual_seed(0)
    model = create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    return model.eval()


def _cache_dtypes(model: GPT, **opts) -> set[tuple[torch.dtype, torch.dtype]]:
    """(k_cache, v_cache) dtypes seen by every attention call of one `generate`."""
    seen: set[tuple[torch.dtype, torch.dtype]] = set()

    def hook(module, args, output):
        if module.k_cache is not None:
            seen.add((module.k_cache.dtype, module.v_cache.dtype))

    handles = [layer.attention.register_forward_hook(hook) for layer in model.layers]
    try:
        generate(model, [1, 2], **opts)
    finally:
        for handle in handles:
            handle.remove()
    return seen


# --- precision ---------------------------------------------------------------------------------------------
def test_kv_cache_is_allocated_in_the_autocast_dtype(small):
    assert small.output.weight.dtype == torch.float32
    assert _cache_dtypes(small, cfg_scale=2.0, seed=0) == {(torch.float32, torch.float32)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _cache_dtypes(small, cfg_scale=2.0, seed=0) == {(torch.bfloat16, torch.bfloat16)}
        small.setup_cache(3)
        k = small.layers[0].attention.k_cache
        small.reset_cache()
    assert k.dtype == torch.bfloat16 and k.shape == (3, 4, small.cache_len, 16)
    # an explicit dtype still wins; outside autocast the parameter dtype is the default again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        small.setup_cache(1, dtype=torch.float32)
    assert small.layers[0].attention.k_cache.dtype == torch.float32
    small.setup_cache(1)
    assert small.layers[0].attention.k_cache.dtype == torch.float32
    small.reset_cache()


def test_bf16_autocast_decoding_matches_its_own_full_recompute(small):
    """The bf16 cache holds exactly the bf16 keys/values the full recompute computes: same greedy tokens."""
    labels = torch.tensor([0, 3, 4])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached = generate(small, labels, cfg_scale=2.0, temperature=0.0)
        full = generate(small, labels, cfg_scale=2.0, temperature=0.0, use_cache=False)
    assert torch.equal(cached, full)


# --- devices -----------------------------------------------------------------------------------------------
def test_float64_draw_runs_on_cpu_for_mps_only():
    from vfmtok.sampling import draw_device

    assert draw_device(torch.device("mps")) == torch.device("cpu")  # MPS has no float64
    assert draw_device("mps:0") == torch.device("cpu")
    assert draw_device(torch.device("cuda", 1)) == torch.device("cuda", 1)
    assert draw_device("cpu") == torch.device("cpu")


# --- CFG-interval drop and the static decode step (eager) --------------------------------------------------
def _rows_per_call(model: GPT, labels, **opts) -> list[int]:
    seen: list[int] = []
    handle = model.tok_embeddings.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        generate(model, labels, **opts)
    finally:
        handle.remove()
    return seen


def test_cfg_interval_drops_the_unconditional_rows_with_the_same_tokens(small):
    labels = torch.tensor([0, 3, 4])
    for opts in ({"cfg_interval": 3, "temperature": 0.0}, {"cfg_interval": 3, "seed": 5},
                 {"cfg_interval": 0, "seed": 6, "top_p": 0.8}, {"cfg_schedule": "linear", "seed": 7}):
        dropped = generate(small, labels, cfg_scale=3.0, **opts)
        full_batch = generate(small, labels, cfg_scale=3.0, use_cache=False, **opts)  # 2B rows at every step
        assert torch.equal(dropped, full_batch), opts
    # tokens 0..4 guided (prefill + decode steps 1..4 on 6 rows), decode steps 5..15 on the 3 conditional rows
    assert _rows_per_call(small, labels, cfg_scale=3.0, cfg_interval=3) == [6] * 4 + [3] * 11
    # the linear ramp never returns to 1: no drop
    assert set(_rows_per_call(small, labels, cfg_scale=3.0, cfg_schedule="linear")) == {6}


def test_static_decode_step_gives_the_int_step_logits(small):
    """Position-tensor step (whole cache + mask, index_copy_) vs the slicing step, fed the same tokens."""
    labels = torch.tensor([0, 3, 4, 5, 5, 5])  # CFG layout [cond | null]
    tokens = torch.randint(0, 32, (6, 16), generator=torch.Generator().manual_seed(0))
    steps = {}
    with torch.no_grad():
        for static in (False, True):
            small.setup_cache(6)
            out = [small.prefill(labels)[:, -1]]
            for t in range(1, 16):
                rows = 6 if t < 9 else 3  # the drop: first rows of the cache only
                pos = torch.tensor([t]) if static else t
                out.append(small.decode(tokens[:rows, t - 1 : t], pos)[:, -1])
            steps[static] = out
    small.reset_cache()
    for t, (a, b) in enumerate(zip(steps[False], steps[True])):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5, msg=f"step {t}")
    full = small(tokens[:3, :15], labels[:3])[0]  # teacher forcing of the conditional rows
    torch.testing.assert_close(torch.stack([s[:3] for s in steps[True]], 1), full, atol=1e-5, rtol=1e-5)


def test_setup_cache_reuses_same_shaped_memory_zeroed(small):
    small.setup_cache(2)
    attn = small.layers[0].attention
    ptr = attn.k_cache.data_ptr()
    with torch.no_grad():
        small.prefill(torch.tensor([1, 2]))
    assert attn.v_cache.abs().sum() > 0  # (the class position's keys are zero: its RoPE row is cos = sin = 0)
    small.setup_cache(2)
    assert attn.k_cache.data_ptr() == ptr and attn.k_cache.abs().sum() == 0 and attn.v_cache.abs().sum() == 0
    small.setup_cache(3)
    assert attn.k_cache.shape[0] == 3
    small.reset_cache()
    assert attn.k_cache is None and "k_cache" not in small.state_dict().keys() and not list(small.buffers())


# --- compiled decoding (inductor on CPU) -------------------------------------------------------------------
def test_compiled_decoding_gives_the_eager_and_recompute_tokens():
    """One-layer GPT-tiny, L = 16, 2 labels: two graphs (4 CFG rows, then 2 after the interval)."""
    torch.manual_seed(1)
    model = create_gpt("GPT-tiny", vocab_size=32, num_classes=5, grid_size=4, n_layer=1)
    torch.nn.init.normal_(model.output.weight, std=0.3)
    model.eval()
    labels = torch.tensor([1, 3])
    for opts in ({"temperature": 0.0}, {"seed": 3}, {"temperature": 0.9, "top_k": 8, "seed": 4},
                 {"cfg_interval": 3, "seed": 5}, {"cfg_interval": 3, "temperature": 0.0}):
        compiled = generate(model, labels, cfg_scale=2.0, compile=True, **opts)
        assert model.cache_batch == 4  # the cache stays allocated for the next compiled call
        eager = generate(model, labels, cfg_scale=2.0, **opts)
        recompute = generate(model, labels, cfg_scale=2.0, use_cache=False, **opts)
        assert torch.equal(compiled, eager) and torch.equal(compiled, recompute), opts
    model.reset_cache()
    with pytest.raises(ValueError, match="use_cache"):
        generate(model, labels, compile=True, use_cache=False)
