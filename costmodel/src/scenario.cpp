// Binding a scenario once: plan, cluster size, memory and global batch.
#include "fuseplan/costmodel/scenario.hpp"

#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/memory.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

Cluster check_setup(const Model& model, const Cluster& cluster, int gpus, int batch, Precision compute,
                    Precision transfer, const std::string& gpus_origin, const std::string& model_origin,
                    std::vector<std::string>& warnings, bool replicated_memory) {
  Cluster c = grown_to(cluster, gpus, gpus_origin);
  if (c.nodes != cluster.nodes)
    warnings.push_back("note: cluster " + cluster.name + " has " + count_of(cluster.capacity(), "GPU") +
                       "; grown by whole nodes to " + count_of(c.nodes, "node") + " for " + count_of(gpus, "GPU") +
                       " (a what-if: the same nodes and network)");
  if (replicated_memory) {
    const std::string memory = check_memory(model, c, batch, compute, transfer, model_origin);
    if (!memory.empty()) warnings.push_back(memory);
  }
  // The prediction is of speed, not of convergence: past the literature's largest batch
  // the warning says so.
  const auto limit = published_batch_limit(model);
  const int64_t global = int64_t(gpus) * batch;
  if (limit && global > limit->samples)
    warnings.push_back("warning: global batch " + grouped(global) + " (" + count_of(gpus, "GPU") + " x " +
                       std::to_string(batch) + ") is past the largest published for " + model.name +
                       " at baseline accuracy, " + grouped(limit->samples) + " (" + limit->source +
                       "); this predicts speed, not convergence");
  return c;
}

Scenario bind_scenario(Model model, Cluster cluster, Plan plan, CollectiveOptions collective, TrainingGoal goal,
                       const std::string& origin) {
  validate_plan(plan, model, origin);
  Precision widest = Precision::FP16;  // the fusion buffers at the widest transfer precision the plan uses
  for (const auto& b : plan.buckets)
    if (bytes_per_element(b.transfer) > bytes_per_element(widest)) widest = b.transfer;
  Scenario s;
  s.cluster = check_setup(model, cluster, plan.gpus, plan.batch_per_gpu, plan.compute, widest, origin + ": $.gpus",
                          origin + ": $.model", s.warnings);
  s.cluster.compute_scale = plan.compute_scale;  // the framework's the plan was made for
  s.model = std::move(model);
  s.plan = std::move(plan);
  s.collective = std::move(collective);
  s.goal = std::move(goal);
  return s;
}

Report predict(const Scenario& s, bool with_timeline) {
  CollectiveModel coll(s.cluster, s.plan.gpus, s.collective);
  ComputeModel compute(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute);
  Report r = predict(s.model, s.cluster, s.plan, coll, compute, s.goal, with_timeline);
  r.compute_by_class = compute_by_class(s.model, compute, s.plan.batch_per_gpu);  // the mean GPU's
  return r;
}

EfficiencyFit fit_to_efficiency(const Scenario& s, double measured, Calibrated what) {
  const bool overhead = what == Calibrated::StepOverhead;
  if (s.plan.gpus < 2)
    throw InputError(std::string(overhead ? "a step overhead is paid" : "the wait for the slowest GPU is paid") +
                     " on more than one GPU only (the plan has one)");
  if (!(measured > 0 && measured <= 1))
    throw InputError("measured scaling efficiency: must be in (0, 1] (got " + formatted(measured, "%g") + ")");
  const CollectiveModel coll(s.cluster, s.plan.gpus, s.collective);
  const ComputeModel compute(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute);
  Plan plan = s.plan;
  Cluster cluster = s.cluster;
  auto efficiency = [&](double value) {
    (overhead ? plan.step_overhead_s : cluster.compute_variation) = value;
    return predict(s.model, cluster, plan, coll, compute, s.goal, false).scaling_efficiency;
  };
  EfficiencyFit fit;
  fit.efficiency_without = efficiency(0);
  if (fit.efficiency_without <= measured) {
    fit.kind = EfficiencyFit::Kind::AtOrBelow;
    return fit;
  }
  double lo = 0, hi = overhead ? kMaxStepOverheadMs * 1e-3 : kMaxComputeVariation;
  if (efficiency(hi) > measured) {
    fit.kind = EfficiencyFit::Kind::Beyond;
    fit.value = hi;
    return fit;
  }
  for (int i = 0; i < 64 && hi - lo > 1e-12; ++i) {  // to 1e-12 (a picosecond), by the same steps every run
    const double mid = 0.5 * (lo + hi);
    (efficiency(mid) > measured ? lo : hi) = mid;
  }
  fit.value = 0.5 * (lo + hi);
  return fit;
}

}  // namespace fuseplan
