"""Tokenizer reconstruction pass: PSNR/SSIM on the 256-px uint8 pairs, rFID/rIS plumbing, codebook usage."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from vfmtok.metrics.inception import InceptionOutputs
from vfmtok.jobs.evaluate_tokenizer import evaluate_reconstructions


class BlockTokenizer:
    """Stub tokenizer: one code per 8x8 block = quantised block mean of the grey level (K = 16)."""

    def encode(self, images):
        grey = F.avg_pool2d(images.mean(1, keepdim=True), 8)  # (B, 1, S/8, S/8) in [-1, 1]
        return ((grey + 1) / 2 * 15).round().long().flatten(1)

    def decode_codes(self, codes):
        side = int(codes.shape[1] ** 0.5)
        grey = codes.float().reshape(-1, 1, side, side) / 15 * 2 - 1
        return F.interpolate(grey, scale_factor=8, mode="nearest").repeat(1, 3, 1, 1)


class StatsExtractor:
    """Cheap stand-in for Inception: 6 channel statistics as 'pool3', 3 as 'logits'."""

    def __call__(self, u8):
        x = torch.from_numpy(u8).double() / 255
        feats = torch.cat([x.mean((1, 2)), x.std((1, 2))], 1).float()
        return InceptionOutputs(pool3=feats, spatial=feats, logits=feats[:, :3] * 5)


def _photos(n, size=64):
    photo = data.astronaut()
    crops = [photo[40 * i : 40 * i + 256 : 4, 30 * i : 30 * i + 256 : 4] for i in range(n)]  # 64 x 64
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1


def _independent(batch):
    tok = BlockTokenizer()
    recon = tok.decode_codes(tok.encode(batch))
    out = []
    for t in (batch, recon):
        u8 = (t * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out.append(np.stack([np.asarray(Image.fromarray(a).resize((256, 256), Image.BICUBIC)) for a in u8]))
    return out


def test_reconstruction_metrics_match_independent_computation():
    images = _photos(6)
    batches = [images[:4], images[4:]]
    result = evaluate_reconstructions(BlockTokenizer(), batches, StatsExtractor(), codebook_size=16,
                                      fid_method="sqrtm", progress=False)
    gt, rec = _independent(images)
    gt_f, rec_f = gt / 255.0, rec / 255.0
    assert result["count"] == 6 and result["eval_size"] == 256
    assert result["psnr"] == pytest.approx(np.mean([peak_signal_noise_ratio(g, r, data_range=1.0)
                                                    for g, r in zip(gt_f, rec_f)]), rel=1e-9)
    assert result["ssim"] == pytest.approx(np.mean([structural_similarity(g, r, channel_axis=-1, data_range=1.0)
                                                    for g, r in zip(gt_f, rec_f)]), rel=1e-9)
    assert result["ssim_official_data_range_2"] == pytest.approx(
        np.mean([structural_similarity(g, r, channel_axis=-1, data_range=2.0) for g, r in zip(gt_f, rec_f)]), rel=1e-9)
    codes = BlockTokenizer().encode(images)
    assert result["codes_used"] == len(torch.unique(codes)) and result["codebook_usage"] == len(torch.unique(codes)) / 16
    feats = {k: StatsExtractor()(v).pool3.double().numpy() for k, v in (("gt", gt), ("rec", rec))}
    from scipy import linalg

    mu_r, mu_g = feats["rec"].mean(0), feats["gt"].mean(0)
    s_r, s_g = np.cov(feats["rec"], rowvar=False), np.cov(feats["gt"], rowvar=False)
    expected = ((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2 * np.trace(linalg.sqrtm(s_r @ s_g).real)
    assert result["rfid"] == pytest.approx(max(expected, 0.0), rel=1e-6, abs=1e-9)
    assert result["rfid"] > 0
    logits = StatsExtractor()(rec).logits.double().numpy()[np.random.default_rng(0).permutation(6)]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert result["ris"] == pytest.approx(np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()), rel=1e-9)
