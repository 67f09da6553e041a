"""A PyTorch module as a fuseplan.model/1 file: layers from torch.fx, shapes from a real
forward, parameters in registration order, and the order gradients become ready in a real
backward.

Known layer kinds are written with their kind, attributes, shapes and parameters only:
fuseplan derives their FLOPs from those when it reads the file, with the formulas the zoo
uses, and checks every shape (docs/formats.md). Everything else is a `custom` layer whose
FLOPs are counted here from shapes (matrix products, softmax, element-wise operations) or,
for an operation this module has no formula for, counted from the operations torch runs
when the layer runs alone forward and backward (flops.py; listed in `ExportInfo.counted`).
A layer that cannot run alone is estimated as one operation per output element and
listed in `ExportInfo.estimated`.
"""
from __future__ import annotations

import contextlib
import json
import dis
import inspect
import operator
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp
from torch.overrides import TorchFunctionMode

from .inputs import Inputs, Keywords, as_args, batch_size, call, check_keywords, forward_parameters

MODEL_SCHEMA = "fuseplan.model/1"

# Leaf modules whose kind fuseplan knows (its ModelBuilder derives their FLOPs).
_MODULE_KINDS: List[Tuple[type, str]] = [
    (nn.Conv2d, "conv2d"), (nn.BatchNorm2d, "batchnorm"), (nn.Linear, "linear"),
    (nn.MaxPool2d, "maxpool"), (nn.AvgPool2d, "avgpool"), (nn.AdaptiveAvgPool2d, "adaptive_avgpool"),
    (nn.ReLU, "relu"), (nn.Dropout, "dropout"), (nn.Embedding, "embedding"), (nn.LayerNorm, "layernorm"),
    (nn.GELU, "gelu"), (nn.Tanh, "tanh"), (nn.Flatten, "flatten"),
]
_FUNCTION_KINDS: Dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add",
    F.relu: "relu", torch.relu: "relu", F.gelu: "gelu", torch.tanh: "tanh", F.dropout: "dropout",
    torch.flatten: "flatten", F.adaptive_avg_pool2d: "adaptive_avgpool",
}
# Leaf modules fuseplan has no kind for whose FLOPs follow from shapes anyway: one
# operation per output element (activations, and torchvision's StochasticDepth, a mask).
_ELEMENTWISE_MODULES: Tuple[type, ...] = (nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Sigmoid, nn.Hardswish, nn.Hardsigmoid,
                                          nn.LeakyReLU, nn.ELU, nn.Mish, nn.Softplus)
_ELEMENTWISE_FUNCTIONS: Tuple[Any, ...] = ()
# torchvision's functions that torch.fx keeps whole (torch.fx.wrap): Swin's windowed
# attention, and its patch merging's pad and strided slices (a copy of each element).
_WINDOW_ATTENTION: Tuple[Any, ...] = ()
_COPIES: Tuple[Any, ...] = ()
try:
    from torchvision.ops import StochasticDepth, stochastic_depth
    _ELEMENTWISE_MODULES += (StochasticDepth,)
    _ELEMENTWISE_FUNCTIONS += (stochastic_depth,)
    from torchvision.models import swin_transformer as _swin
    _WINDOW_ATTENTION += tuple(f for f in (getattr(_swin, "shifted_window_attention", None),) if f is not None)
    _COPIES += tuple(f for f in (getattr(_swin, "_patch_merging_pad", None),) if f is not None)
except ImportError:  # torchvision is optional
    pass
_NORM_FUNCTIONS = {F.layer_norm, F.batch_norm, F.group_norm, "layer_norm", "batch_norm", "group_norm"}
_NORM_FWD_PER_ELEM, _NORM_BWD_RATIO = 8, 2  # as fuseplan's builder counts a norm
# Functional pooling (torchvision's Inception calls F.max_pool2d and F.avg_pool2d): their
# arguments in call order, with torch's defaults.
_POOL_FUNCTIONS = {
    F.max_pool2d: ("maxpool", ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode"),
                   {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False}),
    F.avg_pool2d: ("avgpool", ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
                   {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True}),
}
_METHOD_KINDS = {"add": "add", "add_": "add", "relu": "relu", "relu_": "relu", "tanh": "tanh", "flatten": "flatten"}

