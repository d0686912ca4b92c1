"""Inception wrapper: TF1 resize, sFID feature order, logits; weights location/validation messages."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vfmtok.metrics.inception import InceptionFeatureExtractor, random_inception_state_dict, tf1_resize_bilinear
from vfmtok.metrics.weights import (
    ENV_VAR,
    HUB_FILENAMES,
    InceptionWeightsError,
    InceptionWeightsNotFound,
    load_inception_weights,
    locate_inception_weights,
)


def _numpy_tf1_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 legacy ResizeBilinear (align_corners=False): src = dst * in / out, no half-pixel offset."""
    in_h, in_w = image.shape
    out = np.zeros((out_h, out_w))
    for y in range(out_h):
        sy = y * in_h / out_h
        y0 = int(np.floor(sy))
        y1, fy = min(y0 + 1, in_h - 1), sy - y0
        for x in range(out_w):
            sx = x * in_w / out_w
            x0 = int(np.floor(sx))
            x1, fx = min(x0 + 1, in_w - 1), sx - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[y, x] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize("in_hw,out_size", [((5, 7), 11), ((9, 6), 4), ((3, 3), 8)])
def test_tf1_resize_matches_independent_numpy(in_hw, out_size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, in_hw).astype(np.float64)
    got = tf1_resize_bilinear(torch.from_numpy(image).float()[None, None], out_size)[0, 0].double().numpy()
    np.testing.assert_allclose(got, _numpy_tf1_bilinear(image, out_size, out_size), atol=1e-3)


def test_tf1_resize_differs_from_half_pixel_bilinear():
    # Guard that the legacy grid is used: torch's align_corners=False (half-pixel) gives other values.
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    half_pixel = torch.nn.functional.interpolate(image, size=(6, 6), mode="bilinear", align_corners=False)
    assert not torch.allclose(tf1_resize_bilinear(image, 6), half_pixel)


@pytest.fixture(scope="module")
def random_extractor():
    return InceptionFeatureExtractor(random_inception_state_dict(0), has_fc=True)


def test_spatial_features_are_mixed_6d_branch1x1_first_7_channels_in_hwc_order(random_extractor):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (1, 40, 48, 3), dtype=np.uint8)
    captured = {}
    handle = random_extractor.net.Mixed_6d.branch1x1.register_forward_hook(
        lambda m, i, o: captured.__setitem__("map", o.detach().clone()))
    try:
        out = random_extractor(images)
    finally:
        handle.remove()
    fmap = captured["map"].numpy()  # (1, 192, 17, 17)
    assert fmap.shape == (1, 192, 17, 17) and out.spatial.shape == (1, 2023)
    for n, h, w, c in [(0, 0, 0, 1), (0, 0, 1, 0), (0, 5, 11, 6), (0, 16, 16, 6)]:
        assert out.spatial[n, (h * 17 + w) * 7 + c].item() == pytest.approx(float(fmap[n, c, h, w]))
    # pool3 and logits are torch-fidelity's own features; logits = pool3 @ fc.weight.T (no bias)
    reference = random_extractor.net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    torch.testing.assert_close(out.pool3, reference[0])
    fc = random_extractor.net.fc.weight
    torch.testing.assert_close(out.logits, out.pool3 @ fc.T, rtol=1e-5, atol=1e-5)
    assert out.logits.shape == (1, 1008)


def test_extractor_refuses_non_uint8_or_channels_first(random_extractor):
    with pytest.raises(ValueError, match="uint8"):
        random_extractor(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        random_extractor(np.zeros((1, 3, 8, 8), np.uint8))


def test_missing_weights_give_one_message_naming_file_and_place(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(InceptionWeightsNotFound) as info:
        locate_inception_weights()
    message = str(info.value)
    assert HUB_FILENAMES[0] in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message
    assert "--inception-weights" in message and ENV_VAR in message
    with pytest.raises(InceptionWeightsNotFound, match="no such file"):
        locate_inception_weights(tmp_path / "nope.pth")


def test_weights_found_through_env_var_then_hub_cache(tmp_path, monkeypatch):
    state = random_inception_state_dict(1)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(state, hub / HUB_FILENAMES[0])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert locate_inception_weights() == hub / HUB_FILENAMES[0]
    other = tmp_path / "env.pth"
    torch.save(state, other)
    monkeypatch.setenv(ENV_VAR, str(other))
    assert locate_inception_weights() == other


def test_weights_without_fc_report_no_fc_and_bad_files_are_refused(tmp_path, random_extractor):
    import hashlib

    state = random_inception_state_dict(2)
    del state["fc.weight"], state["fc.bias"]
    path = tmp_path / "nofc.pth"
    torch.save(state, path)
    loaded, info = load_inception_weights(path)
    assert not info.has_fc and not info.official and info.origin == "unverified"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.count_nonzero(loaded["fc.weight"]) == 0
    random_extractor.has_fc = info.has_fc
    try:
        assert random_extractor(np.zeros((1, 8, 8, 3), np.uint8)).logits is None
    finally:
        random_extractor.has_fc = True
    broken = dict(state)
    del broken["Mixed_6d.branch1x1.conv.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(InceptionWeightsError, match="Mixed_6d.branch1x1.conv.weight"):
        load_inception_weights(tmp_path / "broken.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match="junk.pth"):
        load_inception_weights(tmp_path / "junk.pth")
