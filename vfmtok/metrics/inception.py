"""ADM-compatible Inception features: pool3 (FID, P/R), Mixed_6d.branch1x1 (sFID), unbiased logits (IS).

Wraps torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF 2015-12-05 Inception-v3 port), which resizes
its uint8 input to 299 x 299 with a re-implementation of TF1 ``ResizeBilinear`` (align_corners=False,
legacy grid ``src = dst * in / out``, no antialiasing) and scales by ``(x - 128) / 128``, as the graph used
by the ADM evaluator (``shared/reference/evaluation.md`` section 1.3). On top of it:

* ``pool3``: the 2048-d ``pool_3:0`` features.
* ``spatial``: the output of ``Mixed_6d.branch1x1`` (TF ``mixed_6/conv``, after BN + ReLU, 192 x 17 x 17),
  first 7 channels, flattened in H, W, C order -> 17 * 17 * 7 = 2023 dims, as the evaluator's sFID.
* ``logits``: ``pool3 @ fc.weight.T`` (no bias, 1008 classes), the evaluator's Inception-Score logits.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from einops import rearrange
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d, FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

__all__ = [
    "SPATIAL_CHANNELS",
    "InceptionFeatureExtractor",
    "InceptionOutputs",
    "conv_unit_names",
    "inception_architecture",
    "random_inception_state_dict",
    "tf1_resize_bilinear",
]

SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]


class _TorchFidelityInception(FeatureExtractorInceptionV3):
    """torch-fidelity's network, built from a state dict we already loaded safely (or left random).

    torch-fidelity's constructor always loads weights itself (``torch.load(weights_only=False)`` or a
    download). We hand it an in-memory ``None`` and load our validated state dict afterwards instead.
    """

    def load_state_dict(self, state_dict, *args, **kwargs):  # type: ignore[override]
        if state_dict is None:
            return None
        return super().load_state_dict(state_dict, *args, **kwargs)


def inception_architecture() -> FeatureExtractorInceptionV3:
    """A torch-fidelity ``FeatureExtractorInceptionV3`` with its default (PyTorch) initialisation, eval mode.

    Features requested: ``2048`` (pool3) and ``logits_unbiased``. No file is read, nothing downloaded.
    """
    empty = io.BytesIO()
    torch.save(None, empty)
    empty.seek(0)
    return _TorchFidelityInception(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=empty
    )


def conv_unit_names() -> list[str]:
    """Names of the 94 ``BasicConv2d`` units in module order (``Conv2d_1a_3x3`` ... ``Mixed_7c.branch_pool``)."""
    return [name for name, module in inception_architecture().named_modules() if isinstance(module, BasicConv2d)]


_ARCH_STATE: dict[str, torch.Tensor] = {}


def _architecture_state() -> dict[str, torch.Tensor]:
    if not _ARCH_STATE:
        _ARCH_STATE.update(inception_architecture().state_dict())
    return _ARCH_STATE


def random_inception_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random Inception state dict of the exact architecture, scaled so activations stay O(1).

    For tests and demos without the real file: conv weights He-normal (fan-in, ReLU gain), BN gamma 1,
    beta ~ N(0, 0.1), running mean 0, running var 1, ``fc`` ~ N(0, 0.25) (the Inception Score of a random network is only
    slightly above 1: its features barely differ between images).

    Args:
        seed: torch generator seed (the result depends only on it).

    Returns:
        float32 state dict keyed like torch-fidelity's ``FeatureExtractorInceptionV3``.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in _architecture_state().items():
        if key.endswith("conv.weight"):
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) * (2.0 / fan_in) ** 0.5
        elif key.endswith("bn.bias"):
            state[key] = torch.randn(value.shape, generator=generator) * 0.1
        elif key == "fc.weight":
            state[key] = torch.randn(value.shape, generator=generator) * 0.5
        else:
            state[key] = value.clone()
    return state


def tf1_resize_bilinear(images: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TF1 ``ResizeBilinear`` (align_corners=False, legacy grid, no antialias), torch-fidelity's implementation.

    Args:
        images: float (N, C, H, W).
        size: output height and width.

    Returns:
        float (N, C, size, size), same dtype.
    """
    return interpolate_bilinear_2d_like_tensorflow1x(images, size=(size, size), align_corners=False)


@dataclass
class InceptionOutputs:
    """Features of one batch (all float32, on the extractor's device).

    Attributes:
        pool3: (N, 2048) pool3 features (>= 0).
        spatial: (N, 2023) ``Mixed_6d.branch1x1`` channels 0..6, flattened (H=17, W=17, C=7).
        logits: (N, 1008) unbiased logits, or None when the weights have no fc layer.
    """

    pool3: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor | None


class InceptionFeatureExtractor(nn.Module):
    """uint8 NHWC images -> :class:`InceptionOutputs` with the ADM evaluator's feature definitions.

    Args:
        state_dict: torch-fidelity-layout weights (see :mod:`vfmtok.metrics.weights`), or None for
            PyTorch's default random init (tests only).
        has_fc: whether ``fc.weight`` is real; False -> ``logits`` is None (Inception Score unavailable).
        autocast_dtype: None for fp32 (default, recommended for metrics), or torch.bfloat16/float16 on CUDA.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None, *, has_fc: bool = True,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.net = inception_architecture()
        if state_dict is not None:
            self.net.load_state_dict(state_dict)
        self.net.requires_grad_(False).eval()
        self.has_fc = has_fc
        self.autocast_dtype = autocast_dtype
        self._captured: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, inputs, output: torch.Tensor) -> None:
        self._captured = output

    def train(self, mode: bool = True) -> "InceptionFeatureExtractor":  # always eval (BN statistics frozen)
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor | np.ndarray) -> InceptionOutputs:
        """Compute the three feature sets.

        Args:
            images: uint8 (N, H, W, 3) RGB in 0..255, any H, W (resized to 299 inside, TF1 bilinear).

        Returns:
            :class:`InceptionOutputs`.

        Raises:
            ValueError: not uint8, or not (N, H, W, 3).
        """
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(np.ascontiguousarray(images))
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"Inception input must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        batch = rearrange(images.to(device), "n h w c -> n c h w")
        if self.autocast_dtype is not None and device.type == "cuda":
            with torch.autocast(device_type="cuda", dtype=self.autocast_dtype):
                pool3, logits = self.net(batch)
        else:
            pool3, logits = self.net(batch)
        spatial_map = self._captured[:, :SPATIAL_CHANNELS].float()
        self._captured = None
        spatial = rearrange(spatial_map, "n c h w -> n (h w c)")
        return InceptionOutputs(pool3=pool3.float(), spatial=spatial, logits=logits.float() if self.has_fc else None)
