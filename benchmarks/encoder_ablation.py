"""Encoder ablation on the demo: the same tiny tokenizer, steps, data and seed with two frozen encoders.

    nice -n 10 python benchmarks/encoder_ablation.py --out /tmp/enc_ablation [--quick] [--parallel]
                                                     [--encoders random-vit vgg16-imagenet]

Runs `scripts/demo.sh` (every step through the public CLI: tokenizer at 56 px, GPT-tiny on its tokens, sampling,
evaluation, the class check) once per encoder, with `DEMO_ENCODER` unset for "random-vit" (the tiny preset's
frozen random DINOv2-architecture ViT, today's demo) and `DEMO_ENCODER=NAME` otherwise, then prints the figures side
by side: validation PSNR / SSIM / codebook usage (evaluate, 256 px), the last logged training semantic loss
(1 - cos against each encoder's OWN target level, so not comparable across encoders in absolute terms), the
fraction of samples nearest their own class (demo_report class-check) and wall times. `--quick` is the demo's
shorter budget; `--parallel` runs the variants at the same time (one torch thread each: wall times comparable
between the variants, not to a lone demo run). Writes OUT/ablation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    ("tokenizer PSNR (dB, val, 256 px)", "psnr"),
    ("tokenizer SSIM", "ssim"),
    ("tokenizer codebook usage", "usage"),
    ("tokenizer rFID (val, 256 px)", "rfid"),
    ("semantic loss (train, last log, own target)", "semantic"),
    ("samples in own class (nearest class mean)", "own_class"),
    ("samples FID vs val ref", "fid"),
    ("  baseline: class-mean image PSNR (dB)", "class_mean_psnr"),
    ("train-tokenizer wall time (s)", "tok_s"),
    ("train-ar wall time (s)", "ar_s"),
    ("whole demo wall time (s)", "total_s"),
]


def run_variant(name: str, out: Path, quick: bool, threads: int | None) -> dict:
    """Run the demo for one encoder into `out` and collect its figures."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DEMO_ENCODER", None)
    if name != "random-vit":
        env["DEMO_ENCODER"] = name
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = ["bash", str(REPO / "scripts" / "demo.sh"), str(out)] + (["--quick"] if quick else [])
    t0 = time.time()
    with open(out.with_suffix(".log"), "w") as log:
        proc = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{name}: demo failed (exit {proc.returncode}); see {out.with_suffix('.log')}")
    metrics = json.loads((out / "summary.json").read_text())
    timings = metrics["timings_s"]
    logged = [json.loads(line) for line in (out / "runs" / "tokenizer" / "metrics.jsonl").read_text().splitlines()]
    semantic = [r["semantic"] for r in logged if "semantic" in r]
    m = metrics["metrics"]
    return {"encoder": name, "psnr": m["tokenizer PSNR (dB, val, 256 px)"], "ssim": m["tokenizer SSIM"],
            "usage": m["tokenizer codebook usage"], "rfid": m["tokenizer rFID (val, 256 px)"],
            "semantic": semantic[-1] if semantic else None,
            "own_class": m["samples in own class (nearest class mean)"], "fid": m["samples FID vs val ref"],
            "class_mean_psnr": m["  baseline: class-mean image PSNR (dB)"],
            "tok_s": timings.get("train-tokenizer"), "ar_s": timings.get("train-ar"),
            "total_s": sum(timings.values()), "wall_s": time.time() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quick", action="store_true", help="the demo's --quick budget (1000 tokenizer / 800 GPT steps)")
    ap.add_argument("--parallel", action="store_true", help="run the variants concurrently, one thread each")
    ap.add_argument("--encoders", nargs="+", default=["random-vit", "vgg16-imagenet"])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(name, args.out / name) for name in args.encoders]
    if args.parallel:
        with ThreadPoolExecutor(len(jobs)) as pool:
            results = list(pool.map(lambda j: run_variant(j[0], j[1], args.quick, 1), jobs))
    else:
        results = [run_variant(name, out, args.quick, None) for name, out in jobs]
    budget = "quick (tokenizer 1000 steps, GPT 800)" if args.quick else "full (tokenizer 1500 steps, GPT 1000)"
    print(f"\nencoder ablation, demo budget {budget}{', variants run in parallel' if args.parallel else ''}")
    print(f"{'metric':<46}" + "".join(f"{r['encoder']:>18}" for r in results))
    for label, key in ROWS:
        cells = "".join(f"{'-' if r[key] is None else format(r[key], '.4g'):>18}" for r in results)
        print(f"{label:<46}{cells}")
    (args.out / "ablation.json").write_text(json.dumps({"budget": budget, "parallel": args.parallel,
                                                        "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
