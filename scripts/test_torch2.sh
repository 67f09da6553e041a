#!/usr/bin/env bash
# The PyTorch bridge's tests (tests/python) under torch 2.x, from Debian packages only.
#
# Debian 12 ships torch 1.13, which scripts/test.sh tests. Debian 13 (trixie) ships
# python3-torch 2.6 and python3-torchvision 0.21: this script installs them, with
# python3-pytest, into a debootstrap tree (FUSEPLAN_TORCH2_ROOT, default
# /var/tmp/fuseplan-trixie; made once, about 2 GB, a minute or two from a Debian mirror)
# and runs pytest there on this source tree, with the fuseplan binary built here (run
# by this system's own loader and libraries, copied into the tree).
#
# Usage (as root: debootstrap, chroot, mount):
#   scripts/test_torch2.sh [pytest arguments]
#   scripts/test_torch2.sh --run COMMAND...   any command in the tree instead, from /src, with
#       /opt/fuseplan/fuseplan as the binary, e.g.
#       scripts/test_torch2.sh --run python3 bench/pytorch_bridge.py --bin /opt/fuseplan
# FUSEPLAN_DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
# FUSEPLAN_TORCH2_SUITE picks the Debian release whose torch is tested (default trixie;
# e.g. sid, whose python3-torch is newer; its tree defaults to /var/tmp/fuseplan-SUITE).
set -euo pipefail
cd "$(dirname "$0")/.."
src=$(pwd)
suite=${FUSEPLAN_TORCH2_SUITE:-trixie}
case "$suite" in
  *[!a-z]* | "")
    echo "test_torch2: FUSEPLAN_TORCH2_SUITE: a Debian suite name in lower-case letters (got '$suite')" >&2
    exit 2 ;;
esac
root=${FUSEPLAN_TORCH2_ROOT:-/var/tmp/fuseplan-$suite}
mirror=${FUSEPLAN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
if [ "$(id -u)" -ne 0 ]; then
  echo "test_torch2: run as root (debootstrap, chroot and mount need it)" >&2
  exit 2
fi

./scripts/install-deps.sh
command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
cmake --preset release -DFUSEPLAN_WERROR=ON >/dev/null
cmake --build --preset release --target fuseplan

# The tree: made once, then reused while it still imports what the tests need.
in_root() { unshare --mount --propagation private sh -c 'mount -t proc proc "$0/proc" && chroot "$0" "$@"' "$root" "$@"; }
if ! { [ -x "$root/usr/bin/python3" ] && in_root python3 -c 'import torch, torchvision, pytest' 2>/dev/null; }; then
  echo "test_torch2: installing Debian $suite's python3-torch into $root" >&2
  rm -rf "$root.partial"
  debootstrap --variant=minbase --include=python3,python3-pytest "$suite" "$root.partial" "$mirror" >/dev/null
  # A mirror's sid and testing carry a Release file valid for days only; the stored
  # mirror here can be older than that, so its date is not checked.
  chroot "$root.partial" sh -c 'apt-get update -qq -o Acquire::Check-Valid-Until=false && \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-torch python3-torchvision' \
    >/dev/null
  rm -rf "$root"
  mv "$root.partial" "$root"
fi

# The fuseplan binary with this system's loader and libraries, under /opt/fuseplan.
bin=build/release/cli/fuseplan
rm -rf "$root/opt/fuseplan"
mkdir -p "$root/opt/fuseplan/lib"
cp "$bin" "$root/opt/fuseplan/fuseplan.bin"
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' |
  xargs cp -L -t "$root/opt/fuseplan/lib"
loader=$(basename "$(ldd "$bin" | awk '$1 ~ /^\/.*ld-linux/ { print $1 }')")
cat > "$root/opt/fuseplan/fuseplan" <<EOF
#!/bin/sh
exec /opt/fuseplan/lib/$loader --library-path /opt/fuseplan/lib /opt/fuseplan/fuseplan.bin "\$@"
EOF
chmod +x "$root/opt/fuseplan/fuseplan"

# The source tree at /src (read-only: the tests write under their own temporary folders),
# /proc, and a /dev with its own /dev/shm (torch's worker processes share tensors there),
# in a mount namespace that ends with the run.
if [ "${1:-}" = "--run" ]; then
  shift
else
  set -- python3 -m pytest -q -p no:cacheprovider /src/tests/python "$@"
fi
mkdir -p "$root/src"
unshare --mount --propagation private sh -s "$root" "$src" "$@" <<'EOF'
set -e
root=$1 src=$2
shift 2
mount --bind "$src" "$root/src"
mount -o remount,bind,ro "$root/src"
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
mount -t tmpfs shm "$root/dev/shm"
chroot "$root" python3 -c 'import sys, torch, torchvision; print("test_torch2: Python %d.%d, torch %s, torchvision %s" % (sys.version_info[:2] + (torch.__version__, torchvision.__version__)))'
set -- env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root TMPDIR=/tmp FUSEPLAN_BIN=/opt/fuseplan/fuseplan \
  FUSEPLAN_CONFIG_DIR=/src/configs "$@"
exec chroot "$root" sh -c 'cd /src && exec "$@"' sh "$@"
EOF
