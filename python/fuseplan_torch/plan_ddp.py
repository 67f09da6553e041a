"""Data-parallel training that follows a fuseplan plan exactly.

`PlanDDP` wraps a module. Its plan's buckets are formed by one of two engines:
- "reducer" (the default where torch has it): torch's own C++ bucketing, DDP's Reducer,
  given the plan's buckets in plan order (never rebuilt) and, in place of a process
  group, PlanDDP's own (`_ReducerGroup`). The Reducer copies each gradient into its
  bucket as it is ready, divided by the number of ranks in the same pass (C++, no Python
  per tensor), exactly as DDP does without a comm hook, and asks the group to allreduce
  the bucket when it is complete; it does so in plan order, one bucket after another, as
  DDP does. The group hands the bucket to PlanDDP. (A comm hook would get the bucket
  undivided: the Reducer divides while copying in only when it has none, and the
  division would cost a pass of its own over every gradient.)
- "hooks": a Python hook on every parameter's gradient accumulator copies its gradient,
  divided by the number of ranks, into its bucket's flat buffer (one pass), and the moment
  a bucket's last gradient is in, it is launched; each stream's buckets in plan order.
Either way a complete bucket holds the gradients divided by the number of ranks, and is
summed in its transfer precision (cast to fp16/bf16 where the plan says so, before the
sum, and back after it) by its plan stream. A plan stream is a
thread with its own process group that runs its buckets' allreduces one after another in
plan order, as a CUDA stream runs NCCL's (gloo would otherwise run two collectives of one
group at once on its worker threads); it records when each started and ended. When
backward ends, the wrapper takes the buckets in plan order: it waits for each one's
allreduce and copies its average back into its parameters' `.grad` (the exposed
communication, as torch's Reducer finalizes DDP's buckets). Every
`.grad` stays a tensor of its own, as in DDP's default (gradient_as_bucket_view off): a
gradient freed as soon as it is in its bucket would leave the heap in backward, and
glibc gives such memory back to the system and takes it again in page faults, which
made PlanDDP's steps 1.4-2.1x DDP's on a CPU (docs/pytorch.md).
`gradient_as_bucket_view=True` asks for views all the same, as DDP's option of that name
does (GPU jobs, whose caching allocator keeps freed memory, save the copy back and the
memory). Ready (the last gradient in), start and end are each bucket's measured
timeline, in seconds from the start of backward. The copies into the buckets, in
backward, and back, after the allreduces, are what `fuseplan tune --pack inline` prices
(a plan's `pack_on` compute; docs/costmodel.md), for DDP's buckets as for PlanDDP's.
`no_sync()` is DDP's (gradient accumulation without allreduce); a plan's `accumulate`
says how the runner uses it.
"""
from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .model_export import fingerprint

PLAN_SCHEMA = "fuseplan.plan/1"
# How PlanDDP buckets gradients: torch's C++ Reducer (DDP's) with the plan's buckets, or a
# Python hook per tensor; "auto" takes the Reducer where this torch has it.
ENGINES = ("auto", "reducer", "hooks")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PlanError(ValueError):
    """A plan that does not fit the module (one line naming the plan file and JSON path)."""


@dataclass
class BucketTimes:
    ready_s: float = 0.0
    start_s: float = 0.0
    end_s: float = 0.0
    # CUDA: the events marking ready, start and end on the streams that do the work, until
    # StepTimes.resolve() turns them into the seconds above.
    ready_event: Any = None
    start_event: Any = None
    end_event: Any = None


@dataclass
class _Bucket:
    index: int
    begin: int
    end: int
    stream: int
    transfer: str
    params: List[nn.Parameter]
    numel: int
    buffer: Optional[torch.Tensor] = None  # the hooks engine's flat bucket (the Reducer keeps its own)
    views: List[torch.Tensor] = field(default_factory=list)  # each parameter's slot, shaped as the parameter
    pending: int = 0


