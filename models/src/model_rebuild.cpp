// A model file checked by building it again with the zoo's ModelBuilder (model_rebuild.hpp).
#include "model_rebuild.hpp"

#include <algorithm>
#include <cmath>

#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan::model_detail {

namespace {
// Given FLOPs of a known kind must agree with the kind's formula within this fraction:
// a typo (`fwd_flops: 1` on a 151-MFLOP conv) is refused, rounding is not.
constexpr double kFlopsTolerance = 0.01;

class Rebuild {
 public:
  Rebuild(const Model& file, const std::vector<GivenLayer>& given, const std::string& origin)
      : file_(file), given_(given), origin_(origin), b_(file.name, file.input_shape) {
    for (const auto& in : file.extra_inputs) b_.add_input(in.name, in.shape);
  }

  Model run() {
    for (size_t i = 0; i < file_.layers.size(); ++i) {
      index_ = static_cast<int>(i);
      const Layer& l = file_.layers[i];
      check_input_shape(l);
      try {
        build(l);
      } catch (const InputError& e) {  // the builder's "model M: layer L: what"; ours name origin_
        const std::string msg = e.what(), prefix = "layer " + l.name + ": ";
        if (msg.rfind(origin_ + ": ", 0) == 0) throw;
        const size_t at = msg.find(prefix);
        bad(at == std::string::npos ? msg : msg.substr(at + prefix.size()));
      }
      adopt(l);
    }
    return b_.finish();
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    const Layer& l = file_.layers[index_];
    throw InputError(origin_ + ": $.layers[" + std::to_string(index_) + "] (" + l.name + ", " +
                     std::string(layer_kind_name(l.kind)) + "): " + what);
  }

  std::vector<const ParamTensor*> params(const Layer& l) const {
    std::vector<const ParamTensor*> p;
    for (int t = 0; t < l.tensor_count; ++t) p.push_back(&file_.tensors[l.first_tensor + t]);
    return p;
  }

  void param_count(const Layer& l, int lo, int hi, const char* what) const {
    if (l.tensor_count < lo || l.tensor_count > hi)
      bad("has " + std::to_string(l.tensor_count) + (l.tensor_count == 1 ? " parameter tensor" : " parameter tensors") +
          "; a layer of this kind has " + what);
  }

  void input_count(const Layer& l, size_t n) const {
    if (l.inputs.size() != n)
      bad("has " + std::to_string(l.inputs.size()) + " inputs; a layer of this kind takes " + std::to_string(n));
  }

  const Shape& producer_shape(int from) const { return b_.shape(from); }  // from < 0: a model input

  void check_input_shape(const Layer& l) const {
    if (!given_[index_].in_shape || l.inputs.empty()) return;
    const Shape& got = producer_shape(l.inputs[0]);
    if (l.in_shape != got)
      bad("in_shape " + shape_str(l.in_shape) + " is not what its input (" + producer_name(l.inputs[0]) + ") gives, " +
          shape_str(got));
  }

  std::string producer_name(int from) const {
    if (from == ModelBuilder::kInput) return "the model input";
    if (from < 0) return "model input " + file_.extra_inputs[-2 - from].name;
    return "layer " + file_.layers[from].name;
  }

  // A weight's shape as the file gives it, against what the kind and input call for.
  void expect_shape(const ParamTensor& t, const Shape& want, const std::string& why) const {
    if (t.shape != want) bad(t.name + " has shape " + shape_str(t.shape) + "; " + why + " calls for " + shape_str(want));
  }

  int64_t out_dim(const Layer& l, size_t from_end, const char* what) const {
    if (!given_[index_].out_shape || l.out_shape.size() < from_end)
      bad(std::string("needs out_shape to know its ") + what);
    return l.out_shape[l.out_shape.size() - from_end];
  }

