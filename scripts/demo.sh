#!/usr/bin/env bash
# README's main command (`make demo`): the whole pipeline on demo data built from real photos,
# every step through the public `vfmtok` CLI exactly as a user types it.
set -euo pipefail
OUT="${1:-demo_out}"
mkdir -p "$OUT"
echo "== vfmtok demo -> $OUT"
vfmtok --version
vfmtok demo-data "$OUT/photos"
vfmtok prepare-data "$OUT/photos" "$OUT/data/train" --split train
vfmtok prepare-data "$OUT/photos" "$OUT/data/val" --split val --classes "$OUT/data/train/classes.json" \
  --npz "$OUT/ref_val_256.npz" --npz-size 256
echo "== demo done: prepared data in $OUT/data, reference batch $OUT/ref_val_256.npz"
