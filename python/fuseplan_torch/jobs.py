"""What `python3 -m fuseplan_torch` runs: export, a measured gloo job, an allreduce sweep."""
from __future__ import annotations

import collections
import faulthandler
import importlib
import json
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

from .heap import HEAP_CHOICES, heap_note, keep_heap
from .inputs import as_args, batch_size, call, check_keywords, first_samples, to_device
from .model_export import (export_model, gradient_order, output_tensors, same_output, trained_tensors, write_json,
                           written_through)
from .plan_ddp import PlanDDP, PlanError, check_plan, grad_storages, load_plan, read_json_file
from .profile import profile_layers, set_whole_pass, training_steps
from .runner import measure_plan, measure_step_time


class UsageError(Exception):
    """Bad input: one line naming the flag or file."""


def _at_least(value: int, least: int, flag: str) -> int:
    if value < least:
        raise UsageError("%s: must be >= %d (got %d)" % (flag, least, value))
    return value


def _positive(value: int, flag: str) -> int:
    return _at_least(value, 1, flag)


def _function(spec: str, flag: str) -> Tuple[Any, str]:
    """The function `spec` (package.module:function) names, and its name."""
    if ":" not in spec:
        raise UsageError("%s: '%s' is not package.module:function" % (flag, spec))
    mod_name, fn_name = spec.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise UsageError("%s: %s: %s" % (flag, spec, e))
    if not callable(fn):
        raise UsageError("%s: %s is a %s, not a function" % (flag, spec, type(fn).__name__))
    return fn, fn_name


def build_module(a: Any) -> Tuple[nn.Module, str]:
    fn, fn_name = _function(a.factory, "factory")
    try:
        kwargs = json.loads(a.kwargs)
    except ValueError as e:
        raise UsageError("--kwargs: not JSON: %s" % e)
    if not isinstance(kwargs, dict):
        raise UsageError("--kwargs: must be a JSON object")
    torch.manual_seed(a.seed)
    try:
        module = fn(**kwargs)
    except Exception as e:  # the user's factory: its failure is theirs to read, in one line
        raise UsageError("factory: %s(**%s) raised %s: %s" % (a.factory, a.kwargs, type(e).__name__, one_line(str(e))))
    if not isinstance(module, nn.Module):
        raise UsageError("factory: %s returned a %s, not a torch.nn.Module" % (a.factory, type(module).__name__))
    return module, a.name or fn_name


def input_shape(a: Any) -> List[int]:
    """--input-shape as a list (checked), or [] with --inputs; exactly one of them is given."""
    if a.inputs is not None and a.input_shape is not None:
        raise UsageError("--inputs: give either --inputs or --input-shape, not both")
    if a.inputs is not None:
        if a.input_dtype != "float" or a.vocab:
            raise UsageError("--input-dtype/--vocab: describe --input-shape's input; --inputs makes its own")
        return []
    if a.input_shape is None:
        raise UsageError("--input-shape: required (or --inputs, a function making a batch of several inputs)")
    try:
        shape = [int(d) for d in a.input_shape.split(",")]
    except ValueError:
        raise UsageError("--input-shape: '%s' is not comma-separated integers" % a.input_shape)
    if not shape or any(d < 1 for d in shape):
        raise UsageError("--input-shape: every dimension must be >= 1")
    if math.prod(shape) > 1 << 31:
        raise UsageError("--input-shape: %s is more than 2^31 elements per sample" % a.input_shape)
    if a.input_dtype == "long" and a.vocab < 1:
        raise UsageError("--vocab: required (>= 1) with --input-dtype long")
    return shape


