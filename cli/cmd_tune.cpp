// `fuseplan tune` (one strategy -> a plan file and its prediction) and `fuseplan compare`
// (every strategy side by side on one setup).
#include <algorithm>
#include <iostream>
#include <memory>
#include <optional>

#include "commands.hpp"
#include "format.hpp"
#include "progress.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

namespace {

struct TuneFlags {
  SetupFlags setup;
  FusionFlags fusion;
  std::string strategy = "optimal", algorithm = "auto";
  int segments = 2;
  std::string out, trace_path, validate;
  int top = 3;
  bool json = false, quiet = false;
  std::string baseline = "none";  // tune: a strategy kept unless the tuned plan beats it by min_gain
  double min_gain_pct = 0;

  void add(CLI::App* cmd, bool with_strategy) {
    setup.add(cmd);
    if (with_strategy)
      cmd->add_option("--strategy", strategy, "how to choose buckets: " + strategy_names())->capture_default_str();
    cmd->add_option("--segments", segments, "k-split: the number of buckets K (2 = the 4-minute paper's method)")
        ->capture_default_str();
    cmd->add_option("--algorithm", algorithm, "allreduce algorithm: auto (cheapest per bucket) or one name for all")
        ->capture_default_str();
    fusion.add(cmd);
  }

  TuneOptions options(Precision transfer) const {
    TuneOptions o;
    o.strategy = parse_strategy(strategy);
    o.segments = segments;
    o.algorithm = algorithm;
    o.transfer = transfer;
    fusion.apply(o);
    return o;
  }
};

std::string options_line(const TuneOptions& o) {
  std::string s = std::string(strategy_name(o.strategy));
  if (o.strategy == Strategy::KSplit) s += " (K = " + std::to_string(o.segments) + ")";
  s += ", " + std::string(precision_name(o.transfer)) + " transfer";
  if (o.fp32 != Fp32Tensors::None) s += std::string(" (") + fp32_tensors_name(o.fp32) + " tensors in fp32)";
  if (o.cast) s += std::string(", fp32 gradients cast to it on ") + pack_on_name(*o.cast);
  s += o.algorithm == "auto" ? ", algorithm chosen per bucket" : ", " + o.algorithm + " for every bucket";
  s += ", " + std::to_string(o.streams) + (o.streams == 1 ? " stream" : " streams");
  return s + step_description(o.accumulate, o.optimizer, o.step_overhead_s);
}

nlohmann::json gain_json(const Report& r, const Report& base) {
  return {{"iteration_s", base.iteration_s}, {"speedup", base.iteration_s / r.iteration_s}};
}

// --validate sim: the K best distinct plans by prediction (the tuned one, every strategy,
// k-split with 2..4 buckets), each simulated in SimGrid, ranked again.
std::vector<Validated> validate_by_simulation(const Tuner& tuner, const TuneOptions& o, const TuneResult& tuned,
                                              const Cluster& cluster, const TuneFlags& f) {
  const std::vector<LabelledPlan> distinct = best_distinct_plans(tuner, o, tuned, f.top);
  std::vector<Validated> ranked;
  ProgressBar bar("plans simulated", f.quiet);
  for (const auto& [label, r] : distinct) {
    const double sim_s =
        sim::simulate_plan(tuner.model(), cluster, r.plan, f.setup.collective(), f.setup.goal(tuner.model()), {})
            .iteration_s;
    ranked.push_back({label, static_cast<int>(r.plan.buckets.size()), r.report.iteration_s, sim_s});
    bar(int64_t(ranked.size()), int64_t(distinct.size()));
  }
  return ranked;
}

// --baseline S --min-gain P: the baseline strategy's buckets (the framework's default the
// user runs today), unless the tuned plan is predicted at least P % faster. A prediction
// is only as good as its model: a gain smaller than the model's error on this machine
// (`fuseplan verify`) may not be one.
struct Kept {
  bool kept = false;
  std::string tuned_strategy;
  size_t tuned_buckets = 0;
  double tuned_s = 0, baseline_s = 0, gain_pct = 0;
};

// The flags are checked before any search runs.
std::optional<Strategy> baseline_strategy(const TuneFlags& f) {
  if (!(f.min_gain_pct >= 0 && f.min_gain_pct <= 100))
    throw InputError("--min-gain: must be in [0, 100] percent (got " + fixed(f.min_gain_pct, 2) + ")");
  if (f.baseline != "none") return parse_strategy(f.baseline, "--baseline");
  if (f.min_gain_pct > 0) throw InputError("--min-gain: needs --baseline (the strategy to keep: ddp, horovod, ...)");
  return std::nullopt;
}

Kept keep_baseline_unless_faster(const Tuner& tuner, const TuneOptions& o, std::optional<Strategy> baseline,
                                 double min_gain_pct, TuneResult& res) {
  Kept k;
  if (!baseline) return k;
  TuneOptions b = o;
  b.strategy = *baseline;
  TuneResult base = tuner.run(b);
  k.tuned_strategy = res.plan.strategy;
  k.tuned_buckets = res.plan.buckets.size();
  k.tuned_s = res.report.iteration_s;
  k.baseline_s = base.report.iteration_s;
  k.gain_pct = (1 - k.tuned_s / k.baseline_s) * 100;
  if (k.gain_pct < min_gain_pct) {
    k.kept = true;
    base.seconds += res.seconds;  // the search ran all the same
    base.evaluations += res.evaluations;
    res = std::move(base);
  }
  return k;
}

void run_tune(const TuneFlags& f) {
  const std::optional<Strategy> baseline = baseline_strategy(f);
  auto s = f.setup.resolve();
  TuneOptions o = f.options(s.transfer);
  f.setup.apply_measured_rate(s.model, s.cluster, s.batch, s.compute, o.accumulate, o.optimizer);
  Tuner tuner(s.model, s.cluster, s.gpus, s.batch, s.compute, f.setup.collective(), f.setup.goal(s.model));
  TuneResult res = tuner.run(o);
  const Kept kept = keep_baseline_unless_faster(tuner, o, baseline, f.min_gain_pct, res);
  TuneOptions base = o;
  base.strategy = Strategy::Single;
  Report single = tuner.run(base).report;
  base.strategy = Strategy::PerTensor;
  Report per_tensor = tuner.run(base).report;
  const Report& r = res.report;
  res.plan.prediction = plan_prediction(r);
  if (!f.out.empty()) write_file_atomic(f.out, plan_to_json_at(res.plan, f.out).dump(1) + "\n");
  if (!f.trace_path.empty()) tuner.evaluate(res.plan, true).timeline.write_chrome_trace(f.trace_path);
  if (!f.validate.empty() && f.validate != "sim") throw InputError("--validate: unknown value '" + f.validate + "' (valid: sim)");
  std::vector<Validated> validated;
  if (f.validate == "sim") validated = validate_by_simulation(tuner, o, res, s.cluster, f);
  if (f.json) {
    nlohmann::json j{{"plan", plan_to_json(res.plan)},
                     {"report", report_to_json(r)},
                     {"tuning_s", res.seconds},
                     {"bucket_costs_evaluated", res.evaluations},
                     {"search_gap_s", res.search_gap_s},
                     {"search_proven", res.proven()},
                     {"versus", {{"single", gain_json(r, single)}, {"per-tensor", gain_json(r, per_tensor)}}}};
    for (const auto& v : validated)
      j["validation"].push_back({{"plan", v.label}, {"buckets", v.buckets}, {"predicted_s", v.predicted_s},
                                 {"simulated_s", v.simulated_s}});
    if (f.baseline != "none")
      j["baseline"] = {{"strategy", f.baseline}, {"iteration_s", kept.baseline_s}, {"kept", kept.kept},
                       {"tuned", {{"strategy", kept.tuned_strategy}, {"buckets", kept.tuned_buckets},
                                  {"iteration_s", kept.tuned_s}, {"gain_pct", kept.gain_pct}}},
                       {"min_gain_pct", f.min_gain_pct}};
    out() << j.dump(2) << "\n";
    return;
  }
  out() << setup_line("tune", s.model, s.cluster, s.gpus, s.batch, s.compute) << "\n";
  out() << "strategy: " << options_line(o) << "\n";
  if (kept.kept)
    out() << "kept " << f.baseline << "'s buckets: the tuned plan (" << kept.tuned_strategy << ", "
          << count_of(int64_t(kept.tuned_buckets), "bucket") << ", " << ms(kept.tuned_s) << " ms) is predicted "
          << fixed(kept.gain_pct, 1) << " % faster than " << f.baseline << " (" << ms(kept.baseline_s)
          << " ms), under --min-gain " << fixed(f.min_gain_pct, 1) << " %\n";
  else if (f.baseline != "none")
    out() << "tuned plan kept: predicted " << fixed(kept.gain_pct, 1) << " % faster than " << f.baseline << " ("
          << ms(kept.baseline_s) << " ms), at least --min-gain " << fixed(f.min_gain_pct, 1) << " %\n";
  out() << (kept.kept ? "plan: " + f.baseline + "'s " : std::string("found ")) << r.buckets.size() << " bucket"
        << (r.buckets.size() == 1 ? "" : "s") << (kept.kept ? ", searched" : "") << " in " << ms(res.seconds, 3)
        << " ms (" << grouped(res.evaluations) << " bucket costs evaluated)\n";
  if (res.search_gap_s > 0)
    out() << "search stopped at its budget: the copies back could end up to " << ms(res.search_gap_s, 4)
          << " ms sooner under another partition\n";
  if (!res.proven())
    out() << "search: a local search under processor sharing (" << res.local_search
          << "): another partition may be faster\n";
  out() << "\n";
  print_bucket_table(r);
  print_iteration_summary(r);
  auto versus = [&](const char* name, const Report& b) {
    out() << "  versus " << name << std::string(13 - std::string(name).size(), ' ') << ms(b.iteration_s)
              << " ms: " << fixed(b.iteration_s / r.iteration_s, 3) << "x ("
              << (b.iteration_s >= r.iteration_s ? fixed((1 - r.iteration_s / b.iteration_s) * 100, 1) + "% less time"
                                                 : fixed((r.iteration_s / b.iteration_s - 1) * 100, 1) + "% more time")
              << ")\n";
  };
  versus("single", single);
  versus("per-tensor", per_tensor);
  if (!validated.empty()) print_validation(validated);
  if (!f.out.empty()) out() << "  plan written to      " << f.out << " (run it: fuseplan predict --plan " << f.out << ")\n";
  else out() << "  (--out FILE writes the plan)\n";
  if (!f.trace_path.empty()) out() << "  trace                " << f.trace_path << " (open in ui.perfetto.dev)\n";
}

void run_compare(const TuneFlags& f) {
  auto s = f.setup.resolve();
  TuneOptions o = f.options(s.transfer);
  f.setup.apply_measured_rate(s.model, s.cluster, s.batch, s.compute, o.accumulate, o.optimizer);
  Tuner tuner(s.model, s.cluster, s.gpus, s.batch, s.compute, f.setup.collective(), f.setup.goal(s.model));
  std::vector<TuneResult> results;
  const TuneResult *ddp = nullptr, *horovod = nullptr;
  for (Strategy st : kAllStrategies) {
    o.strategy = st;
    results.push_back(tuner.run(o));
  }
  for (const auto& r : results) {
    if (r.plan.strategy == strategy_name(Strategy::Ddp)) ddp = &r;
    if (r.plan.strategy == strategy_name(Strategy::Horovod)) horovod = &r;
  }
  if (f.json) {
    nlohmann::json rows = nlohmann::json::array();
    for (const auto& r : results)
      rows.push_back({{"strategy", r.plan.strategy},
                      {"buckets", r.plan.buckets.size()},
                      {"iteration_s", r.report.iteration_s},
                      {"exposed_comm_s", r.report.exposed_comm_s},
                      {"scaling_efficiency", r.report.scaling_efficiency},
                      {"speedup_vs_ddp", ddp->report.iteration_s / r.report.iteration_s},
                      {"speedup_vs_horovod", horovod->report.iteration_s / r.report.iteration_s},
                      {"tuning_s", r.seconds},
                      {"splits", [&] {
                         nlohmann::json a = nlohmann::json::array();
                         for (size_t k = 1; k < r.plan.buckets.size(); ++k) a.push_back(r.plan.buckets[k].begin);
                         return a;
                       }()}});
    out() << nlohmann::json{{"model", s.model.name}, {"cluster", s.cluster.name}, {"gpus", s.gpus},
                                {"batch_per_gpu", s.batch}, {"strategies", rows}}
                     .dump(2)
              << "\n";
    return;
  }
  out() << setup_line("compare", s.model, s.cluster, s.gpus, s.batch, s.compute) << "\n";
  o.strategy = Strategy::Optimal;
  out() << "options: " << options_line(o).substr(std::string("optimal, ").size()) << "\n\n";
  Table t({"<strategy", "buckets", "iteration ms", "exposed comm ms", "efficiency", "vs ddp", "vs horovod", "tuned in ms"});
  for (const auto& r : results) {
    std::string name = r.plan.strategy;
    if (name == strategy_name(Strategy::KSplit)) name += " (K=" + std::to_string(f.segments) + ")";
    t.row({name, std::to_string(r.plan.buckets.size()), ms(r.report.iteration_s), ms(r.report.exposed_comm_s),
           percent(r.report.scaling_efficiency), fixed(ddp->report.iteration_s / r.report.iteration_s, 3) + "x",
           fixed(horovod->report.iteration_s / r.report.iteration_s, 3) + "x", ms(r.seconds, 3)});
  }
  t.print(out(), "  ");
  out() << "\n  vs ddp / vs horovod: speed-up of the iteration over PyTorch DDP (25 MiB buckets) and Horovod ("
            << f.fusion.threshold << " fusion) on the same setup; > 1 is faster.\n";
}

}  // namespace

