#include "fuseplan/sim/simulator.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "fuseplan/models/error.hpp"

namespace fuseplan::sim {

std::string run_isolated(const std::function<std::string()>& fn) {
  std::fflush(nullptr);  // the child must not repeat what the parent has buffered
  int fd[2];
  if (pipe(fd) != 0) throw RunError("simulator: pipe failed: " + std::string(std::strerror(errno)));
  // The child's stderr is kept apart: passed on when it ends normally, but a SimGrid
  // abort's backtrace never reaches the user (one line below says what happened).
  std::unique_ptr<FILE, int (*)(FILE*)> err(std::tmpfile(), &std::fclose);
  pid_t pid = fork();
  if (pid < 0) throw RunError("simulator: fork failed: " + std::string(std::strerror(errno)));
  if (pid == 0) {
    close(fd[0]);
    if (err) dup2(fileno(err.get()), 2);
    if (std::getenv("FUSEPLAN_FAULT_SIM_ABORT")) {  // the fault test: SimGrid aborting, with a backtrace
      std::fputs("[simgrid] a fatal error (fault test)\nBacktrace:\n  #0 frame\n", stderr);
      std::abort();
    }
    std::string out;
    try {
      out = fn();
      out.insert(out.begin(), '0');
    } catch (const InputError& e) {
      out = std::string("2") + e.text();  // field names kept for the caller to spell
    } catch (const std::exception& e) {
      out = std::string("1") + e.what();
    }
    for (size_t done = 0; done < out.size();) {
      ssize_t w = write(fd[1], out.data() + done, out.size() - done);
      if (w <= 0) break;
      done += static_cast<size_t>(w);
    }
    close(fd[1]);
    _exit(0);
  }
  close(fd[1]);
  std::string out;
  char buf[65536];
  for (ssize_t r; (r = read(fd[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<size_t>(r));
  close(fd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  std::string said;
  if (err) {
    std::rewind(err.get());
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, err.get())) > 0;) said.append(buf, n);
  }
  if (!WIFEXITED(status) || out.empty()) {
    // Its first line of its own (SimGrid's message before the backtrace), if any.
    std::string first = said.substr(0, said.find('\n'));
    if (first.size() > 160) first = first.substr(0, 157) + "...";
    throw RunError("simulator: the SimGrid process died" +
                   (WIFSIGNALED(status) ? " (signal " + std::to_string(WTERMSIG(status)) + ", " +
                                              std::string(strsignal(WTERMSIG(status))) + ")"
                                        : std::string()) +
                   (first.empty() ? "" : ", saying '" + first + "'") +
                   "; the same command reproduces it: please report it with the command and its files");
  }
  std::fwrite(said.data(), 1, said.size(), stderr);
  if (out[0] == '2') throw InputError(out.substr(1));
  if (out[0] == '1') throw RunError("simulator: " + out.substr(1));
  return out.substr(1);
}

}  // namespace fuseplan::sim
