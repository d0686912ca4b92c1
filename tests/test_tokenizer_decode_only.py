"""Decode-only tokenizer (`with_encoder=False`): same decoded pixels as the full model, no frozen encoder held,
cheap to build at the paper's size (what `vfmtok sample` loads)."""
from __future__ import annotations

import time

import pytest
import torch

from vfmtok.models.tokenizer import DECODE_ONLY, VFMTokenizer
from vfmtok.models.tokenizer_io import create_tokenizer, load_tokenizer, save_tokenizer
from vfmtok.models.tokenizer_config import resolve_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    tok = create_tokenizer("tiny")
    folder = save_tokenizer(tok, tmp_path_factory.mktemp("tok") / "run")
    return tok.eval(), folder


def test_decode_only_tokenizer_decodes_identically_and_holds_no_encoder(saved):
    full, folder = saved
    light = load_tokenizer(folder, with_encoder=False)
    codes = torch.randint(0, full.config.codebook_size, (3, full.config.num_tokens),
                          generator=torch.Generator().manual_seed(2))
    assert torch.equal(light.decode_codes(codes), full.decode_codes(codes))
    assert light.has_encoder is False and full.has_encoder is True
    assert light.encoder_source == DECODE_ONLY
    # the trainable weights are all there and nothing else: no encoder parameter, buffer or meta tensor
    assert light.state_dict().keys() == full.state_dict().keys()
    assert sum(p.numel() for p in light.parameters()) == sum(p.numel() for p in full.parameters())
    assert not any(t.is_meta for t in (*light.parameters(), *light.buffers()))
    with pytest.raises(RuntimeError, match="decode-only"):
        light.vfm
    with pytest.raises(RuntimeError, match="decode-only"):
        light.encode(torch.zeros(1, 3, 112, 112))
    light.to(torch.float64)  # moving/casting works without an encoder
    assert light.decode_codes(codes).dtype == torch.float64
    with pytest.raises(ValueError, match="decode-only"):
        VFMTokenizer(full.config, encoder_weights="random", with_encoder=False)


def test_decode_only_paper_tokenizer_skips_the_dinov2_l_build():
    """vfmtok-l decode-only: only the 73.29 M trainable parameters are built (the full model also builds and
    randomly initialises the 304 M-parameter DINOv2-L, ~10 s here); the encoder's shape still sizes the decoder."""
    cfg = resolve_config("vfmtok-l")
    start = time.perf_counter()
    tok = VFMTokenizer(cfg, with_encoder=False)
    seconds = time.perf_counter() - start
    assert sum(p.numel() for p in tok.parameters()) == 73_286_831
    assert not tok.has_encoder and not any(p.is_meta for p in tok.parameters())
    assert tok.decode_transformer.cfg.enc_grid == 24 and tok.decode_transformer.cfg.semantic_dim == 1024
    assert seconds < 8.0, f"decode-only vfmtok-l build took {seconds:.1f} s"
