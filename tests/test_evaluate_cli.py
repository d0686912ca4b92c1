"""`vfmtok evaluate` end to end on tiny npz files with a random-init Inception of the real architecture."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vfmtok.cli.main import app
from vfmtok.device import set_tf32, tf32_settings
from vfmtok.metrics.inception import random_inception_state_dict

runner = CliRunner()


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    weights = root / "inception_random.pth"
    torch.save(random_inception_state_dict(0), weights)
    rng = np.random.default_rng(0)
    samples = rng.integers(0, 256, (5, 24, 24, 3), dtype=np.uint8)
    reference = np.clip(rng.normal(128, 40, (4, 24, 24, 3)), 0, 255).astype(np.uint8)
    np.savez(root / "samples.npz", arr_0=samples)
    np.savez(root / "ref.npz", arr_0=reference, arr_1=np.arange(4))
    return root, weights, samples, reference


def _independent_features(weights, images):
    """pool3, HWC spatial and unbiased logits straight from torch-fidelity's own loader and forward."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    net = FeatureExtractorInceptionV3("check", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(weights))
    grabbed = {}
    net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: grabbed.__setitem__("map", o.detach().clone()))
    with torch.no_grad():
        pool3, logits = net(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    spatial = grabbed["map"][:, :7].numpy().transpose(0, 2, 3, 1).reshape(len(images), -1)
    return pool3.double().numpy(), spatial.astype(np.float64), logits.double().numpy()


def _fid_from_features(a, b):
    """Exact FID for few samples: tr sqrt(S1 S2) = nuclear norm of A1 A2^T (centred, / sqrt(n - 1))."""
    ca, cb = (a - a.mean(0)) / np.sqrt(len(a) - 1), (b - b.mean(0)) / np.sqrt(len(b) - 1)
    cross = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (ca**2).sum() + (cb**2).sum() - 2 * cross)


def _brute_pr(real, gen, k=3):
    def radii(x):
        return np.sort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, k]

    d = ((real[:, None] - gen[None]) ** 2).sum(-1)
    return float((d <= radii(real)[:, None]).any(0).mean()), float((d <= radii(gen)[None]).any(1).mean())


def _hand_is(logits, seed=0):
    logits = logits[np.random.default_rng(seed).permutation(len(logits))]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return float(np.exp((p * (np.log(p) - np.log(p.mean(0)))).sum(1).mean()))


