"""fuseplan's flags for the step an optimizer runs (docs/costmodel.md, "the optimizer step"):
its update rule (--optimizer) and how it is launched (--optimizer-kernels), read from the
optimizer object, so that a prediction prices the step the job will take."""
from typing import Any, List

import torch

# The update rules fuseplan prices, by the class that runs them: torch.optim's and apex's.
_RULES = {
    "SGD": "sgd",
    "Adam": "adam",
    "AdamW": "adam",
    "FusedSGD": "sgd",
    "FusedAdam": "adam",
    "FusedLAMB": "lamb",
    "FusedLAMBAMP": "lamb",
}


def _torch_major() -> int:
    return int(torch.__version__.split(".")[0])


def _launch(optimizer: Any) -> str:
    """fused, foreach or per-tensor: how the optimizer's step launches its kernels."""
    if type(optimizer).__module__.startswith("apex."):
        return "fused"  # apex's optimizers are multi-tensor kernels
    group = optimizer.param_groups[0] if optimizer.param_groups else {}
    if group.get("fused"):
        return "fused"
    foreach = group.get("foreach")
    if foreach is None:
        # torch 1.x runs the single-tensor loop unless asked; torch 2 picks foreach when
        # every parameter is on a GPU (torch.optim.optimizer._default_to_fused_or_foreach).
        on_gpu = all(p.is_cuda for g in optimizer.param_groups for p in g["params"])
        foreach = _torch_major() >= 2 and on_gpu
    return "foreach" if foreach else "per-tensor"


def optimizer_flags(optimizer: Any) -> List[str]:
    """The fuseplan flags (`--optimizer RULE --optimizer-kernels LAUNCH`) for the step
    `optimizer` runs: torch.optim.SGD, Adam and AdamW (single-tensor loop, foreach or
    fused, as its options and the torch version choose) and apex's FusedSGD, FusedAdam and
    FusedLAMB. ValueError naming the class for any other: price it with
    `--optimizer-bytes B --optimizer-kernels per-tensor:N` counted from its code."""
    name = type(optimizer).__name__
    rule = _RULES.get(name)
    if rule is None:
        raise ValueError("fuseplan_torch.optimizer_flags: %s.%s is not an update rule fuseplan prices (%s); give "
                         "--optimizer-bytes and --optimizer-kernels per-tensor:N counted from its code"
                         % (type(optimizer).__module__, name, ", ".join(sorted(_RULES))))
    launch = _launch(optimizer)
    if rule == "lamb" and launch != "fused":
        raise ValueError("fuseplan_torch.optimizer_flags: %s runs per tensor; fuseplan prices LAMB fused only" % name)
    flags = ["--optimizer", rule, "--optimizer-kernels", launch]
    if rule == "adam" and launch != "fused" and _torch_major() >= 2:
        # torch 2's Adam and AdamW update the first moment with one lerp_ (reads the moment
        # and the gradient, writes the moment: 12 B) where 1.13 ran mul_ and add_ (20 B):
        # 84 B per parameter, and 9 kernels per tensor in the single-tensor loop.
        flags = ["--optimizer", rule, "--optimizer-kernels", "per-tensor:9" if launch == "per-tensor" else launch,
                 "--optimizer-bytes", "84"]
    return flags
