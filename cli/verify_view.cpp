// Predicted vs simulated vs measured for one plan: the rows, the drift diagnostic, the
// table, its JSON and the combined trace.
#include "verify_view.hpp"

#include <cmath>
#include <utility>

#include "format.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

std::string sharing_text(const Cluster& c, int gpus) {
  if (!c.sharing(gpus).any()) return "";
  std::string s = "comm_compute_sharing " + fixed(c.comm_compute_sharing, 2);
  if (c.allreduce_sharing) s += ", allreduce_sharing " + fixed(*c.allreduce_sharing, 2);
  return s;
}

namespace {
std::string rel_err(double model, double measured) {
  const double e = relative_error(model, measured);
  return std::isnan(e) ? "-" : signed_percent(e);
}
std::string ms_or_dash(double s) { return std::isnan(s) ? std::string("-") : fixed(s * 1e3, 2); }
}  // namespace

double outside_phases_s(const Report& r) {
  return r.iteration_s - (r.forward_s + r.backward_s + r.exposed_comm_s + r.optimizer_s + r.data_wait_s);
}

std::optional<std::optional<PackOn>> plan_as_run(Plan& plan, const Report& measured) {
  // Without a 16-bit bucket nothing was cast, whatever the report says; one GPU has no
  // allreduce, so the model casts nothing there whatever the plan says.
  if (!measured.cast || measured.cast == plan.cast || !sends_16_bit(plan) || plan.gpus < 2) return std::nullopt;
  return std::exchange(plan.cast, measured.cast);
}

std::string as_run_line(std::optional<PackOn> plan_cast, std::optional<PackOn> run_cast) {
  auto where = [](std::optional<PackOn> c) { return (c ? "on " : "") + std::string(cast_name(c)); };
  return "the run cast its 16-bit buckets " + where(run_cast) + " (the plan's cast: " + where(plan_cast) +
         "): predicted and simulated with the run's casts";
}

Verification verify_plan(const Scenario& given, const Report& measured, bool simulate) {
  Scenario s = given;
  Verification v;
  v.plan_cast = plan_as_run(s.plan, measured);
  const Model& model = s.model;
  const Plan& plan = s.plan;
  v.predicted = predict(s, true);
  const bool profiled = !model.layers.empty() && model.layers.front().measured.has_value();
  v.drift = v.predicted.forward_s > 0 ? measured.forward_s / v.predicted.forward_s : 1;
  if (profiled && std::abs(v.drift - 1) > 0.02) {
    Model scaled = model;
    for (Layer& l : scaled.layers)
      if (l.measured) {
        l.measured->fwd_us *= v.drift;
        l.measured->bwd_us *= v.drift;
      }
    if (scaled.measured_optimizer_us) *scaled.measured_optimizer_us *= v.drift;
    CollectiveModel coll(s.cluster, plan.gpus, s.collective);
    ComputeModel scaled_compute(scaled, s.cluster, plan.batch_per_gpu, plan.compute);
    v.at_speed = predict(scaled, s.cluster, plan, coll, scaled_compute, s.goal, false);
  }
  if (simulate) {
    v.simulated = sim::simulate_plan(s, sim::SimOptions{});
  } else {
    v.no_sim_reason = "not simulated (--no-sim)";
  }
  v.rows = compare_reports(v.predicted, v.simulated ? &*v.simulated : nullptr, measured);
  v.measured_outside_s = outside_phases_s(measured);
  v.predicted_outside_s = outside_phases_s(v.predicted);
  return v;
}

