// ModelBuilder: shape propagation, parameter tensors and FLOP counts per layer.
#include "fuseplan/models/builder.hpp"

#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {
// FLOPs per element for the cheap layers (a multiply-add counts 2). Forward, then the
// ratio backward/forward. These only matter for the roofline; they are memory bound.
constexpr double kBatchNormFwdPerElem = 8;   // mean, var, normalise, scale, shift
constexpr double kLayerNormFwdPerElem = 8;
constexpr double kNormBwdRatio = 2;
constexpr double kReluFwdPerElem = 1;
constexpr double kGeluFwdPerElem = 8;        // tanh approximation
constexpr double kTanhFwdPerElem = 4;
constexpr double kDropoutFwdPerElem = 2;     // mask + scale
constexpr double kAddFwdPerElem = 1;
constexpr double kSoftmaxPerElem = 5;        // max, sub, exp, sum, div
// Matrix products: backward = input gradient + weight gradient = 2 x forward.
constexpr double kMatmulBwdRatio = 2;

int64_t conv_out(int64_t in, int k, int s, int p, int d = 1) { return (in + 2 * p - d * (k - 1) - 1) / s + 1; }

Layer make_layer(const std::string& name, LayerKind kind, std::vector<int> inputs, const Shape& in, const Shape& out) {
  Layer l;
  l.name = name;
  l.kind = kind;
  l.inputs = std::move(inputs);
  l.in_shape = in;
  l.out_shape = out;
  return l;
}

ParamTensor param(std::string name, Shape shape, TensorRole role = TensorRole::Weight) {
  ParamTensor t;
  t.name = std::move(name);
  t.shape = std::move(shape);
  t.role = role;
  return t;
}
}  // namespace

ModelBuilder::ModelBuilder(std::string model_name, Shape input_shape) {
  m_.name = std::move(model_name);
  m_.input_shape = std::move(input_shape);
}

void ModelBuilder::bad(const std::string& layer, const std::string& what) const {
  throw InputError("model " + m_.name + ": layer " + layer + ": " + what);
}

int ModelBuilder::add_input(std::string name, Shape shape) {
  m_.extra_inputs.push_back({std::move(name), std::move(shape)});
  return -1 - static_cast<int>(m_.extra_inputs.size());
}

const Shape& ModelBuilder::in(int from) const {
  if (from < 0) return m_.input_shape_of(from);
  if (from >= static_cast<int>(m_.layers.size()))
    throw InputError("model " + m_.name + ": bad layer reference " + std::to_string(from));
  return m_.layers[from].out_shape;
}

const Shape& ModelBuilder::shape(int layer) const { return in(layer); }

int ModelBuilder::push(Layer l, std::vector<ParamTensor> params) {
  for (auto d : l.out_shape)
    if (d <= 0) bad(l.name, "output shape " + shape_str(l.out_shape) + " is empty (input too small?)");
  int idx = static_cast<int>(m_.layers.size());
  l.first_tensor = static_cast<int>(m_.tensors.size());
  l.tensor_count = static_cast<int>(params.size());
  if (l.activation_elems == 0) l.activation_elems = numel(l.out_shape);
  for (auto& p : params) {
    p.layer = idx;
    p.numel = numel(p.shape);
    m_.tensors.push_back(std::move(p));
  }
  m_.layers.push_back(std::move(l));
  return idx;
}

int ModelBuilder::conv(const std::string& name, int from, int64_t out_ch, int kernel, int stride,
                       int padding, bool bias, int groups) {
  return conv(name, from, out_ch, Hw{kernel, kernel}, Hw{stride, stride}, Hw{padding, padding}, bias, groups);
}

int ModelBuilder::conv(const std::string& name, int from, int64_t out_ch, Hw kernel, Hw stride, Hw padding,
                       bool bias, int groups, Hw dilation) {
  const Shape s = in(from);
  if (s.size() != 3) bad(name, "conv2d needs a [C,H,W] input, got " + shape_str(s));
  if (s[0] % groups || out_ch % groups) bad(name, "channels not divisible by groups");
  Layer l = make_layer(name, LayerKind::Conv2d, {from}, s, {});
  l.out_shape = {out_ch, conv_out(s[1], kernel.h, stride.h, padding.h, dilation.h),
                 conv_out(s[2], kernel.w, stride.w, padding.w, dilation.w)};
  l.attrs.set_window(kernel, stride, padding, dilation);
  l.attrs.groups = groups;
  l.attrs.bias = bias;
  double macs = double(numel(l.out_shape)) * double(s[0] / groups) * kernel.h * kernel.w;
  l.fwd_flops = 2 * macs + (bias ? double(numel(l.out_shape)) : 0);
  // The first layer needs no input gradient: only the weight gradient remains.
  l.bwd_flops = from < 0 ? l.fwd_flops : kMatmulBwdRatio * l.fwd_flops;
  std::vector<ParamTensor> p{param(name + ".weight", {out_ch, s[0] / groups, kernel.h, kernel.w})};
  if (bias) p.push_back(param(name + ".bias", {out_ch}, TensorRole::Bias));
  return push(std::move(l), std::move(p));
}