# Custom operations whose FLOPs follow from shapes (a multiply-add counts 2, as in fuseplan).
_MATMULS = {operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm"}
_SOFTMAX = {F.softmax, torch.softmax, "softmax", F.log_softmax, "log_softmax"}
_SOFTMAX_PER_ELEM = 5  # max, sub, exp, sum, div (fuseplan's builder)
_ELEMENTWISE = {operator.add, operator.iadd, torch.add, "add", "add_", operator.mul, operator.truediv, operator.sub, operator.imul, operator.isub, operator.itruediv,
                torch.mul, torch.div, torch.sub, torch.where, torch.sqrt, torch.rsqrt, torch.exp, torch.pow,
                operator.pow, torch.sigmoid, F.silu, "mul", "div", "sub", "masked_fill", "masked_fill_",
                "pow", "sqrt", "rsqrt", "exp", "sigmoid", "mean", "sum", "float", "type_as", "to",
                F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.mish, torch.clamp,
                operator.neg, "sigmoid_", "relu6", "hardswish", "clamp", "clamp_", "neg", *_ELEMENTWISE_FUNCTIONS}
# Operations that move no arithmetic (views, copies of layout, indexing).
_VIEWS = {"view", "reshape", "permute", "transpose", "contiguous", "split", "chunk", "unsqueeze", "squeeze",
          "expand", "narrow", "__getitem__", "t", operator.getitem, torch.reshape, torch.transpose,
          torch.permute, torch.split, torch.chunk, torch.unsqueeze, torch.squeeze, torch.cat, torch.stack,
          "size", "dim", getattr}
# Those of them that copy (a new layout, a concatenation): kernels that move every element.
_COPYING_VIEWS = {"contiguous", torch.cat, torch.stack}


def _is_view(node: fx.Node) -> bool:
    """Whether a traced operation of _VIEWS returns a view of its input (no kernel, no
    memory moved): not a copy (_COPYING_VIEWS), nor indexing by a tensor (a gather)."""
    key = _target_key(node)
    if key not in _VIEWS or key in _COPYING_VIEWS:
        return False
    if key in (operator.getitem, "__getitem__"):
        index = node.args[1] if len(node.args) > 1 else None
        nodes: List[fx.Node] = []
        fx.node.map_arg(index, nodes.append)
        return not nodes  # slices, integers and None only
    return True


@dataclass
class ExportInfo:
    """What an export found beyond the model file itself."""
    gradient_order: List[str] = field(default_factory=list)   # tensor names as their gradients became ready
    order_matches: bool = True    # gradient_order is the reverse of the file's tensor order
    out_of_order: List[str] = field(default_factory=list)     # tensors whose gradient came elsewhere
    estimated: List[str] = field(default_factory=list)        # custom layers whose FLOPs are estimated
    counted: List[str] = field(default_factory=list)          # custom layers whose FLOPs torch's operations gave
    fingerprint: str = ""
    # "fx" (torch.fx traced the forward), or "modules" (it could not: the layers are the
    # leaf modules as a real forward called them; `untraced` says why fx failed).
    method: str = "fx"
    untraced: str = ""


def fingerprint(tensors: Sequence[Tuple[str, Sequence[int]]]) -> str:
    """fuseplan's model fingerprint: 64-bit FNV-1a over tensor names, int64 dimensions, '|'."""
    h = 1469598103934665603
    def mix(data: bytes) -> None:
        nonlocal h
        for b in data:
            h ^= b
            h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    for name, shape in tensors:
        mix(name.encode())
        for d in shape:
            mix(struct.pack("<q", int(d)))
        mix(b"|")
    return "%016x" % h


class _ScopeTracer(fx.Tracer):
    """torch.fx's tracer, recording for each node the module path it was traced in."""

    def __init__(self) -> None:
        super().__init__()
        self.fuseplan_scope: List[str] = []

    def call_module(self, m: nn.Module, forward: Callable, args: Any, kwargs: Any) -> Any:
        self.fuseplan_scope.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            self.fuseplan_scope.pop()

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        node.meta["fuseplan_scope"] = self.fuseplan_scope[-1] if self.fuseplan_scope else ""
        return node


def _proxy_iter(self: fx.Proxy) -> Any:
    """fx.Proxy.__iter__ as torch.fx means it: unpacking a traced value (`n, c, h, w =
    x.shape`) gives one item per target of the UNPACK_SEQUENCE being run. torch 1.13 looks
    that instruction up by list index (offset // 2), which Python 3.11's inline caches
    break (ViT and ShuffleNet failed to trace); here it is found by its offset."""
    caller = inspect.currentframe().f_back  # the unpacking code
    inst = next((i for i in dis.get_instructions(caller.f_code) if i.offset == caller.f_lasti), None)
    if inst is not None and inst.opname == "UNPACK_SEQUENCE":
        return (self[i] for i in range(inst.argval))
    return self.tracer.iter(self)


Given = Union[int, Sequence[str]]  # the inputs a forward is given: the first n positionally, or these by name


def _given(args: Tuple[torch.Tensor, ...]) -> Given:
    return args.names if isinstance(args, Keywords) else len(args)


def _left_out(model: nn.Module, given: Given) -> Dict[str, Any]:
    """The forward's parameters not `given` (after the first `given` positional inputs, or
    other than the names given), with their defaults (`attention_mask=None` when only token
    ids are given): traced as those values, so that `if mask is not None:` takes the branch
    a real call with `given` inputs takes."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD,
             inspect.Parameter.KEYWORD_ONLY)
    params = forward_parameters(model) or []
    left = params[given:] if isinstance(given, int) else [p for p in params if p.name not in given]
    return {p.name: p.default for p in left if p.kind in kinds and p.default is not inspect.Parameter.empty}


def trace(model: nn.Module, given: Given = 1) -> fx.GraphModule:
    """The module's forward as torch.fx traces it, for `given` inputs: the first n
    positionally, or these parameters by name."""
    tracer = _ScopeTracer()
    original = fx.Proxy.__iter__
    fx.Proxy.__iter__ = _proxy_iter  # for this trace only
    try:
        graph = tracer.trace(model, concrete_args=_left_out(model, given) or None)
    finally:
        fx.Proxy.__iter__ = original
    return fx.GraphModule(tracer.root, graph, model.__class__.__name__)


def graph_inputs(gm: fx.GraphModule, args: Tuple[torch.Tensor, ...]) -> List[Any]:
    """The traced forward's positional arguments, one per placeholder, for the inputs `args`
    (as_args): those given, and the defaults the others were traced as (_left_out)."""
    if not isinstance(args, Keywords):
        return list(args)
    named = args.as_dict()
    return [named[n.target] if n.target in named else (n.args[0] if n.args else None)
            for n in gm.graph.nodes if n.op == "placeholder"]


def _input_placeholders(gm: fx.GraphModule, args: Tuple[torch.Tensor, ...]) -> Dict[fx.Node, int]:
    """The placeholders of the inputs given, each to its model input k (which layers read
    as -1 - k); the other placeholders are parameters traced as their defaults (_left_out)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if isinstance(args, Keywords):
        return {n: args.names.index(n.target) for n in placeholders if n.target in args.names}
    return {n: k for k, n in enumerate(placeholders[:len(args)])}


def _module_kind(m: nn.Module) -> Optional[str]:
    for cls, kind in _MODULE_KINDS:
        if type(m) is cls:
            return kind
    return None


def _hw(v: Any) -> Optional[Any]:
    """A window attribute as fuseplan writes it: one integer when square, [height, width]
    when not; None when it is neither (a string padding such as 'same')."""
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(v) == 2 and all(isinstance(x, int) for x in v):
        return v[0] if v[0] == v[1] else [v[0], v[1]]
    return None


def _pair_is_square(v: Any) -> Optional[int]:
    """A window attribute's one side where it is square, else None."""
    side = _hw(v)
    return side if isinstance(side, int) else None


def _pool_attrs(kind: str, kernel: Any, stride: Any, padding: Any, dilation: Any, ceil_mode: bool,
                count_include_pad: bool) -> Optional[Dict[str, Any]]:
    """A pooling window fuseplan models (square, no dilation, floor rounding; an average
    counting the padding, as its executor does), or None."""
    k, p = _pair_is_square(kernel), _pair_is_square(padding)
    s = _pair_is_square(stride if stride not in (None, []) else kernel)
    if None in (k, s, p) or ceil_mode or _pair_is_square(dilation) != 1 or not count_include_pad:
        return None
    return {"kernel": k, "stride": s, "padding": p}


def _module_attrs(m: nn.Module, kind: str) -> Optional[Dict[str, Any]]:
    """fuseplan attributes of a known module, or None when fuseplan cannot model it (then custom)."""
    if kind == "conv2d":
        k, s, p, d = _hw(m.kernel_size), _hw(m.stride), _hw(m.padding), _hw(m.dilation)
        if None in (k, s, p, d) or m.padding_mode != "zeros":
            return None
        attrs = {"kernel": k, "stride": s, "padding": p, "groups": m.groups, "bias": m.bias is not None}
        if d != 1:
            attrs["dilation"] = d
        return attrs
    if kind in ("maxpool", "avgpool"):
        return _pool_attrs(kind, m.kernel_size, m.stride, m.padding, getattr(m, "dilation", 1), m.ceil_mode,
                           getattr(m, "count_include_pad", True))
    if kind == "dropout":
        return {"dropout": m.p}
    if kind in ("batchnorm", "layernorm"):
        return {} if all(p is not None for p in (m.weight, m.bias)) else None
    if kind == "gelu":
        return {}
    if kind == "flatten":
        return {} if m.start_dim == 1 and m.end_dim == -1 else None
    return {}


def _functional_pool(n: fx.Node) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    """The kind and attributes of a functional pooling call, or (None, None) when fuseplan
    cannot model its window (then custom)."""
    kind, names, defaults = _POOL_FUNCTIONS[n.target]
    given = dict(zip(names, n.args), **n.kwargs)
    arg = {name: given.get(name, defaults.get(name)) for name in names}
    if any(isinstance(v, fx.Node) for v in arg.values() if v is not arg["input"]):
        return None, None  # a window computed at run time
    attrs = _pool_attrs(kind, arg["kernel_size"], arg["stride"], arg["padding"], arg.get("dilation", 1),
                        bool(arg["ceil_mode"]), bool(arg.get("count_include_pad", True)))
    return (kind, attrs) if attrs is not None else (None, None)


def _role(kind: str, local_name: str) -> str:
    if kind in ("batchnorm", "layernorm"):
        return "norm_scale" if local_name == "weight" else "norm_shift"
    if kind == "embedding":
        return "embedding"
    return "bias" if local_name.endswith("bias") else "weight"


def _shape(node: fx.Node) -> Optional[List[int]]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return [int(d) for d in meta.shape]


def _first_shape(node: fx.Node) -> Optional[List[int]]:
    """The shape of the first tensor of a node whose value is a tuple."""
    meta = node.meta.get("tensor_meta")
    if isinstance(meta, (tuple, list)):
        for m in meta:
            if hasattr(m, "shape"):
                return [int(d) for d in m.shape]
    return None


def _per_sample(shape: Optional[List[int]]) -> List[int]:
    return list(shape[1:]) if shape else []


def _constant_per_sample(shape: List[int], batch: int) -> List[int]:
    """The per-sample shape of what a layer computes from constants only (position
    embeddings of a buffer): the batch's dimension stripped where it has one (the batch, or
    1 broadcast over it), else the whole shape, which every sample shares."""
    return _per_sample(shape) if shape and shape[0] in (batch, 1) else list(shape)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _target_key(node: fx.Node) -> Any:
    return node.target if node.op == "call_function" else str(node.target)


def _module_flops(m: nn.Module, out: List[int]) -> Optional[Tuple[float, float]]:
    """Forward and backward FLOPs per sample of a leaf module fuseplan has no kind for, where
    they follow from its output's shape; None where they do not."""
    elems = float(_numel(out))
    if isinstance(m, nn.Identity):
        return 0.0, 0.0
    if isinstance(m, _ELEMENTWISE_MODULES):
        return elems, elems
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):  # a window fuseplan's pools do not take (ceil mode)
        k = m.kernel_size if isinstance(m.kernel_size, (tuple, list)) else (m.kernel_size, m.kernel_size)
        return elems * k[0] * k[1], elems
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)):
        return _NORM_FWD_PER_ELEM * elems, _NORM_FWD_PER_ELEM * _NORM_BWD_RATIO * elems
    if isinstance(m, nn.Upsample):
        return _resample_flops(m.mode, out)
    if isinstance(m, nn.MultiheadAttention) and m.batch_first and len(out) == 2 and m._qkv_same_embed_dim:
        # Self-attention on [S, E] per sample: the q, k, v projections, Q K^T and A V, the
        # softmax, the output projection (a multiply-add counts 2; backward twice a product).
        seq, dim = out
        products = 2.0 * seq * dim * 3 * dim + 2 * 2.0 * seq * seq * dim + 2.0 * seq * dim * dim
        softmax = _SOFTMAX_PER_ELEM * m.num_heads * seq * seq
        return products + softmax, 2 * products + softmax
    return None


