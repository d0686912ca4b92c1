"""Frozen CNN feature pyramid (timm `features_only`: ResNet, ConvNeXt, VGG, ...) as the tokenizer's encoder.

Same interface as `vfmtok.models.vfm.FrozenVFM` (see `vfmtok.models.encoders`): images in [-1, 1] -> resize to
`image_size` (kornia-style antialiased bicubic), clamp, [0, 1], the model's mean/std -> one (B, h_l * w_l, C_l)
tensor per chosen stage (row-major tokens), each stage with its own stride and width. Levels are indices into the
model's `feature_info` (e.g. VGG16: 0 relu1_2 stride 1, 1 relu2_2 stride 2, 2 relu3_3 stride 4, 3 relu4_3 stride 8,
4 relu5_3 stride 16, 5 pool5 stride 32). Always frozen: eval mode (BatchNorm uses its running statistics),
`requires_grad=False`, forward under `torch.no_grad()`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from einops import rearrange
from torch import nn

from vfmtok.models.vfm import (create_timm_model, freeze_with_normalisation, missing_weights_message,
                               normalise_images, pixels_dtype, read_weights_file)


def feature_key(key: str, own: set[str]) -> str | None:
    """Map a full-model state-dict key (timm / torchvision layout, e.g. `features.0.weight`, `stem.0.bias`) to the
    `features_only` model's key (timm flattens top-level sequences: `features_0.weight`, `stem_0.bias`); None if
    the key belongs to a part the pyramid drops (head, classifier, later stages)."""
    for candidate in (key, key.replace(".", "_", 1)):
        if candidate in own:
            return candidate
    return None


class FrozenCNN(nn.Module):
    """Frozen multi-level feature extractor over a timm CNN with `features_only=True`.

    Args:
        name: timm model name, e.g. "resnet50.a1_in1k", "convnext_tiny", "vgg16".
        image_size: side in pixels the input is resized to.
        levels: increasing indices into the model's `feature_info`; () = the last 4 stages.
        weights: "pretrained" (timm's source / HF cache), "random" (random init), a file (timm or torchvision
            full-model state dict; head / classifier keys are ignored) or such a state dict in memory.
        timm_kwargs: extra timm constructor keywords (e.g. a smaller `depths`/`dims` for tests).
        label: how messages name the encoder.

    Raises:
        ValueError: unknown model, wrong levels, a level smaller than 1 x 1 at `image_size`, or weights that do not
            fit (missing keys / shapes, named).
        RuntimeError: pretrained weights unavailable (says which file to pass).
    """

    def __init__(self, name: str, image_size: int, levels: Sequence[int] = (),
                 weights: str | Path | dict[str, torch.Tensor] = "random", timm_kwargs: dict[str, Any] | None = None,
                 label: str | None = None) -> None:
        super().__init__()
        import timm
        from timm.models import parse_model_name

        label = label or f"encoder {name!r}"
        if parse_model_name(name)[0] is None and not timm.is_model(name):
            raise ValueError(f"{label}: timm {timm.__version__} has no model {name!r}")
        kwargs = dict(features_only=True, **(timm_kwargs or {}))
        with torch.device("meta"):
            probe = timm.create_model(name, pretrained=False, **kwargs).eval()  # every stage, no memory
        info = probe.feature_info
        stages = ", ".join(f"{i}: {m} ({c} ch, stride {r})" for i, (m, c, r) in
                           enumerate(zip(info.module_name(), info.channels(), info.reduction())))
        levels = tuple(levels) or tuple(range(max(0, len(info) - 4), len(info)))  # default: the last 4 stages
        if any(not 0 <= i < len(info) for i in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"{label}: levels {list(levels)} must be increasing feature-stage indices in "
                             f"[0, {len(info) - 1}]; its stages are {stages}")
        kwargs["out_indices"] = levels
        need = max(info.reduction()[i] for i in levels)
        problem = f"levels {list(levels)} (strides {[info.reduction()[i] for i in levels]}) do not fit image_size {image_size}"
        try:
            with torch.no_grad(), torch.device("meta"):  # shapes only; eval: BatchNorm on a 1 x 1 map
                probe = timm.create_model(name, pretrained=False, **kwargs).eval()
                sizes = [tuple(f.shape[-2:]) for f in probe(torch.zeros(1, 3, image_size, image_size))]
        except RuntimeError as err:
            raise ValueError(f"{label}: {problem} ({err}); expected image_size >= {need}") from err
        if min(min(hw) for hw in sizes) < 1:
            raise ValueError(f"{label}: {problem} (an empty feature map); expected image_size >= {need}")
        state, source = None, "<encoder state dict>"
        if isinstance(weights, dict):
            state = weights
        elif not (isinstance(weights, str) and weights in ("pretrained", "random")):
            if not Path(weights).is_file():
                raise FileNotFoundError(f"{label}: weights file not found: {weights}. " + missing_weights_message(name))
            state, source = read_weights_file(weights), str(weights)
        if state is not None:
            with torch.device("meta"):  # skip the random init: the weights are assigned
                self.model = timm.create_model(name, pretrained=False, **kwargs)
            self._load(state, source, label)
            if any(t.is_meta for t in (*self.model.parameters(), *self.model.buffers())):
                self.model = timm.create_model(name, pretrained=False, **kwargs)
                self._load(state, source, label)
        else:
            self.model = create_timm_model(name, weights == "pretrained", **kwargs)
        self.name, self.image_size, self.levels = name, image_size, levels
        self.level_dims = [info.channels()[i] for i in levels]
        self.level_grids = [hw[0] for hw in sizes]
        self.strides = [info.reduction()[i] for i in levels]
        freeze_with_normalisation(self, self.model)

    def _load(self, state: dict[str, torch.Tensor], source: str, label: str) -> None:
        """Strictly load a full-model or pyramid state dict (keys mapped by `feature_key`)."""
        own = self.model.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            target = feature_key(key, set(own))
            if target is not None:
                mapped[target] = value
        for key in own:  # torchvision files may predate BatchNorm's step counter
            if key.endswith("num_batches_tracked") and key not in mapped:
                mapped[key] = torch.zeros_like(own[key], device="cpu")
        missing = sorted(set(own) - set(mapped))
        wrong = sorted(k for k in mapped if tuple(mapped[k].shape) != tuple(own[k].shape))
        if missing or wrong:
            details = []
            if missing:
                details.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
            if wrong:
                details.append("shape mismatch " + ", ".join(f"{k}: file {tuple(mapped[k].shape)} vs model "
                                                            f"{tuple(own[k].shape)}" for k in wrong[:8]))
            raise ValueError(f"{source}: does not fit the frozen {label}: " + "; ".join(details))
        assign = any(t.is_meta for t in own.values())
        if assign:
            mapped = {k: v.to(dtype=own[k].dtype).contiguous() for k, v in mapped.items()}
        self.model.load_state_dict(mapped, strict=True, assign=assign)

    def train(self, mode: bool = True) -> "FrozenCNN":
        """Always stays in eval mode (frozen encoder); `mode` is ignored."""
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> input (B, 3, S, S): see `vfmtok.models.vfm.normalise_images`."""
        return normalise_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, return_input: bool = False):
        """Multi-level features.

        Args:
            images: (B, 3, H, W) float in [-1, 1]; any H, W (resized to `image_size`).
            return_input: also return the preprocessed input.

        Returns:
            list of len(levels) tensors (B, h_l * w_l, C_l), row-major, h_l = w_l = `level_grids[l]`,
            C_l = `level_dims[l]`; with `return_input`: (levels, input (B, 3, S, S)).
        """
        pixels = self.preprocess(images).to(pixels_dtype(self.model))
        feats = [rearrange(f, "b c h w -> b (h w) c") for f in self.model(pixels)]
        return (feats, pixels) if return_input else feats
