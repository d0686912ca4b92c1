"""Sampling speed paths and devices: KV-cache dtype under autocast, where the float64 draw runs, compiled decoding
and the CFG-interval batch drop (each checked against an independent path)."""
from __future__ import annotations

import pytest
import torch

from vfmtok.models.gpt import GPT, create_gpt
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
