// fuseplan-exec: the executor's front end: `train` (one process) and `run` (a plan across
// MPI ranks).
#include <CLI/CLI.hpp>

#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{
      "fuseplan-exec: train real networks from the model zoo with the 4-minute paper's techniques\n"
      "(mixed precision, LARS, loss scaling). Run `fuseplan-exec COMMAND --help` for the flags."};
  app.require_subcommand(1);
  app.get_formatter()->column_width(34);
  fuseplan::cli::add_train_command(app);
  fuseplan::cli::add_run_command(app);
  fuseplan::cli::add_sweep_command(app);
  return fuseplan::cli::run_app(app, argc, argv, "fuseplan-exec");
}