def one_line(text: str) -> str:
    """`text` (an error's, which torch writes on several lines) as one line."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def check_input(module: nn.Module, a: Any, batch: Tuple[torch.Tensor, ...]) -> None:
    """`batch`, made from --input-shape (with --input-dtype and --vocab) or by --inputs,
    runs through `module`'s forward, or the flags are refused in one line with the module's
    error, before anything is traced, timed or spawned. In eval mode, so that nothing
    changes (BatchNorm's running statistics, the random stream of dropout)."""
    try:
        check_keywords(module, batch)
    except ValueError as e:
        raise UsageError("%s: %s: %s" % (_input_flags(a), a.factory, e))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            call(module, batch)
    except Exception as e:  # whatever the user's module raises on inputs it cannot take
        raise UsageError("%s: %s cannot run a batch of this input: %s: %s" %
                         (_input_flags(a), a.factory, type(e).__name__, one_line(str(e))))
    finally:
        module.train(was_training)


def _input_flags(a: Any) -> str:
    """The flags that made the forward's inputs, as the user gave them."""
    if a.inputs is not None:
        return "--inputs %s" % a.inputs
    flags = "--input-shape %s" % a.input_shape
    if a.input_dtype == "long":
        flags += " --input-dtype long --vocab %d" % a.vocab
    return flags


def check_gradients(module: nn.Module, a: Any, batch: Tuple[torch.Tensor, ...]) -> None:
    """Every parameter that trains gets a gradient from a forward and backward of `batch`,
    or the inputs are refused in one line naming those that get none: a data-parallel run
    waits for every trained parameter's gradient (torch's DDP fails, PlanDDP's buckets would
    never fill). A parameter a missing input would use (token types not given) is the usual
    cause."""
    try:
        got = set(gradient_order(module, batch))
    except Exception as e:  # an output with no gradient to take, the user's backward failing
        raise UsageError("%s: %s cannot run a backward of this input: %s: %s" %
                         (_input_flags(a), a.factory, type(e).__name__, one_line(str(e))))
    missing = [n for n, p in module.named_parameters() if p.requires_grad and n not in got]
    if missing:
        raise UsageError("%s: a forward of these inputs gives no gradient to %s%s (a data-parallel run waits for "
                         "every trained parameter's): give the inputs that use them (--inputs), or freeze them "
                         "(requires_grad off)" % (_input_flags(a), ", ".join(missing[:5]),
                                                 ", ..." if len(missing) > 5 else ""))


def make_batch(a: Any, batch: int, seed: int) -> Tuple[torch.Tensor, ...]:
    """`batch` samples of the forward's inputs, drawn from `seed`: random data of
    --input-shape, or what the --inputs function returns for (batch, generator)."""
    g = torch.Generator().manual_seed(seed)
    if a.inputs is None:
        shape = [batch] + input_shape(a)
        if a.input_dtype == "long":
            return (torch.randint(0, a.vocab, shape, generator=g),)
        return (torch.randn(shape, generator=g),)
    fn, _ = _function(a.inputs, "--inputs")
    try:
        made = fn(batch, g)
    except Exception as e:  # the user's function: its failure is theirs to read, in one line
        raise UsageError("--inputs: %s(%d, generator) raised %s: %s" % (a.inputs, batch, type(e).__name__,
                                                                      one_line(str(e))))
    try:
        args = as_args(made)
    except ValueError as e:
        raise UsageError("--inputs: %s(%d, generator): %s" % (a.inputs, batch, e))
    if batch_size(args) != batch:
        raise UsageError("--inputs: %s(%d, generator) made a batch of %d samples (the first dimension of every "
                         "input is the batch)" % (a.inputs, batch, batch_size(args)))
    return args


def _writable(path: str, flag: str) -> None:
    if not path:
        raise UsageError("%s: an empty file name" % flag)
    if os.path.isdir(path):
        raise UsageError("%s: %s is a directory (give a file name)" % (flag, path))
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise UsageError("%s: directory %s does not exist" % (flag, directory))
    if not os.access(directory, os.W_OK):
        raise UsageError("%s: directory %s is not writable" % (flag, directory))
    if not written_through(path):  # a temporary file there, as write_json makes (/proc takes none)
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fuseplan-", suffix=".tmp")
            os.close(fd)
            os.unlink(tmp)
        except OSError as e:
            raise UsageError("%s: cannot write in directory %s (%s)" % (flag, directory, e.strerror))


def profile_device(text: str, ranks: int) -> torch.device:
    """export --device: cpu, or a GPU this machine has (one rank only)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError("--device: '%s' is not a device (valid: cpu, cuda, cuda:N)" % text)
    if device.type not in ("cpu", "cuda"):
        raise UsageError("--device: '%s' is not a device (valid: cpu, cuda, cuda:N)" % text)
    if device.type == "cuda":
        gpus = _gpus()
        if (device.index or 0) >= gpus:
            raise UsageError("--device %s: this machine has %d CUDA device(s)" % (text, gpus))
        if ranks > 1:
            raise UsageError("--device %s: with --ranks 1 (ranks side by side are timed on the CPU)" % text)
    return device


def export_command(a: Any) -> None:
    _writable(a.out, "--out")
    device = torch.device("cpu")
    for v, flag in ((a.batch, "--batch"), (a.steps, "--steps"), (a.ranks, "--ranks")):
        _positive(v, flag)  # checked with or without --profile, which they serve
    _at_least(a.warmup, 0, "--warmup")
    if a.profile is not None:
        _writable(a.profile, "--profile")
        if same_output(a.profile, a.out):
            raise UsageError("--profile %s: the file --out writes (give another name)" % a.profile)
        device = profile_device(a.device, a.ranks)
    elif a.device != "cpu":
        raise UsageError("--device: only with --profile (it says where the layers are timed)")
    if a.threads:
        torch.set_num_threads(_positive(a.threads, "--threads"))
    if a.profile is not None and a.ranks == 1 and a.heap == "keep":
        keep_heap()  # this process times the layers
    input_shape(a)
    module, name = build_module(a)
    example = make_batch(a, 2, a.seed)
    check_input(module, a, example)
    try:
        doc, info, gm, nodes = export_model(module, example, name=name)
    except ValueError as e:  # untraceable, with a parameter its forward does not use
        raise UsageError("factory: %s: %s" % (a.factory, e))
    if info.method == "modules":
        print("note: torch.fx cannot trace %s (%s); exported from a record of one real forward (%d layers: its "
              "leaf-module calls and the torch operations between them), in the branches this batch takes"
              % (a.factory, info.untraced, len(doc["layers"])))
    outputs = [(a.out, doc)]
    if a.profile is not None:
        if a.ranks > 1:
            result = os.path.join(os.path.dirname(os.path.abspath(a.profile)), ".fuseplan-profile-%d.json" % os.getpid())
            try:
                spawn(a.ranks, _profile_rank, (a, result), heap=a.heap)
                with open(result) as f:
                    prof = json.load(f)
            finally:
                if os.path.exists(result):
                    os.unlink(result)
        else:
            module.to(device)  # the traced graph shares its modules and parameters
            prof, _ = profile_layers(module, gm, nodes, doc, info.fingerprint,
                                     to_device(make_batch(a, a.batch, a.seed + 1), device), a.warmup, a.steps,
                                     torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9),
                                     fit_whole_pass=a.layer_times == "whole-pass")
        outputs.append((a.profile, prof))
        side = "" if a.ranks == 1 else ", timed on %d ranks side by side (the slowest rank's times)" % a.ranks
        whole = prof["whole_pass"]
        timed_fwd = whole.get("layers_forward_us", sum(l["fwd_us"] for l in prof["layers"]))
        timed_bwd = whole.get("layers_backward_us", sum(l["bwd_us"] for l in prof["layers"]))
        print("profile: %d layers at batch %d%s: forward %.2f ms layer by layer, %.2f ms as one model; backward "
              "%.2f ms layer by layer, %.2f ms as one model; %s (optimizer %.2f ms)"
              % (len(nodes), a.batch, side, timed_fwd / 1e3, whole["forward_us"] / 1e3, timed_bwd / 1e3,
                 whole["backward_us"] / 1e3, "layer times fitted to the whole model" if whole["fitted"]
                 else "layer times as timed alone (--layer-times as-timed)", prof.get("optimizer_us", 0) / 1e3))
    for path, d in outputs:  # only once everything is measured
        write_json(d, path)
    tensors = sum(len(l["params"]) for l in doc["layers"])
    print("exported %s: %d layers, %d tensors, fingerprint %s -> %s" %
          (name, len(doc["layers"]), tensors, info.fingerprint, a.out))
    if not info.order_matches:
        print("warning: %d gradients became ready out of the file's layer order (first: %s); fuseplan assumes "
              "reverse layer order" % (len(info.out_of_order), ", ".join(info.out_of_order[:3])))
    if info.counted:
        print("note: FLOPs counted from the operations torch runs (no formula for their kind) for %d custom layers: %s"
              % (len(info.counted), ", ".join(info.counted[:5])))
    if info.estimated:
        print("warning: FLOPs estimated (one per output element) for %d custom layers: %s; a --profile measures them"
              % (len(info.estimated), ", ".join(info.estimated[:5])))


def _profile_rank(rank: int, ranks: int, a: Any, result: str) -> None:
    """One of `ranks` processes profiling the same layers at the same moments (a barrier
    before each timing), as the ranks of a data-parallel job load the machine; rank 0
    keeps the slowest rank's time per layer, as fuseplan-exec's profile does."""
    torch.set_num_threads(_threads(a, ranks))
    module, name = build_module(a)
    prof = profile_side_by_side(rank, ranks, module, make_batch(a, 2, a.seed), make_batch(a, a.batch, a.seed + 1 + rank),
                                a.warmup, a.steps, name, fit_whole_pass=a.layer_times == "whole-pass")
    if rank == 0:
        with open(result, "w") as f:
            json.dump(prof, f)


class InterleavedPass:
    """Whole training steps of a copy of the model (no communication), one each time it is
    called: between a run's measured steps (measure_plan's `between`), so that the profile's
    whole pass is timed at the moments the run ran. On a machine whose speed drifts, a whole
    pass timed before the run (as profile_side_by_side times it) moved by a third from one
    job to the next (ResNet-18's backward: 69-92 ms in one run of the PyTorch bridge's
    bench); `finish` puts this one in its place."""

    def __init__(self, module: nn.Module, batch_input: Tuple[torch.Tensor, ...]) -> None:
        self.module, self.batch_input = module, batch_input
        self.optimizer = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
        self.device = batch_input[0].device
        self.steps: List[Tuple[float, float, float]] = []
        training_steps(module, batch_input, self.optimizer, 1, 0, self.device, lambda: None)  # warm: not timed

    def __call__(self) -> None:
        self.steps += training_steps(self.module, self.batch_input, self.optimizer, 0, 1, self.device, lambda: None)

    def finish(self, rank: int, ranks: int, profile: Optional[Dict[str, Any]], fit: bool) -> None:
        """Every rank's steps to rank 0, whose `profile` (profile_side_by_side's, its layers
        as timed) takes them as its whole pass, the layers fitted to it with `fit`."""
        gathered: List[Any] = [None] * ranks
        dist.all_gather_object(gathered, self.steps)
        if rank == 0 and profile is not None and self.steps:
            set_whole_pass(profile, gathered, True, fit)
            profile["device"] += ", whole pass timed between the run's steps"


def profile_side_by_side(rank: int, ranks: int, module: nn.Module, example: Tuple[torch.Tensor, ...],
                         batch_input: Tuple[torch.Tensor, ...],
                         warmup: int, steps: int, name: str = "",
                         fit_whole_pass: bool = True) -> Optional[Dict[str, Any]]:
    """Every rank of the process group profiles `module`'s layers at the same moments (a
    barrier before each timing), as a data-parallel job loads the machine; rank 0 gets the
    slowest rank's time per layer (fuseplan.profile/1, as fuseplan-exec's profile keeps)
    and the whole pass of the training steps timed side by side (set_whole_pass), the
    layers fitted to it with `fit_whole_pass`; the other ranks None."""
    doc, info, gm, nodes = export_model(module, example, name=name or None)
    module.to(batch_input[0].device)  # exported where built (the CPU), timed where the run's batch is
    prof, pinfo = profile_layers(module, gm, nodes, doc, info.fingerprint, batch_input, warmup, steps,
                                 torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9), sync=dist.barrier,
                                 fit_whole_pass=False)
    gathered: List[Any] = [None] * ranks
    dist.all_gather_object(gathered, (prof, pinfo.steps))
    if rank != 0:
        return None
    for i, layer in enumerate(prof["layers"]):
        for key in ("fwd_us", "bwd_us"):
            layer[key] = max(p["layers"][i][key] for p, _ in gathered)
    set_whole_pass(prof, [s for _, s in gathered], True, fit_whole_pass)
    prof["device"] += ", %d ranks side by side (the slowest per layer)" % ranks
    return prof


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BACKENDS = ("gloo", "nccl")
_TEARDOWN_S = 60  # how long a failed rank's exit may take


def check_backend(backend: str, ranks: int) -> None:
    """NCCL takes one GPU per rank on this machine: refused before any process starts
    where there are fewer."""
    if backend == "nccl":
        gpus = _gpus()
        if gpus < ranks:
            raise UsageError("--backend nccl: %d ranks need %d GPUs (one per rank), this machine has %d "
                             "(--backend gloo runs on the CPU)" % (ranks, ranks, gpus))


def spawn(ranks: int, fn: Any, args: Tuple[Any, ...], backend: str = "gloo", heap: str = "keep") -> None:
    """Runs fn(rank, ranks, *args) in `ranks` processes joined by a process group of
    `backend`: gloo on the CPU, or NCCL with rank r on GPU r. With `heap` "keep" every
    process first keeps its freed memory (heap.keep_heap); "trim" leaves glibc's defaults."""
    if heap not in HEAP_CHOICES:
        raise ValueError("heap: unknown '%s' (valid: %s)" % (heap, ", ".join(HEAP_CHOICES)))
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(_free_port())
    # torch 2.6 asks for a libuv store by default, which Debian's torch 2.6 is built
    # without (its processes fail at the rendezvous); ranks on one machine need none.
    os.environ.setdefault("USE_LIBUV", "0")
    mp.spawn(_entry, args=(ranks, fn, args, backend, heap), nprocs=ranks, join=True)


