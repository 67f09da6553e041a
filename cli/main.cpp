// fuseplan: the command-line front end. Library errors arrive as typed exceptions and
// become exit codes here only: 2 for bad input (one line naming the file or flag), 1 for
// a failed run.
#include <CLI/CLI.hpp>
#include <iostream>

#include "commands.hpp"
#include "fuseplan/models/error.hpp"

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
  try {
    if (argc > 1 && argv[1][0] != '-') {
      std::string first = argv[1], names;
      bool known = false;
      for (const auto* sub : app.get_subcommands({})) {
        names += (names.empty() ? "" : ", ") + sub->get_name();
        known = known || sub->get_name() == first;
      }
      if (!known) throw fuseplan::InputError("unknown command '" + first + "' (valid: " + names + ")");
    }
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help and friends: CLI11 prints, exit 0
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "fuseplan: " << e.what() << " (see fuseplan --help)\n";
    return 2;
  } catch (const fuseplan::InputError& e) {
    std::cerr << "fuseplan: " << e.what() << "\n";
    return 2;
  } catch (const fuseplan::RunError& e) {
    std::cerr << "fuseplan: error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "fuseplan: internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
