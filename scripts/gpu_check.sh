#!/usr/bin/env bash
# The GPU checks in one run, for a lent GPU machine (about 4-5 minutes on an H200).
# Every result goes under OUT_DIR (the first argument, else $OUT, else ./gpu-check), with a
# one-line-per-step summary.txt:
#   device      nvidia-smi
#   libs        where the binaries' shared libraries were found (ldd)
#   parity      test_cuda_parity (every CUDA op against the CPU op)
#   train       fuseplan-exec train --backend cuda: ResNet-50, batch 64, FP16 (16-bit NHWC
#               activations), its images/s (metrics.json) and per-layer profile (profile.json)
#   trainemu    the same with --emulate-half (FP32 NCHW activations rounded to FP16, the
#               path before 16-bit storage): metrics-emulated.json
#   traingraph  the same with --cuda-graphs (forward and backward replayed as CUDA graphs):
#               metrics-graphs.json
#   trainfind   the same with --conv-algos find: every convolution shape's deterministic
#               cuDNN algorithms timed once, the fastest kept (conv-algos.json), its images/s
#   pytorch     bench/gpu_vs_pytorch.py on the same model, batch and precision
#   trainbf16, pytorchbf16
#               the same in BF16 (fuseplan with --cuda-graphs), metrics-bf16.json
#   optable     fuseplan calibrate --profile: the measured per-class efficiencies of this GPU
#               (device.by_kind) written into a copy of the cluster file (calibrated.json)
#   plan, run   a 25 MiB-bucket plan run for real on one rank with the NCCL exchange
#               (plumbing, CUDA events, timings): measured.json and the verify table
#   verify      fuseplan verify of that run against the prediction
#   tune, runtuned, verifytuned
#               calibrate -> tune -> run -> verify: a plan tuned on calibrated.json with the
#               train step's profile, run on one rank and verified (verifytuned.txt)
#   plan2, mpi2 a 2-GPU plan run by two ranks sharing the one GPU through the MPI exchange
#               (mpirun from the bundle; each rank's gradients read through host memory):
#               measured2.json
#   ncclsweep   fuseplan-exec sweep --comm nccl on the one GPU (one rank: NCCL's plumbing,
#               the timed allreduce and NCCL's own estimate per size, nccl-sweep.json)
#   torchexport, torchplan, torchrun, torchverify
#               the PyTorch bridge on the GPU: torchvision's model exported with its layers
#               timed on the GPU (torch-profile.json), a plan tuned for it, run through
#               PlanDDP on one NCCL rank (CUDA-event bucket times, torch-measured.json)
#               and verified
# Then report.md: the figures of every step (scripts/gpu_report.py).
# GPU_CHECK_STEPS="parity train ..." runs only the steps named (a rerun after a fix; a step
# that reads another's output needs that one named too, e.g. plan before run and verify).
# Prepare on the development machine with scripts/gpu_bundle.sh (the binaries and their
# libraries in .dev/). GPU_CHECK_BACKEND=cpu runs the same steps on the CPU backend with
# a small model and no CUDA: the host side's dry run (parity and pytorch are skipped;
# FUSEPLAN_BIN_DIR names the build's cli/ directory, default build/release/cli;
# GPU_CHECK_PYTHON a python3 with torch and torchvision, default python3).
set -uo pipefail  # not -e: a failing step is recorded and the next one still runs
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
: > "$out/summary.txt"
backend=${GPU_CHECK_BACKEND:-cuda}
if [[ $backend == cuda ]]; then
  # shellcheck disable=SC1091
  . .dev/env.sh
  bin=.dev
  model=resnet50 res=224 batch=64 steps=40 cluster=${GPU_CHECK_CLUSTER:-hgx-h200} precision=fp16
  torch_device=cuda torch_backend=nccl
else
  bin=${FUSEPLAN_BIN_DIR:-build/release/cli}
  model=resnet18 res=32 batch=8 steps=4 cluster=local-cpu precision=fp32
  torch_device=cpu torch_backend=gloo
fi
F=$bin/fuseplan
X=$bin/fuseplan-exec
py=${GPU_CHECK_PYTHON:-python3}  # with torch (and torchvision)
shape=(--model "$model" --resolution "$res" --channels 3 --classes 1000)

step() {  # name command...: runs it with a time limit, output to OUT_DIR/name.txt
  local name=$1 t0=$SECONDS rc
  shift
  [[ -z ${GPU_CHECK_STEPS:-} || " $GPU_CHECK_STEPS " == *" $name "* ]] || return 0
  timeout "${STEP_TIMEOUT:-240}" "$@" > "$out/$name.txt" 2>&1
  rc=$?
  echo "$name rc=$rc $((SECONDS - t0)) s" | tee -a "$out/summary.txt"
  return $rc
}

if [[ $backend == cuda ]]; then
  step device nvidia-smi
  step libs bash -c 'echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ldd "$0"/fuseplan-exec "$0"/test_cuda_parity' "$bin"
  step parity "$bin/test_cuda_parity"
