"""Measured per-layer forward and backward times as a fuseplan.profile/1 file.

Each layer of an export is timed on its own: the traced graph is run once on the profiling
batch to capture every layer's inputs, then each layer's operation is run again on copies
of them, forward (recording the autograd graph, as training does) and then backward (its
gradient with respect to its inputs and parameters), after `warmup` runs, and the median of `steps` runs is kept. Timing layers
apart leaves out what a whole-model run shares between them (cache reuse, fused kernels,
framework overhead between layers): the sum of the layer times is compared with a
whole-model step in `ProfileInfo.whole_step_us` so that the gap is visible, not hidden.

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
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from .model_export import module_calls, output_tensors

PROFILE_SCHEMA = "fuseplan.profile/1"


@dataclass
class ProfileInfo:
    layers_us: float = 0.0       # sum of the per-layer forward + backward medians
    whole_step_us: float = 0.0   # median forward + backward of the whole model
    optimizer_us: float = 0.0


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


def _fresh(v: Any, grad: bool) -> Any:
    if torch.is_tensor(v):
        c = v.detach().clone()
        if grad and c.is_floating_point():
            # Not a leaf, so that in-place layers (ReLU(inplace=True), +=) may write it; the
            # clone's backward passes the gradient through.
            c = c.requires_grad_(True).clone()
        return c
    if isinstance(v, (tuple, list)):
        return type(v)(_fresh(x, grad) for x in v)
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
    return "cpu: " + (platform.processor() or platform.machine()) + ", %d threads" % torch.get_num_threads()


def _captured_calls(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any],
                    batch_input: torch.Tensor) -> List[Tuple[Callable, Any, Any]]:
    """Each layer's operation and the inputs a real forward of `batch_input` gave it: from
    the traced graph, or (an export by modules) from hooks on the leaf modules."""
    if gm is not None:
        cap = _Capture(gm)
        cap.run(batch_input)
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
    for path, args, _ in module_calls(model, [e.path for e in layer_nodes if e.path], batch_input):
        inputs[(path, seen.get(path, 0))] = args
        seen[path] = seen.get(path, 0) + 1
    calls: List[Tuple[Callable, Any, Any]] = []
    for i, e in enumerate(layer_nodes):
        if e.path:
            calls.append((modules[e.path], inputs[(e.path, e.call)], {}))
        else:  # a view between modules, timed as a view of the next module's input
            nxt = layer_nodes[i + 1]
            calls.append((lambda t: t.view(t.shape), inputs[(nxt.path, nxt.call)][:1], {}))
    return calls


def profile_layers(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any], doc: Dict[str, Any],
                   fingerprint: str, batch_input: torch.Tensor, warmup: int = 3, steps: int = 10,
                   optimizer: Optional[torch.optim.Optimizer] = None,
                   sync: Callable[[], None] = lambda: None) -> Tuple[Dict[str, Any], ProfileInfo]:
    """Times every layer of an export (model_export.export_model's graph and layer nodes) at
    the batch of `batch_input`: the fuseplan.profile/1 document, and the whole-model step
    beside the sum of the layers. With `optimizer`, its step over gradients of this batch
    is timed too (`optimizer_us`). `sync` runs before each timing: ranks profiling side by
    side (`export --ranks`) time each layer at the same moment, under the same load as in
    a data-parallel job."""
    device = batch_input.device
    model.train()
    calls = _captured_calls(model, gm, layer_nodes, batch_input)
    batch = int(batch_input.shape[0])
    layers = []
    for layer, (fn, args0, kwargs0) in zip(doc["layers"], calls):
        def prepare(grad: bool = True, args0: Any = args0, kwargs0: Any = kwargs0) -> Any:
            return _fresh(args0, grad), {k: _fresh(v, grad) for k, v in kwargs0.items()}

        def forward(state: Any, fn: Callable = fn) -> None:
            fn(*state[0], **state[1])  # recording the graph for backward, as training does

        sync()
        fwd = _median_us(forward, lambda: prepare(True), warmup, steps, device)

        def prepare_backward(fn: Callable = fn) -> Any:
            args, kwargs = prepare(True)
            return fn(*args, **kwargs)

        def backward(out: Any) -> None:
            if torch.is_tensor(out) and out.requires_grad:
                out.backward(torch.ones_like(out))

        sync()
        bwd = _median_us(backward, prepare_backward, warmup, steps, device)
        layers.append({"name": layer["name"], "fwd_us": fwd, "bwd_us": bwd, "batch": batch})
    model.zero_grad(set_to_none=True)

    info = ProfileInfo(layers_us=sum(l["fwd_us"] + l["bwd_us"] for l in layers))

    def whole(state: Any) -> None:
        sum(o.float().sum() for o in output_tensors(model(batch_input))).backward()

    sync()
    info.whole_step_us = _median_us(whole, lambda: model.zero_grad(set_to_none=True), warmup, steps, device)
    doc_out = {"schema": PROFILE_SCHEMA, "model": doc["name"], "fingerprint": fingerprint,
               "device": _device_name(device), "precision": "fp32", "batch": batch, "layers": layers}
    if optimizer is not None:
        whole(None)  # gradients for the optimizer to apply
        sync()
        info.optimizer_us = _median_us(lambda s: optimizer.step(), lambda: None, warmup, steps, device)
        doc_out["optimizer_us"] = info.optimizer_us
    model.zero_grad(set_to_none=True)
    return doc_out, info
