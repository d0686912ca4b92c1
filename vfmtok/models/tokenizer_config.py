"""`TokenizerConfig`, the tokenizer presets ("vfmtok-l" = the paper's configuration, "tiny" for tests and the
demo) and `resolve_config` (preset name / config / dict + overrides -> config).

`TOKENIZER_PRESETS` maps each preset name to a config factory. The model itself is in `vfmtok.models.tokenizer`.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from vfmtok.configs import config_from_dict, config_to_dict, preset_lookup


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerConfig:
    """Everything that defines a tokenizer's shape (JSON-serialisable; defaults = the paper's `vfmtok-l`).

    Attributes:
        image_size: S, pixels of the square image the VFM sees and the decoder outputs (336).
        encoder: registered frozen encoder (`vfmtok.models.encoders.ENCODERS`: "dinov2" (paper), "clip-b16",
            "siglip-b16", "eva02-b14", "resnet50", "convnext-t", "vgg16-imagenet", "timm-vit", "timm-cnn"); a
            `resolve_config` override `encoder=NAME` (or "vit:TIMM_NAME" / "cnn:TIMM_NAME") also resets the vfm_*
            fields and semantic_level to the entry's defaults.
        vfm_name: timm model name of the frozen encoder ("vit_large_patch14_reg4_dinov2.lvd142m").
        vfm_levels: feature levels: ViT 0-based block indices ((5, 11, 17, 23); the last is final-normed), CNN
            `feature_info` stage indices; () = the family default (filled in when the model is built).
        vfm_kwargs: extra timm constructor keywords (a small random ViT for `tiny`).
        vfm_pretrained: True: weights come from the encoder's pretrained source or `encoder_weights`; False: random
            init, reproducible from `vfm_seed` (used by `tiny`).
        vfm_seed: seed of the random encoder init when `vfm_pretrained` is False.
        dim: D, width of the region encoder and ViT decoder (512).
        num_queries: Q, tokens per image; must be a square (256 = 16 x 16).
        encoder_depth: deformable layers (6).
        encoder_heads: self-attention heads of the region encoder (8).
        deform_heads: deformable-attention heads (8).
        deform_points: sampling points per head and level (4).
        encoder_ffn_dim: FFN width of the region encoder (min(4 D, 1024) = 1024).
        codebook_size: K codes (16384).
        codebook_dim: d, code vector size (12).
        commit_weight: commitment loss weight (0.25).
        decoder_depth, decoder_heads, decoder_mlp_dim: ViT decoder blocks (6), heads (8), nominal FFN (2048 ->
            SwiGLU 1368).
        decoder_registers: decoder register tokens (4; they influence nothing).
        decoder_attn_dropout: attention dropout of the ViT decoder in training (0.1).
        semantic_dim: width of the predicted VFM features; 0 = the semantic level's width (1024 for DINOv2-L).
        semantic_level: index into the levels of the semantic-reconstruction target (-1 = the last, paper); the
            ViT decoder's semantic pass predicts that level's grid.
        pixel_ch, pixel_ch_mult, pixel_num_res_blocks: CNN pixel decoder (128, (1, 1, 2, 2, 4), 1); the
            decoder grid is g = S / 2**(len(pixel_ch_mult) - 1) (21 at 336 px).
    """

    image_size: int = 336
    encoder: str = "dinov2"
    vfm_name: str = "vit_large_patch14_reg4_dinov2.lvd142m"
    vfm_levels: tuple[int, ...] = (5, 11, 17, 23)
    vfm_kwargs: dict[str, Any] = field(default_factory=dict)
    vfm_pretrained: bool = True
    vfm_seed: int = 0
    dim: int = 512
    num_queries: int = 256
    encoder_depth: int = 6
    encoder_heads: int = 8
    deform_heads: int = 8
    deform_points: int = 4
    encoder_ffn_dim: int = 1024
    codebook_size: int = 16384
    codebook_dim: int = 12
    commit_weight: float = 0.25
    decoder_depth: int = 6
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    decoder_registers: int = 4
    decoder_attn_dropout: float = 0.1
    semantic_dim: int = 0
    semantic_level: int = -1
    pixel_ch: int = 128
    pixel_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    pixel_num_res_blocks: int = 1

    def __post_init__(self) -> None:
        from vfmtok.models.encoders import PREFIXES, get_spec

        for prefix, family in PREFIXES.items():  # "vit:NAME" given as a plain value: the timm model is NAME
            if self.encoder.startswith(prefix):
                self.encoder, self.vfm_name = family, self.encoder[len(prefix):]
        get_spec(self.encoder)  # unknown names fail here, listing the registered ones
        self.vfm_levels = tuple(self.vfm_levels)
        self.pixel_ch_mult = tuple(self.pixel_ch_mult)
        side = math.isqrt(self.num_queries)
        if side * side != self.num_queries:
            raise ValueError(f"TokenizerConfig: num_queries={self.num_queries} must be a perfect square")
        up = 2 ** (len(self.pixel_ch_mult) - 1)
        if self.image_size > 0 and self.image_size % up:
            levels = len(self.pixel_ch_mult)
            while self.image_size % 2 ** (levels - 1):
                levels -= 1
            fits = "[" + ",".join(str(m) for m in self.pixel_ch_mult[:levels]) + "]"
            fit_up = 2 ** (levels - 1)
            raise ValueError(f"TokenizerConfig: image_size={self.image_size} must be divisible by the pixel decoder's "
                             f"upsampling factor {up} (2**(len(pixel_ch_mult)-1)); keep the first {levels} "
                             f"multipliers, --set 'pixel_ch_mult={fits}' (the decoder then upsamples "
                             f"{self.image_size // fit_up} -> {self.image_size} px{'' if fit_up > 1 else ', not at all'}), "
                             f"or use an image_size divisible by {up}")
        for name in ("dim", "encoder_depth", "codebook_size", "codebook_dim", "image_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"TokenizerConfig: {name} must be positive, got {getattr(self, name)}")

    @property
    def num_tokens(self) -> int:
        """Tokens per image L (= num_queries)."""
        return self.num_queries

    @property
    def token_grid(self) -> int:
        """Side of the token (query) grid (16)."""
        return math.isqrt(self.num_queries)

    @property
    def decoder_grid(self) -> int:
        """Side g of the pixel decoder's input grid (S / 16 = 21)."""
        return self.image_size // 2 ** (len(self.pixel_ch_mult) - 1)