@dataclass
class StepTimes:
    """One step of one rank: what PlanDDP measured during its backward.

    On CUDA the autograd hooks and the collectives' calls return before the device has
    run the work, so host clocks would tell when work was queued, not done. There every
    time is a CUDA event recorded on the stream that does the work: backward's start
    (`origin_event`, when start_backward is called) and end (`end_event`) on the compute
    stream, a bucket's ready there too, its start and end on its plan stream's CUDA stream.
    `resolve()` waits for them and turns them into seconds from the start of backward;
    `backward_end` is then backward_start plus the device's backward time."""
    backward_start: float = 0.0
    backward_end: float = 0.0       # autograd done (the end-of-backward callback)
    buckets: List[BucketTimes] = field(default_factory=list)
    origin_event: Any = None
    end_event: Any = None

    def resolve(self) -> "StepTimes":
        if self.origin_event is None:
            return self
        o = self.origin_event
        seconds = lambda e: o.elapsed_time(e) / 1e3 if e is not None else 0.0
        if self.end_event is not None:
            self.end_event.synchronize()
            self.backward_end = self.backward_start + seconds(self.end_event)
        for b in self.buckets:
            for e in (b.ready_event, b.start_event, b.end_event):
                if e is not None:
                    e.synchronize()
            b.ready_s, b.start_s, b.end_s = seconds(b.ready_event), seconds(b.start_event), seconds(b.end_event)
            b.ready_event = b.start_event = b.end_event = None
        self.origin_event = self.end_event = None
        return self


def _device_mark() -> Any:
    """A timing event recorded now on the current CUDA stream."""
    e = torch.cuda.Event(enable_timing=True)
    e.record()
    return e


# What PlanDDP reads of a plan: key, type, and for numbers the least value
# (docs/schemas/fuseplan.plan-1.schema.json has the whole format).
_PLAN_KEYS = {"model": dict, "gpus": (int, 1), "batch_per_gpu": (int, 1), "compute": str, "buckets": list}
_MODEL_KEYS = {"name": str, "tensors": (int, 1), "fingerprint": str}
_BUCKET_KEYS = {"begin": (int, 0), "end": (int, 1), "algorithm": str, "transfer": str}


def _check_keys(obj: Any, keys: Dict[str, Any], where: str) -> None:
    if not isinstance(obj, dict):
        raise PlanError("%s: expected an object" % where)
    for key, spec in keys.items():
        kind, least = spec if isinstance(spec, tuple) else (spec, None)
        if key not in obj:
            raise PlanError("%s.%s: missing" % (where, key))
        v = obj[key]
        if not isinstance(v, kind) or isinstance(v, bool) or (least is not None and v < least):
            raise PlanError("%s.%s: expected %s%s (got %r)" % (where, key, kind.__name__,
                                                              "" if least is None else " >= %d" % least, v))


MAX_INPUT_BYTES = 1 << 28  # as fuseplan's readers: /dev/zero or an endless pipe cannot hold a command


def read_json_file(path: str) -> Any:
    """A JSON file's document (OSError or ValueError where it cannot be read, is not JSON,
    or is over MAX_INPUT_BYTES)."""
    with open(path, "rb") as f:
        data = f.read(MAX_INPUT_BYTES + 1)
    if len(data) > MAX_INPUT_BYTES:
        raise ValueError("more than %d bytes (not a file this reads; a device or an endless pipe?)" % MAX_INPUT_BYTES)
    return json.loads(data)


