// Progress on stderr for long runs: on a terminal, a bar redrawn in place after 2 s; off a
// terminal (a log file, a batch job), a `progress:` line every 10 s once the run passes
// 10 s, so a long run is never silent. --quiet turns it off whatever the environment,
// FUSEPLAN_PROGRESS=0 too (=1 forces it on); FUSEPLAN_PROGRESS_DELAY=S sets when it first
// appears.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace fuseplan::cli {

class ProgressBar {
 public:
  // `what` names the steps ("rank-rounds", "configurations").
  ProgressBar(std::string what, bool quiet);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  // `extra` is shown after the counts (the trainer's loss, samples/s, loss scale).
  void operator()(int64_t done, int64_t total, const std::string& extra = "");
  // A line that stays (an epoch's result) when progress is shown; the bar redraws below it.
  void note(const std::string& line);

 private:
  std::string what_;
  std::chrono::steady_clock::time_point start_;
  bool enabled_ = false, tty_ = false, shown_ = false;
  double last_ = 0, delay_ = 2.0, every_ = 0.1;
  int64_t last_done_ = -1;
};

}  // namespace fuseplan::cli