def _vfmtok_l() -> TokenizerConfig:
    return TokenizerConfig()


def _tiny() -> TokenizerConfig:
    return TokenizerConfig(
        image_size=112,
        vfm_name="vit_small_patch14_reg4_dinov2",
        vfm_levels=(0, 1, 2, 3),
        vfm_kwargs={"embed_dim": 64, "depth": 4, "num_heads": 2},
        vfm_pretrained=False,
        dim=64, num_queries=64, encoder_depth=2, encoder_heads=4, deform_heads=4, deform_points=4,
        encoder_ffn_dim=128, codebook_size=1024, codebook_dim=8,
        decoder_depth=2, decoder_heads=4, decoder_mlp_dim=128, decoder_attn_dropout=0.0,
        pixel_ch=32, pixel_ch_mult=(1, 1, 2, 2, 2), pixel_num_res_blocks=0,
    )


TOKENIZER_PRESETS: dict[str, Callable[[], TokenizerConfig]] = {"vfmtok-l": _vfmtok_l, "tiny": _tiny}


def tokenizer_preset(name: str) -> TokenizerConfig:
    """The `TokenizerConfig` of preset `name`.

    Raises:
        KeyError: unknown preset (lists the presets).
    """
    return preset_lookup(TOKENIZER_PRESETS, name, "tokenizer")


def resolve_config(name_or_config: str | TokenizerConfig | dict, **overrides: Any) -> TokenizerConfig:
    """A preset name, a config, or a config dict (+ field overrides) -> TokenizerConfig.

    Raises:
        KeyError: unknown preset (lists the presets). ValueError: unknown override/config keys or encoder name.
    """
    if isinstance(name_or_config, str):
        config = tokenizer_preset(name_or_config)
    elif isinstance(name_or_config, dict):
        config = config_from_dict(TokenizerConfig, name_or_config)
    elif isinstance(name_or_config, TokenizerConfig):
        config = copy.deepcopy(name_or_config)
    else:
        raise TypeError(f"expected a preset name, TokenizerConfig or dict, got {type(name_or_config).__name__}")
    if overrides:
        merged = {**config_to_dict(config), **overrides}
        if "encoder" in overrides:  # the entry's defaults first, explicit overrides on top
            from vfmtok.models.encoders import encoder_fields

            merged.update(encoder_fields(str(overrides["encoder"])))
            merged.update({k: v for k, v in overrides.items() if k != "encoder"})
        config = config_from_dict(TokenizerConfig, merged)
    return config
