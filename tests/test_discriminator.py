"""Discriminators: BatchNormLocal formula, frozen DINO trunk with trainable heads, weight loading, PatchGAN."""
from __future__ import annotations

import pytest
import torch

from vfmtok.models.discriminator import BatchNormLocal, DinoDiscriminator, PatchGANDiscriminator, create_discriminator

SMALL = dict(input_size=32, hooks=(0, 1), timm_kwargs={"depth": 2, "embed_dim": 24, "num_heads": 2})


def test_batchnorm_local_normalises_each_virtual_batch():
    torch.manual_seed(0)
    x = torch.randn(6, 3, 5)
    bn = BatchNormLocal(3, virtual_bs=2)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
    y = bn(x)
    for grp in range(3):
        for c in range(3):
            vals = x[2 * grp : 2 * grp + 2, c].flatten()
            mean, var = vals.mean(), ((vals - vals.mean()) ** 2).mean()
            want = (x[2 * grp : 2 * grp + 2, c] - mean) / torch.sqrt(var + 1e-5) * bn.weight[c] + bn.bias[c]
            torch.testing.assert_close(y[2 * grp : 2 * grp + 2, c], want, rtol=1e-5, atol=1e-5)


def test_dino_discriminator_frozen_trunk_trainable_heads_and_input_gradient():
    torch.manual_seed(0)
    d = DinoDiscriminator("random", **SMALL)
    assert all(not p.requires_grad for p in d.trunk.parameters())
    assert all(p.requires_grad for p in d.heads.parameters())
    d.train()
    assert not d.trunk.training
    images = (torch.rand(4, 3, 32, 32) * 2 - 1).requires_grad_(True)
    logits = d(images)
    assert logits.shape == (4, 3 * (32 // 16) ** 2) and logits.dtype == torch.float32
    logits.mean().backward()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.trunk.parameters())
    assert all(p.grad is not None for p in d.heads.parameters())
    qkv = d.trunk.blocks[0].attn.qkv.bias
    assert torch.all(qkv[24:48] == 0)  # key bias zeroed


def test_dino_discriminator_loads_a_weights_file_and_names_missing_ones(tmp_path):
    torch.manual_seed(1)
    src = DinoDiscriminator("random", **SMALL)
    state = {f"module.{k}": v for k, v in src.trunk.state_dict().items()}  # DDP-style prefix is accepted
    path = tmp_path / "dino.pth"
    torch.save({"teacher": state}, path)
    torch.manual_seed(2)
    loaded = DinoDiscriminator(str(path), **SMALL)
    for k, v in src.trunk.state_dict().items():
        assert torch.equal(loaded.trunk.state_dict()[k], v), k
    with pytest.raises(FileNotFoundError, match="dino_deitsmall16_pretrain.pth"):
        DinoDiscriminator(str(tmp_path / "nope.pth"), **SMALL)
    torch.save({"blocks.0.wrong": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="does not fit"):
        DinoDiscriminator(str(tmp_path / "bad.pth"), **SMALL)


def test_patchgan_shape_and_factory():
    d = create_discriminator("patchgan", ndf=8)
    assert isinstance(d, PatchGANDiscriminator)
    assert d(torch.zeros(2, 3, 64, 64)).shape == (2, 6 * 6)
    assert create_discriminator("none") is None
    with pytest.raises(ValueError, match="dino, patchgan or none"):
        create_discriminator("stylegan")
