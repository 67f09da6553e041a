// The model zoo: torchvision CNNs and Hugging Face transformers built by code.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/models/model.hpp"

namespace fuseplan {

struct ModelOptions {
  std::optional<int> resolution;   // CNN input height = width
  std::optional<int> channels;     // CNN input channels
  std::optional<int> classes;      // CNN classifier outputs
  std::optional<int> seq_len;      // transformer sequence length
};

struct ZooEntry {
  std::string name;
  std::string description;
  bool is_transformer = false;
  int default_resolution = 224;  // or default sequence length for transformers
  int default_batch_per_gpu = 32;
  Model (*build)(const ModelOptions&);
};

const std::vector<ZooEntry>& zoo();
const ZooEntry* find_zoo(const std::string& name);
std::string zoo_names();  // comma-separated, for error messages
// Builds a zoo model; unknown names and options that do not apply throw InputError.
Model build_zoo_model(const std::string& name, const ModelOptions& opt = {});

// A zoo name, or a path to a model JSON file (anything with '/' or ending in .json).
Model load_model(const std::string& name_or_path, const ModelOptions& opt = {});
int default_batch_per_gpu(const std::string& name_or_path);

// The largest global batch a zoo model's literature reports at baseline accuracy, with
// its source; none for models without one (VGG-16, model files). For GPT-2 the limit is
// in tokens, so sequences = tokens / the model's sequence length.
struct PublishedBatch {
  int64_t samples = 0;
  std::string source;
};
std::optional<PublishedBatch> published_batch_limit(const Model& m);

}  // namespace fuseplan
