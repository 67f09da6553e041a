"""Measured training steps of a torch.distributed job, and the Report `fuseplan verify` reads.

`measure_plan` runs warm-up and measured steps through a PlanDDP and returns, on rank 0,
the fuseplan.report/1 document (`source: measured`): per step the critical rank (the
slowest in forward + backward, the rank every allreduce waits for) is taken, as
fuseplan-exec does, and its phases and bucket times are averaged over the steps; the
iteration is the slowest rank's mean step (slowest_mean). The exposed communication is
the time from the end of autograd's backward until `loss.backward()` returns (the waits
for the allreduces and the copies back into .grad), `copy_back_s` the part of it after
the last allreduce's end.
`measure_ddp` times torch's DistributedDataParallel the same way (iteration only: DDP's
overlap cannot be taken apart from outside).
"""
from __future__ import annotations

import contextlib
import resource
import statistics
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .heap import heap_note
from .inputs import Inputs, as_args, batch_size, call
from .model_export import output_tensors
from .plan_ddp import PlanDDP

REPORT_SCHEMA = "fuseplan.report/1"
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def _loss(out: Any, labels: torch.Tensor) -> torch.Tensor:
    logits = output_tensors(out)[0]
    return nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _timed_steps(model: nn.Module, inputs: Inputs, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 warmup: int, iterations: int, before_backward: Callable[[], None], steps: int = 1,
                 no_sync: bool = False) -> Iterator[Tuple[float, ...]]:
    """Runs warm-up and measured optimizer steps (a barrier between them), each of `steps`
    micro-batches (the gradients accumulate; with `no_sync` all but the last run inside
    the model's no_sync()), and yields each measured micro-batch's times: forward start,
    forward end, backward end, optimizer end (= backward end where it does not step), and
    whether it allreduced."""
    args = as_args(inputs)  # once: a dict of inputs is checked and named here, not per step
    for i in range((warmup + iterations) * steps):
        if i == warmup * steps:
            dist.barrier()
        last = i % steps == steps - 1
        if i % steps == 0:
            optimizer.zero_grad(set_to_none=True)
        local = no_sync and not last
        with model.no_sync() if local else contextlib.nullcontext():
            t0 = _clock(model)
            loss = _loss(call(model, args), labels)
            t1 = _clock(model)
            before_backward()
            loss.backward()
            t2 = _clock(model)
        if last:
            optimizer.step()
        t3 = _clock(model) if last else t2
        if i >= warmup * steps:
            yield t0, t1, t2, t3, not local


def measure_plan(ddp: PlanDDP, inputs: Inputs, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                 warmup: int, iterations: int,
                 between: Optional[Callable[[], None]] = None) -> Optional[Dict[str, Any]]:
    """`warmup` and `iterations` count optimizer steps, each of the plan's accumulation of
    micro-batches; the report's figures are per micro-batch, as fuseplan predicts them.
    `between` runs after each measured optimizer step, outside its times (a profile's whole
    pass timed at the run's own moments: jobs.InterleavedPass), followed by a barrier."""
    acc = ddp.accumulate
    steps: List[Dict[str, Any]] = []
    for t0, t1, t2, t3, synced in _timed_steps(ddp, inputs, labels, optimizer, warmup, iterations,
                                               ddp.start_backward, acc["steps"], acc["no_sync"]):
        row = {"forward_s": t1 - t0, "optimizer_s": t3 - t2, "iteration_s": t3 - t0, "buckets": None}
        if synced:
            st = ddp.steps[-1].resolve()
            # After backward and the last allreduce: the copies back into .grad (those of the
            # buckets that end last), and the cast of a 16-bit sum back into its bucket.
            last = max(st.backward_end, st.backward_start + max((b.end_s for b in st.buckets), default=0.0))
            row.update(backward_s=st.backward_end - st.backward_start, exposed_comm_s=t2 - st.backward_end,
                       copy_back_s=max(0.0, t2 - last), buckets=[(b.ready_s, b.start_s, b.end_s) for b in st.buckets])
        else:  # inside no_sync(): backward alone
            row.update(backward_s=t2 - t1, exposed_comm_s=0.0, copy_back_s=0.0)
        steps.append(row)
        if synced and between is not None:
            between()
            # The ranks leave `between` apart by however much its times differ: the rank
            # that left first would wait for the other inside the next measured step (in its
            # first allreduce), a wait a run without `between` does not have.
            dist.barrier()
    gathered: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, steps)
    if dist.get_rank() != 0:
        return None
    return _report(ddp, gathered, batch_size(inputs))


def critical_steps(ranks: Sequence[Sequence[Any]], compute: Callable[[Any], float]) -> List[Any]:
    """Per step, the critical rank's record: the rank with the most compute (forward +
    backward), which every allreduce of the step waits for. `ranks[r][i]` is rank r's
    record of step i. The measured report and the profile's whole pass both take a run so."""
    return [max((r[i] for r in ranks), key=compute) for i in range(len(ranks[0]))]


def slowest_mean(ranks: Sequence[Sequence[float]]) -> float:
    """The slowest rank's mean step (`ranks[r][i]`: rank r's step i), the measured iteration,
    as fuseplan-exec takes it. Every rank steps at the same rate, each waiting for the
    others' allreduces; the mean over the steps of each step's slowest rank would add the
    ranks' step-to-step noise to that rate."""
    return max(statistics.fmean(r) for r in ranks)


