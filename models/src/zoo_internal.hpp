// Internal builders behind the zoo table (not part of the public API).
#pragma once
#include <array>
#include <cstdint>
#include <string>

#include "fuseplan/models/model.hpp"

namespace fuseplan::zoo_detail {

struct CnnOptions {
  int64_t resolution = 224, channels = 3, classes = 1000;
};
struct TransformerConfig {
  std::string name;
  int64_t vocab, max_positions, hidden, layers, heads, intermediate, seq_len;
};

Model alexnet(const CnnOptions& o);
Model alexnet_bn(const CnnOptions& o);
Model vgg16(const CnnOptions& o);
Model resnet(const std::string& name, const std::array<int, 4>& blocks, bool bottleneck, const CnnOptions& o);
Model bert(const TransformerConfig& c);
Model bert_pretraining(const TransformerConfig& c);
Model gpt2(const TransformerConfig& c);

}  // namespace fuseplan::zoo_detail
