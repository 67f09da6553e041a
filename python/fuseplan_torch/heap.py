"""Keeping freed memory in the process (glibc's malloc), so that CPU training steps do not
pay page faults.

A CPU training step frees and allocates tens of megabytes: every activation, every new
gradient. glibc's malloc gives memory back to the system when the free space at the top of
its heap passes its trim threshold, and serves blocks above its mmap threshold with mmap
and munmap; both thresholds adapt as the program runs. Memory given back is taken again
in minor page faults, each a zeroed 4 KiB page. On this project's 2-core machine torch's
own DDP paid 4,600 of them per ResNet-18 step (batch 16, 32x32) and took 2.3 times as long
as with the heap kept, and how many a trainer pays depends on what its process allocated
before (docs/results/2026-12-05-pytorch-heap.md): the steps of one job differ from
another's for reasons that are not the plan.

`keep_heap()` sets both thresholds once: the trim threshold to 2 GiB (freed memory stays
in the heap) and the mmap threshold to 32 MiB (glibc's largest; blocks up to it come from
the heap and stay). PyTorch's Performance Tuning Guide preloads jemalloc or TCMalloc for
the same reason ("CPU specific optimizations", pytorch/tutorials#1512); this stays within
glibc, without a library that Debian's python3-torch does not bring.
fuseplan_torch's own jobs (`run`, `sweep`, `export --profile`, the benches) call it in
every process unless told `--heap trim`. A GPU job's tensors live in CUDA's caching
allocator, which keeps freed memory anyway.
"""
from __future__ import annotations

import argparse
import ctypes
import os

HEAP_CHOICES = ("keep", "trim")  # the flags' values: keep_heap() in every process, or glibc's defaults
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>
TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int: 2 GiB less a byte
MMAP_THRESHOLD = 32 << 20  # glibc's largest on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
_kept = False


def keep_heap() -> bool:
    """Sets glibc's trim and mmap thresholds in this process (see the module's text); True
    where done, False where the C library is not glibc (nothing changed)."""
    global _kept
    version = os.confstr("CS_GNU_LIBC_VERSION") if "CS_GNU_LIBC_VERSION" in os.confstr_names else None
    if not version or not version.startswith("glibc"):
        return False
    libc = ctypes.CDLL("libc.so.6")
    _kept = bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(_M_MMAP_THRESHOLD,
                                                                                          MMAP_THRESHOLD))
    return _kept


def add_heap_flag(parser: argparse.ArgumentParser) -> None:
    """`--heap keep|trim`, as `run`, `sweep`, `export` and the benches take it."""
    parser.add_argument("--heap", default="keep", choices=HEAP_CHOICES,
                        help="keep: every process keeps the memory it frees (glibc's trim and mmap thresholds "
                             "raised), so that CPU steps do not pay page faults; trim: glibc's defaults "
                             "(docs/pytorch.md)")


def heap_setting(choice: str) -> str:
    """A --heap choice as a printed header says it: "kept" or "as glibc trims it"."""
    return "kept" if choice == "keep" else "as glibc trims it"


def heap_kept() -> bool:
    """Whether keep_heap() took effect in this process."""
    return _kept


def heap_note() -> str:
    """", glibc heap kept" where keep_heap() took effect in this process, else "": the
    measured files say so beside the machine."""
    return ", glibc heap kept" if _kept else ""
