#!/usr/bin/python3
"""The PyTorch bridge, measured side by side in one job: a tuned plan run through
fuseplan_torch.PlanDDP against torch DDP's default (bucket_cap_mb 25) and DDP with the
settings `fuseplan export --to ddp` gives for the plan, then `fuseplan verify` on the
PlanDDP run. Not a test; it prints figures.

    bench/pytorch_bridge.py [--ranks 2] [--steps 24] [--models resnet18,resnet50,tiny_gpt] [--streams 1]
                            [--layer-times whole-pass|as-timed] [--whole-pass between|before] [--min-gain PCT]
                            [--pilots optimal,per-tensor] [--fit-bandwidth on|off] [--heap keep|trim]

Per model: export with measured layer times (python3 -m fuseplan_torch export, fitted to
whole training steps unless --layer-times as-timed; timed on
as many ranks side by side as the job has, as they load the machine), a gloo
allreduce sweep calibrating the cluster (once); two pilot runs of the first model through
PlanDDP (its plan tuned on the swept cluster, and one bucket per tensor; --pilots names
other tune strategies, e.g. optimal,ddp,per-tensor), each profiled in its
own job, fitting how communication and backward slow each other on this machine, each side
apart, and what each bucket costs (`fuseplan calibrate --plan --measured --profile (one per
run) --fit sharing,dispatch,allreduce-sharing`, once; --fit-bandwidth on adds `bandwidth`,
how much slower than the sweep a step's allreduces move bytes); `fuseplan tune` on that
fitted cluster (ring for every bucket, fp32 transfer: what gloo runs; copies inline, as
PlanDDP copies each gradient into its bucket in backward; one stream unless --streams),
`fuseplan export --to ddp`. Then one gloo job per model interleaves the three trainers
step by step, in a rotating order (each on its own copy of the same weights, same data),
so machine drift hits all three alike; the median step is
reported, and the ratio PlanDDP / DDP as the median (and quartiles) of the ratios of
steps run next to each other, and each trainer's minor page faults per step (with
--min-gain PCT the plans are tuned with --baseline ddp: DDP's buckets unless the tuned
plan is predicted PCT % faster). Before the PlanDDP run verify reads, the same job
profiles every layer on all ranks side by side, and times the whole pass the layers are
fitted to between that run's steps (--whole-pass before: with the layers, before the run);
verify is printed with that profile and with the export's. Each pilot runs in such a job
too (the three trainers side by side, the profile, the PlanDDP run the fit reads). Every
process (sweep, export, jobs) keeps its freed memory (fuseplan_torch.keep_heap) unless
--heap trim, which leaves glibc's defaults and their page faults. Runs with Debian's
/usr/bin/python3 (python3-torch).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "python"), os.path.join(ROOT, "tests", "python")]
os.environ["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "python"), os.path.join(ROOT, "tests", "python")])

MODELS = {  # name: (factory, kwargs, input shape, input dtype, vocab, batch per rank)
    "resnet18": ("torchvision.models:resnet18", {"num_classes": 10}, "3,32,32", "float", 0, 16),
    "resnet50": ("torchvision.models:resnet50", {"num_classes": 10}, "3,32,32", "float", 0, 8),
    "tiny_gpt": ("tiny_gpt:tiny_gpt", {"dim": 256, "layers": 4, "vocab": 4096, "seq": 64}, "64", "long", 4096, 8),
}


def sh(*args, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(args), r.stderr))
    return r.stdout


def compare_rank(rank, ranks, spec_name, spec, plan, names, ddp_settings, steps, out, layer_times, interleave):
    import torch
    import torch.nn as nn
    from fuseplan_torch import jobs
    from fuseplan_torch.plan_ddp import PlanDDP, exported_ddp
    from fuseplan_torch.runner import measure_plan, measure_side_by_side

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks))
    factory, kwargs, shape, dtype, vocab, batch = spec
    a = argparse.Namespace(factory=factory, kwargs=json.dumps(kwargs), input_shape=shape, inputs=None,
                           input_dtype=dtype, vocab=vocab, seed=1, name="")
    copies = [jobs.build_module(a)[0] for _ in range(3)]
    inputs = jobs.make_batch(a, batch, 100 + rank)
    labels = jobs.make_labels(copies[0], inputs, rank)
    planned = PlanDDP(copies[0], plan, names)
    opt_plan = torch.optim.SGD(planned.parameters(), lr=0.01, momentum=0.9)
    default = nn.parallel.DistributedDataParallel(copies[1])
    exported = exported_ddp(copies[2], ddp_settings)
    opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (default, exported)]
    # The same timing for all three (the slowest rank's step), interleaved step by step.
    trainers = (("plan", planned, opt_plan, planned.start_backward), ("ddp", default, opts[0], lambda: None),
                ("ddp_exported", exported, opts[1], lambda: None))
    faults = {}
    # A pilot runs this too: the run the fit reads then follows what the compared runs
    # follow (a job whose steps of three trainers came first), and pilots without it
    # fitted overlap constants that predicted the compared runs 9-14 % fast.
    times = measure_side_by_side(trainers, inputs, labels, 2, steps, faults)
    # The layers timed in this job, right before the run verify reads, on a copy of the
    # model with the same weights: the compute of the run itself, which the export's
    # profile (taken minutes earlier, on a machine whose speed drifts) is not.
    profile = jobs.profile_side_by_side(rank, ranks, jobs.build_module(a)[0], jobs.make_batch(a, 2, a.seed), inputs,
                                        2, 5, name=spec_name,
                                        fit_whole_pass=layer_times == "whole-pass" and not interleave)
    # Its whole pass is timed between the steps of the run verify reads (as `run --profile`
    # times it): a pass timed before the run moved by up to a third from job to job here.
    between = jobs.InterleavedPass(jobs.build_module(a)[0], inputs) if interleave else None
    report = measure_plan(planned, inputs, labels, opt_plan, 2, steps, between)  # the PlanDDP run verify reads
    if between is not None:
        between.finish(rank, ranks, profile, layer_times == "whole-pass")
    planned.close()
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"times": times, "faults": faults, "report": report, "profile": profile}, f)


def main():
    from fuseplan_torch.heap import add_heap_flag, heap_setting
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--models", default="resnet18,resnet50,tiny_gpt")
    ap.add_argument("--bin", default=os.path.join(ROOT, "build", "release", "cli"))
    ap.add_argument("--min-gain", type=float, default=0.0,
                    help="tune --baseline ddp --min-gain PCT: keep DDP's buckets unless the tuned plan is predicted "
                         "PCT %% faster (0: always the tuned plan)")
    ap.add_argument("--streams", type=int, default=1,
                    help="plan streams (process groups) the tuned plans use: 1, as DDP runs its buckets on one "
                         "process group; 2 runs two gloo collectives at once, whose contention with backward on "
                         "two cores the overlap model fits less well")
    add_heap_flag(ap)
    ap.add_argument("--layer-times", default="whole-pass", choices=["whole-pass", "as-timed"],
                    help="the profiles' layer times: fitted to whole training steps, or as timed alone")
    ap.add_argument("--fit-bandwidth", default="off", choices=["on", "off"],
                    help="also fit how much slower than the sweep a step's allreduces move bytes "
                         "(job_bandwidth_factor; off: it stays 1). On two pilots the fourth value fitted them "
                         "better and the held-out models worse (docs/results/2026-12-06-pytorch-job-bandwidth.md)")
    ap.add_argument("--pilots", default="optimal,per-tensor",
                    help="the pilot runs' plans, as fuseplan tune --strategy names them (ddp: DDP's buckets, large "
                         "ones overlapping backward)")
    ap.add_argument("--whole-pass", default="between", choices=["between", "before"],
                    help="the run profiles' whole pass: timed between the steps of the run verify reads (as run "
                         "--profile times it), or before the run, with the layers")
    a = ap.parse_args()
    fuseplan = os.path.join(a.bin, "fuseplan")
    from fuseplan_torch import jobs
    work = tempfile.mkdtemp(prefix="fuseplan-bridge-")
    py = [sys.executable, "-m", "fuseplan_torch"]
    sweep, cal = os.path.join(work, "sweep.json"), os.path.join(work, "cal.json")
    sh(*py, "sweep", "--ranks", str(a.ranks), "--sizes", "64K:64M", "--iterations", "20", "--heap", a.heap,
       "--out", sweep)
    # gloo's small allreduces are noisy here (0.5-2 ms of per-call overhead that varies):
    # a range may fit poorly; it is written anyway and its errors printed.
    print(sh(fuseplan, "calibrate", "--cluster", "local-cpu", "--sweep", sweep, "--fit-sizes", "64K:64M",
             "--accept-degenerate", "--out", cal))
    def export(name):
        factory, kwargs, shape, dtype, vocab, batch = MODELS[name]
        model, prof = (os.path.join(work, name + s) for s in (".json", "-profile.json"))
        if not os.path.exists(model):
            common = [factory, "--kwargs", json.dumps(kwargs), "--input-shape", shape, "--input-dtype", dtype,
                      "--name", name] + (["--vocab", str(vocab)] if vocab else [])
            sh(*py, "export", *common, "--out", model, "--profile", prof, "--batch", str(batch), "--ranks",
               str(a.ranks), "--layer-times", a.layer_times, "--heap", a.heap)
        return model, prof

    def tune_and_run(name, cluster, tag, steps, pilot=False, strategy="optimal"):
        spec = MODELS[name]
        model, prof = export(name)
        plan = os.path.join(work, name + tag + "-plan.json")
        common = ["--model", model, "--profile", prof, "--cluster", cluster, "--gpus", str(a.ranks),
                  "--batch-per-gpu", str(spec[5]), "--precision", "fp32", "--algorithm", "ring", "--out", plan]
        keep = ["--baseline", "ddp", "--min-gain", str(a.min_gain)] if a.min_gain > 0 and not pilot else []
        sh(fuseplan, "tune", *common, "--strategy", strategy, "--pack", "inline", "--streams", str(a.streams), *keep)
        settings = json.loads(sh(fuseplan, "export", "--plan", plan, "--to", "ddp", "--profile", prof, "--json"))
        from fuseplan_torch.plan_ddp import load_plan
        p = load_plan(plan)
        with open(model) as f:
            names = [t["name"] for l in json.load(f)["layers"] for t in l["params"]]
        out = os.path.join(work, name + tag + "-out.json")
        jobs.spawn(a.ranks, compare_rank, (name, spec, p, names, settings, steps, out, a.layer_times,
                                           a.whole_pass == "between"), heap=a.heap)
        with open(out) as f:
            res = json.load(f)
        measured, run_prof = (os.path.join(work, name + tag + s) for s in ("-measured.json", "-run-profile.json"))
        with open(measured, "w") as f:
            json.dump(res["report"], f)
        with open(run_prof, "w") as f:
            json.dump(res["profile"], f)
        return p, settings, res, (plan, measured, prof, run_prof)

    # How much the allreduces slow backward on this machine's shared cores
    # (comm_compute_sharing), how much backward slows them (allreduce_sharing) and what
    # each bucket costs beyond its allreduce (dispatch_overhead_us) are fitted on two
    # pilot runs of the first model through PlanDDP: its plan tuned on the swept cluster,
    # and one bucket per tensor (many buckets, which separates the dispatch; round-robin
    # on the plans' streams, so that the fit sees as many allreduces at once as they run),
    # each with the profile taken in its own job. The plans compared below are tuned on
    # the fitted cluster, as a user's second round would be; the pilots' model is
    # in-sample for verify, the other models are held out.
    pilot_model = a.models.split(",")[0]
    pilot_steps = max(8, a.steps // 3)
    fit = "sharing,dispatch,allreduce-sharing" + (",bandwidth" if a.fit_bandwidth == "on" else "")
    fit_args, profiles = ["--fit", fit], []
    for strategy in a.pilots.split(","):
        tag = "-pilot" if strategy == "optimal" else "-pilot-" + strategy
        _, _, _, (plan0, measured0, _, run_prof0) = tune_and_run(pilot_model, cal, tag, pilot_steps, True, strategy)
        fit_args += ["--plan", plan0, "--measured", measured0]
        profiles += ["--profile", run_prof0]
    fitted = os.path.join(work, "cal-fitted.json")
    print(sh(fuseplan, "calibrate", "--cluster", cal, *fit_args, *profiles, "--out", fitted))
    rows = []
    for name in a.models.split(","):
        p, settings, res, files = tune_and_run(name, fitted, "", a.steps)
        med = {k: statistics.median(v) for k, v in res["times"].items()}
        paired = statistics.quantiles([x / y for x, y in zip(res["times"]["plan"], res["times"]["ddp"])], n=4)
        med["ratio"] = paired
        med["faults"] = [statistics.median(res["faults"][k]) for k in ("plan", "ddp", "ddp_exported")]
        rows.append([name, len(p["buckets"]), settings["buckets"], med, files, p.get("strategy", "")])

    def iteration_error(plan, measured, profile):
        verify = json.loads(sh(fuseplan, "verify", "--plan", plan, "--measured", measured, "--profile", profile,
                               "--cluster", fitted, "--no-sim", "--json"))
        row = next(r for r in verify["rows"] if r["metric"] == "iteration")
        return row["predicted_s"] / row["measured_s"] - 1

    for row in rows:
        plan, measured, prof, run_prof = row[4]
        row[4] = (iteration_error(plan, measured, prof), iteration_error(plan, measured, run_prof))
    print("\nstep time per iteration, median of %d steps (ms), %d ranks, gloo, this machine, heap %s" %
          (a.steps, a.ranks, heap_setting(a.heap)))
    print("%-10s %8s %10s %9s %13s %24s %14s %14s" % ("model", "buckets", "PlanDDP", "DDP 25MB", "DDP exported",
                                                      "PlanDDP/DDP (quartiles)", "verify (run)", "verify (export)"))
    for name, nb, nd, med, (err_export, err_run), _ in rows:
        q1, q2, q3 = med["ratio"]
        print("%-10s %4d/%-3d %10.1f %9.1f %13.1f %9.3fx (%.3f-%.3f) %+12.1f %% %+12.1f %%" % (
            name, nb, nd, med["plan"] * 1e3, med["ddp"] * 1e3, med["ddp_exported"] * 1e3,
            q2, q1, q3, 100 * err_run, 100 * err_export))
    print("\nminor page faults per step (rank 0, median; glibc handing freed memory back and taking it again)")
    for name, _, _, med, _, _ in rows:
        print("%-10s PlanDDP %6.0f   DDP 25MB %6.0f   DDP exported %6.0f" % (name, *med["faults"]))
    kept = [row[0] for row in rows if row[5] == "ddp"]
    if a.min_gain > 0:
        print("--min-gain %g: DDP's buckets kept for %s" % (a.min_gain, ", ".join(kept) if kept else "no model"))
    print("(buckets: the plan's / DDP's with the exported settings; verify: fuseplan verify's predicted iteration "
          "vs the PlanDDP run, on the cluster whose overlap constants were fitted to two pilot runs of %s (that "
          "model in-sample, the others held out; every plan above was tuned on that cluster), with the layers profiled in the run's own job (run) or at export "
          "(export))\nfiles in %s" % (rows[0][0], work))


if __name__ == "__main__":
    main()
