"""Multi-scale deformable attention: grid_sample path vs an explicit-loop reference, init, module maths."""
from __future__ import annotations

import math

import pytest
import torch

from vfmtok.models.deform_attn import MSDeformAttn, ms_deform_attn, ms_deform_attn_naive


def _random_problem(seed: int, shapes, batch=2, queries=7, heads=3, head_dim=5, points=3, spread=1.6):
    gen = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in shapes)
    value = torch.randn(batch, total, heads, head_dim, generator=gen)
    # locations in [-0.3, 1.3]: a good share falls outside the maps (zero padding)
    locations = torch.rand(batch, queries, heads, len(shapes), points, 2, generator=gen) * spread - (spread - 1) / 2
    logits = torch.randn(batch, queries, heads, len(shapes) * points, generator=gen)
    weights = logits.softmax(-1).view(batch, queries, heads, len(shapes), points)
    return value, locations, weights


@pytest.mark.parametrize("shapes", [[(5, 7), (3, 3), (1, 2)], [(6, 6), (3, 3)], [(4, 9)], [(24, 24), (24, 24)]])
def test_grid_sample_path_matches_naive_loop(shapes):
    value, locations, weights = _random_problem(len(shapes), shapes)
    assert ((locations < 0) | (locations > 1)).any(), "test must exercise points outside the maps"
    fast = ms_deform_attn(value, shapes, locations, weights)
    naive = ms_deform_attn_naive(value, shapes, locations, weights)
    assert fast.shape == (2, 7, 3 * 5)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)


def test_points_far_outside_read_zero_and_exact_cell_centres_read_the_cell():
    shapes = [(3, 4)]
    value = torch.randn(1, 12, 1, 2)
    weights = torch.ones(1, 2, 1, 1, 1)
    # query 0: far outside -> zero; query 1: centre of cell (row 2, col 1) -> that value exactly
    locations = torch.tensor([[-2.0, 5.0], [(1 + 0.5) / 4, (2 + 0.5) / 3]]).view(1, 2, 1, 1, 1, 2)
    out = ms_deform_attn(value, shapes, locations, weights)
    assert torch.equal(out[0, 0], torch.zeros(2))
    torch.testing.assert_close(out[0, 1], value[0, 2 * 4 + 1, 0], atol=1e-6, rtol=0)


def test_inconsistent_shapes_are_refused():
    value, locations, weights = _random_problem(0, [(3, 3)])
    with pytest.raises(ValueError, match="spatial_shapes"):
        ms_deform_attn(value, [(3, 4)], locations, weights)
    with pytest.raises(ValueError, match="attention_weights"):
        ms_deform_attn(value, [(3, 3)], locations, weights[..., :1])


def test_deformable_detr_initialisation():
    attn = MSDeformAttn(dim=32, levels=3, heads=8, points=4)
    assert torch.count_nonzero(attn.sampling_offsets.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.weight) == 0
    assert torch.count_nonzero(attn.attention_weights.bias) == 0
    bias = attn.sampling_offsets.bias.view(8, 3, 4, 2)
    for head in range(8):
        angle = 2 * math.pi * head / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(4):
            for level in range(3):
                torch.testing.assert_close(bias[head, level, point], direction * (point + 1), atol=1e-5, rtol=0)
    assert torch.count_nonzero(attn.value_proj.bias) == 0 and torch.count_nonzero(attn.output_proj.bias) == 0


def test_module_locations_and_weights_follow_the_formulas():
    torch.manual_seed(0)
    shapes = [(6, 6), (3, 5)]
    attn = MSDeformAttn(dim=16, levels=2, heads=2, points=3)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    query = torch.randn(2, 4, 16)
    reference = torch.rand(2, 4, 2, 2)
    tokens = torch.randn(2, 36 + 15, 16)
    out, locations, weights = attn(query, reference, tokens, shapes, return_sampling=True)
    offsets = (query @ attn.sampling_offsets.weight.T + attn.sampling_offsets.bias).view(2, 4, 2, 2, 3, 2)
    logits = (query @ attn.attention_weights.weight.T + attn.attention_weights.bias).view(2, 4, 2, 6)
    expect_w = torch.softmax(logits, -1).view(2, 4, 2, 2, 3)
    scale = torch.tensor([[6.0, 6.0], [5.0, 3.0]])  # (W, H) per level
    expect_loc = reference[:, :, None, :, None, :] + offsets / scale[None, None, None, :, None, :]
    torch.testing.assert_close(locations, expect_loc, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, expect_w, atol=1e-6, rtol=0)
    value = (tokens @ attn.value_proj.weight.T + attn.value_proj.bias).view(2, 51, 2, 8)
    expect = ms_deform_attn_naive(value, shapes, expect_loc, expect_w) @ attn.output_proj.weight.T + attn.output_proj.bias
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)


def test_runs_in_float32_under_autocast():
    torch.manual_seed(1)
    attn = MSDeformAttn(dim=16, levels=1, heads=2, points=2)
    query, reference, tokens = torch.randn(1, 3, 16), torch.rand(1, 3, 1, 2), torch.randn(1, 9, 16)
    expect = attn(query, reference, tokens, [(3, 3)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attn(query.bfloat16(), reference, tokens.bfloat16(), [(3, 3)])
    assert got.dtype == torch.float32
    # inputs were rounded to bf16, but the attention itself ran in fp32 (bf16 maths would err ~1e-2)
    expect_rounded = attn(query.bfloat16().float(), reference, tokens.bfloat16().float(), [(3, 3)])
    torch.testing.assert_close(got, expect_rounded, atol=1e-6, rtol=0)
    assert not torch.equal(expect, expect_rounded)


def test_forward_builds_the_offset_normaliser_once_per_shape(monkeypatch):
    # torch.tensor(list, device=cuda) in forward is a host -> device copy per call (6 per tokenizer forward)
    torch.manual_seed(2)
    attn = MSDeformAttn(dim=16, levels=2, heads=2, points=2)
    query, reference, tokens = torch.randn(1, 3, 16), torch.rand(1, 3, 2, 2), torch.randn(1, 9 + 2, 16)
    first = attn(query, reference, tokens, [(3, 3), (1, 2)])
    created = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: (created.append(a), real(*a, **k))[1])  # counting spy
    again = attn(query, reference, tokens, [(3, 3), (1, 2)])
    assert created == [] and torch.equal(first, again)
    table = attn.offset_normalizer([(3, 3), (1, 2)], torch.device("cpu"))
    assert table is attn.offset_normalizer([(3, 3), (1, 2)], torch.device("cpu"))
    assert table.tolist() == [[3.0, 3.0], [2.0, 1.0]] and table.dtype == torch.float32
    attn(query, reference, torch.randn(1, 4 + 1, 16), [(2, 2), (1, 1)])  # a new shape gets its own table
    assert len(created) == 1 and created[0][0] == [[2, 2], [1, 1]]