  int build(const Layer& l) {
    const LayerAttrs& a = l.attrs;
    const int from = l.inputs.empty() ? ModelBuilder::kInput : l.inputs[0];
    const auto p = params(l);
    switch (l.kind) {
      case LayerKind::Conv2d: {
        input_count(l, 1);
        param_count(l, 1, 2, "a weight and an optional bias");
        const Shape& w = p[0]->shape;
        const Shape& in = producer_shape(from);
        if (w.size() != 4)
          bad(p[0]->name + " has shape " + shape_str(w) + "; a conv2d weight is [out, in/groups, kh, kw]");
        if (a.kernel && (a.kernel != w[2] || a.kernel_width() != w[3]))
          bad("attrs.kernel " + std::to_string(a.kernel) + "x" + std::to_string(a.kernel_width()) +
              " disagrees with the weight " + shape_str(w));
        if (in.size() != 3) bad("conv2d needs a [C,H,W] input, its input (" + producer_name(from) + ") gives " + shape_str(in));
        const bool bias = l.tensor_count == 2;
        if (a.bias && !bias) bad("attrs.bias is true but no bias tensor is given");
        expect_shape(*p[0], {w[0], in[0] / std::max(1, a.groups), w[2], w[3]},
                     "input " + shape_str(in) + " with groups " + std::to_string(a.groups));
        if (bias) expect_shape(*p[1], {w[0]}, "a bias of " + std::to_string(w[0]) + " output channels");
        return b_.conv(l.name, from, w[0], {static_cast<int>(w[2]), static_cast<int>(w[3])},
                       {a.stride, a.stride_width()}, {a.padding, a.padding_width()}, bias, a.groups,
                       {a.dilation, a.dilation_width()});
      }
      case LayerKind::Linear: {
        input_count(l, 1);
        param_count(l, 0, 2, "a weight and an optional bias, or, when it reads a tied weight, an optional bias");
        const Shape& in = producer_shape(from);
        if (in.empty()) bad("linear needs a non-scalar input");
        const int64_t in_f = in.back();
        if (p.empty() || (p.size() == 1 && p[0]->role == TensorRole::Bias)) {  // its weight is another layer's
          const int64_t out_f = out_dim(l, 1, "output features (its weight is tied)");
          if (!p.empty()) expect_shape(*p[0], {out_f}, "a bias of " + std::to_string(out_f) + " outputs");
          return b_.linear_tied(l.name, from, out_f, !p.empty());
        }
        const Shape& w = p[0]->shape;
        if (w.size() != 2) bad(p[0]->name + " has shape " + shape_str(w) + "; a linear weight is [out, in]");
        const bool transposed = w[1] != in_f && w[0] == in_f;  // [in, out], as Hugging Face's Conv1D
        const int64_t out_f = transposed ? w[1] : w[0];
        expect_shape(*p[0], transposed ? Shape{in_f, out_f} : Shape{out_f, in_f},
                     "input " + shape_str(in) + " (" + std::to_string(in_f) + " features)");
        if (p.size() == 2) expect_shape(*p[1], {out_f}, "a bias of " + std::to_string(out_f) + " outputs");
        return b_.linear(l.name, from, out_f, p.size() == 2, transposed);
      }
      case LayerKind::BatchNorm:
      case LayerKind::LayerNorm: {
        input_count(l, 1);
        param_count(l, 2, 2, "a scale and a shift (an affine-free norm is kind custom)");
        const Shape& in = producer_shape(from);
        if (in.empty()) bad("a norm needs a non-scalar input");
        const int64_t n = l.kind == LayerKind::BatchNorm ? in[0] : in.back();
        for (const auto* t : p) expect_shape(*t, {n}, "input " + shape_str(in));
        return l.kind == LayerKind::BatchNorm ? b_.batchnorm(l.name, from) : b_.layernorm(l.name, from);
      }
      case LayerKind::Embedding: {
        input_count(l, 1);
        param_count(l, 1, 1, "one table [vocab, dim]");
        const Shape& w = p[0]->shape;
        if (w.size() != 2) bad(p[0]->name + " has shape " + shape_str(w) + "; an embedding table is [vocab, dim]");
        return b_.embedding(l.name, from, w[0], w[1]);
      }
      case LayerKind::Custom: {
        if (!given_[index_].fwd_flops || !given_[index_].bwd_flops)
          bad("a custom layer needs fwd_flops and bwd_flops (fuseplan cannot derive them)");
        Layer c = l;
        c.first_tensor = c.tensor_count = 0;
        std::vector<ParamTensor> ps;
        for (const auto* t : p) ps.push_back(*t);
        return b_.custom(std::move(c), std::move(ps));
      }
      default:
        break;
    }
    param_count(l, 0, 0, "none");
    switch (l.kind) {
      case LayerKind::MaxPool:
      case LayerKind::AvgPool:
        input_count(l, 1);
        if (!a.kernel) bad("needs attrs.kernel");
        if (!a.square() || a.dilated())
          bad("a pooling window is square and undilated here (attrs.kernel, stride and padding one integer each, no "
              "dilation); make the layer kind custom");
        return l.kind == LayerKind::MaxPool ? b_.maxpool(l.name, from, a.kernel, a.stride, a.padding)
                                            : b_.avgpool(l.name, from, a.kernel, a.stride, a.padding);
      case LayerKind::AdaptiveAvgPool:
        input_count(l, 1);
        return b_.adaptive_avgpool(l.name, from, out_dim(l, 2, "output size"), out_dim(l, 1, "output size"));
      case LayerKind::ReLU: input_count(l, 1); return b_.relu(l.name, from);
      case LayerKind::GELU: input_count(l, 1); return b_.gelu(l.name, from);
      case LayerKind::Tanh: input_count(l, 1); return b_.tanh(l.name, from);
      case LayerKind::Dropout: input_count(l, 1); return b_.dropout(l.name, from, a.dropout);
      case LayerKind::Flatten: input_count(l, 1); return b_.flatten(l.name, from);
      case LayerKind::TokenSelect: input_count(l, 1); return b_.token_select(l.name, from);
      case LayerKind::Add: input_count(l, 2); return b_.add(l.name, l.inputs[0], l.inputs[1]);
      case LayerKind::Attention:
        if (!a.heads) bad("needs attrs.heads");
        return b_.attention(l.name, l.inputs, a.heads, a.causal, a.attention);
      default:
        bad("unhandled kind");
    }
  }

