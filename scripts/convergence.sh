#!/usr/bin/env bash
# Convergence on Fashion-MNIST (issue 5): ResNet-18 at 28x28 with small-batch SGD, the
# same in fp16 (emulated on CPU) and bf16, and LARS at a large batch, for the same number
# of epochs; prints one table row per run (model, batch, optimizer, precision, test
# accuracy, epochs, wall time). `--short` runs one epoch each (the CI variant);
# EPOCHS=N overrides; AUGMENT=1 adds random crops and flips; ONLY=REGEX keeps the runs
# whose name (e.g. resnet18-lars-4096-fp32) matches. Metrics of every run go to
# build/convergence/NAME.json, the table to NAME.txt, per-epoch progress to NAME.log.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${EPOCHS:-6}
[ "${1:-}" = "--short" ] && epochs=${EPOCHS:-1}
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target fuseplan-exec >/dev/null
out=build/convergence
mkdir -p "$out"
# optimizer batch precision lr warm-up-epochs weight-decay
runs=(
  "lars 4096 fp32 8.0 2 5e-4"
  "lars 2048 fp32 5.0 1 1e-3"
  "sgd 128 fp32 0.1 1 5e-4"
  "sgd 128 fp16 0.1 1 5e-4"
  "sgd 128 bf16 0.1 1 5e-4"
)
augment=()
[ "${AUGMENT:-0}" = 1 ] && augment=(--augment)
printf '%-9s %6s %-9s %-9s %9s %7s %9s\n' model batch optimizer precision test_acc epochs seconds
for run in "${runs[@]}"; do
  read -r opt batch prec lr warmup wd <<<"$run"
  name="resnet18-$opt-$batch-$prec"
  [[ "$name" =~ ${ONLY:-.} ]] || continue
  FUSEPLAN_PROGRESS=1 build/release/cli/fuseplan-exec train --model resnet18 --dataset fashion-mnist --batch-per-gpu "$batch" \
    --epochs "$epochs" --optimizer "$opt" --lr "$lr" --warmup-epochs "$(python3 -c "print(min($warmup, $epochs / 2))")" \
    --precision "$prec" --weight-decay "$wd" "${augment[@]}" --metrics "$out/$name.json" >"$out/$name.txt" 2>"$out/$name.log"
  python3 - "$out/$name.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
e = m["epochs"][-1]
print(f'{m["model"]:<9} {m["batch"]:6d} {m["optimizer"]:<9} {m["precision"]:<9} {100 * e["test_accuracy"]:8.2f}% '
      f'{len(m["epochs"]):7d} {m["seconds"]:9.0f}')
PY
done
