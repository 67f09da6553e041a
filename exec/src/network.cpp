// Network: the Model's layer graph executed on a Backend, flat parameter and gradient
// buffers in backward order, half-precision storage emulated by rounding (or real, where
// the backend stores activations in 16 bits: Backend::activation_storage).
#include "fuseplan/exec/network.hpp"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cmath>

#include "fuseplan/exec/half.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {
using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int dim(const Shape& s, size_t i) { return i < s.size() ? static_cast<int>(s[i]) : 1; }
}  // namespace

struct Network::Node {
  int64_t out_elems = 0;  // per sample
  DeviceBuffer out_buf, dout_buf, mask_buf;
  float* out = nullptr;   // [batch, out_shape]
  float* dout = nullptr;  // gradient of out (summed over consumers)
  int weight = -1, bias = -1;  // backward positions of the layer's tensors, -1 = none
  ConvShape conv;
  PoolShape pool;
  int64_t running = -1;                // BatchNorm: offset of [mean, var] in the running statistics
  DeviceBuffer save_buf;               // BatchNorm: batch mean, then 1 / std
  float* save_mean = nullptr;
  float* save_invstd = nullptr;
  DeviceBuffer argmax_buf;             // MaxPool: int32 indices in a float-sized buffer
  int32_t* argmax = nullptr;
  float* mask = nullptr;               // Dropout: 0 or 1 / (1 - p) per element
};

