"""Region-adaptive encoder: learnable queries read the frozen VFM's multi-level features through
multi-scale deformable attention (VFMTok, arXiv 2507.08441; shared/reference/vfmtok.md section 1.2).

Attribute names reproduce the official state_dict keys under `encode_transformer.`:
`projectors.N.mlp.{0,1,3,4}`, `norm_layers.N`, `carrier_tokens`, `norm_pre1`, `slots_pos`,
`transformer.layers.N.{cross_attn.*, norm1, self_attn.{q,k,v,out}_proj, norm3, linear1, linear2, norm2}`.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.models.attention import CausalSelfAttention
from vfmtok.models.deform_attn import MSDeformAttn


class LevelProjector(nn.Module):
    """Per-level projector: Linear C->D (no bias), LayerNorm, ReLU, Linear D->D (no bias), LayerNorm
    (`mlp.0`, `mlp.1`, -, `mlp.3`, `mlp.4`). Input (B, N, C) -> (B, N, D)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, dim, bias=False), nn.LayerNorm(dim), nn.ReLU(),
                                 nn.Linear(dim, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(feats)


class DeformableEncoderLayer(nn.Module):
    """Post-norm layer: deformable cross-attention -> add -> `norm1`; causal self-attention (input x + pos
    for q, k and v) -> add -> `norm3`; FFN Linear D->F, ReLU, Linear F->D -> add -> `norm2`. Dropout 0."""

    def __init__(self, dim: int, ffn_dim: int, heads: int, deform_heads: int, levels: int, points: int) -> None:
        super().__init__()
        self.cross_attn = MSDeformAttn(dim, levels=levels, heads=deform_heads, points=points)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = CausalSelfAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, queries: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor,
                value_tokens: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                debug: dict[str, Any] | None = None) -> torch.Tensor:
        """(B, Q, D) queries -> (B, Q, D). `debug`, when a dict, receives `sampling_locations`
        (B, Q, M, L, P, 2) and `attention_weights` (B, Q, M, L, P)."""
        attn, locations, weights = self.cross_attn(queries + pos, reference_points, value_tokens, spatial_shapes,
                                                   return_sampling=True)
        if debug is not None:
            debug["sampling_locations"], debug["attention_weights"] = locations, weights
        queries = self.norm1(queries + attn.to(queries.dtype))
        queries = self.norm3(queries + self.self_attn(queries + pos))
        return self.norm2(queries + self.linear2(F.relu(self.linear1(queries))))


class DeformableEncoderStack(nn.Module):
    """Holds `layers` (the official `transformer.layers.N` keys)."""

    def __init__(self, depth: int, **layer_kwargs: Any) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(**layer_kwargs) for _ in range(depth))