def load_plan(path: str) -> Dict[str, Any]:
    """A fuseplan.plan/1 file, its keys that PlanDDP reads checked (PlanError naming the file
    and JSON path; OSError and ValueError for a file that cannot be read or is not JSON)."""
    plan = read_json_file(path)
    if not isinstance(plan, dict) or plan.get("schema") != PLAN_SCHEMA:
        raise PlanError("%s: $.schema: not a %s file" % (path, PLAN_SCHEMA))
    _check_keys(plan, _PLAN_KEYS, path + ": $")
    _check_keys(plan["model"], _MODEL_KEYS, path + ": $.model")
    if not plan["buckets"]:
        raise PlanError("%s: $.buckets: empty" % path)
    for i, b in enumerate(plan["buckets"]):
        _check_keys(b, _BUCKET_KEYS, "%s: $.buckets[%d]" % (path, i))
    plan["accumulate"] = accumulation(plan, path)
    plan["_path"] = path
    return plan


MAX_ACCUMULATION_STEPS = 4096  # as fuseplan's plan reader


def accumulation(plan: Dict[str, Any], origin: str) -> Dict[str, Any]:
    """The plan's gradient accumulation as {"steps": K, "no_sync": bool} ({"steps": 1,
    "no_sync": False} when absent), checked as fuseplan checks it (PlanError naming
    $.accumulate)."""
    acc = plan.get("accumulate", {"steps": 1})
    where = "%s: $.accumulate" % origin
    _check_keys(acc, {"steps": (int, 1)}, where)
    steps, no_sync = acc["steps"], acc.get("no_sync", False)
    if steps > MAX_ACCUMULATION_STEPS:
        raise PlanError("%s.steps: must be in [1, %d] (got %d)" % (where, MAX_ACCUMULATION_STEPS, steps))
    if not isinstance(no_sync, bool):
        raise PlanError("%s.no_sync: expected bool (got %r)" % (where, no_sync))
    if no_sync and steps < 2:
        raise PlanError("%s.no_sync: needs steps 2 or more" % where)
    unknown = set(acc) - {"steps", "no_sync"}
    if unknown:
        raise PlanError("%s.%s: unknown key" % (where, sorted(unknown)[0]))
    return {"steps": steps, "no_sync": no_sync}


def check_plan(plan: Dict[str, Any], module: nn.Module, tensor_names: Sequence[str]) -> None:
    """PlanError unless `plan` is for this module (its parameters, in the model file's order
    `tensor_names`, give the plan's fingerprint) and its buckets cover the tensors once, in
    order."""
    origin = plan.get("_path", "plan")
    params = dict(module.named_parameters())
    missing = [n for n in tensor_names if n not in params]
    if missing:
        raise PlanError("%s: $.model: the module has no parameter %s" % (origin, missing[0]))
    # The plan buckets the parameters that train; the module must train those and no others.
    listed = set(tensor_names)
    frozen = [n for n in tensor_names if not params[n].requires_grad]
    if frozen:
        raise PlanError("%s: $.model: parameter %s is frozen in the module (requires_grad off) but trains in the "
                        "plan's model (export the module as it is trained)" % (origin, frozen[0]))
    extra = [n for n, p in params.items() if p.requires_grad and n not in listed]
    if extra:
        raise PlanError("%s: $.model: parameter %s trains in the module but is in no bucket of the plan (frozen in "
                        "its model file?); export the module as it is trained" % (origin, extra[0]))
    fp = fingerprint([(n, list(params[n].shape)) for n in tensor_names])
    if fp != plan["model"]["fingerprint"] or len(tensor_names) != plan["model"]["tensors"]:
        raise PlanError("%s: $.model.fingerprint: the plan is for %s (%s), the module's parameters give %s" %
                        (origin, plan["model"]["name"], plan["model"]["fingerprint"], fp))
    count, expect = len(tensor_names), 0
    for i, b in enumerate(plan["buckets"]):
        if b["begin"] != expect or not expect < b["end"] <= count:
            raise PlanError("%s: $.buckets[%d]: [%s, %s) does not continue the buckets before it at %d within "
                            "the %d tensors" % (origin, i, b["begin"], b["end"], expect, count))
        expect = b["end"]
    if expect != count:
        raise PlanError("%s: $.buckets: cover tensors [0, %d) of %d" % (origin, expect, count))


