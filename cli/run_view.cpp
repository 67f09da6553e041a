// The measurement's tables and --verify's child process for `fuseplan-exec run`.
#include "run_view.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <iostream>

#include "format.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

void print_measurement(std::ostream& os, const exec::Measurement& m, int warmup, int ranks) {
  const Report& rep = m.report;
  Table it({"iteration", "ms (slowest rank)"});
  const size_t S = m.step_s.size();
  for (size_t k = 0; k < S; ++k) {
    if (S > 40 && k % (S / 20) != 0 && k + 1 != S) continue;
    it.row({std::to_string(int64_t(warmup) + int64_t(k)), fixed(m.step_s[k] * 1e3, 2)});
  }
  it.print(os, "  ");
  os << "\n  measured over " << count_of(int64_t(S), "iteration") << " after " << warmup
     << " warm-up (means over steps of each step's critical rank: the slowest in forward + backward)\n";
  Table ph({"<phase", "ms"});
  ph.row({"iteration (slowest rank)", fixed(rep.iteration_s * 1e3, 2)});
  ph.row({"data wait", fixed(rep.data_wait_s * 1e3, 2)});
  ph.row({"forward", fixed(rep.forward_s * 1e3, 2)});
  ph.row({"backward", fixed(rep.backward_s * 1e3, 2)});
  ph.row({"exposed communication", fixed(rep.exposed_comm_s * 1e3, 2)});
  ph.row({"optimizer", fixed(rep.optimizer_s * 1e3, 2)});
  ph.print(os, "  ");
  if (ranks > 1) {
    os << "  rank imbalance: forward + backward differ by " << fixed(m.spread_s * 1e3, 2)
       << " ms per step between the fastest and the slowest rank; critical rank per step:";
    for (int r = 0; r < ranks; ++r)
      if (m.critical_steps[size_t(r)] > 0) os << " " << r << " (" << m.critical_steps[size_t(r)] << ")";
    os << "\n";
  }
  os << "\n";
  Table bt({"bucket", "<tensors", "bytes", "<algorithm", "stream", "ready ms", "start ms", "end ms", "busy ms"});
  for (const auto& b : rep.buckets)
    bt.row({std::to_string(b.index), std::to_string(b.begin) + ".." + std::to_string(b.end - 1),
            human_bytes(double(b.bytes)), b.algorithm + (b.auto_chosen ? " (auto)" : ""), std::to_string(b.stream),
            fixed(b.ready_s * 1e3, 2), fixed(b.start_s * 1e3, 2), fixed(b.end_s * 1e3, 2),
            fixed((b.end_s - b.start_s) * 1e3, 2)});
  bt.print(os, "  ");
  os << "\n  throughput " << fixed(rep.throughput_samples_s, 1) << " samples/s\n";
}

std::string temporary_file(const std::string& what) {
  std::string path = (std::filesystem::temp_directory_path() / ("fuseplan-run-" + what + "-XXXXXX")).string();
  const int fd = mkstemp(path.data());
  if (fd < 0) throw RunError("--verify: cannot create a temporary file in " + std::filesystem::temp_directory_path().string());
  close(fd);
  return path;
}

int run_verify(const std::string& plan_path, const std::string& cluster, const ForVerify& v) {
  std::error_code ec;
  const std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const std::string fuseplan = (self.parent_path() / "fuseplan").string();
  if (ec || access(fuseplan.c_str(), X_OK) != 0)
    throw RunError("--verify: no fuseplan binary beside fuseplan-exec (" + fuseplan + ")");
  std::vector<std::string> args{fuseplan, "verify", "--plan", plan_path, "--measured", v.report_path,
                                "--profile", v.profile_path};
  if (!cluster.empty()) args.insert(args.end(), {"--cluster", cluster});
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::cout.flush();
  const pid_t pid = fork();
  if (pid == 0) {
    execv(argv[0], argv.data());
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0) throw RunError("--verify: cannot run " + fuseplan);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

}  // namespace fuseplan::cli
