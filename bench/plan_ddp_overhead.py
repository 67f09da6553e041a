#!/usr/bin/python3
"""Where PlanDDP's step time goes against torch DDP's, on a gloo job of this machine:
each trainer below runs the same model (its own copy of the same weights, same data),
interleaved step by step in a rotating order (runner.measure_side_by_side). Not a test;
it prints figures.

    bench/plan_ddp_overhead.py [--model resnet50] [--batch 8] [--ranks 2] [--steps 40]

- local: the module alone, no data parallelism (no hooks, no copies, no allreduce);
- ddp no comm: torch DDP with a comm hook that returns each bucket as it is, so its
  bucketing (copies into buckets and back) runs without any allreduce;
- PlanDDP hooks, no comm: PlanDDP's Python-hook engine with DDP's buckets, whose
  buckets are never sent: its hooks and copies alone;
- ddp: torch DDP as it comes (25 MB buckets);
- PlanDDP hooks: the Python-hook engine (one hook per tensor) with the buckets DDP forms
  (1 MiB first, then 25 MiB, in backward order), on one plan stream;
- PlanDDP: the same plan on PlanDDP's default engine, torch's C++ Reducer (DDP's own
  bucketing) with the plan's buckets and a comm hook per bucket.

The last column is the median (and quartiles) of each step's time over DDP's step run next
to it. The difference of the "no comm" rows is the bucketing's cost in each; of the full
rows, the rest. Runs with Debian's /usr/bin/python3 (python3-torch).
"""
import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "python")]


def rank_main(rank, ranks, a):
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
                              input_shape="3,32,32", input_dtype="float", vocab=0, seed=1, name="")
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

    nocomm = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
    nocomm.register_comm_hook(None, as_is)
    plan_nocomm = PlanDDPNoComm(copy.deepcopy(base), plan, names, engine="hooks")
    hooks = PlanDDP(copy.deepcopy(base), plan, names, engine="hooks")
    planned = PlanDDP(copy.deepcopy(base), plan, names)
    models = [("local", copy.deepcopy(base), lambda: None), ("ddp no comm", nocomm, lambda: None),
              ("PlanDDP hooks, no comm", plan_nocomm, plan_nocomm.start_backward),
              ("ddp", nn.parallel.DistributedDataParallel(copy.deepcopy(base)), lambda: None),
              ("PlanDDP hooks", hooks, hooks.start_backward),
              ("PlanDDP (" + planned.engine + ")", planned, planned.start_backward)]
    trainers = [(name, m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), before)
                for name, m, before in models]
    times = measure_side_by_side(trainers, inputs, labels, 3, a.steps)
    for m in (planned, hooks, plan_nocomm):
        m.close()
    if rank == 0:
        print("%s, batch %d per rank, %d ranks, gloo; buckets (backward positions) %s" % (
            a.model, a.batch, ranks, [(b["begin"], b["end"]) for b in plan["buckets"]]))
        print("%-24s %10s %26s" % ("trainer", "median ms", "step / DDP's (quartiles)"))
        for name, ts in times.items():
            q1, q2, q3 = statistics.quantiles([x / y for x, y in zip(ts, times["ddp"])], n=4)
            print("%-24s %10.1f %12.3fx (%.3f-%.3f)" % (name, 1e3 * statistics.median(ts), q2, q1, q3))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet50", help="a torchvision model name (32x32 inputs, 10 classes)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    from fuseplan_torch import jobs
    jobs.spawn(a.ranks, rank_main, (a,))


if __name__ == "__main__":
    main()
