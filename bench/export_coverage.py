#!/usr/bin/python3
"""How much of torchvision's model zoo the PyTorch bridge imports: each model exported by
fuseplan_torch (torch.fx, or its leaf modules where fx cannot trace), read back by
`fuseplan show`, with its parameters, forward FLOPs per sample, the layers whose FLOPs
were counted from the operations torch runs (no formula for their kind: the video models'
3-D convolutions) and those whose FLOPs are estimated (one per output element). With
--record, each model is also exported from a record of one forward (the path a forward
fx cannot trace takes), and that export's layers and FLOPs are printed beside the trace's.
Not a test; it prints a table.

    bench/export_coverage.py [--models m1,m2,...] [--resolution 224] [--record]

Runs with Debian's /usr/bin/python3 (python3-torch, python3-torchvision).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

from benchlib import require_binary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

MODELS = ("resnet50", "inception_v3", "googlenet", "densenet121", "mobilenet_v2", "mobilenet_v3_small",
          "efficientnet_b0", "shufflenet_v2_x1_0", "squeezenet1_0", "mnasnet0_5", "regnet_y_400mf", "resnext50_32x4d",
          "wide_resnet50_2", "convnext_tiny", "vit_b_16", "swin_t", "segmentation.deeplabv3_resnet50",
          "video.r3d_18", "video.r2plus1d_18")
# What the constructors need beyond their defaults to train as exported (no auxiliary heads).
KWARGS = {"inception_v3": {"aux_logits": False, "init_weights": False},
          "googlenet": {"aux_logits": False, "init_weights": False},
          "segmentation.deeplabv3_resnet50": {"weights": None, "weights_backbone": None, "aux_loss": False}}
# Per-sample input shapes other than 3 x resolution x resolution: torchvision's video
# models take 16-frame clips of 112 x 112 (their weights' clip_len and crop).
INPUT = {"inception_v3": (3, 299, 299), "video.r3d_18": (3, 16, 112, 112), "video.r2plus1d_18": (3, 16, 112, 112)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--record", action="store_true",
                    help="also export each model from a record of one forward (export_by_modules) and compare")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "release", "cli", "fuseplan"))
    a = ap.parse_args()
    require_binary(a.bin, "export_coverage")
    import torch
    import torchvision
    from fuseplan_torch import export_model, write_json

    print("%-32s %-7s %7s %12s %10s %7s %9s  %s" % ("model", "traced", "layers", "parameters", "fwd GFLOP", "counted",
                                                     "estimated", "fuseplan reads it") +
          ("   recorded: layers  fwd GFLOP  vs traced" if a.record else ""))
    with tempfile.TemporaryDirectory() as work:
        for name in a.models.split(","):
            factory = torchvision.models
            for part in name.split("."):
                factory = getattr(factory, part)
            model = factory(**KWARGS.get(name, {}))
            shape = INPUT.get(name, (3, a.resolution, a.resolution))
            try:
                doc, info, _, _ = export_model(model, torch.randn(2, *shape), name=name)
            except ValueError as e:
                print("%-32s refused: %s" % (name, str(e)[:100]))
                continue
            path = os.path.join(work, name + ".json")
            write_json(doc, path)
            show = subprocess.run([a.bin, "show", path, "--json"], capture_output=True, text=True)
            if show.returncode != 0:
                print("%-32s %-7s %7d %12s %10s %7d %9d  no: %s" % (name, info.method, len(doc["layers"]), "-", "-",
                                                                    len(info.counted), len(info.estimated),
                                                                    show.stderr.strip()[:80]))
                continue
            read = json.loads(show.stdout)
            params = sum(p.numel() for p in model.parameters())
            placed = sum(_numel(t["shape"]) for l in read["layers"] for t in l["params"])
            gflops = sum(l["fwd_flops"] for l in read["layers"]) / 1e9
            line = "%-32s %-7s %7d %12s %10.2f %7d %9d  yes%s" % (
                name, info.method, len(read["layers"]), f"{params:,}", gflops, len(info.counted), len(info.estimated),
                "" if placed == params else " (parameters differ!)")
            if a.record:
                line += "   " + _recorded(a.bin, model, shape, name, work, gflops)
            print(line)
    print("(fwd GFLOP: fuseplan's count at the input size, a multiply-add is 2; counted: custom layers whose FLOPs "
          "torch's operations gave; estimated: custom layers whose FLOPs are one per output element, which a "
          "--profile measures)" + ("; recorded: the model exported from a record of one forward, the path a forward "
                                   "torch.fx cannot trace takes, against the trace" if a.record else ""))


def _recorded(fuseplan, model, shape, name, work, traced_gflops):
    """The model exported from a record of one forward, as fuseplan reads it: its layers,
    forward GFLOP and their ratio to the trace's."""
    import torch
    from fuseplan_torch import write_json
    from fuseplan_torch.model_export import export_by_modules
    try:
        doc, info, _, _ = export_by_modules(model, torch.randn(2, *shape), name=name)
    except ValueError as e:
        return "refused: %s" % str(e)[:80]
    path = os.path.join(work, name + "-recorded.json")
    write_json(doc, path)
    show = subprocess.run([fuseplan, "show", path, "--json"], capture_output=True, text=True)
    if show.returncode != 0:
        return "not read: %s" % show.stderr.strip()[:80]
    read = json.loads(show.stdout)
    gflops = sum(l["fwd_flops"] for l in read["layers"]) / 1e9
    return "%6d %10.2f %+9.2f %%%s" % (len(read["layers"]), gflops, 100 * (gflops / traced_gflops - 1),
                                      " (%d estimated)" % len(info.estimated) if info.estimated else "")


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    main()
