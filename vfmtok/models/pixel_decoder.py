"""VQGAN-style CNN pixel decoder of VFMTok: token grid (B, z, g, g) -> image (B, 3, 16g, 16g).

Behaviour reproduced from the authors' code (`Decoder` in `vfmtok/tokenizer/vq_model.py`, CVMI-Lab/VFMTok
@ 828c780; the LlamaGen/taming VQGAN decoder without attention in the up path), described in
shared/reference/vfmtok.md section 1.4 and shared/reference/checkpoints/README.md section 2.

Full config (z 512, ch 128, ch_mult (1,1,2,2,4), 2 ResBlocks per level), 21x21 -> 336x336:

    conv_in 3x3 512->512 @21 ── mid [ResBlock, AttnBlock (1 head), ResBlock] @21
    conv_blocks.0: 2 x ResBlock 512     @21  + upsample (nearest x2, conv 3x3) -> 42
    conv_blocks.1: ResBlock 512->256, 256 @42 + upsample -> 84
    conv_blocks.2: 2 x ResBlock 256     @84  + upsample -> 168
    conv_blocks.3: ResBlock 256->128, 128 @168 + upsample -> 336
    conv_blocks.4: 2 x ResBlock 128     @336 (no upsample)
    norm_out (GroupNorm) ── SiLU ── conv_out 3x3 128->3     (unbounded output, no tanh)

All GroupNorms: 32 groups, eps 1e-6. conv_blocks are indexed lowest resolution first. Parameter names equal
the official keys under the prefix `decoder.` (32,799,107 params at the full config).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


@dataclass
class PixelDecoderConfig:
    """Shape of the CNN pixel decoder.

    Attributes:
        z_channels: input channels (= the ViT decoder width; official 512).
        ch: base channel count (official 128); every channel count must be a multiple of 32 (GroupNorm).
        ch_mult: per-level multipliers, listed highest resolution first as in VQGAN (official (1,1,2,2,4));
            the decoder runs them in reverse and upsamples x2 between levels, so the output side is
            g * 2**(len(ch_mult) - 1).
        num_res_blocks: VQGAN's argument; each level holds num_res_blocks + 1 ResBlocks (official 1 -> 2).
        out_channels: image channels (3).
        dropout: dropout inside ResBlocks (official 0.0).
    """

    z_channels: int = 512
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 1
    out_channels: int = 3
    dropout: float = 0.0

    def __post_init__(self) -> None:
        self.ch_mult = tuple(self.ch_mult)
        if not self.ch_mult or any(m <= 0 for m in self.ch_mult):
            raise ValueError(f"PixelDecoderConfig: ch_mult must be non-empty and positive, got {self.ch_mult}")
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
        if bad:
            raise ValueError(f"PixelDecoderConfig: channel counts {bad} are not multiples of 32 (GroupNorm groups)")
        if self.z_channels <= 0 or self.num_res_blocks < 0:
            raise ValueError(
                f"PixelDecoderConfig: need z_channels > 0 and num_res_blocks >= 0, "
                f"got {self.z_channels}, {self.num_res_blocks}"
            )

    @property
    def upsample_factor(self) -> int:
        """Output side / input side (16 for the official 5 levels)."""
        return 2 ** (len(self.ch_mult) - 1)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3-GN-SiLU-dropout-conv3x3 plus a skip (1x1 `nin_shortcut` when channels change)."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, feats: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(feats)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        skip = feats if self.nin_shortcut is None else self.nin_shortcut(feats)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over H*W positions (q/k/v/proj_out are 1x1 convs), residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); softmax(q k^T / sqrt(C)) v over all positions."""
        h = self.norm(feats)
        height = h.shape[-2]
        q, k, v = (rearrange(conv(h), "b c h w -> b 1 (h w) c") for conv in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return feats + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=height))


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv (`upsample.conv`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, feats: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(feats, scale_factor=2.0, mode="nearest"))


class UpLevel(nn.Module):
    """One resolution level: `res` ResBlocks, then an optional `upsample`."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, upsample: bool, dropout: float) -> None:
        super().__init__()
        self.res = nn.ModuleList(
            ResBlock(in_ch if i == 0 else out_ch, out_ch, dropout) for i in range(num_blocks)
        )
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, feats: Tensor) -> Tensor:
        for block in self.res:
            feats = block(feats)
        return feats if self.upsample is None else self.upsample(feats)


class PixelDecoder(nn.Module):
    """VQGAN-style CNN decoder (official `decoder`).

    Args:
        cfg: the shape; `PixelDecoderConfig()` is the paper's configuration.

    Init: PyTorch defaults (the official decoder has no custom init).
    """

    def __init__(self, cfg: PixelDecoderConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or PixelDecoderConfig()
        levels = len(cfg.ch_mult)
        block_in = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList(
            [ResBlock(block_in, block_in, cfg.dropout), AttnBlock(block_in), ResBlock(block_in, block_in, cfg.dropout)]
        )
        blocks = []
        for i in range(levels):
            block_out = cfg.ch * cfg.ch_mult[levels - 1 - i]
            blocks.append(UpLevel(block_in, block_out, cfg.num_res_blocks + 1, i != levels - 1, cfg.dropout))
            block_in = block_out
        self.conv_blocks = nn.ModuleList(blocks)
        self.norm_out = _group_norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, grid: Tensor) -> Tensor:
        """Decode a token grid to pixels.

        Args:
            grid: (B, z_channels, g, g) float (the ViT decoder's pixel pass; g = 21 at 336 px).

        Returns:
            (B, out_channels, g * upsample_factor, g * upsample_factor) float, nominally in [-1, 1] but
            unbounded (no tanh); clamp or use `vfmtok.imageops.to_uint8` to convert.

        Raises:
            ValueError: `grid` is not 4-D with z_channels channels.
        """
        if grid.ndim != 4 or grid.shape[1] != self.cfg.z_channels:
            raise ValueError(
                f"PixelDecoder: expected a (B, {self.cfg.z_channels}, g, g) grid, got {tuple(grid.shape)}"
            )
        feats = self.conv_in(grid)
        for block in self.mid:
            feats = block(feats)
        for level in self.conv_blocks:
            feats = level(feats)
        return self.conv_out(F.silu(self.norm_out(feats)))
