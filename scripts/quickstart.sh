#!/usr/bin/env bash
# Installs dependencies, builds Release and runs the main job on the shipped defaults:
# tune the gradient fusion of ResNet-50 (32 per GPU) on the 4-minute paper's P40
# cluster at 1024 GPUs, print the plan against single and per-tensor fusion, and write
# it to build/plan-resnet50.json. Extra arguments go to `fuseplan tune`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
./build/release/cli/fuseplan tune --out build/plan-resnet50.json "$@"
