"""l2-normalised vector quantizer: nearest by cosine, straight-through gradients, loss formulas, usage."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vfmtok.models.quantizer import VectorQuantizer


def _quantizer(seed: int = 0, size: int = 64, dim: int = 6) -> VectorQuantizer:
    torch.manual_seed(seed)
    q = VectorQuantizer(size, dim)
    with torch.no_grad():
        q.embedding.weight.normal_()  # un-normalised rows: the quantizer must normalise them itself
    return q


def test_codes_are_the_nearest_entries_by_cosine():
    q = _quantizer()
    latents = torch.randn(3, 10, 6) * 5
    out = q(latents)
    cosine = F.cosine_similarity(latents[:, :, None, :], q.embedding.weight[None, None], dim=-1)
    assert torch.equal(out.codes, cosine.argmax(-1))
    assert out.codes.dtype == torch.int64
    # quantized vectors are the normalised code rows
    rows = q.embedding.weight[out.codes]
    torch.testing.assert_close(out.quant, rows / rows.norm(dim=-1, keepdim=True), atol=1e-6, rtol=0)
    # second-nearest and distance gap
    dist = 2 - 2 * cosine
    top2 = dist.topk(2, dim=-1, largest=False)
    assert torch.equal(out.second_codes, top2.indices[..., 1])
    torch.testing.assert_close(out.distance_gap, top2.values[..., 1] - top2.values[..., 0], atol=1e-5, rtol=0)


def test_losses_equal_their_formulas():
    q = _quantizer(1)
    latents = torch.randn(2, 5, 6)
    out = q(latents)
    z = latents / latents.norm(dim=-1, keepdim=True)
    rows = q.embedding.weight[out.codes]
    zq = rows / rows.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out.codebook_loss, ((zq - z) ** 2).mean(), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(out.commit_loss, 0.25 * ((zq - z) ** 2).mean(), atol=1e-7, rtol=1e-6)


def test_straight_through_and_loss_gradients():
    q = _quantizer(2)
    latents = torch.randn(2, 5, 6, requires_grad=True)
    probe = torch.randn(2, 5, 6)
    (q(latents).quant * probe).sum().backward()
    ref = latents.detach().clone().requires_grad_(True)
    (F.normalize(ref, dim=-1) * probe).sum().backward()
    # gradient flows to the latents as if quantization were the identity on the normalised latents
    torch.testing.assert_close(latents.grad, ref.grad, atol=1e-6, rtol=0)
    assert q.embedding.weight.grad is None or torch.count_nonzero(q.embedding.weight.grad) == 0

    # codebook loss trains the codebook only; commitment trains the latents only
    q.zero_grad()
    latents.grad = None
    out = q(latents)
    out.codebook_loss.backward(retain_graph=True)
    assert latents.grad is None or torch.count_nonzero(latents.grad) == 0
    used = torch.zeros(64, dtype=torch.bool)
    used[out.codes.flatten()] = True
    grad_rows = q.embedding.weight.grad.abs().sum(-1) > 0
    assert torch.equal(grad_rows, used)
    q.zero_grad()
    out.commit_loss.backward()
    assert q.embedding.weight.grad is None or torch.count_nonzero(q.embedding.weight.grad) == 0
    assert torch.count_nonzero(latents.grad) > 0


def test_codebook_usage_of_the_quantizers_codes_and_no_usage_state_in_the_model():
    from vfmtok.metrics.codebook import CodebookUsage

    q = _quantizer(3, size=16)
    latents = torch.randn(4, 8, 6)
    q.train()
    codes = q(latents).codes
    counts = torch.bincount(codes.flatten(), minlength=16).double()
    usage = CodebookUsage(16)
    usage.update(codes)
    assert usage.filled == 32 and int(usage.counts.sum()) == 32
    assert usage.usage() == pytest.approx(float((counts > 0).sum()) / 16)
    probs = counts[counts > 0] / 32
    assert usage.perplexity() == pytest.approx(float(torch.exp(-(probs * probs.log()).sum())))
    assert not [name for name, _ in q.named_buffers()] and set(q.state_dict()) == {"embedding.weight"}


def test_lookup_refuses_out_of_range_codes():
    q = _quantizer(4, size=16)
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        q.lookup(torch.tensor([[0, 16]]))
    torch.testing.assert_close(q.lookup(torch.tensor([[3]]))[0, 0], F.normalize(q.embedding.weight[3], dim=-1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distances_are_computed_in_float32_under_autocast(seed):
    q = _quantizer(seed)
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 6, generator=gen)
    # a near tie that bf16 (8-bit mantissa: cosines near 1 round to 1) cannot resolve: code 1 is code 0 turned by
    # 0.01 rad, latent (1, 0) lies 3/4 of the way towards code 1 -> code 1 in fp32, the first index (0) in bf16
    u, v = F.normalize(torch.randn(6, generator=gen), dim=0), torch.randn(6, generator=gen)
    v = F.normalize(v - (v @ u) * u, dim=0)
    with torch.no_grad():
        q.embedding.weight[0] = u
        q.embedding.weight[1] = u + 0.01 * v
    latents[1, 0] = u + 0.0075 * v
    book = F.normalize(q.embedding.weight.double(), dim=-1)
    z = F.normalize(latents.double(), dim=-1)
    naive = ((z[..., None, :] - book) ** 2).sum(-1)  # float64 reference, (2, 4, K)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(latents)
        dist = q.distances(latents)
    assert dist.dtype == torch.float32 and out.quant.dtype == torch.float32 and out.codebook_loss.dtype == torch.float32
    torch.testing.assert_close(dist.double(), naive, atol=1e-6, rtol=0)
    top2 = naive.topk(2, dim=-1, largest=False).values
    torch.testing.assert_close(out.distance_gap.double(), top2[..., 1] - top2[..., 0], atol=1e-6, rtol=0)
    assert torch.equal(out.codes, naive.argmin(-1)) and out.codes[1, 0] == 1
    assert torch.equal(out.codes, q(latents).codes)

