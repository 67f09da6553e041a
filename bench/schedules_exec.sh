#!/bin/sh
# Schedules beyond fusion, executed on 2 MPI ranks of this machine (fuseplan-exec run
# --schedule): each schedule's partitions, order, reduce-scatter + all-gather, per-layer
# gating and sharded step run; the table is the pipeline model's prediction of
# that run with the run's own per-layer profile (the slowest rank's) against the
# measurement, and the gate as the measured trace shows it (bench/gate_trace.py): the
# (layer, bucket) pairs checked, those whose forward started before the bucket ended, and
# the forward layers that started while the previous step's communication still ran.
# usage: bench/schedules_exec.sh [BUILD_DIR] [ITERATIONS]   (a few minutes; run alone)
set -eu
build=${1:-build/release}
iterations=${2:-20}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
model="--model resnet18 --resolution 16 --channels 1 --classes 10"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 FUSEPLAN_PROGRESS=0
"$build/cli/fuseplan" show resnet18 --resolution 16 --channels 1 --classes 10 --json > "$dir/model.json"
echo "| schedule | partitions | exchange | gate | predicted ms (run's profile) | measured ms | error | pairs checked | gate broken | layers overlapping |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for s in fusion ddp bytescheduler usbyte dear zero2 fsdp; do
  "$build/cli/fuseplan" schedule $model --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 \
    --strategy $s --partition 200000 --credit 400000 --out "$dir/$s.json" > /dev/null
  out=$(mpirun -np 2 --oversubscribe "$build/cli/fuseplan-exec" run --schedule "$dir/$s.json" --dataset synthetic \
    --synthetic-size 512 --resolution 16 --iterations "$iterations" --warmup 2 --trace-steps 4 --report "$dir/$s.report.json")
  line=$(printf '%s\n' "$out" | grep "with this run's per-layer profile")
  parts=$(/usr/bin/python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(len(j['bounds']), j['exchange'], j['gate'])" "$dir/$s.json")
  gate=$(/usr/bin/python3 "$(dirname "$0")/gate_trace.py" "$dir/$s.report.json" "$dir/model.json")
  printf '%s\n' "$line" | /usr/bin/python3 -c "
import re, sys
m = re.search(r'([0-9.]+) ms predicted as run here, ([0-9.]+) ms measured \(([^)]*)\)', sys.stdin.read())
n, ex, gate = sys.argv[2].split()
checked, broken, overlapping = sys.argv[3].split()
print(f'| {sys.argv[1]} | {n} | {ex} | {gate} | {m.group(1)} | {m.group(2)} | {m.group(3)} | {checked} | {broken} | {overlapping} |')" "$s" "$parts" "$gate"
done
