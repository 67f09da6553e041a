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

}  // namespace fuseplan
