// The one place where library errors become exit codes: 2 for bad input (one line naming
// the file or flag), 1 for a failed run, 0 otherwise. Both binaries call it.
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string_view>
#include <vector>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan::cli {

namespace {

// Old spellings, one name per concept now (the table in README.md): still accepted, with
// a warning naming the new one. whatif's --format X becomes --X (--format table, the
// default, is dropped).
struct Renamed {
  std::string_view program, command, old_name, new_name;
};
constexpr Renamed kRenamed[] = {
    {"fuseplan-exec", "train", "--batch", "--batch-per-gpu"},
    {"fuseplan-exec", "run", "--batch", "--batch-per-gpu"},
    {"fuseplan-exec", "sweep", "--factor", "--step-factor"},
    {"fuseplan-exec", "sweep", "--algorithms", "--algorithm"},
    {"fuseplan", "predict", "--save-plan", "--out"},
    {"fuseplan", "whatif", "--format", "--json | --csv"},
};

// argv with the old spellings of `command`'s flags replaced, a warning per old name.
std::vector<std::string> rename_flags(int argc, char** argv, const std::string& prog) {
  std::vector<std::string> args(argv, argv + argc);
  if (argc < 2) return args;
  const std::string command = argv[1];
  std::set<std::string_view> warned;
  for (size_t i = 2; i < args.size(); ++i) {
    if (args[i] == "--") break;
    for (const Renamed& r : kRenamed) {
      if (r.program != prog || r.command != command) continue;
      const std::string& a = args[i];
      const bool eq = a.size() > r.old_name.size() && a.compare(0, r.old_name.size(), r.old_name) == 0 &&
                      a[r.old_name.size()] == '=';
      if (a != r.old_name && !eq) continue;
      const std::string value = eq ? a.substr(r.old_name.size() + 1) : i + 1 < args.size() ? args[i + 1] : "";
      if (r.old_name == "--format" && value != "table" && value != "csv" && value != "json")
        throw InputError("--format: unknown value '" + value + "' (valid: table, csv, json; now --csv or --json)");
      if (warned.insert(r.old_name).second)
        warn_later(prog + ": warning: " + std::string(r.old_name) + " is now " + std::string(r.new_name) +
                   " (the old spelling still works for now)");
      if (r.old_name == "--format") {  // --format X -> --X; table is the default
        const size_t n = eq ? 1 : 2;
        args.erase(args.begin() + std::ptrdiff_t(i), args.begin() + std::ptrdiff_t(i + n));
        if (value != "table") args.insert(args.begin() + std::ptrdiff_t(i), "--" + value);
        else --i;
      } else {
        args[i] = std::string(r.new_name) + (eq ? a.substr(r.old_name.size()) : "");
      }
      break;
    }
  }
  return args;
}

}  // namespace

