// Human-readable output helpers for the CLI: aligned tables and unit formatting.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"  // grouped, count_of

namespace fuseplan::cli {

class Table {
 public:
  // A header starting with '<' is left-aligned (the '<' is dropped); others right-aligned.
  explicit Table(std::vector<std::string> headers);
  void row(std::vector<std::string> cells);
  void print(std::ostream& os, const std::string& indent = "") const;

 private:
  std::vector<std::string> headers_;
  std::vector<bool> left_;
  std::vector<std::vector<std::string>> rows_;
};

// --csv: tables print as CSV (several separated by a blank line) and the prose around
// them goes to out(), a sink then, so that stdout holds only CSV. Without it out() is
// std::cout.
void set_csv_output(bool on);
bool csv_output();
std::ostream& out();
// One line on stderr in a single write: under mpirun, which forwards a rank's stdout and
// stderr separately, a line written piece by piece can be cut by the other stream's text.
void err_line(const std::string& line);
// Warnings about a command's input (a cluster grown, memory, another cluster than the
// plan's) are held until the command has read all of its input, so that a refusal is its
// only line: said when the command ends (done, or failed while running, by run_app) or
// when a progress bar first shows; a refused command drops them.
void warn_later(const std::string& line);
void say_warnings();
void drop_warnings();

// The libraries name inputs by field ("{tuner.segments}", models/error.hpp); the command
// line spells each as its flag: the name's last part, '_' as '-' ("--segments"), since
// every flag is named after the field it sets.
std::string flag_of(std::string_view field);
// Library text (an error, a warning) with its field names spelled as flags.
std::string with_flags(std::string_view text);
inline std::string with_flags(const InputError& e) { return e.render(flag_of); }

std::string fixed(double v, int decimals);
std::string human_bytes(double bytes);   // 97.5 MiB
// A run that cannot fit in this machine's memory is refused before anything is allocated
// (InputError naming `flags`, the flags that size it) instead of ending in std::bad_alloc
// or the kernel's out-of-memory killer: "FLAGS: WHAT needs N GiB, more than this
// machine's M GiB of memory".
void check_fits_in_memory(double bytes, const std::string& what, const std::string& flags);
std::string ms(double seconds, int decimals = 2);
std::string human_duration(double seconds);  // 6.6 min, 1.2 h
std::string percent(double fraction, int decimals = 1);
std::string signed_percent(double fraction);  // +12.3 %, -4.0 %

}  // namespace fuseplan::cli
