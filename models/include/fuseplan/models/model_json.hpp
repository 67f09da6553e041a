// Model JSON import/export, schema "fuseplan.model/1" (docs/formats.md).
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "fuseplan/models/model.hpp"

namespace fuseplan {

inline constexpr const char* kModelSchema = "fuseplan.model/1";

nlohmann::json model_to_json(const Model& m);
// `origin` names the file in error messages.
Model model_from_json(const nlohmann::json& j, const std::string& origin);
Model load_model_file(const std::string& path);

inline constexpr const char* kProfileSchema = "fuseplan.profile/1";
// Sets every layer's `measured` times from a profile file (fuseplan-exec train
// --profile). The profile must be for this model: same fingerprint (tensor names and
// shapes) and the same layer names in the same order. InputError naming the file.
// Returns what the profile says it measured, for the caller to hold against its setup.
// A profile's optional `whole_pass`: the whole model's forward and backward, timed beside
// its layers, and whether the layer times were scaled to add up to it (`fitted`, with the
// layers' sums as timed alone).
struct WholePass {
  double forward_us = 0, backward_us = 0;
  bool fitted = false;
  double layers_forward_us = 0, layers_backward_us = 0;  // as timed alone; given when fitted
};

struct ProfileInfo {
  std::string device, precision;  // as written by the profiler ("fp32", "fp16", "bf16")
  int batch = 1;
  std::optional<WholePass> whole_pass;
};
ProfileInfo apply_profile(Model& m, const std::string& path);
// The same from a profile in memory; `origin` names it in errors.
ProfileInfo apply_profile_json(Model& m, const nlohmann::json& profile, const std::string& origin);

}  // namespace fuseplan
