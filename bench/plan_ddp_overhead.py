#!/usr/bin/python3
"""Where PlanDDP's step time goes against torch DDP's, on a gloo job of this machine:
each trainer below runs the same model (its own copy of the same weights, same data),
interleaved step by step in a rotating order (runner.measure_side_by_side). Not a test;
it prints figures.

    bench/plan_ddp_overhead.py [--model resnet50] [--batch 8] [--ranks 2] [--steps 40] [--alone]
                               [--heap keep|trim]

- local: the module alone, no data parallelism (no hooks, no copies, no allreduce);
- ddp no comm: torch DDP with a comm hook that returns each bucket as it is, so its
  bucketing (copies into buckets and back) runs without any allreduce;
- PlanDDP hooks, no comm: PlanDDP's Python-hook engine with DDP's buckets, whose
  buckets are never sent: its hooks and copies alone;
- ddp: torch DDP as it comes (25 MB buckets);
- ddp, bucket views: the same with gradient_as_bucket_view=True (each .grad a view of its
  bucket: the gradients backward makes are freed as soon as they are copied in);
- PlanDDP hooks: the Python-hook engine (one hook per tensor) with the buckets DDP forms
  (1 MiB first, then 25 MiB, in backward order), on one plan stream;
- PlanDDP: the same plan on PlanDDP's default engine, torch's C++ Reducer (DDP's own
  bucketing) with the plan's buckets; its own process group hands each complete bucket
  to PlanDDP.

The ratio column is the median (and quartiles) of each step's time over DDP's step run next
to it. The difference of the "no comm" rows is the bucketing's cost in each; of the full
rows, the rest. The last column is rank 0's minor page faults per step (median; the whole
process's during that trainer's step): where glibc's malloc has handed freed memory back
to the system, taking it again costs a fault per 4 KiB page. All trainers share one
process and so one heap: a trainer's faults depend on the others' too; with --alone each
trainer runs in a job of its own, one after another, and the ratio is of the medians.
Every process keeps its freed memory (fuseplan_torch.keep_heap) unless --heap trim, which
leaves glibc's defaults: the faults above are then what a plain job pays.
Runs with Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "python")]
TRAINERS = ["local", "ddp no comm", "PlanDDP hooks, no comm", "ddp", "ddp, bucket views", "PlanDDP hooks", "PlanDDP"]


def rank_main(rank, ranks, a, only, out):
    import copy
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from fuseplan_torch import jobs
    from fuseplan_torch.model_export import fingerprint
    from fuseplan_torch.plan_ddp import PlanDDP
    from fuseplan_torch.runner import measure_side_by_side

    class PlanDDPNoComm(PlanDDP):
        """Hooks and copies as PlanDDP's; a ready bucket counts as sent and is not."""

        def _launch_ready(self, stream):
            order = self.by_stream[stream]
            while self.next_launch[stream] < len(order) and order[self.next_launch[stream]].pending == 0:
                self.next_launch[stream] += 1

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    spec = argparse.Namespace(factory="torchvision.models:" + a.model, kwargs='{"num_classes": 10}',
                              input_shape="3,32,32", inputs=None, input_dtype="float", vocab=0, seed=1, name="")
    base = jobs.build_module(spec)[0]
    names = [n for n, _ in base.named_parameters()]
    params = dict(base.named_parameters())
    # The buckets DDP forms, by torch's own rule (1 MiB first, then 25 MiB, backward order).
    backward = [params[n] for n in reversed(names)]
    assignment, _ = dist._compute_bucket_assignment_by_size(backward, [1 << 20, 25 << 20], [False] * len(backward))
    plan = {"schema": "fuseplan.plan/1", "gpus": ranks, "batch_per_gpu": a.batch, "compute": "fp32",
            "model": {"name": a.model, "tensors": len(names),
                      "fingerprint": fingerprint([(n, list(params[n].shape)) for n in names])},
            "buckets": [{"begin": b, "end": e, "algorithm": "ring", "transfer": "fp32", "stream": 0}
                        for b, e in ((ix[0], ix[-1] + 1) for ix in assignment)]}
    inputs = jobs.make_batch(spec, a.batch, 100 + rank)
    labels = jobs.make_labels(base, inputs, rank)

    def as_is(state, bucket):
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    def ddp(**kw):
        return nn.parallel.DistributedDataParallel(copy.deepcopy(base), **kw)

    def nocomm():
        m = ddp()
        m.register_comm_hook(None, as_is)
        return m

    makers = {"local": lambda: copy.deepcopy(base), "ddp no comm": nocomm,
              "PlanDDP hooks, no comm": lambda: PlanDDPNoComm(copy.deepcopy(base), plan, names, engine="hooks"),
              "ddp": ddp, "ddp, bucket views": lambda: ddp(gradient_as_bucket_view=True),
              "PlanDDP hooks": lambda: PlanDDP(copy.deepcopy(base), plan, names, engine="hooks"),
              "PlanDDP": lambda: PlanDDP(copy.deepcopy(base), plan, names)}
    models = [(name, makers[name]()) for name in only]
    trainers = [(name, m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9),
                 m.start_backward if isinstance(m, PlanDDP) else lambda: None) for name, m in models]
    faults = {}
    times = measure_side_by_side(trainers, inputs, labels, 3, a.steps, faults)
    for _, m in models:
        if isinstance(m, PlanDDP):
            m.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"times": times, "faults": faults, "buckets": [(b["begin"], b["end"]) for b in plan["buckets"]],
                       "engine": next((m.engine for name, m in models if name == "PlanDDP"), "")}, f)


def main():
    from fuseplan_torch.heap import add_heap_flag, heap_setting
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="a torchvision model name (32x32 inputs, 10 classes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--alone", action="store_true",
                    help="each trainer in a job (processes, heap) of its own, one job after another; the ratio column "
                         "is then of medians, and the machine's drift between the jobs is in it")
    add_heap_flag(ap)
    a = ap.parse_args()
    from fuseplan_torch import jobs
    with tempfile.TemporaryDirectory() as work:
        out = os.path.join(work, "out.json")
        res = {"times": {}, "faults": {}}
        for only in ([[name] for name in TRAINERS] if a.alone else [TRAINERS]):
            jobs.spawn(a.ranks, rank_main, (a, only, out), heap=a.heap)
            with open(out) as f:
                r = json.load(f)
            for k in ("times", "faults"):
                res[k].update(r[k])
            res["buckets"], res["engine"] = r["buckets"], r["engine"] or res.get("engine", "")
    times, faults = res["times"], res["faults"]
    print("%s, batch %d per rank, %d ranks, gloo, %s, heap %s; buckets (backward positions) %s; PlanDDP's engine %s"
          % (a.model, a.batch, a.ranks, "each trainer alone" if a.alone else "side by side",
             heap_setting(a.heap), res["buckets"], res["engine"]))
    print("%-24s %10s %26s %14s" % ("trainer", "median ms", "step / DDP's (quartiles)", "page faults"))
    for name in TRAINERS:
        ts = times[name]
        if a.alone:
            q1 = q3 = None
            q2 = statistics.median(ts) / statistics.median(times["ddp"])
        else:
            q1, q2, q3 = statistics.quantiles([x / y for x, y in zip(ts, times["ddp"])], n=4)
        spread = "(%.3f-%.3f)" % (q1, q3) if q1 is not None else "(medians)"
        print("%-24s %10.1f %12.3fx %-13s %14.0f" % (name, 1e3 * statistics.median(ts), q2, spread,
                                                    statistics.median(faults[name])))


if __name__ == "__main__":
    main()
