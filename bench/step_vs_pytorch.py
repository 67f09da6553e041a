#!/usr/bin/python3
"""Training step time of fuseplan-exec against PyTorch (Debian's python3-torch, CPU) on the
same network, batch and thread count, in one run, side by side: the median step, and
forward + backward time per layer type, with the kernels each side ran (oneDNN's ISA,
OpenBLAS's core).

    bench/step_vs_pytorch.py [--model resnet18] [--resolution 28] [--batch 64]
                             [--precision fp32|fp16] [--steps 20] [--threads 2] [--conv auto]
    bench/step_vs_pytorch.py --suite [--steps 10]

--suite runs the four cases the executor is held to (ResNet-18 at 28x28x1, batch 64, and
ResNet-50 at 224x224x3, batch 16, each in fp32 and emulated fp16), each twice: with the
environment as it is, and with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset for that case
alone (both sides run in a child process with that environment). fp16 is emulated by
fuseplan-exec (values rounded to FP16 after every layer, FP32 arithmetic); PyTorch 1.13
has no FP16 training on CPU, so its side runs FP32 there and the ratio shows what the
emulation costs.

The network is a zoo model (torchvision's ResNet-18 / ResNet-50, or AlexNet-BN / VGG-16),
rebuilt here in PyTorch from the model JSON that `fuseplan show --export` writes, so both
run exactly the same layers. Prints figures; not a test.
"""
import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kind_of_op(name):
    """PyTorch profiler op -> fuseplan layer kind."""
    n = name.lower()
    for key, kind in (("conv", "conv2d"), ("batch_norm", "batchnorm"), ("max_pool", "maxpool"),
                      ("avg_pool", "avgpool"), ("mean", "avgpool"),  # adaptive pooling to 1x1 runs as a mean
                      ("relu", "relu"), ("threshold", "relu"), ("addmm", "linear"),
                      ("linear", "linear"), ("::mm", "linear"), ("::t", "linear"), ("dropout", "dropout"),
                      ("log_softmax", "loss"), ("nll_loss", "loss"), ("cross_entropy", "loss"),
                      ("add", "add"), ("view", "flatten"), ("flatten", "flatten"), ("reshape", "flatten")):
        if key in n:
            return kind
    return "other"


def build_torch(model, torch):
    nn = torch.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = model["layers"]
            self.mods = nn.ModuleList()
            for l in self.layers:
                k, a = l["kind"], l.get("attrs", {})
                if k == "conv2d":
                    w = next(p for p in l["params"] if p["role"] == "weight")["shape"]
                    m = nn.Conv2d(w[1], w[0], a.get("kernel", 1), a.get("stride", 1), a.get("padding", 0),
                                  bias=any(p["role"] == "bias" for p in l["params"]))
                elif k == "batchnorm":
                    c = l["in_shape"][0]
                    m = nn.BatchNorm2d(c) if len(l["in_shape"]) == 3 else nn.BatchNorm1d(c)
                elif k == "linear":
                    w = next(p for p in l["params"] if p["role"] == "weight")["shape"]
                    m = nn.Linear(w[1], w[0], bias=any(p["role"] == "bias" for p in l["params"]))
                elif k == "relu":
                    m = nn.ReLU()
                elif k == "maxpool":
                    m = nn.MaxPool2d(a.get("kernel"), a.get("stride", 1), a.get("padding", 0))
                elif k == "avgpool":
                    m = nn.AvgPool2d(a.get("kernel"), a.get("stride", 1), a.get("padding", 0))
                elif k == "adaptive_avgpool":
                    m = nn.AdaptiveAvgPool2d(tuple(l["out_shape"][1:]))
                elif k == "dropout":
                    m = nn.Dropout(a.get("dropout", 0.5))
                elif k == "flatten":
                    m = nn.Flatten()
                elif k == "add":
                    m = nn.Identity()
                else:
                    raise SystemExit(f"step_vs_pytorch: layer kind {k} not supported")
                self.mods.append(m)

        def forward(self, x):
            outs = []
            for l, m in zip(self.layers, self.mods):
                ins = [x if i < 0 else outs[i] for i in l.get("inputs", [len(outs) - 1])]
                if l["kind"] == "add":
                    y = ins[0] + ins[1]
                elif l["kind"] == "linear" and ins[0].dim() > 2:
                    y = m(ins[0].flatten(1))
                else:
                    y = m(ins[0])
                outs.append(y)
            return outs[-1]

    return Net()


