"""fuseplan_torch: export against the zoo, the transformer path, PlanDDP against DDP, the CLI."""
import atexit
import json
import math
import os
import shutil
import stat
import subprocess
import sys
import tempfile

import pytest
import torch
import torchvision

from fuseplan_torch import export_model, fingerprint, write_json
from fuseplan_torch import jobs

import ddp_check
import tiny_bert
import tiny_gpt

FUSEPLAN = os.environ.get("FUSEPLAN_BIN", "fuseplan")
TORCH_MAJOR = int(torch.__version__.split(".")[0])  # 1 (Debian 12's 1.13) or 2 (Debian 13's 2.6)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the schema validator
import validate_schemas  # noqa: E402
MODEL_SCHEMA = validate_schemas.load_schema(os.path.dirname(os.path.dirname(HERE)), "model")


def fuseplan(*args):
    return subprocess.run([FUSEPLAN, *args], capture_output=True, text=True)


class _CliServer:
    """One cli_server.py for the session: it forks `python3 -m fuseplan_torch`'s main per
    call, so that a call does not pay torch's import (1.7 s of CPU here; the suite makes over
    80 calls)."""

    def __init__(self):
        self.proc = None
        self.files = None
        atexit.register(self.close)

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()  # the server's loop ends
            self.proc.wait()
            shutil.rmtree(os.path.dirname(self.files[0]), ignore_errors=True)

    def run(self, args, cwd):
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "cli_server.py")], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True)
            out_dir = tempfile.mkdtemp(prefix="fuseplan-cli-")
            self.files = (os.path.join(out_dir, "stdout"), os.path.join(out_dir, "stderr"))
        request = {"args": list(args), "cwd": None if cwd is None else str(cwd),
                   "stdout": self.files[0], "stderr": self.files[1]}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "cli_server.py ended: %s" % self.proc.wait()
        outputs = [open(path).read() for path in self.files]
        return subprocess.CompletedProcess(args, json.loads(line)["rc"], *outputs)


_CLI = _CliServer()


def run_cli(*args, cwd=None, fresh=False):
    """python3 -m fuseplan_torch ARGS: its main, forked from a process that has imported torch
    (cli_server.py); with fresh, a new interpreter, as from the shell."""
    if fresh:
        return subprocess.run([sys.executable, "-m", "fuseplan_torch", *args], capture_output=True, text=True,
                              cwd=cwd)
    return _CLI.run(args, cwd)


def as_fuseplan_reads(path):
    """The model as fuseplan reads it (FLOPs derived, shapes checked)."""
    return zoo(path)