class PlanDDP(nn.Module):
    """`module` trained data-parallel with `plan`'s buckets, streams and transfer precision.

    `tensor_names` lists the module's parameters in the model file's (forward) order, as
    `export_model` wrote them; the plan's backward positions refer to its reverse. The
    module's parameter names and shapes must give the plan's fingerprint.
    `gradient_as_bucket_view` is DDP's option: each .grad becomes a view of its bucket after
    the first backward, which saves the copy back and a gradient's worth of memory, and on
    a CPU costs page faults (module docstring).
    """

    def __init__(self, module: nn.Module, plan: Dict[str, Any], tensor_names: Sequence[str],
                 process_group: Optional[Any] = None, engine: str = "auto",
                 gradient_as_bucket_view: bool = False) -> None:
        super().__init__()
        if engine not in ENGINES:
            raise ValueError("engine: unknown '%s' (valid: %s)" % (engine, ", ".join(ENGINES)))
        self.module = module
        self.plan = plan
        self.tensor_names = list(tensor_names)
        origin = plan.get("_path", "plan")
        check_plan(plan, module, tensor_names)
        params = dict(module.named_parameters())
        count = len(tensor_names)
        self.world = dist.get_world_size(process_group)
        if self.world != plan["gpus"]:
            raise PlanError("%s: $.gpus: the plan is for %d ranks, the process group has %d" %
                            (origin, plan["gpus"], self.world))
        if process_group is not None and process_group != dist.group.WORLD:
            raise PlanError("%s: PlanDDP runs on the default (world) process group; its streams are groups of all "
                            "ranks" % origin)
        # One process group per plan stream, none shared with the caller's collectives:
        # allreduces on different streams run concurrently.
        streams = sorted({int(b.get("stream", 0)) for b in plan["buckets"]})
        self.groups = {s: dist.new_group(list(range(self.world))) for s in streams}
        device = next(iter(params.values())).device
        self._check_transfers(origin, self.groups[streams[0]], device)
        self.on_cuda = device.type == "cuda"  # times as CUDA events (StepTimes)
        self.buckets: List[_Bucket] = []
        self.bucket_of: Dict[int, int] = {}
        self.slot_of: Dict[int, int] = {}
        for i, b in enumerate(plan["buckets"]):
            ps = [params[tensor_names[count - 1 - pos]] for pos in range(b["begin"], b["end"])]
            bucket = _Bucket(i, b["begin"], b["end"], int(b.get("stream", 0)), b["transfer"], ps,
                             sum(p.numel() for p in ps))
            for slot, p in enumerate(ps):
                self.bucket_of[id(p)] = i
                self.slot_of[id(p)] = slot
            self.buckets.append(bucket)
        self.by_stream = {s: [b for b in self.buckets if b.stream == s] for s in streams}
        self.views = gradient_as_bucket_view
        self.next_launch = {s: 0 for s in streams}
        self.accumulators = []
        self.handles = []
        self.reduced = 0  # the reducer engine: how many of this step's buckets the Reducer has handed over
        self.reducer = self._make_reducer([params[n] for n in tensor_names]) if engine != "hooks" else None
        if self.reducer is None and engine == "reducer":
            raise PlanError("%s: engine 'reducer': torch %s has no torch.distributed.Reducer of the form PlanDDP "
                            "uses (use engine 'hooks')" % (origin, torch.__version__.split("+")[0]))
        self.engine = "reducer" if self.reducer is not None else "hooks"
        if self.reducer is None:
            for b in self.buckets:  # the Reducer keeps its own buckets
                b.buffer = torch.zeros(b.numel, dtype=torch.float32, device=b.params[0].device)
                b.views = [flat.view_as(p) for p, flat in zip(b.params, b.buffer.split([p.numel() for p in b.params]))]
            # A hook on each parameter's gradient accumulator runs once its .grad holds this
            # backward's gradient (summed with what was there, as DDP sees it).
            for p in module.parameters():
                if p.requires_grad:
                    acc = p.view_as(p).grad_fn.next_functions[0][0]
                    self.accumulators.append(acc)  # kept alive: autograd holds it only during backward
                    self.handles.append(acc.register_hook(self._hook(p)))
        self.step = self._fresh_step(0.0)
        self.steps: List[StepTimes] = []
        self.in_backward = False
        # The plan's gradient accumulation (the runner follows it); inside no_sync() a
        # backward only accumulates .grad locally, as in DDP's.
        self.accumulate = accumulation(plan, origin)
        self.require_sync = True
        self.sent: Dict[int, Any] = {}  # the hooks engine's futures of this step's buckets, by bucket index
        self.streams = {s: _Stream(self.groups[s]) for s in streams}

    def _make_reducer(self, params: List[nn.Parameter]) -> Optional[Any]:
        """torch's own C++ bucketing (DDP's Reducer) with the plan's buckets, in plan order
        (never rebuilt), each handed to `_bucket_ready` by the Reducer's process group, and
        the averaged bucket copied back into each .grad (gradient_as_bucket_view off, DDP's
        default); None where this torch has no Reducer, or no process group written in
        Python, of that form."""
        index = {id(p): i for i, p in enumerate(params)}
        buckets = [[index[id(p)] for p in b.params] for b in self.buckets]
        try:
            # A weak proxy: the Reducer (C++) holds its group and would otherwise keep PlanDDP alive.
            self.reducer_group = _ReducerGroup(weakref.proxy(self), dist.get_rank(), self.world)
            return dist.Reducer(params, buckets, [b.numel * 4 for b in self.buckets], self.reducer_group,
                                [False] * len(params), 25 << 20, False, self.views, {}, 1 << 20)
        except (AttributeError, TypeError, RuntimeError):
            return None

    def _check_transfers(self, origin: str, group: Any, device: torch.device) -> None:
        """A transfer precision the backend cannot sum is refused here, not mid-backward
        (gloo in torch 1.13 sums fp16 but not bf16). Every rank probes alike, on the
        module's device (NCCL sums CUDA tensors only)."""
        for i, b in enumerate(self.plan["buckets"]):
            t = b["transfer"]
            if t not in _DTYPES:
                raise PlanError("%s: $.buckets[%d].transfer: unknown '%s' (valid: fp32, fp16, bf16)" % (origin, i, t))
        for t in sorted({b["transfer"] for b in self.plan["buckets"]} - {"fp32"}):
            try:
                dist.all_reduce(torch.zeros(1, dtype=_DTYPES[t], device=device), group=group)
            except RuntimeError:
                first = next(i for i, b in enumerate(self.plan["buckets"]) if b["transfer"] == t)
                raise PlanError("%s: $.buckets[%d].transfer: the %s backend of torch %s cannot sum %s" %
                                (origin, first, dist.get_backend(group), torch.__version__.split("+")[0], t))

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """As DDP's: forward and backward inside it allreduce nothing; the gradients
        accumulate in .grad and the first backward outside it averages what they sum to."""
        before = self.require_sync
        self.require_sync = False
        try:
            yield
        finally:
            self.require_sync = before

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.reducer is None or not torch.is_grad_enabled() or not self.require_sync:
            return self.module(*args, **kwargs)
        self.reducer.prepare_for_forward()
        out = self.module(*args, **kwargs)
        self.reducer.prepare_for_backward([])  # every parameter gets a gradient, as DDP's default
        self.reduced = 0
        self.step = self._fresh_step(time.perf_counter())  # until start_backward gives the origin
        return out

    def _fresh_step(self, origin: float) -> StepTimes:
        return StepTimes(backward_start=origin, buckets=[BucketTimes() for _ in self.buckets])

    def start_backward(self) -> None:
        """Marks the start of backward (the origin of the bucket times); call right before
        `loss.backward()`. On CUDA the origin is also an event on the current stream: times
        on the host and on the device line up when the device is idle here (the runner
        waits for it after the forward pass). Inside no_sync() it does nothing: that backward
        has no buckets."""
        if not self.require_sync:
            return
        self.step = self._fresh_step(time.perf_counter())
        if self.on_cuda:
            self.step.origin_event = _device_mark()
        for b in self.buckets:
            b.pending = len(b.params)
        for s in self.next_launch:
            self.next_launch[s] = 0
        self.sent = {}
        self.in_backward = True

    def _hook(self, p: nn.Parameter):
        def hook(*unused: Any) -> None:
            if not self.in_backward:
                return
            b = self.buckets[self.bucket_of[id(p)]]
            view = b.views[self.slot_of[id(p)]]
            # Averaged here, overlapped with the rest of backward, as DDP divides while it
            # copies into its buckets: in the same pass as the copy, or in place where .grad
            # is the slot already (gradient_as_bucket_view).
            if p.grad.data_ptr() != view.data_ptr():
                torch.div(p.grad, self.world, out=view)
            else:
                view.div_(self.world)
            now = time.perf_counter()
            b.pending -= 1
            if b.pending == 0:
                self._mark_ready(b, now)
                self._launch_ready(b.stream)
                if all(x.pending == 0 for x in self.buckets):
                    torch.autograd.Variable._execution_engine.queue_callback(self._finish)
        return hook

    def _bucket_ready(self, buffer: torch.Tensor) -> Any:
        """The reducer engine: the Reducer's next bucket, in plan order, is complete and
        `buffer` holds its gradients divided by the number of ranks. Handed to its stream;
        the future returned holds the averaged bucket once the stream has summed it."""
        if self.reduced >= len(self.buckets) or buffer.numel() != self.buckets[self.reduced].numel:
            raise RuntimeError("PlanDDP: the Reducer handed over a bucket of %d elements as bucket %d of %d; "
                               "its buckets are not the plan's" % (buffer.numel(), self.reduced, len(self.buckets)))
        b = self.buckets[self.reduced]
        self.reduced += 1
        self._mark_ready(b, time.perf_counter())
        fut = self._send(b, buffer)
        if b.index == len(self.buckets) - 1:  # autograd is done: the Reducer's wait comes next
            torch.autograd.Variable._execution_engine.queue_callback(self._backward_done)
        return fut

    def _send(self, b: _Bucket, buffer: torch.Tensor) -> Any:
        """Bucket `b`'s `buffer`, its gradients divided by the number of ranks, to its
        stream in its transfer precision (a 16-bit copy where the plan says so); the future
        holds `buffer` once it holds the average."""
        wire = buffer if b.transfer == "fp32" else buffer.to(_DTYPES[b.transfer])
        return self.streams[b.stream].submit(wire, buffer, self.step.buckets[b.index], self.step.backward_start)

    def _mark_ready(self, b: _Bucket, now: float) -> None:
        times = self.step.buckets[b.index]
        times.ready_s = now - self.step.backward_start
        if self.step.origin_event is not None:
            times.ready_event = _device_mark()  # after the bucket's copies on the compute stream

    def _mark_backward_end(self) -> None:
        self.step.backward_end = time.perf_counter()
        if self.step.origin_event is not None:
            self.step.end_event = _device_mark()

    def _backward_done(self) -> None:
        self._mark_backward_end()
        self.steps.append(self.step)

    def _launch_ready(self, stream: int) -> None:
        order = self.by_stream[stream]
        while self.next_launch[stream] < len(order) and order[self.next_launch[stream]].pending == 0:
            b = order[self.next_launch[stream]]
            self.next_launch[stream] += 1
            self.sent[b.index] = self._send(b, b.buffer)

    def _finish(self) -> None:
        self._mark_backward_end()  # autograd has run every node
        for b in self.buckets:  # in plan order, as the Reducer finalizes DDP's buckets
            self.sent[b.index].wait()  # the exposed communication (raises a failed allreduce's error)
            for p, view in zip(b.params, b.views):  # the sums are the average already
                if not self.views:
                    p.grad.copy_(view)  # .grad stays a tensor of its own, as in DDP's default
                elif p.grad.data_ptr() != view.data_ptr():
                    p.grad = view  # from now on, as DDP's gradient_as_bucket_view
        self.in_backward = False
        self.steps.append(self.step)

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        for st in self.streams.values():
            st.stop()


