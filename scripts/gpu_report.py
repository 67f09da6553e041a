#!/usr/bin/python3
"""The figures of one scripts/gpu_check.sh run, from its output folder, as markdown.

usage: scripts/gpu_report.py OUT_DIR [--skip N]

Prints the steps' exit codes and times, then what each step measured where its files are
there:
- the parity test's table (parity.txt);
- ms per step and images/s of each `fuseplan-exec train` (metrics*.json: the mean of the
  steps after the first N, skipped-for-overflow steps included) beside PyTorch's
  (pytorch.txt), and their ratio;
- the verify tables (verify.txt, mpi2.txt, torchverify.txt);
- the NCCL sweep's sizes (nccl-sweep.json).
Missing files are said, not guessed. Nothing is written.
"""
import argparse
import json
import os
import re
import sys


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def train_rate(path, skip):
    """(ms per step, images/s) of a fuseplan.metrics/1 file: the mean of the steps after
    the first `skip` (the first carries cuDNN's and the allocator's set-up)."""
    text = read(path)
    if text is None:
        return None
    m = json.loads(text)
    steps = [s["seconds"] for s in m.get("steps", [])][skip:]
    if not steps:
        return None
    dt = sum(steps) / len(steps)
    return dt * 1e3, m["batch"] * m.get("ranks", 1) / dt


def pytorch_rate(path):
    text = read(path)
    if text is None:
        return None
    found = re.search(r"([0-9.]+) ms/step, ([0-9.]+) images/s", text)
    return (float(found.group(1)), float(found.group(2))) if found else None


def section(title, body):
    print("\n## " + title + "\n")
    print(body.rstrip() if body else "(no output)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--skip", type=int, default=5, help="steps left out of each train's mean (default 5)")
    a = ap.parse_args()
    summary = read(os.path.join(a.out, "summary.txt"))
    if summary is None:
        print("gpu_report: %s: no summary.txt (not a gpu_check.sh output folder)" % a.out, file=sys.stderr)
        sys.exit(2)
    print("# GPU check: " + os.path.abspath(a.out))
    section("Steps (exit code, seconds)", summary)

    parity = read(os.path.join(a.out, "parity.txt"))
    if parity is not None:
        lines = parity.strip().splitlines()
        # The failures (Catch's messages), then the whole table of errors, which follows
        # its header line to the end.
        header = next((i for i, l in enumerate(lines) if "max normalised error" in l), None)
        first = next((i for i, l in enumerate(lines[:header]) if "FAILED" in l), header)
        failures = [l for l in lines[first:header] if not l.startswith(("test cases", "assertions", "====", "...."))]
        table = lines[header:] if header is not None else lines[-60:]
        summary_line = [l for l in lines if l.startswith("test cases") or l.startswith("assertions")]
        section("Parity (test_cuda_parity)", "\n".join(summary_line + failures[:40] + [""] + table))

    rows = []
    torch_rate = pytorch_rate(os.path.join(a.out, "pytorch.txt"))
    torch_bf16 = pytorch_rate(os.path.join(a.out, "pytorchbf16.txt"))
    for name, label in (("metrics.json", "fuseplan-exec train (16-bit NHWC storage in fp16/bf16)"),
                        ("metrics-emulated.json", "trainemu (--emulate-half)"),
                        ("metrics-graphs.json", "traingraph (--cuda-graphs)"),
                        ("metrics-find.json", "trainfind (--conv-algos find)"),
                        ("metrics-bf16.json", "trainbf16 (BF16, --cuda-graphs; against PyTorch BF16)")):
        r = train_rate(os.path.join(a.out, name), a.skip)
        if r is None:
            rows.append("| %s | (no %s) | | |" % (label, name))
            continue
        against = torch_bf16 if name == "metrics-bf16.json" else torch_rate
        ratio = "%.2fx" % (r[1] / against[1]) if against else "-"
        rows.append("| %s | %.1f | %.0f | %s |" % (label, r[0], r[1], ratio))
    for label, rate, name in (("PyTorch", torch_rate, "pytorch.txt"), ("PyTorch BF16", torch_bf16, "pytorchbf16.txt")):
        if rate:
            rows.append("| %s (%s) | %.1f | %.0f | 1.00x |" % ((label, name) + rate))
        else:
            rows.append("| %s | (no %s figure) | | |" % (label, name))
    section("Throughput (mean of the steps after the first %d)" % a.skip,
            "| run | ms/step | images/s | / PyTorch |\n|---|---|---|---|\n" + "\n".join(rows))

    for name, title in (("verify.txt", "Verify: one rank, NCCL exchange (run)"),
                        ("verifytuned.txt", "Verify: calibrate -> tune -> run on one rank (runtuned)"),
                        ("mpi2.txt", "Two ranks on the one GPU, MPI exchange (mpi2)"),
                        ("torchverify.txt", "Verify: PlanDDP on one NCCL rank (torchrun)")):
        text = read(os.path.join(a.out, name))
        if text is not None:
            section(title, text)

    sweep = read(os.path.join(a.out, "nccl-sweep.json"))
    if sweep is not None:
        points = json.loads(sweep).get("points", [])
        body = "| bytes | seconds |\n|---|---|\n" + "\n".join(
            "| %d | %.3g |" % (p["bytes"], p["seconds"]) for p in points)
        section("NCCL sweep (nccl-sweep.json, one rank)", body)


if __name__ == "__main__":
    main()
