"""Benchmark `vfmtok evaluate`: Inception throughput and precision/recall peak memory.

    python benchmarks/evaluate.py                      # CPU: throughput + scaled P/R measurement
    python benchmarks/evaluate.py --device cuda --full # GPU: P/R at the real 50 000 x 10 000 size

Inception: images/s of `InceptionFeatureExtractor` (random-init weights of the exact architecture unless
--inception-weights is given; the cost does not depend on the values) on 256 x 256 uint8 inputs.

Precision/recall: peak memory of `precision_recall(real, generated)` with 2048-d features, measured in a
fresh subprocess (CPU: peak RSS above the idle baseline; CUDA: torch.cuda.max_memory_allocated). On CPU the
50 000 x 10 000 run takes hours (the generated-set radii need 50k x 50k distances), so by default it
measures smaller sets at the production block size and extrapolates: memory = features (4 bytes x D x
(N_real + N_gen)) + per-block buffers (independent of N). The printed extrapolation says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

_PR_CHILD = r"""
import json, resource, sys, time
import torch
from vfmtok.metrics.precision_recall import precision_recall
n_real, n_gen, dim, block, device = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
torch.manual_seed(0)
def status_kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    return None
try:  # reset the peak-RSS watermark (Linux), so the peak covers only the P/R run
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    use_proc = status_kib("VmHWM") is not None
except OSError:
    use_proc = False
base = status_kib("VmRSS") if use_proc else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
real = torch.rand(n_real, dim, device=device)
gen = torch.rand(n_gen, dim, device=device) * 1.05
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
p, r = precision_recall(real, gen, block_size=block, device=device)
seconds = time.perf_counter() - start
if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated()
else:
    peak = ((status_kib("VmHWM") if use_proc else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) - base) * 1024
print(json.dumps({"n_real": n_real, "n_gen": n_gen, "block": block, "peak_bytes": peak, "seconds": seconds,
                  "precision": p, "recall": r}))
"""


def inception_throughput(device: str, batch_size: int, batches: int, weights: str | None) -> float:
    from vfmtok.metrics.inception import InceptionFeatureExtractor, random_inception_state_dict

    if weights:
        from vfmtok.metrics.weights import load_inception_weights

        state, info = load_inception_weights(weights)
        extractor = InceptionFeatureExtractor(state, has_fc=info.has_fc)
    else:
        extractor = InceptionFeatureExtractor(random_inception_state_dict(0))
    extractor.to(device)
    images = torch.randint(0, 256, (batch_size, 256, 256, 3), dtype=torch.uint8)
    extractor(images)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        extractor(images)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return batch_size * batches / (time.perf_counter() - start)


def pr_memory(n_real: int, n_gen: int, dim: int, block: int, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PR_CHILD, str(n_real), str(n_gen), str(dim), str(block), device],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--full", action="store_true", help="P/R at 10 000 real x 50 000 generated (GPU advised)")
    parser.add_argument("--block", type=int, default=10_000)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    batch = args.batch_size or (200 if cuda else 8)
    batches = args.batches or (10 if cuda else 2)
    rate = inception_throughput(args.device, batch, batches, args.inception_weights)
    print(f"inception: {rate:.1f} images/s on {args.device} (batch {batch}, fp32, 256x256 -> 299)")
    print(f"  -> 60 000 images (50k samples + 10k reference): {60_000 / rate / 60:.1f} min")

    dim = 2048
    if args.full:
        res = pr_memory(10_000, 50_000, dim, args.block, args.device)
        print(f"precision/recall 10 000 x 50 000 x {dim}, block {args.block}: peak {res['peak_bytes'] / 2**30:.2f} GiB, "
              f"{res['seconds']:.1f} s")
        return
    # Scaled: same block size as production, smaller sets; memory model = features + block buffers.
    block = min(args.block, 2_000) if not cuda else args.block
    small = pr_memory(block, 2 * block, dim, block, args.device)
    large = pr_memory(block, 4 * block, dim, block, args.device)
    per_row = (large["peak_bytes"] - small["peak_bytes"]) / (2 * block)  # marginal bytes per generated row
    fixed = small["peak_bytes"] - per_row * 3 * block
    print(f"precision/recall measured (block {block}): {small['n_real']}x{small['n_gen']}: "
          f"{small['peak_bytes'] / 2**20:.0f} MiB, {small['seconds']:.1f} s; {large['n_real']}x{large['n_gen']}: "
          f"{large['peak_bytes'] / 2**20:.0f} MiB, {large['seconds']:.1f} s")
    block_bytes = 10 * args.block**2  # fp16 + fp32 distance block + top-k merge, ~10 bytes per entry
    features = 4 * dim * 60_000
    print(f"EXTRAPOLATION (not measured) to 10 000 x 50 000 at block {args.block}: features {features / 2**30:.2f} GiB "
          f"+ block buffers ~{block_bytes / 2**30:.2f} GiB = ~{(features + block_bytes) / 2**30:.2f} GiB "
          f"(measured marginal cost {per_row / 1024:.1f} KiB per generated row, fixed {fixed / 2**20:.0f} MiB at block {block})")


if __name__ == "__main__":
    main()
