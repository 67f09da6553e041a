// fuseplan: the command-line front end. Library errors arrive as typed exceptions and
// become exit codes here only: 2 for bad input (one line naming the file or flag), 1 for
// a failed run.
#include <CLI/CLI.hpp>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "fuseplan: predict, tune and verify how gradient allreduce overlaps backward computation\n"
      "in data-parallel training. Run `fuseplan COMMAND --help` for each command's flags and units."};
  app.require_subcommand(1);
  app.get_formatter()->column_width(34);
  fuseplan::cli::add_models_commands(app);
  fuseplan::cli::add_clusters_command(app);
  fuseplan::cli::add_predict_command(app);
  fuseplan::cli::add_collective_command(app);
  fuseplan::cli::add_tune_commands(app);
  fuseplan::cli::add_whatif_command(app);
  fuseplan::cli::add_simulate_command(app);
  fuseplan::cli::add_calibrate_command(app);
  fuseplan::cli::add_verify_command(app);
  fuseplan::cli::add_export_command(app);
  fuseplan::cli::add_schedule_command(app);
  return fuseplan::cli::run_app(app, argc, argv, "fuseplan");
}
