"""`evaluate --tokenizer`: the ground truth's Inception statistics are cached by data fingerprint (issue #15 bug 9).

A second run on the same data reuses them and gives identical metrics; a changed dataset misses the cache, and
`--limit`, the Inception weights and the sizes are part of the key. The cached statistics equal an independent pass over the ground truth.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vfmtok
from vfmtok.cli.main import app
from vfmtok.metrics.inception import random_inception_state_dict


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from vfmtok.models.tokenizer_io import save_tokenizer

    root = tmp_path_factory.mktemp("gtcache")
    torch.manual_seed(0)
    save_tokenizer(vfmtok.create_tokenizer("tiny", encoder_weights="random"), root / "run")
    torch.save(random_inception_state_dict(0), root / "inception.pth")
    torch.save(random_inception_state_dict(1), root / "inception_other.pth")
    rng = np.random.default_rng(0)
    for wnid in ("n01440764", "n01443537"):
        (root / "data" / wnid).mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 256, (90, 100, 3), dtype=np.uint8)).save(root / "data" / wnid / f"{j}.png")
    return root


def _evaluate(root, monkeypatch, *extra, weights="inception.pth"):
    monkeypatch.setenv("VFMTOK_GT_STATS_CACHE", str(root / "cache"))
    out = root / "result.json"
    result = CliRunner().invoke(app, ["evaluate", "--tokenizer", str(root / "run"), "--data", str(root / "data"),
                                      "--inception-weights", str(root / weights), "--fid-method", "eigh",
                                      "--batch-size", "4", "--num-workers", "0", "--no-progress", "--json", str(out),
                                      *map(str, extra)])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), result.output


def test_second_run_reuses_the_cache_and_a_changed_dataset_misses_it(setup, monkeypatch, one_thread):
    from vfmtok.metrics.fid import feature_statistics
    from vfmtok.metrics.gt_stats_cache import read_statistics
    from vfmtok.metrics.inception import InceptionFeatureExtractor
    from vfmtok.data.crops import AdmCenterCrop
    from vfmtok.data.datasets import ImageFolderDataset
    from vfmtok.jobs.evaluate_tokenizer import to_uint8_resized

    root = setup
    first, out1 = _evaluate(root, monkeypatch)
    assert first["gt_statistics"]["source"] == "computed" and "ground-truth statistics: computed" in out1
    second, out2 = _evaluate(root, monkeypatch)
    assert second["gt_statistics"]["source"] == "cache" and "ground-truth statistics: cache" in out2
    assert second["gt_statistics"]["key"] == first["gt_statistics"]["key"]
    for metric in ("rfid", "ris", "psnr", "ssim", "codebook_usage", "count"):
        assert second[metric] == first[metric], metric

    # the cached statistics are those of an independent pass over the ground truth (crops -> uint8 -> 256)
    mu, sigma = read_statistics(first["gt_statistics"]["key"])
    ds = ImageFolderDataset(root / "data", split="val", transform=AdmCenterCrop(first["image_size"]))
    u8 = to_uint8_resized(torch.stack([ds[i][0] for i in range(len(ds))]))
    extractor = InceptionFeatureExtractor(torch.load(root / "inception.pth", weights_only=True))
    mu_ref, sigma_ref = feature_statistics(extractor(u8).pool3.cpu().numpy())
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-4, atol=1e-6)

    # every input of the statistics is part of the key (--limit, the Inception weights, the sizes)
    from vfmtok.metrics.gt_stats_cache import cache_key
    base = {"listing_sha256": "x", "count": 6, "image_size": 112, "eval_size": 256, "inception_sha256": "w",
            "precision": "fp32", "crop": "adm_center"}
    keys = {cache_key({**base, k: v}) for k, v in
            [("count", 4), ("inception_sha256", "v"), ("image_size", 56), ("eval_size", 299), ("listing_sha256", "y")]}
    assert len(keys) == 5 and cache_key(base) not in keys and cache_key(dict(base)) == cache_key(base)

    # a changed dataset (one image replaced) misses the cache
    Image.fromarray(np.zeros((90, 100, 3), dtype=np.uint8)).save(root / "data" / "n01440764" / "0.png")
    changed, _ = _evaluate(root, monkeypatch)
    assert changed["gt_statistics"]["source"] == "computed"
    assert changed["gt_statistics"]["key"] != first["gt_statistics"]["key"]
    assert changed["rfid"] != first["rfid"]

