"""VFMTokenizer behaviour on the `tiny` preset: training contract, frozen encoder handling, causality,
encoder weights files, save/load round trip, input validation."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vfmtok.configs import config_from_dict, config_to_dict
from vfmtok.models.tokenizer_config import tokenizer_preset
from vfmtok.models.tokenizer_config import TokenizerConfig
from vfmtok.models.tokenizer import VFMTokenizer
from vfmtok.models.tokenizer_io import create_tokenizer, load_tokenizer, save_tokenizer
from vfmtok.models.vfm import antialiased_bicubic_resize


@pytest.fixture(scope="module")
def tok() -> VFMTokenizer:
    torch.manual_seed(0)
    return create_tokenizer("tiny")


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 112, 112, generator=gen) * 2 - 1


def test_tiny_preset_is_registered_and_serialisable():
    cfg = tokenizer_preset("tiny")
    assert isinstance(cfg, TokenizerConfig)
    data = json.loads(json.dumps(config_to_dict(cfg)))
    assert config_from_dict(TokenizerConfig, data) == cfg
    assert cfg.num_tokens == cfg.num_queries == 64 and cfg.decoder_grid == 7
    with pytest.raises(KeyError, match="vfmtok-l"):
        create_tokenizer("no-such-preset")
    with pytest.raises(ValueError, match="perfect square"):
        TokenizerConfig(num_queries=200)


def test_training_forward_contract(tok, images):
    tok.train()
    out = tok(images, return_semantic=True)
    s, cfg = tok.config.image_size, tok.config
    assert out.recon.shape == (2, 3, s, s) and out.recon.dtype == torch.float32
    assert out.codes.shape == (2, cfg.num_tokens) and out.codes.dtype == torch.int64
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < cfg.codebook_size
    assert out.vq_codebook_loss.dim() == 0 and out.vq_commit_loss.dim() == 0
    torch.testing.assert_close(out.vq_commit_loss, 0.25 * out.vq_codebook_loss, rtol=1e-5, atol=0)
    grid = s // 14
    assert out.semantic_pred.shape == out.semantic_target.shape == (2, grid * grid, tok.vfm.embed_dim)
    assert not out.semantic_target.requires_grad
    # the semantic target is the frozen encoder's final-normed last level
    levels = tok.vfm_features(images)
    torch.testing.assert_close(out.semantic_target, levels[-1], atol=0, rtol=0)
    # ... which is timm's own final-normed `forward_features` without the cls + 4 register tokens
    with torch.no_grad():
        full = tok.vfm.model.forward_features(tok.vfm.preprocess(images))
    torch.testing.assert_close(levels[-1], full[:, 5:], atol=1e-6, rtol=0)

    loss = (out.recon.square().mean() + out.vq_codebook_loss + out.vq_commit_loss
            + (1 - F.cosine_similarity(out.semantic_pred, out.semantic_target, dim=-1)).mean())
    tok.zero_grad()
    loss.backward()
    trainable = list(tok.trainable_parameters())
    assert len(trainable) == len(list(tok.parameters()))
    for name in ("encode_transformer.carrier_tokens", "pre_slots_quant.weight", "slot_quantize.embedding.weight",
                 "post_slots_quant.weight", "decode_transformer.proj.weight", "decoder.conv_out.weight",
                 "encode_transformer.transformer.layers.0.cross_attn.value_proj.weight"):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and torch.count_nonzero(grad) > 0, name
    assert all(p.grad is None and not p.requires_grad for p in tok.vfm.parameters())
    no_sem = tok(images, return_semantic=False)
    assert no_sem.semantic_pred is None and no_sem.semantic_target is None
    tok.zero_grad()
    tok.eval()


def test_frozen_encoder_is_excluded_from_weights_but_follows_the_module(tok):
    keys = set(tok.state_dict())
    assert not any("vfm" in k or "backbone" in k for k in keys)
    vfm_ids = {id(p) for p in tok.vfm.parameters()}
    assert not vfm_ids & {id(p) for p in tok.parameters()}
    tok.train()
    assert tok.training and not tok.vfm.training
    tok.eval()
    twin = copy.deepcopy(tok)
    assert twin.vfm is tok.vfm  # an EMA copy does not duplicate the frozen encoder...
    assert twin.encode_transformer.carrier_tokens is not tok.encode_transformer.carrier_tokens
    twin.to("cpu")  # a no-op move keeps sharing
    assert twin.vfm is tok.vfm
    twin.to(torch.float64)  # ...until it is moved or cast: then it takes its own copy, the original stays
    assert twin.vfm is not tok.vfm
    assert next(twin.vfm.parameters()).dtype == torch.float64
    assert next(tok.vfm.parameters()).dtype == torch.float32
    tok.to(torch.float64)  # the model's own moves/casts reach its encoder
    try:
        assert next(tok.vfm.parameters()).dtype == torch.float64
    finally:
        tok.to(torch.float32)
    assert next(tok.vfm.parameters()).dtype == torch.float32


def test_encoder_is_causal_over_queries(tok, images):
    levels = tok.vfm_features(images)
    enc = tok.encode_transformer
    with torch.no_grad():
        base = enc.carrier_tokens.expand(2, -1, -1).clone()
        slots = enc(levels, carrier=base)
        j = 37
        changed = base.clone()
        changed[:, j] += torch.randn(2, enc.carrier_tokens.shape[-1])
        slots2 = enc(levels, carrier=changed)
        codes = tok.slot_quantize(tok.pre_slots_quant(slots)).codes
        codes2 = tok.slot_quantize(tok.pre_slots_quant(slots2)).codes
    assert torch.equal(slots[:, :j], slots2[:, :j])
    assert torch.equal(codes[:, :j], codes2[:, :j])
    assert not torch.allclose(slots[:, j], slots2[:, j])
    assert (slots[:, j + 1:] - slots2[:, j + 1:]).abs().max() > 0


def test_encode_and_decode_codes(tok, images):
    codes, gap, second = tok.encode(images, return_distance_gap=True, return_second=True)
    assert codes.shape == second.shape == gap.shape == (2, tok.config.num_tokens)
    assert (gap >= 0).all() and not torch.equal(codes, second)
    out = tok(images)
    assert torch.equal(codes, out.codes)
    decoded = tok.decode_codes(codes)
    torch.testing.assert_close(decoded, out.recon, atol=1e-5, rtol=0)
    # any input size is resized to the tokenizer's resolution before encoding
    bigger = F.interpolate(images, size=(150, 130), mode="bilinear", align_corners=False)
    assert tok.encode(bigger).shape == codes.shape


def test_bad_inputs_are_refused_with_clear_errors(tok, images):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tok.encode(images[:, :1])
    with pytest.raises(ValueError, match="64"):
        tok.decode_codes(torch.zeros(2, 10, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 1024\)"):
        tok.decode_codes(torch.full((1, 64), 1024, dtype=torch.long))
    with pytest.raises(ValueError, match=r"vfm_name 'vit_dinov9': timm .* has no such model; the DINOv2 ones are "
                                         r"\[.*'vit_large_patch14_reg4_dinov2'"):
        create_tokenizer("tiny", vfm_name="vit_dinov9")


def test_hub_encoder_names_are_left_to_timm(monkeypatch):
    """'hf-hub:...' names are not in timm's registry but timm.create_model resolves them: no early refusal."""
    import timm

    class Reached(Exception):
        pass

    def fake_create_model(name, **kwargs):
        raise Reached(name)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    with pytest.raises(Reached, match="hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m"):
        create_tokenizer("tiny", vfm_name="hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m")


