"""A model's inputs for one forward: one tensor (images, token ids), several passed
positionally in that order (token ids and an attention mask, token types), or several
passed by keyword (a dict of the forward's parameter names, as Hugging Face's data
collators make), each with the batch as its first dimension. The model file lists the
first as `input_shape` and the others as `extra_inputs` (docs/formats.md)."""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

Inputs = Union[torch.Tensor, Tuple[torch.Tensor, ...], Mapping[str, torch.Tensor]]


class Keywords(tuple):
    """Inputs passed by keyword: the tensors in the order given, and their parameter names."""

    names: Tuple[str, ...]

    def __new__(cls, tensors: Sequence[torch.Tensor], names: Sequence[str]) -> "Keywords":
        self = super().__new__(cls, tensors)
        self.names = tuple(names)
        return self

    def __reduce__(self) -> Any:  # to the ranks
        return (Keywords, (tuple(self), self.names))

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return dict(zip(self.names, self))


def as_args(inputs: Any) -> Tuple[torch.Tensor, ...]:
    """`inputs` as the tensors of a forward, in order: a tensor, a non-empty tuple or list
    of tensors (positional), or a non-empty dict of tensors by parameter name (Keywords),
    all of one batch size. Raises ValueError otherwise."""
    if isinstance(inputs, Keywords):
        args: Tuple[torch.Tensor, ...] = inputs
    elif torch.is_tensor(inputs):
        args = (inputs,)
    elif isinstance(inputs, (tuple, list)) and inputs and all(torch.is_tensor(t) for t in inputs):
        args = tuple(inputs)
    elif isinstance(inputs, Mapping) and inputs and all(isinstance(k, str) and torch.is_tensor(t)
                                                        for k, t in inputs.items()):
        args = Keywords(list(inputs.values()), list(inputs.keys()))
    else:
        raise ValueError("the model's inputs must be a tensor, a non-empty tuple of tensors or a dict of them by "
                         "the forward's parameter names (got %s)" % _describe(inputs))
    if args[0].dim() == 0:
        raise ValueError("input %s is a scalar: every input's first dimension is the batch" % input_label(args, 0))
    for k, t in enumerate(args[1:], 1):
        if t.dim() == 0 or t.shape[0] != args[0].shape[0]:
            raise ValueError("input %s has shape %s: every input's first dimension is the batch (input %s's is %d)"
                             % (input_label(args, k), list(t.shape), input_label(args, 0), args[0].shape[0]))
    return args


def input_label(args: Tuple[torch.Tensor, ...], k: int) -> str:
    """Input k as messages name it: its number, or its keyword."""
    return "'%s'" % args.names[k] if isinstance(args, Keywords) else str(k)


def _describe(inputs: Any) -> str:
    if isinstance(inputs, (tuple, list)):
        return "a %s of %s" % (type(inputs).__name__, ", ".join(type(t).__name__ for t in inputs) or "nothing")
    if isinstance(inputs, Mapping):
        return "a %s of %s" % (type(inputs).__name__, ", ".join(
            "%r: %s" % (k, type(t).__name__) for k, t in inputs.items()) or "nothing")
    return "a %s" % type(inputs).__name__


def call(module: Any, inputs: Inputs) -> Any:
    """The module's forward on the inputs: positionally, or by keyword."""
    args = as_args(inputs)
    if isinstance(args, Keywords):
        return module(**args.as_dict())
    return module(*args)


def forward_parameters(model: nn.Module) -> Optional[List[inspect.Parameter]]:
    """The parameters of the module's forward, in order; None where Python cannot tell."""
    try:
        return list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None


def check_keywords(model: nn.Module, inputs: Inputs) -> None:
    """Raises ValueError where inputs by keyword do not fit the forward: a name it does not
    take, or a parameter of it without a default that they leave out."""
    args = as_args(inputs)
    if not isinstance(args, Keywords):
        return
    params = forward_parameters(model)
    if params is None:
        return
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not any(p.kind == p.VAR_KEYWORD for p in params):
        unknown = [n for n in args.names if n not in {p.name for p in named}]
        if unknown:
            raise ValueError("input '%s' is no parameter of %s.forward (its parameters: %s)" % (
                unknown[0], type(model).__name__, ", ".join(p.name for p in named) or "none by name"))
    missing = [p.name for p in params if p.default is p.empty and p.name not in args.names and
               p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise ValueError("the inputs leave out '%s', which %s.forward needs (it has no default)"
                         % (missing[0], type(model).__name__))


def _like(args: Tuple[torch.Tensor, ...], tensors: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
    """`tensors` passed as `args` are: by the same keywords, or positionally."""
    return Keywords(tensors, args.names) if isinstance(args, Keywords) else tuple(tensors)


def batch_size(inputs: Inputs) -> int:
    return int(as_args(inputs)[0].shape[0])


def to_device(inputs: Inputs, device: torch.device) -> Tuple[torch.Tensor, ...]:
    args = as_args(inputs)
    return _like(args, [t.to(device) for t in args])


def first_samples(inputs: Inputs, n: int) -> Tuple[torch.Tensor, ...]:
    """The first `n` samples of every input."""
    args = as_args(inputs)
    return _like(args, [t[:n] for t in args])
