"""Causal multi-head self-attention shared by the region encoder's query self-attention and the ViT decoder.

Both reproduce the authors' blocks (`encode_transformer.transformer.layers.N.self_attn.*` and the decoder's
`Attention3`): separate biased q/k/v/out projections named `q_proj`, `k_proj`, `v_proj`, `out_proj` (their
state-dict keys), softmax scale 1/sqrt(head dim), a lower-triangular mask (token i attends to tokens 0..i).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def causal_mask(length: int, device: torch.device | None = None) -> Tensor:
    """The attention mask: (length, length) bool, True where row i may attend column j (j <= i)."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def zeroed_cache(old: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled cache tensor of `shape`, `dtype`, `device`: `old` itself, zeroed in place, when it already has
    them (its memory stays where it was, so a CUDA graph captured on it stays valid), else a new tensor.
    Used for the KV caches of the GPT and RAR generators and RAR's per-row condition cache."""
    if old is not None and old.shape == shape and old.dtype == dtype and old.device == device:
        return old.zero_()
    return torch.zeros(shape, dtype=dtype, device=device)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention. Input (B, N, D) used as q, k and v alike -> (B, N, D).

    Args:
        dim: D (divisible by `num_heads`). num_heads: heads. dropout: attention-probability dropout, applied in
            training mode only (the decoder's `attn_dropout`; the region encoder uses 0).

    Raises:
        ValueError: `dim` not divisible by `num_heads`.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"self-attention: dim {dim} is not divisible by heads {num_heads}")
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D); token i attends to tokens 0..i."""
        q, k, v = (rearrange(proj(tokens), "b n (h c) -> b h n c", h=self.num_heads)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(rearrange(out, "b h n c -> b n (h c)"))
