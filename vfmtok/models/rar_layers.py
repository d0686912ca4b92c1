"""Building blocks of the RAR generator: qk-norm attention with a static KV cache, MLP, adaLN block, final layer.

Exact per-layer behaviour of the authors' `modeling/rar.py` (CVMI-Lab/VFMTok-RAR, shared/reference/rar.md
section 2); attribute names equal their state-dict keys. The model that assembles them is
`vfmtok.models.rar.RAR`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vfmtok.models.rar_config import RARConfig

LN_EPS = 1e-6


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """DiT-style modulation x * (1 + scale) + shift; all (B, S, D) (the condition is per position)."""
    return x * (1 + scale) + shift


class LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` (same parameters and state-dict keys) that also takes an fp32 input with bf16/fp16 affine
    parameters, computing in fp32 with the parameters upcast (exact).

    That pairing arises under FSDP mixed precision (`train-ar --fsdp` in bf16: the blocks' parameters all-gathered
    in bf16, the residual stream fp32); CUDA autocast upcasts LayerNorm's arguments itself, CPU `layer_norm`
    refuses them. Any other pairing runs `nn.LayerNorm.forward` unchanged.

    Input (..., D) in any float dtype; output of the input's dtype (fp32 for the pairing above).
    """

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or self.weight is None or self.weight.dtype == torch.float32:
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x, self.normalized_shape, self.weight.float(), bias, self.eps)


class Attention(nn.Module):
    """Causal multi-head self-attention with biased qkv, per-head LayerNorm on q and k, and an optional KV cache.

    The cache (`k_cache`, `v_cache`: (B, H, cache_len, hd)) is a non-persistent buffer (never in the state
    dict; None, hence invisible, outside generation), allocated by `RAR.setup_cache` and freed by
    `RAR.reset_cache`. Being a buffer, torch.compile treats it as a static-address input, which CUDA graphs need.

    `start_pos`: None = full causal sequence (no cache); an int = write the chunk at slots start_pos.. and attend
    over the filled prefix; a (S,) int64 tensor of slots = the static decode step: write with `index_copy_`,
    attend over the whole cache with a mask (slots <= the query's), so every step has the same shapes (one
    compiled graph) and the same result as the int step up to float rounding (masked slots weigh exactly 0).
    """

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        self.n_head, self.dim = cfg.n_head, cfg.dim
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=True)
        self.q_norm = nn.LayerNorm(cfg.head_dim, eps=LN_EPS)
        self.k_norm = nn.LayerNorm(cfg.head_dim, eps=LN_EPS)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=True)
        self.attn_dropout = cfg.attn_dropout
        self.proj_drop = nn.Dropout(cfg.dropout)
        self.register_buffer("k_cache", None, persistent=False)
        self.register_buffer("v_cache", None, persistent=False)

    def forward(self, x: Tensor, start_pos: int | Tensor | None) -> Tensor:
        """x: (B, S, D) -> (B, S, D). start_pos: None, an int slot or a (S,) int64 slot tensor (see the class)."""
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.n_head).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if start_pos is None:
            dropout = self.attn_dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout)
        elif isinstance(start_pos, Tensor):  # static step: fixed shapes, whole cache under a slot mask
            assert self.k_cache is not None and self.v_cache is not None
            self.k_cache.index_copy_(2, start_pos, k.to(self.k_cache.dtype))
            self.v_cache.index_copy_(2, start_pos, v.to(self.v_cache.dtype))
            mask = torch.arange(self.k_cache.shape[2], device=x.device)[None, :] <= start_pos[:, None]
            out = F.scaled_dot_product_attention(q, self.k_cache.to(q.dtype), self.v_cache.to(q.dtype), attn_mask=mask)
        else:
            assert self.k_cache is not None and self.v_cache is not None
            seq = x.shape[1]
            end = start_pos + seq
            self.k_cache[:, :, start_pos:end] = k
            self.v_cache[:, :, start_pos:end] = v
            keys, values = self.k_cache[:, :, :end], self.v_cache[:, :, :end]
            mask = None
            if seq > 1:
                q_pos = torch.arange(start_pos, end, device=x.device)[:, None]
                mask = torch.arange(end, device=x.device)[None, :] <= q_pos
            out = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
        return self.proj_drop(self.proj(rearrange(out, "b h s d -> b s (h d)")))


class Mlp(nn.Module):
    """fc1 (D -> F) -> exact GELU -> dropout -> fc2 (F -> D) -> dropout (timm `Mlp`)."""

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.dim, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm adaLN block: x += gate_msa * attn(mod(LN(x))); x += gate_mlp * mlp(mod(LN(x))).

    `adaLN_modulation` = SiLU -> Linear(D, 6D) on the per-position condition, chunked into shift_msa,
    scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp (in that order). LayerNorms eps 1e-6 with affine.
    """

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        self.norm1 = LayerNorm(cfg.dim, eps=LN_EPS)
        self.attn = Attention(cfg)
        self.norm2 = LayerNorm(cfg.dim, eps=LN_EPS)
        self.mlp = Mlp(cfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))

    def forward(self, x: Tensor, cond: Tensor, start_pos: int | Tensor | None = None) -> Tensor:
        """x, cond: (B, S, D); returns (B, S, D). start_pos: as `Attention.forward`."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(cond).chunk(6, dim=-1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), start_pos)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """LayerNorm without affine, then modulation from SiLU -> Linear(D, 2D) chunked as (scale, shift).

    Note the order: scale first, then shift, unlike the blocks (the authors' `FinalLayer`).
    """

    def __init__(self, cfg: RARConfig) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(cfg.dim, eps=LN_EPS, elementwise_affine=False)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 2 * cfg.dim))

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x, cond: (B, S, D); returns (B, S, D)."""
        scale, shift = self.adaLN_modulation(cond).chunk(2, dim=-1)
        return modulate(self.norm_final(x), shift, scale)
