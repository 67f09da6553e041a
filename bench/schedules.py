#!/usr/bin/python3
"""Schedules beyond fusion: compare tables (predicted), with simulator cross-checks.

For each model, shipped cluster and GPU count, `fuseplan schedule --json` prices the
schedules users know (DDP, Horovod, ByteScheduler, US-Byte, DeAR, ZeRO-2, FSDP
SHARD_GRAD_OP, ZeRO-3 / FSDP FULL_SHARD), the
fusion-only optimum (fuseplan's `tune --strategy optimal`), and the best schedule its
search finds, with a lower bound of any schedule. The table prints each one's iteration
and the best's speed-up over DDP, Horovod and the fusion-only optimum, the best's shape,
the gap to the bound and the time the search took. Schedules that do not fit the
device's memory are marked; the best is searched among those that fit.

--simulate replays the best and the fusion-only optimum in SimGrid for the rows at or
below --sim-max-gpus GPUs (minutes: every rank's messages are simulated).

usage: schedules.py [--bin build/release/cli/fuseplan] [--quick] [--simulate]
                    [--sim-max-gpus 64] [--json]
"""
import argparse
import json
import os
import subprocess
import sys

from benchlib import require_binary

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (model, batch per GPU, precision): the models the issue names, at their usual batches.
MODELS = (("resnet50", 64, "fp16"), ("vgg16", 64, "fp32"), ("bert_large", 32, "fp16"), ("gpt2_xl", 4, "fp16"))
# Shipped clusters: a 25 Gbit/s RoCE P100 cluster (Horovod's benchmark), the 4-minute
# paper's 100 Gbit/s P40 cluster, and two NCCL clusters (A100 with 8 x 200 Gbit/s
# InfiniBand, A100 on AWS with 4 x 100 Gbit/s EFA).
CLUSTERS = ("p100-horovod", "tencent-p40", "dgx-a100", "aws-p4d")
GPUS = (64, 512, 2048, 8192)
QUICK = ((("resnet50", 64, "fp16"), ("vgg16", 64, "fp32")), ("p100-horovod", "dgx-a100"), (64, 512))
NAMES = ("best", "fusion", "ddp", "horovod", "bytescheduler", "usbyte", "dear", "zero2", "fsdp", "zero3")


def run(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True)
    return r.returncode, r.stdout, r.stderr.strip().splitlines()[-1:] if r.stderr.strip() else []


def describe(s):
    update = "full shard" if s.get("reshard") else "shard" if s["shard_optimizer"] else (
        "step" if s["step_update"] else "per layer")
    return f'{len(s["bounds"])} parts, {s["exchange"]}, {s["order"]}, {s["gate"]}, {update}, credit {s["credit"]}'


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "build/release/cli/fuseplan"))
    ap.add_argument("--quick", action="store_true", help="2 models x 2 clusters x 64, 512 GPUs (CI)")
    ap.add_argument("--simulate", action="store_true", help="SimGrid cross-check of best and fusion at small scale")
    ap.add_argument("--sim-max-gpus", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    require_binary(a.bin, "schedules")
    models, clusters, gpus_list = QUICK if a.quick else (MODELS, CLUSTERS, GPUS)
    rows = []
    for model, batch, precision in models:
        for cluster in clusters:
            for gpus in gpus_list:
                args = ["schedule", "--model", model, "--cluster", cluster, "--gpus", str(gpus), "--batch-per-gpu",
                        str(batch), "--precision", precision, "--json", "--strategy", ",".join(NAMES)]
                if a.simulate and gpus <= a.sim_max_gpus and model in ("resnet50", "vgg16"):
                    args += ["--simulate", "--sim-iterations", "4"]
                code, out, err = run(a.bin, args)
                if code != 0:
                    sys.exit(f"schedules.py: {' '.join(args)} failed: {err}")
                got = {s["strategy"]: s for s in json.loads(out)}
                row = {"model": model, "cluster": cluster, "gpus": gpus, "batch": batch, "precision": precision,
                       "schedules": got}
                rows.append(row)
                best = got["best"]["prediction"]["iteration_ms"]
                # The search never ends above the fusion-only optimum where that fits.
                if got["fusion"]["prediction"]["fits"] and best > got["fusion"]["prediction"]["iteration_ms"] * (1 + 1e-9):
                    sys.exit(f"schedules.py: best above the fusion-only optimum for {model} {cluster} {gpus}")
                if best < got["best"]["prediction"]["lower_bound_ms"] * (1 - 1e-9):
                    sys.exit(f"schedules.py: best below the lower bound for {model} {cluster} {gpus}")
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print("Predicted iteration (ms) per schedule; speed-ups of the best; '*' = does not fit the GPU's memory.\n")
    head = ["model", "cluster", "GPUs"] + list(NAMES[1:]) + ["best", "vs ddp", "vs horovod", "vs fusion", "gap to bound",
                                                            "tuned ms", "best's schedule"]
    sim = any("simulated_iteration_ms" in s["prediction"] for r in rows for s in r["schedules"].values())
    if sim:
        head += ["best sim / model", "fusion sim / model"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        s = r["schedules"]
        def it(name):
            p = s[name]["prediction"]
            return f'{p["iteration_ms"]:.1f}' + ("" if p["fits"] else "*")
        best = s["best"]["prediction"]["iteration_ms"]
        def vs(name):
            return f'{s[name]["prediction"]["iteration_ms"] / best:.3f}x'
        cells = [r["model"], r["cluster"], str(r["gpus"])] + [it(n) for n in NAMES[1:]] + [
            it("best"), vs("ddp"), vs("horovod"), vs("fusion"),
            f'{(best / s["best"]["prediction"]["lower_bound_ms"] - 1) * 100:+.1f} %'
            + ("" if s["best"]["prediction"]["bound_certified"] else " (grid)"),
            f'{s["best"]["prediction"]["tuning_ms"]:.1f}', describe(s["best"])]
        if sim:
            for n in ("best", "fusion"):
                p = s[n]["prediction"]
                cells.append(f'{p["simulated_iteration_ms"] / p["iteration_ms"]:.4f}' if "simulated_iteration_ms" in p else "-")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
