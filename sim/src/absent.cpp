// A build without SimGrid (libsimgrid-dev missing, or -DFUSEPLAN_SIMGRID=OFF): every
// simulation refuses with one line saying so; prediction, tuning and the executor work.
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::sim {

namespace {
[[noreturn]] void no_simgrid() {
  throw InputError("simulation: this build has no SimGrid (Debian's libsimgrid-dev); install it and rebuild, or "
                   "use the predictor, which needs no simulator");
}
}  // namespace

SimCollectiveResult simulate_allreduce(const Cluster&, int, const std::string&, int64_t, Precision, CollectiveOptions) {
  no_simgrid();
}
Report simulate_plan(const Model&, const Cluster&, const Plan&, CollectiveOptions, const TrainingGoal&,
                     const SimOptions&) {
  no_simgrid();
}
Report simulate_plan(const Scenario&, const SimOptions&) { no_simgrid(); }
Report simulate_plan_here(const Model&, const Cluster&, const Plan&, CollectiveOptions, const TrainingGoal&,
                          const SimOptions&) {
  no_simgrid();
}

SimScheduleResult simulate_schedule(const PipelineModel&, const PipelineSchedule&, const SimOptions&) { no_simgrid(); }
SimScheduleResult simulate_schedule_here(const PipelineModel&, const PipelineSchedule&, const SimOptions&) {
  no_simgrid();
}

}  // namespace fuseplan::sim