fi
# ResNet-50 (the dry run's small model) trained for `steps` steps on synthetic data with
# the flags given after the step's name; the PyTorch bench on the same model and batch.
train_step() {
  local name=$1
  shift
  step "$name" "$X" train "${shape[@]}" --backend "$backend" --dataset synthetic \
    --synthetic-size $((batch * (steps + 2))) --batch-per-gpu "$batch" --max-steps "$steps" --epochs 1 --no-eval "$@"
}
pytorch_step() {
  step "$1" "$py" bench/gpu_vs_pytorch.py --model "$model" --batch "$batch" --resolution "$res" --precision "$2"
}
train_step train --precision "$precision" --profile "$out/profile.json" --metrics "$out/metrics.json"
if [[ $backend == cuda ]]; then
  train_step trainemu --precision "$precision" --emulate-half --metrics "$out/metrics-emulated.json"
  train_step traingraph --precision "$precision" --cuda-graphs --metrics "$out/metrics-graphs.json"
  train_step trainfind --precision "$precision" --conv-algos find --conv-algo-file "$out/conv-algos.json" \
    --metrics "$out/metrics-find.json"
  pytorch_step pytorch "$precision"
  # BF16 storage with graphs, beside PyTorch's BF16 autocast.
  train_step trainbf16 --precision bf16 --cuda-graphs --metrics "$out/metrics-bf16.json"
  pytorch_step pytorchbf16 bf16
fi
step optable "$F" calibrate --cluster "$cluster" --profile "$out/profile.json" "${shape[@]}" \
  --out "$out/calibrated.json"
step plan "$F" predict "${shape[@]}" --cluster "$cluster" --gpus 1 --batch-per-gpu "$batch" \
  --precision "$precision" --buckets threshold:25MiB --out "$out/plan.json"
step run "$X" run --plan "$out/plan.json" --backend "$backend" --dataset synthetic \
  --synthetic-size $((batch * 8)) --iterations 10 --warmup 3 --report "$out/measured.json" \
  --profile "$out/run-profile.json" --trace "$out/trace.json" --verify
step verify "$F" verify --plan "$out/plan.json" --measured "$out/measured.json" --profile "$out/run-profile.json"
# calibrate -> tune -> run -> verify: the plan tuned on the calibrated cluster with the
# train step's profile, run and verified.
step tune "$F" tune "${shape[@]}" --cluster "$out/calibrated.json" --profile "$out/profile.json" --gpus 1 \
  --batch-per-gpu "$batch" --precision "$precision" --out "$out/tuned.json"
step runtuned "$X" run --plan "$out/tuned.json" --backend "$backend" --dataset synthetic \
  --synthetic-size $((batch * 8)) --iterations 10 --warmup 3 --report "$out/measured-tuned.json" \
  --profile "$out/run-profile-tuned.json" --verify
step verifytuned "$F" verify --plan "$out/tuned.json" --measured "$out/measured-tuned.json" \
  --profile "$out/run-profile-tuned.json"
step plan2 "$F" predict "${shape[@]}" --cluster "$cluster" --gpus 2 --batch-per-gpu "$batch" \
  --precision "$precision" --buckets threshold:25MiB --out "$out/plan2.json"
step mpi2 mpirun --allow-run-as-root --oversubscribe -np 2 "$X" run --plan "$out/plan2.json" --backend "$backend" \
  --comm mpi --dataset synthetic --synthetic-size $((batch * 8)) --iterations 10 --warmup 3 \
  --report "$out/measured2.json" --verify
if [[ $backend == cuda ]]; then
  step ncclsweep "$X" sweep --comm nccl --sizes 4K:256M --step-factor 4 --out "$out/nccl-sweep.json"
fi
torch_cli=(env PYTHONPATH=python "$py" -m fuseplan_torch)
torch_model=(torchvision.models:"$model" --input-shape "3,$res,$res")
step torchexport "${torch_cli[@]}" export "${torch_model[@]}" --out "$out/torch-model.json" \
  --profile "$out/torch-profile.json" --device "$torch_device" --batch "$batch" --steps 5
step torchplan "$F" tune --model "$out/torch-model.json" --profile "$out/torch-profile.json" --cluster "$cluster" \
  --gpus 1 --batch-per-gpu "$batch" --precision fp32 --out "$out/torch-plan.json"
step torchrun "${torch_cli[@]}" run "${torch_model[@]}" --backend "$torch_backend" --ranks 1 \
  --plan "$out/torch-plan.json" --report "$out/torch-measured.json" --iterations 10
step torchverify "$F" verify --plan "$out/torch-plan.json" --measured "$out/torch-measured.json" \
  --profile "$out/torch-profile.json" --no-sim
"$py" scripts/gpu_report.py "$out" > "$out/report.md" 2>&1
echo "results in $out/ (summary.txt: one line per step; report.md: the figures, scripts/gpu_report.py)"