def _report(ddp: PlanDDP, ranks: Sequence[List[Dict[str, Any]]], batch: int) -> Dict[str, Any]:
    plan = ddp.plan
    n = len(ranks[0])
    critical = critical_steps(ranks, lambda s: s["forward_s"] + s["backward_s"])
    mean = lambda key: statistics.fmean(c[key] for c in critical)
    iteration = slowest_mean([[s["iteration_s"] for s in r] for r in ranks])
    buckets = []
    names = ddp.tensor_names
    synced = [c for c in critical if c["buckets"] is not None]  # the micro-batches that allreduced
    for i, b in enumerate(plan["buckets"]):
        ready, start, end = (statistics.fmean(c["buckets"][i][k] for c in synced) for k in range(3))
        tb = ddp.buckets[i]
        first, last = names[len(names) - 1 - b["begin"]], names[len(names) - b["end"]]
        buckets.append({"index": i, "begin": b["begin"], "end": b["end"], "first_tensor": first, "last_tensor": last,
                        "bytes": tb.numel * _BYTES[b["transfer"]], "algorithm": b["algorithm"], "variant": "gloo",
                        "auto": False, "stream": int(b.get("stream", 0)), "transfer": b["transfer"],
                        "ready_s": ready, "start_s": start, "end_s": end, "latency_s": 0.0, "bandwidth_s": 0.0,
                        "reduce_s": 0.0, "launch_s": 0.0})
    comm_busy = sum(b["end_s"] - b["start_s"] for b in buckets) * len(synced) / n  # per micro-batch
    comm_end = max((b["end_s"] for b in buckets), default=0.0)
    world = dist.get_world_size()
    report = {"schema": REPORT_SCHEMA, "source": "measured", "model": plan["model"]["name"],
              "cluster": "this machine (torch.distributed %s, %d ranks%s)" % (dist.get_backend(), world, heap_note()),
              "gpus": world, "batch_per_gpu": batch, "compute": plan["compute"],
              "iteration_s": iteration, "forward_s": mean("forward_s"), "backward_s": mean("backward_s"),
              "optimizer_s": mean("optimizer_s"), "data_wait_s": 0.0, "comm_busy_s": comm_busy,
              "comm_end_s": comm_end, "exposed_comm_s": mean("exposed_comm_s"), "copy_back_s": mean("copy_back_s"),
              "throughput_samples_s": world * batch / iteration, "single_gpu_iteration_s": 0.0,
              "scaling_efficiency": 0.0, "epochs": 0.0, "dataset_size": 0, "tokens": 0.0,
              "goal": "none (measured steps only)", "iterations_to_train": 0, "time_to_train_s": 0.0,
              "buckets": buckets}
    # PlanDDP casts a 16-bit bucket from its FP32 gradients and back on the bucket's plan
    # stream, whatever the plan's `cast` says: a cast on comm (verify predicts it so).
    if any(b["transfer"] != "fp32" for b in plan["buckets"]):
        report["cast"] = "comm"
    return report


def measure_side_by_side(trainers: Sequence[Tuple[str, nn.Module, torch.optim.Optimizer, Callable[[], None]]],
                         inputs: Inputs, labels: torch.Tensor, warmup: int, iterations: int,
                         faults: Optional[Dict[str, List[int]]] = None) -> Dict[str, List[float]]:
    """Per-step iteration times (the slowest rank's, on every rank) of several data-parallel
    trainers (name, module, optimizer, what to call right before backward), interleaved step
    by step in a rotating order after a barrier each, so that the machine's drift and the
    position in the order hit every trainer alike. `faults`, when given, gets each trainer's
    minor page faults per measured step on this rank (the whole process's, its
    communication threads included)."""
    times: Dict[str, List[float]] = {name: [] for name, _, _, _ in trainers}
    for i in range(warmup + iterations):
        shift = i % len(trainers)
        for name, model, optimizer, before_backward in list(trainers[shift:]) + list(trainers[:shift]):
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if faults is not None else 0
            # no warm-up of its own: one step, after the barrier _timed_steps puts before it
            (t0, _, _, t3, _), = _timed_steps(model, inputs, labels, optimizer, 0, 1, before_backward)
            if i >= warmup:
                times[name].append(t3 - t0)
                if faults is not None:
                    faults.setdefault(name, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {name: _slowest(ts) for name, ts in times.items()}


def _collective_device() -> torch.device:
    """Where the default process group's collectives take their tensors: NCCL's on this
    rank's current GPU, the others' in host memory."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _clock(model: nn.Module) -> float:
    """The host clock once the model's device has finished what was queued (a GPU runs
    asynchronously: without the wait a step would be timed at its launch)."""
    p = next(model.parameters(), None)
    if p is not None and p.device.type == "cuda":
        torch.cuda.synchronize(p.device)
    return time.perf_counter()


def _slowest(times: List[float]) -> List[float]:
    """Each step's time as the slowest rank measured it, on every rank."""
    t = torch.tensor(times, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def measure_step_time(model: nn.Module, inputs: Inputs, labels: torch.Tensor,
                      optimizer: torch.optim.Optimizer, warmup: int, iterations: int,
                      before_backward: Callable[[], None] = lambda: None) -> List[float]:
    """Per-step iteration times (the slowest rank's, on every rank) of any data-parallel module."""
    return _slowest([t3 - t0 for t0, _, _, t3, _ in _timed_steps(model, inputs, labels, optimizer, warmup,
                                                                 iterations, before_backward)])
