// nccl-tests all_reduce_perf logs (nccl_tests.hpp), and the sweep calibration reads from them.
#include "fuseplan/costmodel/nccl_tests.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "fuseplan/costmodel/calibrate.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {

int elem_bytes_of(const std::string& type) {
  if (type == "float" || type == "float32" || type == "int32" || type == "uint32") return 4;
  if (type == "half" || type == "float16" || type == "bfloat16" || type == "bf16") return 2;
  if (type == "double" || type == "float64" || type == "int64" || type == "uint64") return 8;
  if (type == "int8" || type == "uint8" || type == "fp8_e4m3" || type == "fp8_e5m2" || type == "f8e4m3" ||
      type == "f8e5m2")
    return 1;
  return 0;
}

bool is_number(const std::string& s) {
  if (s.empty()) return false;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size() && std::isfinite(v);
}

// The value of a token is_number accepted (strtod: an underflow is a tiny number, not an
// exception as std::stod would throw).
double value_of(const std::string& s) { return std::strtod(s.c_str(), nullptr); }

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return s;
}

void read_json(const std::string& text, NcclTestsLog& log, const std::function<InputError(const std::string&)>& bad) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    throw bad(std::string("not JSON (") + e.what() + ")");
  }
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& v) {
    if (v.is_object()) {
      if (v.contains("size") && v.contains("out_of_place") && v["out_of_place"].is_object()) {
        log.elem_bytes = elem_bytes_of(v.value("type", "float"));
        if (log.elem_bytes == 0) throw bad("unknown data type '" + v.value("type", "") + "'");
        const auto& o = v["out_of_place"];
        const double t = o.contains("time") ? o["time"].get<double>() : o.at("cpu_time").get<double>();
        log.points.push_back({v["size"].get<double>(), t * 1e-6});
        return;
      }
      if (v.contains("devices") && v["devices"].is_array()) log.ranks = int(v["devices"].size());
      for (const auto& [k, x] : v.items()) walk(x);
    } else if (v.is_array()) {
      for (const auto& x : v) walk(x);
    }
  };
  try {
    walk(j);
  } catch (const nlohmann::json::exception& e) {
    throw bad(std::string("malformed (") + e.what() + ")");
  }
}

}  // namespace

