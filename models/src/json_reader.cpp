// Strict JSON object reader (see json_reader.hpp).
#include "fuseplan/models/json_reader.hpp"

#include <cmath>
#include <cstring>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

nlohmann::json parse_json_text(const std::string& text, const std::string& origin) {
  // Duplicate keys: nlohmann keeps the last; a strict reader refuses them. One set of
  // keys per open object, checked as each key is parsed.
  std::vector<std::set<std::string>> open;
  std::string duplicate;
  auto check = [&](int, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) open.emplace_back();
    else if (event == E::object_end && !open.empty()) open.pop_back();
    else if (event == E::key && !open.empty() && !open.back().insert(parsed.get<std::string>()).second &&
             duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text, check);
  } catch (const nlohmann::json::exception& e) {  // syntax, and numbers beyond a double (1e999)
    std::string msg = e.what();
    // nlohmann prefixes "[json.exception.parse_error.101] "; keep the readable part.
    auto pos = msg.find("] ");
    if (pos != std::string::npos) msg = msg.substr(pos + 2);
    throw InputError(origin + ": malformed JSON: " + msg);
  }
  if (!duplicate.empty()) throw InputError(origin + ": malformed JSON: the key '" + duplicate + "' appears twice in one object");
  return j;
}

nlohmann::json parse_json_file(const std::string& path) {
  return parse_json_text(read_input_file(path, path), path);
}

static const char* type_name_of(const nlohmann::json& j) { return j.type_name(); }

JsonObject::JsonObject(const nlohmann::json& j, std::string origin, std::string path)
    : j_(j), origin_(std::move(origin)), path_(std::move(path)) {
  if (!j_.is_object())
    throw InputError(origin_ + ": " + path_ + ": expected an object, got " + type_name_of(j_));
}

JsonObject element_object(const nlohmann::json& j, const std::string& origin, const std::string& path) {
  return JsonObject(j, origin, path);
}

std::string JsonObject::where(const std::string& key) const { return path_ + "." + key; }

void JsonObject::fail(const std::string& key, const std::string& what) const {
  throw InputError(origin_ + ": " + where(key) + ": " + what);
}

bool JsonObject::has(const std::string& key) const { return j_.contains(key); }

std::vector<std::string> JsonObject::keys() const {
  std::vector<std::string> out;
  for (auto it = j_.begin(); it != j_.end(); ++it) out.push_back(it.key());
  return out;
}

const nlohmann::json& JsonObject::get(const std::string& key, nlohmann::json::value_t type,
                                      const char* type_name) {
  asked_.insert(key);
  if (!j_.contains(key)) fail(key, "missing required key");
  read_.insert(key);
  const auto& v = j_.at(key);
  bool ok = v.type() == type;
  if (type == nlohmann::json::value_t::number_float) ok = v.is_number();
  if (type == nlohmann::json::value_t::number_integer) ok = v.is_number_integer();
  if (!ok) fail(key, std::string("expected ") + type_name + ", got " + type_name_of(v));
  return v;
}

double JsonObject::number(const std::string& key) {
  double v = get(key, nlohmann::json::value_t::number_float, "a number").get<double>();
  if (!std::isfinite(v)) fail(key, "must be finite");
  return v;
}

double JsonObject::positive(const std::string& key) {
  double v = number(key);
  if (!(v > 0)) fail(key, "must be > 0 (got " + j_.at(key).dump() + ")");
  return v;
}

double JsonObject::non_negative(const std::string& key) {
  double v = number(key);
  if (v < 0) fail(key, "must be >= 0 (got " + j_.at(key).dump() + ")");
  return v;
}

namespace {
std::string num(double v) { return formatted(v, "%g"); }
}  // namespace

double JsonObject::in_range(const std::string& key, double lo, double hi, const std::string& unit) {
  const double v = number(key);
  if (!(v >= lo && v <= hi))
    fail(key, "must be in [" + num(lo) + ", " + num(hi) + "]" + (unit.empty() ? "" : " " + unit) + " (got " +
                  j_.at(key).dump() + ")");
  return v;
}

std::optional<double> JsonObject::opt_in_range(const std::string& key, double lo, double hi, const std::string& unit) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return in_range(key, lo, hi, unit);
}

std::optional<double> JsonObject::opt_number(const std::string& key) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return number(key);
}

int64_t JsonObject::integer(const std::string& key, int64_t min, int64_t max) {
  const auto& v = get(key, nlohmann::json::value_t::number_integer, "an integer");
  int64_t x = v.get<int64_t>();
  if (x < min || x > max)
    fail(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "] (got " +
                  std::to_string(x) + ")");
  return x;
}

std::optional<int64_t> JsonObject::opt_integer(const std::string& key, int64_t min, int64_t max) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return integer(key, min, max);
}

std::string JsonObject::string(const std::string& key) {
  return get(key, nlohmann::json::value_t::string, "a string").get<std::string>();
}

std::optional<std::string> JsonObject::opt_string(const std::string& key) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return string(key);
}

bool JsonObject::boolean(const std::string& key) {
  return get(key, nlohmann::json::value_t::boolean, "true or false").get<bool>();
}

std::optional<bool> JsonObject::opt_boolean(const std::string& key) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return boolean(key);
}

JsonObject JsonObject::object(const std::string& key) {
  const auto& v = get(key, nlohmann::json::value_t::object, "an object");
  return JsonObject(v, origin_, where(key));
}

std::optional<JsonObject> JsonObject::opt_object(const std::string& key) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return object(key);
}

const nlohmann::json& JsonObject::array(const std::string& key) {
  return get(key, nlohmann::json::value_t::array, "an array");
}

std::optional<std::reference_wrapper<const nlohmann::json>> JsonObject::opt_array(const std::string& key) {
  asked_.insert(key);
  if (!has(key)) return std::nullopt;
  return std::cref(array(key));
}

std::vector<int64_t> JsonObject::int_list(const std::string& key, int64_t min) {
  const auto& a = array(key);
  std::vector<int64_t> out;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].is_number_integer() || a[i].get<int64_t>() < min)
      fail(key + "[" + std::to_string(i) + "]", "expected an integer >= " + std::to_string(min));
    out.push_back(a[i].get<int64_t>());
  }
  return out;
}

const nlohmann::json& JsonObject::raw(const std::string& key) {
  asked_.insert(key);
  if (!j_.contains(key)) fail(key, "missing required key");
  read_.insert(key);
  return j_.at(key);
}

void JsonObject::finish() const {
  for (auto it = j_.begin(); it != j_.end(); ++it) {
    if (!read_.count(it.key())) {
      std::string known;
      for (const auto& k : asked_) known += (known.empty() ? "" : ", ") + k;
      throw InputError(origin_ + ": " + where(it.key()) + ": unknown key (valid keys here: " + known + ")");
    }
  }
}

}  // namespace fuseplan
