"""VFMTok tokenizer: frozen VFM -> region-adaptive quantization -> ViT mask-token decoder -> CNN pixel decoder.

Paper: "Vision Foundation Models as Effective Visual Tokenizers for Autoregressive Image Generation"
(arXiv 2507.08441). Behaviour and parameter names follow the authors' `VQModel` (CVMI-Lab/VFMTok @ 828c780);
see shared/reference/vfmtok.md section 1 and docs/tokenizer.md.

    images (B,3,H,W) in [-1,1] ── FrozenVFM ──▶ L levels (B, N, C)            N = (S/14)^2 = 576, C = 1024
      ── encode_transformer (RegionEncoder) ──▶ slots (B, Q, D)               Q = 256, D = 512
      ── pre_slots_quant (D -> d, fp32) ── slot_quantize (fp32) ──▶ codes (B, Q) int64   d = 12, K = 16384
      ── post_slots_quant (d -> D) ── decode_transformer (ViTDecoder) ──▶ (B, D, g, g)   g = S/16 = 21
      ── decoder (PixelDecoder) ──▶ recon (B, 3, S, S), unbounded               S = 336

The frozen encoder is any entry of `vfmtok.models.encoders` (DINOv2 by default; other timm ViTs, CNN pyramids
whose levels differ in grid size and width, VGG16). It is NOT a registered submodule: it is kept in a plain attribute so that it never appears in
`state_dict()`, `parameters()` (optimizers, DDP) or saved weights, while `.to()/.cuda()/.half()` still move
it (`_apply` is overridden). Deep copies (e.g. an EMA model) share the same frozen encoder until one of them
is moved or cast, which then takes a private copy (so `copy.deepcopy(tok).to("cpu")` leaves `tok` alone).

Layout: `vfmtok.models.tokenizer_config` (TokenizerConfig, presets, resolve_config), this module (the model),
`vfmtok.models.tokenizer_io` (create / save / load, the authors' `.pt`; it imports this module, never the other
way round).
"""
from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.models.pixel_decoder import PixelDecoder, PixelDecoderConfig
from vfmtok.models.quantizer import VectorQuantizer
from vfmtok.models.region_encoder import RegionEncoder
from vfmtok.models.cnn_encoder import FrozenCNN
from vfmtok.models.encoders import build_encoder
from vfmtok.models.tokenizer_config import TokenizerConfig
from vfmtok.models.vfm import FrozenVFM
from vfmtok.models.vit_decoder import ViTDecoder, ViTDecoderConfig

__all__ = ["DECODE_ONLY", "TokenizerOutput", "VFMTokenizer"]

DECODE_ONLY = "none (decode-only)"  # `encoder_source` of a tokenizer built without its frozen encoder


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerOutput:
    """Training forward result (see `VFMTokenizer.forward`).

    Attributes:
        recon: (B, 3, S, S) float reconstruction, unbounded (nominally [-1, 1]).
        codes: (B, L) int64 code indices, raster order of the query grid.
        vq_codebook_loss: scalar, mean((zq - sg(z))^2) (weight 1 applied).
        vq_commit_loss: scalar, 0.25 * mean((sg(zq) - z)^2) (weight applied).
        semantic_pred: (B, P, C) predicted encoder features of the semantic level, or None.
        semantic_target: (B, P, C) the frozen encoder's semantic level (`config.semantic_level`; default the last,
            final-normed for ViTs as in the paper; no grad), or None.
    """

    recon: torch.Tensor
    codes: torch.Tensor
    vq_codebook_loss: torch.Tensor
    vq_commit_loss: torch.Tensor
    semantic_pred: torch.Tensor | None = None
    semantic_target: torch.Tensor | None = None


_HOLDERS: "weakref.WeakKeyDictionary[nn.Module, weakref.WeakSet]" = weakref.WeakKeyDictionary()


