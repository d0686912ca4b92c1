"""The `vfmtok-l` preset against the official key manifest (vfmtok_tokenizer_keys.json), built on the meta
device: per-part parameter counts, key set and shapes, strict loading of a synthetic official checkpoint."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from vfmtok.io.official import split_official_tokenizer_state
from vfmtok.io.state import strict_load
from vfmtok.models.tokenizer_io import create_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def manifest(reference_dir) -> dict:
    return json.loads((reference_dir / "checkpoints" / "vfmtok_tokenizer_keys.json").read_text())


def _meta_vfmtok_l():
    with torch.device("meta"):
        return create_tokenizer("vfmtok-l", encoder_weights="random")


def test_parameter_counts_per_part_equal_the_official_ones(manifest):
    tok = _meta_vfmtok_l()
    params = dict(tok.named_parameters())
    assert sum(p.numel() for p in tok.trainable_parameters()) == manifest["trainable_param_count_total"] == 73_286_831
    for part, count in manifest["param_count_per_part"].items():
        ours = sum(p.numel() for name, p in params.items() if name == part or name.startswith(part + "."))
        assert ours == count, f"{part}: {ours} vs official {count}"
    for module, count in manifest["param_count_per_top_level_module"].items():
        assert sum(p.numel() for n, p in params.items() if n.startswith(module + ".") or n == module) == count
    # the frozen DINOv2-L: official 304,372,736 includes the 37x37+1 position table and mask_token that the
    # timm model built at 336 px holds as a 24x24 table (and no mask token)
    vfm = sum(p.numel() for p in tok.vfm.parameters())
    assert vfm == manifest["excluded_param_count"] - (37 * 37 + 1 - 24 * 24) * 1024 - 1024


def test_state_dict_keys_and_shapes_equal_the_manifest(manifest):
    tok = _meta_vfmtok_l()
    ours = {k: list(v.shape) for k, v in tok.state_dict().items()}
    official = {k["key"]: k["shape"] for k in manifest["keys"]}
    assert set(official) - set(ours) == set(manifest["buffers"])  # only the usage log is not ours
    assert set(ours) <= set(official)
    assert all(ours[k] == official[k] for k in ours)


def _synthetic_official_state(manifest) -> dict[str, torch.Tensor]:
    state = {}
    for i, entry in enumerate(manifest["keys"]):
        state[entry["key"]] = torch.full(entry["shape"], float(i % 97) / 97.0)
    return state


def test_synthetic_official_checkpoint_loads_strictly_and_broken_ones_name_the_key(manifest):
    state = _synthetic_official_state(manifest)
    state["encode_transformer.backbone.pretrained_encoder.cls_token"] = torch.zeros(1, 1, 1024)
    ours, backbone = split_official_tokenizer_state(state)
    assert set(backbone) == {"cls_token"} and "slot_quantize.codebook_used" not in ours
    tok = _meta_vfmtok_l()
    strict_load(tok, ours, source="synthetic.pt")
    loaded = tok.state_dict()
    assert not any(v.is_meta for v in loaded.values())
    for key in ("decoder.conv_blocks.0.res.0.conv1.weight", "encode_transformer.slots_pos", "post_slots_quant.bias"):
        assert torch.equal(loaded[key], ours[key])

    missing = dict(ours)
    missing.pop("encode_transformer.transformer.layers.3.self_attn.k_proj.bias")
    with pytest.raises(ValueError, match=r"missing key.*layers\.3\.self_attn\.k_proj\.bias"):
        strict_load(_meta_vfmtok_l(), missing, source="broken.pt")
    wrong = dict(ours)
    wrong["slot_quantize.embedding.weight"] = torch.zeros(16384, 8)
    with pytest.raises(ValueError, match=r"slot_quantize\.embedding\.weight: checkpoint \(16384, 8\)"):
        strict_load(_meta_vfmtok_l(), wrong, source="broken.pt")
    extra = dict(ours)
    extra["decoder.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected key.*decoder\.extra\.weight"):
        strict_load(_meta_vfmtok_l(), extra, source="broken.pt")


def _dinov2_release_layout(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm DINOv2-reg state dict -> the official release layout (cls position inside pos_embed, ...)."""
    out = {k: v for k, v in timm_state.items() if k not in ("reg_token", "pos_embed", "cls_token")}
    dim = timm_state["cls_token"].shape[-1]
    out["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), timm_state["pos_embed"]], dim=1)
    out["cls_token"], out["register_tokens"] = timm_state["cls_token"], timm_state["reg_token"]
    out["mask_token"] = torch.zeros(1, dim)
    return out


def test_load_tokenizer_official_file_with_and_without_backbone_keys(tmp_path):
    tok = create_tokenizer("tiny", vfm_seed=5).eval()  # its encoder differs from the tiny preset's (seed 0)
    ema = dict(tok.state_dict())
    ema["slot_quantize.codebook_used"] = torch.zeros(65536)
    images = torch.rand(1, 3, 112, 112) * 2 - 1
    codes = tok.encode(images)
    # stripped file (as released): the encoder comes from the config (tiny: seed-0 random init)
    torch.save({"ema": ema, "model": ema, "steps": 5, "args": argparse.Namespace(image_size=112)}, tmp_path / "a.pt")
    stripped = load_tokenizer(tmp_path / "a.pt", config="tiny")
    reference = create_tokenizer("tiny").eval()
    reference.load_state_dict({k: v for k, v in ema.items() if k != "slot_quantize.codebook_used"})
    assert torch.equal(stripped.encode(images), reference.encode(images))
    assert not torch.equal(reference.encode(images), codes)  # so the next check can tell the encoders apart
    # full file: the frozen encoder's keys (official prefix and layout) are used as its weights
    backbone = _dinov2_release_layout(tok.vfm.model.state_dict())
    full = dict(ema, **{"encode_transformer.backbone.pretrained_encoder." + k: v for k, v in backbone.items()})
    torch.save({"ema": full, "steps": 5}, tmp_path / "b.pt")
    assert torch.equal(load_tokenizer(tmp_path / "b.pt", config="tiny").encode(images), codes)


def test_load_tokenizer_refuses_a_broken_official_file_naming_the_key(tmp_path):
    tok = create_tokenizer("tiny")
    ema = dict(tok.state_dict())
    broken = dict(ema)
    broken.pop("decode_transformer.mask_embedding")
    torch.save({"ema": broken, "steps": 5}, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"broken\.pt.*decode_transformer\.mask_embedding"):
        load_tokenizer(tmp_path / "broken.pt", config="tiny")
