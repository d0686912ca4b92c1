"""Frozen vision foundation model (VFM) wrapper: DINOv2 (with registers) or another timm ViT.

Reproduces the authors' `SelfSupervisedCondtionEmbedder` + DINOv2 `forward_features_levels`
(shared/reference/vfmtok.md section 1.1, checkpoints/README.md section 3.1):

1. input images in [-1, 1], any size -> kornia-style resize to `image_size` (bicubic, align_corners=True,
   Gaussian pre-blur when shrinking; exact no-op at the target size);
2. clamp to [-1, 1], map to [0, 1], normalise with the encoder's mean/std (ImageNet for DINOv2);
3. timm ViT built at `image_size` (its position table resampled from the checkpoint's grid by antialiased
   bicubic interpolation, as DINOv2's `interpolate_antialias=True` does); sequence [cls, registers, patches];
4. levels = raw outputs of the chosen blocks (paper: 0-based 5, 11, 17) and the final-LayerNorm output of
   the last chosen block (23); prefix tokens (cls, registers) dropped -> (B, N, C) each.

The encoder is always frozen: eval mode, `requires_grad=False`, forward under `torch.no_grad()`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.io.state import strict_load

DINOV2_L_FILE = "dinov2_vitl14_reg4_pretrain.pth"
DINOV2_L_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"


# ---------------------------------------------------------------------------------------------
# kornia-compatible resize (kornia is not a dependency)
# ---------------------------------------------------------------------------------------------
def _gaussian_kernel1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - size // 2
    if size % 2 == 0:
        x = x + 0.5
    kernel = torch.exp(-x.pow(2) / (2.0 * sigma ** 2))
    return kernel / kernel.sum()


def _blur_axis(images: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    """Depthwise 1-D correlation along H (axis=2) or W (axis=3) with reflect padding ('same' size)."""
    c = images.shape[1]
    k = kernel.numel()
    left, right = (k - 1) // 2, k // 2
    if axis == 3:
        padded = F.pad(images, (left, right, 0, 0), mode="reflect")
        weight = kernel.view(1, 1, 1, k)
    else:
        padded = F.pad(images, (0, 0, left, right), mode="reflect")
        weight = kernel.view(1, 1, k, 1)
    return F.conv2d(padded, weight.expand(c, 1, *weight.shape[2:]), groups=c)


def antialiased_bicubic_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize like `kornia.geometry.transform.resize(x, size, 'bicubic', align_corners=True, antialias=True)`.

    When the image already has `size`, it is returned unchanged (exact no-op). When shrinking along any axis,
    a separable Gaussian blur (reflect border, sigma_i = max((factor_i - 1) / 2, 0.001), kernel size
    int(max(4 sigma_i, 3)) made odd; horizontal pass then vertical) is applied first; then bicubic
    interpolation with align_corners=True. Values are not clamped.

    Args:
        images: (B, C, H, W) float.
        size: target (height, width) in pixels.

    Returns:
        (B, C, size[0], size[1]) float, same dtype.
    """
    h, w = images.shape[-2:]
    if (h, w) == tuple(size):
        return images
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = [max((f - 1.0) / 2.0, 0.001) for f in factors]
        ks = [int(max(4.0 * s, 3)) for s in sigmas]
        ks = [k + 1 if k % 2 == 0 else k for k in ks]
        ky = _gaussian_kernel1d(ks[0], sigmas[0], images.dtype, images.device)
        kx = _gaussian_kernel1d(ks[1], sigmas[1], images.dtype, images.device)
        images = _blur_axis(_blur_axis(images, kx, axis=3), ky, axis=2)
    return F.interpolate(images, size=tuple(size), mode="bicubic", align_corners=True)


# ---------------------------------------------------------------------------------------------
# weights files
# ---------------------------------------------------------------------------------------------
def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from `.safetensors` or a torch file (`weights_only=True`); unwraps `model`/`state_dict`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it holds no tensor state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from err
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def missing_weights_message(name: str, cause: str = "") -> str:
    """The one error text for unavailable encoder weights: which file, where to put it."""
    hint = ""
    if "dinov2" in name and "large" in name and "reg4" in name:
        hint = (f" Download {DINOV2_L_FILE} ({DINOV2_L_URL}) and pass it as encoder_weights=PATH "
                f"(CLI: --encoder-weights PATH), e.g. init_models/dinov2/{DINOV2_L_FILE}; "
                "a timm state dict of the same model (.pth/.safetensors) works too.")
    else:
        hint = f" Pass a state dict file of the timm model {name!r} (or its official release file) as encoder_weights=PATH."
    extra = f" (timm/hub said: {cause})" if cause else ""
    return f"pretrained weights for the frozen encoder {name!r} are not available offline{extra}.{hint}"


