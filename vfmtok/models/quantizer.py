"""Vector quantizer with an l2-normalised codebook (VFMTok / LlamaGen `VectorQuantizer`, codebook_l2_norm=True;
shared/reference/vfmtok.md section 1.3).

* latents z and codebook rows e are l2-normalised; nearest code = argmin of the squared Euclidean distance
  |z|^2 + |e|^2 - 2 z.e (equal to the maximum cosine), computed in float32;
* straight-through estimator: forward value zq, gradient of z;
* codebook loss mean((zq - sg(z))^2) (weight 1) + commitment `commit_weight` * mean((sg(zq) - z)^2) (0.25);
* no EMA, no entropy loss (the official ratio is 0).

The official module also keeps a 65,536-entry rolling log of indices (`codebook_used`) for logging. Here the
model keeps no usage state: training and evaluation count codes with `vfmtok.metrics.codebook.CodebookUsage`;
the official buffer is accepted and ignored when loading their checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class QuantizerOutput:
    """Result of `VectorQuantizer.forward`.

    Attributes:
        quant: (B, L, d) straight-through code vectors (value = normalised code rows, gradient -> latents).
        codes: (B, L) int64 code indices.
        codebook_loss: scalar, mean((zq - sg(z))^2), weight 1.
        commit_loss: scalar, commit_weight * mean((sg(zq) - z)^2) (already weighted).
        distance_gap: (B, L) float32, second-smallest minus smallest squared distance (near-tie indicator).
        second_codes: (B, L) int64 second-nearest codes.
    """

    quant: torch.Tensor
    codes: torch.Tensor
    codebook_loss: torch.Tensor
    commit_loss: torch.Tensor
    distance_gap: torch.Tensor
    second_codes: torch.Tensor


class VectorQuantizer(nn.Module):
    """l2-normalised vector quantizer.

    Args:
        codebook_size: K codes (16384).
        dim: code dimension d (12).
        commit_weight: weight of the commitment loss (0.25).
    """

    def __init__(self, codebook_size: int = 16384, dim: int = 12, commit_weight: float = 0.25) -> None:
        super().__init__()
        self.codebook_size, self.dim, self.commit_weight = codebook_size, dim, commit_weight
        self.embedding = nn.Embedding(codebook_size, dim)
        if not self.embedding.weight.is_meta:
            with torch.no_grad():
                self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))

    def codebook(self) -> torch.Tensor:
        """(K, d) float32 l2-normalised codebook."""
        return F.normalize(self.embedding.weight.float(), dim=-1)

    def distances(self, latents: torch.Tensor) -> torch.Tensor:
        """Squared Euclidean distances between normalised latents (..., d) and every normalised code -> (..., K) fp32,
        in [0, 4]; computed in float32 with autocast off (also under a bf16/fp16 autocast region)."""
        with torch.autocast(device_type=latents.device.type, enabled=False):
            return self._distances(F.normalize(latents.float(), dim=-1))

    def _distances(self, z: torch.Tensor) -> torch.Tensor:
        flat = z.reshape(-1, self.dim)
        book = self.codebook()
        dist = flat.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1)[None] - 2.0 * flat @ book.t()
        return dist.view(*z.shape[:-1], self.codebook_size)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, L) int -> normalised code vectors (B, L, d) float32.

        Raises:
            ValueError: an index outside [0, K).
        """
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"code indices must lie in [0, {self.codebook_size}), got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        return F.embedding(codes.long(), self.codebook())

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize latents (B, L, d) (any float dtype; computed in float32).

        Returns:
            QuantizerOutput (see its attributes).
        """
        if latents.shape[-1] != self.dim:
            raise ValueError(f"latents must have last dim {self.dim}, got shape {tuple(latents.shape)}")
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = F.normalize(latents.float(), dim=-1)
            dist = self._distances(z)
            codes = dist.argmin(dim=-1)  # first index on exact ties, as the official argmin
            top2 = torch.topk(dist, k=min(2, self.codebook_size), dim=-1, largest=False)
            gap = (top2.values[..., -1] - top2.values[..., 0]).detach()
            second = torch.where(top2.indices[..., 0] == codes, top2.indices[..., -1], top2.indices[..., 0])
            zq = F.embedding(codes, self.codebook())
            codebook_loss = (zq - z.detach()).pow(2).mean()
            commit_loss = self.commit_weight * (zq.detach() - z).pow(2).mean()
            quant = z + (zq - z).detach()
        return QuantizerOutput(quant, codes, codebook_loss, commit_loss, gap, second)
