#!/usr/bin/env python3
"""Per-layer gating in a measured trace (fuseplan-exec run --schedule ... --report R).

usage: gate_trace.py REPORT MODEL_JSON   (MODEL_JSON: fuseplan show MODEL ... --json)

Prints three counts over every rank and traced step: the (layer, bucket) pairs checked,
those in which the layer's forward started before a bucket of the previous step that
writes one of its parameters had ended (the gate broken; 0 expected), and the forward
layers that started while the previous step's communication still ran (the overlap that
per-layer gating buys; 0 with a barrier).
"""
import json
import re
import sys
from collections import defaultdict


def main(report_path, model_path):
    report = json.load(open(report_path))
    model = json.load(open(model_path))
    tensors = [(layer["name"], p["name"]) for layer in model["layers"] for p in layer.get("params", [])]
    T = len(tensors)
    positions = defaultdict(set)  # layer -> its backward positions
    for i, (layer, _) in enumerate(tensors):
        positions[layer].add(T - 1 - i)
    buckets = defaultdict(list)  # (rank, iteration) -> [(begin, end, start, end_s)]
    for e in report["timeline"]:
        if e["category"] == "allreduce":
            b = report["buckets"][int(re.match(r"bucket (\d+)", e["name"]).group(1))]
            buckets[(e["rank"], e["iteration"])].append((b["begin"], b["end"], e["start_s"], e["start_s"] + e["dur_s"]))
    checked = broken = overlapped = 0
    for e in report["timeline"]:
        prev = buckets.get((e["rank"], e["iteration"] - 1))
        if e["category"] != "forward" or not prev:
            continue
        overlapped += e["start_s"] < max(end for _, _, _, end in prev)
        mine = positions.get(e["name"], set())
        for begin, end, _, end_s in prev:
            if any(begin <= p < end for p in mine):
                checked += 1
                broken += e["start_s"] < end_s
    print(checked, broken, overlapped)


if __name__ == "__main__":
    main(*sys.argv[1:3])
