"""FLOPs of a layer the export has no formula for, counted from the operations torch runs.

A custom layer whose FLOPs do not follow from its kind and shapes (a leaf module such as
nn.Conv1d, nn.LSTM or nn.TransformerEncoder, which torch.fx does not trace into, or a
function the export does not know) is run once forward and once backward on the
export's example batch under a dispatch mode that sees every ATen operation torch
executes, and each operation is counted from its shapes with the conventions of
fuseplan's builder: a multiply-add counts 2, a normalisation 8 per element forward and 16
backward, a softmax 5 per element each way, any other operation that writes a tensor one
per element written (a reduction: per element read), a view, an allocation or a
metadata query 0. Convolutions of any dimension, plain or transposed, matrix products,
torch 2's fused attention and oneDNN's RNN layer are exact in their products; the rest
follows the convention. The count is per sample: the
batch's count over its batch size.

It runs on torch 1.13 (torch.utils._python_dispatch.TorchDispatchMode, then private) and
on torch 2.x alike; torch 2's own torch.utils.flop_counter counts matrix products,
convolutions and attention only, and is not used so that every torch version counts the
same way.

Each operation also has a class of kernels (fuseplan's compute classes: a convolution by
its shape as fuseplan classes a conv2d, a matrix product a gemm, a batched one and fused
attention attention's, a norm, pooling, an embedding lookup; anything else, element-wise
work, `other`, as model_export.CUSTOM_OTHER says why), and the layer takes the class of
most of its FLOPs: a counted nn.LSTM or nn.TransformerEncoder is priced as the gemm it
mostly is, not as `other`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .model_export import CUSTOM_OTHER, output_tensors
from .profile import fresh

_NORM_FWD_PER_ELEM, _NORM_BWD_PER_ELEM = 8, 16   # as fuseplan's builder counts a norm
_SOFTMAX_PER_ELEM = 5                              # max, sub, exp, sum, div

_NORMS = {"native_layer_norm", "native_batch_norm", "native_group_norm", "_native_batch_norm_legit",
          "_native_batch_norm_legit_no_training", "native_instance_norm"}
_NORM_BACKWARDS = {"native_layer_norm_backward", "native_batch_norm_backward", "native_group_norm_backward",
                   "cudnn_batch_norm_backward", "miopen_batch_norm_backward"}
_SOFTMAXES = {"_softmax", "_safe_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "prod", "norm", "linalg_vector_norm", "var", "std",
               "var_mean", "std_mean", "logsumexp", "any", "all", "argmax", "argmin", "cumsum", "cumprod"}
# Operations that allocate, fill nothing worth counting, or only describe tensors.
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "ones",
         "ones_like", "full", "full_like", "new_zeros", "new_ones", "new_full", "scalar_tensor", "is_same_size",
         "detach", "lift_fresh", "lift_fresh_copy", "_local_scalar_dense", "item", "_to_copy", "resize_",
         "set_", "alias", "_unsafe_view", "_reshape_alias", "expand", "as_strided", "view", "t", "transpose",
         "permute", "select", "slice", "unbind", "split", "split_with_sizes", "unsafe_split", "chunk",
         "squeeze", "unsqueeze", "_unsafe_index", "diagonal", "unfold"}


def _numel(t: Any) -> int:
    return int(t.numel()) if torch.is_tensor(t) else 0


def _tensors(v: Any) -> Sequence[torch.Tensor]:
    if torch.is_tensor(v):
        return [v]
    if isinstance(v, (tuple, list)):
        return [t for x in v for t in _tensors(x)]
    return []


def _conv_flops(grad_or_out: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, transposed: bool) -> float:
    """A convolution's multiply-adds, times 2: each element of the (untransposed) output
    sums in_channels / groups x kernel products, and a transposed convolution is the
    backward of a plain one, so its input plays that part. Any number of dimensions."""
    per_output = _numel(weight) // max(1, int(weight.shape[0]))  # in/groups x kernel (transposed: out/groups x kernel)
    return 2.0 * (_numel(inp) if transposed else _numel(grad_or_out)) * per_output


def _attention_flops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    """Q K^T and A V over [..., L, E] x [..., S, E] x [..., S, Ev], and the softmax."""
    batch = math.prod(q.shape[:-2])
    length, source, e, ev = int(q.shape[-2]), int(k.shape[-2]), int(q.shape[-1]), int(v.shape[-1])
    return 2.0 * batch * length * source * (e + ev) + _SOFTMAX_PER_ELEM * batch * length * source


_CONVOLUTIONS = {"convolution", "_convolution", "cudnn_convolution", "mkldnn_convolution", "convolution_backward"}
_POOLS = ("max_pool", "avg_pool", "adaptive_max_pool", "adaptive_avg_pool")


def _conv_class(name: str, args: Sequence[Any]) -> str:
    """A convolution's class, as fuseplan classes a conv2d (compute_class_of): grouped, a
    stem of at most 4 input channels, a 1x1 kernel, a square kernel of 3 or more with stride
    1 and no dilation, any other. Any number of dimensions."""
    backward = name == "convolution_backward"
    weight = args[2] if backward else args[1]
    stride, dilation, groups = (args[4], args[6], args[9]) if backward else \
        ((args[3], args[5], args[8]) if name in ("convolution", "_convolution") and len(args) > 8 else (1, 1, 1))
    kernel = [int(k) for k in weight.shape[2:]]
    stride = list(stride) if isinstance(stride, (list, tuple)) else [stride]
    dilation = list(dilation) if isinstance(dilation, (list, tuple)) else [dilation]
    if int(groups) > 1:
        return "conv_grouped"
    if int(weight.shape[1]) <= 4:
        return "conv_stem"
    if all(k == 1 for k in kernel):
        return "conv_1x1"
    if len(set(kernel)) == 1 and kernel[0] >= 3 and all(int(s) == 1 for s in stride) and \
            all(int(d) == 1 for d in dilation):
        return "conv_kxk_s1"
    return "conv_kxk"


def op_class(name: str, args: Sequence[Any]) -> Optional[str]:
    """The class of kernels of one ATen operation (as op_flops names it); None for one that
    computes nothing."""
    if name in ("mm", "addmm", "addbmm", "mkldnn_rnn_layer", "mkldnn_rnn_layer_backward"):
        return "gemm"
    if name in ("bmm", "baddbmm") or name.startswith("_scaled_dot_product"):
        return "attention"
    if name in _CONVOLUTIONS:
        return _conv_class(name, args)
    if name in _NORMS or name in _NORM_BACKWARDS:
        return "norm"
    if name.lstrip("_").startswith(_POOLS):
        return "pool"
    if name.startswith("embedding"):
        return "embedding"
    if name in _FREE:
        return None
    return CUSTOM_OTHER


def op_flops(name: str, args: Sequence[Any], out: Any) -> float:
    """The FLOPs of one ATen operation (`name` without namespace and overload) from its
    arguments and result, with this module's conventions."""
    if name in ("mm", "bmm"):  # each output element sums K products
        return 2.0 * _numel(out) * int(args[0].shape[-1])
    if name in ("addmm", "baddbmm"):  # the same, and the added term
        return 2.0 * _numel(out) * int(args[1].shape[-1]) + _numel(out)
    if name == "addbmm":  # B products [M, K] x [K, N] summed into one [M, N], and the added term
        return 2.0 * _numel(args[1]) * int(out.shape[-1]) + _numel(out)
    if name in ("convolution", "_convolution", "cudnn_convolution", "mkldnn_convolution"):
        inp, weight = args[0], args[1]
        transposed = bool(args[6]) if name in ("convolution", "_convolution") and len(args) > 6 else False
        bias = args[2] if len(args) > 2 and torch.is_tensor(args[2]) else None
        return _conv_flops(out, inp, weight, transposed) + (_numel(out) if bias is not None else 0)
    if name == "convolution_backward":
        grad, inp, weight, transposed, mask = args[0], args[1], args[2], bool(args[7]), args[10]
        one = _conv_flops(grad, inp, weight, transposed)
        return one * bool(mask[0]) + one * bool(mask[1]) + _numel(grad) * bool(mask[2])
    if name.startswith("_scaled_dot_product"):  # torch 2's fused attention, q, k, v as [..., L, E]
        backward = name.endswith("_backward")
        q, k, v = (args[1], args[2], args[3]) if backward else (args[0], args[1], args[2])
        f = _attention_flops(q, k, v)
        return 2 * f - _SOFTMAX_PER_ELEM * math.prod(q.shape[:-1]) * int(k.shape[-2]) if backward else f
    if name in ("mkldnn_rnn_layer", "mkldnn_rnn_layer_backward"):
        # oneDNN's RNN layer, one layer and direction (torch 2's nn.LSTM on the CPU; torch
        # 1.13 runs it as matrix products and element-wise operations, counted one by one):
        # every step's input and hidden state times their weights, exactly, and 3 element-wise
        # operations per gate element (bias adds, activation, state update); backward the
        # products twice (the inputs' and the weights' gradients).
        inp, w_ih, w_hh = args[0], args[1], args[2]
        rows = _numel(inp) // max(1, int(inp.shape[-1]))  # steps x batch
        products = 2.0 * rows * (_numel(w_ih) + _numel(w_hh))
        return (2 if name.endswith("_backward") else 1) * products + 3.0 * rows * int(w_ih.shape[0])
    if name in _NORMS:
        return _NORM_FWD_PER_ELEM * _numel(args[0])
    if name in _NORM_BACKWARDS:
        return _NORM_BWD_PER_ELEM * _numel(args[0])
    if name in _SOFTMAXES:
        return _SOFTMAX_PER_ELEM * _numel(args[0])
    if name in _FREE:
        return 0.0
    written = sum(_numel(t) for t in _tensors(out))
    if name in _REDUCTIONS:
        return float(max(_numel(args[0]) if args else 0, written))
    return float(written)