Network::Network(const Model& m, int batch, Backend& be, const NetworkOptions& opt)
    : model_(m), batch_(batch), be_(be), opt_(opt) {
  if (batch < 1) throw InputError(field("batch_per_gpu") + ": must be >= 1");
  if (const Precision stored = be_.activation_storage(); stored != Precision::FP32) {
    if (stored != opt.precision)
      throw InputError(field("precision") + " " + std::string(precision_name(opt.precision)) + ": the backend (" +
                       be_.name() + ") stores activations in " + std::string(precision_name(stored)));
    half_storage_ = true;
  }
  if (opt.graphs && !be_.supports_graphs())
    throw InputError(field("backend.cuda_graphs") + ": the backend (" + be_.name() + ") has no step graphs");
  const int T = static_cast<int>(m.tensors.size());
  // Flat buffers in backward order.
  slots_.resize(T);
  slot_of_tensor_.resize(T);
  for (int b = 0; b < T; ++b) {
    const ParamTensor& t = m.tensors[m.tensor_at_backward(b)];
    slots_[b] = {t.name, t.shape, t.role, t.layer, params_n_, t.numel};
    slot_of_tensor_[m.tensor_at_backward(b)] = b;
    params_n_ += t.numel;
  }
  params_ = DeviceBuffer(be_, size_t(std::max<int64_t>(params_n_, 1)));
  grads_ = DeviceBuffer(be_, size_t(std::max<int64_t>(params_n_, 1)));
  be_.zero(grads_.get(), size_t(std::max<int64_t>(params_n_, 1)));

  std::vector<float> running_init;
  nodes_.resize(m.layers.size());
  timings_.resize(m.layers.size());
  spans_.resize(m.layers.size());
  fwd_mark_.assign(m.layers.size(), 0);
  bwd_mark_.assign(m.layers.size(), 0);
  if (!m.frozen.empty())
    throw InputError("model " + m.name + ": " + std::to_string(m.frozen.size()) + " parameter tensors are frozen (" +
                     m.frozen.front().tensor.name + ", ...): the trainer trains every parameter (fine-tuning with "
                     "frozen ones runs through fuseplan_torch run)");
  if (!m.extra_inputs.empty())
    throw InputError("model " + m.name + ": takes " + std::to_string(1 + m.extra_inputs.size()) + " inputs (" +
                     m.extra_inputs.front().name + ", ...): the trainer feeds one (models of several inputs run "
                     "through fuseplan_torch run)");
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const Layer& L = m.layers[l];
    Node& n = nodes_[l];
    auto unsupported = [&](const std::string& why) {
      throw InputError("model " + m.name + ": layer " + L.name + " (" + std::string(layer_kind_name(L.kind)) +
                       "): " + why);
    };
    switch (L.kind) {
      case LayerKind::Conv2d: case LayerKind::BatchNorm: case LayerKind::Linear: case LayerKind::MaxPool:
      case LayerKind::AvgPool: case LayerKind::AdaptiveAvgPool: case LayerKind::ReLU: case LayerKind::Add:
      case LayerKind::Dropout: case LayerKind::Flatten:
        break;
      default:
        unsupported("not supported by the trainer (it runs CNNs: conv2d, batchnorm, linear, maxpool, avgpool, "
                    "adaptive_avgpool, relu, add, dropout, flatten)");
    }
    const size_t want_inputs = L.kind == LayerKind::Add ? 2 : 1;
    if (L.inputs.size() != want_inputs) unsupported("expects " + std::to_string(want_inputs) + " input(s)");
    for (int i = 0; i < L.tensor_count; ++i) {
      const ParamTensor& t = m.tensors[L.first_tensor + i];
      const int b = slot_of_tensor_[L.first_tensor + i];
      if (t.role == TensorRole::Bias || t.role == TensorRole::NormShift) n.bias = b;
      else n.weight = b;
    }
    n.out_elems = numel(L.out_shape);
    if (n.out_elems <= 0) unsupported("has no output shape");
    n.out_buf = DeviceBuffer(be_, size_t(batch) * size_t(n.out_elems), DeviceBuffer::Activation{});
    n.dout_buf = DeviceBuffer(be_, size_t(batch) * size_t(n.out_elems), DeviceBuffer::Activation{});
    n.out = n.out_buf.get();
    n.dout = n.dout_buf.get();
    if (L.kind == LayerKind::Conv2d) {
      if (L.attrs.groups != 1) unsupported("grouped convolutions are not supported");
      if (!L.attrs.square()) unsupported("rectangular kernels, strides or paddings are not supported");
      if (L.attrs.dilated()) unsupported("dilated convolutions are not supported");
      if (n.weight < 0) unsupported("has no weight");
      n.conv = {batch, dim(L.in_shape, 0), dim(L.in_shape, 1), dim(L.in_shape, 2), dim(L.out_shape, 0), L.attrs.kernel,
                L.attrs.stride, L.attrs.padding, dim(L.out_shape, 1), dim(L.out_shape, 2)};
      if (slots_[n.weight].numel != int64_t(n.conv.k) * n.conv.c * n.conv.r * n.conv.r)
        unsupported("weight shape does not match its channels and kernel");
    } else if (L.kind == LayerKind::MaxPool || L.kind == LayerKind::AvgPool || L.kind == LayerKind::AdaptiveAvgPool) {
      n.pool = {batch, dim(L.in_shape, 0), dim(L.in_shape, 1), dim(L.in_shape, 2), L.attrs.kernel,
                L.attrs.stride, L.attrs.padding, dim(L.out_shape, 1), dim(L.out_shape, 2)};
      if (L.kind == LayerKind::MaxPool) {
        static_assert(sizeof(int32_t) == sizeof(float));
        n.argmax_buf = DeviceBuffer(be_, size_t(batch) * size_t(n.out_elems));
        n.argmax = reinterpret_cast<int32_t*>(n.argmax_buf.get());
      }
    } else if (L.kind == LayerKind::BatchNorm) {
      const int c = dim(L.in_shape, 0);
      n.running = static_cast<int64_t>(running_init.size());
      running_init.insert(running_init.end(), size_t(c), 0.0f);  // mean
      running_init.insert(running_init.end(), size_t(c), 1.0f);  // var
      n.save_buf = DeviceBuffer(be_, 2 * size_t(c));
      n.save_mean = n.save_buf.get();
      n.save_invstd = n.save_mean + c;
    } else if (L.kind == LayerKind::Linear) {
      if (n.weight < 0) unsupported("has no weight");
      const Shape& w = slots_[n.weight].shape;
      if (w.size() != 2 || w[0] != numel(L.out_shape) || w[1] != numel(L.in_shape))
        unsupported("weight must be [out, in] (transposed weights are not supported)");
    } else if (L.kind == LayerKind::Dropout) {
      n.mask_buf = DeviceBuffer(be_, size_t(batch) * size_t(n.out_elems));
      n.mask = n.mask_buf.get();
    }
  }
  if (nodes_.empty() || m.layers.back().out_shape.size() != 1)
    throw InputError("model " + m.name + ": the last layer must output one logit per class");
  if (opt.graphs)
    for (const Layer& L : m.layers)
      if (L.kind == LayerKind::Dropout)
        throw InputError(field("backend.cuda_graphs") + ": model " + m.name + " has dropout (" + L.name +
                         "), whose masks come from the host each step");
  size_t discard = 0;  // a BatchNorm on the model input: its gradient goes here
  for (const Layer& L : m.layers)
    if (L.kind == LayerKind::BatchNorm && L.inputs[0] < 0)
      discard = std::max(discard, size_t(batch) * size_t(numel(L.in_shape)));
  if (discard) discard_ = DeviceBuffer(be_, discard, DeviceBuffer::Activation{});
  running_n_ = running_init.size();
  running_ = DeviceBuffer(be_, std::max<size_t>(running_n_, 1));
  if (running_n_) be_.copy_in(running_.get(), running_init.data(), running_n_);
  // A recorded forward reads its input from one buffer, whatever the caller's.
  if (!be_.reads_host_memory() || input_blocked() || half_storage_ || opt_.graphs)
    input_buf_ = DeviceBuffer(be_, std::max<size_t>(input_elems(), 1), DeviceBuffer::Activation{});
  dlogits_ = nodes_.back().dout;
  dout_ready_.assign(nodes_.size(), 0);
  ready_after_ = m.ready_prefix_after();  // slots are backward positions
  // Half precision is stored by rounding each output and gradient, except where the op
  // cannot leave the half-precision grid: ReLU, max pooling and flatten pass values of a
  // rounded input through (or zero them), so their outputs need no rounding; a gradient
  // whose only contribution comes from a ReLU or flatten is the consumer's rounded
  // gradient, passed through or zeroed, likewise. (The model input is not rounded, so
  // layers reading it keep their rounding.) stored_in_precision() checks it.
  std::vector<int> consumers(nodes_.size(), 0), last(nodes_.size(), -1);
  for (size_t l = 0; l < m.layers.size(); ++l)
    for (int src : m.layers[l].inputs)
      if (src >= 0) ++consumers[size_t(src)], last[size_t(src)] = int(l);
  auto passes_values = [&](int l, bool backward) {
    const LayerKind k = m.layers[size_t(l)].kind;
    return k == LayerKind::ReLU || k == LayerKind::Flatten || (!backward && k == LayerKind::MaxPool);
  };
  relu_after_.assign(nodes_.size(), -1);
  fused_into_.assign(nodes_.size(), -1);
  if (opt_.fuse_relu && be_.fuses_relu())
    for (size_t l = 0; l < nodes_.size(); ++l) {
      const int r = last[l];
      const LayerKind k = m.layers[l].kind;
      if ((k != LayerKind::BatchNorm && k != LayerKind::Add) || consumers[l] != 1 ||
          m.layers[size_t(r)].kind != LayerKind::ReLU)
        continue;
      relu_after_[l] = r, fused_into_[size_t(r)] = int(l);
      // The layer writes its ReLU's output and reads its ReLU's gradient: its own are
      // never used.
      Node& n = nodes_[l];
      n.out_buf = DeviceBuffer(), n.dout_buf = DeviceBuffer();
      n.out = n.dout = nullptr;
    }
  exact_out_.assign(nodes_.size(), 0);
  exact_dout_.assign(nodes_.size(), 0);
  for (size_t l = 0; l < nodes_.size(); ++l) {
    const auto& in = m.layers[l].inputs;
    exact_out_[l] = passes_values(int(l), false) && in.size() == 1 && in[0] >= 0;
    exact_dout_[l] = consumers[l] == 1 && passes_values(last[l], true);
  }
  init_weights();
}

