// Model JSON import/export, schema "fuseplan.model/1" (docs/formats.md).
#pragma once
#include <nlohmann/json.hpp>
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
void apply_profile(Model& m, const std::string& path);

}  // namespace fuseplan
