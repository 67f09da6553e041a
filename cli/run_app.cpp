// The one place where library errors become exit codes: 2 for bad input (one line naming
// the file or flag), 1 for a failed run, 0 otherwise. Both binaries call it.
#include <iostream>

#include "commands.hpp"
#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

int run_app(CLI::App& app, int argc, char** argv, const std::string& prog) {
  std::string releases;
  for (const auto& r : nccl_releases()) releases += (releases.empty() ? "" : ", ") + r;
  app.set_version_flag("--version", prog + " " FUSEPLAN_VERSION " (NCCL tuning constants of releases " + releases + ")",
                       "print the version and exit");
  try {
    if (argc > 1 && argv[1][0] != '-') {
      std::string first = argv[1], names;
      bool known = false;
      for (const auto* sub : app.get_subcommands({})) {
        names += (names.empty() ? "" : ", ") + sub->get_name();
        known = known || sub->get_name() == first;
      }
      if (!known) throw InputError("unknown command '" + first + "' (valid: " + names + ")");
    }
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help and friends: CLI11 prints, exit 0
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << prog + ": " << e.what() << " (see " << prog << " --help)\n";
    return 2;
  } catch (const InputError& e) {
    // An empty message: another rank of the same job has said it.
    if (*e.what()) std::cerr << prog + ": " << e.what() << "\n";
    return 2;
  } catch (const RunError& e) {
    std::cerr << prog + ": error: " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << prog + ": internal error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace fuseplan::cli
