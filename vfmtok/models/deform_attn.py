"""Multi-scale deformable attention (Deformable DETR, arXiv 2010.04159) in pure PyTorch.

VFMTok's region-adaptive encoder uses it as cross-attention from the learnable queries to the frozen
VFM's multi-level feature maps (shared/reference/vfmtok.md section 1.2). The authors ship a CUDA op and
a grid_sample fallback that computes the same function; here `ms_deform_attn` (grid_sample, bilinear,
zero padding, align_corners=False) is the only path, and `ms_deform_attn_naive` is an independent
explicit-loop implementation used by the tests and the benchmark.

Conventions (as Deformable DETR / the official code):
    * sampling locations are normalised (x, y) in [0, 1] per level; location l maps to pixel
      coordinate l * size - 0.5 (align_corners=False); points outside read zeros;
    * value tokens of all levels are flattened row-major and concatenated in level order;
    * attention weights are softmaxed jointly over (levels x points) of each head;
    * the whole computation runs in float32 with autocast disabled.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def _check_inputs(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                  sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, heads, head_dim), got shape {tuple(value.shape)}")
    total = sum(h * w for h, w in spatial_shapes)
    if value.shape[1] != total:
        raise ValueError(f"value has {value.shape[1]} tokens but spatial_shapes {list(spatial_shapes)} sum to {total}")
    b, _, heads, _ = value.shape
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (B, Q, heads, levels, points, 2), got {tuple(sampling_locations.shape)}")
    bq, q, hq, lq, pq, _ = sampling_locations.shape
    if (bq, hq, lq) != (b, heads, len(spatial_shapes)):
        raise ValueError(f"sampling_locations {tuple(sampling_locations.shape)} do not match batch {b}, heads {heads}, "
                         f"levels {len(spatial_shapes)}")
    if tuple(attention_weights.shape) != (bq, q, hq, lq, pq):
        raise ValueError(f"attention_weights must be {(bq, q, hq, lq, pq)}, got {tuple(attention_weights.shape)}")


def ms_deform_attn(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                   sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention core with `F.grid_sample` (one call per level).

    Args:
        value: (B, S, M, Dh) float, S = sum of H_l * W_l, value tokens of every level, row-major per level.
        spatial_shapes: L pairs (H_l, W_l).
        sampling_locations: (B, Q, M, L, P, 2) float, (x, y) in normalised [0, 1] coordinates.
        attention_weights: (B, Q, M, L, P) float, already normalised (softmax over L * P per head).

    Returns:
        (B, Q, M * Dh) in the dtype of `value`: per head, the attention-weighted sum of the bilinearly
        sampled values (zeros outside the maps), heads concatenated.

    Raises:
        ValueError: on inconsistent shapes (names the argument).
    """
    _check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    b, _, heads, _ = value.shape
    sizes = [h * w for h, w in spatial_shapes]
    grids = 2.0 * sampling_locations - 1.0  # grid_sample's [-1, 1] convention
    weights = rearrange(attention_weights, "b q m l p -> (b m) 1 q l p")
    out = None
    for lvl, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes)):
        value_l = rearrange(value_l, "b (h w) m d -> (b m) d h w", h=h, w=w)
        grid_l = rearrange(grids[:, :, :, lvl], "b q m p xy -> (b m) q p xy")
        # (B*M, Dh, Q, P) bilinear samples, zeros outside the map
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        term = (sampled * weights[..., lvl, :]).sum(-1)  # (B*M, Dh, Q)
        out = term if out is None else out + term
    return rearrange(out, "(b m) d q -> b q (m d)", b=b, m=heads)


