// The run contract's input: a scenario (model, cluster, plan, collective options,
// training goal) bound and validated once, then handed to any of the three runners:
// predict (here), sim::simulate_plan and, on a real machine, exec::measure.
#pragma once
#include <string>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan {

struct Scenario {
  Model model;
  Cluster cluster;  // grown to the plan's GPUs where the file holds fewer, at the plan's compute_scale
  Plan plan;        // validated against `model`
  CollectiveOptions collective;
  TrainingGoal goal;
  std::vector<std::string> warnings;  // what binding found worth a line on stderr
};

// A setup's checks before there is a plan (tune, compare, whatif and bind_scenario): the
// cluster grown by whole nodes to hold `gpus` (a note), the per-GPU memory (refused when
// the replicated states cannot fit, a warning when the activations at the batch push it
// over) and a global batch past the largest the model's literature trained at. Returns
// the cluster to use; appends the notes and warnings. InputError naming `gpus_origin`
// (where the GPU count came from) or `model_origin` (where the model did). Without
// `replicated_memory` the memory is left to the caller (schedule: sharded states fit
// where replicated ones do not).
Cluster check_setup(const Model& model, const Cluster& cluster, int gpus, int batch, Precision compute,
                    Precision transfer, const std::string& gpus_origin, const std::string& model_origin,
                    std::vector<std::string>& warnings, bool replicated_memory = true);

// Binds a plan: validated against the model (fingerprint and coverage), then
// check_setup at the plan's GPUs, batch, precision and widest transfer; the cluster takes
// the plan's compute_scale (the framework's the plan was made for). InputError naming
// `origin` (the plan's file).
Scenario bind_scenario(Model model, Cluster cluster, Plan plan, CollectiveOptions collective, TrainingGoal goal,
                       const std::string& origin);

// The predictor on a bound scenario, with its compute per layer class (Report::compute_by_class).
Report predict(const Scenario& s, bool with_timeline = true);

// What a measured scaling efficiency (against one GPU, in (0, 1]) calibrates, in the range
// its file allows: the plan's fixed cost per step (Plan::step_overhead_s, [0,
// kMaxStepOverheadMs]: what a framework's data-parallel step costs beyond the priced
// terms, for the GPU count it was measured at) or the cluster's spread of each GPU's step
// (Cluster::compute_variation, [0, kMaxComputeVariation]: its wait grows with the GPU
// count as the expected slowest of N, so one measured count prices the others).
enum class Calibrated { StepOverhead, ComputeVariation };

// The value whose prediction has the efficiency `measured`, the scenario's own value of it
// ignored. Found by bisection, since the efficiency falls as the value grows (data wait
// included, which is why it is not solved in closed form). InputError unless the plan has
// more than one GPU and `measured` is in range.
struct EfficiencyFit {
  enum class Kind {
    Fitted,     // value reproduces `measured`
    AtOrBelow,  // the prediction without it is at or below `measured` already: 0
    Beyond,     // even the range's top leaves the prediction above `measured`: the top
  };
  Kind kind = Kind::Fitted;
  double value = 0;               // seconds (a step overhead) or a relative standard deviation
  double efficiency_without = 0;  // the prediction with none
};
EfficiencyFit fit_to_efficiency(const Scenario& s, double measured, Calibrated what);

}  // namespace fuseplan
