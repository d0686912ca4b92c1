"""Building blocks of the LlamaGen GPT: 2D RoPE, RMSNorm, SwiGLU FFN, cached causal attention, block, class embedder.

Attribute names equal the authors' state-dict keys (shared/reference/checkpoints/README.md, "GPT key groups"
and 3.5). The model that assembles them is `vfmtok.models.gpt.GPT`; every name here is also importable from
`vfmtok.models.gpt`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vfmtok.models.gpt_config import GPTConfig


# ---------------------------------------------------------------------------------------------
# 2D rotary position embedding
# ---------------------------------------------------------------------------------------------
def rope_table_2d(head_dim: int, grid_size: int, base: float = 10000.0, cls_token_num: int = 1) -> Tensor:
    """The 2D RoPE table of LlamaGen (checkpoints/README.md 3.5), float32 on CPU.

    Pair k (channels 2k, 2k+1) of a head rotates by angle row * f_k for k < hd/4 and by col * f_{k-hd/4}
    otherwise, f_k = base**(-2k/(hd/2)); image token p sits at row p // grid, col p % grid. The first
    `cls_token_num` rows are cos = sin = 0 (the class position's q and k are zeroed, an official quirk).

    Returns:
        (cls_token_num + grid_size**2, head_dim // 2, 2) float32 holding (cos, sin).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(0, half, 2, device="cpu")[: half // 2].float() / half)  # (hd/4,)
    coords = torch.arange(grid_size, device="cpu").float()
    angles_1d = torch.outer(coords, inv_freq)  # (G, hd/4)
    rows = angles_1d[:, None, :].expand(grid_size, grid_size, -1)
    cols = angles_1d[None, :, :].expand(grid_size, grid_size, -1)
    angles = torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, half)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1)
    return torch.cat([torch.zeros(cls_token_num, half, 2, device="cpu"), table])


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate interleaved channel pairs of `x` (B, S, H, hd) by `table` (S, hd/2, 2); computed in fp32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = table[None, :, None, :, 0], table[None, :, None, :, 1]
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], dim=-1)
    return out.flatten(3).type_as(x)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMSNorm computed in fp32: x / sqrt(mean(x^2) + eps) * weight (LlamaGen)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: dropout(w2(silu(w1 x) * w3 x)), no biases."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Attention(nn.Module):
    """Multi-head causal self-attention with 2D RoPE and an optional static KV cache.

    The cache (`k_cache`, `v_cache`: (B, H, cache_len, hd)) is a non-persistent buffer (never in the state dict;
    None, hence invisible, outside generation), allocated by `GPT.setup_cache` and freed by `GPT.reset_cache`.
    Being a buffer, torch.compile treats it as a static-address input, which CUDA graphs need.

    `start_pos`: None = full causal sequence (no cache); an int = write the chunk at positions start_pos.. and
    attend over the filled prefix; a (S,) int64 tensor of positions = the static decode step: write with
    `index_copy_`, attend over the whole cache with a mask (positions <= the query's), so every step has the
    same shapes (one compiled graph). A batch smaller than the cache's uses the cache's first rows.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dim = cfg.n_head, cfg.head_dim, cfg.dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout = cfg.attn_dropout
        self.resid_dropout = nn.Dropout(cfg.resid_dropout)
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x: Tensor, rope: Tensor, start_pos: int | Tensor | None) -> Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.wqkv(x).split(self.dim, dim=-1)
        q, k, v = (t.reshape(batch, seq, self.n_head, self.head_dim) for t in (q, k, v))
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        if start_pos is None:  # full sequence, causal
            dropout = self.attn_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif isinstance(start_pos, Tensor):  # static step: fixed shapes, whole cache under a position mask
            assert self.k_cache is not None and self.v_cache is not None
            keys, values = self.k_cache[:batch], self.v_cache[:batch]
            keys.index_copy_(2, start_pos, k.to(keys.dtype))
            values.index_copy_(2, start_pos, v.to(values.dtype))
            mask = torch.arange(keys.shape[2], device=x.device)[None, :] <= start_pos[:, None]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        else:  # write this chunk into the static cache, attend over the filled prefix
            assert self.k_cache is not None and self.v_cache is not None
            end = start_pos + seq
            self.k_cache[:batch, :, start_pos:end] = k
            self.v_cache[:batch, :, start_pos:end] = v
            keys, values = self.k_cache[:batch, :, :end], self.v_cache[:batch, :, :end]
            mask = None
            if seq > 1:
                q_pos = torch.arange(start_pos, end, device=x.device)[:, None]
                mask = torch.arange(end, device=x.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, seq, self.dim)
        return self.resid_dropout(self.wo(out))


class TransformerBlock(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: Tensor, rope: Tensor, start_pos: int | Tensor | None) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, start_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class LabelEmbedder(nn.Module):
    """Class embedding with a null row (id = num_classes); in training, labels become null w.p. `dropout`."""

    def __init__(self, num_classes: int, dim: int, dropout: float) -> None:
        super().__init__()
        self.num_classes, self.dropout = num_classes, dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)