def grid_reference_points(num_queries: int, levels: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed reference points of queries laid out row-major on a g x g grid (g^2 = num_queries): query
    q = i * g + j sits at (x, y) = ((j + 0.5) / g, (i + 0.5) / g), the same for every level.

    Returns:
        (num_queries, levels, 2) float32 in (0, 1).

    Raises:
        ValueError: if num_queries is not a perfect square.
    """
    g = math.isqrt(num_queries)
    if g * g != num_queries:
        raise ValueError(f"num_queries {num_queries} must be a perfect square (queries form a g x g grid)")
    centres = (torch.arange(g, dtype=torch.float32, device=device) + 0.5) / g
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
    return points[:, None, :].expand(num_queries, levels, 2).contiguous()


class RegionEncoder(nn.Module):
    """Region-adaptive quantization encoder (trainable part; the frozen VFM is passed in as features).

    Args:
        in_dim: encoder channel width C (1024 for DINOv2-L), or one width per level (CNN pyramids); the levels may
            also differ in grid size (each a square, read through its own spatial shape).
        dim: model width D (512).
        levels: number of VFM levels L (4).
        num_queries: Q queries on a sqrt(Q) x sqrt(Q) grid (256 -> 16 x 16).
        depth: deformable layers (6).
        heads: self-attention heads (8).
        deform_heads: deformable-attention heads M (8).
        points: sampling points per head and level P (4).
        ffn_dim: FFN hidden width (min(4 D, 1024) = 1024 in the paper).
    """

    def __init__(self, in_dim: int | Sequence[int] = 1024, dim: int = 512, levels: int = 4, num_queries: int = 256,
                 depth: int = 6, heads: int = 8, deform_heads: int = 8, points: int = 4, ffn_dim: int = 1024) -> None:
        super().__init__()
        in_dims = [in_dim] * levels if isinstance(in_dim, int) else list(in_dim)
        if len(in_dims) != levels:
            raise ValueError(f"RegionEncoder: {len(in_dims)} level widths {in_dims} for {levels} levels")
        self.levels, self.num_queries, self.in_dims = levels, num_queries, in_dims
        self.projectors = nn.ModuleList(LevelProjector(c, dim) for c in in_dims)
        self.norm_layers = nn.ModuleList(nn.LayerNorm(dim) for _ in range(levels))
        self.carrier_tokens = nn.Parameter(torch.randn(1, num_queries, dim) * dim ** -0.5)
        self.norm_pre1 = nn.LayerNorm(dim)
        self.slots_pos = nn.Parameter(torch.randn(1, num_queries, dim) * dim ** -0.5)
        self.transformer = DeformableEncoderStack(depth, dim=dim, ffn_dim=ffn_dim, heads=heads,
                                                  deform_heads=deform_heads, levels=levels, points=points)

    def project_levels(self, levels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """VFM levels, each (B, N_l, C_l) -> projected (B, N_l, D) (projector then `norm_layers`).

        Raises:
            ValueError: wrong number of levels or a level width other than `in_dims[l]`.
        """
        if len(levels) != self.levels:
            raise ValueError(f"RegionEncoder expects {self.levels} VFM levels, got {len(levels)}")
        for i, (feats, c) in enumerate(zip(levels, self.in_dims)):
            if feats.shape[-1] != c:
                raise ValueError(f"RegionEncoder: level {i} has width {feats.shape[-1]}, expected {c}")
        return [norm(proj(feats)) for proj, norm, feats in zip(self.projectors, self.norm_layers, levels)]

    def forward(self, levels: Sequence[torch.Tensor], carrier: torch.Tensor | None = None,
                debug: dict[str, Any] | None = None) -> torch.Tensor:
        """Slots from multi-level features.

        Args:
            levels: L tensors (B, N_l, C), each a square grid of patch tokens in row-major order.
            carrier: optional (B, Q, D) replacement of the learned queries (before `norm_pre1`), for tests.
            debug: if a dict, receives `projected_levels` (list of (B, N_l, D)), `reference_points`
                (B, Q, L, 2), and per layer `layers` = list of dicts with `sampling_locations`,
                `attention_weights`, `output` (B, Q, D).

        Returns:
            slots (B, Q, D); slot i depends only on queries j <= i (causal self-attention).

        Raises:
            ValueError: wrong number of levels or a non-square level.
        """
        projected = self.project_levels(levels)
        shapes = []
        for feats in projected:
            side = math.isqrt(feats.shape[1])
            if side * side != feats.shape[1]:
                raise ValueError(f"VFM level with {feats.shape[1]} tokens is not a square grid")
            shapes.append((side, side))
        value_tokens = torch.cat(projected, dim=1)
        b = value_tokens.shape[0]
        queries = self.carrier_tokens.expand(b, -1, -1) if carrier is None else carrier
        queries = self.norm_pre1(queries)
        pos = self.slots_pos.expand(b, -1, -1)
        reference = grid_reference_points(self.num_queries, self.levels, value_tokens.device)
        reference = reference.to(value_tokens.dtype)[None].expand(b, -1, -1, -1)
        if debug is not None:
            debug["projected_levels"], debug["reference_points"], debug["layers"] = projected, reference, []
        for layer in self.transformer.layers:
            info: dict[str, Any] | None = {} if debug is not None else None
            queries = layer(queries, pos, reference, value_tokens, shapes, debug=info)
            if debug is not None:
                info["output"] = queries
                debug["layers"].append(info)
        return queries
