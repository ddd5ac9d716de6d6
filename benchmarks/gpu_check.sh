#!/usr/bin/env bash
# The GPU benchmark of issue 18 in one command: the runner against the naive
# loop on a random-weight LLaVA-1.5-7B built from the real checkpoint's
# config, tokenizer, chat template and processor, bf16 on cuda, 8 colour
# groups (216 cases; memory also at 4 groups), with MFU, the paper-scale
# projection, memory_flat and a profile of one batch (benchmarks/pipeline.py).
#
# A device machine gets the working tree only: neither ../shared/real-configs
# nor the .venv travel, and its image's python3 (torch, transformers) lacks
# plotly. So, once, on this machine, from the repo root:
#     bash benchmarks/gpu_check.sh --prepare
# copies the llava-1.5 config folder and a plotly wheel into .device-carry/
# (ignored through .git/info/exclude). Then, on the device machine:
#     run(command="bash benchmarks/gpu_check.sh", carry=[".device-carry"], timeout_s=540)
# It fetches nothing: it unpacks the carried wheel into /tmp/site and runs
# the benchmark under a 420 s timeout (about 3 minutes expected on an H200).
# The JSON line goes to $OUT/h200-llava15-real.json (default OUT=./out) and
# to benchmarks/results/h200-llava15-real.json; only $OUT comes back from a
# device machine, so copy it into benchmarks/results/ there.
set -euo pipefail

CARRY=.device-carry
PLOTLY=plotly==7.1.0

if [ "${1:-}" = "--prepare" ]; then
    src="${MECHMOD_REAL_CONFIGS:-../shared/real-configs}/llava-1.5-7b-hf"
    [ -f "$src/config.json" ] || { echo "no llava-1.5 config at $src; set MECHMOD_REAL_CONFIGS" >&2; exit 2; }
    mkdir -p "$CARRY/real-configs" "$CARRY/whl"
    rm -rf "$CARRY/real-configs/llava-1.5-7b-hf"
    cp -r "$src" "$CARRY/real-configs/"
    "${PYTHON:-.venv/bin/python}" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform any -d "$CARRY/whl" "$PLOTLY"
    grep -qx "/$CARRY/" .git/info/exclude 2>/dev/null || echo "/$CARRY/" >> .git/info/exclude
    du -sh "$CARRY"
    exit 0
fi

OUT="${OUT:-./out}"
mkdir -p "$OUT" benchmarks/results
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export MECHMOD_REAL_CONFIGS="${MECHMOD_REAL_CONFIGS:-$PWD/$CARRY/real-configs}"
PY="${PYTHON:-python3}"
[ -f "$MECHMOD_REAL_CONFIGS/llava-1.5-7b-hf/config.json" ] || {
    echo "no llava-1.5 config under $MECHMOD_REAL_CONFIGS: run 'bash benchmarks/gpu_check.sh --prepare' here" \
         "and carry $CARRY" >&2; exit 2; }
if compgen -G "$CARRY/whl/*.whl" > /dev/null && ! "$PY" -c "import plotly" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
    export PYTHONPATH=/tmp/site
fi

nvidia-smi -L | tee "$OUT/gpu_check.log"
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
    | tee -a "$OUT/gpu_check.log"
timeout 420 "$PY" -m benchmarks.pipeline --device cuda --real-config llava-1.5-7b-hf --groups 8 \
    2>> "$OUT/gpu_check.log" | tee -a "$OUT/gpu_check.log" | tail -n 1 > "$OUT/h200-llava15-real.json"
cp "$OUT/h200-llava15-real.json" benchmarks/results/h200-llava15-real.json
cat "$OUT/h200-llava15-real.json"
