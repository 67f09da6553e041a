// A model file fine-tuned from a frozen backbone, for the tests.
#pragma once
#include <cstddef>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/zoo.hpp"

// resnet18 as a model file with every parameter before layer4 frozen (fine-tuning the last
// stage and the classifier), and how many tensors that froze.
inline std::pair<nlohmann::json, size_t> resnet18_frozen_to_layer4() {
  nlohmann::json j = fuseplan::model_to_json(fuseplan::build_zoo_model("resnet18"));
  size_t frozen = 0;
  for (auto& l : j["layers"]) {
    const std::string name = l["name"];
    if (name.rfind("layer4", 0) == 0 || name == "fc") continue;
    for (auto& p : l["params"]) {
      p["frozen"] = true;
      ++frozen;
    }
  }
  return {j, frozen};
}