def ms_deform_attn_naive(value: torch.Tensor, spatial_shapes: Sequence[tuple[int, int]],
                         sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> torch.Tensor:
    """Reference implementation: explicit loops over heads, levels and points with hand-written bilinear
    interpolation and zero padding (no grid_sample). Slow; for tests and benchmarks only.

    Args and returns as `ms_deform_attn`.
    """
    _check_inputs(value, spatial_shapes, sampling_locations, attention_weights)
    b, _, heads, head_dim = value.shape
    q = sampling_locations.shape[1]
    out = value.new_zeros(b, q, heads, head_dim)
    batch_idx = torch.arange(b, device=value.device)[:, None].expand(b, q)
    start = 0
    starts = []
    for h_l, w_l in spatial_shapes:
        starts.append(start)
        start += h_l * w_l
    for m in range(heads):
        for lvl, (h_l, w_l) in enumerate(spatial_shapes):
            fmap = value[:, starts[lvl]:starts[lvl] + h_l * w_l, m].reshape(b, h_l, w_l, head_dim)
            for p in range(sampling_locations.shape[4]):
                x = sampling_locations[:, :, m, lvl, p, 0] * w_l - 0.5  # pixel coordinates, (B, Q)
                y = sampling_locations[:, :, m, lvl, p, 1] * h_l - 0.5
                x0, y0 = torch.floor(x), torch.floor(y)
                fx, fy = x - x0, y - y0
                acc = value.new_zeros(b, q, head_dim)
                for dy, wy in ((0, 1 - fy), (1, fy)):
                    for dx, wx in ((0, 1 - fx), (1, fx)):
                        xi, yi = (x0 + dx).long(), (y0 + dy).long()
                        inside = (xi >= 0) & (xi < w_l) & (yi >= 0) & (yi < h_l)
                        corner = fmap[batch_idx, yi.clamp(0, h_l - 1), xi.clamp(0, w_l - 1)]  # (B, Q, Dh)
                        acc = acc + corner * (wx * wy * inside)[..., None]
                out[:, :, m] += acc * attention_weights[:, :, m, lvl, p][..., None]
    return rearrange(out, "b q m d -> b q (m d)")


def _linear32(layer: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    """`layer(inputs)` in float32 even when the module's weights are stored in half precision."""
    weight, bias = layer.weight, layer.bias
    if weight.dtype != torch.float32:
        weight, bias = weight.float(), None if bias is None else bias.float()
    return F.linear(inputs, weight, bias)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR `MSDeformAttn`; official VFMTok keys).

    Parameters: `sampling_offsets` Linear(D -> M*L*P*2), `attention_weights` Linear(D -> M*L*P),
    `value_proj` Linear(D -> D), `output_proj` Linear(D -> D), all biased; Deformable-DETR init.

    Args:
        dim: model width D (divisible by `heads`).
        levels: number of feature levels L.
        heads: attention heads M (head dim D / M).
        points: sampling points per head and level P.
    """

    def __init__(self, dim: int = 512, levels: int = 4, heads: int = 8, points: int = 4) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"MSDeformAttn: dim {dim} is not divisible by heads {heads}")
        self.dim, self.levels, self.heads, self.points = dim, levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        # (W_l, H_l) offset normalisers per (spatial shapes, device): built once, not copied host -> device per call
        self._normalizers: dict[tuple, torch.Tensor] = {}
        self.reset_parameters()

    def offset_normalizer(self, spatial_shapes: Sequence[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """(L, 2) float32 (W_l, H_l) of each level on `device`, cached per (shapes, device): after the first call
        for a shape no host -> device copy (a synchronising `torch.tensor(..., device=...)`) happens."""
        key = (tuple((int(h), int(w)) for h, w in spatial_shapes), torch.device(device))
        table = self._normalizers.get(key)
        if table is None:
            table = self._normalizers[key] = torch.tensor([[w, h] for h, w in key[0]], dtype=torch.float32,
                                                          device=device)
        return table

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Deformable-DETR init: zero offset weights; offset bias = head k's unit direction at angle 2*pi*k/M
        scaled so its larger component is 1, times (point index + 1); zero attention-weight Linear (uniform
        attention); Xavier-uniform value/output projections with zero bias."""
        if self.sampling_offsets.weight.is_meta:
            return
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)
        grid = grid / grid.abs().max(dim=-1, keepdim=True).values
        grid = grid[:, None, None, :].repeat(1, self.levels, self.points, 1)
        grid = grid * torch.arange(1, self.points + 1, dtype=torch.float32)[None, None, :, None]
        self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, value_tokens: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], return_sampling: bool = False):
        """Attend from `query` to the multi-level `value_tokens` around `reference_points`.

        Args:
            query: (B, Q, D) queries (position embedding already added).
            reference_points: (B, Q, L, 2) normalised (x, y) in [0, 1].
            value_tokens: (B, S, D) flattened level tokens (row-major per level, levels concatenated).
            spatial_shapes: L pairs (H_l, W_l) with sum H_l * W_l = S.
            return_sampling: also return the sampling locations and attention weights.

        Returns:
            (B, Q, D) float32 output; with `return_sampling`, a tuple (output, locations (B, Q, M, L, P, 2),
            weights (B, Q, M, L, P)). Runs in float32 under disabled autocast regardless of input dtype.

        Raises:
            ValueError: if the number of levels or tokens does not match the module / spatial shapes.
        """
        if len(spatial_shapes) != self.levels:
            raise ValueError(f"MSDeformAttn built for {self.levels} levels, got spatial_shapes {list(spatial_shapes)}")
        with torch.autocast(device_type=query.device.type, enabled=False):
            query, reference_points, value_tokens = query.float(), reference_points.float(), value_tokens.float()
            b, q, _ = query.shape
            value = rearrange(_linear32(self.value_proj, value_tokens), "b s (m d) -> b s m d", m=self.heads)
            offsets = rearrange(_linear32(self.sampling_offsets, query), "b q (m l p xy) -> b q m l p xy",
                                m=self.heads, l=self.levels, p=self.points)
            logits = rearrange(_linear32(self.attention_weights, query), "b q (m lp) -> b q m lp", m=self.heads)
            weights = rearrange(logits.softmax(-1), "b q m (l p) -> b q m l p", l=self.levels)
            # offsets are in units of cells of each level: divide by (W_l, H_l)
            normalizer = self.offset_normalizer(spatial_shapes, query.device)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
            out = _linear32(self.output_proj, ms_deform_attn(value, spatial_shapes, locations, weights))
        if return_sampling:
            return out, locations, weights
        return out