def _module_class(m: nn.Module) -> Optional[str]:
    """The class of kernels (fuseplan's compute classes, docs/formats.md) a leaf module
    fuseplan has no kind for runs, where _module_flops knows it; None: `other`, as for every
    element-wise operation without a kind (CUSTOM_OTHER)."""
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return "pool"
    if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d, nn.InstanceNorm2d)):
        return "norm"
    if isinstance(m, nn.MultiheadAttention):
        return "attention"
    return None


# Why a custom layer's element-wise work (a spatial mean, a sigmoid, a broadcast
# multiply-add, a softmax, a copy) keeps class `other` rather than `elementwise`: fuseplan's
# elementwise class is its ReLU, add and dropout layers, single passes over equal shapes;
# the operations the export keeps as custom layers are reductions and broadcasts, which
# bench/published_scaling.py's fit of SE-ResNeXt-101 on one V100 found at about half the
# device's memory efficiency (configs/clusters/dgx1-v100.json: by_kind.other
# memory_efficiency 0.40 FP32 and 0.30 FP16, the device's 0.75), so a calibrated `other`
# prices them. The class of such work, as flops.op_class names it.
CUSTOM_OTHER = "other"


# Taps per output element of each interpolation mode (nearest copies one input element).
_RESAMPLE_TAPS = {"nearest": 0, "nearest-exact": 0, "linear": 2, "bilinear": 4, "bicubic": 16, "trilinear": 8,
                  "area": 0}


