// `fuseplan predict`: the analytic overlap prediction for one plan (a plan file or a
// bucket spec), as a table, JSON, and a Chrome trace.
#include <iostream>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

namespace {
struct PredictFlags {
  SetupFlags setup;
  std::string plan_path, buckets = "threshold:64MiB", algorithm = "auto";
  std::string trace_path, out;
  bool json = false, pack = false, by_class = false;
  std::string pack_on = "comm", cast = "none";
  double cycle_ms = 0;
  double measured_efficiency = 0;
  std::string fit = "step-overhead";
  StepFlags step;
  CLI::Option* measured_opt = nullptr;
  CLI::Option* fit_opt = nullptr;
  CLI::Option* cycle_opt = nullptr;
  CLI::Option* buckets_opt = nullptr;
  CLI::Option* pack_on_opt = nullptr;
  CLI::Option* cast_opt = nullptr;
};

// The scenario: a plan file, bound, or a bucket spec on the setup the flags give.
Scenario resolve(const PredictFlags& f, std::string* plan_origin) {
  const SetupFlags& u = f.setup;
  if (!f.plan_path.empty()) {
    if (f.buckets_opt->count()) throw InputError("--plan and --buckets are exclusive: a plan file carries its buckets");
    if (f.pack || f.pack_on_opt->count())
      throw InputError("--plan and --pack/--pack-on are exclusive: a plan file says which buckets are packed and "
                       "where");
    if (f.cycle_opt->count()) throw InputError("--plan and --cycle-time are exclusive: a plan file carries its cycle_ms");
    if (f.cast_opt->count()) throw InputError("--plan and --cast are exclusive: a plan file carries its cast");
    if (f.step.given())
      throw InputError("--plan and --accumulate/--no-sync/--optimizer/--optimizer-kernels/--optimizer-bytes/"
                       "--step-overhead are exclusive: a plan file carries its accumulate, optimizer and "
                       "step_overhead_ms");
    *plan_origin = f.plan_path;
    return u.load_plan_file(f.plan_path);
  }
  if (!(f.cycle_ms >= 0 && f.cycle_ms <= kMaxCycleMs))
    throw InputError("--cycle-time: must be in [0, 1000] ms (got " + formatted(f.cycle_ms, "%g") + ")");
  const Accumulation accumulate = f.step.accumulation();
  const OptimizerStep optimizer = f.step.optimizer_step();
  const double overhead_s = f.step.overhead_s();
  const PackOn pack_on = parse_pack_on(f.pack_on, "--pack-on");
  if (f.pack_on_opt->count() && !f.pack) throw InputError("--pack-on: applies with --pack");
  const std::optional<PackOn> cast = parse_cast(f.cast);
  auto r = u.resolve();  // checked there: cluster size, memory, global batch
  Scenario s;
  s.model = std::move(r.model);
  s.cluster = std::move(r.cluster);
  auto buckets = buckets_from_spec(f.buckets, s.model, f.algorithm, r.transfer);
  // A fusion buffer is not filled for one tensor (Horovod); copies in backward fill every bucket (DDP).
  for (auto& b : buckets) b.pack = f.pack && (pack_on == PackOn::Compute || b.end - b.begin > 1);
  s.plan = make_plan(s.model, cluster_reference(s.cluster), r.gpus, r.batch, r.compute, buckets, f.buckets);
  s.plan.cycle_s = f.cycle_ms * 1e-3;
  s.plan.pack_on = pack_on;
  s.plan.cast = cast;
  if (cast && !casts_any(s.plan)) throw InputError(std::string("--cast: ") + kNothingToCast);
  s.plan.accumulate = accumulate;
  s.plan.optimizer = optimizer;
  s.plan.step_overhead_s = overhead_s;
  s.plan.compute_scale = s.cluster.compute_scale;
  s.collective = u.collective();
  s.goal = u.goal(s.model);
  u.apply_measured_rate(s.model, s.cluster, r.batch, r.compute, accumulate, optimizer);
  *plan_origin = "--buckets";
  return s;
}

void print_report(const Report& r, const Scenario& s, const std::string& plan_origin, const PredictFlags& f) {
  std::string casts;
  if (s.plan.cast)
    casts = ", fp32 gradients cast to the transfer precision on " + std::string(pack_on_name(*s.plan.cast));
  out() << setup_line("predict", s.model, s.cluster, r.gpus, r.batch_per_gpu, r.compute) << "\n";
  out() << "plan: " << (s.plan.strategy.empty() ? plan_origin : s.plan.strategy) << ", " << r.buckets.size()
            << " bucket" << (r.buckets.size() == 1 ? "" : "s")
            << step_description(s.plan.accumulate, s.plan.optimizer, s.plan.step_overhead_s) << casts
            << "\n\n";
  print_bucket_table(r);
  print_iteration_summary(r);
  if (f.by_class) print_compute_by_class(r);
  if (!f.trace_path.empty()) out() << "  trace                " << f.trace_path << " (open in ui.perfetto.dev)\n";
}

// --measured-efficiency: the plan's step overhead, or with --fit compute-variation the
// cluster's compute_variation, replaced by the value that reproduces the measured
// efficiency. Refusals name the flag; the fit itself is the library's.
Calibrated calibrated(const PredictFlags& f) {
  if (f.fit_opt->count() && !f.measured_opt->count()) throw InputError("--fit: applies with --measured-efficiency");
  if (f.fit == "step-overhead") return Calibrated::StepOverhead;
  if (f.fit == "compute-variation") return Calibrated::ComputeVariation;
  throw InputError("--fit: unknown value '" + f.fit + "' (valid: step-overhead, compute-variation)");
}

EfficiencyFit fit_measured(Scenario& s, const PredictFlags& f, Calibrated what) {
  const double e = f.measured_efficiency;
  const bool overhead = what == Calibrated::StepOverhead;
  if (overhead && f.step.overhead_opt->count())
    throw InputError("--measured-efficiency and --step-overhead are exclusive: the first fits the second");
  if (!overhead && f.setup.variation_opt->count())
    throw InputError("--measured-efficiency --fit compute-variation and --compute-variation are exclusive: the first "
                     "fits the second");
  if (!(e > 0 && e <= 1)) throw InputError("--measured-efficiency: must be in (0, 1] (got " + formatted(e, "%g") + ")");
  if (s.plan.gpus < 2)
    throw InputError(std::string("--measured-efficiency: needs more than one GPU (") +
                     (overhead ? "a step overhead" : "the wait for the slowest GPU") +
                     " is paid on more than one only)");
  const EfficiencyFit fit = fit_to_efficiency(s, e, what);
  if (fit.kind == EfficiencyFit::Kind::Beyond)
    throw InputError("--measured-efficiency: " + percent(e, 2) + " would need " +
                     (overhead ? "a step overhead above " + formatted(kMaxStepOverheadMs, "%g") +
                                     " ms (the --step-overhead range)"
                               : "a compute variation above " + formatted(kMaxComputeVariation, "%g") +
                                     " (the --compute-variation range)") +
                     "; the prediction without one is " + percent(fit.efficiency_without, 2));
  (overhead ? s.plan.step_overhead_s : s.cluster.compute_variation) = fit.value;
  return fit;
}

// What the fit found, with the flag that carries it to other predictions. `replaced`:
// the value the setup had (the plan's step overhead or the cluster's compute variation).
void print_fit(const EfficiencyFit& fit, Calibrated what, double measured, double replaced) {
  const bool overhead = what == Calibrated::StepOverhead;
  const std::string name = overhead ? "step overhead" : "compute variation";
  auto shown = [overhead](double v) { return overhead ? formatted(v * 1e3, "%.3f") : formatted(v, "%.5f"); };
  const std::string unit = overhead ? " ms" : "";
  out() << "\n  measured efficiency  " << percent(measured, 2) << ": ";
  if (fit.kind == EfficiencyFit::Kind::AtOrBelow) {
    out() << "the prediction without a " << name << ", " << percent(fit.efficiency_without, 2)
          << ", is already at or below it: no " << name << " fits (what differs is in the priced terms)"
          << (replaced > 0 ? "; the " + std::string(overhead ? "plan's " : "cluster's ") + shown(replaced) + unit +
                                 " is dropped"
                           : "")
          << "\n";
    return;
  }
  out() << "a " << name << " of " << shown(fit.value) << unit << (overhead ? " per step" : "") << " reproduces it"
        << (replaced > 0 ? " (replacing the " + std::string(overhead ? "plan's " : "cluster's ") + shown(replaced) +
                               unit + ")"
                         : "")
        << ";\n                       give --" << (overhead ? "step-overhead " : "compute-variation ")
        << shown(fit.value)
        << (overhead ? " to predict other models of the same framework, cluster and precision\n"
                     : " (or set compute_variation in the cluster file)\n"
                       "                       to predict other GPU counts and models on this cluster: its wait\n"
                       "                       grows with the GPU count as the slowest of N does\n");
}

// The same model, cluster and GPUs with the fusions users know, for scale.
void print_reference(const Scenario& s, const CollectiveModel& coll, const ComputeModel& compute, const TrainingGoal& goal,
                     Precision transfer) {
  out() << "\n  for reference, other fusions on the same setup (algorithm auto):\n";
  Table t({"<fusion", "buckets", "iteration ms", "exposed comm ms", "efficiency"});
  for (const char* spec : {"per-tensor", "single", "threshold:64MiB", "threshold:25MB"}) {
    Plan p = make_plan(s.model, cluster_reference(s.cluster), s.plan.gpus, s.plan.batch_per_gpu, s.plan.compute,
                       buckets_from_spec(spec, s.model, "auto", transfer), spec);
    p.accumulate = s.plan.accumulate;
    p.optimizer = s.plan.optimizer;
    p.step_overhead_s = s.plan.step_overhead_s;
    p.compute_scale = s.plan.compute_scale;
    p.cast = s.plan.cast;  // the gradients' casts, whatever the fusion
    Report r = predict(s.model, s.cluster, p, coll, compute, goal, false);
    t.row({spec, std::to_string(p.buckets.size()), ms(r.iteration_s), ms(r.exposed_comm_s), percent(r.scaling_efficiency)});
  }
  t.print(out(), "    ");
}
}  // namespace

