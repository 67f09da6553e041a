"""Measured per-layer forward and backward times as a fuseplan.profile/1 file.

Each layer of an export is timed on its own: the traced graph is run once on the profiling
batch to capture every layer's inputs, then each layer's operation is run again on copies
of them, forward (recording the autograd graph, as training does) and then backward (its
gradient with respect to its inputs and parameters, from every output that carries a
gradient: a tuple's too), after `warmup` runs, and the median
of `steps` runs is kept. Timing layers apart leaves out what a whole-model run shares
between them (cache reuse, fused kernels, framework overhead between layers), so whole
training steps are timed too, forward, backward and optimizer step back to back as a
data-parallel job runs them (`whole_pass`, `optimizer_us`), and, by default
(`fit_whole_pass`), every layer's forward time is scaled by the whole forward over the sum
of the layers' forward times, and its backward alike: the layers then add up to the
whole pass, and each keeps its share as timed alone. The sums as timed stay in the file.

On the CPU a timing is the host's clock around the call. On CUDA it is the device's time
between two events around the call, with the device held busy (`torch.cuda._sleep`)
until the host has issued the whole call: what a layer costs inside a whole-model run,
where the host issues ahead of the device, without the launch latency and the
synchronisation a lone call pays (on an H200 those doubled ResNet-50's layer-by-layer sum
against the whole model's step). A call that waits for the device itself (a host read)
cannot be issued ahead; it is timed with the host's wait in it.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .heap import heap_note
from .inputs import Inputs, as_args, batch_size, call
from .model_export import (ForwardCall, ModuleCall, forward_calls, graph_inputs, input_needs_grad, output_tensors,
                           untouched)
from .runner import critical_steps

PROFILE_SCHEMA = "fuseplan.profile/1"


@dataclass
class ProfileInfo:
    layers_us: float = 0.0       # sum of the per-layer forward + backward medians, as timed alone
    whole_step_us: float = 0.0   # the whole model's forward + backward (whole_pass)
    optimizer_us: float = 0.0
    steps: Optional[List[Tuple[float, float, float]]] = None  # each timed training step: forward, backward, optimizer


class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: Dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_us(fn: Callable[[], None], prepare: Callable[[], Any], warmup: int, steps: int,
               device: torch.device) -> float:
    if device.type == "cuda":
        return _median_device_us(fn, prepare, warmup, steps, device)
    times = []
    for i in range(warmup + steps):
        state = prepare()
        _sync(device)
        t0 = time.perf_counter()
        fn(state)
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e6)
    return statistics.median(times)


_SLEEP_START = 1 << 20      # device clock cycles held busy before a timed call (about 0.5 ms)
_SLEEP_LIMIT = 1 << 31      # beyond this the call is taken to wait for the device itself


def _median_device_us(fn: Callable[[], None], prepare: Callable[[], Any], warmup: int, steps: int,
                      device: torch.device) -> float:
    """The median device time of fn between two CUDA events. Before each call the device
    sleeps; if the start event has already been reached when the host has issued the whole
    call, the device may have waited for the host inside it, so the sleep is doubled and
    the call timed again."""
    with torch.cuda.device(device):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        cycles = _SLEEP_START
        times: List[float] = []
        runs = 0
        while len(times) < steps:
            state = prepare()
            _sync(device)
            torch.cuda._sleep(cycles)
            start.record()
            fn(state)
            end.record()
            ahead = not start.query()  # the device was still asleep when the host finished issuing
            _sync(device)
            if not ahead and cycles < _SLEEP_LIMIT:
                cycles *= 2
                continue
            runs += 1
            if runs > warmup:
                times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


def fresh(v: Any, grad: bool) -> Any:
    """A copy of a layer's captured input (tensors, in tuples and lists too) to run it on
    again; with `grad`, its floating-point tensors carry a gradient, as a layer's input
    does in training where a layer upstream trains."""
    if torch.is_tensor(v):
        c = v.detach().clone()
        if grad and c.is_floating_point():
            # Not a leaf, so that in-place layers (ReLU(inplace=True), +=) may write it; the
            # clone's backward passes the gradient through.
            c = c.requires_grad_(True).clone()
        return c
    if isinstance(v, (tuple, list)):
        return type(v)(fresh(x, grad) for x in v)
    return v


def _call(gm: fx.GraphModule, n: fx.Node, args: Any, kwargs: Any) -> Any:
    if n.op == "call_module":
        return gm.get_submodule(n.target)(*args, **kwargs)
    if n.op == "call_function":
        return n.target(*args, **kwargs)
    self_obj, *rest = args
    return getattr(self_obj, n.target)(*rest, **kwargs)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = ", %d threads" % torch.get_num_threads()
    return "cpu: " + (platform.processor() or platform.machine()) + threads + heap_note()


def captured_calls(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any],
                   batch_input: Inputs) -> List[Tuple[Callable, Any, Any]]:
    """Each layer's operation and the inputs a real forward of `batch_input` gave it: from
    the traced graph, or (an export by modules) from a recorded forward (forward_calls)."""
    if gm is not None:
        cap = _Capture(gm)
        cap.run(*graph_inputs(gm, as_args(batch_input)))
        values = cap.values
        out = []
        for n in layer_nodes:
            args = fx.node.map_arg(n.args, lambda a: values[a] if a in values else a)
            kwargs = fx.node.map_arg(n.kwargs, lambda a: values[a] if a in values else a)
            out.append((lambda *a, n=n, **k: _call(gm, n, a, k), args, kwargs))
        return out
    modules = dict(model.named_modules())
    seen: Dict[str, int] = {}
    inputs: Dict[Tuple[str, int], Any] = {}
    functions: List[ForwardCall] = []
    for r in forward_calls(model, batch_input):
        if r.path:
            inputs[(r.path, seen.get(r.path, 0))] = r.args
            seen[r.path] = seen.get(r.path, 0) + 1
        else:
            functions.append(r)

    def call_of(e: ModuleCall) -> Optional[Tuple[Callable, Any, Any]]:
        if e.path:
            return modules[e.path], inputs[(e.path, e.call)], {}
        if e.call >= 0:
            f = functions[e.call]
            return f.fn, f.args, f.kwargs
        return None

    calls: List[Optional[Tuple[Callable, Any, Any]]] = [call_of(e) for e in layer_nodes]
    for i, found in enumerate(calls):
        if found is None:  # a tuple's item, or where nothing was seen: timed as a view of the next call's input
            _, args, kwargs = next(c for c in calls[i + 1:] + calls[i::-1] if c is not None)
            calls[i] = (lambda t: t.view(t.shape), tuple(output_tensors((args, kwargs))[:1]), {})
    return calls


def profile_layers(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any], doc: Dict[str, Any],
                   fingerprint: str, batch_input: Inputs, warmup: int = 3, steps: int = 10,
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   sync: Callable[[], None] = lambda: None,
                   fit_whole_pass: bool = True) -> Tuple[Dict[str, Any], ProfileInfo]:
    """Times every layer of an export (model_export.export_model's graph and layer nodes) at
    the batch of `batch_input` (a tensor, or a tuple or dict of the forward's inputs): the
    fuseplan.profile/1 document, and the whole-model step beside the sum of the layers.
    With `optimizer`, its step is timed too, within whole training steps (`optimizer_us`).
    `sync` runs before each timing: ranks profiling side by side (`export --ranks`) time each
    layer at the same moment, under the same load as in a data-parallel job. With
    `fit_whole_pass` the layer times are fitted to the whole pass (fit_to_whole_pass);
    without, they are as timed and `whole_pass` holds the whole model's times alone. The
    model's parameters, buffers, gradients and train/eval modes are left as they were."""
    with untouched(model):
        return _timed_profile(model, gm, layer_nodes, doc, fingerprint, batch_input, warmup, steps, optimizer, sync,
                              fit_whole_pass)


def _timed_profile(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any], doc: Dict[str, Any],
                   fingerprint: str, batch_input: Inputs, warmup: int, steps: int,
                   optimizer: Optional[torch.optim.Optimizer], sync: Callable[[], None],
                   fit_whole_pass: bool) -> Tuple[Dict[str, Any], ProfileInfo]:
    batch_input = as_args(batch_input)
    device = batch_input[0].device
    model.train()
    calls = captured_calls(model, gm, layer_nodes, batch_input)
    batch = batch_size(batch_input)
    layers = []
    # A layer's input carries a gradient only where training computes it (a layer upstream
    # trains): the first layer's, and with frozen parameters every layer's before the
    # first trained one, do not; with nothing to differentiate, such a backward is empty.
    needs_grad = input_needs_grad(doc["layers"])
    for layer, (fn, args0, kwargs0), grad in zip(doc["layers"], calls, needs_grad):
        def prepare(args0: Any = args0, kwargs0: Any = kwargs0, grad: bool = grad) -> Any:
            return fresh(args0, grad), {k: fresh(v, grad) for k, v in kwargs0.items()}

        def forward(state: Any, fn: Callable = fn) -> None:
            fn(*state[0], **state[1])  # recording the graph for backward, as training does

        sync()
        fwd = _median_us(forward, prepare, warmup, steps, device)

        def prepare_backward(fn: Callable = fn, prepare: Callable = prepare) -> Any:
            args, kwargs = prepare()
            # Every output that carries a gradient: a module returning a tuple (nn.LSTM's
            # output and state, nn.MultiheadAttention's output and weights) is timed
            # through all of them.
            outs = [t for t in output_tensors(fn(*args, **kwargs)) if t.requires_grad]
            return outs, [torch.ones_like(t) for t in outs]

        def backward(state: Any) -> None:
            outs, seeds = state
            if outs:
                torch.autograd.backward(outs, seeds)

        sync()
        bwd = _median_us(backward, prepare_backward, warmup, steps, device)
        layers.append({"name": layer["name"], "fwd_us": fwd, "bwd_us": bwd, "batch": batch})
    model.zero_grad(set_to_none=True)

    info = ProfileInfo(layers_us=sum(l["fwd_us"] + l["bwd_us"] for l in layers))

    info.steps = training_steps(model, batch_input, optimizer, warmup, steps, device, sync)
    doc_out = {"schema": PROFILE_SCHEMA, "model": doc["name"], "fingerprint": fingerprint,
               "device": _device_name(device), "precision": "fp32", "batch": batch, "layers": layers}
    set_whole_pass(doc_out, [info.steps], optimizer is not None, fit_whole_pass)
    info.whole_step_us = doc_out["whole_pass"]["forward_us"] + doc_out["whole_pass"]["backward_us"]
    info.optimizer_us = doc_out.get("optimizer_us", 0.0)
    return doc_out, info


def training_steps(model: nn.Module, batch_input: Tuple[torch.Tensor, ...], optimizer: Optional[torch.optim.Optimizer],
                   warmup: int, steps: int, device: torch.device,
                   sync: Callable[[], None]) -> List[Tuple[float, float, float]]:
    """Whole training steps run back to back, as a data-parallel job runs them less its
    communication: each timed step's forward, backward and optimizer step (0 without one)
    in microseconds. Each phase starts from what the phase before left in caches and
    memory, which a layer or a pass timed alone on repeat does not. On CUDA, events
    between the phases time the device, the host issuing ahead as in a real step."""
    cuda = device.type == "cuda"
    timed: List[Tuple[float, float, float]] = []
    for i in range(warmup + steps):
        sync()
        model.zero_grad(set_to_none=True)
        _sync(device)
        marks: List[Any] = []

        def mark() -> None:
            if cuda:
                marks.append(torch.cuda.Event(enable_timing=True))
                marks[-1].record()
            else:
                marks.append(time.perf_counter())

        mark()
        loss = sum(o.float().sum() for o in output_tensors(call(model, batch_input)))
        mark()
        loss.backward()
        mark()
        if optimizer is not None:
            optimizer.step()
        mark()
        _sync(device)
        if i >= warmup:
            us = [marks[k].elapsed_time(marks[k + 1]) * 1e3 if cuda else (marks[k + 1] - marks[k]) * 1e6
                  for k in range(3)]
            timed.append((us[0], us[1], us[2]))
    model.zero_grad(set_to_none=True)
    return timed


def set_whole_pass(prof: Dict[str, Any], ranks: Sequence[Sequence[Tuple[float, float, float]]], optimizer: bool,
                   fit: bool) -> None:
    """Writes the whole pass of training steps timed on one rank or several side by side
    (`ranks[r][i]`: step i of rank r, as training_steps gives it), as `fuseplan verify`'s
    measured report takes a run: per step the critical rank's (the slowest in forward +
    backward), averaged over the steps; with `optimizer` its step too (`optimizer_us`).
    With `fit` the layer times are then fitted to it (fit_to_whole_pass)."""
    critical = critical_steps(ranks, lambda t: t[0] + t[1])
    prof["whole_pass"] = {"forward_us": statistics.fmean(c[0] for c in critical),
                          "backward_us": statistics.fmean(c[1] for c in critical), "fitted": False}
    if optimizer:
        prof["optimizer_us"] = statistics.fmean(c[2] for c in critical)
    if fit:
        fit_to_whole_pass(prof)


def fit_to_whole_pass(prof: Dict[str, Any]) -> None:
    """Scales a profile's layer times so that they add up to its whole pass: every forward
    time by the whole forward over the layers' sum, every backward time alike. The sums as
    timed are kept in `whole_pass` (`layers_forward_us`, `layers_backward_us`), and
    `fitted` says the layers were scaled. A pass whose layers sum to nothing is left as is."""
    whole = prof["whole_pass"]
    for key, total, timed in (("fwd_us", "forward_us", "layers_forward_us"),
                              ("bwd_us", "backward_us", "layers_backward_us")):
        layer_sum = sum(l[key] for l in prof["layers"])
        whole[timed] = layer_sum
        if layer_sum > 0:
            for layer in prof["layers"]:
                layer[key] *= whole[total] / layer_sum
    whole["fitted"] = True
