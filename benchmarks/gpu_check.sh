#!/usr/bin/env bash
# Every CUDA path of vfmtok in one run on one GPU (sized for an H200: under 8 minutes from a clean checkout).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine; writes the rows to $OUT/gpu_check.md if OUT is set
#   bash benchmarks/gpu_check.sh --smoke    # CPU, tiny sizes, a minute: keeps this script from rotting (CI test)
#
# Steps (each prints its own lines; the summary at the end is the GPU rows of benchmarks/README.md):
#  1. train-tokenizer throughput, `vfmtok-l` (random DINOv2-L, random DINO discriminator), bf16, a few steps,
#     peak memory                                                        (benchmarks/train_tokenizer.py)
#  2. train-ar throughput + MFU, GPT-B and GPT-L, bf16, peak memory      (benchmarks/train_ar.py)
#  3. extract-tokens of demo photos with the step-1 tokenizer, bf16 and fp32: codes must match
#     (`vfmtok extract-tokens`; the match rate is printed)
#  4. train-ar with --fsdp in one process (torchrun, 1 GPU) on the step-3 store, GPT-B, a few steps
#  5. sampling: eager vs compiled tokens/s, batch-1 decode step vs the weight-read bound (4.8 TB/s)
#     (benchmarks/sample.py), then `vfmtok sample` of the step-4 GPT, eager and --compile (bf16, decode-only
#     tokenizer): identical-image rate printed
#  6. Inception features (random-init weights of the exact architecture) on GPU vs CPU: max abs difference
#  7. RAR: train-ar RAR-L step time + MFU on a 2-neighbour store (benchmarks/train_ar.py --neighbours 2), and RAR-L
#     sampling tokens/s with and without the KV cache at 256 tokens (benchmarks/rar.py; goal >= 10x), and RAR-L
#     eager vs compiled decoding (benchmarks/sample.py --models RAR-L)
# Environment: PYTHON (default: python), OUT (optional output folder), WORK (default: a fresh temp folder).
# Exit status: non-zero if any step failed (the others still run; failures are listed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
WORK=${WORK:-$(mktemp -d -t vfmtok_gpu_check.XXXXXX)}
mkdir -p "$WORK"
SMOKE=0
[[ "${1:-}" == "--smoke" ]] && SMOKE=1
if [[ $SMOKE == 1 ]]; then
  DEV=cpu; PREC=no; TOK=tiny; TOK_BATCH=2; TOK_STEPS=1; AR_MODELS="GPT-tiny"; AR_BATCH=2; AR_STEPS=1
  FSDP_MODEL=GPT-tiny; FSDP_BATCH=4; SAMPLE_ARGS="--models GPT-tiny --grid-size 2 --batch 2 --repeats 1 --step-iters 2 --skip-compile"
  SAMPLE_COMPILE=""; N_SAMPLES=2; IMAGES_PER_CLASS=1; TOK_WARMUP=0; INCEPTION_IMAGES=2; export OMP_NUM_THREADS=1
  RAR_MODEL=RAR-tiny; RAR_BATCH=2; RAR_SAMPLE_ARGS="--tokens 8 --batch 1"
  RAR_COMPILE_ARGS="--models RAR-tiny --grid-size 2 --batch 2 --repeats 1 --step-iters 2 --skip-compile"
else
  DEV=cuda; PREC=bf16; TOK=vfmtok-l; TOK_BATCH=16; TOK_STEPS=4; AR_MODELS="GPT-B GPT-L"; AR_BATCH=64; AR_STEPS=5
  FSDP_MODEL=GPT-B; FSDP_BATCH=32; SAMPLE_ARGS="--device cuda --models GPT-B,GPT-L --grid-size 16 --batch 32 --repeats 1"
  SAMPLE_COMPILE="--compile"; N_SAMPLES=16; IMAGES_PER_CLASS=4; TOK_WARMUP=1; INCEPTION_IMAGES=32
  RAR_MODEL=RAR-L; RAR_BATCH=32; RAR_SAMPLE_ARGS="--device cuda --precision bf16 --batch 8"
  RAR_COMPILE_ARGS="--device cuda --models RAR-L --grid-size 16 --batch 32 --repeats 1"
  if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device (use --smoke on CPU)" >&2; exit 2
  fi