def test_save_load_round_trip_gives_bit_identical_codes(tok, images, tmp_path):
    with torch.no_grad():  # move away from the init so a silently re-initialised load would be caught
        for p in tok.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    codes = tok.encode(images)
    decoded = tok.decode_codes(codes)
    run = save_tokenizer(tok, tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    assert meta["tokenizer"] == json.loads(json.dumps(config_to_dict(tok.config)))
    for path in (run, run / "tokenizer.safetensors"):
        loaded = load_tokenizer(path)
        assert not loaded.training
        assert torch.equal(loaded.encode(images), codes)
        assert torch.equal(loaded.decode_codes(codes), decoded)
    with pytest.raises(FileNotFoundError, match="config.json"):
        (run / "config.json").unlink()
        load_tokenizer(run)


def test_encoder_weights_files_in_timm_and_official_dinov2_layouts(tok, images, tmp_path):
    reference = tok.vfm_features(images)
    timm_state = {k: v.clone() for k, v in tok.vfm.model.state_dict().items()}
    torch.save(timm_state, tmp_path / "timm.pth")
    # official DINOv2 layout: cls position row inside pos_embed, `register_tokens`, `mask_token`
    official = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    dim = timm_state["cls_token"].shape[-1]
    cls_pos = torch.randn(1, 1, dim)
    official["pos_embed"] = torch.cat([cls_pos, timm_state["pos_embed"]], dim=1)
    official["cls_token"] = timm_state["cls_token"] - cls_pos
    official["register_tokens"] = timm_state["reg_token"]
    official["mask_token"] = torch.zeros(1, dim)
    torch.save(official, tmp_path / "dinov2_official.pth")
    other_seed = create_tokenizer("tiny", vfm_seed=123)
    assert not torch.allclose(other_seed.vfm_features(images)[0], reference[0])
    for name in ("timm.pth", "dinov2_official.pth"):
        loaded = create_tokenizer("tiny", encoder_weights=tmp_path / name, vfm_seed=123)
        for got, want in zip(loaded.vfm_features(images), reference):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    from safetensors.torch import save_file

    save_file({k: v.half().contiguous() for k, v in timm_state.items()}, str(tmp_path / "timm_fp16.safetensors"))
    half = create_tokenizer("tiny", encoder_weights=tmp_path / "timm_fp16.safetensors")
    assert all(p.dtype == torch.float32 for p in half.vfm.parameters())
    torch.testing.assert_close(half.vfm_features(images)[-1], reference[-1], atol=2e-2, rtol=0)
    broken = dict(official)
    broken.pop("blocks.1.attn.qkv.weight")
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match="blocks.1.attn.qkv.weight"):
        create_tokenizer("tiny", encoder_weights=tmp_path / "broken.pth")
    with pytest.raises(FileNotFoundError, match="dinov2_vitl14_reg4_pretrain.pth"):
        create_tokenizer("tiny", encoder_weights=tmp_path / "dinov2_vitl14_reg4_pretrain.pth")