Network::~Network() = default;

// torchvision's initialisation: Kaiming normal (fan out, ReLU) for convolutions, uniform
// +-1/sqrt(fan in) for linear layers, BatchNorm scale 1 and shift 0, conv biases 0.
void Network::init_weights() {
  std::mt19937_64 rng(opt_.seed);
  std::vector<float> host(size_t(params_n_), 0.0f);
  for (size_t l = 0; l < model_.layers.size(); ++l) {
    const Layer& L = model_.layers[l];
    const Node& n = nodes_[l];
    auto fill = [&](int slot, auto&& draw) {
      if (slot < 0) return;
      const TensorSlot& s = slots_[slot];
      for (int64_t i = 0; i < s.numel; ++i) host[size_t(s.offset + i)] = draw();
    };
    if (L.kind == LayerKind::Conv2d) {
      std::normal_distribution<float> d(0.0f, std::sqrt(2.0f / float(n.conv.k * n.conv.r * n.conv.r)));
      fill(n.weight, [&] { return d(rng); });
    } else if (L.kind == LayerKind::Linear) {
      const float bound = 1.0f / std::sqrt(float(numel(L.in_shape)));
      std::uniform_real_distribution<float> d(-bound, bound);
      fill(n.weight, [&] { return d(rng); });
      fill(n.bias, [&] { return d(rng); });
    } else if (L.kind == LayerKind::BatchNorm) {
      fill(n.weight, [] { return 1.0f; });
    }
  }
  be_.copy_in(params_.get(), host.data(), host.size());
  be_.round(opt_.precision, params_.get(), size_t(params_n_));
}

