// Binding a scenario once: plan, cluster size, memory and global batch.
#include "fuseplan/costmodel/scenario.hpp"

#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/memory.hpp"
#include "fuseplan/costmodel/predictor.hpp"
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
  s.model = std::move(model);
  s.plan = std::move(plan);
  s.collective = std::move(collective);
  s.goal = std::move(goal);
  return s;
}

Report predict(const Scenario& s, bool with_timeline) {
  CollectiveModel coll(s.cluster, s.plan.gpus, s.collective);
  ComputeModel compute(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute);
  return predict(s.model, s.cluster, s.plan, coll, compute, s.goal, with_timeline);
}

}  // namespace fuseplan
