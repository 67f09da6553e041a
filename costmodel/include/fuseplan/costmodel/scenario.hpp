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
  Cluster cluster;  // grown to the plan's GPUs where the file holds fewer
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
// check_setup at the plan's GPUs, batch, precision and widest transfer. InputError
// naming `origin` (the plan's file).
Scenario bind_scenario(Model model, Cluster cluster, Plan plan, CollectiveOptions collective, TrainingGoal goal,
                       const std::string& origin);

// The predictor on a bound scenario.
Report predict(const Scenario& s, bool with_timeline = true);

// The fixed cost per step (Plan::step_overhead_s, in [0, kMaxStepOverheadMs]) whose
// prediction has the scaling efficiency `measured` (against one GPU, in (0, 1]): the
// calibration of what a framework's data-parallel step costs beyond the priced terms,
// from one measured model. Found by bisection, since the efficiency falls as the cost
// grows (data wait included, which is why it is not solved in closed form); the plan's
// own step overhead is ignored. InputError unless the plan has more than one GPU and
// `measured` is in range.
struct StepOverheadFit {
  enum class Kind {
    Fitted,     // overhead_s reproduces `measured`
    AtOrBelow,  // the prediction without one is at or below `measured` already: 0
    Beyond,     // even kMaxStepOverheadMs leaves the prediction above `measured`: the maximum
  };
  Kind kind = Kind::Fitted;
  double overhead_s = 0;
  double efficiency_without = 0;  // the prediction with no step overhead
};
StepOverheadFit fit_step_overhead(const Scenario& s, double measured);

}  // namespace fuseplan