void Network::check_same_tensors(const Model& other, const std::string& what) const {
  auto fail = [&](const std::string& why) {
    throw InputError(what + ": model " + other.name + " does not match the trainer's " + model_.name + ": " + why);
  };
  if (other.tensors.size() != model_.tensors.size())
    fail(std::to_string(other.tensors.size()) + " tensors, the trainer has " + std::to_string(model_.tensors.size()));
  for (size_t i = 0; i < model_.tensors.size(); ++i) {
    const auto& a = model_.tensors[i];
    const auto& b = other.tensors[i];
    if (a.name != b.name || a.shape != b.shape)
      fail("tensor " + std::to_string(i) + " is " + b.name + " " + shape_str(b.shape) + ", the trainer's is " + a.name +
           " " + shape_str(a.shape));
  }
}

const float* Network::input_of(int l, int k) const {
  const int src = model_.layers[l].inputs[k];
  return src < 0 ? input_ : nodes_[src].out;
}

float* Network::grad_of_input(int l, int k) {
  const int src = model_.layers[l].inputs[k];
  return src < 0 ? nullptr : nodes_[src].dout;
}

void Network::forward(const float* input, bool training, std::mt19937_64& rng,
                      const std::function<void(int)>& before_layer) {
  load_input(input);
  forward_loaded(training, rng, before_layer);
}

void Network::prefetch_input(const float* input) {
  if (be_.reads_host_memory()) return;
  if (!ahead_buf_.get()) ahead_buf_ = DeviceBuffer(be_, std::max<size_t>(input_elems(), 1));
  be_.copy_in_ahead(ahead_buf_.get(), input, input_elems());
  ahead_of_ = input;
}

void Network::load_input(const float* input) {
  if (input && input == ahead_of_) {  // copied ahead: wait for it, then convert from there
    be_.await_copy_in();
    ahead_of_ = nullptr;
    input = ahead_buf_.get();
  }
  input_ = input;
  if (input_blocked() || half_storage_) {  // into the backend's blocked layout, or its 16-bit storage
    const auto [c, hw] = channels_and_plane(model_.input_shape);
    be_.import_activation(batch_, c, hw, input, input_buf_.get());
    input_ = input_buf_.get();
  } else if (input_buf_.get()) {  // into the backend's memory (device memory on a GPU), or for a step graph
    be_.copy_in(input_buf_.get(), input, input_elems());
    input_ = input_buf_.get();
  }
}

