#!/usr/bin/env bash
# Packs the Release binaries that run on a GPU (fuseplan-exec, fuseplan, test_cuda_parity)
# with the shared libraries they need beyond glibc, libstdc++ and CUDA into .dev/
# (ignored by git), for a GPU machine that lacks this project's Debian packages (the
# device machines lent to development sessions). There:
#   . .dev/env.sh   # unpacks the libraries, finds CUDA's libraries (pip's nvidia-* wheels
#                   # or /usr/local/cuda) and sets LD_LIBRARY_PATH
#   .dev/test_cuda_parity; .dev/fuseplan-exec train --backend cuda ...
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build --preset release --target fuseplan-exec fuseplan test_cuda_parity >/dev/null
rm -rf .dev && mkdir -p .dev/libs
bins=(build/release/cli/fuseplan-exec build/release/cli/fuseplan build/release/tests/test_cuda_parity)
cp "${bins[@]}" .dev/
skip='^(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux.*|libcud.*|libcublas.*|libnccl.*)\.so'
for lib in $(ldd "${bins[@]}" | awk '/=> \//{print $3}' | sort -u); do
  base=$(basename "$lib")
  [[ $base =~ $skip ]] || cp -L "$lib" .dev/libs/
done
tar -C .dev -cJf .dev/libs.tar.xz libs && rm -rf .dev/libs
cat > .dev/env.sh <<'EOS'
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -d "$here/libs" ] || tar -C "$here" -xJf "$here/libs.tar.xz"
cuda=$(python3 - <<'PY' 2>/dev/null
import importlib, os
dirs = []
for m in ("nvidia.cudnn", "nvidia.cublas", "nvidia.cuda_runtime", "nvidia.nccl"):
    try:
        dirs += [os.path.join(p, "lib") for p in importlib.import_module(m).__path__]
    except ImportError:
        pass
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="$here/libs${cuda:+:$cuda}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
EOS
ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
grep -qx '/.dev/' "$ex" 2>/dev/null || echo '/.dev/' >> "$ex"
du -sh .dev/*
