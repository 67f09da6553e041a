// `fuseplan simulate`: training iterations of a plan replayed rank by rank in SimGrid,
// beside the analytic prediction of the same plan.
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.hpp"
#include "format.hpp"
#include "progress.hpp"
#include "verify_view.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

namespace {

struct SimulateFlags {
  SetupFlags setup;
  std::string plan_path, strategy = "optimal", network = "cm02", trace_path;
  std::vector<std::string> stragglers;
  sim::SimOptions opt;
  bool json = false, quiet = false;
};

std::pair<int, double> parse_straggler(const std::string& s) {
  auto colon = s.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument(s);
    size_t u1 = 0, u2 = 0;
    int rank = std::stoi(s.substr(0, colon), &u1);
    double factor = std::stod(s.substr(colon + 1), &u2);
    if (u1 != colon || u2 != s.size() - colon - 1) throw std::invalid_argument(s);
    return {rank, factor};
  } catch (const std::exception&) {
    throw InputError("--straggler: '" + s + "' is not RANK:FACTOR (e.g. 3:1.5)");
  }
}

void run_simulate(SimulateFlags& f) {
  Scenario s;
  if (!f.plan_path.empty()) {
    s = f.setup.load_plan_file(f.plan_path);
  } else {
    auto r = f.setup.resolve();
    s.model = std::move(r.model);
    s.cluster = std::move(r.cluster);
    s.collective = f.setup.collective();
    s.goal = f.setup.goal(s.model);
    TuneOptions o;
    o.strategy = parse_strategy(f.strategy);
    o.transfer = r.transfer;
    f.setup.apply_measured_rate(s.model, s.cluster, r.batch, r.compute, o.accumulate, o.optimizer);
    Tuner tuner(s.model, s.cluster, r.gpus, r.batch, r.compute, s.collective, s.goal);
    s.plan = tuner.run(o).plan;
  }
  const Model& model = s.model;
  const Cluster& cluster = s.cluster;
  const Plan& plan = s.plan;
  f.opt.network_model = f.network;
  f.opt.stragglers.clear();
  for (const auto& s : f.stragglers) f.opt.stragglers.push_back(parse_straggler(s));
  const Report predicted = predict(s, false);
  Report r;
  {
    ProgressBar bar("rank-rounds", f.quiet);
    f.opt.progress = [&bar](int64_t done, int64_t total) { bar(done, total); };
    r = sim::simulate_plan(s, f.opt);
  }
  if (!f.trace_path.empty()) r.timeline.write_chrome_trace(f.trace_path);
  if (f.json) {
    nlohmann::json j = report_to_json(r);
    j["predicted_iteration_s"] = predicted.iteration_s;
    j["network_model"] = f.opt.network_model;
    j["iterations"] = f.opt.iterations;
    out() << j.dump(2) << "\n";
    return;
  }
  std::ostream& os = out();
  os << setup_line("simulate", model, cluster, plan.gpus, plan.batch_per_gpu, plan.compute) << "\n";
  os << "plan: " << (f.plan_path.empty() ? plan.strategy : f.plan_path) << ", " << plan.buckets.size()
     << " buckets; SimGrid " << f.opt.network_model << ", " << f.opt.iterations << " iteration"
     << (f.opt.iterations == 1 ? "" : "s") << (f.opt.jitter > 0 ? ", jitter " + fixed(f.opt.jitter, 3) : "")
     << (f.opt.stragglers.empty() ? "" : ", " + std::to_string(f.opt.stragglers.size()) + " straggler(s)")
     << "\n\n";
  print_bucket_table(r, os);
  print_iteration_summary(r, os);
  os << "  predicted            " << ms(predicted.iteration_s) << " ms (simulated / predicted = "
     << fixed(r.iteration_s / predicted.iteration_s, 4) << ")\n";
  if (const std::string sharing = sharing_text(cluster, plan.gpus); !sharing.empty())
    os << "  processor sharing    " << sharing << " (communication and backward slow each other)\n";
  if (!f.trace_path.empty())
    os << "  trace                " << f.trace_path << " (ranks 0.." << f.opt.trace_ranks - 1 << ")\n";
}

}  // namespace

void add_simulate_command(CLI::App& app) {
  auto f = std::make_shared<SimulateFlags>();
  auto* cmd = app.add_subcommand("simulate",
                                 "Replay training iterations of a plan rank by rank in SimGrid (compute, gradient\n"
                                 "readiness, every allreduce message) and compare with the prediction.");
  f->setup.add(cmd);
  cmd->add_option("--plan", f->plan_path, "plan .json to simulate (default: tune one with --strategy)");
  cmd->add_option("--strategy", f->strategy, "without --plan: the tuner strategy for the plan")->capture_default_str();
  cmd->add_option("--iterations", f->opt.iterations,
                  "iterations to simulate (1 to " + std::to_string(sim::kMaxSimIterations) + ")")
      ->capture_default_str();
  cmd->add_option("--jitter", f->opt.jitter, "relative std. dev. of every compute duration (seeded normal)")
      ->capture_default_str();
  cmd->add_option("--seed", f->opt.seed, "seed of the jitter")->capture_default_str();
  cmd->add_option("--straggler", f->stragglers, "RANK:FACTOR, a rank whose compute is FACTOR times slower (repeatable)");
  cmd->add_option("--network-model", f->network, "SimGrid network model: cm02 (alpha-beta) | lv08 | smpi")
      ->capture_default_str();
  cmd->add_option("--trace", f->trace_path, "write a Chrome trace of the traced ranks to FILE");
  cmd->add_option("--trace-ranks", f->opt.trace_ranks, "how many ranks (the first ones) the trace shows")
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "print the simulated report as JSON");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
  cmd->callback([f] { run_simulate(*f); });
}

}  // namespace fuseplan::cli