void Network::forward_loaded(bool training, std::mt19937_64& rng, const std::function<void(int)>& before_layer) {
  if (training && !before_layer && run_as_graph(fwd_graph_, fwd_warm_, [&] { forward_layers(true, rng, {}); }))
    return;
  forward_layers(training, rng, before_layer);
}

bool Network::run_as_graph(int& graph, bool& warm, const std::function<void()>& layers) {
  if (!opt_.graphs) return false;
  if (graph < 0) {
    if (!warm) {  // the first time runs as usual: algorithms are chosen, buffers allocated
      warm = true;
      return false;
    }
    be_.begin_graph();
    in_graph_ = true;
    layers();
    in_graph_ = false;
    graph = be_.end_graph();
  }
  be_.launch_graph(graph);
  return true;
}

void Network::forward_layers(bool training, std::mt19937_64& rng, const std::function<void(int)>& before_layer) {
  const bool marks = be_.timed_on_device() && !in_graph_;
  if (marks) {  // the step starts on an idle device, so mark 0 runs when it is recorded
    be_.synchronize();
    be_.reset_marks();
    marks_origin_ = Clock::now();
    be_.mark();
  }
  for (size_t l = 0; l < nodes_.size(); ++l) {
    if (before_layer) before_layer(int(l));
    auto t0 = Clock::now();
    forward_layer(static_cast<int>(l), training, rng);
    // A fused BatchNorm or add wrote its ReLU's output, rounded here as its own would have
    // been (rounding and ReLU commute); the ReLU then has nothing left to do.
    float* written = relu_after_[l] >= 0 ? nodes_[size_t(relu_after_[l])].out : nodes_[l].out;
    if (!exact_out_[l] && !half_storage_)
      be_.round(opt_.precision, written, size_t(batch_) * size_t(nodes_[l].out_elems));
    if (in_graph_) continue;  // recorded: nothing runs yet, nothing is timed
    if (marks) {
      fwd_mark_[l] = be_.mark();
      continue;
    }
    be_.synchronize();  // the layer's time
    const double d = since(t0);
    timings_[l].fwd_s += d;
    spans_[l].fwd_start = t0;
    spans_[l].fwd_s = d;
  }
}

void Network::read_marks() {
  auto at = [&](int mark) {
    return marks_origin_ + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(be_.mark_seconds(mark)));
  };
  for (size_t l = 0; l < nodes_.size(); ++l) {
    const int fwd_from = l ? fwd_mark_[l - 1] : 0;
    const int bwd_from = l + 1 < nodes_.size() ? bwd_mark_[l + 1] : bwd_start_mark_;
    const double f = be_.mark_seconds(fwd_mark_[l]) - be_.mark_seconds(fwd_from);
    const double b = be_.mark_seconds(bwd_mark_[l]) - be_.mark_seconds(bwd_from);
    timings_[l].fwd_s += f;
    timings_[l].bwd_s += b;
    spans_[l] = {at(fwd_from), at(bwd_from), f, b};
  }
}