def _entry(rank: int, ranks: int, fn: Any, args: Tuple[Any, ...], backend: str, heap: str) -> None:
    if heap == "keep":
        keep_heap()
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=ranks)
    try:
        fn(rank, ranks, *args)
        dist.barrier()
    except BaseException:
        # mp.spawn reports the error once this process ends; should the process group's
        # teardown at exit hang, the process ends anyway (exit code 1, stacks on stderr).
        faulthandler.dump_traceback_later(_TEARDOWN_S, exit=True)
        raise
    # Past the barrier every rank has done its part, its outputs written. The process ends
    # here, without destroy_process_group: under torch 2.6 gloo's teardown hangs now and
    # then, and always on a rank whose peer has already left (pytorch/pytorch#75097).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def rank_device(backend: str, rank: int) -> torch.device:
    return torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")


def _gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _threads(a: Any, ranks: int) -> int:
    return a.threads if a.threads > 0 else max(1, (os.cpu_count() or 1) // ranks)


def plan_tensor_names(plan: Dict[str, Any], module: nn.Module, example: Tuple[torch.Tensor, ...]) -> List[str]:
    """The plan's tensor order (the parameters that train; frozen ones are in no bucket):
    from its model file when it names one, else a fresh export."""
    model = plan["model"]
    if "file" not in model:
        doc = export_model(module, example)[0]
        return [name for name, _ in trained_tensors(doc["layers"])]
    path = os.path.join(os.path.dirname(os.path.abspath(plan["_path"])), str(model["file"]))
    where = "--plan %s: $.model.file: %s" % (plan["_path"], path)
    try:
        doc = read_json_file(path)
        return [str(name) for name, _ in trained_tensors(doc["layers"])]
    except (OSError, ValueError) as e:
        raise UsageError("%s: %s" % (where, e))
    except (KeyError, TypeError) as e:
        raise UsageError("%s: not a fuseplan.model/1 file (no layers with params: %s)" % (where, e))


def run_command(a: Any) -> None:
    _positive(a.ranks, "--ranks")
    _positive(a.iterations, "--iterations")
    _at_least(a.warmup, 0, "--warmup")
    _at_least(a.batch, 0, "--batch")  # 0: the plan's
    _at_least(a.threads, 0, "--threads")  # 0: cores / ranks
    if not 0 < a.bucket_cap_mb <= 1e6:  # NaN too; DDP takes int(MB * 2^20) bytes
        raise UsageError("--bucket-cap-mb: must be in (0, 1e6] MB (got %s)" % a.bucket_cap_mb)
    check_backend(a.backend, a.ranks)
    outputs = [(flag, path) for flag, path in (("--report", a.report), ("--profile", a.profile)) if path is not None]
    for i, (flag, path) in enumerate(outputs):
        if not a.plan:
            raise UsageError("%s: needs --plan (what verify reads is measured on PlanDDP's runs)" % flag)
        _writable(path, flag)
        for other, taken in [("--plan", a.plan)] + outputs[:i]:
            if same_output(path, taken):
                raise UsageError("%s %s: the file %s %s (give another name)" %
                                 (flag, path, other, "reads" if other == "--plan" else "writes"))
    plan = None
    if a.plan:
        try:
            plan = load_plan(a.plan)
        except PlanError as e:  # names the file and JSON path itself
            raise UsageError("--plan " + str(e))
        except (OSError, ValueError) as e:
            raise UsageError("--plan %s: %s" % (a.plan, e))
        if plan["gpus"] != a.ranks:
            raise UsageError("--ranks %d: --plan %s is for %d ranks" % (a.ranks, a.plan, plan["gpus"]))
        if a.batch and a.batch != plan["batch_per_gpu"]:
            raise UsageError("--batch %d disagrees with --plan %s (%d per rank)" % (a.batch, a.plan, plan["batch_per_gpu"]))
    batch = plan["batch_per_gpu"] if plan else (a.batch or 8)
    input_shape(a)
    module, _ = build_module(a)  # a bad factory, input or a plan for another module fails here, once
    example = make_batch(a, 2, a.seed)
    check_input(module, a, example)
    check_gradients(module, a, example)
    names: List[str] = []
    if plan is not None:
        names = plan_tensor_names(plan, module, example)
        try:
            check_plan(plan, module, names)
        except PlanError as e:
            raise UsageError("--plan " + str(e))
    spawn(a.ranks, _run_rank, (a, plan, names, batch), a.backend, a.heap)


def make_labels(module: nn.Module, inputs: Tuple[torch.Tensor, ...], seed: int) -> torch.Tensor:
    """Random class labels shaped as the module's output without its last dimension
    ([batch] for a classifier, [batch, tokens] for a language model)."""
    module.eval()  # the output's shape (batch statistics of one sample would fail)
    with torch.no_grad():
        out = call(module, first_samples(inputs, 1))
    module.train()
    out = output_tensors(out)[0]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, out.shape[-1], (batch_size(inputs),) + tuple(out.shape[1:-1]), generator=g)