# ---------------------------------------------------------------------------------------------
# the wrapper
# ---------------------------------------------------------------------------------------------
def create_timm_model(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """`timm.create_model(name, pretrained=pretrained, **kwargs)`; a failed pretrained download (offline, no cache)
    becomes one clear error naming the weights file to supply.

    Raises:
        RuntimeError: `pretrained` and timm could not get the weights (`missing_weights_message`).
    """
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as err:  # hub / network errors come in many types
        if pretrained:
            raise RuntimeError(missing_weights_message(name, f"{type(err).__name__}: {err}")) from err
        raise


def freeze_with_normalisation(encoder: nn.Module, timm_model: nn.Module) -> None:
    """Register `encoder.mean` / `encoder.std` ((1, 3, 1, 1) float32, non-persistent) from the timm model's
    pretrained config (ImageNet mean/std when it has none), then freeze `encoder` and put it in eval mode."""
    cfg = getattr(timm_model, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean", (0.485, 0.456, 0.406)), cfg.get("std", (0.229, 0.224, 0.225))
    encoder.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    encoder.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
    encoder.requires_grad_(False)
    encoder.eval()


class FrozenVFM(nn.Module):
    """Frozen multi-level feature extractor over a timm ViT (DINOv2 with registers by default).

    Args:
        name: timm model name, e.g. "vit_large_patch14_reg4_dinov2.lvd142m" (a pretrained tag selects the
            weight source used when `weights="pretrained"`); a `timm:` prefix is accepted and removed
            ("timm:vit_large_patch14_reg4_dinov2.lvd142m"). With `weights="pretrained"` the weights come through
            timm's own pretrained mechanism (the Hugging Face cache, downloaded when online).
        image_size: side in pixels the input is resized to (336 in the paper -> 24 x 24 patches).
        levels: 0-based block indices whose outputs are returned (paper (5, 11, 17, 23)).
        norm_last: apply the final LayerNorm to the last level (paper: True).
        weights: "pretrained" (timm's source / HF cache), "random" (random init, tests), a file path or an
            in-memory state dict (timm layout or the official DINOv2 release layout; converted with timm's
            checkpoint filter).
        timm_kwargs: extra constructor keywords for timm (e.g. embed_dim/depth/num_heads of a tiny ViT).
        label: how messages name the encoder (default "encoder '<name>'").

    Raises:
        RuntimeError: pretrained weights cannot be obtained (names the file and where to put it).
        ValueError: `name` is not a timm model, a weights file does not fit the model (names the keys), or a level
            index is out of range.
    """

    def __init__(self, name: str, image_size: int, levels: Sequence[int], norm_last: bool = True,
                 weights: str | Path | dict[str, torch.Tensor] = "random", timm_kwargs: dict[str, Any] | None = None,
                 label: str | None = None) -> None:
        super().__init__()
        import timm

        from timm.models import parse_model_name

        name = name[len("timm:"):] if name.startswith("timm:") else name
        # registry names (with or without a '.tag') are checked here; 'hf-hub:...' names are resolved by timm itself
        if parse_model_name(name)[0] is None and not timm.is_model(name):
            raise ValueError(f"vfm_name {name!r}: timm {timm.__version__} has no such model; the DINOv2 ones are "
                             f"{timm.list_models('*dinov2*')}")
        kwargs = dict(img_size=image_size, num_classes=0, **(timm_kwargs or {}))
        pretrained = isinstance(weights, str) and weights == "pretrained"
        in_memory = isinstance(weights, dict)
        from_file = not in_memory and not (isinstance(weights, str) and weights in ("pretrained", "random"))
        if from_file and not Path(weights).is_file():
            raise FileNotFoundError(f"encoder weights file not found: {weights}. " + missing_weights_message(name))
        # with given weights, skip the (slow, useless) random init: build on the meta device, then assign
        skip_init = (from_file or in_memory) and not torch.empty(0).is_meta
        if skip_init:
            with torch.device("meta"):
                self.model = timm.create_model(name, pretrained=False, **kwargs)
        else:
            self.model = create_timm_model(name, pretrained, **kwargs)

        def load() -> None:
            if in_memory:
                self.load_state(weights, source="<encoder state dict>")
            else:
                self.load_weights(weights)

        if from_file or in_memory:
            load()
            if skip_init and any(t.is_meta for t in (*self.model.parameters(), *self.model.buffers())):
                self.model = timm.create_model(name, pretrained=False, **kwargs)  # has non-persistent state
                load()
        depth = len(self.model.blocks)
        if not levels or any(not 0 <= i < depth for i in levels) or list(levels) != sorted(set(levels)):
            raise ValueError(f"{label or f'encoder {name!r}'}: levels {list(levels)} must be increasing block indices in "
                             f"[0, {depth - 1}] (the model has {depth} blocks)")
        self.name, self.image_size, self.levels, self.norm_last = name, image_size, tuple(levels), norm_last
        freeze_with_normalisation(self, self.model)

    # -- properties ---------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        """Channel width C of every level."""
        return int(self.model.embed_dim)

    @property
    def patch_size(self) -> int:
        """Patch side in pixels (14 for DINOv2)."""
        return int(self.model.patch_embed.patch_size[0])

    @property
    def grid_size(self) -> int:
        """Side of the patch grid at `image_size` (336 / 14 = 24)."""
        return self.image_size // self.patch_size

    @property
    def level_dims(self) -> list[int]:
        """Channel width of each level (all `embed_dim`)."""
        return [self.embed_dim] * len(self.levels)

    @property
    def level_grids(self) -> list[int]:
        """Grid side of each level (all `grid_size`)."""
        return [self.grid_size] * len(self.levels)

    def train(self, mode: bool = True) -> "FrozenVFM":
        """Always stays in eval mode (frozen encoder); `mode` is ignored."""
        return super().train(False)

    # -- weights ------------------------------------------------------------------------------
    def load_weights(self, path: str | Path) -> None:
        """Load a timm or official-DINOv2 state dict file strictly (position table resampled to the grid).

        Raises:
            FileNotFoundError: with the file name and where the official file comes from.
            ValueError: keys missing/unexpected or shapes differing (names them).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"encoder weights file not found: {path}. " + missing_weights_message(self._base_name()))
        self.load_state(read_weights_file(path), source=str(path))

    def load_state(self, state: dict[str, torch.Tensor], source: str = "<state dict>") -> None:
        """Load an in-memory timm or official-DINOv2 state dict strictly (converted by timm's checkpoint filter).

        Raises:
            ValueError: keys missing/unexpected or shapes differing (names them and `source`).
        """
        import importlib

        module = importlib.import_module(type(self.model).__module__)
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is not None:
            state = filter_fn(dict(state), self.model)
        strict_load(self.model, state, source, what=f"the frozen encoder {self._base_name()!r}")

    def _base_name(self) -> str:
        return getattr(self, "name", None) or type(self.model).__name__

    # -- forward ------------------------------------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] (B, 3, H, W) to the ViT input (B, 3, S, S), S = `image_size`:
        resize (kornia-style, see `antialiased_bicubic_resize`), clamp to [-1, 1], (x + 1) / 2, (x - mean) / std.

        Raises:
            ValueError: if images is not (B, 3, H, W).
        """
        return normalise_images(images, self.image_size, self.mean, self.std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, return_input: bool = False):
        """Multi-level patch features.

        Args:
            images: (B, 3, H, W) float in [-1, 1]; any H, W (resized to `image_size`).
            return_input: also return the preprocessed ViT input.

        Returns:
            list of len(levels) tensors (B, N, C), N = grid_size ** 2 patch tokens in row-major order,
            C = embed_dim; the last one final-normed when `norm_last`. With `return_input`:
            (levels, input (B, 3, S, S)).
        """
        pixels = self.preprocess(images).to(pixels_dtype(self.model))
        feats = self.model.forward_intermediates(pixels, indices=list(self.levels), norm=False, stop_early=True,
                                                 output_fmt="NLC", intermediates_only=True)
        feats = list(feats)
        if self.norm_last:
            feats[-1] = self.model.norm(feats[-1])
        return (feats, pixels) if return_input else feats


def normalise_images(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] -> encoder input (B, 3, size, size) float32: kornia-style resize
    (`antialiased_bicubic_resize`), clamp to [-1, 1], (x + 1) / 2, (x - mean) / std (mean/std (1, 3, 1, 1)).

    Raises:
        ValueError: if images is not (B, 3, H, W).
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) floats in [-1, 1], got shape {tuple(images.shape)}")
    images = antialiased_bicubic_resize(images.float(), (size, size))
    images = (images.clamp(-1.0, 1.0) + 1.0) / 2.0
    return (images - mean) / std


def pixels_dtype(module: nn.Module) -> torch.dtype:
    """Dtype of the module's parameters (the ViT's input dtype)."""
    return next(module.parameters()).dtype
