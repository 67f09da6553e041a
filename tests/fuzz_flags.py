#!/usr/bin/python3
"""A seeded fuzzer over the command-line flags of both binaries.

Every subcommand runs on a small valid setup (alexnet_bn on 16 GPUs of p100-horovod, a
1-rank plan for fuseplan-exec) with one flag added, taken from the subcommand's own
--help, and a hostile value: empty, negative, zero, NaN, infinite, overflowing, a word,
a missing path, a directory, a malformed list or range. A run fails on:
  - an exit code other than 0 or 2, or a signal;
  - "internal error" in the output (bad input must be named, not crash);
  - exit 2 with anything but one line (the message naming the flag);
  - a run past its time limit (a hang, or a value that makes a run of hours).
The files (sweep, flags) --file-like flags point at are made at the start. With
--seconds N, random (flag, value) pairs for N seconds; with --all, every pair once
(several minutes).

usage: fuzz_flags.py BIN_DIR SOURCE_DIR [--seconds N | --all] [--seed S]
Prints the runs and exits by code; exit 1 on any failure, with its command.
"""
import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

VALUES = ["", "-1", "0", "nan", "inf", "1e999", "-1e-300", "abc", "99999999999999999999", "/nonexistent/x", "/tmp",
          "1,2,,3", "2:1", "0.0000001"]
LIMIT_S = 60


def flags_of(binary, sub):
    """(flag, takes a value) for each of the subcommand's flags but --help."""
    text = subprocess.run([binary, sub, "--help"], capture_output=True, text=True).stdout
    found = re.findall(r"^\s+(?:-\w,)?(--[\w-]+)(?: (\S+))?", text, re.M)
    return sorted({(flag, bool(arg)) for flag, arg in found if flag != "--help"})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bin_dir")
    ap.add_argument("source_dir")
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--all", action="store_true", help="every (flag, value) pair once")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    fp = os.path.abspath(os.path.join(a.bin_dir, "fuseplan"))
    fx = os.path.abspath(os.path.join(a.bin_dir, "fuseplan-exec"))
    work = tempfile.mkdtemp(prefix="fuseplan-fuzz-flags-")
    configs = os.path.abspath(os.path.join(a.source_dir, "configs"))
    env = dict(os.environ, FUSEPLAN_PROGRESS="0", FUSEPLAN_CONFIG_DIR=configs)

    def made(cmd):
        subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=work)

    small = ["--model", "alexnet_bn", "--gpus", "16", "--cluster", "p100-horovod"]
    plan16 = os.path.join(work, "plan16.json")
    made([fp, "tune", *small, "--out", plan16])
    nccl = os.path.abspath(os.path.join(a.source_dir, "tests", "data", "nccl-tests-allreduce.txt"))
    setups = {
        (fp, "models"): [], (fp, "clusters"): [], (fp, "show"): ["alexnet_bn"],
        (fp, "predict"): small, (fp, "tune"): small, (fp, "compare"): small, (fp, "whatif"): small,
        (fp, "simulate"): small, (fp, "schedule"): small,
        (fp, "collective"): ["--gpus", "16", "--cluster", "p100-horovod", "--sizes", "1K:1M"],
        (fp, "export"): ["--plan", plan16, "--to", "ddp"],
        (fp, "calibrate"): ["--cluster", "dgx-h100", "--ranks", "16", "--nccl-tests", nccl],
        (fp, "verify"): ["--plan", plan16],
    }
    if os.path.exists(fx):
        plan1 = os.path.join(work, "plan1.json")
        made([fp, "tune", "--model", "resnet18", "--cluster", "local-cpu", "--gpus", "1", "--resolution", "16",
              "--channels", "1", "--classes", "10", "--out", plan1])
        quick = ["--dataset", "synthetic", "--synthetic-size", "64", "--quiet"]
        setups[(fx, "train")] = quick + ["--model", "resnet18", "--resolution", "16", "--batch-per-gpu", "8",
                                         "--max-steps", "1", "--no-eval"]
        setups[(fx, "run")] = quick + ["--plan", plan1, "--iterations", "1", "--warmup", "1"]
        setups[(fx, "sweep")] = ["--sizes", "4K:64K", "--iterations", "2", "--warmup", "1", "--quiet"]
    pairs = []
    for (binary, sub), base in setups.items():
        for flag, takes in flags_of(binary, sub):
            for v in (VALUES if takes else [None]):
                pairs.append((binary, sub, base, flag, v))
    rng = random.Random(a.seed)
    if not a.all:
        rng.shuffle(pairs)
    print(f"fuzz_flags: seed {a.seed}, {'every pair' if a.all else f'{a.seconds:.0f} s'} of {len(pairs)} "
          f"(subcommand, flag, value) pairs over {len(setups)} subcommands")
    codes, failures, start = {}, [], time.time()
    for binary, sub, base, flag, v in pairs:
        if not a.all and time.time() - start > a.seconds:
            break
        cmd = [binary, sub, *base, flag] + ([v] if v is not None else [])
        shown = " ".join([os.path.basename(binary), sub, *base, flag] + ([repr(v)] if v is not None else []))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=LIMIT_S)
        except subprocess.TimeoutExpired:
            failures.append(f"past {LIMIT_S} s: {shown}")
            continue
        codes[r.returncode] = codes.get(r.returncode, 0) + 1
        text = r.stdout + r.stderr
        lines = text.strip().splitlines()
        if r.returncode not in (0, 2):
            failures.append(f"exit {r.returncode}: {shown}: {text.strip()[-300:]}")
        elif "internal error" in text:
            failures.append(f"internal error: {shown}: {text.strip()[-300:]}")
        elif r.returncode == 2 and len(lines) != 1:
            failures.append(f"exit 2 with {len(lines)} lines: {shown}: {' // '.join(lines)[:300]}")
    runs = sum(codes.values())
    print(f"  {runs} runs, exits " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    for f in failures:
        print("  FAILED " + f)
    if failures:
        print(f"  the plans and files the commands name are kept under {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
