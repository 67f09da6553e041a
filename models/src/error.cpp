#include "fuseplan/models/error.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fuseplan {

std::string field(std::string_view name) {
  std::string marked(1, '\x1f');
  marked.append(name);
  marked.push_back('\x1f');
  return marked;
}

std::string render_fields(std::string_view text, const FieldSpelling& spell) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const size_t end = text[i] == '\x1f' ? text.find('\x1f', i + 1) : std::string_view::npos;
    if (end == std::string_view::npos) {
      out += text[i];
      continue;
    }
    out += spell(text.substr(i + 1, end - i - 1));
    i = end;
  }
  return out;
}

std::string bare_fields(std::string_view text) {
  return render_fields(text, [](std::string_view f) { return std::string(f); });
}

std::string read_input_file(const std::string& path, const std::string& label, uint64_t max_bytes) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(label + ": is a directory (give a file)");
  errno = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(label + ": cannot open (" + std::strerror(errno ? errno : ENOENT) + ")");
  std::ostringstream text;
  char buf[1 << 16];
  uint64_t total = 0;
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    total += uint64_t(in.gcount());
    if (total > max_bytes)
      throw InputError(label + ": more than " + std::to_string(max_bytes) + " bytes (not a file this reads; a device "
                       "or an endless pipe?)");
    text.write(buf, in.gcount());
  }
  if (in.bad()) throw InputError(label + ": cannot read (" + std::strerror(errno ? errno : EIO) + ")");
  return text.str();
}

}  // namespace fuseplan
