#!/usr/bin/python3
"""Plots a `fuseplan whatif --csv` sweep (needs Debian's python3-matplotlib).

  fuseplan whatif --model resnet50,alexnet_bn --gpus 8:2048 \
      --strategy optimal,horovod,ddp,single --csv --out sweep.csv
  scripts/plot_whatif.py sweep.csv --out plots/   (Debian's /usr/bin/python3)

Writes, per model:
  efficiency-MODEL.png  scaling efficiency vs GPUs, one line per strategy (and per
                        algorithm, inter-node bandwidth, batch or precision when the
                        sweep varies them)
  breakdown-MODEL.png   stacked iteration time per configuration: forward, backward,
                        exposed communication, optimizer, data wait
Exit code 2 on a missing or malformed CSV (one line naming it).
"""
import argparse
import csv
import os
import sys

NEEDED = ["model", "gpus", "strategy", "algorithm", "inter_bw_Gbps", "batch_per_gpu", "precision",
          "iteration_ms", "forward_ms", "backward_ms", "exposed_comm_ms", "optimizer_ms", "data_wait_ms",
          "scaling_efficiency"]
SERIES_KEYS = ["strategy", "algorithm", "inter_bw_Gbps", "batch_per_gpu", "precision"]
PARTS = [("forward_ms", "forward"), ("backward_ms", "backward"), ("exposed_comm_ms", "exposed communication"),
         ("optimizer_ms", "optimizer"), ("data_wait_ms", "data wait")]


def fail(msg):
    print(f"plot_whatif.py: {msg}", file=sys.stderr)
    sys.exit(2)


def read_rows(path):
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        fail(f"{path}: {e.strerror}")
    if not rows:
        fail(f"{path}: no rows (expected the CSV of `fuseplan whatif --csv`)")
    missing = [k for k in NEEDED if k not in rows[0]]
    if missing:
        fail(f"{path}: missing columns {', '.join(missing)} (expected `fuseplan whatif --csv`)")
    for i, r in enumerate(rows, start=2):
        try:
            r["gpus"] = int(r["gpus"])
            for k, _ in PARTS + [("iteration_ms", ""), ("scaling_efficiency", "")]:
                r[k] = float(r[k])
        except ValueError:
            fail(f"{path}: line {i}: not a number")
    return rows


def label(row, varying):
    return ", ".join(f"{k.replace('_', ' ')} {row[k]}" if k != "strategy" else row[k] for k in varying) or row["strategy"]


def save(plt, fig, path, written):
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--out", default=".", help="directory for the PNG files")
    a = ap.parse_args()
    rows = read_rows(a.csv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        fail("needs matplotlib: apt-get install python3-matplotlib")
    os.makedirs(a.out, exist_ok=True)
    written = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mrows = [r for r in rows if r["model"] == model]
        varying = [k for k in SERIES_KEYS if len({r[k] for r in mrows}) > 1]
        series = {}
        for r in mrows:
            series.setdefault(label(r, varying), []).append(r)
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, rs in series.items():
            rs = sorted(rs, key=lambda r: r["gpus"])
            ax.plot([r["gpus"] for r in rs], [100 * r["scaling_efficiency"] for r in rs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel("scaling efficiency (%)")
        ax.set_title(f"{model}: predicted scaling efficiency ({mrows[0]['cluster']})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        save(plt, fig, os.path.join(a.out, f"efficiency-{model}.png"), written)

        fig, ax = plt.subplots(figsize=(max(8, 0.35 * len(mrows)), 5))
        xs = range(len(mrows))
        bottom = [0.0] * len(mrows)
        for key, name in PARTS:
            vals = [r[key] for r in mrows]
            ax.bar(xs, vals, bottom=bottom, label=name)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f"{r['gpus']} {label(r, varying)}" for r in mrows], rotation=70, ha="right", fontsize=7)
        ax.set_ylabel("iteration time (ms)")
        ax.set_title(f"{model}: iteration breakdown")
        ax.legend(fontsize=8)
        save(plt, fig, os.path.join(a.out, f"breakdown-{model}.png"), written)
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