void print_verification(std::ostream& os, const Verification& v, const Plan& plan, const Cluster& cluster,
                        const Report& measured, const std::string& command) {
  os << command << ": " << plan.model << " x " << count_of(plan.gpus, "GPU") << ", batch " << plan.batch_per_gpu << ", "
     << count_of(int64_t(plan.buckets.size()), "bucket") << "; predicted and simulated on " << cluster.name
     << ", measured: " << measured.cluster << "\n  (times in ms; bucket times from the start of backward; "
     << "errors relative to the measurement)\n\n";
  Table t({"<", "predicted", "simulated", "measured", "pred err", "sim err"});
  for (const auto& r : v.rows)
    t.row({r.metric, ms_or_dash(r.predicted_s), ms_or_dash(r.simulated_s), ms_or_dash(r.measured_s),
           rel_err(r.predicted_s, r.measured_s), v.simulated ? rel_err(r.simulated_s, r.measured_s) : "-"});
  t.print(os, "  ");
  if (!v.no_sim_reason.empty()) os << "\n  " << v.no_sim_reason << "\n";
  if (v.plan_cast) os << "\n  " << as_run_line(*v.plan_cast, measured.cast) << "\n";
  if (v.at_speed)
    os << "\n  compute drift: this run's forward (no communication in it) took " << fixed(v.drift, 3)
       << "x the profile's;\n  with the profile scaled by it, predicted iteration " << ms_or_dash(v.at_speed->iteration_s)
       << " ms (" << rel_err(v.at_speed->iteration_s, measured.iteration_s) << "), last allreduce end "
       << ms_or_dash(v.at_speed->comm_end_s) << " ms (" << rel_err(v.at_speed->comm_end_s, measured.comm_end_s)
       << ")\n";
  // More than 2 % of the iteration outside the phases, beyond what the prediction has there.
  if (const double gap = v.measured_outside_s - v.predicted_outside_s;
      measured.iteration_s > 0 && std::abs(gap) > 0.02 * measured.iteration_s)
    os << "\n  outside the phases: the measured iteration is " << ms_or_dash(v.measured_outside_s)
       << " ms longer than its forward, backward,\n  exposed communication, optimizer and data wait (predicted: "
       << ms_or_dash(v.predicted_outside_s) << " ms): the slowest rank's mean step\n  holds time the critical rank's "
       << "phases do not (ranks waiting for each other outside them,\n  work between steps), which no phase of the "
       << "model prices\n";
  if (const std::string sharing = sharing_text(cluster, plan.gpus); !sharing.empty())
    os << (v.no_sim_reason.empty() ? "\n" : "") << "  predicted with " << sharing
       << " (communication and backward slow each other)\n";
}

nlohmann::json verification_json(const Verification& v, const std::string& plan_path, const Cluster& cluster) {
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& r : v.rows)
    rows.push_back({{"metric", r.metric},
                    {"predicted_s", r.predicted_s},
                    {"simulated_s", v.simulated ? nlohmann::json(r.simulated_s) : nullptr},
                    {"measured_s", r.measured_s}});
  nlohmann::json out{{"plan", plan_path},
                     {"cluster", cluster.name},
                     {"rows", rows},
                     {"outside_phases_s", {{"predicted", v.predicted_outside_s}, {"measured", v.measured_outside_s}}}};
  if (v.plan_cast)
    out["cast"] = {{"plan", cast_name(*v.plan_cast)}, {"run", cast_name(v.predicted.cast)}};
  if (v.at_speed)
    out["at_measured_compute_speed"] = {
        {"compute_scale", v.drift}, {"iteration_s", v.at_speed->iteration_s}, {"comm_end_s", v.at_speed->comm_end_s}};
  return out;
}

void write_verification_trace(const std::string& path, const Verification& v, const Report& measured) {
  Timeline all = measured.timeline;
  double last_start = 0;
  for (const auto& e : measured.timeline.events)
    if (e.rank == 0 && e.category == "data") last_start = std::max(last_start, e.start_s + e.dur_s);
  for (TimelineEvent e : v.predicted.timeline.events) {
    if (e.rank != 0) continue;
    e.rank = 1000;
    e.stream = "predicted " + e.stream;
    e.start_s += last_start;
    all.events.push_back(std::move(e));
  }
  all.write_chrome_trace(path);
}

}  // namespace fuseplan::cli