def _run_rank(rank: int, ranks: int, a: Any, plan: Optional[Dict[str, Any]], names: List[str], batch: int) -> None:
    torch.set_num_threads(_threads(a, ranks))
    module, _ = build_module(a)
    inputs = make_batch(a, batch, a.seed + 100 + rank)
    labels = make_labels(module, inputs, a.seed + 200 + rank)
    device = rank_device(a.backend, rank)
    module, inputs, labels = module.to(device), to_device(inputs, device), labels.to(device)
    if plan is not None:
        ddp = PlanDDP(module, plan, names, engine=a.engine, gradient_as_bucket_view=a.gradient_as_bucket_view)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
        profile, between = None, None
        if a.profile is not None:  # a copy with the same weights, timed as export --profile --ranks times it
            profile = profile_side_by_side(rank, ranks, build_module(a)[0], make_batch(a, 2, a.seed), inputs, 3, 10,
                                           plan["model"]["name"], fit_whole_pass=False)
            between = InterleavedPass(build_module(a)[0].to(device), inputs)
        report = measure_plan(ddp, inputs, labels, opt, a.warmup, a.iterations, between)
        if between is not None:
            between.finish(rank, ranks, profile, a.layer_times == "whole-pass")
        ddp.close()
        if rank == 0:
            if a.report is not None:
                write_json(report, a.report)
            if profile is not None:
                write_json(profile, a.profile)
            acc = ddp.accumulate
            print("PlanDDP %s x %d ranks: %.2f ms per %s (forward %.2f, backward %.2f, exposed "
                  "communication %.2f, optimizer %.2f), %d buckets, %s engine%s%s" %
                  (report["model"], ranks, report["iteration_s"] * 1e3,
                   "iteration" if acc["steps"] == 1 else "micro-batch", report["forward_s"] * 1e3,
                   report["backward_s"] * 1e3, report["exposed_comm_s"] * 1e3, report["optimizer_s"] * 1e3,
                   len(report["buckets"]), ddp.engine,
                   "" if acc["steps"] == 1 else ", %d micro-batches per optimizer step (allreduce on %s)" %
                   (acc["steps"], "the last" if acc["no_sync"] else "every one"), _views(module)))
        return
    ddp = nn.parallel.DistributedDataParallel(module, bucket_cap_mb=a.bucket_cap_mb,
                                              device_ids=[rank] if device.type == "cuda" else None,
                                              gradient_as_bucket_view=a.gradient_as_bucket_view)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    times = measure_step_time(ddp, inputs, labels, opt, a.warmup, a.iterations)
    if rank == 0:
        print("DDP bucket_cap_mb=%g x %d ranks: %.2f ms per iteration (median of %d)%s" %
              (a.bucket_cap_mb, ranks, statistics.median(times) * 1e3, len(times), _views(module)))


