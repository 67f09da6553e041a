"""fuseplan for PyTorch: export a module as a fuseplan model with measured layer times, run a
fuseplan plan inside a torch.distributed job, and write what it measured for `fuseplan
verify` (docs/pytorch.md)."""
from .model_export import ExportInfo, export_model, fingerprint, trace, write_json

__all__ = ["ExportInfo", "export_model", "fingerprint", "trace", "write_json"]