class _Failed:
    """An allreduce that could not start: waiting for it raises why."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def wait(self) -> None:
        raise self.error


def _back_into(buffer: torch.Tensor, wire: torch.Tensor) -> None:
    """A 16-bit `wire`'s sum, cast back into its FP32 bucket `buffer`; nothing for an FP32
    wire, which is the bucket."""
    if wire is not buffer:
        buffer.copy_(wire)


class _ReducerGroup(dist.ProcessGroup):
    """The process group PlanDDP gives torch's Reducer (the reducer engine). Without a comm
    hook, the Reducer divides each gradient by the group's size as it copies it into its
    bucket and calls `allreduce` once per complete bucket, in bucket order: the bucket goes
    to PlanDDP (`_bucket_ready`), whose plan stream does the allreduce on a real group. The
    Reducer asks for no other collective (its buckets are never rebuilt and every parameter
    gets a gradient)."""

    def __init__(self, owner: Any, rank: int, size: int) -> None:
        super().__init__(rank, size)
        self.owner = owner
        self.work_from_future = torch._C._distributed_c10d._create_work_from_future  # AttributeError: no such torch

    def getBackendName(self) -> str:
        return "fuseplan"

    def allreduce(self, tensors: List[torch.Tensor], opts: Any = None) -> Any:
        return self.work_from_future(self.owner._bucket_ready(tensors[0]))


class _Item(NamedTuple):
    """A bucket queued on a plan stream (_Stream.submit)."""
    wire: torch.Tensor
    buffer: torch.Tensor
    times: BucketTimes
    origin: float
    fut: Any
    filled: Any  # the CUDA event after the bucket's copies; None on the host


class _Stream:
    """One plan stream: a thread that allreduces its buckets one at a time, in the order
    they were submitted, on its own process group, recording each one's start and end.

    CUDA tensors (NCCL): the submitter records an event on its current stream, where the
    bucket was filled; the thread runs the allreduce on a CUDA stream of its own that waits
    for that event, marks its start and end there with timing events (StepTimes), and waits
    for the device after it (NCCL's wait() does not block the host), so the future's buffer
    is complete when it is set. Not yet run on a GPU (docs/pytorch.md)."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.q: "queue.Queue[Optional[_Item]]" = queue.Queue()
        self.cuda_streams: Dict[Any, Any] = {}  # per device, made by the thread
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def submit(self, wire: torch.Tensor, buffer: torch.Tensor, times: BucketTimes, origin: float) -> Any:
        """Queues the allreduce of `wire` (`buffer` itself, or its 16-bit copy, whose sum is
        cast back into `buffer`); the future returned holds `buffer` when it is done, or the
        error."""
        fut: Any = torch.futures.Future()
        filled = None
        if wire.is_cuda:
            filled = torch.cuda.Event()
            filled.record()  # on the submitter's current stream, after the bucket's copies and cast
        self.q.put(_Item(wire, buffer, times, origin, fut, filled))
        return fut

    def _run(self) -> None:
        item, work = self.q.get(), None  # work: the item's allreduce, where already started
        while item is not None:
            wire, buffer, times, origin, fut, filled = item
            following = None  # the next item, its allreduce started where it runs on the host
            try:
                if filled is not None:
                    self._run_cuda(wire, buffer, times, origin, filled)
                else:
                    if work is None:
                        work = self._start(item)
                    work.wait()
                    times.end_s = time.perf_counter() - origin
                    # A queued bucket's allreduce starts before a 16-bit sum is cast back
                    # into its bucket: that pass overlaps it instead of delaying it.
                    following = self._start_queued()
                    _back_into(buffer, wire)
            except BaseException as e:  # handed to the training thread by the future
                times.end_s = time.perf_counter() - origin
                fut.set_exception(e)
            else:
                fut.set_result(buffer)
            item, work = following if following is not None else (self.q.get(), None)

    def _start(self, item: _Item) -> Any:
        """Starts the allreduce of a host (gloo) item and records its start."""
        item.times.start_s = time.perf_counter() - item.origin
        return dist.all_reduce(item.wire, group=self.group, async_op=True)

    def _start_queued(self) -> Optional[Tuple[Optional[_Item], Any]]:
        """The next queued item and its allreduce, started where it runs on the host; None
        where the queue is empty. The stop sentinel and a CUDA item come unstarted."""
        try:
            item = self.q.get_nowait()
        except queue.Empty:
            return None
        if item is None or item.filled is not None:
            return item, None
        try:
            return item, self._start(item)
        except BaseException as e:  # raised when the item's turn comes, to its own future
            return item, _Failed(e)

    def _run_cuda(self, wire: torch.Tensor, buffer: torch.Tensor, times: BucketTimes, origin: float,
                  filled: Any) -> None:
        stream = self.cuda_streams.get(wire.device)
        if stream is None:
            stream = self.cuda_streams[wire.device] = torch.cuda.Stream(device=wire.device)
        with torch.cuda.stream(stream):
            stream.wait_event(filled)
            times.start_event = _device_mark()  # the stream reaches the bucket: filled, and the one before done
            times.start_s = time.perf_counter() - origin  # the host's, when queued, until StepTimes.resolve()
            dist.all_reduce(wire, group=self.group, async_op=True).wait()  # the stream waits for NCCL's
            times.end_event = _device_mark()
            _back_into(buffer, wire)
            stream.synchronize()  # the future's buffer is complete when it is set
            times.end_s = time.perf_counter() - origin

    def stop(self) -> None:
        self.q.put(None)
        self.thread.join()


def grad_storages(module: nn.Module) -> List[int]:
    """The address of each `.grad`'s storage, in parameter order: all different where every
    `.grad` is a tensor of its own; under gradient_as_bucket_view one per bucket."""
    return [getattr(p.grad, "untyped_storage", p.grad.storage)().data_ptr()
            for p in module.parameters() if p.grad is not None]


def grads_sharing_storage(module: nn.Module) -> int:
    """How many of `module`'s `.grad` share their storage with an earlier one (0 where every
    `.grad` is a tensor of its own)."""
    storages = grad_storages(module)
    return len(storages) - len(set(storages))


def exported_ddp(module: nn.Module, settings: Dict[str, Any], **ddp_kwargs: Any) -> nn.Module:
    """torch DDP built with what `fuseplan export --to ddp --json` printed: bucket_cap_mb
    given, or left unset where it says null (torch 2.6 caps the first bucket at a given
    bucket_cap_mb), and the first bucket's cap set for this construction only."""
    kwargs = dict(ddp_kwargs)
    if settings.get("bucket_cap_mb") is not None:
        kwargs["bucket_cap_mb"] = settings["bucket_cap_mb"]
    before = dist._DEFAULT_FIRST_BUCKET_BYTES
    dist._DEFAULT_FIRST_BUCKET_BYTES = int(settings["first_bucket_bytes"])
    try:
        return nn.parallel.DistributedDataParallel(module, **kwargs)
    finally:
        dist._DEFAULT_FIRST_BUCKET_BYTES = before
