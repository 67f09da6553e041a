// Checks a model read from a file by building it again, layer by layer, with the zoo's
// ModelBuilder: shapes propagate from each layer's producers, parameter shapes follow
// from the kind and its input, FLOPs are derived. Internal to the model reader.
#pragma once
#include <string>
#include <vector>

#include "fuseplan/models/model.hpp"

namespace fuseplan::model_detail {

// What a file gave for one layer beyond kind, inputs, attributes and parameters.
struct GivenLayer {
  bool in_shape = false, out_shape = false, fwd_flops = false, bwd_flops = false, activation_elems = false;
};

// Returns the model as the builder makes it, with the file's tensor names and roles,
// activation counts and measured times. Throws InputError naming `origin`, the layer's
// JSON path and name, and what disagrees (a weight that does not fit the input, an
// out_shape the kind cannot give, FLOPs more than 1 % from the kind's, parameters on a
// layer kind that has none).
Model rebuild_model(const Model& file, const std::vector<GivenLayer>& given, const std::string& origin);

}  // namespace fuseplan::model_detail
