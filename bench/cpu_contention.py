#!/usr/bin/python3
"""How a gloo allreduce and a backward pass slow each other on this machine's cores,
measured directly: on N ranks side by side, a model's backward alone, an allreduce of S MB
alone, and the two started together (the allreduce asynchronously, its completion taken
from its future's callback). Not a test; it prints figures.

    bench/cpu_contention.py [--ranks 2] [--sizes 4,16,44] [--steps 10] [--factory ...]

For each size: the backward and the allreduce alone, then together, with each one's
stretch over its time alone (the slowest rank's medians). fuseplan's predictor models the
two as sharing the processor symmetrically (`comm_compute_sharing` sigma: while both run,
each proceeds at 1 / (1 + sigma)); these figures say how far each really slows, so the two
directions can be read apart. Runs with Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "python")]


def rank_main(rank, ranks, a, mb, steps):
    import torch
    import torch.distributed as dist
    from fuseplan_torch import jobs
    from fuseplan_torch.model_export import output_tensors

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    module, _ = jobs.build_module(a)
    x = jobs.make_batch(a, a.batch, 7 + rank)
    buf = torch.randn(int(mb * 2 ** 20 / 4))

    def forward():
        module.zero_grad(set_to_none=True)
        return sum(o.float().sum() for o in output_tensors(module(*x)))

    times = {"backward": [], "allreduce": [], "backward_with": [], "allreduce_with": []}
    for i in range(steps + 3):
        dist.barrier()
        loss = forward()
        t0 = time.perf_counter()
        loss.backward()
        t1 = time.perf_counter()
        dist.barrier()
        t2 = time.perf_counter()
        dist.all_reduce(buf)
        t3 = time.perf_counter()
        dist.barrier()
        loss = forward()
        done = []
        t4 = time.perf_counter()
        work = dist.all_reduce(buf, async_op=True)
        work.get_future().then(lambda f: done.append(time.perf_counter()))
        loss.backward()
        t5 = time.perf_counter()
        work.wait()
        while not done:
            time.sleep(1e-4)
        if i >= 3:  # warm-up
            for key, value in (("backward", t1 - t0), ("allreduce", t3 - t2), ("backward_with", t5 - t4),
                               ("allreduce_with", done[0] - t4)):
                times[key].append(value)
    gathered = [None] * ranks
    dist.all_gather_object(gathered, times)
    if rank == 0:
        med = {k: max(statistics.median(r[k]) for r in gathered) * 1e3 for k in times}
        with open(a.out, "a") as f:
            f.write(json.dumps({"mb": mb, **med}) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--sizes", default="4,16,44", help="allreduce sizes in MB")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--factory", default="torchvision.models:resnet18")
    ap.add_argument("--kwargs", default='{"num_classes": 10}')
    ap.add_argument("--input-shape", default="3,32,32")
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    from fuseplan_torch import jobs
    import tempfile
    spec = argparse.Namespace(factory=a.factory, kwargs=a.kwargs, input_shape=a.input_shape, inputs=None,
                              input_dtype="float", vocab=0, seed=1, name="", threads=0, batch=a.batch)
    fd, spec.out = tempfile.mkstemp(prefix="fuseplan-contention-", suffix=".jsonl")
    os.close(fd)
    try:
        for mb in (float(s) for s in a.sizes.split(",")):
            jobs.spawn(a.ranks, rank_main, (spec, mb, a.steps))
        rows = [json.loads(line) for line in open(spec.out)]
    finally:
        os.unlink(spec.out)
    print("%s, batch %d per rank, %d gloo ranks on this machine (the slowest rank's medians of %d steps, ms)"
          % (a.factory, a.batch, a.ranks, a.steps))
    print("%8s %10s %10s %16s %16s" % ("MB", "backward", "allreduce", "backward with", "allreduce with"))
    for r in rows:
        print("%8g %10.1f %10.1f %9.1f (x%.2f) %9.1f (x%.2f)" % (
            r["mb"], r["backward"], r["allreduce"], r["backward_with"], r["backward_with"] / r["backward"],
            r["allreduce_with"], r["allreduce_with"] / r["allreduce"]))
    print("(with: both started together; the allreduce's time is to its completion; x: over its time alone)")


if __name__ == "__main__":
    main()
