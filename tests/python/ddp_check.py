"""Rank functions for the PlanDDP tests (importable by the spawned processes)."""
import contextlib
import json
from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.nn as nn

from fuseplan_torch.inputs import call, first_samples
from fuseplan_torch.model_export import export_model, trained_tensors
from fuseplan_torch.plan_ddp import PlanDDP, PlanError, exported_ddp, grads_sharing_storage

import tiny_bert


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(16, 10))


def plan_for(model: nn.Module, example, buckets, ranks: int):
    doc, info, _, _ = export_model(model, example, name="small_cnn")
    names = [name for name, _ in trained_tensors(doc["layers"])]  # frozen ones are in no bucket
    plan = {"schema": "fuseplan.plan/1", "model": {"name": "small_cnn", "tensors": len(names),
            "params": sum(p.numel() for p in model.parameters() if p.requires_grad), "fingerprint": info.fingerprint},
            "cluster": "local-cpu", "gpus": ranks, "batch_per_gpu": 4, "compute": "fp32", "strategy": "test",
            "buckets": [{"begin": b, "end": e, "algorithm": "ring", "stream": s, "transfer": t, "pack": False}
                        for b, e, s, t in buckets]}
    return plan, names


def backend_sums(rank: int, ranks: int, out_path: str, dtype: str) -> None:
    """Whether the process group sums a tensor of `dtype` (a name: float16, bfloat16),
    asked of the backend directly: {"sums": bool, "error": its message or null}. On a group
    of its own, as PlanDDP probes: torch 1.13's gloo raises a failed collective's error
    again at its group's next barrier, now and then."""
    t = torch.ones(8, dtype=getattr(torch, dtype))
    group = dist.new_group(list(range(ranks)))
    try:
        dist.all_reduce(t, group=group)
        result = {"sums": bool((t.float() == ranks).all()), "error": None}
    except RuntimeError as e:
        result = {"sums": False, "error": str(e)}
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(result, f)


def _model_and_batch(model: str, rank: int):
    """A fresh model and a batch of 4 samples for this rank: `small_cnn` (one input),
    `tiny_bert` (token ids, an attention mask and token types), or `tiny_bert_keywords`
    (token ids and token types by keyword, no mask: tiny_bert_keyword_inputs)."""
    if model.startswith("tiny_bert"):
        make = tiny_bert.tiny_bert_keyword_inputs if model == "tiny_bert_keywords" else tiny_bert.tiny_bert_inputs
        x = make(4, torch.Generator().manual_seed(10 + rank))
        return tiny_bert.tiny_bert, x, torch.randint(0, 3, (4,), generator=torch.Generator().manual_seed(20 + rank))
    x = (torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + rank)),)
    return small_cnn, x, torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(20 + rank))


def compare_with_ddp(rank: int, ranks: int, out_path: str, buckets, set_to_none: bool = True,
                     engine: str = "auto", views: bool = False, frozen: int = 0, model: str = "small_cnn") -> None:
    """Gradients of one step under PlanDDP and under torch DDP, same weights and data: per
    tensor the largest difference and DDP's largest gradient, after two steps that zero the
    gradients first (set_to_none) or accumulate them (both average what .grad holds). The
    first `frozen` parameters are frozen in both (requires_grad off, as in fine-tuning);
    those without a gradient in both are listed (`no_grad`). `model`: small_cnn, tiny_bert
    or tiny_bert_keywords (_model_and_batch). A refused plan is written as {"error": message}."""
    torch.manual_seed(0)
    factory, x, y = _model_and_batch(model, rank)
    ref = factory()
    mine = factory()
    mine.load_state_dict(ref.state_dict())
    for m in (ref, mine):
        for p in list(m.parameters())[:frozen]:
            p.requires_grad_(False)
    plan, names = plan_for(mine, first_samples(x, 2), buckets, ranks)
    ddp = nn.parallel.DistributedDataParallel(ref)
    for step in range(2):
        if set_to_none:
            ref.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(call(ddp, x), y).backward()
    try:
        pddp = PlanDDP(mine, plan, names, engine=engine, gradient_as_bucket_view=views)
    except PlanError as e:
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump({"error": str(e)}, f)
        return
    for step in range(2):
        if set_to_none:
            mine.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(call(pddp, x), y)
        pddp.start_backward()
        loss.backward()
    pddp.close()
    ref_grads = dict(ref.named_parameters())
    no_grad = [n for n, p in mine.named_parameters() if p.grad is None and ref_grads[n].grad is None]
    diffs = {n: (float((p.grad - ref_grads[n].grad).abs().max()), float(ref_grads[n].grad.abs().max()))
             for n, p in mine.named_parameters() if n not in no_grad}
    events = [{"ready": b.ready_s, "start": b.start_s, "end": b.end_s} for b in pddp.steps[-1].resolve().buckets]
    # PlanDDP keeps every .grad a tensor of its own, as DDP's default does (not a view of
    # its bucket: docs/pytorch.md) unless `views`; how many .grad share another's storage.
    shared = grads_sharing_storage(mine)
    gathered = [None] * ranks
    dist.all_gather_object(gathered, {"diffs": diffs, "events": events, "engine": pddp.engine, "shared": shared,
                                      "no_grad": no_grad})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)


