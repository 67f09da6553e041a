// Typed errors shared by every fuseplan library; only main() turns them into exit codes.
//
// Library code names what is wrong by its field, never by a program's flag: a JSON path
// into a file ("cluster.json: $.inter_node.nic_bw_Gbps") or an input of a library call,
// marked with field() (field("tuner.segments") + ": must be >= 1"; the names are listed
// in docs/design.md, "The run contract"). what() prints the names bare ("tuner.segments:
// must be >= 1"); a program spells them its own way with render() (the command line:
// `--segments`, cli/format.hpp).
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <string_view>

namespace fuseplan {

// How a program spells a field name ("tuner.segments" -> "--segments").
using FieldSpelling = std::function<std::string(std::string_view field)>;

// A field's name, marked in a message for render_fields (between two ASCII unit
// separators, which no file name or value in a message holds).
std::string field(std::string_view name);

// `text` with each field() name replaced by spell(name).
std::string render_fields(std::string_view text, const FieldSpelling& spell);

// The names bare: field("tuner.segments") + ": ..." -> "tuner.segments: ...".
std::string bare_fields(std::string_view text);

// Bad input from the user (a file, a field, a value): main prints it on one line, exit 2.
class InputError : public std::runtime_error {
 public:
  explicit InputError(const std::string& text) : std::runtime_error(bare_fields(text)), text_(text) {}
  // The message with its field names spelled by `spell`.
  std::string render(const FieldSpelling& spell) const { return render_fields(text_, spell); }
  // The message as written, names marked (to pass it on: another process, a warning).
  const std::string& text() const { return text_; }

 private:
  std::string text_;
};

// The whole content of a file the user named, or an InputError that says why it cannot
// be read: "LABEL: is a directory (give a file)", "LABEL: cannot open (No such file or
// directory)", "LABEL: cannot read (...)". `label` names the file the way the caller's
// messages do (the path, or the flag and the path). More than `max_bytes` is refused
// ("LABEL: more than ... bytes"): /dev/zero or an endless FIFO cannot hold the command.
inline constexpr uint64_t kMaxInputBytes = uint64_t(1) << 28;  // JSON and text inputs: 256 MiB
std::string read_input_file(const std::string& path, const std::string& label, uint64_t max_bytes = kMaxInputBytes);

// A run that failed for another reason (I/O, an internal limit): exit 1.
class RunError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace fuseplan
