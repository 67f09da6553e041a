#!/usr/bin/env bash
# The 4-minute paper's case (Jia et al. 2018) on the tencent-p40 cluster file: for
# alexnet_bn at 1024 GPUs (64 per GPU) and resnet50 at 1024 and 2048 GPUs (32 per GPU),
# every strategy side by side, the best 2-segment split next to the paper's, and the
# split's sensitivity to inter-node bandwidth and latency. See docs/reproduce-4min.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x build/release/cli/fuseplan ]]; then
  ./scripts/install-deps.sh
  cmake --preset release >/dev/null
  cmake --build --preset release
fi
F=build/release/cli/fuseplan
CASES=("alexnet_bn 1024 64" "resnet50 1024 32" "resnet50 2048 32")

for c in "${CASES[@]}"; do
  set -- $c
  for algo in auto hierarchical; do
    echo "## $1, $2 GPUs, $3 per GPU, algorithm $algo"
    "$F" compare --model "$1" --gpus "$2" --batch-per-gpu "$3" --algorithm "$algo" | tail -n +4 | head -n 8
    echo
  done
done

# The split of the best 2-segment plan: backward position b (bucket 2 starts there),
# i.e. between forward tensors L-b-1 and L-b (0-based), with their names.
split() {  # model gpus batch algorithm [extra flags]
  "$F" tune --strategy k-split --segments 2 --model "$1" --gpus "$2" --batch-per-gpu "$3" --algorithm "$4" \
    "${@:5}" --json | python3 -c '
import json, sys
d = json.load(sys.stdin)
p, r = d["plan"], d["report"]
L, b = p["model"]["tensors"], p["buckets"][1]["begin"]
names = r["buckets"][1]["first_tensor"] + " | " + r["buckets"][0]["last_tensor"]
eff = r["scaling_efficiency"] * 100
print("%4d %4d/%-4d %-58s %6.1f%%" % (b, L - b - 1, L - b, names, eff))'
}

echo "## best 2-segment split (bwd position, forward tensors either side, names, efficiency)"
for c in "${CASES[@]}"; do
  set -- $c
  for algo in auto hierarchical ring; do
    printf "%-11s %5s GPUs %-13s " "$1" "$2" "$algo"
    split "$1" "$2" "$3" "$algo"
  done
done
echo

echo "## sensitivity of the 2-segment split to the inter-node network (algorithm auto)"
for c in "alexnet_bn 1024 64" "resnet50 1024 32"; do
  set -- $c
  for bw in 25 50 100 200 400; do
    for lat in 1 5 20 50; do
      printf "%-11s %4s Gbps %3s us  " "$1" "$bw" "$lat"
      split "$1" "$2" "$3" auto --inter-bw "$bw" --inter-lat "$lat"
    done
  done
done
