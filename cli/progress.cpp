#include "progress.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "format.hpp"

namespace fuseplan::cli {

ProgressBar::ProgressBar(std::string what, bool quiet)
    : what_(std::move(what)), start_(std::chrono::steady_clock::now()), tty_(isatty(fileno(stderr))) {
  const char* env = std::getenv("FUSEPLAN_PROGRESS");
  // --quiet wins (flag over env); FUSEPLAN_PROGRESS=0 silences, anything else keeps it on.
  enabled_ = !quiet && !(env && std::string(env) == "0");
  if (!tty_) delay_ = every_ = 10.0;  // lines for a log: only runs past 10 s, every 10 s
  if (const char* d = std::getenv("FUSEPLAN_PROGRESS_DELAY")) delay_ = std::atof(d);
}

ProgressBar::~ProgressBar() {
  if (shown_ && tty_) std::cerr << "\n";
}

void ProgressBar::operator()(int64_t done, int64_t total, const std::string& extra) {
  if (!enabled_ || total <= 0) return;
  double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (t < delay_ || done == last_done_ || (shown_ && t - last_ < every_ && done < total)) return;
  if (!shown_) say_warnings();  // a long run says what it was warned of as it starts
  last_done_ = done;
  last_ = t;
  shown_ = true;
  double eta = done > 0 ? t * double(total - done) / double(done) : 0;
  std::string counts = std::to_string(done) + "/" + std::to_string(total) + " " + what_ + "  " + fixed(t, 1) +
                       " s, about " + fixed(eta, 1) + " s left" + (extra.empty() ? "" : "  " + extra);
  if (tty_) {
    const int width = 30;
    int fill = static_cast<int>(width * double(done) / double(total));
    std::cerr << "\r[" << std::string(fill, '#') << std::string(width - fill, ' ') << "] " << counts << " " << std::flush;
    if (done >= total) {  // finished: the line ends here (also when drawn by a child process)
      std::cerr << "\n" << std::flush;
      shown_ = false;
    }
  } else {
    std::cerr << "progress: " << counts << "\n" << std::flush;
  }
}

void ProgressBar::note(const std::string& line) {
  if (!enabled_) return;
  if (tty_)
    std::cerr << "\r\033[K" << line << "\n" << std::flush;
  else
    std::cerr << "progress: " << line << "\n" << std::flush;
  last_done_ = -1;
}

}  // namespace fuseplan::cli