def _views(module: nn.Module) -> str:
    """", N .grad share B buckets' storage" where .grad share storage (gradient_as_bucket_view),
    else ""."""
    counts = collections.Counter(grad_storages(module))
    shared = [n for n in counts.values() if n > 1]
    if not shared:
        return ""
    return ", %d .grad are views of %s" % (sum(shared), "1 bucket" if len(shared) == 1 else "%d buckets" % len(shared))


def parse_bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B").rstrip("I")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise UsageError("--sizes: '%s' is not a size (e.g. 4K, 64M)" % text)


def sweep_command(a: Any) -> None:
    _writable(a.out, "--out")
    _positive(a.ranks, "--ranks")
    _positive(a.iterations, "--iterations")
    _positive(a.threads, "--threads")
    if a.ranks < 2:
        raise UsageError("--ranks: a sweep needs >= 2 ranks")
    check_backend(a.backend, a.ranks)
    lo, _, hi = a.sizes.partition(":")
    first, last = parse_bytes(lo), parse_bytes(hi or lo)
    if first < 4 or last < first:
        raise UsageError("--sizes: need 4 <= from <= to (got %s)" % a.sizes)
    spawn(a.ranks, _sweep_rank, (a, first, last), a.backend, a.heap)


SWEEP_BLOCKS = 5


