// Progress on stderr for long runs: nothing for the first seconds, then a bar redrawn in
// place on a terminal; silent when stderr is not a terminal unless FUSEPLAN_PROGRESS=1,
// which prints a line every 5 s instead. --quiet turns it off whatever the environment;
// FUSEPLAN_PROGRESS=0 too; FUSEPLAN_PROGRESS_DELAY=S sets when it first appears (default 2 s).
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
  double last_ = 0, delay_ = 2.0;
  int64_t last_done_ = -1;
};

}  // namespace fuseplan::cli