@pytest.mark.slow
def test_cli_end_to_end_matches_independent_computation(batches):
    root, weights, samples, reference = batches
    out_json = root / "result.json"
    set_tf32(True)  # evaluate must turn TF32 off (the ADM evaluator's Inception is fp32)
    result = runner.invoke(app, ["evaluate", str(root / "samples.npz"), "--ref", str(root / "ref.npz"),
                                 "--inception-weights", str(weights), "--json", str(out_json), "--batch-size", "4",
                                 "--fid-method", "eigh", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"samples: {root / 'samples.npz'}  N=5  24x24" in out
    assert f"reference: {root / 'ref.npz'}  N=4  24x24" in out
    assert "5 images < 50000" in out and "4 images < 10000" in out
    lines = [line for line in out.splitlines() if line.split(":")[0] in
             ("Inception Score", "FID", "sFID", "Precision", "Recall")]
    assert [line.split(":")[0] for line in lines] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]

    data = json.loads(out_json.read_text())
    s_pool, s_spatial, s_logits = _independent_features(weights, samples)
    r_pool, r_spatial, _ = _independent_features(weights, reference)
    assert data["fid"] == pytest.approx(_fid_from_features(s_pool, r_pool), rel=1e-4, abs=1e-6)
    assert data["sfid"] == pytest.approx(_fid_from_features(s_spatial, r_spatial), rel=1e-4, abs=1e-6)
    # a random network's IS is barely above 1: compare log IS (the mean KL) tightly
    assert np.log(data["inception_score"]) == pytest.approx(np.log(_hand_is(s_logits)), rel=1e-3)
    assert data["inception_score"] > 1 + 1e-5
    assert (data["precision"], data["recall"]) == _brute_pr(r_pool, s_pool)
    assert f"FID: {data['fid']}" in lines[1]
    # provenance
    import hashlib

    assert data["inception_weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert data["reference"]["sha256"] == hashlib.sha256((root / "ref.npz").read_bytes()).hexdigest()
    assert data["inception_weights"]["official"] is False and data["inception_weights"]["has_fc"] is True
    assert (data["samples"]["count"], data["reference"]["count"], data["samples"]["height"]) == (5, 4, 24)
    assert data["protocol"]["is_shuffle_seed"] == 0 and data["protocol"]["pr_k"] == 3
    assert data["protocol"]["tf32"] == {"enabled": False, "cuda_matmul": False, "cudnn": False} == {
        "enabled": False, **tf32_settings()}
    assert data["reference"]["statistics"] == "computed from arr_0"
    cache = np.load(data["reference"]["stats_cache"])
    np.testing.assert_allclose(cache["pool3"], r_pool, rtol=1e-5, atol=1e-6)
    assert data["vfmtok_version"]


def test_precomputed_reference_statistics_are_honoured(batches):
    from vfmtok.metrics.inception import InceptionFeatureExtractor
    from vfmtok.metrics.reference import load_reference_statistics, validate_image_npz

    root, weights, samples, reference = batches
    rng = np.random.default_rng(7)
    stored = {"mu": rng.standard_normal(2048), "sigma": np.diag(rng.uniform(1, 2, 2048)),
              "mu_s": rng.standard_normal(2023), "sigma_s": np.diag(rng.uniform(1, 2, 2023))}
    np.savez(root / "ref_stats.npz", arr_0=reference, **stored)
    extractor = InceptionFeatureExtractor(torch.load(weights, weights_only=True))
    stats = load_reference_statistics(validate_image_npz(root / "ref_stats.npz", "reference"), extractor,
                                      "0" * 64, batch_size=4, use_cache=False, progress=False)
    for key, value in stored.items():
        np.testing.assert_array_equal(getattr(stats, key), value)  # FID/sFID use the stored statistics
    assert stats.stats_source == "precomputed in the reference file (mu, sigma, mu_s, sigma_s)"
    r_pool, _, _ = _independent_features(weights, reference)
    np.testing.assert_allclose(stats.pool3, r_pool, rtol=1e-5, atol=1e-6)  # P/R still use arr_0 features
    np.savez(root / "ref_bad.npz", arr_0=reference, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(ValueError, match=r"mu \(64,\) \(expected \(2048,\)\)"):
        load_reference_statistics(validate_image_npz(root / "ref_bad.npz", "reference"), extractor,
                                  "0" * 64, batch_size=4, use_cache=False, progress=False)


def _run(args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.mark.parametrize("name,array,message", [
    ("float.npz", np.zeros((4, 8, 8, 3), np.float32), "dtype float32; expected uint8"),
    ("chw.npz", np.zeros((4, 3, 8, 8), np.uint8), "looks channels-first"),
    ("rgba.npz", np.zeros((4, 8, 8, 4), np.uint8), "expected 3 RGB channels in the last axis, found 4"),
    ("gray.npz", np.zeros((4, 8, 8), np.uint8), "expected a 4-D uint8 array"),
    ("int64.npz", np.zeros((4, 8, 8, 3), np.int64), "expected uint8"),
])
def test_bad_sample_arrays_are_refused_naming_what_was_found(batches, name, array, message):
    root, weights, _, _ = batches
    np.savez(root / name, arr_0=array)
    result = _run([root / name, "--ref", root / "ref.npz", "--inception-weights", weights])
    assert result.exit_code == 2
    assert message in result.output and str(root / name) in result.output and str(array.shape) in result.output


def test_statistics_only_reference_is_refused(batches):
    root, weights, _, _ = batches
    np.savez(root / "stats_only.npz", mu=np.zeros(2048), sigma=np.eye(2048)[:2, :2])
    result = _run([root / "samples.npz", "--ref", root / "stats_only.npz", "--inception-weights", weights])
    assert result.exit_code == 2
    assert "no image array 'arr_0' (found keys: ['mu', 'sigma'])" in result.output
    assert "statistics-only" in result.output


def test_resolution_mismatch_refused_unless_allowed(batches):
    root, weights, _, _ = batches
    np.savez(root / "big.npz", arr_0=np.zeros((4, 32, 32, 3), np.uint8))
    result = _run([root / "big.npz", "--ref", root / "ref.npz", "--inception-weights", weights])
    assert result.exit_code == 2 and "resolution mismatch" in result.output and "--allow-resize" in result.output
    assert "32x32" in result.output and "24x24" in result.output


def test_missing_weights_message_is_clear(batches, tmp_path):
    root, _, _, _ = batches
    result = _run([root / "samples.npz", "--ref", root / "ref.npz", "--inception-weights", tmp_path / "missing.pth"])
    assert result.exit_code == 2
    assert "FID Inception weights not found" in result.output and "pt_inception-2015-12-05-6726825d.pth" in result.output
    assert result.output.count("error:") == 1


# ---------------------------------------------------------------------------------------------
# Tokenizer mode: --encoder-weights reaches the frozen encoder
# ---------------------------------------------------------------------------------------------
def test_tokenizer_mode_uses_encoder_weights_file(batches, tmp_path):
    from PIL import Image

    import vfmtok
    from vfmtok.models.tokenizer_io import save_tokenizer

    _, weights, _, _ = batches
    torch.manual_seed(0)
    tok = vfmtok.create_tokenizer("tiny")
    save_tokenizer(tok, tmp_path / "run")
    same = {k: v.clone() for k, v in tok.vfm.model.state_dict().items()}
    torch.save(same, tmp_path / "enc_same.pth")
    torch.save({k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in same.items()},
               tmp_path / "enc_other.pth")
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(["n01440764", "n01443537"]):
        (tmp_path / "data" / wnid).mkdir(parents=True)
        for j in range(2):
            Image.fromarray(rng.integers(0, 256, (120, 130, 3), dtype=np.uint8)).save(
                tmp_path / "data" / wnid / f"{j}.png")

    def run(*extra):
        out = tmp_path / f"r{len(list(tmp_path.glob('r*.json')))}.json"
        result = _run(["--tokenizer", tmp_path / "run", "--data", tmp_path / "data", "--inception-weights", weights,
                       "--fid-method", "eigh", "--batch-size", 4, "--json", out, *extra])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    base = run()
    with_same = run("--encoder-weights", tmp_path / "enc_same.pth")
    with_other = run("--encoder-weights", tmp_path / "enc_other.pth")
    assert with_same["psnr"] == base["psnr"] and with_same["rfid"] == base["rfid"]
    assert with_other["psnr"] != base["psnr"]

    missing = _run(["--tokenizer", tmp_path / "run", "--data", tmp_path / "data", "--inception-weights", weights,
                    "--encoder-weights", tmp_path / "nope.pth"])
    assert missing.exit_code != 0
    assert "nope.pth" in missing.output


def test_input_caveats_print_before_the_work_even_when_it_then_fails(batches, tmp_path):
    root, _, _, _ = batches
    bad_weights = tmp_path / "not_inception.pth"
    torch.save({"junk.weight": torch.zeros(1)}, bad_weights)
    res = runner.invoke(app, ["evaluate", str(root / "samples.npz"), "--ref", str(root / "ref.npz"),
                              "--inception-weights", str(bad_weights), "--no-progress"])
    assert res.exit_code == 2
    out = res.output
    assert "warning: samples: 5 images < 50000" in out and "warning: reference: 4 images < 10000" in out
    assert out.index("warning: samples:") < out.index("error:")  # shown although the evaluation then failed


def test_library_warnings_become_one_line(capsys):
    import warnings

    from scipy.linalg import LinAlgWarning

    from vfmtok.cli.common import warnings_as_lines

    with warnings_as_lines():
        warnings.warn(LinAlgWarning("Ill-conditioned matrix (rcond=1e-20): result may not be accurate."))
    err = capsys.readouterr().err
    assert err == "warning: Ill-conditioned matrix (rcond=1e-20): result may not be accurate.\n"


def test_samples_given_as_a_run_folder_use_its_newest_samples_npz(batches, tmp_path, monkeypatch):
    import os
    import shutil

    root, weights, _, _ = batches
    run = tmp_path / "runs" / "ar-1"
    for name, age in (("old", 100), ("new", 0)):
        (run / "samples" / name).mkdir(parents=True)
        shutil.copy(root / "samples.npz", run / "samples" / name / "samples.npz")
        os.utime(run / "samples" / name / "samples.npz", (1e9 - age, 1e9 - age))
    res = runner.invoke(app, ["evaluate", str(run), "--ref", str(root / "ref.npz"), "--inception-weights",
                              str(weights), "--no-progress", "--fid-method", "eigh"])
    assert res.exit_code == 0, res.output
    assert f"samples: {run / 'samples' / 'new' / 'samples.npz'} (newest samples.npz under {run})" in res.output
    monkeypatch.chdir(tmp_path)
    missing = runner.invoke(app, ["evaluate", "samples.npz", "--ref", str(root / "ref.npz")])
    assert missing.exit_code == 2
    assert "SAMPLES samples.npz: file not found; the newest samples are runs/ar-1/samples/new/samples.npz" in missing.output