def test_resize_blur_matches_an_independent_gaussian_filter():
    from scipy.ndimage import correlate

    gen = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 50, 40, generator=gen, dtype=torch.float64)
    size = (20, 20)  # factors 2.5 and 2.0: sigmas 0.75 and 0.5, kernels 3x3
    got = antialiased_bicubic_resize(image, size)
    blurred = np.empty(image.shape[1:])
    for c in range(3):
        kernels = []
        for sigma in (0.75, 0.5):
            x = np.arange(3) - 1.0
            k = np.exp(-x ** 2 / (2 * sigma ** 2))
            kernels.append(k / k.sum())
        blurred[c] = correlate(image[0, c].numpy(), np.outer(kernels[0], kernels[1]), mode="mirror")
    want = F.interpolate(torch.from_numpy(blurred)[None], size=size, mode="bicubic", align_corners=True)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    assert antialiased_bicubic_resize(image, (50, 40)) is image  # exact no-op at the target size
    up = antialiased_bicubic_resize(image, (60, 60))  # enlarging: no blur
    torch.testing.assert_close(up, F.interpolate(image, size=(60, 60), mode="bicubic", align_corners=True))


def test_another_timm_vit_can_be_the_frozen_encoder(images):
    # a plain ViT (cls token only, patch 16, its own mean/std) instead of DINOv2: grids follow the patch size
    tok = create_tokenizer("tiny", vfm_name="vit_tiny_patch16_224", vfm_kwargs={"depth": 2}, vfm_levels=(0, 1))
    assert tok.vfm.grid_size == 7 and tok.vfm.embed_dim == 192
    torch.testing.assert_close(tok.vfm.mean.flatten(), torch.full((3,), 0.5))
    out = tok(images[:1])
    assert out.recon.shape == (1, 3, 112, 112)
    assert out.semantic_pred.shape == out.semantic_target.shape == (1, 49, 192)
    with pytest.raises(ValueError, match="levels"):
        create_tokenizer("tiny", vfm_levels=(2, 9))


def test_bf16_autocast_quantizes_the_fp32_projection_of_the_slots(tok, images):
    # extract-tokens (bf16) and evaluate (fp32) must pick the same codes for the same slots: the 12-d latent is
    # projected, normalised and compared with the codebook in fp32, not rounded to bf16 first
    tok.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trace = tok.trace(images, semantic=False)
        codes = tok.encode(images)
    assert trace["pre_quant"].dtype == torch.float32
    layer = tok.pre_slots_quant
    pre64 = F.linear(trace["slots"].double(), layer.weight.double(), layer.bias.double())
    torch.testing.assert_close(trace["pre_quant"].double(), pre64, atol=1e-5, rtol=0)
    book = F.normalize(tok.slot_quantize.embedding.weight.double(), dim=-1)
    nearest = (F.normalize(pre64, dim=-1) @ book.t()).argmax(-1)  # max cosine = min distance, float64
    assert torch.equal(trace["indices"], nearest) and torch.equal(codes, nearest)


def test_an_image_size_the_pixel_decoder_cannot_reach_names_the_multipliers_that_fit():
    import dataclasses
    import re

    tiny = tokenizer_preset("tiny")
    with pytest.raises(ValueError) as err:
        dataclasses.replace(tiny, image_size=56)
    text = str(err.value)
    assert "image_size=56 must be divisible by the pixel decoder's upsampling factor 16" in text
    assert "--set 'pixel_ch_mult=[1,1,2,2]'" in text and "upsamples 7 -> 56 px" in text
    # the suggested value is accepted and builds the decoder the message promises
    fixed = re.search(r"pixel_ch_mult=\[([0-9,]+)\]", text).group(1)
    cfg = dataclasses.replace(tiny, image_size=56, pixel_ch_mult=tuple(int(m) for m in fixed.split(",")))
    assert cfg.image_size // 2 ** (len(cfg.pixel_ch_mult) - 1) == 7
    with pytest.raises(ValueError, match=r"pixel_ch_mult=\[1\]' \(the decoder then upsamples 45 -> 45 px, not at all\)"):
        dataclasses.replace(tiny, image_size=45)
