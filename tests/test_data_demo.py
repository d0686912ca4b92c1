"""Demo data from real photos: ImageNet layout, real ImageNet-1k WordNet ids, distinct deterministic JPEG crops."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vfmtok.data.demo import DEMO_CLASSES, DemoSettings, build_demo_data

SMALL = DemoSettings(train_per_class=4, val_per_class=2, size=24, seed=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    build_demo_data(out, SMALL)
    return out


def _imagenet_1k_wnids() -> list[str]:
    """timm ships the ImageNet-1k synset list (an independent source for the class ids)."""
    timm_dir = Path(importlib.util.find_spec("timm").submodule_search_locations[0])
    return (timm_dir / "data" / "_info" / "imagenet_synsets.txt").read_text().split()


def test_demo_classes_are_real_imagenet_ids_one_per_photo():
    assert len(DEMO_CLASSES) >= 8
    assert set(DEMO_CLASSES) <= set(_imagenet_1k_wnids())
    assert len({photo for _, photo in DEMO_CLASSES.values()}) == len(DEMO_CLASSES)
    assert list(DEMO_CLASSES) == sorted(DEMO_CLASSES)
    assert DemoSettings().train_per_class >= 32


def test_demo_layout_counts_and_jpeg_files(demo):
    for split, n in (("train", 4), ("val", 2)):
        assert sorted(p.name for p in (demo / split).iterdir()) == sorted(DEMO_CLASSES)
        for wnid in DEMO_CLASSES:
            files = sorted((demo / split / wnid).iterdir())
            assert len(files) == n and all(f.suffix == ".JPEG" for f in files)
            for f in files:
                with Image.open(f) as image:
                    assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == 24


def test_demo_crops_are_distinct_and_differ_between_classes(demo):
    files = sorted(demo.rglob("*.JPEG"))
    assert len({hashlib.sha256(f.read_bytes()).hexdigest() for f in files}) == len(files)
    # crops of one photo resemble each other more than crops of another photo (mean colour distance)
    means = {wnid: [np.asarray(Image.open(f), float).mean((0, 1)) for f in sorted((demo / "train" / wnid).iterdir())]
             for wnid in ("n02123045", "n04044716")}  # chelsea (orange cat) vs Hubble deep field (black)
    cat, space = np.array(means["n02123045"]), np.array(means["n04044716"])
    assert np.linalg.norm(cat.mean(0) - space.mean(0)) > 30


def test_demo_is_deterministic_and_idempotent(demo, tmp_path):
    build_demo_data(tmp_path, SMALL)
    for f in sorted(demo.rglob("*.JPEG")):
        assert (tmp_path / f.relative_to(demo)).read_bytes() == f.read_bytes()
    marker = (tmp_path / "demo_data.json").stat().st_mtime_ns
    build_demo_data(tmp_path, SMALL)  # same settings: left as is
    assert (tmp_path / "demo_data.json").stat().st_mtime_ns == marker
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a demo-data folder"):
        build_demo_data(other, SMALL)


def test_demo_data_cli(tmp_path):
    from typer.testing import CliRunner

    from vfmtok.cli.main import app

    runner = CliRunner()
    result = runner.invoke(app, ["demo-data", str(tmp_path / "d"), "--train-per-class", "2", "--val-per-class", "1",
                                 "--size", "16"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "train").rglob("*.JPEG"))) == 2 * len(DEMO_CLASSES)
    assert len(list((tmp_path / "d" / "val").rglob("*.JPEG"))) == len(DEMO_CLASSES)
    help_text = runner.invoke(app, ["demo-data", "--help"]).output
    for option in ("--train-per-class", "--val-per-class", "--size", "--seed", "--quality"):
        assert option in help_text
