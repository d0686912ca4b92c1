"""Discriminators for tokenizer training: the paper's frozen-DINO discriminator and a PatchGAN alternative.

`DinoDiscriminator` (official `dinogan`, shared/reference/vfmtok.md section 1.5; the StyleGAN-T / VAR design):
a frozen DINO (v1) ViT-S/16 (timm `vit_small_patch16_224.dino`, official file `dino_deitsmall16_pretrain.pth`, key
bias zeroed) sees the image at 224 px; its tokens after the patch embedding and after blocks 2, 5, 8, 11 (0-based),
each with the CLS token added ("readout"), feed 5 trainable heads
`SNConv1d(k=1) -> BatchNormLocal -> LeakyReLU(0.2) -> residual[SNConv1d(k=9, circular) -> BNLocal -> LReLU] ->
SNConv1d(->1)` giving one logit per token; the logits of all heads are concatenated.

`PatchGANDiscriminator`: the taming-transformers / LlamaGen `NLayerDiscriminator` (ndf 64, 3 layers, BatchNorm).
Both take (B, 3, H, W) images in [-1, 1] and return logits (B, N) (float32).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_FILE = "dino_deitsmall16_pretrain.pth"


class BatchNormLocal(nn.Module):
    """Batch norm over "virtual batches" of `virtual_bs` samples, no running statistics (StyleGAN-T).

    Input (B, C, L): the batch is split into G = ceil(B / virtual_bs) contiguous groups (B must be divisible by
    G); each group is normalised with its own mean / biased variance over (samples, L), then a per-channel
    affine is applied.
    """

    def __init__(self, channels: int, virtual_bs: int = 8, eps: float = 1e-5) -> None:
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        groups = math.ceil(b / self.virtual_bs)
        if b % groups:
            raise ValueError(f"BatchNormLocal: batch {b} is not divisible into {groups} virtual batches")
        xg = x.float().reshape(groups, b // groups, c, length)
        mean = xg.mean(dim=(1, 3), keepdim=True)
        var = xg.var(dim=(1, 3), keepdim=True, unbiased=False)
        xg = (xg - mean) / torch.sqrt(var + self.eps)
        return xg.reshape(b, c, length) * self.weight[None, :, None] + self.bias[None, :, None]


def _sn_conv1d(cin: int, cout: int, kernel: int) -> nn.Module:
    return spectral_norm(nn.Conv1d(cin, cout, kernel, padding=kernel // 2, padding_mode="circular"))


class _Block(nn.Sequential):
    def __init__(self, channels: int, kernel: int, virtual_bs: int) -> None:
        super().__init__(_sn_conv1d(channels, channels, kernel), BatchNormLocal(channels, virtual_bs), nn.LeakyReLU(0.2))


class DiscHead(nn.Module):
    """(B, C, N) token features -> (B, N) logits."""

    def __init__(self, channels: int, virtual_bs: int = 8) -> None:
        super().__init__()
        self.block1 = _Block(channels, 1, virtual_bs)
        self.block2 = _Block(channels, 9, virtual_bs)
        self.cls = _sn_conv1d(channels, 1, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        h = self.block1(feats)
        h = (self.block2(h) + h) / math.sqrt(2.0)  # residual block, variance-preserving
        return self.cls(h).squeeze(1)


class DinoDiscriminator(nn.Module):
    """Frozen DINO ViT-S/16 trunk with 5 trainable token heads (module docstring).

    Args:
        weights: "pretrained" (timm's `vit_small_patch16_224.dino` from the hub cache), "random" (tests), or a path
            to the official `dino_deitsmall16_pretrain.pth` / a timm state dict of the same model.
        model_name: timm model name of the trunk.
        input_size: side the trunk sees (224); larger inputs are randomly cropped with p=0.5, else area-resized.
        hooks: 0-based block indices whose outputs feed heads (plus the patch-embedding output).
        virtual_bs: BatchNormLocal virtual batch size (8).
        timm_kwargs: extra `timm.create_model` keywords (e.g. a smaller depth for tests).

    Raises:
        FileNotFoundError: `weights` is a missing file. RuntimeError: pretrained weights cannot be fetched offline
            (names the file and how to pass it). ValueError: the file does not fit the trunk (names the keys).
    """

    def __init__(self, weights: str | os.PathLike = "pretrained", model_name: str = "vit_small_patch16_224.dino",
                 input_size: int = 224, hooks: tuple[int, ...] = (2, 5, 8, 11), virtual_bs: int = 8,
                 timm_kwargs: dict | None = None) -> None:
        super().__init__()
        import timm

        kwargs = dict(timm_kwargs or {})
        kwargs.setdefault("img_size", input_size)
        pretrained = str(weights) == "pretrained"
        try:
            trunk = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **kwargs)
        except Exception as err:  # offline hub, missing cache ...
            if not pretrained:
                raise
            raise RuntimeError(
                f"cannot load the DINO discriminator weights for {model_name!r} ({type(err).__name__}: {err}). "
                f"Download the official {DINO_FILE} (dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/) and pass "
                "it with --disc-weights PATH, or use --disc patchgan."
            ) from err
        if str(weights) not in ("pretrained", "random"):
            self._load_file(trunk, Path(weights))
        with torch.no_grad():  # zero the key bias (as the official code; softmax-invariant)
            for blk in trunk.blocks:
                if getattr(blk.attn.qkv, "bias", None) is not None:
                    dim = blk.attn.qkv.bias.shape[0] // 3
                    blk.attn.qkv.bias[dim : 2 * dim] = 0
        trunk.requires_grad_(False).eval()
        self.trunk = trunk
        self.input_size, self.hooks = input_size, tuple(hooks)
        if max(self.hooks) >= len(trunk.blocks):
            raise ValueError(f"hooks {self.hooks} exceed the trunk's {len(trunk.blocks)} blocks")
        self.heads = nn.ModuleList(DiscHead(trunk.embed_dim, virtual_bs) for _ in range(len(self.hooks) + 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @staticmethod
    def _load_file(trunk: nn.Module, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"--disc-weights {path}: file not found (expected the official {DINO_FILE})")
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("teacher", "student", "model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
        state = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith("head")}
        missing, unexpected = trunk.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: does not fit the DINO ViT-S/16 trunk: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def train(self, mode: bool = True) -> "DinoDiscriminator":
        super().train(mode)
        self.trunk.eval()  # frozen trunk: always eval
        return self

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = ((images.float() + 1) / 2 - self.mean) / self.std
        size = self.input_size
        if x.shape[-1] > size and x.shape[-2] > size and self.training and torch.rand(()) < 0.5:
            top = int(torch.randint(0, x.shape[-2] - size + 1, ()))
            left = int(torch.randint(0, x.shape[-1] - size + 1, ()))
            return x[..., top : top + size, left : left + size]
        if x.shape[-2:] != (size, size):
            mode = "area" if x.shape[-1] >= size else "bilinear"
            x = F.interpolate(x, size=(size, size), mode=mode)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> logits (B, (len(hooks) + 1) * N_patches) float32.

        Gradients flow to `images` (for the generator loss); when they are not needed the trunk runs without
        autograd.
        """
        x = self._prepare(images)
        prefix = getattr(self.trunk, "num_prefix_tokens", 1)
        feats = []
        with torch.set_grad_enabled(torch.is_grad_enabled() and images.requires_grad):
            tokens = self.trunk._pos_embed(self.trunk.patch_embed(x))
            tokens = self.trunk.norm_pre(tokens)
            feats.append(tokens)
            for i, blk in enumerate(self.trunk.blocks):
                if i > max(self.hooks):
                    break
                tokens = blk(tokens)
                if i in self.hooks:
                    feats.append(tokens)
        logits = []
        for head, f in zip(self.heads, feats):
            readout = f[:, prefix:] + f[:, :1]  # patch tokens + CLS
            logits.append(head(readout.float().transpose(1, 2)))
        return torch.cat(logits, dim=1)


class PatchGANDiscriminator(nn.Module):
    """taming/LlamaGen `NLayerDiscriminator`: conv(4, s2) + LReLU, then `n_layers` conv-BN-LReLU, conv -> 1 channel.

    Args:
        ndf: base width (64); n_layers: downsampling layers (3); in_channels: 3.

    Input (B, 3, H, W) in [-1, 1]; output logits (B, h*w) float32 (a 30x30 patch grid at 256 px).
    """

    def __init__(self, ndf: int = 64, n_layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False), nn.BatchNorm2d(ndf * mult),
                       nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.main(images.float()).flatten(1)


def create_discriminator(kind: str, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module | None:
    """'dino' -> `DinoDiscriminator(weights or 'pretrained', **kwargs)`, 'patchgan' -> `PatchGANDiscriminator`,
    'none' -> None.

    Raises:
        ValueError: unknown kind.
    """
    if kind == "dino":
        return DinoDiscriminator(weights if weights is not None else "pretrained", **kwargs)
    if kind == "patchgan":
        return PatchGANDiscriminator(**kwargs)
    if kind == "none":
        return None
    raise ValueError(f"--disc {kind!r}: expected dino, patchgan or none")
