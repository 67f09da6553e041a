// Table and unit formatting.
#include "format.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <unistd.h>

namespace fuseplan::cli {

Table::Table(std::vector<std::string> headers) {
  for (auto& h : headers) {
    bool left = !h.empty() && h[0] == '<';
    left_.push_back(left);
    headers_.push_back(left ? h.substr(1) : h);
  }
}

void Table::row(std::vector<std::string> cells) {
  cells.resize(headers_.size());
  rows_.push_back(std::move(cells));
}

namespace {
bool g_csv = false;
bool g_csv_first = true;
struct NullBuffer : std::streambuf {
  int overflow(int c) override { return c; }
};

std::string csv_cell(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}
}  // namespace

void set_csv_output(bool on) { g_csv = on; }
bool csv_output() { return g_csv; }

void err_line(const std::string& line) {
  std::cout.flush();  // what came before it on stdout stays before it
  const std::string text = line + "\n";
  std::cerr.write(text.data(), std::streamsize(text.size()));
  std::cerr.flush();
}

namespace {
std::vector<std::string>& pending_warnings() {
  static std::vector<std::string> lines;
  return lines;
}
}  // namespace

void warn_later(const std::string& line) { pending_warnings().push_back(line); }

void say_warnings() {
  for (const auto& line : pending_warnings()) err_line(line);
  pending_warnings().clear();
}

void drop_warnings() { pending_warnings().clear(); }

std::ostream& out() {
  static NullBuffer null_buffer;
  static std::ostream null_stream(&null_buffer);
  return g_csv ? null_stream : std::cout;
}

void Table::print(std::ostream& os, const std::string& indent) const {
  if (g_csv) {  // the prose stream is a sink under --csv: tables go to stdout
    std::ostream& to = &os == &out() ? std::cout : os;
    if (!g_csv_first) to << '\n';
    g_csv_first = false;
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t c = 0; c < cells.size(); ++c) to << (c ? "," : "") << csv_cell(cells[c]);
      to << '\n';
    };
    line(headers_);
    for (const auto& r : rows_) line(r);
    return;
  }
  std::vector<size_t> w(headers_.size());
  for (size_t c = 0; c < headers_.size(); ++c) {
    w[c] = headers_[c].size();
    for (const auto& r : rows_) w[c] = std::max(w[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    std::string out = indent;
    for (size_t c = 0; c < cells.size(); ++c) {
      std::string pad(w[c] - cells[c].size(), ' ');
      out += left_[c] ? cells[c] + pad : pad + cells[c];
      if (c + 1 < cells.size()) out += "  ";
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    os << out << '\n';
  };
  line(headers_);
  for (const auto& r : rows_) line(r);
}

std::string flag_of(std::string_view field) {
  std::string flag = "--" + std::string(field.substr(field.rfind('.') + 1));
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

std::string with_flags(std::string_view text) { return render_fields(text, flag_of); }

void check_fits_in_memory(double bytes, const std::string& what, const std::string& flags) {
  const double have = double(::sysconf(_SC_PHYS_PAGES)) * double(::sysconf(_SC_PAGE_SIZE));
  if (have > 0 && bytes > have)
    throw InputError(flags + ": " + what + " needs " + fixed(bytes / double(1 << 30), 1) + " GiB, more than this machine's " +
                     fixed(have / double(1 << 30), 1) + " GiB of memory");
}

std::string fixed(double v, int decimals) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  // A value that rounds to zero prints as 0, never "-0.0".
  if (buf[0] == '-' && std::strspn(buf + 1, "0.") == std::strlen(buf + 1)) return buf + 1;
  return buf;
}

std::string signed_percent(double fraction) {
  std::string out = fraction >= 0 ? "+" : "";
  return out.append(fixed(100 * fraction, 1)).append(" %");
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return fixed(b, u == 0 ? 0 : 1) + " " + units[u];
}

std::string ms(double s, int decimals) { return fixed(s * 1e3, decimals); }

std::string human_duration(double s) {
  if (s < 1) return fixed(s * 1e3, 1) + " ms";
  if (s < 120) return fixed(s, 1) + " s";
  if (s < 2 * 3600) return fixed(s / 60, 1) + " min";
  if (s < 2 * 86400) return fixed(s / 3600, 1) + " h";
  return fixed(s / 86400, 1) + " days";
}

std::string percent(double f, int decimals) { return fixed(100 * f, decimals) + " %"; }

}  // namespace fuseplan::cli
