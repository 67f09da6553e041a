#!/usr/bin/env python3
"""Single-GPU training throughput of PyTorch on the model fuseplan-exec trains, for the
side-by-side in docs/gpu.md: torchvision ResNet-50 (or another), channels-last, AMP
(fp16 with a GradScaler, or bf16) or TF32 FP32, SGD with momentum, synthetic data
already on the GPU, the same batch. Prints images/s over the timed steps.

  python3 bench/gpu_vs_pytorch.py --model resnet50 --batch 64 --precision fp16
"""
import argparse
import time

import torch
import torchvision


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp16")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--channels-last", type=int, default=1)
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cuda")
    model = getattr(torchvision.models, a.model)(num_classes=a.classes).to(dev)
    fmt = torch.channels_last if a.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=a.precision == "fp16")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(a.precision)
    x = torch.randn(a.batch, 3, a.resolution, a.resolution, device=dev).to(memory_format=fmt)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / a.steps
    print(f"pytorch {torch.__version__} {a.model} batch {a.batch} {a.precision} channels_last={a.channels_last}: "
          f"{dt * 1e3:.1f} ms/step, {a.batch / dt:.0f} images/s")


if __name__ == "__main__":
    main()
