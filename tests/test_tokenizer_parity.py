"""Parity with the authors' implementation (shared/reference/checkpoints/fixtures/tok_tiny).

The fixture holds the official code's weights (checkpoint layout with `ema` + a decoy `model`), a DINOv2-format
backbone, inputs and every intermediate. We build our model from info.json's configuration, load the files
through the public loaders, and compare (tolerances from fixtures/README.md).
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vfmtok.imageops import resize_bicubic, to_uint8
from vfmtok.models.tokenizer_config import TokenizerConfig
from vfmtok.models.tokenizer_io import load_tokenizer

ATOL = 1e-4


def config_from_info(info: dict) -> TokenizerConfig:
    """Our TokenizerConfig for the fixture's official yaml + DINOv2 settings (info.json)."""
    enc = info["transformer_config"]["encoder_config"]["params"]
    dec = info["transformer_config"]["decoder_config"]["params"]
    vq, cnn, dino = info["vq_model_args"], info["cnn_decoder"], info["dino"]
    assert dino["ffn_layer"] == "mlp" and dino["interpolate_antialias"] and dino["interpolate_offset"] == 0.0
    return TokenizerConfig(
        image_size=enc["image_size"],
        vfm_name="vit_large_patch14_reg4_dinov2",
        vfm_levels=tuple(info["outputs"]["backbone_levels_arg"]),
        vfm_kwargs={"embed_dim": dino["embed_dim"], "depth": dino["depth"], "num_heads": dino["num_heads"],
                    "mlp_ratio": dino["mlp_ratio"], "init_values": dino["init_values"],
                    "reg_tokens": dino["num_register_tokens"], "patch_size": dino["patch_size"]},
        dim=enc["dim"], num_queries=enc["n_carrier"], encoder_depth=enc["depth"],
        # the official MSDeformAttn and encoder self-attention use 8 heads whatever `num_head` says
        encoder_heads=8, deform_heads=8, deform_points=enc["enc_n_points"],
        encoder_ffn_dim=min(4 * enc["dim"], 1024),
        codebook_size=vq["codebook_size"], codebook_dim=vq["codebook_slots_embed_dim"],
        decoder_depth=dec["depth"], decoder_heads=dec["num_head"], decoder_mlp_dim=dec["mlp_dim"],
        semantic_dim=enc["visual_encoder_config"]["params"]["proj_dim"],
        pixel_ch=cnn["ch"], pixel_ch_mult=tuple(cnn["ch_mult"]), pixel_num_res_blocks=cnn["num_res_blocks"],
    )


@pytest.fixture(scope="module")
def parity(fixtures_dir):
    root = fixtures_dir / "tok_tiny"
    info = json.loads((root / "info.json").read_text())
    expected = load_file(str(root / "outputs.safetensors"))
    torch.manual_seed(0)
    tok = load_tokenizer(root / "tokenizer_checkpoint.pt", encoder_weights=root / "dinov2_backbone.pth",
                         config=config_from_info(info))
    ours = tok.trace(expected["images"])
    return tok, info, expected, ours