fi
FAILED=()
SUMMARY="$WORK/summary.md"
: > "$SUMMARY"
row() { echo "$*" >> "$SUMMARY"; }
step() {  # step NAME COMMAND...: run, keep its output in $WORK/NAME.log, record a failure
  local name=$1; shift
  echo "== $name: $*"
  local start=$SECONDS
  if "$@" 2>&1 | tee "$WORK/$name.log"; then
    echo "== $name: ok ($((SECONDS - start)) s)"
  else
    echo "== $name: FAILED ($((SECONDS - start)) s)"; FAILED+=("$name")
  fi
}
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')" | tee "$WORK/env.log"
row "| gpu_check ($( [[ $SMOKE == 1 ]] && echo smoke, CPU || echo CUDA)) | $(cat "$WORK/env.log") |"

# 1. tokenizer training
step tokenizer $PY benchmarks/train_tokenizer.py --preset "$TOK" --device "$DEV" --mixed-precision "$PREC" \
  --batch-size "$TOK_BATCH" --steps "$TOK_STEPS" --warmup "$TOK_WARMUP" --work "$WORK/tok"
row "| train-tokenizer $TOK $PREC | $(grep -h 's/step' "$WORK/tokenizer.log" | tail -1) |"

# 2. GPT training throughput and MFU
step train_ar $PY benchmarks/train_ar.py --device "$DEV" --models $AR_MODELS --batch-size "$AR_BATCH" \
  --precision "$PREC" --steps "$AR_STEPS"
while read -r line; do row "| train-ar $PREC batch $AR_BATCH | $line |"; done < <(grep -E "^GPT" "$WORK/train_ar.log")

# 3. extract-tokens bf16 vs fp32 on demo photos with the step-1 tokenizer
step demo_data $PY -m vfmtok demo-data "$WORK/demo" --train-per-class "$IMAGES_PER_CLASS" --val-per-class 1 --size 128
for prec in no bf16; do
  step "extract_$prec" $PY -m vfmtok extract-tokens "$WORK/demo" "$WORK/store_$prec" --tokenizer "$WORK/tok/run" \
    --split train --batch-size 8 --num-workers 2 --device "$DEV" --mixed-precision "$prec" --no-progress
done
step extract_compare $PY - "$WORK/store_no" "$WORK/store_bf16" <<'EOF'
import sys
import numpy as np
fp32, bf16 = (np.load(f"{d}/codes.npy") for d in sys.argv[1:3])
same = float((fp32 == bf16).mean())
print(f"extract-tokens bf16 vs fp32: {fp32.shape} codes, {100 * same:.3f} % identical")
EOF
row "| extract-tokens bf16 vs fp32 | $(grep -h 'identical' "$WORK/extract_compare.log") |"

# 4. FSDP in one process on the fp32 store
step fsdp $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m vfmtok train-ar --tokens "$WORK/store_no" \
  --out "$WORK/ar_fsdp" --model "$FSDP_MODEL" --fsdp --steps 3 --batch-size "$FSDP_BATCH" --val-count 0 \
  --log-every 1 --save-every 0 --num-workers 1 --device "$DEV" --mixed-precision "$PREC" --no-progress --print-every 1
row "| train-ar --fsdp (1 process) $FSDP_MODEL | $(tail -n 1 "$WORK/ar_fsdp/metrics.jsonl" 2>/dev/null | cut -c1-200) |"

