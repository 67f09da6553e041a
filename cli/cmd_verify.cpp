// `fuseplan verify`: predicted vs simulated vs measured for one plan, side by side: the
// iteration and its phases and every bucket's start and end, with the relative error of
// the prediction and the simulation against the measurement; a combined trace.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "verify_view.hpp"

namespace fuseplan::cli {

namespace {

struct VerifyFlags {
  SetupFlags setup;
  std::string plan_path, measured_path, trace_path;
  bool no_sim = false, json = false;
};

void run_verify(VerifyFlags& f) {
  const Scenario loaded = f.setup.load_plan_file(f.plan_path);
  const Report measured = load_measured_run(f.measured_path, loaded.plan, f.plan_path);
  const Verification v = verify_plan(loaded, measured, !f.no_sim);
  if (f.json)
    out() << verification_json(v, f.plan_path, loaded.cluster).dump(2) << "\n";
  else
    print_verification(out(), v, loaded.plan, loaded.cluster, measured, "fuseplan verify");
  if (!f.trace_path.empty()) write_verification_trace(f.trace_path, v, measured);
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
