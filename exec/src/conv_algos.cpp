#include "fuseplan/exec/conv_algos.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"

namespace fuseplan::exec {

namespace {
constexpr const char* kSchema = "fuseplan.conv-algos/1";
constexpr int kMaxAlgo = 63;  // cuDNN has fewer than 10 of each; room for later ones
}  // namespace

ConvAlgoSearch parse_conv_algo_search(const std::string& s) {
  if (s == "heuristic") return ConvAlgoSearch::Heuristic;
  if (s == "find") return ConvAlgoSearch::Find;
  throw InputError(field("backend.conv_algos") + ": unknown choice '" + s + "' (valid: heuristic, find)");
}

const char* conv_algo_search_name(ConvAlgoSearch s) { return s == ConvAlgoSearch::Find ? "find" : "heuristic"; }

const ConvAlgoChoice* ConvAlgoTable::find(const ConvAlgoKey& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

void ConvAlgoTable::put(const ConvAlgoKey& key, const ConvAlgoChoice& choice) { entries_[key] = choice; }

std::string ConvAlgoTable::to_json() const {
  nlohmann::json j;
  j["schema"] = kSchema;
  j["device"] = device;
  j["library"] = library;
  auto& list = j["convolutions"] = nlohmann::json::array();
  for (const auto& [k, c] : entries_) {
    nlohmann::json e;
    e["shape"] = {{"n", k.n}, {"c", k.c}, {"h", k.h}, {"w", k.w}, {"k", k.k}, {"r", k.r}, {"stride", k.stride},
                  {"pad", k.pad}};
    e["data_type"] = k.data_type;
    e["tensor_math"] = k.tensor_math;
    e["how"] = c.how;
    e["fwd"] = c.fwd;
    e["bwd_data"] = c.bwd_data;
    e["bwd_filter"] = c.bwd_filter;
    if (c.how == "find") e["ms"] = {{"fwd", c.fwd_ms}, {"bwd_data", c.bwd_data_ms}, {"bwd_filter", c.bwd_filter_ms}};
    list.push_back(std::move(e));
  }
  return j.dump(1) + "\n";
}

ConvAlgoTable ConvAlgoTable::load(const std::string& path) {
  const nlohmann::json j = parse_json_file(path);
  JsonObject top(j, path);
  const std::string schema = top.string("schema");
  if (schema != kSchema) top.fail("schema", "'" + schema + "' is not " + kSchema);
  ConvAlgoTable t;
  t.device = top.opt_string("device").value_or("");
  t.library = top.opt_string("library").value_or("");
  const nlohmann::json& list = top.array("convolutions");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string at = top.path() + ".convolutions[" + std::to_string(i) + "]";
    JsonObject e = element_object(list[i], path, at);
    JsonObject s = e.object("shape");
    ConvAlgoKey k;
    constexpr int64_t kBig = 1 << 24;
    k.n = int(s.integer("n", 1, kBig)), k.c = int(s.integer("c", 1, kBig)), k.h = int(s.integer("h", 1, kBig));
    k.w = int(s.integer("w", 1, kBig)), k.k = int(s.integer("k", 1, kBig)), k.r = int(s.integer("r", 1, 4096));
    k.stride = int(s.integer("stride", 1, 4096)), k.pad = int(s.integer("pad", 0, 4096));
    s.finish();
    k.data_type = e.string("data_type");
    if (k.data_type != "float" && k.data_type != "half" && k.data_type != "bfloat16")
      e.fail("data_type", "'" + k.data_type + "' is not one of float, half, bfloat16");
    k.tensor_math = e.boolean("tensor_math");
    ConvAlgoChoice c;
    c.how = e.string("how");
    if (c.how != "heuristic" && c.how != "find") e.fail("how", "'" + c.how + "' is not one of heuristic, find");
    c.fwd = int(e.integer("fwd", 0, kMaxAlgo));
    c.bwd_data = int(e.integer("bwd_data", 0, kMaxAlgo));
    c.bwd_filter = int(e.integer("bwd_filter", 0, kMaxAlgo));
    if (auto ms = e.opt_object("ms")) {
      c.fwd_ms = ms->non_negative("fwd"), c.bwd_data_ms = ms->non_negative("bwd_data");
      c.bwd_filter_ms = ms->non_negative("bwd_filter");
      ms->finish();
    }
    e.finish();
    if (t.find(k)) throw InputError(path + ": " + at + ": a second entry for the same shape and type");
    t.put(k, c);
  }
  top.finish();
  return t;
}

void ConvAlgoTable::save(const std::string& path) const {
  const OutputTarget to = output_target(path);  // /dev/null and the like: written through
  if (to.direct) return write_through(to.path, to_json());
  const std::string tmp = to.path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(field("backend.conv_algo_file") + " " + path + ": cannot write");
    out << to_json();
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw RunError(path + ": write failed");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, to.path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw RunError(path + ": rename failed: " + ec.message());
  }
}

std::string conv_algo_path_for_rank(const std::string& path, int rank, int ranks) {
  if (ranks <= 1 || path.empty()) return path;
  const std::filesystem::path p(path);
  const std::string ext = p.extension().string();
  const std::string stem = ext.empty() ? path : path.substr(0, path.size() - ext.size());
  return stem + ".rank" + std::to_string(rank) + ext;
}

}  // namespace fuseplan::exec
