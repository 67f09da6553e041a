#!/usr/bin/env bash
# Packs the Release binaries that run on a GPU (fuseplan-exec, fuseplan, test_cuda_parity)
# with the shared libraries they need beyond glibc, libstdc++ and CUDA into .dev/
# (ignored by git), for a GPU machine that lacks this project's Debian packages (the
# device machines lent to development sessions). There:
#   . .dev/env.sh   # unpacks the libraries, finds CUDA's libraries (pip's nvidia-* wheels
#                   # or /usr/local/cuda) and sets LD_LIBRARY_PATH
#   .dev/test_cuda_parity; .dev/fuseplan-exec train --backend cuda ...
#   mpirun -np 2 .dev/fuseplan-exec run ...   # Open MPI's runtime, relocated (.dev/ompi)
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build --preset release --target fuseplan-exec fuseplan test_cuda_parity >/dev/null
rm -rf .dev && mkdir -p .dev/libs
bins=(build/release/cli/fuseplan-exec build/release/cli/fuseplan build/release/tests/test_cuda_parity)
cp "${bins[@]}" .dev/
# Open MPI's runtime for runs of several ranks (Debian's layout, relocated by env.sh):
# mpirun, its components and PMIx's, help texts and defaults. Components whose fabric
# libraries are left out (UCX, libfabric, verbs, PSM) do not load; shared memory and TCP do.
ompi=/usr/lib/x86_64-linux-gnu/openmpi/lib
mkdir -p .dev/ompi/bin .dev/ompi/lib .dev/ompi/pmix .dev/ompi/etc
cp /usr/bin/orterun .dev/ompi/bin/mpirun
cp /usr/bin/orted .dev/ompi/bin/
cp "$ompi"/openmpi3/*.so .dev/ompi/lib/
cp /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix/*.so .dev/ompi/pmix/
cp -r /usr/share/openmpi .dev/ompi/share
cp /etc/openmpi/openmpi-mca-params.conf .dev/ompi/etc/
printf '%s\n' mca_base_component_show_load_errors=0 'btl = self,vader,tcp' 'pml = ob1' \
  >> .dev/ompi/etc/openmpi-mca-params.conf
fabric='^(libfabric|libuc[mpst]|libpsm.*|libinfinipath|libefa|libibverbs|librdmacm|libnl-.*|libmunge)\.so'
skip='^(libc|libm|libstdc\+\+|libgcc_s|libpthread|libdl|librt|ld-linux.*|libcud.*|libcublas.*|libnccl.*)\.so'
for lib in $(ldd "${bins[@]}" .dev/ompi/bin/* .dev/ompi/lib/*.so .dev/ompi/pmix/*.so 2>/dev/null |
             awk '/=> \//{print $3}' | sort -u); do
  base=$(basename "$lib")
  [[ $base =~ $skip || $base =~ $fabric ]] || cp -L "$lib" .dev/libs/
done
tar -C .dev -cJf .dev/libs.tar.xz libs && rm -rf .dev/libs
cat > .dev/env.sh <<'EOS'
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ -d "$here/libs" ] || tar -C "$here" -xJf "$here/libs.tar.xz"
cuda=$(python3 - <<'PY' 2>/dev/null
# Every folder of pip's nvidia-* wheels (both the per-library layout and CUDA 13's nvidia/cu13)
# that holds one of the CUDA libraries the binaries link.
import os
wanted = ("libcudart.so.", "libcublas.so.", "libcublasLt.so.", "libcudnn.so.", "libnccl.so.")
dirs = []
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
for root in roots:
    for d, _, files in sorted(os.walk(root)):
        if d not in dirs and any(f.startswith(wanted) for f in files):
            dirs.append(d)
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="$here/libs${cuda:+:$cuda}:/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# Open MPI and PMIx look for their components, help texts and defaults here.
om=$here/ompi
export OPAL_PREFIX=$om OPAL_EXEC_PREFIX=$om OPAL_BINDIR=$om/bin OPAL_LIBDIR=$here/libs OPAL_PKGLIBDIR=$om/lib \
  OPAL_DATAROOTDIR=$om/share OPAL_DATADIR=$om/share OPAL_PKGDATADIR=$om/share OPAL_SYSCONFDIR=$om/etc \
  PMIX_MCA_mca_base_component_path=$om/pmix PMIX_MCA_pcompress_base_silence_warning=1 \
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export PATH=$om/bin:$PATH
EOS
ex=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$ex")"
grep -qx '/.dev/' "$ex" 2>/dev/null || echo '/.dev/' >> "$ex"
du -sh .dev/*