def zoo(*args):
    r = fuseplan("show", *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def same_model(exported, reference):
    """Names, order, kinds, shapes and parameters equal; FLOPs within 1 %."""
    assert exported["input_shape"] == reference["input_shape"]
    assert len(exported["layers"]) == len(reference["layers"])
    for a, b in zip(exported["layers"], reference["layers"]):
        for key in ("name", "kind", "inputs", "in_shape", "out_shape", "params"):
            assert a.get(key) == b.get(key), (a["name"], key)
        for key in ("fwd_flops", "bwd_flops"):
            assert a[key] == pytest.approx(b[key], rel=0.01), (a["name"], key)


@pytest.mark.parametrize("name,factory,shape,flags", [
    ("resnet50", torchvision.models.resnet50, (3, 224, 224), []),
    ("resnet18", lambda: torchvision.models.resnet18(num_classes=10), (3, 32, 32),
     ["--resolution", "32", "--classes", "10"]),
    ("vgg16", torchvision.models.vgg16, (3, 224, 224), []),
])
def test_torchvision_export_equals_the_zoo(tmp_path, name, factory, shape, flags):
    torch.manual_seed(0)
    model = factory()
    doc, info, _, _ = export_model(model, torch.randn(2, *shape), name=name)
    assert info.order_matches, info.out_of_order[:5]
    path = str(tmp_path / "m.json")
    write_json(doc, path)
    reference = zoo(name, *flags)
    same_model(as_fuseplan_reads(path), reference)
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []
    tensors = [(p["name"], p["shape"]) for l in reference["layers"] for p in l["params"]]
    assert info.fingerprint == fingerprint(tensors)


INCEPTION_V3 = os.path.join(os.path.dirname(os.path.dirname(HERE)), "bench", "models", "inception_v3.json")


def test_inception_v3_exports_rectangular_convolutions_and_functional_pools(tmp_path):
    """torchvision's Inception v3 (1x7 and 7x1 convolutions, F.max_pool2d and F.avg_pool2d
    between modules) exports with every convolution and pool a kind fuseplan derives, and
    equals the file bench/published_scaling.py reads."""
    model = torchvision.models.inception_v3(aux_logits=False, init_weights=False)
    doc, info, _, _ = export_model(model, torch.randn(2, 3, 299, 299), name="inception_v3")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    layers = {l["name"]: l for l in doc["layers"]}
    assert sum(l["kind"] == "conv2d" for l in doc["layers"]) == len(convs)
    assert layers["Mixed_6b.branch7x7_2.conv"]["attrs"]["kernel"] == [1, 7]
    assert layers["Mixed_6b.branch7x7_2.conv"]["attrs"]["padding"] == [0, 3]
    assert layers["Mixed_5b.avg_pool2d"]["kind"] == "avgpool"
    assert layers["Mixed_5b.avg_pool2d"]["attrs"] == {"kernel": 3, "stride": 1, "padding": 1}
    assert layers["Mixed_6a.max_pool2d"]["kind"] == "maxpool"
    assert layers["Mixed_6a.max_pool2d"]["attrs"] == {"kernel": 3, "stride": 2, "padding": 0}
    assert {l["name"].split(".")[-1].rstrip("_0123456789") for l in doc["layers"] if l["kind"] == "custom"} == {"cat"}
    assert info.estimated == [] and info.order_matches
    path = str(tmp_path / "inception_v3.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)  # every derived FLOP count within 1 % of the export's, or refused
    macs = []
    model.eval()
    hooks = [m.register_forward_hook(lambda m, i, o: macs.append(o[0].numel() * m.in_channels // m.groups *
                                                                 m.kernel_size[0] * m.kernel_size[1]))
             for m in convs]
    with torch.no_grad():
        model(torch.zeros(1, 3, 299, 299))
    for h in hooks:
        h.remove()
    assert sum(l["fwd_flops"] for l in read["layers"] if l["kind"] == "conv2d") == 2 * sum(macs)
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []
    with open(INCEPTION_V3) as f:
        shipped = json.load(f)
    assert shipped == json.loads(json.dumps(doc)), "bench/models/inception_v3.json differs from a fresh export"


DLE_MODELS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "bench", "models")


# ResNeXt-101 32x4d has 44,177,704 parameters (torchvision's ResNet with groups=32 and
# width_per_group=4); SE adds per block two linear layers through 16 units: 33 C + 16 for a
# block of C output channels (3 blocks of 256, 4 of 512, 23 of 1024, 3 of 2048).
SE_PARAMS = sum(n * (33 * c + 16) for n, c in ((3, 256), (4, 512), (23, 1024), (3, 2048)))


@pytest.mark.parametrize("name,params,se_blocks", [("resnext101_32x4d", 44177704, 0),
                                                   ("se_resnext101_32x4d", 44177704 + SE_PARAMS, 33)])
def test_deeplearningexamples_resnexts_export_grouped_convolutions_and_equal_the_shipped_files(name, params, se_blocks):
    """bench/models/dle_convnets.py's ResNeXt-101 32x4d (DeepLearningExamples' layers: 32 groups in
    every 3x3, widths 128-1024) and its SE variant (a squeeze to 16 units per block) export with
    the groups fuseplan prices as conv_grouped, and equal the files bench/published_scaling.py reads."""
    sys.path.insert(0, DLE_MODELS)
    try:
        import dle_convnets
    finally:
        sys.path.remove(DLE_MODELS)
    model = getattr(dle_convnets, name)()
    assert sum(p.numel() for p in model.parameters()) == params
    doc, info, _, _ = export_model(model, torch.randn(2, 3, 224, 224), name=name)
    grouped = [l for l in doc["layers"] if l["kind"] == "conv2d" and l["attrs"]["groups"] > 1]
    assert len(grouped) == 33 and all(l["attrs"]["groups"] == 32 for l in grouped)
    squeezes = [l for l in doc["layers"] if l["name"].endswith("se_squeeze")]
    assert len(squeezes) == se_blocks and all(l["out_shape"] == [16] for l in squeezes)
    assert info.order_matches
    with open(os.path.join(DLE_MODELS, name + ".json")) as f:
        shipped = json.load(f)
    assert shipped == json.loads(json.dumps(doc)), "bench/models/%s.json differs from a fresh export" % name


def test_pools_fuseplan_cannot_model_stay_custom_and_dilated_convolutions_do_not(tmp_path):
    class Pools(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, dilation=2)
            self.rect = torch.nn.Conv2d(4, 4, (1, 3), stride=(2, 1), padding=(0, 1))

        def forward(self, x):
            x = torch.nn.functional.avg_pool2d(self.rect(self.conv(x)), 3, 1, 1, count_include_pad=False)
            return torch.nn.functional.max_pool2d(x, (2, 3))

    doc, _, _, _ = export_model(Pools(), torch.randn(2, 3, 16, 16), name="pools")
    kinds = {l["name"]: l["kind"] for l in doc["layers"]}
    assert kinds == {"conv": "conv2d", "rect": "conv2d", "avg_pool2d": "custom", "max_pool2d": "custom"}
    assert doc["layers"][0]["attrs"]["dilation"] == 2
    path = str(tmp_path / "pools.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)
    rect = next(l for l in read["layers"] if l["name"] == "rect")
    assert rect["out_shape"] == [4, 6, 12] and rect["attrs"]["stride"] == [2, 1]


@pytest.mark.parametrize("factory,size,estimated", [
    (torchvision.models.mobilenet_v2, 64, []),  # ReLU6: one operation per element, not estimated
    (torchvision.models.efficientnet_b0, 64, []),  # SiLU, Sigmoid, StochasticDepth
    # Its channel shuffle and ViT's input unpack x.size(): torch 1.13's fx failed on Python 3.11.
    (torchvision.models.shufflenet_v2_x0_5, 64, []),
    (torchvision.models.vit_b_16, 224, []),  # nn.MultiheadAttention's FLOPs from its shapes
    # Its loading hook refuses a state dict without its version: the export restores the
    # module's tensors without load_state_dict.
    (torchvision.models.mnasnet0_5, 64, []),
    # Its window attention and patch merging are wrapped functions, counted from their arguments.
    (torchvision.models.swin_t, 224, []),
    # A dict output ({"out": ...}), dilated convolutions, bilinear upsampling (F.interpolate).
    (lambda: torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None,
                                                                aux_loss=False), 64, []),
])
def test_torchvision_models_beyond_the_zoo_export_files_fuseplan_reads(tmp_path, factory, size, estimated):
    model = factory()
    doc, info, _, _ = export_model(model, torch.randn(2, 3, size, size), name="m")
    if estimated is not None:
        assert info.estimated == estimated
    path = str(tmp_path / "m.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)  # exit 0: every layer reads the shape its producer gives
    names = [p["name"] for l in read["layers"] for p in l["params"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter placed
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []


def test_an_input_made_between_modules_is_a_layer_of_its_own_when_fx_cannot_trace():
    class Branchy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Conv2d(3, 4, 1), torch.nn.Conv2d(3, 4, 1)
            self.c = torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            if x.mean() > -1e9:  # control flow on a tensor's value: torch.fx cannot trace it
                x = torch.cat([self.a(x), self.b(x)], 1)
            return self.c(x)

    doc, info, _, _ = export_model(Branchy(), torch.randn(2, 3, 8, 8), name="branchy")
    assert info.method == "modules" and info.estimated == [] and info.counted == ["cat"]  # not the test's mean
    assert [(l["name"], l["inputs"], l["out_shape"]) for l in doc["layers"]] == \
        [("a", [-1], [4, 8, 8]), ("b", [-1], [4, 8, 8]), ("cat", [0, 1], [8, 8, 8]), ("c", [2], [2, 8, 8])]


def test_an_export_by_modules_sees_the_operations_between_modules(tmp_path):
    """A forward torch.fx cannot trace is recorded as it runs: its leaf modules and the torch
    operations between them (residual adds, attention's products and softmax, views). On
    models fx can trace, the record gives fx's layers: ResNet-50 exactly (names, kinds,
    inputs, shapes, parameters, attributes), the GPT-like transformer its attention and
    FLOPs within 5 %, Swin its relative position bias tables (a parameter indexed by a
    buffer) and FLOPs within 1 %."""
    from fuseplan_torch.model_export import export_by_modules
    torch.manual_seed(0)

    def key(l):
        return l["name"], l["kind"], l["inputs"], l.get("in_shape"), l["out_shape"], l["params"], l.get("attrs")

    def fwd(doc):
        return sum(l["fwd_flops"] for l in doc["layers"])

    resnet = torchvision.models.resnet50()
    x = torch.randn(2, 3, 64, 64)
    traced, recorded = export_model(resnet, x)[0], export_by_modules(resnet, x)[0]
    assert [key(l) for l in recorded["layers"]] == [key(l) for l in traced["layers"]]
    gpt = tiny_gpt.tiny_gpt()
    ids = torch.randint(0, 64, (2, 32))
    (traced, _, _, _), (recorded, info, _, _) = export_model(gpt, ids), export_by_modules(gpt, ids)
    assert info.estimated == []
    assert [l["name"] for l in recorded["layers"] if l["name"].startswith("blocks.0.attn.")
            and "view" not in l["name"] and "transpose" not in l["name"] and "getitem" not in l["name"]] == \
        ["blocks.0.attn.qkv", "blocks.0.attn.matmul", "blocks.0.attn.mul", "blocks.0.attn.masked_fill",
         "blocks.0.attn.softmax", "blocks.0.attn.matmul_1", "blocks.0.attn.contiguous", "blocks.0.attn.proj"]
    for doc, path in ((traced, "fx.json"), (recorded, "modules.json")):
        write_json(doc, str(tmp_path / path))
    flops = [fwd(as_fuseplan_reads(str(tmp_path / p))) for p in ("fx.json", "modules.json")]
    assert flops[1] == pytest.approx(flops[0], rel=0.05)
    swin = torchvision.models.swin_t()
    traced, recorded = export_model(swin, x)[0], export_by_modules(swin, x)[0]
    owners = {p["name"] for l in recorded["layers"] for p in l["params"]}
    assert owners == {n for n, _ in swin.named_parameters()}
    for doc, path in ((traced, "fx.json"), (recorded, "modules.json")):
        write_json(doc, str(tmp_path / path))
    flops = [fwd(as_fuseplan_reads(str(tmp_path / p))) for p in ("fx.json", "modules.json")]
    assert flops[1] == pytest.approx(flops[0], rel=0.01)


def test_vit_attention_flops_follow_its_shapes():
    doc, info, _, _ = export_model(torchvision.models.vit_b_16(), torch.randn(2, 3, 224, 224), name="vit")
    attn = next(l for l in doc["layers"] if l["name"] == "encoder.layers.encoder_layer_0.self_attention")
    seq, dim = 197, 768
    products = 2 * seq * dim * 3 * dim + 4 * seq * seq * dim + 2 * seq * dim * dim
    assert attn["kind"] == "custom" and attn["out_shape"] == [seq, dim]
    assert attn["fwd_flops"] == products + 5 * 12 * seq * seq
    assert [p["name"].rsplit(".", 1)[-1] for p in attn["params"]] == ["in_proj_weight", "in_proj_bias", "weight",
                                                                       "bias"]


def test_swin_window_attention_flops_are_the_papers():
    """Swin's W-MSA per window of M x M tokens on an h x w map of C channels:
    4 h w C^2 + 2 M^2 h w C multiply-adds (Liu et al. 2021, eq. 1), a map not divisible by
    the window padded to whole windows; the bias add and softmax besides."""
    from torchvision.models.swin_transformer import SwinTransformer
    model = SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2], num_heads=[2], window_size=[4, 4],
                            num_classes=10)
    doc, info, _, _ = export_model(model, torch.randn(2, 3, 40, 40), name="swin")
    assert info.estimated == []
    attn = [l for l in doc["layers"] if l["name"].endswith("shifted_window_attention")]
    assert len(attn) == 2 and attn[0]["out_shape"] == [10, 10, 32]
    padded, c, m, heads = 12 * 12, 32, 4, 2  # 10 x 10 padded to 12 x 12: whole 4 x 4 windows
    macs = 4 * padded * c * c + 2 * m * m * padded * c
    scores = heads * padded * m * m
    assert attn[0]["fwd_flops"] == 2 * macs + 6 * scores
    assert attn[0]["bwd_flops"] == 4 * macs + 5 * scores


def test_upsampling_flops_follow_its_mode():
    class Up(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            self.up = torch.nn.Upsample(scale_factor=2, mode="nearest")

        def forward(self, x):
            x = self.up(self.conv(x))
            return torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False)

    doc, info, _, _ = export_model(Up(), torch.randn(2, 3, 4, 4), name="up")
    assert info.estimated == []
    flops = {l["name"]: (l.get("fwd_flops"), l.get("bwd_flops")) for l in doc["layers"]}
    assert flops["up"] == (3 * 8 * 8, 3 * 8 * 8)  # nearest: a copy per output element
    assert flops["interpolate"] == (8 * 3 * 12 * 12, 8 * 3 * 12 * 12)  # bilinear: 4 multiply-adds each


class _NoFormula(torch.nn.Module):
    """Leaf modules the export has no formula for: torch.fx does not trace into torch.nn's
    modules, so each is one custom layer whose FLOPs torch's operations give."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv1d(8, 16, 5, padding=2)
        self.up = torch.nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1, bias=False)
        self.rnn = torch.nn.LSTM(8, 32, num_layers=2, batch_first=True)
        self.enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)
        self.fc = torch.nn.Linear(32, 3)

    def forward(self, x):  # x: [batch, 8, 16]
        y = self.up(torch.relu(self.c1(x)))            # [batch, 8, 32]
        y, _ = self.rnn(y.transpose(1, 2))              # [batch, 32 steps, 32]
        return self.fc(self.enc(y)).mean(1)


def test_layers_without_a_formula_have_their_flops_counted_from_torchs_operations(tmp_path):
    doc, info, _, _ = export_model(_NoFormula(), torch.randn(2, 8, 16), name="noformula")
    assert sorted(info.counted) == ["c1", "enc", "rnn", "up"] and info.estimated == []
    flops = {l["name"]: (l.get("fwd_flops"), l.get("bwd_flops")) for l in doc["layers"]}
    # Convolutions exactly, per sample: 2 x outputs x (in/groups x kernel), + the bias;
    # backward: the weight's gradient (a product) and the bias's; c1 reads the model input,
    # whose gradient training does not compute.
    conv = 2 * (16 * 16) * (8 * 5)
    assert flops["c1"] == (conv + 16 * 16, conv + 16 * 16)
    # Transposed: each input element meets out/groups x kernel weights; its input comes from
    # c1, so backward computes the input's gradient too.
    tconv = 2 * (16 * 16) * (8 * 4)
    assert flops["up"] == (tconv, 2 * tconv)
    # LSTM: 4 gates of (input + hidden) x hidden per step and layer (inputs 8, then 32), and
    # their element-wise work.
    lstm = 32 * 2 * 4 * ((8 + 32) + (32 + 32)) * 32
    assert lstm < flops["rnn"][0] < 1.1 * lstm and 2 * lstm < flops["rnn"][1] < 2.3 * lstm
    # Two encoder layers: q, k, v and output projections, Q K^T and A V, the feed-forward.
    seq, dim, ff = 32, 32, 64
    enc = 2 * (2 * seq * dim * 4 * dim + 2 * 2 * seq * seq * dim + 2 * 2 * seq * dim * ff)
    assert enc < flops["enc"][0] < 1.15 * enc and 2 * enc < flops["enc"][1] < 2.4 * enc
    # Each priced by the class of most of its FLOPs, as fuseplan classes such kernels.
    classes = {l["name"]: l.get("attrs", {}).get("class") for l in doc["layers"]}
    assert [classes[n] for n in ("c1", "up", "rnn", "enc")] == ["conv_kxk_s1", "conv_kxk", "gemm", "gemm"]
    path = str(tmp_path / "m.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)
    assert {l["name"]: l["fwd_flops"] for l in read["layers"]}["c1"] == conv + 16 * 16
    assert shown_classes(path)["rnn"] == "gemm"


def shown_classes(path):
    """Each layer's compute class as `fuseplan show` prints it."""
    r = fuseplan("show", path)
    assert r.returncode == 0, r.stderr
    rows = r.stdout.split("Layers (forward order)")[1].split("Parameter tensors")[0].splitlines()[2:]
    return {row.split()[1]: row.split()[3] for row in rows if row.strip()}


def test_the_operation_counter_agrees_with_fuseplans_formulas_on_resnet18s_convolutions_and_classifier(tmp_path):
    """flops.count_call counts from the operations torch runs; fuseplan derives conv2d and
    linear FLOPs from kinds and shapes in C++. Two ways to the same numbers, and to the
    same compute class (the stem, 3x3 with stride 1 and 2, the 1x1 shortcuts, the gemm)."""
    from fuseplan_torch.flops import count_call
    from fuseplan_torch.profile import captured_calls
    model = torchvision.models.resnet18(num_classes=10)
    example = torch.randn(2, 3, 32, 32)
    doc, _, gm, nodes = export_model(model, example, name="resnet18")
    path = str(tmp_path / "r18.json")
    write_json(doc, path)
    derived = {l["name"]: l["fwd_flops"] for l in as_fuseplan_reads(path)["layers"]}
    classes = shown_classes(path)
    calls = captured_calls(model, gm, nodes, example)
    checked, seen = 0, set()
    for layer, (fn, args, kwargs) in zip(doc["layers"], calls):
        if layer["kind"] in ("conv2d", "linear"):
            fwd, _, cls = count_call(fn, args, kwargs, 2)
            assert fwd == derived[layer["name"]], layer["name"]
            assert cls == classes[layer["name"]], layer["name"]
            checked += 1
            seen.add(cls)
    assert checked == 21  # 20 convolutions and the classifier
    assert seen == {"conv_stem", "conv_kxk_s1", "conv_kxk", "conv_1x1", "gemm"}


def test_a_layer_that_cannot_run_alone_stays_estimated(monkeypatch):
    import fuseplan_torch.flops

    def refuse(*args, **kwargs):
        raise RuntimeError("cannot run alone")
    monkeypatch.setattr(fuseplan_torch.flops, "count_call", refuse)
    doc, info, _, _ = export_model(_NoFormula(), torch.randn(2, 8, 16), name="noformula")
    assert info.counted == [] and sorted(info.estimated) == ["c1", "enc", "rnn", "up"]
    c1 = next(l for l in doc["layers"] if l["name"] == "c1")
    assert (c1["fwd_flops"], c1["bwd_flops"]) == (16 * 16, 16 * 16)  # one per output element


def test_a_tied_head_with_a_bias_of_its_own_exports_a_file_fuseplan_reads(tmp_path):
    class TiedWithBias(torch.nn.Module):  # BERT's masked-LM decoder: the embedding's table, its own bias
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 16)
            self.head = torch.nn.Linear(16, 50)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.emb(x))

    model = TiedWithBias()
    doc, info, _, _ = export_model(model, torch.randint(0, 50, (2, 7)), name="tied")
    path = str(tmp_path / "tied.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)
    head = next(l for l in read["layers"] if l["name"] == "head")
    assert [p["name"] for p in head["params"]] == ["head.bias"]
    assert head["fwd_flops"] == 2 * 7 * 16 * 50 + 7 * 50
    assert sorted(p["name"] for l in read["layers"] for p in l["params"]) == sorted(
        n for n, _ in model.named_parameters())


def test_parameters_read_through_constants_belong_to_the_layer_that_uses_them():
    """Swin's relative position bias: a parameter table indexed by a buffer, then added to
    the attention scores; the indexing does not depend on the input."""
    class Biased(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.table = torch.nn.Parameter(torch.randn(9, 4))
            self.register_buffer("index", torch.arange(16) % 9)
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x) + self.table[self.index].view(16, 4)

    doc, info, _, _ = export_model(Biased(), torch.randn(2, 16, 4), name="biased")
    owner = [l for l in doc["layers"] if any(p["name"] == "table" for p in l["params"])]
    assert len(owner) == 1 and owner[0]["kind"] == "custom" and owner[0]["inputs"] == [0]


def test_a_gpt2_like_transformer_exports_and_tunes(tmp_path):
    torch.manual_seed(0)
    model = tiny_gpt.tiny_gpt()
    doc, info, _, _ = export_model(model, torch.randint(0, 512, (2, 32)), name="tiny_gpt")
    layers = {l["name"]: l for l in doc["layers"]}
    assert layers["head"]["kind"] == "linear" and layers["head"]["params"] == []  # tied to wte
    assert [p["name"] for p in layers["add"]["params"]] == ["wpe"]  # used directly, owned by its user
    assert layers["blocks.0.attn.softmax"]["kind"] == "custom"
    assert layers["blocks.0.attn.matmul"]["fwd_flops"] == 2 * 4 * 32 * 32 * 16  # heads x S x S x head dim
    # Priced as the zoo prices attention's products and softmax (a class, not `other`).
    assert layers["blocks.0.attn.matmul"]["attrs"] == {"class": "attention"}
    assert "attrs" not in layers["blocks.0.attn.softmax"]  # element-wise work without a kind: other
    # A view moves nothing (no time in fuseplan); contiguous copies.
    assert layers["blocks.0.attn.transpose"]["attrs"] == {"view": True}
    assert layers["blocks.0.attn.getitem"]["attrs"] == {"view": True}  # qkv[0], from split
    assert "attrs" not in layers["blocks.0.attn.contiguous"]
    assert info.estimated == []
    assert info.order_matches
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []
    path = str(tmp_path / "gpt.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)
    assert sum(len(l["params"]) for l in read["layers"]) == len(list(model.parameters()))  # tied once
    plan = str(tmp_path / "plan.json")
    r = fuseplan("tune", "--model", path, "--cluster", "dgx-a100", "--gpus", "16", "--batch-per-gpu", "8",
                 "--out", plan)
    assert r.returncode == 0, r.stderr
    assert json.load(open(plan))["model"]["file"] == "gpt.json"


def test_a_model_of_several_inputs_exports_them_and_fuseplan_reads_the_file(tmp_path):
    """tiny_bert takes token ids, an attention mask and token types: the file lists the
    mask and the types as extra inputs, which the layers using them read (-2, -3); the
    position embeddings of a buffer are a layer reading no layer. fuseplan reads the file
    back unchanged. Given the ids only, the forward's defaults are traced (no mask layers)."""
    torch.manual_seed(0)
    model = tiny_bert.tiny_bert()
    ids, mask, types = tiny_bert.tiny_bert_inputs(2, torch.Generator().manual_seed(1))
    doc, info, _, _ = export_model(model, (ids, mask, types), name="tiny_bert")
    assert doc["input_shape"] == [16]
    assert doc["extra_inputs"] == [{"name": "attention_mask", "shape": [16]}, {"name": "token_type_ids", "shape": [16]}]
    layers = {l["name"]: l for l in doc["layers"]}
    assert layers["word"]["inputs"] == [-1] and layers["token_type"]["inputs"] == [-3]
    assert [l["name"] for l in doc["layers"] if -2 in l["inputs"]] == ["getitem_1"]  # the mask, indexed
    assert layers["position"]["inputs"] == [] and layers["position"]["kind"] == "custom"
    assert [p["name"] for p in layers["position"]["params"]] == ["position.weight"]
    assert info.estimated == [] and info.order_matches
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []
    path = str(tmp_path / "bert.json")
    write_json(doc, path)
    read = as_fuseplan_reads(path)
    assert read["extra_inputs"] == doc["extra_inputs"]
    assert [(l["name"], l["inputs"], l["out_shape"]) for l in read["layers"]] == \
        [(l["name"], l["inputs"], l["out_shape"]) for l in doc["layers"]]
    shown = fuseplan("show", path)
    assert "input 16 and extra inputs attention_mask 16, token_type_ids 16" in shown.stdout, shown.stdout
    model.token_type.weight.requires_grad_(False)  # unused without token types: frozen, left out
    alone, _, _, _ = export_model(model, ids, name="tiny_bert")
    assert "extra_inputs" not in alone
    assert len(alone["layers"]) < len(doc["layers"]) - 5  # no mask arithmetic, no token types
    assert all(i >= -1 for l in alone["layers"] for i in l["inputs"])


def test_inputs_by_keyword_export_in_the_order_given_and_leave_the_others_to_their_defaults(tmp_path):
    """A dict of inputs, as Hugging Face's data collators make, is passed by keyword: token
    ids and token types without the mask between them in the forward's parameters. The
    file lists the inputs in the dict's order; the mask's default (None) is traced, so no
    layer is made from it, and the layers are those of the positional export given the same
    mask as the forward makes without one."""
    torch.manual_seed(0)
    model = tiny_bert.tiny_bert()
    batch = tiny_bert.tiny_bert_keyword_inputs(2, torch.Generator().manual_seed(1))
    doc, info, _, _ = export_model(model, batch, name="tiny_bert")
    assert doc["extra_inputs"] == [{"name": "token_type_ids", "shape": [16]}]
    layers = {l["name"]: l for l in doc["layers"]}
    assert layers["word"]["inputs"] == [-1] and layers["token_type"]["inputs"] == [-2]
    assert info.estimated == [] and info.order_matches and len(info.gradient_order) == 39
    positional, _, _, _ = export_model(model, (batch["input_ids"], torch.ones_like(batch["input_ids"]),
                                               batch["token_type_ids"]), name="tiny_bert")
    assert len(doc["layers"]) < len(positional["layers"])  # no layers of the mask
    path = str(tmp_path / "bert.json")
    write_json(doc, path)
    assert as_fuseplan_reads(path)["extra_inputs"] == doc["extra_inputs"]
    swapped, _, _, _ = export_model(model, {"token_type_ids": batch["token_type_ids"],
                                            "input_ids": batch["input_ids"]}, name="tiny_bert")
    assert swapped["extra_inputs"] == [{"name": "input_ids", "shape": [16]}]
    swapped_layers = {l["name"]: l for l in swapped["layers"]}
    assert swapped_layers["word"]["inputs"] == [-2] and swapped_layers["token_type"]["inputs"] == [-1]
    import fuseplan_torch
    prof = str(tmp_path / "p.json")
    fuseplan_torch.export(model, batch, str(tmp_path / "m.json"), profile=prof, steps=2,
                          profile_inputs=tiny_bert.tiny_bert_keyword_inputs(4, torch.Generator().manual_seed(2)))
    assert {l["name"] for l in json.load(open(prof))["layers"]} == {l["name"] for l in doc["layers"]}
    with pytest.raises(ValueError, match="input 'mask' is no parameter of TinyBert.forward"):
        export_model(model, {"input_ids": batch["input_ids"], "mask": batch["input_ids"]})
    with pytest.raises(ValueError, match="input 'token_type_ids' has shape \\[3, 16\\]: every input's first"):
        export_model(model, {"input_ids": batch["input_ids"], "token_type_ids": torch.zeros(3, 16, dtype=torch.long)})


class _TwoInputsUntraceable(torch.nn.Module):
    """Token ids and token types, with a branch on the types' values: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.e, self.t, self.fc = torch.nn.Embedding(32, 8), torch.nn.Embedding(2, 8), torch.nn.Linear(8, 3)

    def forward(self, ids, types):
        x = self.e(ids)
        if types.sum() > 0:
            x = x + self.t(types)
        return self.fc(x.mean(1))


def test_a_forward_of_several_inputs_fx_cannot_trace_is_exported_from_its_modules_reading_each_input():
    ids, types = torch.randint(0, 32, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    doc, info, _, _ = export_model(_TwoInputsUntraceable(), (ids, types))
    assert info.method == "modules"
    assert doc["extra_inputs"] == [{"name": "types", "shape": [6]}]
    assert {l["name"]: l["inputs"] for l in doc["layers"]}["t"] == [-2]
    assert {l["name"]: l["inputs"] for l in doc["layers"]}["e"] == [-1]
    doc, info, _, _ = export_model(_TwoInputsUntraceable(), {"types": types, "ids": ids})  # by keyword
    assert info.method == "modules" and doc["extra_inputs"] == [{"name": "ids", "shape": [6]}]
    assert {l["name"]: l["inputs"] for l in doc["layers"]}["e"] == [-2]
    assert {l["name"]: l["inputs"] for l in doc["layers"]}["t"] == [-1]


class _ArangePositions(torch.nn.Module):
    """Position embeddings of torch.arange(ids.size(1)), as Hugging Face's GPT-2 makes them:
    torch.fx cannot trace arange of a traced size."""

    def __init__(self):
        super().__init__()
        self.e, self.p, self.fc = torch.nn.Embedding(32, 8), torch.nn.Embedding(16, 8), torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.e(ids) + self.p(torch.arange(ids.size(1), device=ids.device)))


def test_a_module_reading_a_constant_made_between_modules_reads_no_layer(tmp_path):
    """The positions have no batch dimension: the embedding of them reads no layer, its output
    is every sample's (16 x 8), and fuseplan reads the file (it refused an embedding that
    read the token embedding's output before)."""
    doc, info, _, _ = export_model(_ArangePositions(), torch.randint(0, 32, (2, 16)))
    assert info.method == "modules"
    p = {l["name"]: l for l in doc["layers"]}["p"]
    assert p["inputs"] == [] and p["kind"] == "custom" and p["out_shape"] == [16, 8]
    path = str(tmp_path / "m.json")
    write_json(doc, path)
    assert [l["inputs"] for l in as_fuseplan_reads(path)["layers"]] == [[-1], [], [0, 1], [2]]  # e + p, then fc


@pytest.mark.parametrize("engine,model", [("reducer", "tiny_bert"), ("hooks", "tiny_bert"),
                                          ("reducer", "tiny_bert_keywords")])
def test_plan_ddp_gradients_equal_ddp_on_a_model_of_several_inputs(tmp_path, engine, model):
    out = str(tmp_path / "out.json")
    buckets = [(0, 12, 0, "fp32"), (12, 30, 1, "fp32"), (30, 39, 0, "fp32")]
    jobs.spawn(2, ddp_check.compare_with_ddp, (out, buckets, True, engine, False, 0, model))
    for r in json.load(open(out)):
        assert r["engine"] == engine and r["no_grad"] == [] and len(r["diffs"]) == 39
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-5 * scale + 1e-9, name


def test_a_model_of_several_inputs_exports_profiles_runs_and_verifies_from_the_command_line(tmp_path):
    model, prof, plan, rep = (str(tmp_path / n) for n in ("m.json", "p.json", "plan.json", "rep.json"))
    flags = ["tiny_bert:tiny_bert", "--inputs", "tiny_bert:tiny_bert_inputs"]
    # from the shell, as a user runs it (the other tests fork cli_server.py)
    r = run_cli("export", *flags, "--out", model, "--profile", prof, "--batch", "4", "--steps", "3", fresh=True)
    assert r.returncode == 0, r.stderr
    assert len(json.load(open(model))["extra_inputs"]) == 2
    r = fuseplan("tune", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32", "--algorithm", "ring", "--out", plan)
    assert r.returncode == 0, r.stderr
    r = run_cli("run", *flags, "--plan", plan, "--report", rep, "--iterations", "2", "--warmup", "1",
                "--threads", "1", fresh=True)
    assert r.returncode == 0, r.stderr
    assert "PlanDDP tiny_bert x 2 ranks" in r.stdout
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", prof, "--no-sim")
    assert r.returncode == 0, r.stderr
    r = run_cli("run", *flags[:1], "--input-shape", "16", "--input-dtype", "long", "--vocab", "256", "--plan", plan,
                fresh=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "token_type.weight" in r.stderr, r.stderr
    r = run_cli("export", *flags, "--input-shape", "16", "--out", str(tmp_path / "other.json"))
    assert r.returncode == 2 and "--inputs: give either --inputs or --input-shape, not both" in r.stderr, r.stderr


def test_inputs_by_keyword_export_tune_run_and_verify_from_the_command_line(tmp_path):
    model, prof, plan, rep = (str(tmp_path / n) for n in ("m.json", "p.json", "plan.json", "rep.json"))
    flags = ["tiny_bert:tiny_bert", "--inputs", "tiny_bert:tiny_bert_keyword_inputs"]
    r = run_cli("export", *flags, "--out", model, "--profile", prof, "--batch", "4", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert json.load(open(model))["extra_inputs"] == [{"name": "token_type_ids", "shape": [16]}]
    r = fuseplan("tune", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32", "--algorithm", "ring", "--out", plan)
    assert r.returncode == 0, r.stderr
    r = run_cli("run", *flags, "--plan", plan, "--report", rep, "--iterations", "2", "--warmup", "1",
                "--threads", "1")
    assert r.returncode == 0 and "PlanDDP tiny_bert x 2 ranks" in r.stdout, r.stdout + r.stderr
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", prof, "--no-sim")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("inputs,says", [
    ("tiny_bert:nothing_here", "--inputs: tiny_bert:nothing_here: module 'tiny_bert' has no attribute"),
    ("tiny_bert", "--inputs: 'tiny_bert' is not package.module:function"),
    ("tiny_bert:math", "--inputs: tiny_bert:math is a module, not a function"),
    ("tiny_bert:tiny_bert", "--inputs: tiny_bert:tiny_bert(2, generator) raised TypeError"),
    ("ddp_check:inputs_of_another_batch", "made a batch of 3 samples"),
    ("ddp_check:inputs_not_tensors", "ddp_check:inputs_not_tensors(2, generator): the model's inputs must be"),
    ("ddp_check:inputs_by_an_unknown_keyword",
     "--inputs ddp_check:inputs_by_an_unknown_keyword: tiny_bert:tiny_bert: input 'labels' is no parameter of "
     "TinyBert.forward (its parameters: input_ids, attention_mask, token_type_ids)"),
    ("ddp_check:inputs_without_the_ids", "tiny_bert:tiny_bert: the inputs leave out 'input_ids', which "
     "TinyBert.forward needs (it has no default)"),
])
def test_bad_input_functions_are_refused_with_one_line(tmp_path, inputs, says):
    r = run_cli("export", "tiny_bert:tiny_bert", "--inputs", inputs, "--out", str(tmp_path / "m.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert not os.listdir(tmp_path)


def test_the_export_api_writes_model_and_profile(tmp_path):
    import fuseplan_torch
    model, prof = str(tmp_path / "m.json"), str(tmp_path / "p.json")
    info = fuseplan_torch.export(ddp_check.small_cnn(), torch.randn(2, 3, 8, 8), model, profile=prof,
                                 name="small_cnn", profile_inputs=torch.randn(4, 3, 8, 8), steps=2)
    assert json.load(open(prof))["fingerprint"] == info.fingerprint
    r = fuseplan("predict", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32")
    assert r.returncode == 0, r.stderr


def test_a_layer_with_a_tuple_output_is_timed_through_its_backward(tmp_path):
    """nn.LSTM returns its output and its state: the layer's backward runs from all of them
    (it ran from none, and timed an empty call, when only a lone tensor was differentiated)."""
    import fuseplan_torch

    class Recurrent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(16, 64, num_layers=2, batch_first=True)
            self.fc = torch.nn.Linear(64, 3)

        def forward(self, x):
            y, _ = self.rnn(x)
            return self.fc(y)

    model, prof = str(tmp_path / "m.json"), str(tmp_path / "p.json")
    fuseplan_torch.export(Recurrent(), torch.randn(2, 24, 16), model, profile=prof, name="recurrent",
                          profile_inputs=torch.randn(8, 24, 16), steps=3, fit_whole_pass=False)
    rnn = next(l for l in json.load(open(prof))["layers"] if l["name"] == "rnn")
    assert rnn["bwd_us"] > 0.3 * rnn["fwd_us"]  # an LSTM's backward is about its forward's time or more


def test_profile_layer_times_add_up_to_the_whole_training_step(tmp_path):
    """By default each layer's forward time is scaled so that the layers add up to the
    forward of whole training steps, and its backward alike; the sums as timed alone are
    kept. `--layer-times as-timed` keeps the layers as timed, the whole pass beside them.
    Exporting and profiling leave the user's module as it was (optimizer steps, batch
    statistics, gradients and train/eval mode undone)."""
    import fuseplan_torch
    module = ddp_check.small_cnn().eval()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    model, prof = str(tmp_path / "m.json"), str(tmp_path / "p.json")
    fuseplan_torch.export(module, torch.randn(2, 3, 8, 8), model, profile=prof, name="small_cnn",
                          profile_inputs=torch.randn(4, 3, 8, 8), steps=3)
    after = module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m.training for m in module.modules()) and all(p.grad is None for p in module.parameters())
    p = json.load(open(prof))
    whole = p["whole_pass"]
    assert whole["fitted"] is True and whole["forward_us"] > 0 and whole["backward_us"] > 0
    assert sum(l["fwd_us"] for l in p["layers"]) == pytest.approx(whole["forward_us"], rel=1e-9)
    assert sum(l["bwd_us"] for l in p["layers"]) == pytest.approx(whole["backward_us"], rel=1e-9)
    assert whole["layers_forward_us"] > 0 and whole["layers_backward_us"] > 0
    for ranks in ("1", "2"):
        timed = str(tmp_path / ("t%s.json" % ranks))
        r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", timed,
                    "--batch", "4", "--steps", "3", "--ranks", ranks, "--layer-times", "as-timed")
        assert r.returncode == 0, r.stderr
        assert "layer times as timed alone" in r.stdout
        t = json.load(open(timed))
        assert t["whole_pass"]["fitted"] is False and set(t["whole_pass"]) == {"forward_us", "backward_us", "fitted"}
        r = fuseplan("predict", "--model", model, "--profile", timed, "--cluster", "local-cpu", "--gpus", "2",
                     "--batch-per-gpu", "4", "--precision", "fp32")
        assert r.returncode == 0, r.stderr
    fitted = str(tmp_path / "f.json")
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", fitted,
                "--batch", "4", "--steps", "3", "--ranks", "2")
    assert r.returncode == 0 and "layer times fitted to the whole model" in r.stdout, r.stdout + r.stderr
    f = json.load(open(fitted))  # the slowest rank's whole pass, the layers fitted to it
    assert sum(l["bwd_us"] for l in f["layers"]) == pytest.approx(f["whole_pass"]["backward_us"], rel=1e-9)


def test_a_forward_torch_fx_cannot_trace_is_exported_from_its_modules(tmp_path):
    model, prof = str(tmp_path / "m.json"), str(tmp_path / "p.json")
    r = run_cli("export", "ddp_check:gated_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", prof,
                "--batch", "4", "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert "note: torch.fx cannot trace ddp_check:gated_cnn (TypeError: float() argument" in r.stdout
    doc = as_fuseplan_reads(model)  # every layer reads the shape its producer gives
    names = [l["name"] for l in doc["layers"]]
    # The leaf modules and the operations between them as the forward ran them: the
    # residual add, and torch.flatten before fc; the mean the forward tests is no layer.
    assert names == ["conv1", "bn1", "relu1", "conv2", "bn2", "add", "relu2", "pool", "flatten", "fc"]
    assert [l["kind"] for l in doc["layers"]][-5:] == ["add", "relu", "adaptive_avgpool", "flatten", "linear"]
    assert doc["layers"][5]["inputs"] == [2, 4]
    module = ddp_check.gated_cnn()
    assert json.load(open(model))["layers"][0]["params"][0]["name"] == "conv1.weight"
    assert fingerprint([(n, list(p.shape)) for n, p in module.named_parameters()]) == \
        json.load(open(prof))["fingerprint"]
    assert [l["name"] for l in json.load(open(prof))["layers"]] == names
    r = fuseplan("predict", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32")
    assert r.returncode == 0, r.stderr
    # A parameter used by an operation between modules is that operation's layer's.
    r = run_cli("export", "ddp_check:gated_scale", "--input-shape", "3,8,8", "--out", str(tmp_path / "s.json"))
    assert r.returncode == 0, r.stderr
    last = json.load(open(tmp_path / "s.json"))["layers"][-1]
    assert last["name"] == "mul" and [p["name"] for p in last["params"]] == ["scale"]
    # One the forward does not use would never get a gradient: refused.
    r = run_cli("export", "ddp_check:gated_unused", "--input-shape", "3,8,8", "--out", str(tmp_path / "u.json"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "used these parameters in no module and no torch operation on its inputs: unused" in r.stderr
    assert not os.path.exists(tmp_path / "u.json")


def test_gradients_out_of_layer_order_are_reported():
    class Swapped(torch.nn.Module):  # registered a, b; used b then a
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.a(self.b(x))

    _, info, _, _ = export_model(Swapped(), torch.randn(2, 4))
    assert info.order_matches  # the file follows the forward, not the registration
    model = torch.nn.Linear(4, 4)
    _, info, _, _ = export_model(model, torch.randn(2, 4))
    assert info.gradient_order == ["bias", "weight"] or info.gradient_order == ["weight", "bias"]


def test_export_with_profile_feeds_predict(tmp_path):
    model, prof = str(tmp_path / "m.json"), str(tmp_path / "p.json")
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", prof,
                "--batch", "4", "--steps", "3")
    assert r.returncode == 0, r.stderr
    p = json.load(open(prof))
    assert p["schema"] == "fuseplan.profile/1" and p["batch"] == 4 and p["optimizer_us"] > 0
    assert all(l["fwd_us"] > 0 for l in p["layers"])
    side_by_side = str(tmp_path / "p2.json")
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", side_by_side,
                "--batch", "4", "--steps", "3", "--ranks", "2")
    assert r.returncode == 0, r.stderr
    p2 = json.load(open(side_by_side))
    assert p2["device"].endswith("2 ranks side by side (the slowest per layer)")
    assert [l["name"] for l in p2["layers"]] == [l["name"] for l in p["layers"]]
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".fuseplan")]  # no temporary left
    r = fuseplan("predict", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32")
    assert r.returncode == 0, r.stderr


def test_a_pytorch_profile_calibrates_the_compute_per_layer_class(tmp_path):
    """The bridge's measured layer times fit the cluster's per-class efficiencies
    (`fuseplan calibrate --profile --model`); the calibrated cluster then predicts the
    measured forward + backward of the classes the fit did not pin at a bound."""
    model, prof, cal = str(tmp_path / "m.json"), str(tmp_path / "p.json"), str(tmp_path / "cal.json")
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", prof,
                "--batch", "4", "--steps", "3")
    assert r.returncode == 0, r.stderr
    r = fuseplan("calibrate", "--cluster", "local-cpu", "--profile", prof, "--model", model, "--out", cal)
    assert r.returncode == 0, r.stderr
    by_kind = json.load(open(cal))["device"]["by_kind"]
    assert "conv_kxk" in by_kind and "fp32" in by_kind["conv_kxk"]["compute_efficiency"]
    # The fit's table: class, layers, measured ms, roofline ms, fitted key, value, after ms.
    rows = [line.split() for line in r.stdout.splitlines()
            if line.startswith("  ") and len(line.split()) >= 7 and line.split()[1].isdigit()]
    assert {row[0] for row in rows} >= {"conv_kxk", "conv_stem", "norm"}
    prof_doc = json.load(open(prof))
    # A flatten is a view: no work to price, so no class to fit.
    views = {l["name"] for l in json.load(open(model))["layers"] if l["kind"] == "flatten"}
    measured_ms = sum(l["fwd_us"] + l["bwd_us"] for l in prof_doc["layers"] if l["name"] not in views) / 1e3
    assert sum(float(row[2]) for row in rows) == pytest.approx(measured_ms, abs=0.001 * len(rows))
    for row in rows:
        if row[-1] != "*":  # a class fitted inside its range reproduces its measured time
            assert float(row[-1]) == pytest.approx(float(row[2]), abs=0.001), row
    after_ms = sum(float(row[7] if row[-1] == "*" else row[6]) for row in rows)
    trace = str(tmp_path / "trace.json")
    r = fuseplan("predict", "--model", model, "--cluster", cal, "--gpus", "1", "--batch-per-gpu",
                 str(prof_doc["batch"]), "--precision", "fp32", "--trace", trace)
    assert r.returncode == 0, r.stderr
    predicted_ms = sum(e["dur"] for e in json.load(open(trace))["traceEvents"]
                       if e.get("cat") in ("forward", "backward") and e["name"] not in views) / 1e3
    assert predicted_ms == pytest.approx(after_ms, rel=1e-2)


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
@pytest.mark.parametrize("buckets,ranks", [
    ([(0, 2, 0, "fp32"), (2, 7, 1, "fp32"), (7, 10, 0, "fp32")], 2),
    ([(0, 10, 0, "fp32")], 2),
    ([(0, 2, 0, "fp32"), (2, 7, 1, "fp32"), (7, 10, 0, "fp32")], 3),  # a division that rounds
])
def test_plan_ddp_gradients_equal_ddp(tmp_path, buckets, ranks, engine):
    out = str(tmp_path / "out.json")
    jobs.spawn(ranks, ddp_check.compare_with_ddp, (out, buckets, True, engine))
    ranks = json.load(open(out))
    for r in ranks:
        assert r["engine"] == engine
        assert r["shared"] == 0, "PlanDDP's .grad share storage (views of a bucket)"
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-6 * scale + 1e-9, name
        for b, e in zip(buckets, r["events"]):
            assert e["start"] >= e["ready"] and e["end"] >= e["start"]
        for stream in {b[2] for b in buckets}:  # a stream runs its buckets one at a time, in plan order
            mine = [e for b, e in zip(buckets, r["events"]) if b[2] == stream]
            assert all(a["end"] <= b["start"] for a, b in zip(mine, mine[1:]))


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
def test_plan_ddp_with_frozen_parameters_equals_ddp_and_buckets_only_the_trained_ones(tmp_path, engine):
    """Fine-tuning: the first conv and its norm frozen in both trainers. The plan's buckets
    cover the 6 trained tensors; the 4 frozen ones get no gradient in either (the Reducer
    crashed the process, and the hooks engine waited for them forever, before)."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_with_ddp, (out, [(0, 3, 0, "fp32"), (3, 6, 1, "fp32")], True, engine, False, 4))
    for r in json.load(open(out)):
        assert r["engine"] == engine
        assert r["no_grad"] == ["0.weight", "0.bias", "1.weight", "1.bias"]
        assert len(r["diffs"]) == 6
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-6 * scale + 1e-9, name


def test_a_parameter_the_forward_never_reads_is_refused_unless_frozen():
    class Unused(torch.nn.Module):  # a head kept for another task
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(10, 10), torch.nn.Linear(10, 10)

        def forward(self, x):
            return self.a(x)

    model = Unused()
    with pytest.raises(ValueError, match=r"not used by the traced forward: b.weight, b.bias \(they would never get a "
                                         r"gradient: freeze them with requires_grad_\(False\)"):
        export_model(model, torch.randn(2, 10))
    model.b.requires_grad_(False)
    doc, info, _, _ = export_model(model, torch.randn(2, 10))
    assert [p["name"] for l in doc["layers"] for p in l["params"]] == ["a.weight", "a.bias"]
    assert info.fingerprint == fingerprint([("a.weight", [10, 10]), ("a.bias", [10])])


def test_a_frozen_backbone_exports_with_its_frozen_parameters_marked_and_fuseplan_prices_what_trains(tmp_path):
    import fuseplan_torch
    model = torchvision.models.resnet18(num_classes=10)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("layer4", "fc")))
    path, prof = str(tmp_path / "frozen.json"), str(tmp_path / "frozen-profile.json")
    info = fuseplan_torch.export(model, torch.randn(2, 3, 32, 32), path, profile=prof, name="frozen",
                                 profile_inputs=torch.randn(4, 3, 32, 32), steps=2, fit_whole_pass=False)
    doc = json.load(open(path))
    frozen = [p["name"] for l in doc["layers"] for p in l["params"] if p.get("frozen")]
    trained = [(p["name"], p["shape"]) for l in doc["layers"] for p in l["params"] if not p.get("frozen")]
    assert len(frozen) == 45 and len(trained) == 17
    assert validate_schemas.errors(doc, MODEL_SCHEMA, MODEL_SCHEMA) == []
    assert info.fingerprint == fingerprint(trained) and info.order_matches
    read = as_fuseplan_reads(path)
    again = str(tmp_path / "again.json")  # what fuseplan writes back keeps the frozen marks, and reads the same
    write_json(read, again)
    assert as_fuseplan_reads(again) == read
    assert [p["name"] for l in read["layers"] for p in l["params"] if p.get("frozen")] == frozen
    r = fuseplan("show", path)
    assert r.returncode == 0 and "17 tensors" in r.stdout and "(and 45 frozen tensors" in r.stdout
    assert "fingerprint " + info.fingerprint in r.stdout
    # No layer before layer4 has a backward (nothing upstream trains): the profile times an
    # empty call there, as training runs none.
    times = {l["name"]: l for l in json.load(open(prof))["layers"]}
    assert times["layer1.0.conv1"]["bwd_us"] < 0.1 * times["layer1.0.conv1"]["fwd_us"]
    assert times["layer4.1.conv2"]["bwd_us"] > 0.5 * times["layer4.1.conv2"]["fwd_us"]
    r = fuseplan("predict", "--model", path, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32", "--json")
    assert r.returncode == 0, r.stderr


def test_the_measured_iteration_is_the_slowest_ranks_mean_step():
    from fuseplan_torch.runner import slowest_mean
    # Two ranks stepping at one rate, their noise out of phase: each step's slowest rank
    # would read 1.2 s, a rate neither rank ran at.
    assert slowest_mean([[1.0, 1.2, 1.0, 1.2], [1.2, 1.0, 1.2, 1.0]]) == pytest.approx(1.1)
    assert slowest_mean([[1.0, 1.0], [1.5, 1.3]]) == pytest.approx(1.4)  # a straggler sets the rate


def test_trainers_measured_side_by_side_get_every_step_as_the_slowest_rank_saw_it(tmp_path):
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.side_by_side, (out, 3))
    ranks = json.load(open(out))
    assert ranks[0] == ranks[1]  # the slowest rank's time of each step, on every rank
    assert set(ranks[0]) == {"plan", "ddp"}
    assert all(len(t) == 3 and all(x > 0 for x in t) for t in ranks[0].values())


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
def test_plan_ddp_accumulated_gradients_equal_ddp(tmp_path, engine):
    """Two backwards without zeroing: both average the accumulated .grad (DDP's semantics);
    PlanDDP's .grad are tensors of their own, accumulated in place and copied into the
    buckets."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_with_ddp, (out, [(0, 3, 0, "fp32"), (3, 10, 1, "fp32")], False, engine))
    for r in json.load(open(out)):
        assert r["shared"] == 0
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-6 * scale + 1e-9, name


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
@pytest.mark.parametrize("set_to_none", [True, False])
def test_plan_ddp_gradient_as_bucket_view_equals_ddp(tmp_path, set_to_none, engine):
    """gradient_as_bucket_view=True, DDP's option: the gradients are still DDP's, zeroed
    or accumulated, and the .grad of each bucket are views of it (they share its storage)."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_with_ddp,
               (out, [(0, 3, 0, "fp32"), (3, 10, 0, "fp32")], set_to_none, engine, True))
    for r in json.load(open(out)):
        assert r["shared"] == 8  # 10 tensors in 2 buckets: all but the first of each share it
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-6 * scale + 1e-9, name


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
@pytest.mark.parametrize("no_sync", [True, False])
def test_plan_ddp_accumulates_micro_batches_as_ddp_does(tmp_path, no_sync, engine):
    """Three micro-batches of other data: inside no_sync() for two of them, or allreducing
    every one; PlanDDP's gradients equal DDP's either way, and only the allreducing
    backwards have bucket times."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_accumulated, (out, no_sync, engine))
    for r in json.load(open(out)):
        assert r["engine"] == engine
        assert r["synced"] == (1 if no_sync else 3)
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 1e-6 * scale + 1e-9, name


def test_outputs_through_links_and_onto_dev_null_are_written_through(tmp_path):
    """A link keeps being a link (the file it names gets the output); a device and standard
    output are written through, never replaced by a rename (as root one would)."""
    (tmp_path / "sub").mkdir()
    os.symlink("sub/model.json", str(tmp_path / "link.json"))  # dangling until written
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "link.json", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert os.path.islink(tmp_path / "link.json")
    assert json.load(open(tmp_path / "sub" / "model.json"))["schema"] == "fuseplan.model/1"
    # The test's own copy of /dev/null (where root may make one) and standard output by /proc
    # (where a rename fails): a regression cannot replace the machine's.
    null = str(tmp_path / "null")
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        null = os.devnull
    r = run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "/proc/self/fd/1", "--profile",
                null, "--steps", "1", "--warmup", "0", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert '"schema": "fuseplan.model/1"' in r.stdout
    assert stat.S_ISCHR(os.stat(null).st_mode)


def test_output_files_are_refused_before_any_work_with_one_line(tmp_path):
    existing = tmp_path / "m.json"
    existing.write_text("keep")
    base = ["export", "ddp_check:small_cnn", "--input-shape", "3,8,8"]
    for extra, says in [(["--out", ""], "--out: an empty file name"),
                        (["--out", str(tmp_path)], "is a directory (give a file name)"),
                        (["--out", "/nonexistent/m.json"], "--out: directory /nonexistent does not exist"),
                        (["--out", str(existing), "--profile", ""], "--profile: an empty file name")]:
        r = run_cli(*base, *extra)
        assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert existing.read_text() == "keep"
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--report", "")
    assert r.returncode == 2 and "--report" in r.stderr and r.stderr.count("\n") == 1, r.stderr


@pytest.mark.parametrize("command, says", [
    (["export", "--out", "m.json", "--seed", "99999999999999999999"], "--seed: must be at most"),  # was a traceback
    (["export", "--out", "m.json", "--threads", "99999999999999999999"], "--threads: must be at most"),  # was SIGABRT
    (["export", "--out", "m.json", "--input-shape", "99999999999999999999"], "more than 2^31 elements per sample"),
    (["export", "--out", "m.json", "--profile", "p.json", "--warmup", "-1"], "--warmup: must be >= 0 (got -1)"),
    (["run", "--batch", "-1"], "--batch: must be >= 0 (got -1)"),
    (["run", "--bucket-cap-mb", "nan"], "--bucket-cap-mb: must be in (0, 1e6] MB (got nan)"),
    (["run", "--bucket-cap-mb", "1e999"], "--bucket-cap-mb: must be in (0, 1e6] MB (got inf)"),
])
def test_hostile_numbers_are_refused_with_one_line(tmp_path, command, says):
    r = run_cli(command[0], "ddp_check:small_cnn", "--input-shape", "3,8,8",
                *[str(tmp_path / c) if c.endswith(".json") else c for c in command[1:]])
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_plan_file_missing_what_plan_ddp_reads_is_refused_naming_the_path(tmp_path):
    from fuseplan_torch.plan_ddp import PlanError, load_plan
    path = str(tmp_path / "p.json")
    for doc, says in [({"schema": "fuseplan.plan/1"}, "p.json: $.model: missing"),
                      ({"schema": "fuseplan.plan/1", "model": {"name": "m", "tensors": 2, "fingerprint": "f"},
                        "gpus": 0, "batch_per_gpu": 1, "compute": "fp32", "buckets": []}, "$.gpus: expected int >= 1"),
                      ({"schema": "fuseplan.plan/1", "model": {"name": "m", "tensors": 2, "fingerprint": "f"},
                        "gpus": 2, "batch_per_gpu": 1, "compute": "fp32", "buckets": [{"begin": 0}]},
                       "$.buckets[0].end: missing"),
                      ({"schema": "fuseplan.plan/1", "model": {"name": "m", "tensors": 2, "fingerprint": "f"},
                        "gpus": 2, "batch_per_gpu": 1, "compute": "fp32", "accumulate": {"steps": 1, "no_sync": True},
                        "buckets": [{"begin": 0, "end": 2, "algorithm": "auto", "transfer": "fp32"}]},
                       "$.accumulate.no_sync: needs steps 2 or more")]:
        with open(path, "w") as f:
            json.dump(doc, f)
        with pytest.raises(PlanError) as e:
            load_plan(path)
        assert says in str(e.value)
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", path)
    assert r.returncode == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr  # the last one's


def test_a_plan_whose_model_file_is_gone_or_endless_input_is_refused_in_one_line(tmp_path):
    plan, _ = ddp_check.plan_for(ddp_check.small_cnn(), torch.randn(2, 3, 8, 8), [(0, 10, 0, "fp32")], 2)
    plan["model"]["file"] = "gone.json"
    with open(tmp_path / "p.json", "w") as f:
        json.dump(plan, f)
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", "p.json", cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--plan p.json: $.model.file: " in r.stderr and "gone.json: [Errno 2]" in r.stderr
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", "/dev/zero", cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--plan /dev/zero: more than 268435456 bytes" in r.stderr


def test_plan_ddp_refuses_a_plan_that_does_not_fit(tmp_path):
    import torch.distributed as dist
    from fuseplan_torch.plan_ddp import PlanDDP, PlanError
    dist.init_process_group("gloo", init_method="file://" + str(tmp_path / "pg"), rank=0, world_size=1)
    try:
        model = ddp_check.small_cnn()
        plan, names = ddp_check.plan_for(model, torch.randn(2, 3, 8, 8), [(0, 4, 0, "fp32"), (4, 10, 0, "fp32")], 1)
        plan["_path"] = "p.json"
        bad = json.loads(json.dumps(plan))
        bad["buckets"][1]["begin"] = 5
        with pytest.raises(PlanError, match=r"p.json: \$.buckets\[1\]: \[5, 10\) does not continue"):
            PlanDDP(model, bad, names)
        bad = json.loads(json.dumps(plan))
        bad["model"]["fingerprint"] = "0000000000000000"
        with pytest.raises(PlanError, match=r"p.json: \$.model.fingerprint: the plan is for small_cnn"):
            PlanDDP(model, bad, names)
        bad = json.loads(json.dumps(plan))
        bad["gpus"] = 2
        with pytest.raises(PlanError, match=r"p.json: \$.gpus: the plan is for 2 ranks, the process group has 1"):
            PlanDDP(model, bad, names)
        PlanDDP(model, plan, names).close()
    finally:
        dist.destroy_process_group()


def gloo_sums(tmp_path, dtype):
    """Whether this torch's gloo sums `dtype`, asked of gloo itself, not of PlanDDP."""
    out = str(tmp_path / ("sums-%s.json" % dtype))
    jobs.spawn(2, ddp_check.backend_sums, (out, dtype))
    return json.load(open(out))["sums"]


def test_a_plan_stream_starts_the_queued_bucket_before_it_casts_back_the_one_summed(monkeypatch):
    """On the host, a stream whose next bucket is queued starts that bucket's allreduce
    before it casts the 16-bit sum just made back into its FP32 bucket, so that pass does
    not delay it; each future still holds its own bucket's sum, in submission order. The
    allreduce is a stand-in that logs (no process group): the first one is held until all
    three are queued."""
    import threading
    from fuseplan_torch import plan_ddp

    log, release = [], threading.Event()

    class Work:
        def __init__(self, tensor):
            self.tensor = tensor

        def wait(self):
            if len(log) == 1:  # the first allreduce: the other two are queued meanwhile
                release.wait(10)
            self.tensor.mul_(2)  # the sum over two ranks holding the same values
            log.append("end %d" % int(self.tensor[0].item() // 2))

    def all_reduce(tensor, group=None, async_op=False):
        log.append("start %d" % int(tensor[0].item()))
        return Work(tensor)

    back = plan_ddp._back_into
    monkeypatch.setattr(plan_ddp.dist, "all_reduce", all_reduce)
    monkeypatch.setattr(plan_ddp, "_back_into", lambda b, w: (log.append("back %d" % int(w[0].item() // 2)),
                                                              back(b, w)))
    stream = plan_ddp._Stream(group=None)
    try:
        buffers = [torch.full((1000,), float(k)) for k in range(3)]
        times = [plan_ddp.BucketTimes() for _ in buffers]
        futures = [stream.submit(b.half(), b, t, 0.0) for b, t in zip(buffers, times)]
        release.set()
        results = [f.wait() for f in futures]
    finally:
        stream.stop()
    assert log == ["start 0", "end 0", "start 1", "back 0", "end 1", "start 2", "back 1", "end 2", "back 2"]
    for k, r in enumerate(results):
        assert r is buffers[k] and torch.equal(r, torch.full((1000,), 2.0 * k))
    for before, after in zip(times, times[1:]):
        assert before.start_s <= before.end_s <= after.start_s


def test_a_plan_stream_hands_an_allreduce_that_fails_to_start_to_its_own_bucket(monkeypatch):
    """A queued bucket whose allreduce raises as it starts (early, once the bucket before
    it is summed) fails its own future; the buckets before and after it complete."""
    import threading
    from fuseplan_torch import plan_ddp

    release, calls = threading.Event(), []

    class Work:
        def __init__(self, tensor):
            self.tensor = tensor

        def wait(self):
            if len(calls) == 1:
                release.wait(10)
            self.tensor.mul_(2)

    def all_reduce(tensor, group=None, async_op=False):
        calls.append(int(tensor[0].item()))
        if tensor[0].item() == 1:
            raise RuntimeError("connection reset by peer")
        return Work(tensor)

    monkeypatch.setattr(plan_ddp.dist, "all_reduce", all_reduce)
    stream = plan_ddp._Stream(group=None)
    try:
        buffers = [torch.full((10,), float(k)) for k in range(3)]
        futures = [stream.submit(b, b, plan_ddp.BucketTimes(), 0.0) for b in buffers]
        release.set()
        assert torch.equal(futures[0].wait(), torch.zeros(10))
        with pytest.raises(RuntimeError, match="connection reset by peer"):
            futures[1].wait()
        assert torch.equal(futures[2].wait(), torch.full((10,), 4.0))
    finally:
        stream.stop()
    assert calls == [0, 1, 2]


@pytest.mark.parametrize("engine", ["reducer", "hooks"])
def test_plan_ddp_fp16_transfer_is_close_to_ddp(tmp_path, engine):
    """Within fp16 rounding of DDP's gradients where gloo sums fp16 (torch 1.13 and 2.6);
    refused before any backward, with its JSON path, where it does not (Debian's torch
    2.14, whose gloo sums neither fp16 nor bf16)."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_with_ddp, (out, [(0, 4, 0, "fp16"), (4, 10, 1, "fp32")], True, engine))
    results = json.load(open(out))
    if not gloo_sums(tmp_path, "float16"):
        assert "error" in results, "gloo cannot sum fp16, yet PlanDDP took the plan"
        assert "$.buckets[0].transfer: the gloo backend of torch" in results["error"]
        assert "cannot sum fp16" in results["error"]
        return
    assert "error" not in results, results
    for r in results:  # one per rank
        assert r["engine"] == engine
        for name, (diff, scale) in r["diffs"].items():
            assert diff <= 2e-3 * scale + 1e-7, name  # fp16 rounding of the sent gradients and their sum


def test_plan_ddp_sends_bf16_where_the_backend_sums_it_and_refuses_it_where_not(tmp_path):
    """gloo sums bf16 in torch 2.6, not in 1.13 (nor Debian's 2.14): there the plan is
    refused before any backward, with its JSON path; here the gradients come within bf16
    rounding of DDP's."""
    out = str(tmp_path / "out.json")
    jobs.spawn(2, ddp_check.compare_with_ddp, (out, [(0, 4, 0, "fp32"), (4, 10, 0, "bf16")]))
    r = json.load(open(out))
    if not gloo_sums(tmp_path, "bfloat16"):  # torch 1.13's gloo, and Debian's torch 2.14
        assert "error" in r, "gloo cannot sum bf16, yet PlanDDP took the plan"
        assert "$.buckets[1].transfer: the gloo backend of torch" in r["error"] and "cannot sum bf16" in r["error"]
        return
    assert "error" not in r, r
    for rank in r:  # one result per rank
        for name, (diff, scale) in rank["diffs"].items():
            assert diff <= 1.6e-2 * scale + 1e-7, name  # bf16 (8 significant bits) rounding of the sent gradients


@pytest.mark.parametrize("rule,frozen", [("2.6", False), ("1.13", False), ("2.6", True)])
def test_exported_ddp_settings_form_the_buckets_fuseplan_predicted(tmp_path, rule, frozen):
    """The DDP bucket rule fuseplan prices, held against torch's own DDP with the exported
    first-bucket cap and bucket_cap_mb: the default settings under any torch, torch 1.13's
    (`--torch 1.13`) under torch 1.x; and for a model fine-tuned with its stem and first
    stages frozen, whose frozen parameters DDP leaves out of its buckets as fuseplan does."""
    if rule == "1.13" and TORCH_MAJOR >= 2:
        pytest.skip("torch %s caps DDP's first bucket at a given bucket_cap_mb" % torch.__version__)
    model, plan = str(tmp_path / "m.json"), str(tmp_path / "plan.json")
    write_json(export_model(ddp_check.resnet18_fine_tuned(frozen), torch.randn(2, 3, 32, 32), name="resnet18")[0],
               model)
    r = fuseplan("tune", "--model", model, "--cluster", "local-cpu", "--gpus", "2", "--batch-per-gpu", "8",
                 "--precision", "fp32", "--strategy", "k-split", "--segments", "4", "--out", plan)
    assert r.returncode == 0, r.stderr
    r = fuseplan("export", "--plan", plan, "--to", "ddp", "--json", "--torch", rule)
    assert r.returncode == 0, r.stderr
    settings = json.loads(r.stdout)
    if rule == "2.6":
        cap = settings["bucket_cap_mb"]
        assert cap is None or settings["first_bucket_bytes"] == int(cap * 2**20)  # one rule for both torches
    params = [p for l in json.load(open(model))["layers"] for p in l["params"] if not p.get("frozen")]
    names = [p["name"] for p in params]
    assert len(names) == (32 if frozen else 62)  # layer3 and layer4: 15 each, fc: 2
    starts = settings["starts"] + [len(names)]
    predicted = [[names[len(names) - 1 - pos] for pos in range(a, b)] for a, b in zip(starts, starts[1:])]
    out = str(tmp_path / "buckets.json")
    jobs.spawn(2, ddp_check.ddp_buckets, (out, settings, frozen))
    formed = json.load(open(out))
    assert len(formed) >= 2  # DDP's buckets after its rebuild, not the one of the first step
    # Per bucket, its layers and each tensor's size: what the prediction prices (bytes, and
    # when they are ready). DDP rebuilds its buckets in the order gradients arrived, and
    # autograd gives a BatchNorm's weight before its bias where fuseplan's backward order
    # has the bias first, so where a cap closes a bucket between the two, DDP's bucket
    # holds the other one of the pair: same layer, same size (docs/export.md).
    size = {p["name"]: math.prod(p["shape"]) for p in params}
    def content(bucket):
        return sorted((name.rsplit(".", 1)[0], size[name]) for name in bucket)
    assert [content(b) for b in formed] == [content(b) for b in predicted]


def exported_small_cnn(tmp_path):
    """small_cnn exported with a profile: the paths of its model, profile, and of a plan and
    a report still to be written."""
    model, prof, plan, rep = (str(tmp_path / n) for n in ("m.json", "p.json", "plan.json", "rep.json"))
    assert run_cli("export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", model, "--profile", prof,
                   "--batch", "4", "--steps", "3").returncode == 0
    return model, prof, plan, rep


def predict_small_cnn(model, prof, plan, *flags):
    """A plan for small_cnn on 2 ranks of local-cpu (batch 4, ring, two buckets: splits:4)."""
    r = fuseplan("predict", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32", "--algorithm", "ring", "--buckets", "splits:4",
                 *flags, "--out", plan)
    assert r.returncode == 0, r.stderr


def run_small_cnn(plan, rep, iterations):
    """small_cnn trained with `plan` on 2 ranks, its report written to `rep`."""
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", plan, "--report", rep,
                "--iterations", str(iterations), "--warmup", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    return r


def test_run_writes_a_report_that_verify_reads(tmp_path):
    model, prof, plan, rep = exported_small_cnn(tmp_path)
    r = fuseplan("tune", "--model", model, "--profile", prof, "--cluster", "local-cpu", "--gpus", "2",
                 "--batch-per-gpu", "4", "--precision", "fp32", "--algorithm", "ring", "--strategy", "k-split",
                 "--segments", "2", "--pack", "inline", "--out", plan)
    assert r.returncode == 0, r.stderr
    assert json.load(open(plan))["pack_on"] == "compute"  # PlanDDP's copies, priced in backward
    r = run_small_cnn(plan, rep, 3)
    assert "PlanDDP small_cnn x 2 ranks" in r.stdout
    assert "2 buckets, reducer engine" in r.stdout  # torch 1.13 has the Reducer: auto takes it
    report = json.load(open(rep))
    assert report["source"] == "measured" and len(report["buckets"]) == 2
    assert report["cluster"] == "this machine (torch.distributed gloo, 2 ranks, glibc heap kept)"  # in each rank
    # the time after backward and the last allreduce (the copies back into .grad), part of the exposed time
    assert 0 < report["copy_back_s"] <= report["exposed_comm_s"]
    assert "cast" not in report  # FP32 buckets: nothing cast
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", prof, "--no-sim")
    assert r.returncode == 0, r.stderr
    assert "iteration" in r.stdout
    assert "of which copies back" in r.stdout  # predicted for a plan packed on compute, and measured
    r = run_cli("run", "torchvision.models:resnet18", "--input-shape", "3,8,8", "--plan", plan)  # another module
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--plan " + plan + ": $.model" in r.stderr


def test_run_reports_the_casts_it_made_and_verify_predicts_them(tmp_path):
    """PlanDDP casts a 16-bit bucket on its plan stream whatever the plan's `cast` says;
    its report says so, and verify predicts the run with those casts."""
    model, prof, plan, rep = exported_small_cnn(tmp_path)
    predict_small_cnn(model, prof, plan, "--transfer", "fp16")
    assert "cast" not in json.load(open(plan))
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", plan, "--report", rep,
                "--iterations", "2", "--warmup", "1", "--threads", "1")
    if r.returncode != 0 and "cannot sum fp16" in r.stderr:
        pytest.skip("this torch's gloo cannot sum fp16")
    assert r.returncode == 0, r.stderr
    assert json.load(open(rep))["cast"] == "comm"
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", prof, "--no-sim")
    assert r.returncode == 0, r.stderr
    assert "the run cast its 16-bit buckets on comm (the plan's cast: none)" in r.stdout


def test_run_profiles_its_layers_in_its_own_job_for_verify(tmp_path):
    model, prof, plan, rep = exported_small_cnn(tmp_path)
    predict_small_cnn(model, prof, plan, "--pack", "--pack-on", "compute")
    run_prof = str(tmp_path / "run-profile.json")
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", plan, "--report", rep,
                "--profile", run_prof, "--iterations", "3", "--warmup", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    got = json.load(open(run_prof))
    # the layers timed before the run, the whole pass they are fitted to between its steps
    assert got["device"].endswith("2 ranks side by side (the slowest per layer), whole pass timed between the run's "
                                  "steps"), got["device"]
    assert got["fingerprint"] == json.load(open(prof))["fingerprint"] and got["batch"] == 4
    whole = got["whole_pass"]
    assert whole["fitted"] and got["optimizer_us"] > 0
    for key, total in (("fwd_us", "forward_us"), ("bwd_us", "backward_us")):
        assert sum(l[key] for l in got["layers"]) == pytest.approx(whole[total])
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", run_prof, "--no-sim")
    assert r.returncode == 0, r.stderr
    r = run_cli("run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", plan, "--report", rep,
                "--profile", run_prof, "--layer-times", "as-timed", "--iterations", "2", "--warmup", "1",
                "--threads", "1")
    assert r.returncode == 0, r.stderr
    whole = json.load(open(run_prof))["whole_pass"]
    assert not whole["fitted"] and "layers_forward_us" not in whole


def test_a_sweep_writes_what_calibrate_reads(tmp_path):
    sweep, cal = str(tmp_path / "sweep.json"), str(tmp_path / "cal.json")
    r = run_cli("sweep", "--ranks", "2", "--sizes", "4K:16K", "--iterations", "2", "--out", sweep)
    assert r.returncode == 0, r.stderr
    doc = json.load(open(sweep))
    assert doc["ranks"] == 2 and [p["bytes"] for p in doc["points"]] == [4096, 8192, 16384]
    assert all(p["seconds"] > 0 and p["iterations"] == 2 for p in doc["points"])
    r = fuseplan("calibrate", "--cluster", "local-cpu", "--sweep", sweep, "--accept-degenerate", "--out", cal)
    assert r.returncode == 0, r.stderr
    got = json.load(open(cal))
    # what calibrate read, not what it fitted: two iterations of 4-16 KB are noise, so the fit may put all of
    # the time in either term (CI once fitted alpha 0); one range, as the sizes are too few for more
    assert "sweep.json, 3 sizes on 2 ranks in 1 range(s)" in got["provenance"]["calibrated.ring"]
    ring = got["calibrated"]["ring"]
    assert ring["alpha_us"] >= 0 and ring["beta_us_per_MB"] >= 0 and ring["alpha_us"] + ring["beta_us_per_MB"] > 0


def test_a_sweep_times_each_size_in_blocks_of_nearly_equal_calls():
    """The sweep's median is over up to 5 blocks, which together make the calls asked for."""
    assert jobs._blocks(20, 5) == [4, 4, 4, 4, 4]
    assert jobs._blocks(7, 5) == [2, 2, 1, 1, 1]
    assert jobs._blocks(2, 5) == [1, 1]
    assert jobs._blocks(1, 5) == [1]
    for total in range(1, 40):
        b = jobs._blocks(total, jobs.SWEEP_BLOCKS)
        assert sum(b) == total and len(b) == min(total, 5) and max(b) - min(b) <= 1


HEAP_PROBE = """
import ctypes, resource, sys
from fuseplan_torch.heap import heap_kept, keep_heap
if sys.argv[1] == "keep":
    assert keep_heap() and heap_kept()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
size = 20 << 20
libc.free(libc.malloc(size))
for step in range(3):
    before = faults()
    blocks = [libc.malloc(size) for _ in range(3)]
    for b in blocks:
        ctypes.memset(b, 1, size)
    for b in reversed(blocks):
        libc.free(b)
print(faults() - before)
"""


@pytest.mark.parametrize("heap", ["keep", "trim"])
def test_keep_heap_keeps_freed_memory_so_allocating_again_does_not_fault(heap):
    # Three blocks of 20 MiB allocated, written and freed, three times: the third time's
    # faults. glibc serves the first 20 MiB block by mmap (its first mmap threshold is
    # 128 KiB), and on freeing it raises the mmap threshold to 20 MiB and the trim threshold
    # to twice that: the three blocks then come from the heap, and freeing them leaves
    # 60 MiB at its top, over the trim threshold, so glibc gives it back and every step
    # faults 10,000 of its 15,360 pages in again. Kept, the heap keeps them.
    r = subprocess.run([sys.executable, "-c", HEAP_PROBE, heap], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    faults = int(r.stdout)
    if heap == "keep":
        assert faults < 100, faults
    else:
        assert faults > 5000, faults


def test_run_gradient_as_bucket_view_makes_grads_views_of_the_buckets(tmp_path):
    model, prof, plan, _ = exported_small_cnn(tmp_path)
    predict_small_cnn(model, prof, plan)
    short = ("--input-shape", "3,8,8", "--iterations", "1", "--warmup", "1", "--threads", "1")
    for engine in ("reducer", "hooks"):
        r = run_cli("run", "ddp_check:small_cnn", *short, "--plan", plan, "--engine", engine)
        assert r.returncode == 0 and "views" not in r.stdout, r.stdout + r.stderr
        r = run_cli("run", "ddp_check:small_cnn", *short, "--plan", plan, "--engine", engine,
                    "--gradient-as-bucket-view")
        # splits:4 leaves tensors 0-3 and 4-9 (backward order) in two buckets: all 10 are views
        assert r.returncode == 0 and ", 10 .grad are views of 2 buckets" in r.stdout, r.stdout + r.stderr
    r = run_cli("run", "ddp_check:small_cnn", *short)
    assert r.returncode == 0 and "views" not in r.stdout, r.stdout + r.stderr
    r = run_cli("run", "ddp_check:small_cnn", *short, "--gradient-as-bucket-view")
    assert r.returncode == 0 and ", 10 .grad are views of 1 bucket" in r.stdout, r.stdout + r.stderr  # 25 MB


def test_an_accumulating_plan_runs_and_verify_reads_its_report(tmp_path):
    model, prof, plan, rep = exported_small_cnn(tmp_path)
    predict_small_cnn(model, prof, plan, "--accumulate", "3", "--no-sync")
    r = run_small_cnn(plan, rep, 2)
    assert "per micro-batch" in r.stdout and "3 micro-batches per optimizer step (allreduce on the last)" in r.stdout
    report = json.load(open(rep))
    busy = sum(b["end_s"] - b["start_s"] for b in report["buckets"])
    assert report["comm_busy_s"] == pytest.approx(busy / 3)  # per micro-batch, as predicted
    r = fuseplan("verify", "--plan", plan, "--measured", rep, "--profile", prof)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("args,says", [
    (["export", "nosuchmodule:f", "--input-shape", "3", "--out", "x.json"], "factory: nosuchmodule:f"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,x", "--out", "x.json"], "--input-shape: '3,x'"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "/nonexistent/x.json"], "--out: directory"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--input-dtype", "long", "--out", "x.json"],
     "--vocab: required"),
    (["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--report", "r.json"], "--report: needs --plan"),
    (["sweep", "--ranks", "1", "--out", "s.json"], "--ranks: a sweep needs >= 2 ranks"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "x.json", "--profile", "p.json",
      "--device", "tpu"], "--device: 'tpu' is not a device (valid: cpu, cuda, cuda:N)"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "x.json", "--device", "cuda"],
     "--device: only with --profile"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "x.json", "--profile", "p.json",
      "--device", "cuda:64"], "--device cuda:64: this machine has"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "x.json", "--profile", "p.json",
      "--ranks", "0"], "--ranks: must be >= 1 (got 0)"),
    (["export", "ddp_check:small_cnn", "--out", "x.json"], "--input-shape: required (or --inputs"),
    (["export", "torchvision.models:resnet18", "--kwargs", '{"bogus": 1}', "--input-shape", "3,8,8", "--out", "x.json"],
     "raised TypeError"),
    (["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", "/nonexistent/p.json"],
     "--plan /nonexistent/p.json: [Errno 2]"),
    # (the choices' quoting varies with Python's version)
    (["sweep", "--out", "x.json", "--heap", "free"], "--heap: invalid choice: 'free'"),
    # torch's own message for these is several lines long
    (["export", "torch:zeros", "--input-shape", "3", "--out", "x.json"], "factory: torch:zeros(**{}) raised TypeError"),
    # inputs the module cannot take: refused before tracing, timing or spawning ranks
    (["export", "ddp_check:small_cnn", "--input-shape", "5,8,8", "--out", "x.json"],
     "--input-shape 5,8,8: ddp_check:small_cnn cannot run a batch of this input: RuntimeError: "),
    (["run", "ddp_check:small_cnn", "--input-shape", "5,8,8", "--iterations", "1"],
     "--input-shape 5,8,8: ddp_check:small_cnn cannot run a batch of this input: RuntimeError: "),
    (["export", "tiny_gpt:tiny_gpt", "--kwargs", '{"vocab": 64}', "--input-shape", "16", "--input-dtype", "long",
      "--vocab", "1000", "--out", "x.json"],
     "--input-shape 16 --input-dtype long --vocab 1000: tiny_gpt:tiny_gpt cannot run a batch of this input: "
     "IndexError: "),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--batch", "0", "--out", "x.json"],
     "--batch: must be >= 1 (got 0)"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "x.json", "--profile", "./x.json"],
     "--profile ./x.json: the file --out writes (give another name)"),
    (["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", "x.json", "--report", "x.json"],
     "--report x.json: the file --plan reads (give another name)"),
    (["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--profile", "p.json"], "--profile: needs --plan"),
    (["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--plan", "p.json", "--report", "x.json", "--profile",
      "./x.json"], "--profile ./x.json: the file --report writes (give another name)"),
    (["export", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--out", "/proc/x.json"],
     "--out: cannot write in directory /proc"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, says):
    r = run_cli(*args, cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert says in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert not os.path.exists(tmp_path / "x.json")


@pytest.mark.parametrize("args", [["run", "ddp_check:small_cnn", "--input-shape", "3,8,8", "--backend", "nccl"],
                                  ["sweep", "--backend", "nccl", "--out", "x.json"]])
def test_nccl_without_a_gpu_per_rank_is_refused_before_any_rank_starts(tmp_path, args):
    if torch.cuda.is_available() and torch.cuda.device_count() >= 2:
        pytest.skip("this machine has a GPU per rank")
    r = run_cli(*args, cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "--backend nccl: 2 ranks need 2 GPUs (one per rank), this machine has" in r.stderr
    assert not os.path.exists(tmp_path / "x.json")


class _FakeCuda:
    """Stands in for torch.cuda in the GPU timing's control loop: the device reaches the
    start event before the host has finished issuing the call until the sleep is at least
    `enough` cycles; each call then takes `device_ms` on the device."""

    def __init__(self, enough, device_ms):
        self.enough, self.device_ms, self.sleeps, self.cycles = enough, device_ms, [], 0
        fake = self

        class Event:
            def __init__(self, enable_timing=False):
                pass

            def record(self):
                pass

            def query(self):  # reached: the sleep was too short for the host to get ahead
                return fake.cycles < fake.enough

            def elapsed_time(self, other):
                return fake.device_ms

        self.Event = Event

    def device(self, d):
        import contextlib
        return contextlib.nullcontext()

    def synchronize(self, device=None):
        pass

    def _sleep(self, cycles):
        self.cycles = cycles
        self.sleeps.append(cycles)


def test_gpu_layer_timing_sleeps_until_the_host_is_ahead_and_keeps_device_times(monkeypatch):
    from fuseplan_torch import profile
    fake = _FakeCuda(enough=profile._SLEEP_START * 8, device_ms=0.25)
    monkeypatch.setattr(profile.torch, "cuda", fake)
    calls = []
    us = profile._median_us(lambda s: calls.append(s), lambda: "state", 2, 3, torch.device("cuda"))
    assert us == pytest.approx(250.0)
    # Three doublings before the host got ahead, then 2 warm-up and 3 timed calls.
    assert fake.sleeps[:4] == [profile._SLEEP_START << k for k in range(4)]
    assert len(calls) == 3 + 2 + 3 and all(c == "state" for c in calls)
    # A call that never lets the host get ahead (it waits for the device) is timed at the
    # largest sleep, with the wait in it, rather than retried for ever.
    stuck = _FakeCuda(enough=profile._SLEEP_LIMIT * 2, device_ms=1.0)
    monkeypatch.setattr(profile.torch, "cuda", stuck)
    assert profile._median_us(lambda s: None, lambda: None, 1, 2, torch.device("cuda")) == pytest.approx(1000.0)
    assert max(stuck.sleeps) == profile._SLEEP_LIMIT


def _kernels_per_tensor(optimizer_class, **options):
    """The aten ops one step of `optimizer_class` and zero_grad run on one parameter tensor
    (the CPU profiler's; each is a kernel on a GPU)."""
    from torch.profiler import ProfilerActivity, profile
    p = torch.nn.Parameter(torch.randn(1000))
    opt = optimizer_class([p], lr=1e-3, **options)
    p.grad = torch.randn(1000)
    opt.step()  # the state is made on the first step
    p.grad = torch.randn(1000)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        opt.step()
        opt.zero_grad(set_to_none=False)
    return [e.name for e in prof.events() if e.name.startswith("aten::") and [1000] in e.input_shapes]


@pytest.mark.parametrize("optimizer_class, options", [
    (torch.optim.SGD, {"momentum": 0.9, "weight_decay": 1e-4}),
    (torch.optim.Adam, {"weight_decay": 0.01}),
    (torch.optim.AdamW, {"weight_decay": 0.01}),
])
def test_optimizer_flags_price_the_kernels_torch_runs_per_tensor(optimizer_class, options, tmp_path):
    from fuseplan_torch import optimizer_flags
    flags = optimizer_flags(optimizer_class([torch.nn.Parameter(torch.randn(4))], lr=1e-3, **options))
    assert flags[:4] == ["--optimizer", "sgd" if optimizer_class is torch.optim.SGD else "adam",
                         "--optimizer-kernels", flags[3]]
    assert flags[3].startswith("per-tensor")  # CPU parameters: the single-tensor loop in torch 1.13 and 2
    plan = str(tmp_path / "plan.json")
    r = fuseplan("predict", "--model", "resnet18", "--gpus", "2", "--out", plan, *flags)
    assert r.returncode == 0, r.stderr
    priced = json.load(open(plan))["optimizer"]["kernels_per_tensor"]
    ops = _kernels_per_tensor(optimizer_class, **options)
    assert len(ops) == priced, ops


def test_optimizer_flags_name_the_launch_and_refuse_what_fuseplan_does_not_price():
    from fuseplan_torch import optimizer_flags
    params = [torch.nn.Parameter(torch.randn(4))]
    flags = optimizer_flags(torch.optim.AdamW(params, lr=1e-3, foreach=True))
    assert flags[:4] == ["--optimizer", "adam", "--optimizer-kernels", "foreach"]
    assert flags[4:] == ([] if TORCH_MAJOR < 2 else ["--optimizer-bytes", "84"])
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sgd.param_groups[0]["fused"] = True  # torch 2's fused=True, as the step would read it
    assert optimizer_flags(sgd) == ["--optimizer", "sgd", "--optimizer-kernels", "fused"]
    with pytest.raises(ValueError, match="torch.optim.adagrad.Adagrad is not an update rule fuseplan prices"):
        optimizer_flags(torch.optim.Adagrad(params, lr=0.1))
    assert fuseplan("predict", "--model", "resnet18", "--gpus", "2", *optimizer_flags(sgd)).returncode == 0