  // The built layer takes the file's names, roles, activations and measured times; the
  // file's shapes and FLOPs, where given, must be the builder's.
  void adopt(const Layer& l) {
    Model& m = b_.building();
    Layer& got = m.layers.back();
    const GivenLayer& g = given_[index_];
    if (g.out_shape && l.out_shape != got.out_shape)
      bad("out_shape " + shape_str(l.out_shape) + " is not what a " + std::string(layer_kind_name(l.kind)) + " of " +
          shape_str(got.in_shape) + " gives, " + shape_str(got.out_shape));
    check_flops("fwd_flops", g.fwd_flops, l.fwd_flops, got.fwd_flops);
    check_flops("bwd_flops", g.bwd_flops, l.bwd_flops, got.bwd_flops);
    if (g.activation_elems) got.activation_elems = l.activation_elems;
    got.measured = l.measured;
    for (int t = 0; t < l.tensor_count; ++t) {
      ParamTensor& mine = m.tensors[got.first_tensor + t];
      const ParamTensor& theirs = file_.tensors[l.first_tensor + t];
      mine.name = theirs.name;
      mine.role = theirs.role;
      mine.frozen = theirs.frozen;
    }
  }

  void check_flops(const char* key, bool given, double file, double derived) const {
    if (!given || file == derived) return;
    if (std::abs(file - derived) > kFlopsTolerance * std::max(file, derived))
      bad(std::string(key) + " " + formatted(file, "%.6g") + " is not what the kind and shapes give, " +
          formatted(derived, "%.6g") + " (leave it out: fuseplan derives it)");
  }