def compare_accumulated(rank: int, ranks: int, out_path: str, no_sync: bool, engine: str) -> None:
    """Gradients after 3 micro-batches of other data each, accumulated under PlanDDP (its
    plan's accumulate; inside its no_sync() for the first two when `no_sync`) and under
    torch DDP the same way: per tensor the largest difference and DDP's largest gradient,
    and how many backwards allreduced."""
    torch.manual_seed(0)
    ref, mine = small_cnn(), small_cnn()
    mine.load_state_dict(ref.state_dict())
    xs = [torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 + 7 * k + rank)) for k in range(3)]
    ys = [torch.randint(0, 10, (4,), generator=torch.Generator().manual_seed(20 + 7 * k + rank)) for k in range(3)]
    plan, names = plan_for(mine, xs[0][:2], [(0, 3, 0, "fp32"), (3, 10, 1, "fp32")], ranks)
    plan["accumulate"] = {"steps": 3, "no_sync": no_sync}
    pddp = PlanDDP(mine, plan, names, engine=engine)
    ddp = nn.parallel.DistributedDataParallel(ref)
    for model, before_backward in ((ddp, lambda: None), (pddp, pddp.start_backward)):
        for k in range(3):
            with model.no_sync() if no_sync and k < 2 else contextlib.nullcontext():
                loss = nn.functional.cross_entropy(model(xs[k]), ys[k])
                before_backward()
                loss.backward()
    pddp.close()
    ref_grads = dict(ref.named_parameters())
    diffs = {n: (float((p.grad - ref_grads[n].grad).abs().max()), float(ref_grads[n].grad.abs().max()))
             for n, p in mine.named_parameters()}
    gathered = [None] * ranks
    dist.all_gather_object(gathered, {"diffs": diffs, "synced": len(pddp.steps), "engine": pddp.engine})
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)


def side_by_side(rank: int, ranks: int, out_path: str, steps: int) -> None:
    """Every rank's result of runner.measure_side_by_side for PlanDDP and DDP on small_cnn."""
    from fuseplan_torch.runner import measure_side_by_side

    torch.manual_seed(0)
    a, b = small_cnn(), small_cnn()
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 10, (4,))
    plan, names = plan_for(a, x[:2], [(0, 4, 0, "fp32"), (4, 10, 0, "fp32")], ranks)
    pddp, ddp = PlanDDP(a, plan, names), nn.parallel.DistributedDataParallel(b)
    trainers = [("plan", pddp, torch.optim.SGD(pddp.parameters(), lr=0.1), pddp.start_backward),
                ("ddp", ddp, torch.optim.SGD(ddp.parameters(), lr=0.1), lambda: None)]
    times = measure_side_by_side(trainers, x, y, 1, steps)
    pddp.close()
    gathered = [None] * ranks
    dist.all_gather_object(gathered, times)
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(gathered, f)


def resnet18_fine_tuned(frozen: bool):
    """torchvision's ResNet-18 (10 classes); with `frozen`, everything before layer3 frozen."""
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    for name, p in model.named_parameters():
        p.requires_grad_(not frozen or name.startswith(("layer3", "layer4", "fc")))
    return model


def ddp_buckets(rank: int, ranks: int, out_path: str, settings: Dict[str, Any], frozen: bool = False) -> None:
    """The buckets torch DDP forms (from the third step, after its rebuild) with the settings
    `fuseplan export --to ddp --json` printed, as lists of parameter names in the order DDP
    reduces them (resnet18_fine_tuned's)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    torch.manual_seed(0)
    model = resnet18_fine_tuned(frozen)
    names = {id(p): n for n, p in model.named_parameters()}
    ddp = exported_ddp(model, settings)
    seen = []

    def hook(state, bucket):
        seen.append([names[id(p)] for p in bucket.parameters()])
        return allreduce_hook(state, bucket)

    ddp.register_comm_hook(None, hook)
    x = torch.randn(2, 3, 32, 32)
    for step in range(3):
        seen.clear()
        ddp(x).sum().backward()
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump(seen, f)


class GatedCNN(nn.Module):
    """A forward whose control flow depends on tensor values, which torch.fx cannot trace,
    with a functional residual add and a flatten between modules."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        if float(y.mean()) > -1.0:  # always taken, but decided on a value
            y = y + self.bn2(self.conv2(y))
        return self.fc(torch.flatten(self.pool(self.relu2(y)), 1))


def gated_cnn():
    return GatedCNN()


class GatedScale(GatedCNN):
    """GatedCNN with a parameter of its own, used by an operation between its modules."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return super().forward(x) * self.scale


def gated_scale():
    return GatedScale()


class GatedUnused(GatedCNN):
    """GatedCNN with a parameter its forward never uses (refused: it would get no gradient)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.ones(1))


def gated_unused():
    return GatedUnused()


def inputs_of_another_batch(batch: int, generator: torch.Generator):
    """An --inputs function that ignores its batch (refused)."""
    return tiny_bert.tiny_bert_inputs(batch + 1, generator)


def inputs_not_tensors(batch: int, generator: torch.Generator):
    """An --inputs function that returns no tensors (refused)."""
    return {"input_ids": tiny_bert.tiny_bert_inputs(batch, generator)[0].tolist()}


def inputs_by_an_unknown_keyword(batch: int, generator: torch.Generator):
    """An --inputs function naming no parameter of tiny_bert's forward (refused)."""
    return {"input_ids": tiny_bert.tiny_bert_inputs(batch, generator)[0], "labels": torch.zeros(batch)}


def inputs_without_the_ids(batch: int, generator: torch.Generator):
    """An --inputs function leaving out tiny_bert's input_ids, which has no default (refused)."""
    return {"attention_mask": tiny_bert.tiny_bert_inputs(batch, generator)[1]}
