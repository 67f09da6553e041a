#!/bin/sh
# Time from a fault to the end of a 2-rank `fuseplan-exec run --timeout 3`, per phase:
# a rank stopped (SIGSTOP) or killed (SIGKILL) at set-up or during steps, and the rank
# the job names. Usage: bench/fault_timings.sh [DIR of fuseplan and fuseplan-exec]
set -u
B=${1:-build/release/cli}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
plan=$(mktemp /tmp/fault-plan.XXXXXX.json)
"$B/fuseplan" predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu --gpus 2 \
  --batch-per-gpu 8 --precision fp32 --buckets single --out "$plan" >/dev/null
job="mpiexec -np 2 --oversubscribe -x FUSEPLAN_FAULT_STOP_RANK -x FUSEPLAN_FAULT_KILL_RANK $B/fuseplan-exec run --plan $plan --dataset synthetic --synthetic-size 128 --resolution 16 --iterations 100000 --quiet --timeout 3"
ms() { date +%s%N | cut -c1-13; }
one() {  # what, env, signal-during-steps
  t0=$(ms)
  if [ -n "$3" ]; then
    out=$(timeout 100 sh -c "$job & pid=\$!; sleep 5; pkill -$3 -n -P \$pid; wait \$pid" 2>&1); rc=$?; t0=$((t0 + 5000))
  else
    out=$(env $2 timeout 100 $job 2>&1); rc=$?
  fi
  t1=$(ms)
  named=$(printf '%s\n' "$out" | grep -oE "no answer from rank [0-9]+|process rank [0-9]+" | head -1)
  printf '%-28s exit %3s  %5.1f s  %s\n' "$1" "$rc" "$(awk "BEGIN{print ($t1 - $t0) / 1000}")" "$named"
}
echo "# fault                       exit    time (s from the fault to the end; at set-up, from the start)  rank named"
one "rank 1 stopped at set-up" FUSEPLAN_FAULT_STOP_RANK=1 ""
one "rank 0 stopped at set-up" FUSEPLAN_FAULT_STOP_RANK=0 ""
one "rank 1 stopped during steps" "" STOP
one "rank 1 killed at set-up" FUSEPLAN_FAULT_KILL_RANK=1 ""
one "rank 0 killed at set-up" FUSEPLAN_FAULT_KILL_RANK=0 ""
one "rank 1 killed during steps" "" KILL
rm -f "$plan"