void Network::forward_layer(int l, bool training, std::mt19937_64& rng) {
  const Layer& L = model_.layers[l];
  Node& n = nodes_[l];
  const float* x = input_of(l, 0);
  const size_t total = size_t(batch_) * size_t(n.out_elems);
  auto param = [&](int slot) -> const float* { return slot < 0 ? nullptr : params_.get() + slots_[slot].offset; };
  switch (L.kind) {
    case LayerKind::Conv2d: be_.conv2d_forward(n.conv, x, param(n.weight), param(n.bias), n.out); break;
    case LayerKind::Linear:
      be_.linear_forward(batch_, static_cast<int>(numel(L.in_shape)), static_cast<int>(n.out_elems), x, param(n.weight),
                         param(n.bias), n.out);
      break;
    case LayerKind::BatchNorm: {
      const int c = dim(L.in_shape, 0), hw = static_cast<int>(numel(L.in_shape) / c);
      float* mean = running_.get() + n.running;
      if (const int r = relu_after_[size_t(l)]; r >= 0) {
        float* y = nodes_[size_t(r)].out;
        if (training)
          be_.batchnorm_relu_forward_train(batch_, c, hw, x, param(n.weight), param(n.bias), y, n.save_mean,
                                           n.save_invstd, mean, mean + c, opt_.bn_momentum, opt_.bn_eps);
        else
          be_.batchnorm_relu_forward_eval(batch_, c, hw, x, param(n.weight), param(n.bias), y, mean, mean + c,
                                          opt_.bn_eps);
      } else if (training) {
        be_.batchnorm_forward_train(batch_, c, hw, x, param(n.weight), param(n.bias), n.out, n.save_mean,
                                    n.save_invstd, mean, mean + c, opt_.bn_momentum, opt_.bn_eps);
      } else {
        be_.batchnorm_forward_eval(batch_, c, hw, x, param(n.weight), param(n.bias), n.out, mean, mean + c, opt_.bn_eps);
      }
      break;
    }
    case LayerKind::ReLU:
      if (fused_into_[size_t(l)] < 0) be_.relu_forward(total, x, n.out);  // else the layer before ran it
      break;
    case LayerKind::MaxPool: be_.maxpool_forward(n.pool, x, n.out, n.argmax); break;
    case LayerKind::AvgPool: be_.avgpool_forward(n.pool, x, n.out); break;
    case LayerKind::AdaptiveAvgPool: be_.adaptive_avgpool_forward(n.pool, x, n.out); break;
    case LayerKind::Add:
      if (const int r = relu_after_[size_t(l)]; r >= 0)
        be_.add_relu_forward(total, x, input_of(l, 1), nodes_[size_t(r)].out);
      else
        be_.add_forward(total, x, input_of(l, 1), n.out);
      break;
    case LayerKind::Dropout: {
      // The mask is drawn on the host in sample order (the same mask on every backend for
      // a seed) and copied into the backend's memory.
      const float p = static_cast<float>(L.attrs.dropout);
      std::vector<float> mask(total, 1.0f);
      if (training && p > 0) {
        std::bernoulli_distribution keep(1.0 - p);
        for (size_t i = 0; i < total; ++i) mask[i] = keep(rng) ? 1.0f / (1.0f - p) : 0.0f;
      }
      be_.copy_in(n.mask, mask.data(), total);
      be_.dropout_forward(total, x, n.mask, n.out);
      break;
    }
    case LayerKind::Flatten: {
      const auto [c, hw] = channels_and_plane(L.in_shape);
      be_.flatten_forward(batch_, c, hw, x, n.out);
      break;
    }
    default: break;  // refused in the constructor
  }
}

bool Network::input_blocked() const {
  return model_.input_shape.size() == 3 && be_.blocked(dim(model_.input_shape, 0));
}

// A per-sample shape as channels and the rest: [c, h, w] -> (c, h w); [f] -> (f, 1).
std::pair<int, int> Network::channels_and_plane(const Shape& shape) {
  const int c = shape.empty() ? 1 : static_cast<int>(shape[0]);
  return {c, static_cast<int>(numel(shape) / std::max(c, 1))};
}

bool Network::stored_in_precision() const {
  if (!be_.reads_host_memory()) throw RunError("stored_in_precision: the backend's memory is not the host's");
  for (const Node& n : nodes_)
    for (const float* p : {static_cast<const float*>(n.out), static_cast<const float*>(n.dout)})
      for (int64_t i = 0; p && i < int64_t(batch_) * n.out_elems; ++i)
        if (std::bit_cast<uint32_t>(round_to(opt_.precision, p[i])) != std::bit_cast<uint32_t>(p[i])) return false;
  return true;
}

const float* Network::logits() const { return nodes_.back().out; }
void Network::read_logits(std::vector<float>& host) const {
  host.resize(size_t(batch_) * size_t(classes()));
  be_.read_activation(host.data(), logits(), host.size());
}
int Network::fused_relus() const {
  return int(std::count_if(relu_after_.begin(), relu_after_.end(), [](int r) { return r >= 0; }));
}
int Network::classes() const { return static_cast<int>(nodes_.back().out_elems); }

