#!/usr/bin/env bash
# Installs dependencies, builds Release (warnings as errors) and runs every test with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cmake --preset release -DFUSEPLAN_WERROR=ON >/dev/null
cmake --build --preset release
ctest --preset release "$@"