  const Model& file_;
  const std::vector<GivenLayer>& given_;
  const std::string& origin_;
  ModelBuilder b_;
  int index_ = 0;
};

// A layer's backward FLOPs as (its weights' gradients, its input's gradient). Matrix
// products split evenly (input gradient + weight gradient = 2 x forward); a conv2d or
// custom layer reading only model inputs, or no layer at all (a PyTorch module applied to a
// constant, BERT's position embeddings), has no input gradient in it already (the
// builder's and the PyTorch export's convention); an embedding's backward is its table's
// gradient; a norm's, a parameter-free layer's and an attention's are its input's (a
// norm's scale and shift gradients are reductions, not counted apart).
std::pair<double, double> backward_parts(const Layer& l, bool has_params) {
  const bool reads_input_only = std::all_of(l.inputs.begin(), l.inputs.end(), [](int i) { return i < 0; });
  if (!has_params) return {0, l.bwd_flops};
  switch (l.kind) {
    case LayerKind::Embedding: return {l.bwd_flops, 0};
    case LayerKind::BatchNorm:
    case LayerKind::LayerNorm: return {0, l.bwd_flops};
    case LayerKind::Conv2d:
    case LayerKind::Custom:
      if (reads_input_only) return {l.bwd_flops, 0};
      [[fallthrough]];
    default: return {l.bwd_flops / 2, l.bwd_flops / 2};
  }
}

// Moves a model's frozen parameters out of its tensors into Model::frozen and sets what
// each layer's backward still runs (Layer::backward_share).
void split_frozen(Model& m, const std::string& origin) {
  if (std::none_of(m.tensors.begin(), m.tensors.end(), [](const ParamTensor& t) { return t.frozen; })) return;
  // Backward as autograd runs it: a layer computes its weights' gradients only where they
  // train, and its input's gradient only where some layer upstream trains (nothing else
  // wants it): layers before the first trained one have no backward at all.
  std::vector<bool> trains(m.layers.size(), false), upstream(m.layers.size(), false);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    Layer& l = m.layers[i];
    for (int t = 0; t < l.tensor_count; ++t) trains[i] = trains[i] || !m.tensors[l.first_tensor + t].frozen;
    for (int from : l.inputs)
      if (from >= 0) upstream[i] = upstream[i] || trains[from] || upstream[from];
    const auto [weights, input] = backward_parts(l, l.tensor_count > 0);
    const double runs = (trains[i] ? weights : 0) + (upstream[i] ? input : 0);
    l.backward_share = l.bwd_flops > 0 ? runs / l.bwd_flops : (trains[i] || upstream[i] ? 1 : 0);
  }
  std::vector<ParamTensor> trained;
  for (auto& l : m.layers) {
    const int first = static_cast<int>(trained.size());
    for (int t = 0; t < l.tensor_count; ++t) {
      ParamTensor& p = m.tensors[l.first_tensor + t];
      if (p.frozen) {
        l.frozen_elems += p.numel;
        m.frozen.push_back({std::move(p), t});
      } else {
        trained.push_back(std::move(p));
      }
    }
    l.first_tensor = first;
    l.tensor_count = static_cast<int>(trained.size()) - first;
  }
  m.tensors = std::move(trained);
  if (m.tensors.empty())
    throw InputError(origin + ": $.layers: every parameter tensor is frozen; nothing trains, so no gradient is "
                              "allreduced (leave one tensor's frozen out)");
}
}  // namespace

Model rebuild_model(const Model& file, const std::vector<GivenLayer>& given, const std::string& origin) {
  Model m = Rebuild(file, given, origin).run();
  m.measured_optimizer_us = file.measured_optimizer_us;
  split_frozen(m, origin);
  return m;
}

}  // namespace fuseplan::model_detail