void add_tune_commands(CLI::App& app) {
  auto tf = std::make_shared<TuneFlags>();
  auto* tune = app.add_subcommand("tune",
                                  "Choose gradient buckets and allreduce algorithms; write the plan.\n"
                                  "With no flags: the optimal plan for resnet50 on tencent-p40 at 1024 GPUs.");
  tf->add(tune, true);
  tune->add_option("--out", tf->out, "write the plan (schema fuseplan.plan/1) to FILE");
  tune->add_option("--trace", tf->trace_path, "write a Chrome trace of the tuned iteration to FILE");
  tune->add_option("--validate", tf->validate, "sim: re-rank the --top best plans by SimGrid simulation");
  tune->add_option("--top", tf->top, "with --validate: how many plans to simulate")->capture_default_str();
  tune->add_flag("--quiet", tf->quiet, "with --validate: no progress on stderr");
  tune->add_option("--baseline", tf->baseline,
                   "keep this strategy's buckets (the framework default you run: ddp, horovod, ...) unless the tuned "
                   "plan is predicted at least --min-gain faster; none = always the tuned plan")
      ->capture_default_str();
  tune->add_option("--min-gain", tf->min_gain_pct,
                   "with --baseline: the predicted gain in percent of the baseline's iteration that the tuned plan "
                   "must reach to replace it (0 to 100; set it to the model's error on your machine, from verify)")
      ->capture_default_str();
  tune->add_flag("--json", tf->json, "print the plan, its report and the gains as JSON");
  tune->callback([tf] { run_tune(*tf); });

  auto cf = std::make_shared<TuneFlags>();
  auto* compare = app.add_subcommand("compare", "Every strategy on one setup: iteration time, exposed communication, "
                                                "buckets, and speed-up over the ddp and horovod defaults.");
  cf->add(compare, false);
  compare->add_flag("--json", cf->json, "print JSON instead of a table");
  compare->callback([cf] { run_compare(*cf); });
}

}  // namespace fuseplan::cli
