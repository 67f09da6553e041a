// Clusters edited as JSON for the tests.
#pragma once
#include <iterator>
#include <nlohmann/json.hpp>

// `j` (a cluster_to_json document) without its per-class efficiencies (device.by_kind) and
// the provenance of each: the device's one roofline for every layer.
inline void drop_by_kind(nlohmann::json& j) {
  j["device"].erase("by_kind");
  for (auto it = j["provenance"].begin(); it != j["provenance"].end();)
    it = it.key().rfind("device.by_kind", 0) == 0 ? j["provenance"].erase(it) : std::next(it);
}
