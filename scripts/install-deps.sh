#!/usr/bin/env bash
# Installs the Debian packages fuseplan needs, only those that are missing (idempotent).
set -euo pipefail
packages=(cmake g++ make pkg-config nlohmann-json3-dev libcli11-dev catch2 libsimgrid-dev python3
  libopenblas-openmp-dev libdnnl-dev zlib1g-dev dataset-fashion-mnist openmpi-bin libopenmpi-dev
  libhwloc-dev libibverbs-dev python3-torch python3-torchvision python3-pytest)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