void add_predict_command(CLI::App& app) {
  auto f = std::make_shared<PredictFlags>();
  auto* cmd = app.add_subcommand("predict",
                                 "Predict iteration time, exposed communication and scaling efficiency of a plan.\n"
                                 "With no flags: resnet50 on tencent-p40 at 1024 GPUs, Horovod-style 64 MiB buckets.");
  f->setup.add(cmd);
  cmd->add_option("--plan", f->plan_path, "plan .json (schema fuseplan.plan/1); its model, cluster, GPUs and batch apply");
  f->buckets_opt = cmd->add_option("--buckets", f->buckets,
                                   "bucket spec: per-tensor | single | threshold:SIZE (greedy in backward order; "
                                   "SIZE like 64MiB, 25MB) | splits:A,B,... (backward positions starting a bucket)")
                       ->capture_default_str();
  cmd->add_option("--algorithm", f->algorithm, "allreduce algorithm for every bucket of --buckets: auto or a name "
                                               "(see `fuseplan collective --help`)")
      ->capture_default_str();
  cmd->add_flag("--pack", f->pack, "--buckets: copy each bucket of several tensors into a fusion buffer before its "
                                   "allreduce, as Horovod does (default: buckets are views, as DDP's "
                                   "gradient_as_bucket_view)");
  f->pack_on_opt =
      cmd->add_option("--pack-on", f->pack_on,
                      "--pack: where the copies run: comm (once a bucket is ready, off the compute stream: Horovod) | "
                      "compute (each gradient as backward makes it, lengthening backward: PyTorch DDP's Reducer; "
                      "every bucket is copied)")
          ->capture_default_str();
  f->cast_opt = cmd->add_option("--cast", f->cast, kCastHelp)->capture_default_str();
  f->cycle_opt = cmd->add_option("--cycle-time", f->cycle_ms,
                                 "--buckets: the framework's background cycle in ms (Horovod's HOROVOD_CYCLE_TIME): "
                                 "a ready bucket waits for the next tick (0 = none; at most 1000)");
  f->step.add(cmd);
  f->measured_opt = cmd->add_option(
      "--measured-efficiency", f->measured_efficiency,
      "a scaling efficiency measured on this setup against one GPU, in (0, 1]: fit the value --fit names that\n"
      "reproduces it, print it and predict with it");
  f->fit_opt = cmd->add_option("--fit", f->fit,
                               "with --measured-efficiency: step-overhead (a fixed cost per step, the framework's "
                               "beyond\nwhat the model prices; for the GPU count measured) | compute-variation (the "
                               "cluster's spread of\neach GPU's step, whose wait grows with the GPU count)")
                   ->capture_default_str();
  cmd->add_option("--trace", f->trace_path, "write a Chrome trace (JSON for ui.perfetto.dev) to FILE");
  cmd->add_option("--out", f->out, "write the plan that was predicted (with its prediction) to FILE");
  cmd->add_flag("--by-class", f->by_class,
                "also print the compute per layer class (its layers' forward and backward time, share of the step's "
                "compute,\nFLOP rate, how many are memory-bound); --json always carries it (compute_by_class)");
  cmd->add_flag("--json", f->json, "print the report as JSON");
  cmd->callback([f] {
    std::string plan_origin;
    Scenario s = resolve(*f, &plan_origin);
    const Calibrated what = calibrated(*f);
    const double given = what == Calibrated::StepOverhead ? s.plan.step_overhead_s : s.cluster.compute_variation;
    std::optional<EfficiencyFit> fit;
    if (f->measured_opt->count()) fit = fit_measured(s, *f, what);
    Report r = predict(s);
    if (!f->trace_path.empty()) r.timeline.write_chrome_trace(f->trace_path);
    if (!f->out.empty()) {
      Plan p = s.plan;
      p.prediction = plan_prediction(r);
      write_file_atomic(f->out, plan_to_json_at(p, f->out).dump(1) + "\n");
    }
    if (f->json) {
      auto j = report_to_json(r);
      if (fit) {
        const std::string key = what == Calibrated::StepOverhead ? "step_overhead" : "compute_variation";
        j["measured_efficiency"] = f->measured_efficiency;
        j[key + "_fit"] = fit->kind == EfficiencyFit::Kind::Fitted ? "fitted" : "at-or-below";
        j["efficiency_without_" + key] = fit->efficiency_without;
        if (what == Calibrated::ComputeVariation) j["compute_variation"] = fit->value;
      }
      out() << j.dump(2) << "\n";
      return;
    }
    print_report(r, s, plan_origin, *f);
    if (fit) print_fit(*fit, what, f->measured_efficiency, given);
    if (s.plan.gpus > 1) {
      CollectiveModel coll(s.cluster, s.plan.gpus, s.collective);
      ComputeModel compute(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute);
      print_reference(s, coll, compute, s.goal, s.plan.buckets.front().transfer);
    }
  });
}

}  // namespace fuseplan::cli
