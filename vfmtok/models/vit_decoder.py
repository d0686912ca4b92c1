"""ViT mask-token decoder of VFMTok: 256 region tokens -> 2D token grid (and DINOv2 feature prediction).

Paper: "Vision Foundation Models as Effective Visual Tokenizers for Autoregressive Image Generation"
(arXiv 2507.08441), decoder section. Behaviour reproduced from the authors' code (`vfmtok.core.layers.Decoder`,
CVMI-Lab/VFMTok @ 828c780), described in shared/reference/vfmtok.md section 1.4 and
shared/reference/checkpoints/README.md section 3.3.

Data flow (full config, B = batch, D = 512):

    slots (B,256,D) post-quant ──+ slot_position_embedding ── norm_post1 ──▶ memory (B,256,D)
    pixel queries  [cls+pos0 | 441 x (mask_embedding + pos 24x24 -> 21x21) | 4 registers] ── norm_post1
    semantic queries [cls+pos0 | 576 x (mask_dino + pos 24x24) | 4 registers] ── norm_post2
    [memory | queries] ── 6 pre-norm blocks, ONE lower-triangular mask over the whole sequence ──▶
        pixel pass:    the 441 mask-token outputs  -> (B,D,21,21)          (feeds the CNN pixel decoder)
        semantic pass: the 576 mask-token outputs  -> proj -> (B,576,1024)  (training-only semantic loss)

Consequences of the single causal mask: memory slot i sees slots <= i only; every query token sees all 256
slots, the cls token and earlier queries (raster order); the registers come last and influence no output.

Parameter names equal the official keys under the prefix `decode_transformer.`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from vfmtok.models.attention import CausalSelfAttention


@dataclass
class ViTDecoderConfig:
    """Shape of the ViT mask-token decoder.

    Attributes:
        dim: token width D (official 512).
        depth: number of pre-norm blocks (official 6).
        num_heads: attention heads; head dim = dim / num_heads (official 8 x 64).
        mlp_dim: nominal FFN width; the SwiGLU hidden width is `(int(2 * mlp_dim / 3) + 7) // 8 * 8`
            (official 2048 -> 1368).
        num_slots: number of region tokens L read from the quantizer (official 256).
        enc_grid: side of the learned position grid, = the DINOv2 patch grid (336 / 14 = 24); the
            semantic pass predicts enc_grid**2 DINOv2 tokens.
        dec_grid: side of the pixel-pass token grid, = image_size / 16 (336 / 16 = 21).
        num_registers: register tokens appended after the queries (official 4; they affect nothing).
        semantic_dim: width of the predicted DINOv2 features (official 1024, hard-coded there).
        attn_dropout: dropout on attention probabilities in training mode (official 0.1).
    """

    dim: int = 512
    depth: int = 6
    num_heads: int = 8
    mlp_dim: int = 2048
    num_slots: int = 256
    enc_grid: int = 24
    dec_grid: int = 21
    num_registers: int = 4
    semantic_dim: int = 1024
    attn_dropout: float = 0.1

    @property
    def ffn_hidden(self) -> int:
        """SwiGLU hidden width, the official (DINOv2 `SwiGLUFFNFused`) rounding: 2048 -> 1368."""
        return (int(2 * self.mlp_dim / 3) + 7) // 8 * 8

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"ViTDecoderConfig: dim={self.dim} is not divisible by num_heads={self.num_heads}")
        for name in ("dim", "depth", "num_heads", "mlp_dim", "num_slots", "enc_grid", "dec_grid", "semantic_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ViTDecoderConfig: {name} must be positive, got {getattr(self, name)}")
        if self.num_registers < 0 or not 0.0 <= self.attn_dropout < 1.0:
            raise ValueError(
                f"ViTDecoderConfig: need num_registers >= 0 and 0 <= attn_dropout < 1, "
                f"got {self.num_registers}, {self.attn_dropout}"
            )


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def resample_pos_grid(grid_pos: Tensor, out_grid: int) -> Tensor:
    """Resample a square position table to `out_grid x out_grid` the way the official decoder does.

    Rule (DINO's "+0.1" trick, official `Decoder.interpolate_pos_encoding`): if `out_grid` equals the input
    side the table is returned unchanged; otherwise bicubic `F.interpolate` with
    `scale_factor = (out_grid + 0.1) / in_grid`, `align_corners=False`, no antialias. Because the scale factor
    (not the size) drives the source-coordinate mapping, src = (dst + 0.5) * in_grid / (out_grid + 0.1) - 0.5,
    this differs from resizing to size `out_grid` (up to ~4e-2 on the random fixtures for 24 -> 21).

    Args:
        grid_pos: (1, G*G, D) float table in raster order (row-major over the G x G grid).
        out_grid: output side g >= 1.

    Returns:
        (1, g*g, D) table in raster order, same dtype as the input (computed in float32).

    Raises:
        ValueError: the table is not (1, G*G, D) with G*G a square, or `out_grid` < 1.
    """
    if grid_pos.ndim != 3 or grid_pos.shape[0] != 1:
        raise ValueError(f"resample_pos_grid: expected a (1, G*G, D) table, got {tuple(grid_pos.shape)}")
    in_grid = math.isqrt(grid_pos.shape[1])
    if in_grid * in_grid != grid_pos.shape[1]:
        raise ValueError(f"resample_pos_grid: {grid_pos.shape[1]} positions do not form a square grid")
    if out_grid < 1:
        raise ValueError(f"resample_pos_grid: out_grid must be >= 1, got {out_grid}")
    if out_grid == in_grid:
        return grid_pos
    table = rearrange(grid_pos.float(), "1 (h w) d -> 1 d h w", h=in_grid)
    scale = (out_grid + 0.1) / in_grid
    table = F.interpolate(table, scale_factor=(scale, scale), mode="bicubic", align_corners=False)
    if table.shape[-1] != out_grid or table.shape[-2] != out_grid:  # floor(in * scale) must land on out_grid
        raise ValueError(f"resample_pos_grid: {in_grid} -> {out_grid} produced {tuple(table.shape[-2:])}")
    return rearrange(table, "1 d h w -> 1 (h w) d").to(grid_pos.dtype)


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """SwiGLU FFN with a fused input projection: w3(silu(a) * b) where (a, b) = halves of w12(x) (biased)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        gate, value = self.w12(tokens).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class DecoderBlock(nn.Module):
    """Pre-norm block: x + attn1(norm1(x)), then + ffnet(norm2(x)). LayerNorm eps 1e-5."""

    def __init__(self, cfg: ViTDecoderConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn1 = CausalSelfAttention(cfg.dim, cfg.num_heads, cfg.attn_dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.ffnet = SwiGLU(cfg.dim, cfg.ffn_hidden)

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D)."""
        tokens = tokens + self.attn1(self.norm1(tokens))
        return tokens + self.ffnet(self.norm2(tokens))


class DecoderTransformer(nn.Module):
    """`depth` DecoderBlocks under `.layers` (official key `decode_transformer.transformer.layers.N`); no final norm."""

    def __init__(self, cfg: ViTDecoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DecoderBlock(cfg) for _ in range(cfg.depth))

    def forward(self, tokens: Tensor) -> Tensor:
        """(B, N, D) -> (B, N, D) under the causal mask."""
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens


# ---------------------------------------------------------------------------------------------
# The decoder
# ---------------------------------------------------------------------------------------------
class ViTDecoder(nn.Module):
    """VFMTok's ViT mask-token decoder (official `decode_transformer`, 19,900,448 params at the full config).

    Args:
        cfg: the shape; `ViTDecoderConfig()` is the paper's configuration.

    Init (training from scratch, as the official code): embeddings and tokens N(0,1) * dim**-0.5, registers
    zero, Linear Xavier-uniform with zero bias, LayerNorm (1, 0).
    """

    def __init__(self, cfg: ViTDecoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ViTDecoderConfig()
        d = cfg.dim
        self.position_embedding = nn.Parameter(torch.empty(1, 1 + cfg.enc_grid**2, d))
        self.slot_position_embedding = nn.Parameter(torch.empty(1, cfg.num_slots, d))
        self.mask_embedding = nn.Parameter(torch.empty(1, 1, d))
        self.mask_dino = nn.Parameter(torch.empty(1, 1, d))
        self.cls_token = nn.Parameter(torch.empty(1, 1, d))
        self.register_tokens = nn.Parameter(torch.empty(1, cfg.num_registers, d))
        self.transformer = DecoderTransformer(cfg)
        self.norm_post1 = nn.LayerNorm(d)
        self.norm_post2 = nn.LayerNorm(d)
        self.proj = nn.Linear(d, cfg.semantic_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official initialisation (see class docstring). No-op on the meta device."""
        if self.position_embedding.is_meta:
            return
        scale = self.cfg.dim**-0.5
        for p in (self.position_embedding, self.slot_position_embedding, self.mask_embedding, self.mask_dino,
                  self.cls_token):
            nn.init.normal_(p, std=scale)
        nn.init.zeros_(self.register_tokens)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- pieces ------------------------------------------------------------------------------
    def _memory(self, slots: Tensor) -> Tensor:
        if slots.ndim != 3 or slots.shape[1:] != (self.cfg.num_slots, self.cfg.dim):
            raise ValueError(
                f"ViTDecoder: expected slots of shape (B, {self.cfg.num_slots}, {self.cfg.dim}), "
                f"got {tuple(slots.shape)}"
            )
        return self.norm_post1(slots + self.slot_position_embedding)

    def _run(self, memory: Tensor, query_token: Tensor, grid_pos: Tensor, norm: nn.LayerNorm) -> Tensor:
        """Build [cls | n mask tokens | registers], norm them, run [memory | queries]; return the n outputs."""
        bsz, num_mem = memory.shape[0], memory.shape[1]
        cls = self.cls_token + self.position_embedding[:, :1]
        queries = torch.cat([cls, query_token + grid_pos, self.register_tokens], dim=1)
        queries = norm(queries).expand(bsz, -1, -1)
        out = self.transformer(torch.cat([memory, queries], dim=1))
        return out[:, num_mem + 1 : num_mem + 1 + grid_pos.shape[1]]

    def pixel_positions(self, grid: int | None = None) -> Tensor:
        """(1, g*g, D) position grid of the pixel pass: the enc_grid table resampled by `resample_pos_grid`."""
        return resample_pos_grid(self.position_embedding[:, 1:], grid or self.cfg.dec_grid)

    # -- passes ------------------------------------------------------------------------------
    def forward_pixels(self, slots: Tensor, grid: int | None = None) -> Tensor:
        """Pixel pass: region tokens -> token grid for the CNN pixel decoder.

        Args:
            slots: (B, L, D) float, the post-quantization features (after the 12 -> D projection),
                L = cfg.num_slots.
            grid: output side g (default cfg.dec_grid = image_size / 16; 21 for 336 px).

        Returns:
            (B, D, g, g) float, the g*g mask-token outputs in row-major order.

        Raises:
            ValueError: wrong slot shape.
        """
        g = grid or self.cfg.dec_grid
        tokens = self._run(self._memory(slots), self.mask_embedding, self.pixel_positions(g), self.norm_post1)
        return rearrange(tokens, "b (h w) d -> b d h w", h=g)

    def forward_semantic(self, slots: Tensor) -> Tensor:
        """Semantic pass (training only in the official code): predict the VFM's last-level patch features.

        Args:
            slots: (B, L, D) float post-quantization features.

        Returns:
            (B, enc_grid**2, semantic_dim) float, compared by 1 - cosine with the frozen DINOv2's final-normed
            patch tokens (576 x 1024 at the full config).

        Raises:
            ValueError: wrong slot shape.
        """
        tokens = self._run(self._memory(slots), self.mask_dino, self.position_embedding[:, 1:], self.norm_post2)
        return self.proj(tokens)

    def forward(self, slots: Tensor, with_semantic: bool = False) -> tuple[Tensor, Tensor | None]:
        """Both passes sharing one memory computation.

        Returns:
            (pixel grid (B, D, g, g), semantic prediction (B, enc_grid**2, semantic_dim) or None).
        """
        memory = self._memory(slots)
        g = self.cfg.dec_grid
        pixels = self._run(memory, self.mask_embedding, self.pixel_positions(g), self.norm_post1)
        pixels = rearrange(pixels, "b (h w) d -> b d h w", h=g)
        if not with_semantic:
            return pixels, None
        semantic = self._run(memory, self.mask_dino, self.position_embedding[:, 1:], self.norm_post2)
        return pixels, self.proj(semantic)