def _resample_flops(mode: str, out: List[int]) -> Optional[Tuple[float, float]]:
    """F.interpolate / nn.Upsample: a multiply-add per tap of each output element (its
    backward scatters the same products), a copy per element where there is no tap; None
    for a mode this table does not know."""
    taps = _RESAMPLE_TAPS.get(mode)
    if taps is None:
        return None
    per_elem = 2.0 * taps if taps else 1.0
    elems = float(_numel(out))
    return per_elem * elems, per_elem * elems


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A call's argument by position or keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _window_attention_flops(node: fx.Node, in_shapes: List[List[int]]) -> Optional[Tuple[float, float]]:
    """torchvision's shifted_window_attention on [H, W, C] per sample: the input padded to
    whole windows of N = wh x ww tokens, the q, k, v projections, Q K^T and A V within each
    window, the relative position bias, the softmax and the output projection (a
    multiply-add counts 2; backward twice the products)."""
    window, heads = _arg(node, 4, "window_size"), _arg(node, 5, "num_heads")
    if not in_shapes or len(in_shapes[0]) != 3 or not isinstance(heads, int) or \
            not isinstance(window, (list, tuple)) or len(window) != 2:
        return None
    h, w, c = in_shapes[0]
    wh, ww = int(window[0]), int(window[1])
    tokens = float(-(-h // wh) * wh * -(-w // ww) * ww)
    n = wh * ww
    products = 2.0 * tokens * c * 3 * c + 2 * 2.0 * tokens * n * c + 2.0 * tokens * c * c
    scores = heads * tokens * n
    return products + (_SOFTMAX_PER_ELEM + 1) * scores, 2 * products + _SOFTMAX_PER_ELEM * scores


def _custom_flops(node: fx.Node, in_shapes: List[List[int]], out: List[int], module: Optional[nn.Module] = None,
                  reads_params: bool = False) -> Tuple[float, float, bool, Optional[str]]:
    """Forward and backward FLOPs per sample of a custom operation (a traced node, the call
    of `module` where it is one), whether estimated, and its class of kernels where it is
    not `other` (a matrix product is a gemm where it reads parameters, else attention's
    batched products, as the zoo's attention layer holds them; a norm; a pool; element-wise
    operations, softmax and copies stay `other`: CUSTOM_OTHER)."""
    key = _target_key(node)
    elems = float(_numel(out))
    known = _module_flops(module, out) if module is not None else None
    cls = _module_class(module) if module is not None else None
    if isinstance(module, nn.MultiheadAttention):
        qkv = [_arg(node, i, k) for i, k in enumerate(("query", "key", "value"))]
        if any(a is not qkv[0] for a in qkv):
            known = None  # attention across two sequences: not the self-attention formula
    if node.op == "call_function" and key in _WINDOW_ATTENTION:
        known, cls = _window_attention_flops(node, in_shapes), "attention"
    elif node.op == "call_function" and key is F.interpolate:
        known = _resample_flops(str(_arg(node, 3, "mode", "nearest")), out)
    if known is not None:
        return known[0], known[1], False, cls
    if node.op == "call_function" and key in _COPIES:
        return elems, elems, False, None
    if key in _MATMULS and len(in_shapes) == 2 and in_shapes[0] and in_shapes[1]:
        k = in_shapes[0][-1]
        f = 2.0 * elems * k
        return f, 2 * f, False, "gemm" if reads_params else "attention"
    if key in _SOFTMAX:
        return _SOFTMAX_PER_ELEM * elems, _SOFTMAX_PER_ELEM * elems, False, None
    if key in _NORM_FUNCTIONS:
        return _NORM_FWD_PER_ELEM * elems, _NORM_FWD_PER_ELEM * _NORM_BWD_RATIO * elems, False, "norm"
    if key in _VIEWS:
        return 0.0, 0.0, False, None
    if key in _ELEMENTWISE:
        return elems, elems, False, None
    return elems, elems, True, None


def _name_of(target: Any) -> str:
    if isinstance(target, str):
        return target.strip("_")
    name = getattr(target, "__name__", str(target))
    return name.strip("_")


def export_model(model: nn.Module, example_inputs: Inputs, name: Optional[str] = None,
                 graph: Optional[fx.GraphModule] = None) -> Tuple[Dict[str, Any], ExportInfo, Optional[fx.GraphModule], List[Any]]:
    """The model as a fuseplan.model/1 dict, what was found about it, the traced graph and
    the graph node of each layer (for profiling). `example_inputs`: a tensor, or a tuple of
    tensors (in order) or dict of them (by keyword) for a forward of several inputs
    (inputs.py). A forward that torch.fx cannot trace (control flow on tensor values) is
    exported from a record of one forward instead (export_by_modules): the graph is then
    None and each layer's entry a ModuleCall."""
    args = as_args(example_inputs)
    check_keywords(model, args)
    batch = batch_size(args)
    try:
        gm = graph if graph is not None else trace(model, _given(args))
    except Exception as e:  # TraceError for `if tensor:`, TypeError for float(tensor), ...: a real forward decides
        return export_by_modules(model, args, name, reason="%s: %s" % (type(e).__name__, str(e).split("\n")[0]))
    was_training = model.training
    model.eval()  # shapes only; batch statistics of a batch of one would fail
    with torch.no_grad():
        ShapeProp(gm).propagate(*graph_inputs(gm, args))
    model.train(was_training)

    modules = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for n in gm.graph.nodes:
        if n.op == "call_module":
            calls[n.target] = calls.get(n.target, 0) + 1
    seen_calls: Dict[str, int] = {}
    unique = _namer()
    seen_params: Dict[int, str] = {}
    param_names = {id(p): n for n, p in model.named_parameters()}
    layer_of: Dict[fx.Node, int] = {}
    layers: List[Dict[str, Any]] = []
    layer_nodes: List[fx.Node] = []
    info = ExportInfo()
    input_of = _input_placeholders(gm, args)

    def producers(arg: fx.Node) -> List[int]:
        """The layers a node's value comes from: its own, or where it is no layer (a tuple,
        such as chunk's or split's, or a size) the layers of the values it is made from."""
        if arg in input_of:
            return [-1 - input_of[arg]]
        if arg in layer_of:
            return [layer_of[arg]]
        found: List[int] = []
        if from_input.get(arg, False):
            for a in arg.all_input_nodes:
                found += [p for p in producers(a) if p not in found]
        return found

    def constant_parameters(n: fx.Node) -> List[str]:
        """The parameters node `n` reads itself or through nodes that do not depend on the
        input, in graph order."""
        found: List[str] = []
        stack, seen = [a for a in n.all_input_nodes if not from_input.get(a, False)], set()
        while stack:
            a = stack.pop()
            if a in seen:
                continue
            seen.add(a)
            if a.op == "get_attr":
                if _is_param(gm, a.target) and a.target not in found:
                    found.append(a.target)
            elif not from_input.get(a, False):
                stack.extend(a.all_input_nodes)
        return sorted(found, key=lambda t: order.get(t, 0))

    order = {node.target: i for i, node in enumerate(gm.graph.nodes) if node.op == "get_attr"}
    # Nodes computed from the inputs (or from a module's parameters: below); the rest (a causal
    # mask cut from a buffer) are constants.
    from_input: Dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            from_input[n] = n in input_of
            continue
        from_input[n] = any(from_input.get(a, False) for a in n.all_input_nodes)
        # A module with parameters applied to constants only (BERT's position embeddings, of a
        # buffer of positions) is a layer all the same, reading no layer: its parameters train.
        reads_constants = (n.op == "call_module" and not from_input[n]
                           and any(True for _ in modules[n.target].parameters()))
        from_input[n] = from_input[n] or reads_constants
        if n.op in ("output", "get_attr"):
            continue
        # A module returning a tuple (nn.MultiheadAttention's output and weights) is a layer
        # of its first tensor's shape; what indexes the tuple is a view of it.
        out = _shape(n) or (_first_shape(n) if n.op == "call_module" else None)
        if out is None or not from_input[n]:  # not a tensor (a size, a tuple), or a constant: no layer
            continue
        tensor_args = [a for a in n.all_input_nodes if from_input[a] and _shape(a) is not None]
        inputs: List[int] = []
        for a in n.all_input_nodes:
            inputs += [p for p in producers(a) if p not in inputs]
        in_shapes = [_per_sample(_shape(a)) for a in tensor_args if _shape(a) is not None]
        layer: Dict[str, Any] = {"inputs": inputs if inputs or reads_constants else [len(layers) - 1],
                                 "out_shape": _constant_per_sample(out, batch) if reads_constants else _per_sample(out)}
        if in_shapes:
            layer["in_shape"] = in_shapes[0]
        params: List[Dict[str, Any]] = []
        kind: Optional[str] = None
        attrs: Optional[Dict[str, Any]] = {}
        if n.op == "call_module":
            m = modules[n.target]
            seen_calls[n.target] = seen_calls.get(n.target, 0) + 1
            lname = n.target if calls[n.target] == 1 else "%s_%d" % (n.target, seen_calls[n.target])
            kind = None if reads_constants else _module_kind(m)  # a known kind reads a layer or the input
            attrs = _module_attrs(m, kind) if kind else None
            if attrs is None:
                kind = None
            for local, p in m.named_parameters():
                if id(p) in seen_params:
                    continue  # tied, or a module called again: the first use owns it
                seen_params[id(p)] = param_names[id(p)]
                params.append(_param(param_names[id(p)], p, _role(kind or "custom", local)))
        else:
            scope = n.meta.get("fuseplan_scope", "")
            base = _name_of(n.target)
            lname = unique((scope + "." if scope else "") + base)
            if n.op == "call_function":
                kind = _FUNCTION_KINDS.get(n.target)
            else:
                kind = _METHOD_KINDS.get(str(n.target))
            if kind == "add" and (len(inputs) != 2 or in_shapes[0] != in_shapes[-1] or layer["out_shape"] != in_shapes[0]):
                kind = None  # a broadcast or a scalar: element-wise custom
            if kind == "flatten" and len(layer["out_shape"]) != 1:
                kind = None
            if kind == "adaptive_avgpool" and len(layer["out_shape"]) != 3:
                kind = None
            if kind == "dropout":
                attrs = {"dropout": float(_arg(n, 1, "p", 0.5))}
            if n.op == "call_function" and n.target in _POOL_FUNCTIONS:
                kind, attrs = _functional_pool(n)
            # Parameters used directly (F.linear(x, self.w)), or through operations on constants
            # only (Swin's relative position bias, a table indexed before it is added).
            for target in constant_parameters(n):
                p = gm.get_parameter(target)
                if id(p) not in seen_params:
                    seen_params[id(p)] = target
                    params.append(_param(target, p, _role("custom", target)))
                    kind = None
        layer = {"name": lname, "kind": kind or "custom", **layer, "params": params}
        if kind:
            if attrs:
                layer["attrs"] = attrs
        else:
            fwd, bwd, estimated, cls = _custom_flops(n, in_shapes, layer["out_shape"],
                                                     modules[n.target] if n.op == "call_module" else None,
                                                     n.op != "call_module" and bool(constant_parameters(n)))
            layer["fwd_flops"], layer["bwd_flops"] = fwd, bwd
            if cls:
                layer["attrs"] = {"class": cls}
            if _target_key(n) in _VIEWS:
                layer["activation_elems"] = 0  # a view stores nothing of its own
            if _is_view(n):
                layer["attrs"] = {"view": True}  # fuseplan prices it at no time
            if estimated:
                info.estimated.append(lname)
            if layer["kind"] == "custom" and not in_shapes:
                layer.pop("in_shape", None)
        layer_of[n] = len(layers)
        layers.append(layer)
        layer_nodes.append(n)

    # A frozen parameter the forward never reads is nothing to plan: left out of the file.
    missing = [param_names[id(p)] for p in model.parameters() if id(p) not in seen_params and p.requires_grad]
    if missing:
        raise ValueError("parameters not used by the traced forward: %s (they would never get a gradient: freeze "
                         "them with requires_grad_(False), or remove them)" % ", ".join(missing[:5]))
    _count_estimated(model, gm, layer_nodes, layers, info, args)
    _check_trains(layers)
    info.fingerprint = fingerprint(trained_tensors(layers))
    doc = _document(model, name, args, [str(n.target) for n in sorted(input_of, key=input_of.get)], layers)
    _gradient_order(model, args, info, _trained_layer_of(layers))
    return doc, info, gm, layer_nodes


def _document(model: nn.Module, name: Optional[str], args: Tuple[torch.Tensor, ...], input_names: List[str],
              layers: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The fuseplan.model/1 document: the first input's shape, the others named after the
    forward's parameters (`extra_inputs`), and the layers."""
    doc: Dict[str, Any] = {"schema": MODEL_SCHEMA, "name": name or model.__class__.__name__.lower(),
                           "input_shape": _per_sample(list(args[0].shape))}
    if len(args) > 1:
        doc["extra_inputs"] = [{"name": input_names[k] if k < len(input_names) else "input%d" % k,
                                "shape": _per_sample(list(args[k].shape))} for k in range(1, len(args))]
    doc["layers"] = layers
    return doc


def _input_names(model: nn.Module, args: Tuple[torch.Tensor, ...]) -> List[str]:
    """The inputs' names: their keywords, or the forward's first parameters'."""
    if isinstance(args, Keywords):
        return list(args.names)
    params = (forward_parameters(model) or [])[:len(args)]
    return [p.name for p in params if p.kind != inspect.Parameter.VAR_POSITIONAL]


@dataclass
class ForwardCall:
    """A call one forward made: a leaf module's (`path`), or (path "") a torch function's or
    tensor method's outside every leaf module (`fn`: a functional add, attention's matmul
    and softmax, a view), with its arguments, its output and the module whose forward made
    it (`scope`)."""
    path: str
    fn: Any
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    output: Any
    scope: str
    in_place: bool = False  # it wrote an argument and returned it (add_, +=, relu(inplace=True))


class _FunctionRecorder(TorchFunctionMode):
    """Records the torch functions and tensor methods called outside leaf modules (inside
    them the module is the layer): torch's __torch_function__ hands each call here, as it
    is made, with this mode off while it runs."""

    def __init__(self, records: List[ForwardCall], state: Dict[str, Any]) -> None:
        super().__init__()
        self.records, self.state = records, state

    def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if self.state["inside_leaf"] > 0:
            return func(*args, **kwargs)
        versions = {id(t): t._version for t in _arg_tensors(args, kwargs)}
        out = func(*args, **kwargs)
        in_place = any(id(o) in versions and o._version != versions[id(o)] for o in output_tensors(out))
        self.records.append(ForwardCall("", func, _snapshot(args), _snapshot(kwargs), out, self.state["scope"][-1],
                                        in_place))
        return out


def _snapshot(v: Any) -> Any:
    """`v` with its lists, tuples and dicts copied (not their tensors): as a call got them,
    though the forward appends to its list afterwards (DenseNet's features)."""
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(_snapshot(x) for x in v)
    if isinstance(v, dict):
        return {k: _snapshot(x) for k, x in v.items()}
    return v


def forward_calls(model: nn.Module, example_inputs: Inputs) -> List[ForwardCall]:
    """Every call of a leaf module (one without children) and every torch operation outside
    them in one forward of `example_inputs`, in the order made, with autograd's graph
    recorded (what a tensor was made from can be found), in the module's mode. The records
    hold every output, so no tensor's id is reused while they live; the model is left as
    it was."""
    records: List[ForwardCall] = []
    state: Dict[str, Any] = {"inside_leaf": 0, "scope": [""]}
    handles = []
    for path, m in model.named_modules():
        if path and not list(m.children()):
            def enter_leaf(m: nn.Module, inputs: Any) -> None:
                state["inside_leaf"] += 1

            def leave_leaf(m: nn.Module, inputs: Any, output: Any, path: str = path) -> None:
                state["inside_leaf"] -= 1
                records.append(ForwardCall(path, None, _snapshot(inputs), {}, output, state["scope"][-1]))
            handles += [m.register_forward_pre_hook(enter_leaf), m.register_forward_hook(leave_leaf)]
        elif path:
            def enter(m: nn.Module, inputs: Any, path: str = path) -> None:
                state["scope"].append(path)

            def leave(m: nn.Module, inputs: Any, output: Any) -> None:
                state["scope"].pop()
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.enable_grad(), untouched(model), _FunctionRecorder(records, state):
            call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return records


@dataclass
class ModuleCall:
    """A layer of an export by modules: the `call`-th call (from 0) of the leaf module at
    `path`; or (path "") the `call`-th operation outside leaf modules (forward_calls'
    records of a function, counted from 0), or (call -1) a layer between layers standing
    for what made the next layer's input where the export saw nothing; the profile times
    that one as a view."""
    path: str
    call: int


# Recorded operations (by their function's or method's name) of a kind fuseplan knows, as
# _FUNCTION_KINDS and _METHOD_KINDS give the traced ones: same shapes in and out, tensors only.
_RECORDED_KINDS = {"add": "add", "add_": "add", "__add__": "add", "__radd__": "add", "__iadd__": "add",
                   "relu": "relu", "relu_": "relu", "tanh": "tanh", "gelu": "gelu"}


def _namer() -> Callable[[str], str]:
    """Layer names made unique: a base the second time is BASE_1, then BASE_2, ..."""
    used: Dict[str, int] = {}

    def unique(base: str) -> str:
        count = used.get(base, 0)
        used[base] = count + 1
        return base if count == 0 else "%s_%d" % (base, count)
    return unique


def _function_name(fn: Any) -> str:
    """A recorded operation's name: the function's or method's, or a property's (`x.T`)."""
    name = getattr(fn, "__name__", "") or str(fn)
    if name == "__get__":
        name = getattr(getattr(fn, "__self__", None), "__name__", "get")
    return name.strip("_") or "op"


def _made_from(t: torch.Tensor, layer_of_node: Dict[Any, int]) -> Tuple[List[int], List[torch.Tensor]]:
    """What autograd's graph made `t` from, for a tensor made where the export saw nothing:
    the layers whose outputs it reached (`layer_of_node`: their autograd nodes), and
    otherwise the tensors requiring a gradient (a parameter indexed by a buffer, as Swin's
    relative position bias; `t` itself if it is one)."""
    if t.grad_fn is None:
        return [], [t] if t.requires_grad else []
    layers: List[int] = []
    found: List[torch.Tensor] = []
    stack, seen = [t.grad_fn], set()
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        if f in layer_of_node:
            layers.append(layer_of_node[f])
            continue
        if getattr(f, "variable", None) is not None:
            found.append(f.variable)
        stack.extend(g for g, _ in f.next_functions)
    return sorted(set(layers)), ([] if layers else found)


def _views_of(out: torch.Tensor, ins: Sequence[torch.Tensor]) -> bool:
    """Whether `out` is a view (no kernel, no memory moved) of one of `ins` or of what they view."""
    base = out._base if out._is_view() else None
    return base is not None and any(base is t or base is t._base for t in ins)


def _arg_tensors(args: Any, kwargs: Any) -> List[torch.Tensor]:
    return output_tensors(list(args) + list(kwargs.values()))


def export_by_modules(model: nn.Module, example_inputs: Inputs, name: Optional[str] = None,
                      reason: str = "") -> Tuple[Dict[str, Any], ExportInfo, None, List[ModuleCall]]:
    """The model from one real forward (forward_calls): each call of a leaf module (one
    without children) is a layer, of the kind, attributes, shapes and parameters the fx
    export gives it; each torch operation between them that computes from the inputs (a
    functional add, attention's matmul and softmax, a view) is a custom layer, its FLOPs
    counted as the fx export counts a custom layer's, a view marked as one. Parameters an
    operation reads, directly or through operations on constants, are its layer's. Control
    flow is that of the example's forward; what only tests it is dropped. A layer's
    producers are the layers whose outputs it reads: by tensor; for a tensor made where
    nothing was recorded, the layer autograd's graph made it from, else by storage, else
    (a module's input) the latest earlier layer of its shape. Tensors made from constants
    only (positions from torch.arange) are constants: a module reading one reads no
    layer."""
    args = as_args(example_inputs)
    was_training = model.training
    model.train()  # as it trains, its layers counted and timed (a MultiheadAttention runs other code in eval)
    try:
        records = forward_calls(model, args)
    finally:
        model.train(was_training)

    modules = dict(model.named_modules())
    calls: Dict[str, int] = {}
    for r in records:
        if r.path:
            calls[r.path] = calls.get(r.path, 0) + 1
    seen_calls: Dict[str, int] = {}
    unique = _namer()
    seen_params: Dict[int, str] = {}
    param_names = {id(p): n for n, p in model.named_parameters()}
    by_tensor: Dict[int, int] = {}
    by_storage: Dict[int, int] = {}
    # Tensors computed from constants only, with the parameters they were made from (a
    # position table sliced before it is added): the layer that reads one owns those.
    constants: Dict[int, List[torch.Tensor]] = {}
    layers: List[Dict[str, Any]] = []
    entries: List[ModuleCall] = []
    info = ExportInfo(method="modules", untraced=reason)
    # Model input k, by tensor or by storage (a view of it), is layer input -1 - k.
    input_ids = {id(t): -1 - k for k, t in reversed(list(enumerate(args)))}
    input_ptrs = {t.data_ptr(): -1 - k for k, t in reversed(list(enumerate(args)))}
    batch = batch_size(args)

    layer_of_node: Dict[Any, int] = {}  # the autograd node of each layer's output

    def made(t: torch.Tensor, layer: int) -> None:
        """Tensor `t` is layer `layer`'s output."""
        by_tensor[id(t)] = layer
        by_storage.setdefault(t.data_ptr(), layer)
        if t.grad_fn is not None:
            layer_of_node[t.grad_fn] = layer

    def adapted(producer: int, in_shape: List[int], lname: str, is_view: bool) -> int:
        """`producer`, or where what it gives is not the `in_shape` layer `lname` reads (made
        by something the export did not see) a layer between them that makes it: a view of
        it (an item of a tensor, taken by integer indexing, which torch 1.13 runs without
        __torch_function__); else a custom layer of estimated FLOPs standing for what ran
        there, so that the file connects every layer to the shape it reads."""
        given = layers[producer]["out_shape"] if producer >= 0 else _per_sample(list(args[-1 - producer].shape))
        if given == in_shape:
            return producer
        if is_view or _numel(given) == _numel(in_shape):
            view: Dict[str, Any] = {"name": lname + ".input_view", "kind": "custom", "inputs": [producer],
                                    "in_shape": given, "out_shape": in_shape, "params": []}
            if len(in_shape) == 1 and _numel(given) == _numel(in_shape):
                view["kind"] = "flatten"
            else:
                view.update({"fwd_flops": 0.0, "bwd_flops": 0.0, "activation_elems": 0, "attrs": {"view": True}})
        else:
            view = {"name": lname + ".input", "kind": "custom", "inputs": [producer], "in_shape": given,
                    "out_shape": in_shape, "params": [], "fwd_flops": float(_numel(in_shape)),
                    "bwd_flops": float(_numel(in_shape))}
            info.estimated.append(view["name"])
        layers.append(view)
        entries.append(ModuleCall("", -1))
        return len(layers) - 1

    def producer_of(t: torch.Tensor) -> Optional[int]:
        """The layer (>= 0) or model input (< 0) a tensor comes from; None if neither."""
        if id(t) in by_tensor:
            return by_tensor[id(t)]
        if id(t) in input_ids:
            return input_ids[id(t)]
        if id(t) in constants:
            return None
        if t.grad_fn is not None:  # made where the export saw nothing (an item, qkv[0]): from what, autograd knows
            reached, _ = _made_from(t, layer_of_node)
            if reached:
                return reached[-1]
        if t.data_ptr() in by_storage:
            return by_storage[t.data_ptr()]
        return input_ptrs.get(t.data_ptr())

    def own(params: Sequence[torch.Tensor], kind: str) -> List[Dict[str, Any]]:
        """The parameters a layer reads that no earlier layer owns (tied, or read again: the
        first use owns them)."""
        found = []
        for p in params:
            if id(p) in param_names and id(p) not in seen_params:
                seen_params[id(p)] = param_names[id(p)]
                found.append(_param(param_names[id(p)], p, _role(kind, param_names[id(p)].split(".")[-1])))
        return found

    def function_layer(r: ForwardCall, index: int) -> None:
        """An operation outside leaf modules: a layer where it computes from the inputs."""
        ins = _arg_tensors(r.args, r.kwargs)
        outs = output_tensors(r.output)
        if not outs:
            return  # a size, a shape, a test: no tensor, no layer
        sources: List[Optional[int]] = []
        made_of: List[torch.Tensor] = []
        for t in ins:
            src = producer_of(t)
            if src is None and id(t) in constants:
                made_of += constants[id(t)]
            elif src is None:  # no layer behind it (producer_of asked autograd): parameters only, or none
                made_of += _made_from(t, layer_of_node)[1]
            sources.append(src)
        if all(src is None for src in sources):  # constants only: a constant, carrying its parameters
            for o in outs:
                constants[id(o)] = made_of
            return
        if outs[0] is (ins[0] if ins else None) and not r.in_place:
            return  # the argument itself (contiguous() of a contiguous tensor, .float() of a float one)
        inputs: List[int] = []
        for src in sources:
            if src is not None and src not in inputs:
                inputs.append(src)
        first_at = next(i for i, src in enumerate(sources) if src is not None)
        first = ins[first_at]
        view = not r.in_place and all(_views_of(o, ins) for o in outs)
        # The outputs of a split, a chunk or a sort are layers named as the fx export names
        # the tuple's items (getitem, getitem_1, ...).
        prefix = r.scope + "." if r.scope else ""
        lname = unique(prefix + (_function_name(r.fn) if len(outs) == 1 else "getitem"))
        adapted_first = adapted(sources[first_at], _per_sample(list(first.shape)), lname, first._is_view())
        inputs = [adapted_first if src == sources[first_at] else src for src in inputs]
        layer: Dict[str, Any] = {"name": lname, "kind": "custom", "inputs": inputs,
                                 "in_shape": _per_sample(list(first.shape)),
                                 "out_shape": _per_sample(list(outs[0].shape)), "params": own(made_of, "custom")}
        kind = _RECORDED_KINDS.get(getattr(r.fn, "__name__", ""))
        shapes_agree = all(list(t.shape) == list(outs[0].shape) for t in ins)
        if kind and not layer["params"] and len(outs) == 1 and shapes_agree and not r.kwargs and \
                len(ins) == len(r.args) == (2 if kind == "add" else 1) and len(inputs) == len(ins):
            layer["kind"] = kind  # as the fx export has it: fuseplan derives its FLOPs
        elif _function_name(r.fn) == "flatten" and len(layer["out_shape"]) == 1 and len(outs) == 1 and \
                len(inputs) == 1 and not layer["params"]:
            layer["kind"] = "flatten"
        elif _function_name(r.fn) == "adaptive_avg_pool2d" and len(layer["out_shape"]) == 3 and \
                len(inputs) == 1 and not layer["params"]:
            layer["kind"] = "adaptive_avgpool"
        elif view and not layer["params"]:
            layer.update({"fwd_flops": 0.0, "bwd_flops": 0.0, "activation_elems": 0, "attrs": {"view": True}})
        else:
            elems = float(_numel(layer["out_shape"]))
            layer["fwd_flops"], layer["bwd_flops"] = elems, elems
            info.estimated.append(lname)  # counted below (_count_estimated), from the operation run alone
        if len(outs) > 1 and view:
            layer.pop("in_shape")  # as the fx export has a tuple's items
        made(outs[0], len(layers))
        layers.append(layer)
        entries.append(ModuleCall("", index))
        # The other outputs: each a view of the same input (split, chunk), or of the first
        # output (a sort's indices), at no time; the first carries the operation's FLOPs.
        for o in outs[1:]:
            item = {"name": unique(prefix + "getitem"), "kind": "custom",
                    "inputs": inputs if view else [len(layers) - 1],
                    "out_shape": _per_sample(list(o.shape)), "params": [], "fwd_flops": 0.0, "bwd_flops": 0.0,
                    "activation_elems": 0, "attrs": {"view": True}}
            if not view:
                item["in_shape"] = layer["out_shape"]
            made(o, len(layers))
            layers.append(item)
            entries.append(ModuleCall("", -1))

    def module_layer(r: ForwardCall) -> None:
        path, output = r.path, r.output
        out = next(iter(output_tensors(output)), None)
        x = next(iter(output_tensors(r.args)), None)
        if out is None:
            return
        k = seen_calls.get(path, 0)
        seen_calls[path] = k + 1
        producer = producer_of(x) if x is not None else -1
        # A tensor made from constants only (positions from torch.arange), or made where the
        # export saw nothing and without the batch's dimension, is a constant: the module
        # reads no layer, as in the fx export.
        constant = x is not None and producer is None and (id(x) in constants or x.dim() == 0 or
                                                          int(x.shape[0]) != batch)
        in_shape = _per_sample(list(x.shape)) if x is not None and not constant else []
        out_shape = _constant_per_sample(list(out.shape), batch) if constant else _per_sample(list(out.shape))
        if x is not None and producer is None and not constant:
            # made where nothing was seen, from no layer autograd knows: the latest layer of
            # that shape stands for it
            producer = next((i for i in range(len(layers) - 1, -1, -1) if layers[i]["out_shape"] == in_shape),
                            len(layers) - 1)
        lname = unique(path if calls[path] == 1 else "%s_%d" % (path, k + 1))
        if producer is not None and in_shape:
            producer = adapted(producer, in_shape, lname, x._is_view())
        m = modules[path]
        kind = None if constant else _module_kind(m)  # a known kind reads a layer or an input
        attrs = _module_attrs(m, kind) if kind else None
        if attrs is None:
            kind = None
        params = []
        for local, p in m.named_parameters():
            if id(p) in seen_params:
                continue
            seen_params[id(p)] = param_names[id(p)]
            params.append(_param(param_names[id(p)], p, _role(kind or "custom", local)))
        layer: Dict[str, Any] = {"name": lname, "kind": kind or "custom",
                                 "inputs": [] if producer is None else [producer], "out_shape": out_shape,
                                 "params": params}
        if in_shape:
            layer["in_shape"] = in_shape
        if kind and attrs:
            layer["attrs"] = attrs
        if not kind:
            known = _module_flops(m, out_shape)
            elems = float(_numel(out_shape))
            layer["fwd_flops"], layer["bwd_flops"] = known or (elems, elems)
            if known is None:
                info.estimated.append(lname)
            elif _module_class(m):
                layer["attrs"] = {"class": _module_class(m)}
        for o in output_tensors(output):  # a tuple's other tensors read as this layer's too
            made(o, len(layers))
        by_storage[out.data_ptr()] = len(layers)
        layers.append(layer)
        entries.append(ModuleCall(path, k))

    functions = 0
    for r in records:
        if r.path:
            module_layer(r)
        else:
            function_layer(r, functions)
            functions += 1
    _drop_dead_ends(layers, entries, info)
    missing = [param_names[id(p)] for p in model.parameters() if id(p) not in seen_params and p.requires_grad]
    if missing:
        raise ValueError("torch.fx cannot trace this forward (%s), and its real forward used these parameters in no "
                         "module and no torch operation on its inputs: %s (they would never get a gradient: freeze "
                         "them with requires_grad_(False), or remove them)" % (reason, ", ".join(missing[:5])))
    if not layers:
        raise ValueError("torch.fx cannot trace this forward (%s), and it computes nothing from its inputs" % reason)
    _count_estimated(model, None, entries, layers, info, args)
    _check_trains(layers)
    info.fingerprint = fingerprint(trained_tensors(layers))
    doc = _document(model, name, args, _input_names(model, args), layers)
    _gradient_order(model, args, info, _trained_layer_of(layers))
    return doc, info, None, entries


def _drop_dead_ends(layers: List[Dict[str, Any]], entries: List[Any], info: ExportInfo) -> None:
    """Drops the recorded layers whose output nothing reads but a test of control flow
    (`if x.mean() > 0:`): no parameters, not the last layer, no layer reading them; the
    others' inputs renumbered."""
    read = set()
    dead = [False] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        dead[i] = i != len(layers) - 1 and i not in read and not layers[i]["params"]
        if not dead[i]:
            read.update(layers[i]["inputs"])
    if not any(dead):
        return
    index = {}
    for i, d in enumerate(dead):
        if not d:
            index[i] = len(index)
    gone = {layers[i]["name"] for i, d in enumerate(dead) if d}
    layers[:] = [l for l, d in zip(layers, dead) if not d]
    entries[:] = [e for e, d in zip(entries, dead) if not d]
    for l in layers:
        l["inputs"] = [index[i] if i >= 0 else i for i in l["inputs"]]
    info.estimated[:] = [n for n in info.estimated if n not in gone]


def _param(name: str, p: torch.Tensor, role: str) -> Dict[str, Any]:
    """A parameter as the model file lists it; one that does not require a gradient
    (frozen, as a fine-tuned backbone's) is marked so: fuseplan neither allreduces nor
    updates it, and prices only the backward that still runs (docs/formats.md)."""
    entry: Dict[str, Any] = {"name": name, "shape": list(p.shape), "role": role}
    if not p.requires_grad:
        entry["frozen"] = True
    return entry


def trained_tensors(layers: Sequence[Dict[str, Any]]) -> List[Tuple[str, List[int]]]:
    """(name, shape) of the parameters training updates, in the file's order: the tensors a
    plan buckets and the fingerprint covers (frozen ones are neither)."""
    return [(p["name"], p["shape"]) for l in layers for p in l["params"] if not p.get("frozen")]


def _trained_layer_of(layers: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    return {p["name"]: i for i, l in enumerate(layers) for p in l["params"] if not p.get("frozen")}


def _check_trains(layers: Sequence[Dict[str, Any]]) -> None:
    if any(l["params"] for l in layers) and not trained_tensors(layers):
        raise ValueError("every parameter is frozen (requires_grad off): nothing trains, so there is no gradient "
                         "to allreduce")


def input_needs_grad(layers: Sequence[Dict[str, Any]]) -> List[bool]:
    """Per layer: whether training computes its input's gradient, that is whether some
    layer upstream has a parameter that trains (autograd computes nothing else). A layer
    reading only the model input never does; with frozen parameters, no layer before the
    first trained one does either. fuseplan's reading of a model file follows the same
    rule (Layer::backward_share)."""
    trains = [any(not p.get("frozen") for p in l["params"]) for l in layers]
    needs: List[bool] = []
    for k, l in enumerate(layers):
        needs.append(any(i >= 0 and (trains[i] or needs[i]) for i in l.get("inputs", [k - 1])))
    return needs


def _count_estimated(model: nn.Module, gm: Optional[fx.GraphModule], layer_nodes: List[Any],
                     layers: List[Dict[str, Any]], info: ExportInfo, example_inputs: Inputs) -> None:
    """Counts the FLOPs of each estimated layer from the operations torch runs when the
    layer runs alone, forward and backward (its input's gradient only where training
    computes it: input_needs_grad), on the inputs a real training-mode forward of
    `example_inputs` gives it (flops.count_call), and moves it from `info.estimated` to
    `info.counted`. A layer that cannot run alone stays estimated, as does a layer an
    export by modules puts between layers where it saw nothing. The model is left as it
    was."""
    from .flops import count_call     # flops imports this module
    from .profile import captured_calls
    estimated = set(info.estimated)
    wanted = [i for i, l in enumerate(layers)
              if l["name"] in estimated and (gm is not None or layer_nodes[i].call >= 0)]
    if not wanted:
        return
    batch = batch_size(example_inputs)
    needs = input_needs_grad(layers)
    with untouched(model):
        model.train()
        calls = captured_calls(model, gm, layer_nodes, example_inputs)
        for i in wanted:
            fn, args, kwargs = calls[i]
            try:
                fwd, bwd, cls = count_call(fn, args, kwargs, batch, input_grad=needs[i])
            except Exception:  # pylint: disable=broad-except  # any error of the user's layer: left estimated
                continue
            layers[i]["fwd_flops"], layers[i]["bwd_flops"] = fwd, bwd
            if cls:
                layers[i]["attrs"] = {"class": cls}
            info.estimated.remove(layers[i]["name"])
            info.counted.append(layers[i]["name"])


def _is_param(gm: fx.GraphModule, target: str) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def output_tensors(out: Any) -> List[torch.Tensor]:
    """The tensors of a module's output in order: the tensor itself, or those nested in
    tuples, lists and dicts (a segmentation model's {"out": ...})."""
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_tensors(o)]
    return []


@contextlib.contextmanager
def untouched(model: nn.Module) -> Iterator[None]:
    """Runs what it wraps (passes, optimizer steps) on `model` and then puts back its
    parameters, buffers (batch-norm statistics), gradients and train/eval modes as they
    were: exporting or profiling a user's module leaves it as given."""
    # Copied back tensor by tensor, not through load_state_dict, which runs the modules'
    # own loading hooks (torchvision's MNASNet refuses a state without its version). The
    # copies wait in host memory: a model that fills its GPU has no room for a second one.
    def kept(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", copy=True)

    params = [(p, kept(p), kept(p.grad) if p.grad is not None else None) for p in model.parameters()]
    buffers = [(m, name, kept(b), b.device) for m in model.modules() for name, b in m._buffers.items()
               if b is not None]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        with torch.no_grad():
            for p, value, grad in params:
                p.copy_(value)
                p.grad = grad.to(p.device) if grad is not None else None
            for m, name, value, device in buffers:
                current = m._buffers.get(name)
                if current is not None and current.shape == value.shape and current.dtype == value.dtype:
                    current.copy_(value)
                else:  # replaced by one of another shape or type: the original back, where it was
                    m._buffers[name] = value.to(device)
        for m, training in modes:
            m.training = training


def gradient_order(model: nn.Module, example: Inputs) -> List[str]:
    """The parameters that get a gradient from one real forward and backward of `example`,
    in the order their gradients are written. The model is left as it was."""
    names = {id(p): n for n, p in model.named_parameters()}
    order: List[str] = []
    handles = [p.register_hook(lambda g, n=names[id(p)]: order.append(n) or g)
               for p in model.parameters() if p.requires_grad]
    try:
        with untouched(model):
            model.zero_grad(set_to_none=True)
            outputs = output_tensors(call(model, example))
            if not outputs:
                raise ValueError("the module's output holds no tensor to take a gradient from")
            sum(o.float().sum() for o in outputs).backward()
    finally:
        for h in handles:
            h.remove()
    return order


def _gradient_order(model: nn.Module, example: Inputs, info: ExportInfo, layer_of: Dict[str, int]) -> None:
    """Runs one real backward and records the order in which each tensor's gradient is
    written. fuseplan takes a layer's gradients as ready when backward has run the layer
    (in reverse forward order); the order within a layer does not matter to it, so a
    tensor is out of order only when its layer comes before a later layer's gradients."""
    order = gradient_order(model, example)
    info.gradient_order = order
    lowest = None
    for n in order:
        layer = layer_of[n]
        if lowest is not None and layer > lowest:
            info.out_of_order.append(n)
        lowest = layer if lowest is None else min(lowest, layer)
    info.order_matches = not info.out_of_order and len(order) == len(layer_of)


_STREAM_NAMES = ("/dev/stdout", "/dev/stderr")      # this process's standard streams by name,
_STREAM_DIRS = ("/dev/fd/", "/proc/self/fd/")      # and by descriptor
_STDOUT_NAMES = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def _stream_name(path: str) -> str:
    import os
    return os.path.normpath(os.path.abspath(path))


def written_through(path: str) -> bool:
    """/dev/null, a FIFO, a device (an existing file that is not a regular one), and this
    process's standard streams by name (/dev/stdout, /dev/fd/N, ...) are written through,
    never replaced by a rename (as root that would put a regular file where /dev/null was)."""
    import os
    import stat
    name = _stream_name(path)
    if name in _STREAM_NAMES or name.startswith(_STREAM_DIRS):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def same_output(path: str, other: str) -> bool:
    """Whether output `path` would replace file `other` (another output, or an input):
    the same file after links, unless `path` is written through (any number of outputs
    may go to /dev/null)."""
    import os
    return not written_through(path) and os.path.realpath(path) == os.path.realpath(other)


def write_json(doc: Dict[str, Any], path: str) -> None:
    """Writes through a temporary file and a rename: an interrupted write leaves no half file.
    A symbolic link keeps being one (the file it names is replaced); /dev/null and the like
    are written through (written_through), standard output through sys.stdout."""
    import os
    import sys
    import tempfile
    text = json.dumps(doc, indent=1) + "\n"
    if written_through(path):
        if _stream_name(path) in _STDOUT_NAMES:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            with open(path, "a") as f:
                f.write(text)
        return
    path = os.path.realpath(path)  # a link's file, not the link
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fuseplan-", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp's is private to its owner)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