class _SharedFrozen:
    """Holds the frozen encoder outside the module tree.

    Deep copies of a tokenizer (e.g. an EMA model) share the encoder (it never changes) until one of them is
    moved or cast to something else: that one then gets its own copy first (copy on move), so moving a copy
    never moves the encoder of the original.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        _HOLDERS.setdefault(module, weakref.WeakSet()).add(self)

    def is_shared(self) -> bool:
        return len(_HOLDERS.get(self.module, ())) > 1

    def unshare(self) -> None:
        """Replace the shared encoder by a private deep copy."""
        _HOLDERS[self.module].discard(self)
        self.module = copy.deepcopy(self.module)
        _HOLDERS.setdefault(self.module, weakref.WeakSet()).add(self)

    def __deepcopy__(self, memo: dict) -> "_SharedFrozen":
        return _SharedFrozen(self.module)

    def __getstate__(self) -> dict:
        return {"module": self.module}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["module"])


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class VFMTokenizer(nn.Module):
    """The VFMTok image tokenizer.

    Args:
        config: a `TokenizerConfig`.
        encoder_weights: where the frozen encoder's weights come from: None = the config's default
            (timm pretrained source when `vfm_pretrained`, else the seeded random init), "random", a file
            (timm state dict or the official `dinov2_vitl14_reg4_pretrain.pth` layout) or such a state dict.
        with_encoder: False builds a decode-only tokenizer: the frozen encoder is built on the meta device only
            to read its shape (width, patch, grid) and then dropped, so no encoder memory is allocated and no
            304 M-parameter random init runs (DINOv2-L). `decode_codes` works as usual; `encode`, `forward`,
            `trace` and `vfm` raise RuntimeError. `encoder_weights` must then be None.

    Raises:
        RuntimeError / FileNotFoundError / ValueError: encoder weights unavailable or not fitting (the message
            names the file and where to put it); wrong levels, semantic level, or an image size the encoder's
            patch does not divide (see `vfmtok.models.encoders.build_encoder`); encoder_weights given with
            with_encoder=False.
    """

    def __init__(self, config: TokenizerConfig, encoder_weights: str | Path | dict | None = None, *,
                 with_encoder: bool = True) -> None:
        super().__init__()
        self._config = config
        if not with_encoder and encoder_weights is not None:
            raise ValueError(f"encoder_weights={encoder_weights!r} given for a decode-only tokenizer "
                             "(with_encoder=False builds no encoder)")
        if encoder_weights is None:
            encoder_weights = "pretrained" if config.vfm_pretrained else "random"
        self.encoder_source = ("<state dict>" if isinstance(encoder_weights, dict) else str(encoder_weights)
                               ) if with_encoder else DECODE_ONLY
        if with_encoder:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.vfm_seed)
                vfm = build_encoder(config, encoder_weights)
        else:  # shape only: nothing allocated, no init, and the global RNG is left alone
            with torch.device("meta"):
                vfm = build_encoder(config, "random")
        config.vfm_levels = tuple(vfm.levels)  # () (family default) resolved, so config.json records the levels
        object.__setattr__(self, "_frozen", _SharedFrozen(vfm) if with_encoder else None)
        c = config
        sem = c.semantic_level % len(vfm.levels)
        self.encode_transformer = RegionEncoder(
            in_dim=vfm.level_dims, dim=c.dim, levels=len(vfm.levels), num_queries=c.num_queries,
            depth=c.encoder_depth, heads=c.encoder_heads, deform_heads=c.deform_heads, points=c.deform_points,
            ffn_dim=c.encoder_ffn_dim)
        self.pre_slots_quant = nn.Linear(c.dim, c.codebook_dim)
        self.slot_quantize = VectorQuantizer(c.codebook_size, c.codebook_dim, c.commit_weight)
        self.post_slots_quant = nn.Linear(c.codebook_dim, c.dim)
        self.decode_transformer = ViTDecoder(ViTDecoderConfig(
            dim=c.dim, depth=c.decoder_depth, num_heads=c.decoder_heads, mlp_dim=c.decoder_mlp_dim,
            num_slots=c.num_queries, enc_grid=vfm.level_grids[sem], dec_grid=c.decoder_grid,
            num_registers=c.decoder_registers, semantic_dim=c.semantic_dim or vfm.level_dims[sem],
            attn_dropout=c.decoder_attn_dropout))
        self.decoder = PixelDecoder(PixelDecoderConfig(
            z_channels=c.dim, ch=c.pixel_ch, ch_mult=c.pixel_ch_mult, num_res_blocks=c.pixel_num_res_blocks))

    # -- frozen encoder plumbing --------------------------------------------------------------
    @property
    def config(self) -> TokenizerConfig:
        """The `TokenizerConfig` (image_size, codebook_size, num_tokens, ...)."""
        return self._config

    @property
    def has_encoder(self) -> bool:
        """False for a decode-only tokenizer (`with_encoder=False`), which holds no frozen encoder."""
        return self._frozen is not None

    @property
    def vfm(self) -> FrozenVFM | FrozenCNN:
        """The frozen encoder (`FrozenVFM` or `FrozenCNN`; not part of state_dict/parameters).

        Raises:
            RuntimeError: on a decode-only tokenizer (built with `with_encoder=False`).
        """
        if self._frozen is None:
            raise RuntimeError("this tokenizer was built decode-only (with_encoder=False): it holds no frozen "
                               "encoder, so it can decode codes but not encode images; load it with "
                               "with_encoder=True (and encoder weights) to encode")
        return self._frozen.module

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .half(), .to_empty() also move the VFM
        super()._apply(fn, recurse)
        holder = self._frozen
        if holder is None:  # decode-only
            return self
        if holder.is_shared():
            probe = next(holder.module.parameters(), None)
            if probe is not None and fn(probe) is not probe:  # a real move/cast: do not drag the other copies
                holder.unshare()
        holder.module._apply(fn, recurse)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that require grad (the frozen encoder is excluded by construction)."""
        return (p for p in self.parameters() if p.requires_grad)

    def vfm_features(self, images: torch.Tensor, return_input: bool = False):
        """Frozen multi-level features, computed without grad (see `FrozenVFM.forward`).

        Args:
            images: (B, 3, H, W) float in [-1, 1], any size.
            return_input: also return the preprocessed encoder input (B, 3, S, S).

        Returns:
            list of L tensors (B, N, C) (N = (S / patch)^2, last level final-normed), or (levels, input).
        """
        vfm = self.vfm
        ref = next(vfm.parameters())
        if ref.device != images.device:  # a deep copy moved elsewhere: follow the images
            vfm.to(images.device)
        return vfm(images, return_input=return_input)

    # -- pieces -------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(f"images must be float (B, 3, H, W) in [-1, 1], got {images.dtype} {tuple(images.shape)}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dim() != 2 or codes.shape[1] != self.config.num_tokens:
            raise ValueError(f"codes must be (B, {self.config.num_tokens}) integers, got shape {tuple(codes.shape)}")
        if codes.is_floating_point():
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")

    def _pre_quant(self, slots: torch.Tensor) -> torch.Tensor:
        """(B, L, D) slots -> (B, L, d) float32 latents (D -> 12 projection in fp32 with autocast off: under bf16
        autocast the 12-d latent would be rounded to bf16 before the fp32 distances, and bf16 and fp32 passes
        would pick different codes)."""
        layer = self.pre_slots_quant
        with torch.autocast(device_type=slots.device.type, enabled=False):
            bias = layer.bias.float() if layer.bias is not None else None
            return F.linear(slots.float(), layer.weight.float(), bias)

    def _post_quant(self, quant: torch.Tensor) -> torch.Tensor:
        """(B, L, d) fp32 code vectors -> (B, L, D) (12 -> 512 projection, in the module's dtype)."""
        return self.post_slots_quant(quant.to(self.post_slots_quant.weight.dtype))

    def decode_slots(self, post_quant: torch.Tensor, with_semantic: bool = False):
        """(B, L, D) post-quant features -> (recon (B, 3, S, S), semantic (B, P, C) or None)."""
        grid, semantic = self.decode_transformer(post_quant, with_semantic=with_semantic)
        return self.decoder(grid), semantic

    # -- public API ---------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, return_semantic: bool = True) -> TokenizerOutput:
        """Training forward: encode, quantize (straight-through), decode.

        Args:
            images: (B, 3, H, W) float in [-1, 1] (resized to S for the encoder).
            return_semantic: also run the semantic pass and return the VFM target.

        Returns:
            TokenizerOutput with recon (B, 3, S, S), codes (B, L), VQ losses, semantic pred/target (B, P, C).
        """
        self._check_images(images)
        levels = self.vfm_features(images)
        slots = self.encode_transformer(levels)
        q = self.slot_quantize(self._pre_quant(slots))
        recon, semantic = self.decode_slots(self._post_quant(q.quant), with_semantic=return_semantic)
        target = levels[self.config.semantic_level].detach() if return_semantic else None
        return TokenizerOutput(recon, q.codes, q.codebook_loss, q.commit_loss, semantic, target)

    @torch.no_grad()
    def encode(self, images: torch.Tensor, return_distance_gap: bool = False, return_second: bool = False):
        """Images -> code indices.

        Args:
            images: (B, 3, H, W) float in [-1, 1], any size (resized to S as the official encoder does).
            return_distance_gap: also return (B, L) float32 second-smallest minus smallest squared distance.
            return_second: also return (B, L) int64 second-nearest codes (VFMTok-RAR's top-2 augmentation).

        Returns:
            codes (B, L) int64 in [0, K), raster order; or a tuple (codes, gap?, second?) in that order.
        """
        self._check_images(images)
        slots = self.encode_transformer(self.vfm_features(images))
        q = self.slot_quantize(self._pre_quant(slots))
        extra = ([q.distance_gap] if return_distance_gap else []) + ([q.second_codes] if return_second else [])
        return (q.codes, *extra) if extra else q.codes

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (B, L) int -> images (B, 3, S, S) float, unbounded (nominally [-1, 1]).

        Raises:
            ValueError: wrong shape, non-integer codes, or an index outside [0, K).
        """
        self._check_codes(codes)
        quant = self.slot_quantize.lookup(codes.to(self.post_slots_quant.weight.device))
        recon, _ = self.decode_slots(self._post_quant(quant))
        return recon

    @torch.no_grad()
    def trace(self, images: torch.Tensor, semantic: bool = True) -> dict[str, torch.Tensor]:
        """Every intermediate of an inference pass, named like the authors' parity fixtures.

        Keys: backbone_input, dino_levels.{i}, projected_levels.{i}, reference_points,
        deform_sampling_locations.{l}, deform_attention_weights.{l}, encoder_layer_outputs.{l}, slots,
        pre_quant, indices, quant, code_distance_gap, post_quant, pixel_grid_tokens, decoded,
        vq_codebook_loss, vq_commit_loss and (with `semantic`) semantic_pred.
        """
        self._check_images(images)
        out: dict[str, torch.Tensor] = {}
        levels, out["backbone_input"] = self.vfm_features(images, return_input=True)
        debug: dict[str, Any] = {}
        slots = self.encode_transformer(levels, debug=debug)
        for i, feats in enumerate(levels):
            out[f"dino_levels.{i}"] = feats
        for i, feats in enumerate(debug["projected_levels"]):
            out[f"projected_levels.{i}"] = feats
        out["reference_points"] = debug["reference_points"]
        for i, info in enumerate(debug["layers"]):
            out[f"deform_sampling_locations.{i}"] = info["sampling_locations"]
            out[f"deform_attention_weights.{i}"] = info["attention_weights"]
            out[f"encoder_layer_outputs.{i}"] = info["output"]
        out["slots"] = slots
        out["pre_quant"] = pre = self._pre_quant(slots)
        q = self.slot_quantize(pre)
        out.update(indices=q.codes, quant=q.quant, code_distance_gap=q.distance_gap,
                   vq_codebook_loss=q.codebook_loss, vq_commit_loss=q.commit_loss)
        out["post_quant"] = post = self._post_quant(q.quant)
        out["pixel_grid_tokens"], sem = self.decode_transformer(post, with_semantic=semantic)
        out["decoded"] = self.decoder(out["pixel_grid_tokens"])
        if semantic:
            out["semantic_pred"] = sem
        return out
