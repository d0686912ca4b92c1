"""Throughput of `extract-tokens` and of the token-store reader.

1. Extraction: images/s of :func:`vfmtok.jobs.extract.extract_tokens` over a folder of synthetic JPEGs, for
   `--aug none` and `--aug ten-crop`, against the bare `tok.encode` of pre-cropped tensors of the same
   batches in the same run (ratio = the share of encoder speed the pipeline keeps: decode, crop, store).
   Default preset `tiny` on the current device; `--preset vfmtok-l --encoder-weights random` measures the
   paper's size (GPU advised; random encoder weights suffice for speed).
2. Reader: samples/s of `TokenDataset` (per item, and batched via `__getitems__` as DataLoader calls it)
   against a raw numpy memory-map read of the same rows and augmentations (`np.int64` copies), on an
   ImageNet-shaped store slice (N x 10 x 256 uint16). Goal: ratio >= 0.9.

Usage: `python benchmarks/extract_tokens.py [--images 64] [--batch-size 16] [--reader-images 20000]`
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vfmtok
from vfmtok.data.token_store import format as tsf
from vfmtok.data.token_store import reader as tsr
from vfmtok.data.token_store import writer as tsw
from vfmtok.device import autocast, autocast_dtype, resolve_device
from vfmtok.imageops import uint8_to_unit
from vfmtok.data.sources import open_image_source
from vfmtok.data.views import make_views
from vfmtok.jobs.extract import ExtractOptions, extract_tokens


def _make_folder(root: Path, n: int, classes: int = 4) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = int(rng.integers(300, 500)), int(rng.integers(300, 500))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.JPEG", quality=90)


def _bare_encode(tok, source, aug: str, batch: int, device: torch.device, amp) -> float:
    """images/s of tok.encode alone on the same views, already cropped and on the device."""
    size = tok.config.image_size
    views = [torch.from_numpy(make_views(source.load(i)[0], size, aug)) for i in range(len(source))]
    chunks = [uint8_to_unit(torch.cat(views[s : s + batch]).to(device)) for s in range(0, len(views), batch)]
    with torch.no_grad(), autocast(device, amp):
        tok.encode(chunks[0])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in chunks:
            tok.encode(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(views) / (time.perf_counter() - start)


def bench_extraction(args: argparse.Namespace, work: Path) -> None:
    device = resolve_device(args.device)
    amp = autocast_dtype(args.mixed_precision, device)
    tok = vfmtok.create_tokenizer(args.preset, encoder_weights=args.encoder_weights).eval().to(device)
    _make_folder(work / "images", args.images)
    source = open_image_source(work / "images")
    print(f"extraction: preset {args.preset}, {len(source)} images, batch {args.batch_size}, device {device}, "
          f"autocast {amp}, workers {args.num_workers}")
    for aug in ("none", "ten-crop"):
        opts = ExtractOptions(aug=aug, batch_size=args.batch_size, num_workers=args.num_workers,
                              device=str(device), mixed_precision=args.mixed_precision, progress=False)
        out = work / f"store-{aug}"
        bare = _bare_encode(tok, source, aug, args.batch_size, device, amp)
        start = time.perf_counter()
        extract_tokens(source, out, tok, options=opts, command="benchmark")
        total = time.perf_counter() - start
        bare = max(bare, _bare_encode(tok, source, aug, args.batch_size, device, amp))  # best of two (noise)
        rate = len(source) / total
        print(f"  --aug {aug:8s}: {rate:8.1f} images/s end to end (incl. store creation + validation); "
              f"bare encode {bare:8.1f} images/s; ratio {rate / bare:.2f}")


def bench_reader(args: argparse.Namespace, work: Path) -> None:
    n, a, l_ = args.reader_images, 10, 256
    out = work / "reader-store"
    rng = np.random.default_rng(0)
    tsw.create_store(out, tsf.StoreLayout(n, a, l_, 16384), {"num_classes": 1000, "grid_size": 16})
    with tsw.StoreWriter(out) as writer:
        for s in range(0, n, 4096):
            e = min(n, s + 4096)
            writer.write(np.arange(s, e), rng.integers(0, 16384, (e - s, a, l_)), rng.integers(0, 1000, e - s))
    tsw.finalize_store(out)
    ds = tsr.TokenDataset(out, seed=0)
    order = rng.permutation(n)
    aug = tsf.augmentation_choice(0, 0, order, a)
    codes = np.load(out / "codes.npy", mmap_mode="r")
    labels = np.load(out / "labels.npy", mmap_mode="r")
    ds[0]
    print(f"reader: {n} x {a} x {l_} uint16 store ({n * a * l_ * 2 / 1e6:.0f} MB), random order, warm page cache")
    view_codes, view_labels = codes.view(np.ndarray), labels.view(np.ndarray)
    bs = args.reader_batch
    for rep in range(args.repeats):
        rates = {}
        for name, (c, y) in (("np.memmap", (codes, labels)), ("ndarray view of the map", (view_codes, view_labels))):
            start = time.perf_counter()
            for i, j in zip(order.tolist(), aug.tolist()):
                torch.from_numpy(c[i, j].astype(np.int64)), y[i]
            rates[name] = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for i in order.tolist():
            ds[i]
        ours = n / (time.perf_counter() - start)
        print(f"  per item   (rep {rep}): TokenDataset {ours:9.0f}/s  " + "  ".join(
            f"raw {k} {v:9.0f}/s (ratio {ours / v:.2f})" for k, v in rates.items()))
        start = time.perf_counter()
        for s in range(0, n, bs):
            idx = order[s : s + bs]
            torch.from_numpy(codes[idx, aug[s : s + bs]].astype(np.int64)), torch.from_numpy(labels[idx].astype(np.int64))
        raw_b = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for s in range(0, n, bs):
            ds[order[s : s + bs]]
        ours_b = n / (time.perf_counter() - start)
        start = time.perf_counter()
        for s in range(0, n, bs):
            ds.__getitems__(order[s : s + bs].tolist())
        ours_items = n / (time.perf_counter() - start)
        print(f"  batch {bs:4d} (rep {rep}): TokenDataset[batch] {ours_b:9.0f}/s  raw memmap {raw_b:9.0f}/s  "
              f"ratio {ours_b / raw_b:.2f}   (__getitems__, split into samples: {ours_items:9.0f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--encoder-weights", default=None, help="'random' to skip pretrained encoder weights")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default="bf16")
    parser.add_argument("--reader-images", type=int, default=20000)
    parser.add_argument("--reader-batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-extraction", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_extraction:
            bench_extraction(args, Path(tmp))
        bench_reader(args, Path(tmp))


if __name__ == "__main__":
    main()
