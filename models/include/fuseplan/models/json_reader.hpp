// Strict JSON object reader: every key read is checked, unknown keys are errors naming
// the file and the JSON path (STYLE: units in key names, no silent defaults).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace fuseplan {

nlohmann::json parse_json_file(const std::string& path);  // InputError on I/O or syntax
nlohmann::json parse_json_text(const std::string& text, const std::string& origin);

class JsonObject {
 public:
  // `origin` names the file (or flag) the object came from; `path` is its JSON path.
  JsonObject(const nlohmann::json& j, std::string origin, std::string path = "$");

  bool has(const std::string& key) const;
  double number(const std::string& key);
  double positive(const std::string& key);       // > 0
  double non_negative(const std::string& key);   // >= 0
  std::optional<double> opt_number(const std::string& key);
  // A physical value within [lo, hi] (`unit` names the unit in the message): a tiny or
  // huge number that passes "> 0" would make times infinite or the simulator abort.
  double in_range(const std::string& key, double lo, double hi, const std::string& unit);
  std::optional<double> opt_in_range(const std::string& key, double lo, double hi, const std::string& unit);
  int64_t integer(const std::string& key, int64_t min, int64_t max);
  std::optional<int64_t> opt_integer(const std::string& key, int64_t min, int64_t max);
  std::string string(const std::string& key);
  std::optional<std::string> opt_string(const std::string& key);
  bool boolean(const std::string& key);
  std::optional<bool> opt_boolean(const std::string& key);
  JsonObject object(const std::string& key);
  std::optional<JsonObject> opt_object(const std::string& key);
  const nlohmann::json& array(const std::string& key);
  std::optional<std::reference_wrapper<const nlohmann::json>> opt_array(const std::string& key);
  std::vector<int64_t> int_list(const std::string& key, int64_t min);
  // Accepts any value under `key` (for free-form maps); the caller validates it.
  const nlohmann::json& raw(const std::string& key);
  std::vector<std::string> keys() const;

  // Throws if the object holds keys nobody read.
  void finish() const;

  [[noreturn]] void fail(const std::string& key, const std::string& what) const;
  std::string where(const std::string& key) const;
  const std::string& origin() const { return origin_; }
  const std::string& path() const { return path_; }

 private:
  const nlohmann::json& get(const std::string& key, nlohmann::json::value_t type, const char* type_name);
  const nlohmann::json& j_;
  std::string origin_;
  std::string path_;
  std::set<std::string> read_;
  std::set<std::string> asked_;
};

// Check a bare element of an array is an object and wrap it.
JsonObject element_object(const nlohmann::json& j, const std::string& origin, const std::string& path);

}  // namespace fuseplan