int ModelBuilder::batchnorm(const std::string& name, int from) {
  const Shape s = in(from);
  if (s.empty()) bad(name, "batchnorm needs a non-scalar input");
  Layer l = make_layer(name, LayerKind::BatchNorm, {from}, s, s);
  l.fwd_flops = kBatchNormFwdPerElem * numel(s);
  l.bwd_flops = kNormBwdRatio * l.fwd_flops;
  return push(std::move(l), {param(name + ".weight", {s[0]}, TensorRole::NormScale),
                             param(name + ".bias", {s[0]}, TensorRole::NormShift)});
}

int ModelBuilder::maxpool(const std::string& name, int from, int kernel, int stride, int padding) {
  const Shape s = in(from);
  if (s.size() != 3) bad(name, "maxpool needs a [C,H,W] input, got " + shape_str(s));
  Layer l = make_layer(name, LayerKind::MaxPool, {from}, s, {});
  l.out_shape = {s[0], conv_out(s[1], kernel, stride, padding), conv_out(s[2], kernel, stride, padding)};
  l.attrs.kernel = kernel;
  l.attrs.stride = stride;
  l.attrs.padding = padding;
  l.fwd_flops = double(numel(l.out_shape)) * kernel * kernel;
  l.bwd_flops = double(numel(l.out_shape));
  return push(std::move(l), {});
}

int ModelBuilder::avgpool(const std::string& name, int from, int kernel, int stride, int padding) {
  int idx = maxpool(name, from, kernel, stride, padding);
  m_.layers[idx].kind = LayerKind::AvgPool;
  m_.layers[idx].bwd_flops = m_.layers[idx].fwd_flops;
  return idx;
}

int ModelBuilder::adaptive_avgpool(const std::string& name, int from, int64_t out_h, int64_t out_w) {
  const Shape s = in(from);
  if (s.size() != 3) bad(name, "adaptive_avgpool needs a [C,H,W] input, got " + shape_str(s));
  Layer l = make_layer(name, LayerKind::AdaptiveAvgPool, {from}, s, {});
  l.out_shape = {s[0], out_h, out_w};
  // Each input element is summed once (windows may overlap when upsampling; ignored).
  l.fwd_flops = double(std::max(numel(s), numel(l.out_shape)));
  l.bwd_flops = l.fwd_flops;
  return push(std::move(l), {});
}

int ModelBuilder::flatten(const std::string& name, int from) {
  const Shape s = in(from);
  int idx = push(make_layer(name, LayerKind::Flatten, {from}, s, {numel(s)}), {});
  m_.layers[idx].activation_elems = 0;  // a view: stores nothing of its own
  return idx;
}

int ModelBuilder::linear(const std::string& name, int from, int64_t out_features, bool bias, bool transposed) {
  const Shape s = in(from);
  if (s.empty()) bad(name, "linear needs a non-scalar input");
  int64_t in_f = s.back();
  int64_t rows = numel(s) / in_f;
  Layer l = make_layer(name, LayerKind::Linear, {from}, s, s);
  l.out_shape.back() = out_features;
  l.attrs.bias = bias;
  l.fwd_flops = 2.0 * rows * in_f * out_features + (bias ? double(rows * out_features) : 0);
  l.bwd_flops = kMatmulBwdRatio * l.fwd_flops;
  Shape w = transposed ? Shape{in_f, out_features} : Shape{out_features, in_f};
  std::vector<ParamTensor> p{param(name + ".weight", w)};
  if (bias) p.push_back(param(name + ".bias", {out_features}, TensorRole::Bias));
  return push(std::move(l), std::move(p));
}

int ModelBuilder::linear_tied(const std::string& name, int from, int64_t out_features, bool bias) {
  int idx = linear(name, from, out_features, bias);
  // Drop the weight linear() created (the layer's first tensor, its bias after it); the
  // layer reads a tied weight instead.
  Layer& l = m_.layers[idx];
  m_.tensors.erase(m_.tensors.begin() + l.first_tensor);
  l.tensor_count -= 1;
  return idx;
}

static Layer elementwise(const std::string& name, LayerKind kind, int from, const Shape& s, double per_elem) {
  Layer l = make_layer(name, kind, {from}, s, s);
  l.fwd_flops = per_elem * numel(s);
  l.bwd_flops = l.fwd_flops;
  return l;
}