# 5. sampling: throughput and the weight-read bound, then the CLI eager vs compiled
step sample_bench $PY benchmarks/sample.py $SAMPLE_ARGS
while read -r line; do row "| sample | $line |"; done < <(grep -E "^GPT" "$WORK/sample_bench.log")
for mode in eager $SAMPLE_COMPILE; do
  flag=$([[ $mode == eager ]] && echo "" || echo "--compile")
  step "sample_$mode" $PY -m vfmtok sample --ckpt "$WORK/ar_fsdp" --tokenizer "$WORK/tok/run" -n "$N_SAMPLES" \
    --batch-size "$N_SAMPLES" --decode-batch "$N_SAMPLES" --cfg-scale 2 --no-png --no-progress --device "$DEV" \
    --out "$WORK/samples_$mode" $flag
done
if [[ -n "$SAMPLE_COMPILE" ]]; then
  step sample_compare $PY - "$WORK/samples_eager" "$WORK/samples_--compile" <<'EOF'
import json, sys
import numpy as np
a, b = (np.load(f"{d}/samples.npz")["arr_0"] for d in sys.argv[1:3])
same = sum(bool((x == y).all()) for x, y in zip(a, b))
prec = json.load(open(f"{sys.argv[1]}/sample_config.json"))["precision"]
print(f"vfmtok sample eager vs --compile: {same}/{len(a)} identical images; precision {prec}")
EOF
  row "| vfmtok sample eager vs --compile | $(grep -h 'identical' "$WORK/sample_compare.log") |"
fi

# 6. Inception features on the device vs CPU
step inception $PY - "$DEV" "$INCEPTION_IMAGES" <<'EOF'
import sys, time
import torch
from vfmtok.metrics.inception import InceptionFeatureExtractor
device, n = torch.device(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = InceptionFeatureExtractor()  # random init: features are tiny (~1e-6), hence relative differences
images = torch.randint(0, 256, (n, 256, 256, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
cpu = net(images)
net = net.to(device)
net(images[:1].to(device))  # warm-up
start = time.perf_counter()
dev = net(images.to(device))
if device.type == "cuda":
    torch.cuda.synchronize()
rate = n / (time.perf_counter() - start)
rel = {k: float((getattr(dev, k).cpu() - getattr(cpu, k)).abs().max() / getattr(cpu, k).abs().max().clamp_min(1e-30))
       for k in ("pool3", "spatial")}
print(f"inception {device} vs cpu: max abs diff / max |feature|: pool3 {rel['pool3']:.1e}, spatial "
      f"{rel['spatial']:.1e}; {rate:.1f} img/s on {device}")
EOF
row "| inception $DEV vs cpu | $(grep -h 'max abs diff' "$WORK/inception.log") |"

# 7. RAR: training step time / MFU (both neighbour sequences per image) and sampling with vs without the KV cache
step train_rar $PY benchmarks/train_ar.py --device "$DEV" --models "$RAR_MODEL" --neighbours 2 \
  --batch-size "$RAR_BATCH" --precision "$PREC" --steps "$AR_STEPS"
while read -r line; do row "| train-ar $PREC batch $RAR_BATCH images x 2 | $line |"; done < <(grep -E "^RAR" "$WORK/train_rar.log")
step rar_sample $PY benchmarks/rar.py --model "$RAR_MODEL" $RAR_SAMPLE_ARGS
row "| $(grep -h '^RAR sample' "$WORK/rar_sample.log") |"
step rar_sample_compile $PY benchmarks/sample.py $RAR_COMPILE_ARGS
while read -r line; do row "| sample | $line |"; done < <(grep -E "^RAR" "$WORK/rar_sample_compile.log")

if [[ $SMOKE == 0 ]]; then
  row "| peak GPU memory | see the train-tokenizer, train-ar and sample rows |"
fi
echo
echo "== summary (rows for benchmarks/README.md)"
cat "$SUMMARY"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT" && cp "$SUMMARY" "$OUT/gpu_check.md" && cp "$WORK"/*.log "$OUT/" 2>/dev/null
fi
if (( ${#FAILED[@]} )); then
  echo "gpu_check: FAILED steps: ${FAILED[*]} (logs in $WORK)" >&2
  exit 1
fi
echo "gpu_check: all steps passed (work folder $WORK)"