double Network::loss(const int32_t* labels, float smoothing, int* correct) {
  return be_.softmax_xent(batch_, classes(), logits(), labels, smoothing, 1.0f, dlogits_, correct);
}

double Network::backward(const int32_t* labels, float smoothing, float loss_scale, int* correct,
                         const std::function<void(int)>& on_ready) {
  // Gradients accumulate over a node's consumers, so each starts at zero: zeroed just
  // before its first consumer's backward (while the buffer is about to be used, so the
  // zeros are still in cache), not all at once up front. dlogits is written whole below.
  std::fill(dout_ready_.begin(), dout_ready_.end(), 0);
  dout_ready_.back() = 1;
  // dlogits carries the loss scale, so every gradient below is scaled (and can overflow
  // FP16, which the loss scaler detects).
  const double value = be_.softmax_xent(batch_, classes(), logits(), labels, smoothing, loss_scale, dlogits_, correct);
  if (!on_ready && run_as_graph(bwd_graph_, bwd_warm_, [&] { backward_layers({}); })) return value;
  backward_layers(on_ready);
  return value;
}

void Network::backward_layers(const std::function<void(int)>& on_ready) {
  const bool marks = be_.timed_on_device() && !in_graph_;
  if (marks) bwd_start_mark_ = be_.mark();
  for (int l = static_cast<int>(nodes_.size()) - 1; l >= 0; --l) {
    auto t0 = Clock::now();
    zero_dout_once(l);  // an output nothing consumed
    // All consumers of this layer's output have run: its gradient is complete and is
    // stored in half precision from here on.
    if (!exact_dout_[l] && !half_storage_)
      be_.round(opt_.precision, nodes_[l].dout, size_t(batch_) * size_t(nodes_[l].out_elems));
    backward_layer(l);
    const Node& n = nodes_[l];
    for (int slot : {n.weight, n.bias})
      if (slot >= 0) be_.round(opt_.precision, grads_.get() + slots_[slot].offset, size_t(slots_[slot].numel));
    if (in_graph_) continue;  // recorded: nothing runs yet, nothing is timed
    ++timings_[l].calls;
    if (marks) {
      bwd_mark_[l] = be_.mark();
      if (opt_.host_reads_gradients) be_.synchronize();  // its gradients readable by the host
    } else {
      be_.synchronize();  // the layer's time, and its gradients readable by the host
      const double d = since(t0);
      timings_[l].bwd_s += d;
      spans_[l].bwd_start = t0;
      spans_[l].bwd_s = d;
    }
    if (on_ready) on_ready(ready_after_[l]);
  }
  if (marks) {
    be_.synchronize();
    read_marks();
  }
}

void Network::zero_dout_once(int l) {
  if (l < 0 || dout_ready_[size_t(l)]) return;
  be_.zero_activation(nodes_[l].dout, size_t(batch_) * size_t(nodes_[l].out_elems));
  dout_ready_[size_t(l)] = 1;
}

bool Network::first_write(int l, int k) {
  const int src = model_.layers[l].inputs[k];
  if (src < 0 || dout_ready_[size_t(src)]) return false;
  dout_ready_[size_t(src)] = 1;
  return true;
}