int run_app(CLI::App& app, int argc, char** argv, const std::string& prog) {
  std::string releases;
  for (const auto& r : nccl_releases()) releases += (releases.empty() ? "" : ", ") + r;
  app.set_version_flag("--version", prog + " " FUSEPLAN_VERSION " (NCCL tuning constants of releases " + releases + ")",
                       "print the version and exit");
  // A flag that is given is a value, never "the default": flags whose default is a 0 or
  // -1 sentinel refuse that sentinel when given (their help says what leaving them out
  // does).
  auto given = [](bool zero_ok) {
    return CLI::Validator(
        [zero_ok](std::string& v) -> std::string {
          char* end = nullptr;
          const double x = std::strtod(v.c_str(), &end);
          if (v.empty() || end != v.c_str() + v.size()) return "";  // not one number: its parser decides
          if (zero_ok ? x >= 0 : x > 0) return "";
          return std::string("must be ") + (zero_ok ? ">= 0" : "> 0") + " (got " + v +
                 "; leave the flag out for its default)";
        },
        zero_ok ? ">= 0" : "> 0");
  };
  for (auto* sub : app.get_subcommands({})) {
    for (const char* name : {"--group", "--torus-x", "--target-efficiency", "--max-gpus", "--ranks", "--per-node",
                             "--threads", "--resolution", "--channels", "--classes", "--inter-bw", "--intra-bw", "--max-steps",
                             "--checkpoint-every"})
      if (auto* o = sub->get_option_no_throw(name)) o->check(given(false));
    for (const char* name : {"--inter-lat", "--device", "--compute-slowdown", "--compute-variation"})
      if (auto* o = sub->get_option_no_throw(name)) o->check(given(true));
  }
  // Output files are checked when the flags are read, not when a long run ends: a name (not
  // a directory) in a directory that exists and can be written, and neither the file another
  // output flag of the command writes (one would overwrite the other) nor one it reads (the
  // input would be lost); /dev/null and the like excepted (output_target). fuseplan-exec's
  // --profile is written; fuseplan's is read. Flags are checked in the command's order, so
  // each side looks for the other.
  using Files = std::map<std::string, std::string>;  // file -> the flag naming it
  auto written = std::make_shared<Files>(), read = std::make_shared<Files>();
  auto file_check = [written, read](const std::string& flag, bool output) {
    return CLI::Validator(
        [written, read, flag, output](std::string& v) -> std::string {
          namespace fs = std::filesystem;
          std::error_code ec;
          if (!output) {  // a file read: only an existing file (a zoo or shipped name is not one)
            if (!fs::is_regular_file(v, ec)) return "";
            const std::string file = fs::canonical(v, ec).string();
            read->emplace(file, flag);
            const auto at = written->find(file);
            return at == written->end() ? "" : v + ": the file " + at->second + " writes (give another name)";
          }
          if (v.empty()) return "an empty file name";
          if (fs::is_directory(v, ec)) return v + ": is a directory (give a file name)";
          fs::path dir = fs::path(v).parent_path();
          if (dir.empty()) dir = ".";
          if (!fs::is_directory(dir, ec)) return v + ": cannot write (directory " + dir.string() + " missing)";
          if (::access(dir.c_str(), W_OK) != 0)
            return v + ": cannot write (directory " + dir.string() + ": " + std::strerror(errno) + ")";
          if (output_target(v).direct) return "";  // /dev/null, /dev/stdout, a FIFO: written through, any number
          const std::string file = fs::weakly_canonical(fs::absolute(v, ec), ec).string();
          if (const auto at = read->find(file); at != read->end())
            return v + ": the file " + at->second + " reads (give another name)";
          const auto [at, fresh] = written->emplace(file, flag);
          if (!fresh && at->second != flag) return v + ": the file " + at->second + " writes (give another name)";
          return "";
        },
        "");
  };
  std::vector<const char*> outputs = {"--out", "--trace", "--report", "--metrics", "--checkpoint"};
  std::vector<const char*> inputs = {"--model", "--plan", "--measured", "--sweep", "--nccl-tests"};
  (prog == "fuseplan-exec" ? outputs : inputs).push_back("--profile");
  if (prog == "fuseplan-exec") outputs.push_back("--conv-algo-file");
  for (auto* sub : app.get_subcommands({})) {
    for (const char* name : outputs)
      if (auto* o = sub->get_option_no_throw(name)) o->check(file_check(name, true));
    for (const char* name : inputs)  // predict --plan P --out P: P with its prediction, in place
      if (auto* o = sub->get_option_no_throw(name); o && !(sub->get_name() == "predict" && o->check_name("--plan")))
        o->check(file_check(name, false));
  }
  // Sizes, counts and ranks are bounded; the help says how.
  const std::vector<std::pair<const char*, int>> ranges = {
      {"--gpus", kMaxGpus},          {"--ranks", kMaxGpus},        {"--resolution", kMaxResolution},
      {"--channels", kMaxChannels},  {"--classes", kMaxClasses},   {"--seq-len", kMaxSeqLen}};
  for (auto* sub : app.get_subcommands({}))
    for (const auto& [name, hi] : ranges)
      if (auto* o = sub->get_option_no_throw(name))
        o->description(o->get_description() + " (1 to " + std::to_string(hi) + ")");
  // --csv on every command that prints tables (whatif has its own, for its rows).
  for (auto* sub : app.get_subcommands({})) {
    if (sub->get_option_no_throw("--csv")) continue;
    auto* csv = sub->add_flag_function("--csv", [](int64_t n) { set_csv_output(n > 0); },
                                       "print the tables as CSV (several separated by a blank line), nothing else on "
                                       "stdout");
    if (auto* json = sub->get_option_no_throw("--json")) csv->excludes(json);
  }
  struct DiscardUncommitted {  // a failed command's outputs (commit_outputs empties the list)
    ~DiscardUncommitted() { discard_outputs(); }
  } discard;
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
    std::vector<std::string> args = rename_flags(argc, argv, prog);
    std::vector<char*> ptrs;
    for (auto& a : args) ptrs.push_back(a.data());
    stage_outputs(true);  // outputs land only once the command has succeeded
    app.parse(int(ptrs.size()), ptrs.data());
    say_warnings();
    commit_outputs();
  } catch (const CLI::Success& e) {  // --help and friends: CLI11 prints, exit 0
    say_warnings();                    // a renamed flag's, first
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    err_line(prog + ": " + e.what() + " (see " + prog + " --help)");
    return 2;
  } catch (const InputError& e) {
    drop_warnings();  // the refusal is the only line
    // An empty message: another rank of the same job has said it.
    if (*e.what()) err_line(prog + ": " + with_flags(e));
    return 2;
  } catch (const RunError& e) {
    say_warnings();
    err_line(prog + ": error: " + e.what());
    return 1;
  } catch (const std::exception& e) {
    say_warnings();
    err_line(prog + ": internal error: " + e.what());
    return 1;
  }
  return 0;
}

}  // namespace fuseplan::cli
