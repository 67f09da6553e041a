#!/usr/bin/python3
"""Training step time of fuseplan-exec against PyTorch (Debian's python3-torch, CPU) on the
same network, batch, precision (fp32) and thread count, in one run, side by side: the
median step, and forward + backward time per layer type.

    bench/step_vs_pytorch.py [--model resnet18] [--batch 64] [--steps 20] [--threads 2]

The network is torchvision's ResNet-18 (or AlexNet-BN / VGG-16 / ResNet-50 layouts from
fuseplan's zoo) at 28x28x1 with 10 classes, rebuilt here in PyTorch from the model JSON
that `fuseplan show --export` writes, so both run exactly the same layers. Prints
figures; not a test.
"""
import argparse
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
                      ("avg_pool", "avgpool"), ("relu", "relu"), ("threshold", "relu"), ("addmm", "linear"),
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


def run_pytorch(model, batch, steps, threads):
    import torch
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = build_torch(model, torch)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *model["input_shape"])
    y = torch.randint(0, 10, (batch,))
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
    return statistics.median(times), per_kind, torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    ap.add_argument("--conv", default="auto", help="fuseplan-exec --conv: auto | im2col | onednn")
    a = ap.parse_args()
    fuseplan = os.path.join(a.build, "cli", "fuseplan")
    exe = os.path.join(a.build, "cli", "fuseplan-exec")
    shape = ["--resolution", "28", "--channels", "1", "--classes", "10"]
    with tempfile.TemporaryDirectory() as d:
        mpath, ppath, metrics = (os.path.join(d, n) for n in ("model.json", "profile.json", "metrics.json"))
        subprocess.run([fuseplan, "show", a.model, *shape, "--export", mpath], check=True, stdout=subprocess.DEVNULL)
        model = json.load(open(mpath))
        subprocess.run([exe, "train", "--model", a.model, "--dataset", "synthetic", "--synthetic-size",
                        str(a.batch * (a.steps + 3)), "--batch-per-gpu", str(a.batch), "--max-steps", str(a.steps + 3),
                        "--optimizer", "sgd", "--threads", str(a.threads), "--conv", a.conv, "--no-eval", "--quiet", "--profile", ppath,
                        "--metrics", metrics], check=True, stdout=subprocess.DEVNULL)
        steps = json.load(open(metrics))["steps"][3:]
        ours = statistics.median(s["seconds"] for s in steps)
        ours_kind = {}
        prof = json.load(open(ppath))
        for layer, t in zip(model["layers"], prof["layers"]):
            k = "avgpool" if layer["kind"] == "adaptive_avgpool" else layer["kind"]
            ours_kind[k] = ours_kind.get(k, 0.0) + (t["fwd_us"] + t["bwd_us"]) / 1e6
    theirs, theirs_kind, version = run_pytorch(model, a.batch, a.steps, a.threads)
    print(f"step time, {a.model} 28x28x1, batch {a.batch}, fp32, SGD, {a.threads} threads, --conv {a.conv} "
          f"(median of {a.steps} steps after 3 warm-up; PyTorch {version})")
    print(f"  fuseplan-exec {ours * 1e3:9.1f} ms   PyTorch {theirs * 1e3:9.1f} ms   ratio {ours / theirs:5.2f}x")
    print("  forward + backward per layer type (ms per step; PyTorch: profiler self time, 3 steps):")
    print(f"  {'type':<12} {'fuseplan':>10} {'PyTorch':>10} {'ratio':>7}")
    for k in sorted(set(ours_kind) | set(theirs_kind), key=lambda k: -ours_kind.get(k, 0)):
        o, t = ours_kind.get(k, 0.0), theirs_kind.get(k, 0.0)
        ratio = f"{o / t:6.2f}x" if t > 0 and o > 0 else "     -"
        print(f"  {k:<12} {o * 1e3:10.2f} {t * 1e3:10.2f} {ratio:>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