def _close(name: str, got: torch.Tensor, want: torch.Tensor, atol: float = ATOL) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} vs official {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item()
    assert err <= atol, f"{name}: max abs error {err:.3g} > {atol}"


def test_trainable_parameter_count_equals_official(parity):
    tok, info, _, _ = parity
    assert sum(p.numel() for p in tok.trainable_parameters()) == info["param_counts"]["trainable"]
    assert not tok.training and not tok.vfm.training


def test_backbone_input_and_dino_levels(parity):
    _, _, want, got = parity
    _close("backbone_input", got["backbone_input"], want["backbone_input"], 1e-5)
    for i in range(4):
        ref = want[f"dino_levels.{i}"]
        _close(f"dino_levels.{i}", got[f"dino_levels.{i}"], ref, 1e-4 * ref.abs().max().item())


def test_region_encoder_intermediates(parity):
    _, _, want, got = parity
    names = ["reference_points", "slots", "pre_quant"]
    names += [f"projected_levels.{i}" for i in range(4)]
    names += [f"{k}.{layer}" for layer in range(2)
              for k in ("deform_sampling_locations", "deform_attention_weights", "encoder_layer_outputs")]
    for name in names:
        _close(name, got[name], want[name])
    # the fixture really exercises zero padding: some sampling points fall outside [0, 1]
    locations = want["deform_sampling_locations.1"]
    assert ((locations < 0) | (locations > 1)).any()


def test_codes_quantized_vectors_and_vq_losses(parity):
    _, _, want, got = parity
    decisive = want["code_distance_gap"] > 1e-4
    assert decisive.float().mean() > 0.95
    assert torch.equal(got["indices"][decisive], want["indices"][decisive])
    same = got["indices"] == want["indices"]
    _close("quant", got["quant"][same], want["quant"][same])
    _close("code_distance_gap", got["code_distance_gap"], want["code_distance_gap"])
    _close("post_quant", got["post_quant"][same], want["post_quant"][same])
    _close("vq_codebook_loss", got["vq_codebook_loss"], want["vq_codebook_loss"], 1e-6)
    _close("vq_commit_loss", got["vq_commit_loss"], want["vq_commit_loss"], 1e-6)


def test_decoder_outputs_and_semantic_prediction(parity):
    tok, _, want, got = parity
    _close("pixel_grid_tokens", got["pixel_grid_tokens"], want["pixel_grid_tokens"])
    _close("decoded", got["decoded"], want["decoded"])
    _close("semantic_pred", got["semantic_pred"], want["semantic_pred"])
    _close("decoded_from_codes", tok.decode_codes(want["indices"]), want["decoded_from_codes"])


@pytest.mark.parametrize("size", [256, 336])
def test_uint8_images(parity, size):
    _, _, want, got = parity
    official = want[f"uint8_{size}"]
    # the conversion rule itself reproduces the official bytes from the official float output
    assert torch.equal(to_uint8(want["decoded"], size), official)
    ours = to_uint8(got["decoded"], size)
    diff = (ours.int() - official.int()).abs()
    assert diff.max() <= 1
    # a byte may differ only where the official value sits within float noise of a rounding boundary
    scaled = 127.5 * resize_bicubic(want["decoded"], size).permute(0, 2, 3, 1) + 128
    near_boundary = (scaled - scaled.round()).abs() < 127.5 * ATOL
    assert bool(near_boundary[diff > 0].all())
    assert (diff > 0).float().mean() < 1e-3


@pytest.mark.parametrize("size", [384, 256])
def test_non_336_inputs_are_resized_like_the_official_encoder(parity, size):
    tok, _, want, _ = parity
    images = want[f"images_{size}"]
    _close(f"backbone_input_from_{size}", tok.vfm.preprocess(images), want[f"backbone_input_from_{size}"], 1e-5)
    codes, gap = tok.encode(images, return_distance_gap=True)
    decisive = want[f"code_distance_gap_from_{size}"] > 1e-4
    assert torch.equal(codes[decisive], want[f"indices_from_{size}"][decisive])
    if torch.equal(codes, want[f"indices_from_{size}"]):
        _close(f"decoded_from_{size}", tok.decode_codes(codes), want[f"decoded_from_{size}"])


def test_official_checkpoint_picks_ema_not_the_decoy_model(parity, fixtures_dir):
    tok, _, _, _ = parity
    from vfmtok.io.weights import load_official_pt

    ckpt = load_official_pt(fixtures_dir / "tok_tiny" / "tokenizer_checkpoint.pt")
    ours = tok.state_dict()
    key = "encode_transformer.carrier_tokens"
    assert torch.equal(ours[key], ckpt["ema"][key])
    assert not torch.equal(ours[key], ckpt["model"][key])
