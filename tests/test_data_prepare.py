"""prepare-data end to end: shards, rejects, resume after a kill, refusal to mix settings, the ADM npz."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vfmtok.cli.main import app
from vfmtok.data.adm_npz import inspect_npz
from vfmtok.data.crops import adm_box_halve, adm_center_crop
from vfmtok.data.decode import decode_image
from vfmtok.jobs.prepare import FAIL_AFTER_ENV, NpzRequest, PrepareError, PrepareSettings, prepare_dataset
from vfmtok.data.shards import read_shard_index

runner = CliRunner()
BAD = {"n01/zero.JPEG": "empty file", "n02/text.JPEG": "not an image", "n02/cut.JPEG": "truncated",
       "n03/readme.txt": "not an image extension"}


@pytest.fixture()
def source(tmp_path):
    """3 classes x 5 images of mixed size/mode (+ a CMYK JPEG, a PNG named .JPEG) and 4 bad files."""
    root = tmp_path / "src"
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(("n01", "n02", "n03")):
        (root / wnid).mkdir(parents=True)
        for i in range(5):
            w, h = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
            arr = _smooth(w, h, rng)
            Image.fromarray(arr).save(root / wnid / f"{wnid}_{i}.JPEG", "JPEG", quality=90)
    cmyk = np.dstack([_smooth(40, 30, rng), np.full((30, 40), 20, np.uint8)])
    Image.fromarray(cmyk, "CMYK").save(root / "n03" / "cmyk.JPEG", "JPEG", quality=95)
    Image.fromarray(rng.integers(0, 256, (50, 26, 3), dtype=np.uint8)).save(root / "n01" / "png.JPEG", "PNG")
    good = (root / "n01" / "n01_0.JPEG").read_bytes()
    (root / "n01" / "zero.JPEG").write_bytes(b"")
    (root / "n02" / "text.JPEG").write_text("hello")
    (root / "n02" / "cut.JPEG").write_bytes(good[: len(good) // 2])
    (root / "n03" / "readme.txt").write_text("notes")
    return root


SETTINGS = PrepareSettings(min_size=12, shard_size=4)


def _smooth(w, h, rng):
    """Smooth colour gradient (JPEG round trips stay within a few levels)."""
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    a, b, c = rng.uniform(30, 220, 3)
    return np.clip(np.stack([a + 30 * x, b + 30 * y, c - 20 * x * y], -1), 0, 255).astype(np.uint8)


def _files(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}


def _manifest_core(out):
    manifest = json.loads((out / "manifest.json").read_text())
    return {k: v for k, v in manifest.items() if k not in ("created_utc", "finished_utc", "command_line")}


def test_prepare_writes_shards_labels_rejects_and_manifest(source, tmp_path):
    out = tmp_path / "out"
    result = prepare_dataset(source, out, SETTINGS, command_line=["test"])
    assert result.num_images == 17 and result.num_rejected == 4
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert {r["path"]: r["reason"] for r in rejected}.keys() == BAD.keys()
    for r in rejected:
        assert BAD[r["path"]] in r["reason"]
    assert [r["index"] for r in rejected] == sorted(r["index"] for r in rejected)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["format_version"] == 1
    assert manifest["counts_per_class"] == {"n01": 6, "n02": 5, "n03": 6}
    assert manifest["num_rejected"] == 4 and manifest["command_line"] == ["test"]
    assert json.loads((out / "classes.json").read_text())["classes"] == ["n01", "n02", "n03"]
    # every stored image equals the decoded source after the ADM pre-shrink (lossless where verbatim)
    index = np.load(out / "index.npz")
    assert list(index["label"]) == [0] * 6 + [1] * 5 + [2] * 6
    reencoded = 0
    for k, shard in enumerate(manifest["shards"]):
        for key, ext, offset, size, label in read_shard_index(out / shard["name"]):
            with open(out / shard["name"], "rb") as handle:
                handle.seek(offset)
                stored = decode_image(handle.read(size)).image
            meta_src = sorted(source.rglob("*"))
            src_path = next(p for p in meta_src if p.relative_to(source).as_posix() ==
                            _meta(out / shard["name"], key)["src"])
            expected = adm_box_halve(decode_image(src_path).image, 12)
            assert stored.size == expected.size
            diff = np.abs(np.asarray(stored, int) - np.asarray(expected, int))
            meta = _meta(out / shard["name"], key)
            if meta["stored"] == "verbatim" or ext == "png":
                assert diff.max() == 0, meta
            else:  # re-encoded JPEG (quality 95, 4:4:4)
                assert diff.mean() < 1.5, (meta, diff.mean())
            reencoded += meta["stored"] == "reencoded"
    assert reencoded >= 5  # halved images, the CMYK JPEG and the PNG named .JPEG
    # provenance: sha256 over per-shard sha256 chains of the accepted source files' bytes
    per_shard = []
    for shard in manifest["shards"]:
        chain = hashlib.sha256()
        for key, *_ in read_shard_index(out / shard["name"]):
            chain.update(hashlib.sha256((source / _meta(out / shard["name"], key)["src"]).read_bytes()).digest())
        per_shard.append(chain.hexdigest())
    assert manifest["source"]["content_sha256"] == hashlib.sha256("".join(per_shard).encode()).hexdigest()


def _meta(shard_path, key):
    import tarfile

    with tarfile.open(shard_path) as tar:
        return json.loads(tar.extractfile(f"{key}.json").read())


def test_shards_are_readable_by_webdataset(source, tmp_path):
    import webdataset as wds

    out = tmp_path / "out"
    prepare_dataset(source, out, SETTINGS)
    manifest = json.loads((out / "manifest.json").read_text())
    urls = [str(out / s["name"]) for s in manifest["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    index = np.load(out / "index.npz")
    assert [int(s["__key__"]) for s in samples] == list(index["source_index"])
    assert [int(s["cls"]) for s in samples] == list(index["label"])


def test_resume_after_kill_gives_identical_output(source, tmp_path, monkeypatch):
    reference = tmp_path / "ref"
    prepare_dataset(source, reference, SETTINGS, command_line=["x"])
    out = tmp_path / "out"
    monkeypatch.setenv(FAIL_AFTER_ENV, "2")
    with pytest.raises(RuntimeError, match="injected failure"):
        prepare_dataset(source, out, SETTINGS)
    assert len(list((out / ".progress").glob("shard-*.json"))) == 2
    assert json.loads((out / "manifest.json").read_text())["status"] == "in_progress"
    (out / ".shard-000003.tar.tmp-999").write_bytes(b"partial shard of the killed worker")
    monkeypatch.delenv(FAIL_AFTER_ENV)
    result = prepare_dataset(source, out, SETTINGS, command_line=["x"], workers=2)
    assert result.resumed_shards == 2
    assert _files(out) == _files(reference)
    assert _manifest_core(out) == _manifest_core(reference)


def test_sigkilled_process_resumes_to_identical_output(source, tmp_path):
    """A real `kill -9` of the preparing process after 2 shards (no cleanup code runs), then a restart."""
    import os
    import signal
    import subprocess
    import sys

    reference = tmp_path / "ref"
    prepare_dataset(source, reference, SETTINGS, command_line=["x"])
    out = tmp_path / "out"
    code = ("import sys; from vfmtok.jobs.prepare import PrepareSettings, prepare_dataset; "
            "prepare_dataset(sys.argv[1], sys.argv[2], PrepareSettings(min_size=12, shard_size=4))")
    env = {**os.environ, FAIL_AFTER_ENV: "2:kill"}
    proc = subprocess.run([sys.executable, "-c", code, str(source), str(out)], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert not (out / "index.npz").exists()
    result = prepare_dataset(source, out, SETTINGS, command_line=["x"])
    assert result.resumed_shards == 2
    assert _files(out) == _files(reference)
    assert _manifest_core(out) == _manifest_core(reference)


def test_parallel_run_equals_serial_run(source, tmp_path):
    prepare_dataset(source, tmp_path / "a", SETTINGS, workers=1)
    prepare_dataset(source, tmp_path / "b", SETTINGS, workers=2)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")


def test_refuses_to_mix_settings_unless_overwrite(source, tmp_path):
    out = tmp_path / "out"
    prepare_dataset(source, out, SETTINGS)
    with pytest.raises(PrepareError, match="min_size"):
        prepare_dataset(source, out, PrepareSettings(min_size=0, shard_size=4))
    (source / "n02" / "extra.JPEG").write_bytes((source / "n02" / "n02_1.JPEG").read_bytes())
    with pytest.raises(PrepareError, match="source files changed"):
        prepare_dataset(source, out, SETTINGS)
    result = prepare_dataset(source, out, PrepareSettings(min_size=0, shard_size=4), overwrite=True)
    assert result.num_images == 18
    assert json.loads((out / "manifest.json").read_text())["settings"]["min_size"] == 0
    with pytest.raises(PrepareError, match="npz-count 99"):  # refused before any work
        prepare_dataset(source, tmp_path / "new", SETTINGS, npz=NpzRequest(tmp_path / "x.npz", 8, count=99))
    assert not (tmp_path / "new").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(PrepareError, match="not empty"):
        prepare_dataset(source, foreign, SETTINGS)


def test_npz_holds_adm_centre_crops_of_the_sources(source, tmp_path):
    out, npz = tmp_path / "out", tmp_path / "ref.npz"
    prepare_dataset(source, out, SETTINGS, npz=NpzRequest(npz, size=16))
    info = inspect_npz(npz)
    assert info.shapes == {"arr_0": (17, 16, 16, 3), "arr_1": (17,)}
    assert info.dtypes == {"arr_0": np.uint8, "arr_1": np.int64}
    data = np.load(npz)
    index = np.load(out / "index.npz")
    np.testing.assert_array_equal(data["arr_1"], index["label"])
    rels = [_meta(out / f"shard-{s:06d}.tar", f"{k:08d}")["src"] for s, k in zip(index["shard"], index["source_index"])]
    for i, rel in enumerate(rels):
        expected = adm_center_crop(decode_image(source / rel).image, 16)
        np.testing.assert_array_equal(data["arr_0"][i], expected)
    assert not list((out / ".progress").glob("*.npy")), "crop files must be cleaned up"
    # shuffled subset: a fixed permutation of the same crops and labels
    prepare_dataset(source, out, SETTINGS, npz=NpzRequest(tmp_path / "sub.npz", 16, count=5, shuffle_seed=3))
    sub = np.load(tmp_path / "sub.npz")
    order = np.random.default_rng(3).permutation(17)[:5]
    np.testing.assert_array_equal(sub["arr_0"], data["arr_0"][order])
    np.testing.assert_array_equal(sub["arr_1"], data["arr_1"][order])


def test_cli_strict_exits_non_zero_on_rejects_and_help_lists_options(source, tmp_path):
    ok = runner.invoke(app, ["prepare-data", str(source), str(tmp_path / "a"), "--min-size", "12", "--no-progress"])
    assert ok.exit_code == 0, ok.output
    assert "17 images" in ok.output and "4 rejected" in ok.output
    strict = runner.invoke(app, ["prepare-data", str(source), str(tmp_path / "b"), "--strict", "--no-progress"])
    assert strict.exit_code == 1
    assert (tmp_path / "b" / "rejected.jsonl").read_text().count("\n") == 4
    help_text = runner.invoke(app, ["prepare-data", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--split", "--classes", "--npz", "--npz-size", "--npz-count", "--shuffle-seed", "--num-workers",
                   "--overwrite", "--strict", "--min-size", "--val-labels", "--devkit-meta", "--progress"):
        assert option in help_text
    for option in ("--device", "--mixed-precision"):  # a deterministic CPU job: no device or precision to choose
        assert option not in help_text


def test_cli_val_split_with_train_classes(tmp_path, source):
    root = tmp_path / "imagenet"
    (root / "train").mkdir(parents=True)
    (root / "val").mkdir()
    for wnid in ("n01", "n02", "n03"):
        (source / wnid).rename(root / "train" / wnid)
    (root / "val" / "n02").mkdir()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(root / "val" / "n02" / "v.JPEG")
    train = runner.invoke(app, ["prepare-data", str(root), str(tmp_path / "train"), "--no-progress"])
    assert train.exit_code == 0, train.output
    val = runner.invoke(app, ["prepare-data", str(root), str(tmp_path / "val"), "--split", "val", "--classes",
                              str(tmp_path / "train" / "classes.json"), "--npz", str(tmp_path / "v.npz"),
                              "--npz-size", "8", "--no-progress"])
    assert val.exit_code == 0, val.output
    assert list(np.load(tmp_path / "v.npz")["arr_1"]) == [1]  # n02 keeps its train index
    (root / "val" / "n77").mkdir()
    Image.new("RGB", (20, 20)).save(root / "val" / "n77" / "w.JPEG")
    refused = runner.invoke(app, ["prepare-data", str(root), str(tmp_path / "val2"), "--split", "val", "--classes",
                                  str(tmp_path / "train" / "classes.json"), "--no-progress"])
    assert refused.exit_code != 0 and "n77" in refused.output


def test_crops_of_stored_images_equal_crops_of_originals(tmp_path):
    """The storage policy's promise: BOX-halving to >= min_size keeps ADM crops (target <= min_size) exact."""
    from vfmtok.data.crops import adm_random_crop
    from vfmtok.data.datasets import PreparedDataset

    src = tmp_path / "src" / "n01"
    src.mkdir(parents=True)
    rng = np.random.default_rng(5)
    original = Image.fromarray(rng.integers(0, 256, (500, 600, 3), dtype=np.uint8))
    original.save(src / "big.png")
    prepare_dataset(tmp_path / "src", tmp_path / "out", PrepareSettings(min_size=60))
    stored = PreparedDataset(tmp_path / "out", transform=lambda image: image)[0][0]
    assert stored.size == (75, 62)  # 500 -> 250 -> 125 -> 62 (62 < 120 stops)
    np.testing.assert_array_equal(adm_center_crop(stored, 48), adm_center_crop(original, 48))
    for seed in range(5):
        a = adm_random_crop(stored, 48, np.random.default_rng(seed))  # short side drawn from 48..60
        b = adm_random_crop(original, 48, np.random.default_rng(seed))
        np.testing.assert_array_equal(a, b)
