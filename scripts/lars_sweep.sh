#!/usr/bin/env bash
# One LARS run of the convergence study (issue 5, docs/trainer.md "Tuning LARS"):
# ResNet-18 at 28x28 on Fashion-MNIST, fp32, trust 0.001, 6 epochs (EPOCHS=N overrides).
# Usage: scripts/lars_sweep.sh LR WARMUP_EPOCHS [extra fuseplan-exec train flags]
# BATCH=N sets the batch (default 4096). Output: build/lars-sweep/bBATCH-lrLR-wuWARMUP*.{json,txt,log}.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 LR WARMUP_EPOCHS [flags...]" >&2; exit 2; }
lr=$1 wu=$2
shift 2
batch=${BATCH:-4096} epochs=${EPOCHS:-6}
name="b$batch-lr$lr-wu$wu$(printf '%s' "$*" | tr -d ' ')"
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target fuseplan-exec >/dev/null
mkdir -p build/lars-sweep
FUSEPLAN_PROGRESS=1 build/release/cli/fuseplan-exec train --model resnet18 --dataset fashion-mnist --batch-per-gpu "$batch" \
  --epochs "$epochs" --optimizer lars --lr "$lr" --warmup-epochs "$wu" --precision fp32 "$@" \
  --metrics "build/lars-sweep/$name.json" >"build/lars-sweep/$name.txt" 2>"build/lars-sweep/$name.log"
tail -3 "build/lars-sweep/$name.txt"