void Network::backward_layer(int l) {
  const Layer& L = model_.layers[l];
  // The first consumer of a tensor writes its gradient (the *_set calls); later ones add.
  // Layers without a writing variant get a zeroed gradient to add to.
  const bool set = first_write(l, 0);
  const bool writes = L.kind == LayerKind::Conv2d || L.kind == LayerKind::BatchNorm || L.kind == LayerKind::ReLU ||
                      L.kind == LayerKind::Add || L.kind == LayerKind::Flatten;
  if (set && !writes) be_.zero_activation(grad_of_input(l, 0), size_t(batch_) * size_t(numel(L.in_shape)));
  for (size_t k = 1; k < L.inputs.size(); ++k) zero_dout_once(L.inputs[k]);
  Node& n = nodes_[l];
  const float* x = input_of(l, 0);
  float* dx = grad_of_input(l, 0);
  const size_t total = size_t(batch_) * size_t(n.out_elems);
  auto param = [&](int slot) -> const float* { return slot < 0 ? nullptr : params_.get() + slots_[slot].offset; };
  auto grad = [&](int slot) -> float* { return slot < 0 ? nullptr : grads_.get() + slots_[slot].offset; };
  switch (L.kind) {
    case LayerKind::Conv2d:
      if (set)
        be_.conv2d_backward_set(n.conv, x, param(n.weight), n.dout, dx, grad(n.weight), grad(n.bias));
      else
        be_.conv2d_backward(n.conv, x, param(n.weight), n.dout, dx, grad(n.weight), grad(n.bias));
      break;
    case LayerKind::Linear:
      be_.linear_backward(batch_, static_cast<int>(numel(L.in_shape)), static_cast<int>(n.out_elems), x,
                          param(n.weight), n.dout, dx, grad(n.weight), grad(n.bias));
      break;
    case LayerKind::BatchNorm: {
      const int c = dim(L.in_shape, 0), hw = static_cast<int>(numel(L.in_shape) / c);
      const bool discarded = !dx;  // BatchNorm on the model input: its gradient is not kept
      if (discarded) dx = discard_.get();
      if (const int r = relu_after_[size_t(l)]; r >= 0)  // the ReLU's gradient, masked by its output
        be_.batchnorm_relu_backward(batch_, c, hw, x, param(n.weight), nodes_[size_t(r)].out, nodes_[size_t(r)].dout,
                                    n.save_mean, n.save_invstd, dx, grad(n.weight), grad(n.bias), !(set || discarded));
      else if (set || discarded)
        be_.batchnorm_backward_set(batch_, c, hw, x, param(n.weight), n.dout, n.save_mean, n.save_invstd, dx,
                                   grad(n.weight), grad(n.bias));
      else
        be_.batchnorm_backward(batch_, c, hw, x, param(n.weight), n.dout, n.save_mean, n.save_invstd, dx,
                               grad(n.weight), grad(n.bias));
      break;
    }
    case LayerKind::ReLU:
      if (fused_into_[size_t(l)] >= 0) break;  // the backward of the layer before applies it
      if (dx && set) be_.relu_backward_set(total, n.out, n.dout, dx);
      else if (dx) be_.relu_backward(total, n.out, n.dout, dx);
      break;
    case LayerKind::MaxPool: if (dx) be_.maxpool_backward(n.pool, n.dout, n.argmax, dx); break;
    case LayerKind::AvgPool: if (dx) be_.avgpool_backward(n.pool, n.dout, dx); break;
    case LayerKind::AdaptiveAvgPool: if (dx) be_.adaptive_avgpool_backward(n.pool, n.dout, dx); break;
    case LayerKind::Add:
      if (const int r = relu_after_[size_t(l)]; r >= 0) {  // the ReLU's gradient, masked by its output
        be_.add_relu_backward(total, nodes_[size_t(r)].out, nodes_[size_t(r)].dout, dx, set, grad_of_input(l, 1));
        break;
      }
      if (dx && set) be_.assign(total, n.dout, dx);
      else if (dx) be_.accumulate(total, n.dout, dx);
      if (float* dx2 = grad_of_input(l, 1)) be_.accumulate(total, n.dout, dx2);
      break;
    case LayerKind::Dropout: if (dx) be_.dropout_backward(total, n.dout, n.mask, dx); break;
    case LayerKind::Flatten:
      if (dx) {
        const auto [c, hw] = channels_and_plane(L.in_shape);
        be_.flatten_backward(batch_, c, hw, n.dout, dx, !set);
      }
      break;
    default: break;
  }
}

void Network::reset_timings() {
  for (auto& t : timings_) t = {};
}

}  // namespace fuseplan::exec
