// `fuseplan verify`: predicted vs simulated vs measured for one plan, side by side: the
// iteration and its phases and every bucket's start and end, with the relative error of
// the prediction and the simulation against the measurement; a combined trace.
#include <cmath>
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

namespace {

struct VerifyFlags {
  SetupFlags setup;
  std::string plan_path, measured_path, trace_path;
  bool no_sim = false, json = false;
};

std::string rel_err(double model, double measured) {
  if (!(std::abs(measured) > 1e-12)) return "-";
  return signed_percent((model - measured) / measured);
}

void run_verify(VerifyFlags& f) {
  auto loaded = f.setup.load_plan_file(f.plan_path);
  const Model& model = loaded.model;
  const Cluster& cluster = loaded.cluster;
  const Plan& plan = loaded.plan;
  const Report measured = load_measured_run(f.measured_path, plan, f.plan_path);
  CollectiveModel coll(cluster, plan.gpus, f.setup.collective());
  ComputeModel compute(model, cluster, plan.batch_per_gpu, plan.compute);
  const Report predicted = predict(model, cluster, plan, coll, compute, f.setup.goal(model), true);
  // Compute drift: forward has no communication, so a measured forward away from the
  // profile's says the machine ran at another speed than when it was profiled (shared
  // machines drift by 10-30 % within minutes). The prediction again with the profile
  // scaled to this run's forward speed separates that from the communication model.
  std::optional<Report> at_speed;
  const bool profiled = !model.layers.empty() && model.layers.front().measured.has_value();
  const double drift = predicted.forward_s > 0 ? measured.forward_s / predicted.forward_s : 1;
  if (profiled && std::abs(drift - 1) > 0.02) {
    Model scaled = model;
    for (Layer& l : scaled.layers)
      if (l.measured) {
        l.measured->fwd_us *= drift;
        l.measured->bwd_us *= drift;
      }
    if (scaled.measured_optimizer_us) *scaled.measured_optimizer_us *= drift;
    ComputeModel scaled_compute(scaled, cluster, plan.batch_per_gpu, plan.compute);
    at_speed = predict(scaled, cluster, plan, coll, scaled_compute, f.setup.goal(model), false);
  }
  std::optional<Report> simulated;
  std::string no_sim_reason;
  if (f.no_sim)
    no_sim_reason = "not simulated (--no-sim)";
  if (no_sim_reason.empty()) {
    const std::string out = sim::run_isolated([&] {
      sim::SimOptions o;
      return report_to_json(sim::simulate_plan(model, cluster, plan, f.setup.collective(), f.setup.goal(model), o)).dump();
    });
    simulated = report_from_json(nlohmann::json::parse(out), "simulation");
  }

  struct Row {
    std::string name;
    double p, s, m;
  };
  std::vector<Row> rows = {
      {"iteration", predicted.iteration_s, simulated ? simulated->iteration_s : NAN, measured.iteration_s},
      {"forward", predicted.forward_s, simulated ? simulated->forward_s : NAN, measured.forward_s},
      {"backward", predicted.backward_s, simulated ? simulated->backward_s : NAN, measured.backward_s},
      {"exposed communication", predicted.exposed_comm_s, simulated ? simulated->exposed_comm_s : NAN,
       measured.exposed_comm_s},
      {"last allreduce end", predicted.comm_end_s, simulated ? simulated->comm_end_s : NAN, measured.comm_end_s},
      {"optimizer", predicted.optimizer_s, simulated ? simulated->optimizer_s : NAN, measured.optimizer_s}};
  for (size_t b = 0; b < plan.buckets.size(); ++b) {
    const auto* sb = simulated ? &simulated->buckets[b] : nullptr;
    rows.push_back({"bucket " + std::to_string(b) + " start", predicted.buckets[b].start_s, sb ? sb->start_s : NAN,
                    measured.buckets[b].start_s});
    rows.push_back({"bucket " + std::to_string(b) + " end", predicted.buckets[b].end_s, sb ? sb->end_s : NAN,
                    measured.buckets[b].end_s});
  }
  auto ms = [](double s) { return std::isnan(s) ? std::string("-") : fixed(s * 1e3, 2); };
  if (f.json) {
    nlohmann::json j = nlohmann::json::array();
    for (const auto& r : rows)
      j.push_back({{"metric", r.name}, {"predicted_s", r.p}, {"simulated_s", simulated ? nlohmann::json(r.s) : nullptr},
                   {"measured_s", r.m}});
    nlohmann::json out{{"plan", f.plan_path}, {"cluster", cluster.name}, {"rows", j}};
    if (at_speed)
      out["at_measured_compute_speed"] = {{"compute_scale", drift},
                                          {"iteration_s", at_speed->iteration_s},
                                          {"comm_end_s", at_speed->comm_end_s}};
    std::cout << out.dump(2) << "\n";
  } else {
    std::cout << "fuseplan verify: " << plan.model << " x " << count_of(plan.gpus, "GPU") << ", batch " << plan.batch_per_gpu
              << ", " << count_of(int64_t(plan.buckets.size()), "bucket") << "; predicted and simulated on " << cluster.name
              << ", measured: " << measured.cluster << "\n  (times in ms; bucket times from the start of backward; "
              << "errors relative to the measurement)\n\n";
    Table t({"<", "predicted", "simulated", "measured", "pred err", "sim err"});
    for (const auto& r : rows)
      t.row({r.name, ms(r.p), ms(r.s), ms(r.m), rel_err(r.p, r.m), simulated ? rel_err(r.s, r.m) : "-"});
    t.print(std::cout, "  ");
    if (!no_sim_reason.empty()) std::cout << "\n  " << no_sim_reason << "\n";
    if (at_speed)
      std::cout << "\n  compute drift: this run's forward (no communication in it) took " << fixed(drift, 3)
                << "x the profile's;\n  with the profile scaled by it, predicted iteration " << ms(at_speed->iteration_s)
                << " ms (" << rel_err(at_speed->iteration_s, measured.iteration_s) << "), last allreduce end "
                << ms(at_speed->comm_end_s) << " ms (" << rel_err(at_speed->comm_end_s, measured.comm_end_s) << ")\n";
    if (cluster.comm_compute_sharing > 0 && plan.gpus > 1)
      std::cout << (no_sim_reason.empty() ? "\n" : "") << "  predicted with comm_compute_sharing "
                << fixed(cluster.comm_compute_sharing, 2)
                << " (communication and backward slow each other)\n";
  }
  if (!f.trace_path.empty()) {
    // Measured ranks as they are; the prediction as process 1000, its iteration placed at
    // the start of the last measured iteration of rank 0.
    Timeline all = measured.timeline;
    double last_start = 0;
    for (const auto& e : measured.timeline.events)
      if (e.rank == 0 && e.category == "data") last_start = std::max(last_start, e.start_s + e.dur_s);
    for (TimelineEvent e : predicted.timeline.events) {
      if (e.rank != 0) continue;
      e.rank = 1000;
      e.stream = "predicted " + e.stream;
      e.start_s += last_start;
      all.events.push_back(std::move(e));
    }
    all.write_chrome_trace(f.trace_path);
  }
}

}  // namespace

void add_verify_command(CLI::App& app) {
  auto f = std::make_shared<VerifyFlags>();
  auto* cmd = app.add_subcommand("verify",
                                 "Predicted vs simulated vs measured for a plan: iteration, phases and every bucket's\n"
                                 "start and end, with relative errors (the measurement from fuseplan-exec run --report).");
  cmd->add_option("--plan", f->plan_path, "the plan that was run")->required();
  cmd->add_option("--measured", f->measured_path, "fuseplan-exec run --report FILE")->required();
  f->setup.add(cmd);
  cmd->add_flag("--no-sim", f->no_sim, "skip the SimGrid simulation");
  cmd->add_option("--trace", f->trace_path, "Chrome trace: measured ranks and the predicted iteration");
  cmd->add_flag("--json", f->json, "print the table as JSON");
  cmd->callback([f] { run_verify(*f); });
}

}  // namespace fuseplan::cli
