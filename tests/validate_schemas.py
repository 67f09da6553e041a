#!/usr/bin/python3
"""Every shipped and generated model, cluster, plan, schedule and throughput file against docs/schemas/, and each
schema refusing broken files (so that the check can fail).

    validate_schemas.py SOURCE_DIR BIN_DIR

The validator covers the JSON Schema keywords the schemas use (type, const, enum,
properties, required, additionalProperties, items, minItems, maxItems, minProperties, minLength,
minimum, maximum, exclusiveMinimum, exclusiveMaximum, oneOf, $ref to #/$defs); a
schema using any other keyword is an error, not silently ignored.
"""
import copy
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

KNOWN = {"$schema", "$id", "title", "description", "type", "const", "enum", "properties", "required",
         "additionalProperties", "items", "minItems", "maxItems", "minProperties", "minLength", "minimum", "maximum",
         "exclusiveMinimum", "exclusiveMaximum", "oneOf", "$ref", "$defs"}
TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def errors(value, schema, root, path="$"):
    """The list of violations of `schema` by `value` (empty when valid)."""
    unknown = set(schema) - KNOWN
    if unknown:
        raise ValueError("schema keyword(s) this validator does not know: %s" % sorted(unknown))
    if "$ref" in schema:
        target = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        return errors(value, target, root, path) + (errors(value, rest, root, path) if rest else [])
    out = []
    t = schema.get("type")
    if t is not None:
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if t == "number" else \
             (isinstance(value, int) and not isinstance(value, bool)) if t == "integer" else isinstance(value, TYPES[t])
        if not ok:
            return ["%s: expected %s, got %s" % (path, t, type(value).__name__)]
    if "const" in schema and value != schema["const"]:
        out.append("%s: must be %r" % (path, schema["const"]))
    if "enum" in schema and value not in schema["enum"]:
        out.append("%s: %r is not one of %s" % (path, value, schema["enum"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, bad in (("minimum", lambda v, b: v < b), ("maximum", lambda v, b: v > b),
                         ("exclusiveMinimum", lambda v, b: v <= b), ("exclusiveMaximum", lambda v, b: v >= b)):
            if key in schema and bad(value, schema[key]):
                out.append("%s: %r violates %s %r" % (path, value, key, schema[key]))
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        out.append("%s: shorter than %d" % (path, schema["minLength"]))
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                out.append("%s: missing %s" % (path, key))
        if len(value) < schema.get("minProperties", 0):
            out.append("%s: fewer than %d keys" % (path, schema["minProperties"]))
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, v in value.items():
            if key in props:
                out += errors(v, props[key], root, path + "." + key)
            elif extra is False:
                out.append("%s: unknown key %s" % (path, key))
            elif isinstance(extra, dict):
                out += errors(v, extra, root, path + "." + key)
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            out.append("%s: fewer than %d items" % (path, schema["minItems"]))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            out.append("%s: more than %d items" % (path, schema["maxItems"]))
        if "items" in schema:
            for i, v in enumerate(value):
                out += errors(v, schema["items"], root, "%s[%d]" % (path, i))
    if "oneOf" in schema:
        matching = sum(1 for s in schema["oneOf"] if not errors(value, s, root, path))
        if matching != 1:
            out.append("%s: matches %d of oneOf's %d schemas, not exactly one" % (path, matching, len(schema["oneOf"])))
    return out


def load_schema(source, name):
    with open(os.path.join(source, "docs", "schemas", "fuseplan.%s-1.schema.json" % name)) as f:
        return json.load(f)


def main():
    source, bindir = sys.argv[1], sys.argv[2]
    fuseplan = os.path.join(bindir, "fuseplan")
    schemas = {n: load_schema(source, n) for n in ("model", "cluster", "plan", "schedule", "throughput")}
    work = tempfile.mkdtemp(prefix="fuseplan-schemas-")
    files = []  # (kind, label, document)

    def run(*args):
        r = subprocess.run([fuseplan, *args], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("failed: fuseplan %s\n%s" % (" ".join(args), r.stderr))
        return r.stdout

    for path in sorted(glob.glob(os.path.join(source, "configs", "clusters", "*.json"))):
        files.append(("cluster", os.path.relpath(path, source), json.load(open(path))))
    calibrated = os.path.join(work, "calibrated.json")
    run("calibrate", "--cluster", "dgx-h100", "--ranks", "16", "--per-node", "8", "--nccl-tests",
        os.path.join(source, "tests", "data", "nccl-tests", "h100-ndr-2x8.txt"), "--accept-degenerate", "--out", calibrated)
    files.append(("cluster", "calibrate --nccl-tests output", json.load(open(calibrated))))
    for path in sorted(glob.glob(os.path.join(source, "configs", "throughput", "plans", "*.json"))):
        files.append(("plan", os.path.relpath(path, source), json.load(open(path))))  # the scaling measurements'
    for path in sorted(glob.glob(os.path.join(source, "configs", "throughput", "*.json"))):
        rates = json.load(open(path))
        files.append(("throughput", os.path.relpath(path, source), rates))
        # A file of a framework's rates alone (its compute scale) writes no cluster file.
        if all(m.get("fit") in ([], ["compute_scale"]) for m in rates["measurements"]):
            continue
        fitted = os.path.join(work, "throughput-fitted.json")
        cluster = os.path.basename(path).rsplit("-", 1)[0]  # CLUSTER-dle.json: the rates' own cluster
        run("calibrate", "--cluster", cluster, "--throughput", path, "--out", fitted)
        files.append(("cluster", "calibrate --throughput " + os.path.relpath(path, source), json.load(open(fitted))))
    files.append(("model", "tests/data/golden-model.json", json.load(open(os.path.join(source, "tests", "data",
                                                                                       "golden-model.json")))))
    for path in sorted(glob.glob(os.path.join(source, "bench", "models", "*.json"))):
        files.append(("model", os.path.relpath(path, source), json.load(open(path))))
    for line in run("models").splitlines()[1:]:
        name = line.split()[0]
        files.append(("model", "fuseplan show %s --json" % name, json.loads(run("show", name, "--json"))))
    model_file = os.path.join(work, "resnet18.json")
    with open(model_file, "w") as f:
        f.write(run("show", "resnet18", "--json"))
    for args in (["--model", "resnet50", "--gpus", "64"], ["--model", model_file, "--cluster", calibrated, "--gpus", "16"]):
        plan = os.path.join(work, "plan.json")
        run("tune", *args, "--streams", "2", "--out", plan)
        files.append(("plan", "tune " + " ".join(args), json.load(open(plan))))
    plan = os.path.join(work, "accumulated.json")
    run("predict", "--model", "resnet50", "--gpus", "16", "--accumulate", "4", "--no-sync", "--optimizer", "adam",
        "--optimizer-kernels", "per-tensor", "--out", plan)
    files.append(("plan", "predict --accumulate 4 --no-sync --optimizer adam --optimizer-kernels per-tensor",
                  json.load(open(plan))))
    for strategy in ("dear", "bytescheduler", "zero2"):
        sched = os.path.join(work, "schedule.json")
        run("schedule", "--model", "resnet18", "--gpus", "16", "--strategy", strategy, "--out", sched)
        doc = json.load(open(sched))
        files.append(("schedule", "schedule --strategy " + strategy, doc))
        files.append(("plan", "schedule --strategy %s: $.setup" % strategy, doc["setup"]))

    failed = 0
    for kind, label, doc in files:
        errs = errors(doc, schemas[kind], schemas[kind])
        if errs:
            failed += 1
            print("INVALID  %s (%s): %s" % (label, kind, "; ".join(errs[:3])))
    print("%d files valid against docs/schemas/ (%d invalid)" % (len(files) - failed, failed))

    # Each schema must refuse what the reader refuses: a file that passes here proves nothing
    # unless broken ones do not.
    def broken(kind, edit):
        doc = copy.deepcopy(next(d for k, _, d in files if k == kind))
        edit(doc)
        return doc
    mutations = [
        ("model", "a layer without kind", lambda d: d["layers"][0].pop("kind")),
        ("model", "an unknown layer kind", lambda d: d["layers"][0].__setitem__("kind", "conv3d")),
        ("model", "a negative dimension", lambda d: d.__setitem__("input_shape", [3, -1])),
        ("model", "an unknown key", lambda d: d["layers"][0].__setitem__("colour", "red")),
        ("model", "a kernel of three sides", lambda d: d["layers"][0].__setitem__("attrs", {"kernel": [1, 7, 3]})),
        ("model", "a frozen mark that is not true or false",
         lambda d: next(l for l in d["layers"] if l["params"])["params"][0].__setitem__("frozen", "yes")),
        ("cluster", "no device", lambda d: d.pop("device")),
        ("cluster", "an unknown topology", lambda d: d.__setitem__("inter_node", dict(d.get("inter_node") or {
            "nic_bw_Gbps": 100, "nics_per_node": 1, "lat_us": 1, "gdr": True}, topology="ring"))),
        ("cluster", "an efficiency above 1", lambda d: d["device"].__setitem__("memory_efficiency", 1.5)),
        ("cluster", "a class's memory efficiency above 1 at one precision",
         lambda d: d["device"].setdefault("by_kind", {}).__setitem__("norm", {"memory_efficiency": {"fp16": 1.5}})),
        ("plan", "a stream past 63", lambda d: d["buckets"][0].__setitem__("stream", 64)),
        ("plan", "a bucket without transfer", lambda d: d["buckets"][0].pop("transfer")),
        ("plan", "an unknown precision", lambda d: d.__setitem__("compute", "fp8")),
        ("plan", "an accumulation of 0 steps", lambda d: d.__setitem__("accumulate", {"steps": 0})),
        ("plan", "unknown optimizer kernels", lambda d: d.__setitem__("optimizer_kernels", "foreach")),
        ("plan", "an optimizer moving no bytes",
         lambda d: d.__setitem__("optimizer", {"bytes_per_param": 0, "kernels_per_tensor": 0})),
        ("plan", "an optimizer without its kernels", lambda d: d.__setitem__("optimizer", {"bytes_per_param": 28})),
        ("throughput", "a rate of 0", lambda d: d["measurements"][0].__setitem__("samples_per_s", 0)),
        ("throughput", "no fit", lambda d: d["measurements"][0].pop("fit")),
        ("throughput", "an unknown class", lambda d: d["measurements"][0].__setitem__("fit", ["conv"])),
        ("throughput", "an unknown efficiency", lambda d: d["measurements"][0].__setitem__("efficiency", "flops")),
        ("throughput", "no measurements", lambda d: d.__setitem__("measurements", [])),
        ("throughput", "a plan beside a model", lambda d: d["measurements"].append(
            {"plan": "p.json", "scaling_efficiency": 0.9, "fit": [], "model": "resnet50"})),
        ("throughput", "a plan fitting a class", lambda d: d["measurements"].append(
            {"plan": "p.json", "scaling_efficiency": 0.9, "fit": ["gemm"]})),
        ("throughput", "a plan fitting compute_scale", lambda d: d["measurements"].append(
            {"plan": "p.json", "scaling_efficiency": 0.9, "fit": ["compute_scale"]})),
        ("throughput", "a scaling efficiency of 3", lambda d: d["measurements"].append(
            {"plan": "p.json", "scaling_efficiency": 3, "fit": []})),
        ("schedule", "an unknown exchange", lambda d: d.__setitem__("exchange", "alltoall")),
        ("schedule", "a credit of 0", lambda d: d.__setitem__("credit", 0)),
        ("schedule", "no bounds", lambda d: d.pop("bounds")),
    ]
    for kind, what, edit in mutations:
        if not errors(broken(kind, edit), schemas[kind], schemas[kind]):
            failed += 1
            print("ACCEPTED %s schema accepts %s" % (kind, what))
    print("%d broken files refused" % len(mutations))
    if not failed:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
