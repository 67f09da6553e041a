#!/usr/bin/python3
"""Data-parallel step time of fuseplan-exec run (a plan, MPI) against PyTorch
DistributedDataParallel (Debian's python3-torch, gloo backend, default 25 MB buckets) on
the same network, per-rank batch, rank count and threads per rank, side by side.

    bench/ddp_vs_fuseplan.py --plan tuned.json [--ranks 2] [--steps 30] [--threads 1]

The network is rebuilt in PyTorch from `fuseplan show --export` of the plan's model at
the plan's input and classes (bench/step_vs_pytorch.py's builder), fp32, SGD with
momentum, synthetic data. Prints the median step of each and their ratio; not a test.
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
sys.path[:0] = [os.path.join(ROOT, "bench"), os.path.join(ROOT, "python")]
from step_vs_pytorch import build_torch  # noqa: E402


def ddp_worker(rank, ranks, model, batch, steps, threads, out):
    """One rank of fuseplan_torch.jobs.spawn's gloo job (which joins and leaves the group)."""
    import torch
    import torch.distributed as dist
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    net = torch.nn.parallel.DistributedDataParallel(build_torch(model, torch))  # bucket_cap_mb=25
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, *model["input_shape"], generator=g)
    y = torch.randint(0, model["layers"][-1]["out_shape"][0], (batch,), generator=g)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for s in range(steps + 3):
        dist.barrier() if s == 3 else None
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()  # DDP's allreduces overlap backward
        opt.step()
        if s >= 3:
            times.append(time.perf_counter() - t0)
    t = torch.tensor([statistics.mean(times)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step_s": float(t[0]), "torch": torch.__version__}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--build", default=os.path.join(ROOT, "build", "release"))
    a = ap.parse_args()
    plan = json.load(open(a.plan))
    opts = plan["model"].get("options", {})
    flags = [f"--{k}={v}" for k, v in opts.items()]
    cli = os.path.join(a.build, "cli")
    with tempfile.TemporaryDirectory() as d:
        exported = os.path.join(d, "model.json")
        subprocess.run([os.path.join(cli, "fuseplan"), "show", plan["model"]["name"], *flags, "--export", exported],
                       check=True, stdout=subprocess.DEVNULL)
        model = json.load(open(exported))
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMP_NUM_THREADS=str(a.threads))
        report = os.path.join(d, "r.json")
        subprocess.run(["mpirun", "-np", str(a.ranks), "--oversubscribe", os.path.join(cli, "fuseplan-exec"), "run",
                        "--plan", a.plan, "--dataset", "synthetic", "--optimizer", "sgd", "--iterations", str(a.steps),
                        "--warmup", "3", "--threads", str(a.threads), "--report", report, "--quiet"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        ours = json.load(open(report))["iteration_s"]
        from fuseplan_torch import jobs
        out = os.path.join(d, "ddp.json")
        jobs.spawn(a.ranks, ddp_worker, (model, plan["batch_per_gpu"], a.steps, a.threads, out))
        ddp = json.load(open(out))
    print(f"{plan['model']['name']} {opts}, {a.ranks} ranks x {a.threads} thread(s), batch {plan['batch_per_gpu']} "
          f"per rank, fp32, SGD, synthetic data")
    print(f"  fuseplan-exec run ({len(plan['buckets'])} buckets, {plan.get('strategy', '')}): {ours * 1e3:8.2f} ms/step")
    print(f"  PyTorch {ddp['torch']} DDP (gloo, 25 MB buckets):          {ddp['step_s'] * 1e3:8.2f} ms/step")
    print(f"  ratio fuseplan / DDP: {ours / ddp['step_s']:.3f}  (target <= 1.0)")


if __name__ == "__main__":
    main()