int ModelBuilder::relu(const std::string& name, int from) {
  return push(elementwise(name, LayerKind::ReLU, from, in(from), kReluFwdPerElem), {});
}
int ModelBuilder::gelu(const std::string& name, int from) {
  return push(elementwise(name, LayerKind::GELU, from, in(from), kGeluFwdPerElem), {});
}
int ModelBuilder::tanh(const std::string& name, int from) {
  return push(elementwise(name, LayerKind::Tanh, from, in(from), kTanhFwdPerElem), {});
}

int ModelBuilder::dropout(const std::string& name, int from, double p) {
  if (p < 0 || p >= 1) bad(name, "dropout probability must be in [0, 1)");
  Layer l = elementwise(name, LayerKind::Dropout, from, in(from), kDropoutFwdPerElem);
  l.attrs.dropout = p;
  return push(std::move(l), {});
}

int ModelBuilder::add(const std::string& name, int a, int b) {
  const Shape sa = in(a), sb = in(b);
  if (sa != sb) bad(name, "add of shapes " + shape_str(sa) + " and " + shape_str(sb));
  Layer l = elementwise(name, LayerKind::Add, a, sa, kAddFwdPerElem);
  l.inputs = {a, b};
  l.bwd_flops = 0;  // the gradient passes through to both inputs
  return push(std::move(l), {});
}

int ModelBuilder::embedding(const std::string& name, int from, int64_t vocab, int64_t dim) {
  const Shape s = in(from);
  if (s.size() != 1) bad(name, "embedding needs token ids [S], got " + shape_str(s));
  Layer l = make_layer(name, LayerKind::Embedding, {from}, s, {s[0], dim});
  l.fwd_flops = 0;                        // a gather
  l.bwd_flops = double(s[0]) * dim;       // scatter-add into the table
  return push(std::move(l), {param(name + ".weight", {vocab, dim}, TensorRole::Embedding)});
}

int ModelBuilder::layernorm(const std::string& name, int from) {
  const Shape s = in(from);
  if (s.empty()) bad(name, "layernorm needs a non-scalar input");
  Layer l = make_layer(name, LayerKind::LayerNorm, {from}, s, s);
  l.fwd_flops = kLayerNormFwdPerElem * numel(s);
  l.bwd_flops = kNormBwdRatio * l.fwd_flops;
  return push(std::move(l), {param(name + ".weight", {s.back()}, TensorRole::NormScale),
                             param(name + ".bias", {s.back()}, TensorRole::NormShift)});
}

int ModelBuilder::attention(const std::string& name, const std::vector<int>& from, int heads, bool causal,
                            AttentionKernels kernels) {
  if (from.size() != 1 && from.size() != 3) bad(name, "attention takes q,k,v or one fused qkv input");
  const Shape s = in(from[0]);
  if (s.size() != 2) bad(name, "attention needs [S, H] inputs, got " + shape_str(s));
  int64_t seq = s[0], hidden = from.size() == 1 ? s[1] / 3 : s[1];
  if (from.size() == 1 && s[1] % 3) bad(name, "fused qkv width must be a multiple of 3");
  if (heads <= 0 || hidden % heads) bad(name, "hidden size not divisible by the head count");
  for (int f : from)
    if (in(f)[0] != seq) bad(name, "q, k and v need the same sequence length");
  Layer l = make_layer(name, LayerKind::Attention, from, s, {seq, hidden});
  l.attrs.heads = heads;
  l.attrs.causal = causal;
  l.attrs.attention = kernels;
  double scores = double(seq) * seq * heads;
  double matmuls = 2.0 * 2.0 * seq * seq * hidden;  // QK^T and PV
  l.fwd_flops = matmuls + kSoftmaxPerElem * scores;
  l.bwd_flops = kMatmulBwdRatio * matmuls + kSoftmaxPerElem * scores;
  // The attention probabilities are stored for backward, as in eager frameworks.
  l.activation_elems = seq * hidden + static_cast<int64_t>(scores);
  return push(std::move(l), {});
}

int ModelBuilder::token_select(const std::string& name, int from) {
  const Shape s = in(from);
  if (s.size() != 2) bad(name, "token_select needs [S, H], got " + shape_str(s));
  Layer l = make_layer(name, LayerKind::TokenSelect, {from}, s, {s[1]});
  return push(std::move(l), {});
}

int ModelBuilder::custom(Layer l, std::vector<ParamTensor> params) {
  for (int from : l.inputs) in(from);  // a reference to no layer throws
  return push(std::move(l), std::move(params));
}

Model ModelBuilder::finish() {
  if (m_.layers.empty()) throw InputError("model " + m_.name + ": no layers");
  return std::move(m_);
}

}  // namespace fuseplan
