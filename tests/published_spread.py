"""bench/published_scaling.py's frameworks table (framework_spread): cases of one model,
server and precision are grouped across frameworks (BERT-large by script: SQuAD, pre-training
phase 1, phase 2), groups of one framework are dropped, and each group's floor is the
smallest worst per-GPU error any factor shared by all its predictions reaches, checked
against a scan of such factors.

usage: published_spread.py BENCH_SCRIPT
"""
import importlib.util
import os
import sys


def load(path):
    sys.dont_write_bytecode = True  # nothing written beside the sources
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # the bench's own helpers (benchlib)
    spec = importlib.util.spec_from_file_location("published_scaling", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def case(name, model, cluster, precision, per_gpu, published, flags=(), **extra):
    return {"name": name, "model": model, "cluster": cluster, "precision": precision, "per_gpu": per_gpu,
            "published": published, "flags": list(flags), **extra}


def row(predicted_per_gpu, predicted, role="held out", per_gpu_is="measured"):
    return {"predicted_per_gpu": predicted_per_gpu, "predicted": predicted, "role": role, "per_gpu_is": per_gpu_is,
            "published_per_gpu": 1.0}


def scanned_floor(ratios):
    """min over shared factors s of max |s q - 1|, by a fine scan around the ratios."""
    lo, hi = 0.5 / max(ratios), 1.5 / min(ratios)
    steps = 200000
    return min(max(abs((lo + (hi - lo) * i / steps) * q - 1) for q in ratios) for i in range(steps + 1))


def main():
    bench = load(sys.argv[1])
    p1, p2 = ["--seq-len", "128"], ["--seq-len", "512"]
    cases = [
        # ResNet-50 on one server: three frameworks, MXNet's two cases sharing one base run.
        case("dle-a100-resnet50-amp", "resnet50", "dgx-a100", "fp16", 2000, 0.84),
        case("tf-dle-a100-resnet50-amp", "resnet50", "dgx-a100", "fp16", 2100, 0.92),
        case("mx-a100-resnet50-amp-2gpu", "resnet50", "dgx-a100", "fp16", 2150, 0.99),
        case("mx-a100-resnet50-amp", "resnet50", "dgx-a100", "fp16", 2110, 0.97),
        # The same model at another precision: PyTorch alone, no group.
        case("dle-a100-resnet50-tf32", "resnet50", "dgx-a100", "fp32", 900, 0.97),
        # BERT: phase 1 and phase 2 (at 512 tokens or binned) and SQuAD are separate groups.
        case("dle-a100-bert-pretrain-amp-8gpu", "bert_large_pretraining", "dgx-a100", "fp16", 570, 0.99, p1),
        case("paddle-a100-bert-pretrain-amp-8gpu", "bert_large_pretraining", "dgx-a100", "fp16", 620, 0.98, p1),
        case("dle-a100-bert-p2-amp-8gpu", "bert_large_pretraining", "dgx-a100", "fp16", 207, 0.99,
             padded_length="fitted"),
        case("tf2-a100-bert-p2-amp-2node", "bert_large_pretraining", "dgx-a100", "fp16", 93, 0.99, p2),
        case("paddle-a100-bert-squad-amp", "bert_large", "dgx-a100", "fp16", 110, 0.91),
        # Not a DeepLearningExamples framework, and a lower bound: both left out.
        case("horovod16-rdma-resnet101", "resnet50", "dgx-a100", "fp16", 109, 0.91),
        case("tf2-a100-bert-squad-amp-8gpu", "bert_large", "dgx-a100", "fp16", 131, 0.98),
    ]
    rows = [row(2000, 0.84), row(2200, 0.90), row(2400, 0.99), row(2360, 0.97), row(905, 0.97),
            row(570, 0.98), row(560, 0.98), row(206, 0.98), row(120, 0.99), row(140, 0.93),
            row(50, 0.9), row(170, 0.96, per_gpu_is="lower bound")]
    spread = bench.framework_spread(cases, rows)
    failures = []
    expected = {("resnet50", "dgx-a100", "fp16"), ("BERT-large phase 1", "dgx-a100", "fp16"),
                ("BERT-large phase 2", "dgx-a100", "fp16")}
    if set(spread) != expected:
        failures.append(f"groups {sorted(spread)}, expected {sorted(expected)}")
    resnet = spread.get(("resnet50", "dgx-a100", "fp16"))
    if resnet:
        ratios, floor, members = resnet
        if sorted(ratios) != ["MXNet", "PyTorch", "TensorFlow"] or len(ratios["MXNet"]) != 2 or len(members) != 4:
            failures.append(f"resnet50 group: {ratios}, {len(members)} rows")
        # Each ratio is the base run's predicted over published per-GPU rate: the efficiencies divide out.
        want = (2400 / 0.99) / (2150 / 0.99)
        if abs(ratios.get("MXNet", [0])[0] / want - 1) > 1e-12:
            failures.append(f"MXNet's ratio {ratios.get('MXNet')}, expected {want}")
    for key, (ratios, floor, _) in spread.items():
        q = [x for xs in ratios.values() for x in xs]
        scanned = scanned_floor(q)
        if abs(scanned - floor) > 1e-4:
            failures.append(f"{key}: floor {floor:.6f}, a scan of shared factors reaches {scanned:.6f}")
        # A factor shared by every prediction of the group leaves its floor as it was.
        scaled = [dict(r, predicted_per_gpu=1.37 * r["predicted_per_gpu"]) for r in rows]
        if abs(bench.framework_spread(cases, scaled)[key][1] - floor) > 1e-12:
            failures.append(f"{key}: the floor moved with a factor shared by all predictions")
    for f in failures:
        print("published_spread: " + f)
    if not failures:
        print(f"published_spread: {len(spread)} groups, floors as a scan of shared factors finds them")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
