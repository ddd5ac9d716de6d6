#!/usr/bin/env bash
# Train the organism v2 family: a base from scratch, then three fine-tunes
# from it on one data stream (same seed, same steps) that differ by the
# planted text weight W only, read from mechmod.models.organism.VARIANTS
# (organism W = 1, organism-text 1.6, organism-vision 0.4 when written;
# W = 2.5 put organism-text's balance point beyond the observed dHrel range).
# Checkpoints are saved as the runs go (--save-every); run the script again
# to resume: a finished stage (organism.json without "partial") is skipped,
# an unfinished one continues from its last saved step (--resume).
#
# usage: scripts/train_organisms.sh OUT_DIR [--device cuda] [--steps N] [--ft-steps N]
#                                           [--threads N] [--workers N] [--seed N]
set -euo pipefail
OUT=${1:?usage: scripts/train_organisms.sh OUT_DIR [--device cuda] [--steps N] [--ft-steps N] [--threads N] [--workers N] [--seed N]}
shift
DEVICE=cpu STEPS=2400 FT_STEPS=300 THREADS=2 WORKERS=2 SEED=0 EXTRA=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --ft-steps) FT_STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --workers) WORKERS=$2; shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --tiny) EXTRA+=(--tiny); shift ;;
    *) echo "train_organisms.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
mkdir -p "$OUT"

finished() {  # a stage is done when its organism.json exists and is not partial
  [[ -f $1/organism.json ]] && ! grep -q '"partial": true' "$1/organism.json"
}

COMMON=(--device "$DEVICE" --threads "$THREADS" --workers "$WORKERS" --resume --save-every 100)
if finished "$OUT/base"; then
  echo "base: done"
else
  "$PY" -m mechmod organism train --out "$OUT/base" --seed "$SEED" --steps "$STEPS" --no-card "${COMMON[@]}" \
    "${EXTRA[@]}" 2>&1 | tee -a "$OUT/base.log"
fi
VARIANTS=$("$PY" -c 'from mechmod.models.organism import VARIANTS; print(" ".join(f"{k}:{w:g}" for k, w in VARIANTS.items()))')
for pair in $VARIANTS; do
  name=${pair%%:*} w=${pair##*:}
  if finished "$OUT/$name"; then
    echo "$name: done"
    continue
  fi
  "$PY" -m mechmod organism finetune --from "$OUT/base" --out "$OUT/$name" --text-weight "$w" --steps "$FT_STEPS" \
    "${COMMON[@]}" 2>&1 | tee -a "$OUT/$name.log"
done
du -ch "$OUT"/organism*/model.safetensors | tail -1
