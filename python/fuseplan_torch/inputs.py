"""A model's inputs for one forward: one tensor (images, token ids) or several (token ids
and an attention mask, token types), passed to `forward` positionally in that order, each
with the batch as its first dimension. The model file lists the first as `input_shape`
and the others as `extra_inputs` (docs/formats.md)."""
from __future__ import annotations

from typing import Any, Tuple, Union

import torch

Inputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


def as_args(inputs: Any) -> Tuple[torch.Tensor, ...]:
    """`inputs` as the positional arguments of a forward: a tensor, or a non-empty tuple or
    list of tensors of one batch size. Raises ValueError otherwise."""
    if torch.is_tensor(inputs):
        args: Tuple[torch.Tensor, ...] = (inputs,)
    elif isinstance(inputs, (tuple, list)) and inputs and all(torch.is_tensor(t) for t in inputs):
        args = tuple(inputs)
    else:
        raise ValueError("the model's inputs must be a tensor or a non-empty tuple of tensors (got %s)"
                         % _describe(inputs))
    if args[0].dim() == 0:
        raise ValueError("input 0 is a scalar: every input's first dimension is the batch")
    for k, t in enumerate(args[1:], 1):
        if t.dim() == 0 or t.shape[0] != args[0].shape[0]:
            raise ValueError("input %d has shape %s: every input's first dimension is the batch (input 0's is %d)"
                             % (k, list(t.shape), args[0].shape[0]))
    return args


def _describe(inputs: Any) -> str:
    if isinstance(inputs, (tuple, list)):
        return "a %s of %s" % (type(inputs).__name__, ", ".join(type(t).__name__ for t in inputs) or "nothing")
    return "a %s" % type(inputs).__name__


def batch_size(inputs: Inputs) -> int:
    return int(as_args(inputs)[0].shape[0])


def to_device(inputs: Inputs, device: torch.device) -> Tuple[torch.Tensor, ...]:
    return tuple(t.to(device) for t in as_args(inputs))


def first_samples(inputs: Inputs, n: int) -> Tuple[torch.Tensor, ...]:
    """The first `n` samples of every input."""
    return tuple(t[:n] for t in as_args(inputs))