def _blocks(total: int, most: int) -> List[int]:
    """`total` calls split into min(total, most) blocks whose sizes differ by one at most."""
    n = min(total, most)
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


def _sweep_rank(rank: int, ranks: int, a: Any, first: int, last: int) -> None:
    torch.set_num_threads(a.threads)
    device = rank_device(a.backend, rank)
    wait = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    points = []
    size = first
    while size <= last:
        buf = torch.ones(size // 4, device=device)
        for _ in range(2):
            dist.all_reduce(buf)
        wait()
        dist.barrier()
        # The median of up to SWEEP_BLOCKS blocks' mean call: one preempted call (a shared
        # machine's) moves one block, not the size's time.
        means = []
        for calls in _blocks(a.iterations, SWEEP_BLOCKS):
            t0 = time.perf_counter()
            for _ in range(calls):
                dist.all_reduce(buf)
            wait()  # NCCL's allreduce returns once queued: the time is the device's
            means.append((time.perf_counter() - t0) / calls)
        t = torch.tensor([statistics.median(means)], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        points.append({"algorithm": "ring", "bytes": size, "seconds": float(t.item()), "iterations": a.iterations})
        size *= 2
    if rank == 0:
        write_json({"schema": "fuseplan.sweep/1", "ranks": ranks, "per_node": ranks, "precision": "fp32",
                    "host": "%s (torch.distributed) on %s%s" % (a.backend, socket.gethostname(), heap_note()),
                    "points": points},
                   a.out)
        print("sweep: %d sizes, %d to %d bytes -> %s" % (len(points), first, last, a.out))
