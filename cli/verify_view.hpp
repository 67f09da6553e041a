// The verify table: a plan's prediction (and its SimGrid replay) against its measured
// run, shared by `fuseplan verify` and `fuseplan-exec run --verify`.
#pragma once
#include <optional>
#include <ostream>
#include <string>

#include "fuseplan/costmodel/compare.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/costmodel/scenario.hpp"

namespace fuseplan::cli {

struct Verification {
  Report predicted;                   // with its timeline
  std::optional<Report> simulated;    // none with simulate = false
  std::string no_sim_reason;
  // Compute drift: forward has no communication, so a measured forward away from the
  // profile's says the machine ran at another speed than when it was profiled (shared
  // machines drift by 10-30 % within minutes). The prediction again with the profile
  // scaled to the run's forward speed separates that from the communication model.
  double drift = 1;
  std::optional<Report> at_speed;
  std::vector<ComparisonRow> rows;
  // The iteration less its phases (forward, backward, exposed communication, optimizer,
  // data wait), measured and predicted. A measured iteration is the slowest rank's mean
  // step and its phases each step's critical rank's: where the two differ by more than
  // the prediction's own remainder, the run spent time no phase of the model holds (ranks
  // waiting for each other outside the critical rank's phases, work between steps).
  double measured_outside_s = 0, predicted_outside_s = 0;
  // Set where the run cast its 16-bit buckets elsewhere than the plan says (plan_as_run):
  // the plan's `cast`; the prediction and the simulation then have the run's.
  std::optional<std::optional<PackOn>> plan_cast;
};

// The plan as the run made it: where a measured report says its 16-bit buckets were cast
// elsewhere than the plan's `cast` (fuseplan-exec's exchanges and PlanDDP cast on comm
// whatever the plan says), `plan` takes the run's casts and the plan's are returned;
// otherwise (an FP32 plan, one GPU) nothing changes and nothing is returned.
std::optional<std::optional<PackOn>> plan_as_run(Plan& plan, const Report& measured);
// "the run cast ... the plan ...: predicted with the run's", for a plan_as_run that changed the plan.
std::string as_run_line(std::optional<PackOn> plan_cast, std::optional<PackOn> run_cast);

// A report's iteration less its phases (Verification::measured_outside_s).
double outside_phases_s(const Report& r);

// "comm_compute_sharing S[, allreduce_sharing A]" where the cluster shares the processor
// on `gpus` ranks (verify and simulate say what they predicted with), else "".
std::string sharing_text(const Cluster& c, int gpus);

// The scenario's model carries the measured profile when there is one. Simulates in an isolated
// process (SimGrid's engine is one per process).
Verification verify_plan(const Scenario& s, const Report& measured, bool simulate);

void print_verification(std::ostream& os, const Verification& v, const Plan& plan, const Cluster& cluster,
                        const Report& measured, const std::string& command);
nlohmann::json verification_json(const Verification& v, const std::string& plan_path, const Cluster& cluster);
// Measured ranks as they are; the prediction as process 1000, its iteration placed at
// the start of rank 0's last measured iteration.
void write_verification_trace(const std::string& path, const Verification& v, const Report& measured);

}  // namespace fuseplan::cli
