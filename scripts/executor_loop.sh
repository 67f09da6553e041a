#!/usr/bin/env bash
# Issue 6's loop on this machine with 2 ranks: sweep -> calibrate -> profile -> run the
# free-overlap optimum and fit comm_compute_sharing to it -> tune -> run (tuned,
# per-tensor, single) -> verify, and the step time against PyTorch DDP.
# MODEL / BATCH / RANKS / ITERS override the defaults (ResNet-18 at 28x28x1, 10 classes,
# 16 per rank: communication is a visible share of the step). Output: build/loop/.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-resnet18} batch=${BATCH:-16} ranks=${RANKS:-2} iters=${ITERS:-30}
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target fuseplan fuseplan-exec >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
B=build/release/cli out=build/loop
mpi="mpirun -np $ranks --oversubscribe"
shape="--model $model --resolution 28 --channels 1 --classes 10 --gpus $ranks --batch-per-gpu $batch --precision fp32"
mkdir -p "$out"
echo "== sweep and calibrate"
$mpi $B/fuseplan-exec sweep --algorithms mpi,ring,recursive_doubling,rabenseifner --quiet --out $out/sweep.json
$B/fuseplan calibrate --cluster local-cpu --sweep $out/sweep.json --holdout --out $out/all-sizes.json
$B/fuseplan calibrate --cluster local-cpu --sweep $out/sweep.json --fit-sizes 256K:256M --holdout --out $out/cal-comm.json
echo "== per-layer profile (one bucket, $ranks ranks)"
$B/fuseplan predict $shape --cluster $out/cal-comm.json --buckets single --save-plan $out/profile-plan.json >/dev/null
$mpi $B/fuseplan-exec run --plan $out/profile-plan.json --dataset synthetic --iterations 10 --quiet \
  --profile $out/profile.json >/dev/null
echo "== processor sharing: the free-overlap optimum, measured, fits comm_compute_sharing"
python3 -c "import json; c=json.load(open('$out/cal-comm.json')); c.pop('comm_compute_sharing', None); \
c.get('provenance', {}).pop('comm_compute_sharing', None); json.dump(c, open('$out/cal-free.json', 'w'), indent=2)"
$B/fuseplan tune $shape --cluster $out/cal-free.json --profile $out/profile.json --strategy optimal --out $out/free.json >/dev/null
$mpi $B/fuseplan-exec run --plan $out/free.json --dataset synthetic --iterations "$iters" --quiet \
  --report $out/measured-free.json >$out/run-free.txt
$B/fuseplan calibrate --cluster $out/cal-comm.json --plan $out/free.json --measured $out/measured-free.json \
  --profile $out/profile.json --out $out/cal.json
echo "== plans"
for s in optimal per-tensor single; do
  $B/fuseplan tune $shape --cluster $out/cal.json --profile $out/profile.json --strategy $s --out $out/$s.json >/dev/null
done
echo "== run and verify"
$B/fuseplan verify --plan $out/free.json --measured $out/measured-free.json --cluster $out/cal-free.json \
  --profile $out/profile.json --no-sim | sed -n '4,9p' | sed "s/^/[free-overlap model] /"
for s in optimal per-tensor single; do
  $mpi $B/fuseplan-exec run --plan $out/$s.json --dataset synthetic --iterations "$iters" --quiet \
    --report $out/measured-$s.json --trace $out/trace-$s.json >$out/run-$s.txt
  $B/fuseplan verify --plan $out/$s.json --measured $out/measured-$s.json --cluster $out/cal.json \
    --profile $out/profile.json --trace $out/verify-$s.json >$out/verify-$s.txt
  head -12 $out/verify-$s.txt | sed -n '4,11p' | sed "s/^/[$s] /"
done
echo "== measured iteration per plan"
for s in free optimal per-tensor single; do
  python3 -c "import json,sys; r=json.load(open('$out/measured-$s.json')); print(f'  {\"$s\":<11} {r[\"iteration_s\"]*1e3:8.2f} ms  exposed {r[\"exposed_comm_s\"]*1e3:6.2f} ms  {len(r[\"buckets\"])} buckets')"
done
if /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "== against PyTorch DDP"
  /usr/bin/python3 bench/ddp_vs_fuseplan.py --plan $out/optimal.json --ranks "$ranks" --steps "$iters"
fi