NcclTestsLog read_nccl_tests(const std::string& path, const std::string& flag) {
  const std::string text = read_input_file(path, flag + " " + path);
  NcclTestsLog log;
  log.path = path;
  auto bad = [&](const std::string& why) { return InputError(flag + " " + path + ": " + why); };
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    read_json(text, log, bad);
  } else {
    static const std::regex mpi_prefix(R"(^\[\d+,\d+\]<std(out|err)>:)");
    static const std::regex rank_line(R"(^#\s+Rank\s+\d+\s+(Group\s+\d+\s+)?Pid\s+\d+\s+on\s+(\S+)\s+device)");
    static const std::regex header_line(R"(^#\s*([a-z][a-z_-]*):\s*(.*?)\s*$)");
    static const std::regex version_line(R"(NCCL version\s+([0-9]+\.[0-9]+\.[0-9]+))");
    static const std::regex library_code(R"(nccl-library=([0-9]{5}))");
    static const std::regex choice_line(R"((\d+) Bytes -> Algo (\w+) proto (\w+))");
    std::map<std::string, int> per_host;
    std::istringstream lines(text);
    std::string line;
    bool table = false;
    for (int number = 1; std::getline(lines, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      line = std::regex_replace(line, mpi_prefix, "");
      std::smatch m;
      if (std::regex_search(line, m, rank_line)) {
        const std::string host = m[2];
        if (per_host[host]++ == 0) log.hosts.push_back(host);
        ++log.ranks;
        continue;
      }
      if (std::regex_search(line, m, version_line) && log.nccl_version.empty()) log.nccl_version = m[1];
      if (std::regex_search(line, m, library_code) && log.nccl_version.empty()) {
        const int code = std::stoi(m[1]);
        log.nccl_version = std::to_string(code / 10000) + "." + std::to_string(code / 100 % 100) + "." +
                           std::to_string(code % 100);
      }
      if (std::regex_search(line, m, choice_line)) {
        log.choices.push_back({value_of(m[1]), lower(m[2]), lower(m[3])});
        continue;
      }
      const size_t c = line.find_first_not_of(" \t");
      if (c == std::string::npos) continue;
      if (line[c] == '#') {
        if (!table && std::regex_match(line, m, header_line)) log.header[m[1]] = m[2];
        if (line.find("(B)") != std::string::npos || line.find("out-of-place") != std::string::npos) table = true;
        continue;
      }
      std::istringstream tok(line);
      std::vector<std::string> t;
      for (std::string w; tok >> w;) t.push_back(w);
      if (t.empty() || t[0].find_first_not_of("0123456789") != std::string::npos) continue;  // not a row
      // size count type redop [root] time algbw busbw #wrong (out of place) ...; releases
      // before 2.13 have no root column.
      const std::string where = "line " + std::to_string(number) + ": ";
      if (t.size() < 8) throw bad(where + "a result row needs at least 8 columns (size count type redop [root] time "
                                          "algbw busbw), got " + std::to_string(t.size()));
      const int eb = elem_bytes_of(t[2]);
      if (eb == 0) throw bad(where + "unknown data type '" + t[2] + "'");
      const size_t at = t.size() >= 13 ? 5 : 4;
      if (!is_number(t[0]) || !is_number(t[1]) || at + 2 >= t.size() || !is_number(t[at]) || !is_number(t[at + 1]) ||
          !is_number(t[at + 2]))
        throw bad(where + "cannot read the row '" + line + "' (size, count, time, algbw and busbw must be numbers)");
      const double bytes = value_of(t[0]), seconds = value_of(t[at]) * 1e-6;
      if (!(bytes >= 1 && bytes <= 1e15)) throw bad(where + "size must be in [1, 1e15] bytes (got " + t[0] + ")");
      if (!(seconds >= 1e-9 && seconds <= 1e4)) throw bad(where + "time must be in [0.001, 1e10] us (got " + t[at] + ")");
      if (std::abs(value_of(t[1]) * eb - bytes) > 0.5)
        throw bad(where + "count " + t[1] + " x " + std::to_string(eb) + " bytes is not the size " + t[0]);
      log.elem_bytes = eb;
      log.points.push_back({bytes, seconds});
    }
    if (!per_host.empty()) {
      const int n0 = per_host.begin()->second;
      bool uniform = true;
      for (const auto& [h, n] : per_host) uniform = uniform && n == n0;
      log.per_node = uniform ? n0 : 0;
    }
    // The shipped logs' header says the layout where the quoted output lost the Rank lines.
    static const std::regex layout(R"((\d{1,7})\s+nodes?\s+x\s+(\d{1,4})\s+ranks)");
    std::smatch lm;
    if (auto it = log.header.find("layout"); it != log.header.end() && std::regex_search(it->second, lm, layout)) {
      const int nodes = std::stoi(lm[1]), per = std::stoi(lm[2]);
      if (log.ranks == 0) log.ranks = nodes * per;
      if (log.per_node == 0) log.per_node = per;
    }
  }
  if (log.points.empty()) throw bad("no all_reduce_perf result rows");
  return log;
}

Sweep load_nccl_tests(const std::string& path, const std::string& as_algorithm, int ranks, int per_node) {
  find_algorithm(as_algorithm, field("nccl_tests.as"));
  const NcclTestsLog log = read_nccl_tests(path);
  Sweep s{as_algorithm, ranks, per_node, log.elem_bytes, {}};
  for (const auto& [bytes, seconds] : log.points) s.points.push_back({bytes, seconds});
  if (s.ranks <= 0) s.ranks = log.ranks;
  if (s.ranks < 2) throw InputError(field("nccl_tests") + " " + path + ": cannot tell the rank count (give " + field("nccl_tests.ranks") + ")");
  if (s.ranks > kMaxGpus)
    throw InputError(field("nccl_tests.ranks") + ": " + std::to_string(s.ranks) + " ranks is past the largest job, " +
                     std::to_string(kMaxGpus));
  // Ranks per node: the flag, else the host names in the "#  Rank" lines, else one node.
  if (s.per_node <= 0) s.per_node = log.per_node > 0 && s.ranks == log.ranks ? log.per_node : s.ranks;
  if (s.per_node > s.ranks)
    throw InputError(field("nccl_tests.per_node") + ": " + std::to_string(s.per_node) + " is more than the " + std::to_string(s.ranks) + " ranks");
  return s;
}

}  // namespace fuseplan