class OpCounter(TorchDispatchMode):
    """Adds up op_flops over every ATen operation run while it is active, in all and per
    class (op_class)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0.0
        self.by_class: Dict[str, float] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Optional[Dict] = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        schema = getattr(func, "_schema", None)
        returns = schema.returns if schema is not None else []
        alias = returns[0].alias_info if returns else None
        if alias is not None and not alias.is_write:
            return out  # a view of an input: nothing computed
        if name.endswith("_") and not name.endswith("__"):
            name = name[:-1]  # in place (add_, sigmoid_): counted as the operation it is
        every = list(args) + list((kwargs or {}).values())
        flops = op_flops(name, every, out)
        self.flops += flops
        cls = op_class(name, every)
        if cls is not None and flops > 0:
            self.by_class[cls] = self.by_class.get(cls, 0.0) + flops
        return out


def count_call(fn: Callable, args: Sequence[Any], kwargs: Dict[str, Any], batch: int,
               input_grad: bool = True) -> Tuple[float, float, Optional[str]]:
    """Forward and backward FLOPs per sample of one call of a layer on a batch of `batch`
    samples: its forward, then the backward of all its outputs that carry a gradient
    (every element's gradient 1) to the parameters that train and, with `input_grad`, to
    its floating-point inputs (as training does where a layer upstream trains); and the
    class of most of those FLOPs (None where that is `other`, or it computes nothing).
    Raises what the call raises."""
    args, kwargs = fresh(args, input_grad), {k: fresh(v, input_grad) for k, v in kwargs.items()}
    forward = OpCounter()
    with forward:
        out = fn(*args, **kwargs)
    outs = [t for t in output_tensors(out) if t.requires_grad]
    seeds = [torch.ones_like(t) for t in outs]  # outside the counter: not the layer's work
    backward = OpCounter()
    if outs:
        with backward:
            torch.autograd.backward(outs, seeds)
    by_class = dict(forward.by_class)
    for cls, flops in backward.by_class.items():
        by_class[cls] = by_class.get(cls, 0.0) + flops
    main = max(sorted(by_class), key=lambda c: by_class[c]) if by_class else None
    return forward.flops / batch, backward.flops / batch, main if main != CUSTOM_OTHER else None
