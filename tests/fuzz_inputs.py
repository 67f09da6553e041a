#!/usr/bin/python3
"""A seeded mutation fuzzer over the binaries, one file format at a time.

Each format has a valid seed (shipped, or made by the binaries at the start) and the
command that reads it. Every round mutates the seed (JSON-aware: a value replaced by an
extreme number, a string, another type or nothing, a key dropped or repeated; or
byte-level: flipped, cut, repeated bytes; text formats line by line), runs the command
with an existing output file, and fails on:
  - an exit code other than 0 or 2, or a signal;
  - "internal error" in the output (bad input must be named, not crash);
  - a run past its time limit (a hang);
  - a failed run that changed the existing output file or left a temporary file.
Formats: cluster (with per-class efficiencies and a transport, one staged through the
host, one with per-class efficiencies per precision, and an NCCL one), model, plan (and
one with a framework cycle, one that accumulates), sweep, throughput (measured training
rates, and scaling efficiencies of plans; and a framework's, fitting its compute scale),
nccl-tests (text and -J JSON);
with fuseplan-exec built, also profile (read by predict, and fitted per layer class by
calibrate) and checkpoint, and with mpirun the measured report (verify).

usage: fuzz_inputs.py BIN_DIR SOURCE_DIR [--seconds N] [--seed S] [--formats a,b]
Prints per format: runs, exits by code, failures; exit 1 on any failure (with the
mutated file kept and its command printed).
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

EXTREMES = [0, -1, 1e-320, 5e-324, 1e-308, 1e308, 2**63, 2**64, -2**63, 2**31 - 1, 0.5, 1e6, 3]
TEXT_NUMBERS = ["1e999", "-1e999", "NaN", "Infinity", "1" * 400, "0x10", "-0"]
STRINGS = ["", "x" * 5000, "\u00e9\u6f22", "../../etc/passwd", "fp8", "ring", "nccl", "auto"]


def mutate_json(text, rng):
    try:
        doc = json.loads(text)
    except ValueError:
        return mutate_bytes(text.encode(), rng).decode("utf-8", "replace")
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, path + [k])
        elif isinstance(node, list):
            for i, v in enumerate(node[:8]):
                walk(v, path + [i])

    walk(doc, [])
    path = rng.choice(paths[1:] or paths)
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    key = path[-1] if path else None
    kind = rng.randrange(7)
    if key is None:
        return rng.choice(["[]", "{}", "null", "1"])
    if kind == 0:
        parent[key] = rng.choice(EXTREMES)
    elif kind == 1:
        parent[key] = rng.choice(STRINGS)
    elif kind == 2:
        parent[key] = rng.choice([None, True, [], {}, [1, 2], {"a": 1}])
    elif kind == 3 and isinstance(parent, dict):
        del parent[key]
    elif kind == 4 and isinstance(parent, dict):
        parent["unexpected_" + str(rng.randrange(100))] = 1
    elif kind == 5:  # a number spelled as JSON cannot hold it
        marker = "\"@@NUMBER@@\""
        parent[key] = "@@NUMBER@@"
        return json.dumps(doc).replace(marker, rng.choice(TEXT_NUMBERS))
    else:  # a key repeated in its object
        out = json.dumps(doc)
        if isinstance(parent, dict) and isinstance(key, str):
            needle = json.dumps(key) + ": "
            at = out.find(needle)
            if at >= 0:
                return out[:at] + needle + "0, " + out[at:]
        return out
    return json.dumps(doc)


def mutate_bytes(data, rng):
    data = bytearray(data)
    if not data:
        return bytes(b"\x00")
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        at = rng.randrange(len(data))
        data[at:at] = data[at:at + rng.randint(1, 64)] * rng.randint(2, 50)
    else:
        data.insert(rng.randrange(len(data)), rng.choice(b"{}[]\",:-.eE09\n\t\xff"))
    return bytes(data)


def mutate_lines(text, rng):
    lines = text.split("\n")
    kind = rng.randrange(4)
    i = rng.randrange(len(lines))
    if kind == 0:
        del lines[i]
    elif kind == 1:
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == 2:
        words = lines[i].split()
        if words:
            words[rng.randrange(len(words))] = str(rng.choice(EXTREMES + TEXT_NUMBERS + ["garbage"]))
        lines[i] = "  ".join(words)
    else:
        return mutate_bytes(text.encode(), rng).decode("latin-1")
    return "\n".join(lines)


def run(cmd, timeout):
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=timeout, env=dict(os.environ, FUSEPLAN_PROGRESS="0",
                                                                                OMP_NUM_THREADS="1"))
        return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return "hang", ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bindir")
    ap.add_argument("source")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--formats", default="")
    a = ap.parse_args()
    fp = os.path.join(a.bindir, "fuseplan")
    fx = os.path.join(a.bindir, "fuseplan-exec")
    have_exec = os.path.exists(fx)
    work = tempfile.mkdtemp(prefix="fuseplan-fuzz-")
    seeds = os.path.join(work, "seeds")
    os.makedirs(seeds)

    def seed_path(name):
        return os.path.join(seeds, name)

    # Seeds the binaries make: a plan, a profile and a checkpoint of a small model.
    small = ["--model", "resnet18", "--resolution", "16", "--channels", "1", "--classes", "10"]
    plan = seed_path("plan.json")
    subprocess.run([fp, "tune"] + small + ["--cluster", "local-cpu", "--gpus", "2", "--batch-per-gpu", "8",
                                          "--precision", "fp32", "--out", plan], check=True, capture_output=True)
    plan_cycle = seed_path("plan-cycle.json")  # Horovod's buckets with a background cycle (cycle_ms)
    subprocess.run([fp, "tune"] + small + ["--cluster", "local-cpu", "--gpus", "2", "--batch-per-gpu", "8",
                                          "--precision", "fp32", "--strategy", "horovod", "--cycle-time", "5",
                                          "--out", plan_cycle], check=True, capture_output=True)
    # Gradient accumulation, per-tensor optimizer kernels and a framework's compute scale.
    plan_acc = seed_path("plan-accumulated.json")
    subprocess.run([fp, "tune"] + small + ["--cluster", "local-cpu", "--gpus", "2", "--batch-per-gpu", "8",
                                          "--precision", "fp32", "--accumulate", "3", "--no-sync",
                                          "--optimizer-kernels", "per-tensor", "--compute-scale", "1.2",
                                          "--out", plan_acc],
                   check=True, capture_output=True)
    plan_cast = seed_path("plan-cast.json")  # FP16 transfers of FP32 gradients, cast on comm (cast)
    subprocess.run([fp, "tune"] + small + ["--cluster", "local-cpu", "--gpus", "2", "--batch-per-gpu", "8",
                                          "--precision", "fp32", "--transfer", "fp16", "--cast", "comm",
                                          "--out", plan_cast], check=True, capture_output=True)
    plan1 = seed_path("plan1.json")
    subprocess.run([fp, "tune"] + small + ["--cluster", "local-cpu", "--gpus", "1", "--batch-per-gpu", "8",
                                          "--precision", "fp32", "--out", plan1], check=True, capture_output=True)
    # Measured training rates: classes of both kinds, the fixed cost and a held-out rate; and
    # scaling efficiencies of three plans: one fitting compute_variation, one held out, one a step overhead.
    with open(seed_path("throughput.json"), "w") as f:
        json.dump({"schema": "fuseplan.throughput/1", "measurements": [
            {"model": "resnet50", "batch_per_gpu": 256, "precision": "fp16", "samples_per_s": 2470,
             "fit": ["conv_kxk", "conv_1x1"], "accumulate": 8, "optimizer": "sgd", "optimizer_kernels": "per-tensor"},
            {"model": "resnet50", "batch_per_gpu": 32, "precision": "fp16", "samples_per_s": 2190,
             "fit": ["kernel_overhead_us"]},
            {"model": "bert_large_pretraining", "options": {"seq_len": 128, "attention": "eager"},
             "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 515, "fit": ["gemm", "attention"],
             "optimizer": "lamb", "source": "seed"},
            {"model": "resnet18", "batch_per_gpu": 128, "precision": "fp16", "samples_per_s": 7600,
             "fit": ["norm"], "efficiency": "memory"},
            {"model": "resnet101", "batch_per_gpu": 64, "precision": "fp32", "samples_per_s": 500, "fit": []},
            {"plan": plan, "scaling_efficiency": 0.95, "fit": ["compute_variation"]},
            {"plan": plan_cycle, "scaling_efficiency": 0.9, "fit": []},
            {"plan": plan_acc, "scaling_efficiency": 0.92, "fit": ["step_overhead"]}]}, f)
    # A framework's rates: two fitting its compute_scale, one held out, and a plan's scaling
    # efficiency fitting compute_variation with the scale applied.
    with open(seed_path("throughput-framework.json"), "w") as f:
        json.dump({"schema": "fuseplan.throughput/1", "measurements": [
            {"model": "resnet50", "batch_per_gpu": 256, "precision": "fp16", "samples_per_s": 2375,
             "fit": ["compute_scale"], "accumulate": 8, "optimizer": "sgd", "optimizer_kernels": "per-tensor"},
            {"model": "resnet101", "batch_per_gpu": 128, "precision": "fp16", "samples_per_s": 1400,
             "fit": ["compute_scale"]},
            {"model": "resnet18", "batch_per_gpu": 128, "precision": "fp16", "samples_per_s": 7000, "fit": []},
            {"plan": plan, "scaling_efficiency": 0.95, "fit": ["compute_variation"]}]}, f)
    with open(seed_path("sweep.json"), "w") as f:
        json.dump({"schema": "fuseplan.sweep/1", "ranks": 2, "per_node": 2, "precision": "fp32", "host": "h",
                   "points": [{"algorithm": "ring", "bytes": 4096 * 2**i, "seconds": 2e-5 * (1 + 0.3 * 2**i),
                               "iterations": 10} for i in range(8)]}, f)
    # A model fine-tuned from a frozen stem: resnet18 with every parameter before layer3 frozen.
    frozen_model = seed_path("model-frozen.json")
    shown = subprocess.run([fp, "show", small[1]] + small[2:] + ["--json"], check=True, capture_output=True,
                           text=True).stdout
    doc = json.loads(shown)
    for layer in doc["layers"]:
        if not layer["name"].startswith(("layer3", "layer4", "fc")):
            for param in layer["params"]:
                param["frozen"] = True
    with open(frozen_model, "w") as f:
        json.dump(doc, f, indent=1)
    # A model of three inputs (bert_base, 16 tokens): token types read an input of their own.
    inputs_model = seed_path("model-inputs.json")
    doc = json.loads(subprocess.run([fp, "show", "bert_base", "--seq-len", "16", "--json"], check=True,
                                    capture_output=True, text=True).stdout)
    doc["extra_inputs"] = [{"name": "attention_mask", "shape": [16]}, {"name": "token_type_ids", "shape": [16]}]
    for layer in doc["layers"]:
        if layer["name"] == "embeddings.token_type_embeddings":
            layer["inputs"] = [-3]
    with open(inputs_model, "w") as f:
        json.dump(doc, f, indent=1)
    formats = {
        # A cluster with per-class efficiencies (device.by_kind) and a transport, one staged
        # through host memory once per allreduce, and an NCCL one (its nccl section).
        "cluster": ("json", os.path.join(a.source, "configs/clusters/p100-horovod.json"),
                    lambda f, o: [fp, "predict", "--cluster", f, "--model", "alexnet_bn", "--gpus", "16", "--out", o]),
        "cluster-staged": ("json", os.path.join(a.source, "configs/clusters/p100-bigbasin.json"),
                           lambda f, o: [fp, "predict", "--cluster", f, "--model", "alexnet_bn", "--gpus", "16",
                                         "--out", o]),
        # Per-class efficiencies given per precision, compute and memory alike.
        "cluster-classes": ("json", os.path.join(a.source, "configs/clusters/dgx1-v100.json"),
                            lambda f, o: [fp, "predict", "--cluster", f, "--model", "resnet18", "--gpus", "8",
                                          "--precision", "fp16", "--out", o]),
        "cluster-nccl": ("json", os.path.join(a.source, "configs/clusters/dgx-h100.json"),
                         lambda f, o: [fp, "predict", "--cluster", f, "--model", "alexnet_bn", "--gpus", "16", "--out", o]),
        "model": ("json", os.path.join(a.source, "tests/data/golden-model.json"),
                  lambda f, o: [fp, "predict", "--model", f, "--cluster", "local-cpu", "--gpus", "2", "--out", o]),
        "model-frozen": ("json", frozen_model, lambda f, o: [fp, "tune", "--model", f, "--cluster", "local-cpu",
                                                             "--gpus", "2", "--out", o]),
        "model-inputs": ("json", inputs_model, lambda f, o: [fp, "tune", "--model", f, "--cluster", "dgx-a100",
                                                             "--gpus", "16", "--out", o]),
        "plan": ("json", plan, lambda f, o: [fp, "predict", "--plan", f, "--out", o]),
        "plan-cycle": ("json", plan_cycle, lambda f, o: [fp, "predict", "--plan", f, "--out", o]),
        "plan-accumulated": ("json", plan_acc, lambda f, o: [fp, "predict", "--plan", f, "--out", o]),
        "plan-cast": ("json", plan_cast, lambda f, o: [fp, "predict", "--plan", f, "--out", o]),
        "sweep": ("json", seed_path("sweep.json"), lambda f, o: [fp, "calibrate", "--sweep", f, "--out", o]),
        "throughput": ("json", seed_path("throughput.json"),
                       lambda f, o: [fp, "calibrate", "--cluster", "dgx-a100", "--throughput", f, "--out", o]),
        "throughput-framework": ("json", seed_path("throughput-framework.json"),
                                 lambda f, o: [fp, "calibrate", "--cluster", "dgx-a100", "--throughput", f, "--out",
                                               o]),
        "nccl-tests": ("lines", os.path.join(a.source, "tests/data/nccl-tests/h100-ndr-2x8.txt"),
                       lambda f, o: [fp, "calibrate", "--nccl-tests", f, "--cluster", "dgx-h100", "--accept-degenerate",
                                     "--out", o]),
        "nccl-tests-json": ("json", os.path.join(a.source, "tests/data/nccl-tests-allreduce.json"),
                            lambda f, o: [fp, "calibrate", "--nccl-tests", f, "--cluster", "dgx-h100", "--out", o]),
    }
    if have_exec:
        prof, ckpt = seed_path("profile.json"), seed_path("ck.bin")
        subprocess.run([fx, "train"] + small + ["--dataset", "synthetic", "--synthetic-size", "64", "--batch-per-gpu",
                                                "8", "--max-steps", "2", "--no-eval", "--quiet", "--profile", prof,
                                                "--checkpoint", ckpt, "--checkpoint-every", "2"],
                       check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        formats["profile"] = ("json", prof, lambda f, o: [fp, "predict", "--plan", plan1, "--profile", f, "--out", o])
        # The same profile fitted per layer class into a cluster (calibrate --profile --model).
        small_model = seed_path("small-model.json")
        subprocess.run([fp, "show", small[1]] + small[2:] + ["--export", small_model], check=True,
                       capture_output=True)
        formats["profile-fit"] = ("json", prof, lambda f, o: [fp, "calibrate", "--cluster", "local-cpu", "--profile", f,
                                                              "--model", small_model, "--out", o])
        mpirun = shutil.which("mpirun")
        if mpirun:  # measured reports of the 2-rank plans, for verify (the FP16 one says where it cast)
            for key, run_plan in (("measured-report", plan), ("measured-report-cast", plan_cast)):
                report = seed_path(key + ".json")
                subprocess.run([mpirun, "-np", "2", "--oversubscribe", fx, "run", "--plan", run_plan, "--dataset",
                                "synthetic", "--synthetic-size", "64", "--resolution", "16", "--iterations", "2",
                                "--warmup", "1", "--quiet", "--report", report], check=True, capture_output=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
                                        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1"))
                formats[key] = ("json", report, lambda f, o, run_plan=run_plan: [fp, "verify", "--plan", run_plan,
                                                                                 "--measured", f, "--no-sim", "--json"])
        formats["checkpoint"] = ("bytes", ckpt, lambda f, o: [fx, "train"] + small + [
            "--dataset", "synthetic", "--synthetic-size", "64", "--batch-per-gpu", "8", "--max-steps", "3", "--no-eval",
            "--quiet", "--resume", f, "--metrics", o])
    chosen = [x for x in a.formats.split(",") if x] or list(formats)
    rng = random.Random(a.seed)
    per_format = a.seconds / len(chosen)
    failures = 0
    print(f"fuzz: seed {a.seed}, {a.seconds:.0f} s over {len(chosen)} formats ({', '.join(chosen)})")
    for name in chosen:
        style, seed_file, command = formats[name]
        with open(seed_file, "rb") as f:
            seed = f.read()
        # The seed itself must pass, or the harness tests nothing.
        out = os.path.join(work, "out-" + name)
        with open(out, "w") as f:
            f.write("EXISTING\n")
        code, text = run(command(seed_file, out), 60)
        if code != 0:
            print(f"FAILED   {name}: the seed itself fails (exit {code}): {text.strip()[-300:]}")
            failures += 1
            continue
        counts, runs, start = {}, 0, time.time()
        while time.time() - start < per_format:
            if style == "json":
                data = mutate_json(seed.decode(), rng).encode()
            elif style == "lines":
                data = mutate_lines(seed.decode("latin-1"), rng).encode("latin-1")
            else:
                data = mutate_bytes(seed, rng)
            case = os.path.join(work, f"{name}-{runs}")
            with open(case, "wb") as f:
                f.write(data)
            with open(out, "w") as f:
                f.write("EXISTING\n")
            cmd = command(case, out)
            code, text = run(cmd, 30)
            runs += 1
            counts[code] = counts.get(code, 0) + 1
            bad = None
            if code == "hang":
                bad = "no answer in 30 s"
            elif code not in (0, 2):
                bad = f"exit {code}" + (" (signal)" if isinstance(code, int) and code < 0 else "")
            elif "internal error" in text:
                bad = "internal error"
            elif code != 0:
                with open(out) as f:
                    if f.read() != "EXISTING\n":
                        bad = "the failed run changed its output file"
                if any(p.startswith("out-" + name + ".tmp") for p in os.listdir(work)):
                    bad = "a temporary output file was left"
            if bad:
                failures += 1
                keep = os.path.join(work, f"failing-{name}-{runs}")
                shutil.copy(case, keep)
                print(f"FAILED   {name}: {bad}: {' '.join(command(keep, out))}\n         {text.strip()[-300:]}")
            else:
                os.remove(case)
            for p in os.listdir(work):  # outputs of successful runs
                if p.startswith("out-" + name + ".tmp"):
                    os.remove(os.path.join(work, p))
        summary = ", ".join(f"exit {k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0])))
        print(f"{name:16s} {runs:5d} runs  {summary}")
    print(f"\n{failures} failure(s)" + (f"; kept under {work}" if failures else ""))
    if not failures:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
