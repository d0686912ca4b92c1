"""Dataset layouts and class-index rules: class folders, ImageNet root, flat val with Kaggle / devkit labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from vfmtok.data.layouts import LayoutError, discover, load_classes, write_classes


def _img(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)).save(path, "JPEG")


def _flat_val(root, n=4):
    for k in range(1, n + 1):
        _img(root / f"ILSVRC2012_val_{k:08d}.JPEG", k)


def test_class_index_is_sorted_folder_names_and_order_is_class_then_path(tmp_path):
    for wnid in ("n02", "n10", "n01"):
        _img(tmp_path / wnid / "b.JPEG")
        _img(tmp_path / wnid / "a.JPEG")
    _img(tmp_path / "n01" / "sub" / "c.png")
    (tmp_path / "n10" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "n10" / "notes.txt").write_text("hi")
    sources = discover(tmp_path)
    assert sources.layout == "class-folders" and sources.classes == ["n01", "n02", "n10"]
    assert [(it.relpath, it.reject is None) for it in sources.items] == [
        ("n01/a.JPEG", True), ("n01/b.JPEG", True), ("n01/sub/c.png", True), ("n02/a.JPEG", True),
        ("n02/b.JPEG", True), ("n10/a.JPEG", True), ("n10/b.JPEG", True), ("n10/notes.txt", False)]
    assert "not an image extension" in sources.items[-1].reject


def test_class_index_matches_torchvision_imagefolder(tmp_path):
    from torchvision.datasets import ImageFolder

    for wnid in ("n03", "b_class", "A_class", "n01"):
        _img(tmp_path / wnid / "x.jpg")
    assert discover(tmp_path).classes == ImageFolder(str(tmp_path)).classes


def test_imagenet_root_selects_split_folder(tmp_path):
    _img(tmp_path / "train" / "n01" / "a.JPEG")
    _img(tmp_path / "val" / "n01" / "v.JPEG")
    assert discover(tmp_path, "val").root == (tmp_path / "val").resolve()
    assert [it.relpath for it in discover(tmp_path, "train").items] == ["n01/a.JPEG"]
    (tmp_path / "only").mkdir()
    _img(tmp_path / "only" / "train" / "n01" / "a.JPEG")
    with pytest.raises(LayoutError, match="no val/ folder"):
        discover(tmp_path / "only", "val")


def test_fixed_class_index_keeps_mapping_and_refuses_unknown_classes(tmp_path):
    _img(tmp_path / "val" / "n02" / "v.JPEG")
    sources = discover(tmp_path, "val", classes=["n01", "n02", "n03"])
    assert sources.classes == ["n01", "n02", "n03"]
    _img(tmp_path / "val" / "n09" / "w.JPEG")
    with pytest.raises(LayoutError, match=r"n09"):
        discover(tmp_path, "val", classes=["n01", "n02", "n03"])


def test_flat_val_with_kaggle_solution_csv(tmp_path):
    val = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    _flat_val(val, 3)
    (val / "ILSVRC2012_val_00000009.JPEG").write_bytes(b"x")  # not in the csv
    (tmp_path / "LOC_val_solution.csv").write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00000002,n05 1 2 3 4 n05 5 6 7 8\n"
        "ILSVRC2012_val_00000001,n07 0 0 9 9\n"
        "ILSVRC2012_val_00000003,n05 1 1 2 2\n")
    sources = discover(val, "val")  # csv found 4 levels up (Kaggle layout)
    assert sources.layout == "flat+LOC_val_solution.csv"
    assert sources.classes == ["n05", "n07"]
    assert [(it.relpath, it.wnid) for it in sources.items[:3]] == [
        ("ILSVRC2012_val_00000001.JPEG", "n07"), ("ILSVRC2012_val_00000002.JPEG", "n05"),
        ("ILSVRC2012_val_00000003.JPEG", "n05")]
    assert sources.items[3].reject.startswith("no label")


def test_flat_val_with_devkit_ground_truth_and_meta_mat(tmp_path):
    _flat_val(tmp_path / "val", 4)
    data = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    (data / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n3\n2\n")
    # ILSVRC2012_IDs are not in sorted-WordNet-id order: id 1 -> n09, id 2 -> n01, id 3 -> n05
    synsets = np.zeros(4, dtype=[("ILSVRC2012_ID", object), ("WNID", object), ("words", object)])
    for row, (i, w) in enumerate([(1, "n09"), (2, "n01"), (3, "n05"), (1001, "n99_internal")]):
        synsets[row] = (i, w, "x")
    savemat(data / "meta.mat", {"synsets": synsets})
    sources = discover(tmp_path, "val")
    assert sources.layout == "flat+devkit-ground-truth"
    assert [it.wnid for it in sources.items] == ["n01", "n09", "n05", "n01"]
    assert sources.classes == ["n01", "n05", "n09"]


def test_devkit_ground_truth_with_text_synset_list_and_missing_meta(tmp_path):
    _flat_val(tmp_path / "val", 2)
    gt = tmp_path / "gt.txt"
    gt.write_text("2\n1\n")
    with pytest.raises(LayoutError, match="meta.mat"):
        discover(tmp_path, "val", labels_file=gt)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n09 first id\nn01 second id\n")
    sources = discover(tmp_path, "val", labels_file=gt, synsets_file=synsets)
    assert [it.wnid for it in sources.items] == ["n01", "n09"]


def test_flat_folder_without_labels_is_refused(tmp_path):
    _flat_val(tmp_path / "val", 2)
    with pytest.raises(LayoutError, match=r"no class folders: put the images in one sub-folder per class .*"
                                          r"LOC_val_solution.csv"):
        discover(tmp_path, "val")


def test_classes_file_formats(tmp_path):
    path = tmp_path / "classes.json"
    write_classes(path, ["n01", "n02"])
    assert json.loads(path.read_text())["num_classes"] == 2
    assert load_classes(path) == ["n01", "n02"]
    path.write_text(json.dumps({"n02": 1, "n01": 0}))
    assert load_classes(path) == ["n01", "n02"]
    path.write_text(json.dumps(["a", "a"]))
    with pytest.raises(LayoutError, match="unique"):
        load_classes(path)


def test_val_of_an_imagenet_root_keeps_trains_class_index_when_val_lacks_classes(tmp_path):
    for wnid in ("n01", "n02", "n03"):
        _img(tmp_path / "train" / wnid / "a.JPEG")
    _img(tmp_path / "val" / "n01" / "v.JPEG")
    _img(tmp_path / "val" / "n03" / "v.JPEG")  # n02 has no val image
    val = discover(tmp_path, "val")
    assert val.classes == ["n01", "n02", "n03"]  # n03 keeps label 2, as in train (sorted val alone gives 1)
    assert discover(tmp_path, "train").classes == val.classes
    _img(tmp_path / "val" / "n09" / "v.JPEG")
    with pytest.raises(LayoutError, match=r"val holds 1 class\(es\) that .*train does not: \['n09'\]"):
        discover(tmp_path, "val")
    assert discover(tmp_path, "val", classes=["n01", "n02", "n03", "n09"]).classes[-1] == "n09"