def blas_core():
    """OpenBLAS's core name in this process (after torch loaded it), or '?'."""
    for lib in ("libopenblas.so.0", "libopenblasp-r0.so"):
        try:
            f = ctypes.CDLL(lib).openblas_get_corename
        except OSError:
            continue
        f.restype = ctypes.c_char_p
        return f().decode()
    return "?"


def run_pytorch(model, batch, steps, threads, classes):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = build_torch(model, torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *model["input_shape"])
    y = torch.randint(0, classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for s in range(steps + 3):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if s >= 3:
            times.append(time.perf_counter() - t0)
    per_kind = {}
    with torch.autograd.profiler.profile() as prof:
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
    for e in prof.key_averages():
        k = kind_of_op(e.key)
        per_kind[k] = per_kind.get(k, 0.0) + e.self_cpu_time_total / 3 / 1e6
    kernels = f"mkldnn {'on' if torch.backends.mkldnn.is_available() else 'off'}; GEMM: OpenBLAS {blas_core()}"
    return statistics.median(times), per_kind, torch.__version__, kernels


def measure(a):
    """One case in this process: both sides, as a dict."""
    fuseplan = os.path.join(a.build, "cli", "fuseplan")
    exe = os.path.join(a.build, "cli", "fuseplan-exec")
    channels = 1 if a.resolution <= 32 else 3
    classes = a.classes or (10 if a.resolution <= 32 else 1000)
    shape = ["--resolution", str(a.resolution), "--channels", str(channels), "--classes", str(classes)]
    with tempfile.TemporaryDirectory() as d:
        mpath, ppath, metrics = (os.path.join(d, n) for n in ("model.json", "profile.json", "metrics.json"))
        subprocess.run([fuseplan, "show", a.model, *shape, "--export", mpath], check=True, stdout=subprocess.DEVNULL)
        model = json.load(open(mpath))
        out = subprocess.run([exe, "train", "--model", a.model, *shape, "--dataset", "synthetic", "--synthetic-size",
                              str(a.batch * (a.steps + 3)), "--batch-per-gpu", str(a.batch), "--max-steps",
                              str(a.steps + 3), "--precision", a.precision, "--optimizer", "sgd", "--threads",
                              str(a.threads), "--conv", a.conv, "--no-eval", "--profile", ppath, "--metrics", metrics]
                             + (["--no-fuse"] if a.no_fuse else []),
                             check=True, capture_output=True, text=True).stdout
        # "fuseplan-exec train: ..., 2 threads, cpu (convolutions: oneDNN 2.6.3 avx512_core; GEMM: OpenBLAS X)"
        line = next(l for l in out.splitlines() if l.startswith("fuseplan-exec train:"))
        backend = line[line.find("cpu ("):].strip()
        steps = json.load(open(metrics))["steps"][3:]
        ours = statistics.median(s["seconds"] for s in steps)
        ours_kind = {}
        prof = json.load(open(ppath))
        for layer, t in zip(model["layers"], prof["layers"]):
            k = "avgpool" if layer["kind"] == "adaptive_avgpool" else layer["kind"]
            ours_kind[k] = ours_kind.get(k, 0.0) + (t["fwd_us"] + t["bwd_us"]) / 1e6
    theirs, theirs_kind, version, kernels = run_pytorch(model, a.batch, a.steps, a.threads, classes)
    return {"model": a.model, "resolution": a.resolution, "channels": channels, "batch": a.batch,
            "precision": a.precision, "threads": a.threads, "conv": a.conv, "steps": a.steps, "fused": not a.no_fuse,
            "ours_s": ours, "theirs_s": theirs, "ours_kind": ours_kind, "theirs_kind": theirs_kind,
            "torch": version, "ours_kernels": backend, "theirs_kernels": "PyTorch " + version + " (" + kernels + ")",
            "blas_env": {k: os.environ[k] for k in BLAS_VARS if k in os.environ}}


BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def report(r, label=""):
    env = ", ".join(f"{k}={v}" for k, v in r["blas_env"].items()) or "none set"
    theirs_prec = "fp32" if r["precision"] != "fp32" else r["precision"]
    print(f"step time, {r['model']} {r['resolution']}x{r['resolution']}x{r['channels']}, batch {r['batch']}, "
          f"fuseplan {r['precision']}{' (emulated)' if r['precision'] != 'fp32' else ''} vs PyTorch {theirs_prec}, "
          f"SGD, {r['threads']} threads, --conv {r['conv']}{'' if r.get('fused', True) else ' --no-fuse'} "
          f"(median of {r['steps']} steps after 3 warm-up){label}")
    print(f"  OpenBLAS variables: {env}")
    print(f"  kernels: fuseplan-exec {r['ours_kernels']}; {r['theirs_kernels']}")
    ours, theirs = r["ours_s"], r["theirs_s"]
    print(f"  fuseplan-exec {ours * 1e3:9.1f} ms   PyTorch {theirs * 1e3:9.1f} ms   ratio {ours / theirs:5.2f}x")
    print("  forward + backward per layer type (ms per step; PyTorch: profiler self time, 3 steps):")
    print(f"  {'type':<12} {'fuseplan':>10} {'PyTorch':>10} {'ratio':>7}")
    ok, tk = r["ours_kind"], r["theirs_kind"]
    for k in sorted(set(ok) | set(tk), key=lambda k: -ok.get(k, 0)):
        o, t = ok.get(k, 0.0), tk.get(k, 0.0)
        ratio = f"{o / t:6.2f}x" if t > 0 and o > 0 else "     -"
        print(f"  {k:<12} {o * 1e3:10.2f} {t * 1e3:10.2f} {ratio:>7}")
    # A BatchNorm or add fused with its ReLU books the pair's time to the first layer:
    # the three together compare alike either way.
    o, t = (sum(d.get(k, 0.0) for k in ("batchnorm", "add", "relu")) for d in (ok, tk))
    if o > 0 and t > 0:
        print(f"  {'bn+add+relu':<12} {o * 1e3:10.2f} {t * 1e3:10.2f} {o / t:6.2f}x")
    print()


def child(argv, unset_blas):
    """This script with --json in a child process, with the OpenBLAS variables unset if asked."""
    env = dict(os.environ)
    if unset_blas:
        for k in BLAS_VARS:
            env.pop(k, None)
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--resolution", type=int, default=28)
    ap.add_argument("--classes", type=int, default=0, help="default: 10 at <= 32 pixels, else 1000")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--conv", default="auto", help="fuseplan-exec --conv: auto | im2col | onednn")
    ap.add_argument("--no-fuse", action="store_true",
                    help="fuseplan-exec --no-fuse: each BatchNorm or add and its ReLU as two ops (default: fused)")
    ap.add_argument("--suite", action="store_true", help="the four cases, as set and with the OpenBLAS variables unset")
    ap.add_argument("--json", action="store_true", help="one case as JSON (what --suite runs in its children)")
    a = ap.parse_args()
    if a.json:
        print(json.dumps(measure(a)))
        return 0
    if not a.suite:
        report(measure(a))
        return 0
    common = ["--steps", str(a.steps), "--threads", str(a.threads), "--build", a.build, "--conv", a.conv] + (
        ["--no-fuse"] if a.no_fuse else [])
    cases = [["--model", "resnet18", "--resolution", "28", "--batch", "64"],
             ["--model", "resnet50", "--resolution", "224", "--batch", "16"]]
    any_set = any(k in os.environ for k in BLAS_VARS)
    summary = []
    for case in cases:
        for prec in ("fp32", "fp16"):
            argv = case + ["--precision", prec] + common
            for unset in ((False, True) if any_set else (False,)):
                r = child(argv, unset)
                report(r, " - OpenBLAS variables unset" if unset else "")
                summary.append((r, unset))
    print("summary (fuseplan-exec / PyTorch step time):")
    for r, unset in summary:
        print(f"  {r['model']:<9} {r['resolution']:>3}px batch {r['batch']:<3} {r['precision']:<5} "
              f"{'OpenBLAS variables unset' if unset else 'environment as set':<25} {r['ours_s'] / r['theirs_s']:5.2f}x")
    if not any_set:
        print("  (OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are not set in this environment: one run per case)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
