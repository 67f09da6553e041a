"""fuseplan for PyTorch: export a module as a fuseplan model with measured layer times, run a
fuseplan plan inside a torch.distributed job, and write what it measured for `fuseplan
verify` (docs/pytorch.md)."""
from typing import Optional

import torch

from .heap import keep_heap
from .inputs import Inputs
from .model_export import ExportInfo, export_model, fingerprint, trace, write_json
from .optimizer import optimizer_flags
from .profile import fit_to_whole_pass, profile_layers


def export(model: torch.nn.Module, example_inputs: Inputs, path: str, profile: Optional[str] = None,
           name: Optional[str] = None, profile_inputs: Optional[Inputs] = None, warmup: int = 3,
           steps: int = 10, fit_whole_pass: bool = True) -> ExportInfo:
    """Writes `model` as fuseplan.model/1 to `path` and, with `profile`, its measured layer
    times as fuseplan.profile/1 (at the batch of `profile_inputs`, else of
    `example_inputs`; each a tensor, a tuple of tensors passed to the forward in order, or a
    dict of them passed by keyword;
    fitted to the whole model's forward and backward unless `fit_whole_pass` is False).
    Both files are written only once everything is measured."""
    doc, info, gm, nodes = export_model(model, example_inputs, name)
    outputs = [(path, doc)]
    if profile:
        batch = profile_inputs if profile_inputs is not None else example_inputs
        prof, _ = profile_layers(model, gm, nodes, doc, info.fingerprint, batch, warmup, steps,
                                 torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                 fit_whole_pass=fit_whole_pass)
        outputs.append((profile, prof))
    for p, d in outputs:
        write_json(d, p)
    return info


__all__ = ["ExportInfo", "export", "export_model", "fingerprint", "fit_to_whole_pass", "keep_heap", "optimizer_flags",
           "profile_layers", "trace", "write_json"]
