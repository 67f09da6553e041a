// Model helpers: kind names, totals, fingerprint.
#include "fuseplan/models/model.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {
struct KindName {
  LayerKind kind;
  std::string_view name;
};
constexpr std::array<KindName, kLayerKindCount> kKindNames{{
    {LayerKind::Conv2d, "conv2d"},
    {LayerKind::BatchNorm, "batchnorm"},
    {LayerKind::Linear, "linear"},
    {LayerKind::MaxPool, "maxpool"},
    {LayerKind::AvgPool, "avgpool"},
    {LayerKind::AdaptiveAvgPool, "adaptive_avgpool"},
    {LayerKind::ReLU, "relu"},
    {LayerKind::Add, "add"},
    {LayerKind::Dropout, "dropout"},
    {LayerKind::Embedding, "embedding"},
    {LayerKind::LayerNorm, "layernorm"},
    {LayerKind::Attention, "attention"},
    {LayerKind::GELU, "gelu"},
    {LayerKind::Tanh, "tanh"},
    {LayerKind::Flatten, "flatten"},
    {LayerKind::TokenSelect, "token_select"},
    {LayerKind::Custom, "custom"},
}};
// A new LayerKind must get a name here: the table size is tied to the enum's last value.
static_assert(static_cast<int>(LayerKind::Custom) + 1 == kLayerKindCount);

struct RoleName {
  TensorRole role;
  std::string_view name;
};
constexpr std::array<RoleName, 5> kRoleNames{{
    {TensorRole::Weight, "weight"},
    {TensorRole::Bias, "bias"},
    {TensorRole::NormScale, "norm_scale"},
    {TensorRole::NormShift, "norm_shift"},
    {TensorRole::Embedding, "embedding"},
}};
}  // namespace

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (auto d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += 'x';
    out += std::to_string(s[i]);
  }
  return out.empty() ? "scalar" : out;
}

std::string_view layer_kind_name(LayerKind k) {
  for (const auto& e : kKindNames)
    if (e.kind == k) return e.name;
  return "custom";
}

std::optional<LayerKind> parse_layer_kind(std::string_view name) {
  for (const auto& e : kKindNames)
    if (e.name == name) return e.kind;
  return std::nullopt;
}

std::string layer_kind_list() {
  std::string out;
  for (const auto& e : kKindNames) out += (out.empty() ? "" : ", ") + std::string(e.name);
  return out;
}

std::string_view tensor_role_name(TensorRole r) {
  for (const auto& e : kRoleNames)
    if (e.role == r) return e.name;
  return "weight";
}

std::optional<TensorRole> parse_tensor_role(std::string_view name) {
  for (const auto& e : kRoleNames)
    if (e.name == name) return e.role;
  return std::nullopt;
}

bool role_skips_decay(TensorRole r) {
  return r == TensorRole::Bias || r == TensorRole::NormScale || r == TensorRole::NormShift;
}

std::string_view compute_class_name(ComputeClass k) {
  static constexpr std::string_view kNames[kComputeClassCount] = {
      "conv_kxk_s1", "conv_kxk", "conv_1x1", "conv_grouped", "conv_stem", "gemm",
      "attention",   "norm",     "elementwise", "pool",     "embedding", "other"};
  return kNames[static_cast<int>(k)];
}

std::optional<ComputeClass> parse_compute_class(std::string_view name) {
  for (int i = 0; i < kComputeClassCount; ++i)
    if (compute_class_name(ComputeClass(i)) == name) return ComputeClass(i);
  return std::nullopt;
}

std::string compute_class_list() {
  std::string names;
  for (int i = 0; i < kComputeClassCount; ++i)
    names += (i ? ", " : "") + std::string(compute_class_name(ComputeClass(i)));
  return names;
}

const Shape& Model::input_shape_of(int ref) const {
  if (ref == -1) return input_shape;
  const int k = -2 - ref;
  if (ref >= 0 || k >= static_cast<int>(extra_inputs.size()))
    throw InputError("model " + name + ": no model input " + std::to_string(ref) + " (it has " +
                     std::to_string(1 + extra_inputs.size()) + ": -1" +
                     (extra_inputs.empty() ? "" : " to " + std::to_string(-1 - int(extra_inputs.size()))) + ")");
  return extra_inputs[k].shape;
}

int64_t Model::param_count() const {
  int64_t n = 0;
  for (const auto& t : tensors) n += t.numel;
  return n;
}

double Model::fwd_flops() const {
  double f = 0;
  for (const auto& l : layers) f += l.fwd_flops;
  return f;
}

double Model::bwd_flops() const {
  double f = 0;
  for (const auto& l : layers) f += l.bwd_flops * l.backward_share;
  return f;
}

int64_t Model::frozen_count() const {
  int64_t n = 0;
  for (const auto& f : frozen) n += f.tensor.numel;
  return n;
}

int64_t Model::activation_elems() const {
  int64_t n = 0;
  for (const auto& l : layers)
    if (l.backward_share > 0) n += l.activation_elems;  // a layer with no backward (frozen) keeps nothing for it
  return n;
}

uint64_t Model::fingerprint() const {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    auto b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 1099511628211ull;
    }
  };
  for (const auto& t : tensors) {
    mix(t.name.data(), t.name.size());
    for (auto d : t.shape) mix(&d, sizeof d);
    mix("|", 1);
  }
  return h;
}

std::vector<int> Model::ready_steps() const {
  std::vector<int> step(tensors.size(), 0);
  int k = 0;
  for (int l = static_cast<int>(layers.size()) - 1; l >= 0; --l, ++k)
    for (int i = 0; i < layers[size_t(l)].tensor_count; ++i)
      step[size_t(tensor_at_backward(layers[size_t(l)].first_tensor + i))] = k;
  return step;
}

std::vector<int> Model::ready_prefix_after() const {
  std::vector<int> upto_after(layers.size(), 0);
  int upto = 0;
  for (int l = static_cast<int>(layers.size()) - 1; l >= 0; --l) {
    const Layer& layer = layers[size_t(l)];
    for (int i = 0; i < layer.tensor_count; ++i) upto = std::max(upto, tensor_at_backward(layer.first_tensor + i) + 1);
    upto_after[size_t(l)] = upto;
  }
  return upto_after;
}

std::string Model::fingerprint_hex() const {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(fingerprint()));
  return buf;
}

}  // namespace fuseplan
