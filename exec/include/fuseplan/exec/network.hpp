// A trainable network instantiated from a models/ Model (the planner's own definition),
// run layer by layer on a Backend. Parameters and gradients each live in one flat buffer
// laid out in gradient (backward) order, so a plan's bucket [begin, end) of backward
// positions is one contiguous range.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan::exec {

struct NetworkOptions {
  Precision precision = Precision::FP32;  // storage of parameters, activations, gradients
  uint64_t seed = 1;                      // weight initialisation and dropout masks
  float bn_momentum = 0.1f, bn_eps = 1e-5f;
  // Whether the host reads each layer's gradients as backward produces them (an exchange
  // through host memory, as the MPI executor's on a GPU backend): then every backward
  // layer waits for the device. Otherwise a backend timed on its device (GPUs) is timed by
  // its own marks and waited for once per forward and once per backward.
  bool host_reads_gradients = true;
  // A BatchNorm or an add whose only consumer is a ReLU runs with it as one op where the
  // backend has it (Backend::fuses_relu): same results, one pass over the data less each
  // way. The pair's time is then the first layer's in the per-layer timings (the ReLU's
  // is about 0).
  bool fuse_relu = true;
  // Step graphs (Backend::supports_graphs): the training forward pass and the backward
  // pass after the loss run as recorded once on the second training step (the first
  // chooses algorithms and allocates), then replayed each step without the host issuing
  // each call. Not with dropout (its masks come from the host each step), gated layers or
  // a per-layer callback in backward; the per-layer timings are not kept.
  bool graphs = false;
};

// One parameter tensor's place in the flat buffers.
struct TensorSlot {
  std::string name;
  Shape shape;
  TensorRole role = TensorRole::Weight;
  int layer = 0;
  int64_t offset = 0, numel = 0;  // in elements, in the flat buffers
};

// A layer's last forward and backward call, on the steady clock (for timelines).
struct LayerSpan {
  std::chrono::steady_clock::time_point fwd_start, bwd_start;
  double fwd_s = 0, bwd_s = 0;
};

struct LayerTiming {
  double fwd_s = 0, bwd_s = 0;  // summed over calls
  int64_t calls = 0;
};

class Network {
 public:
  // Throws InputError for a layer kind the trainer cannot run.
  Network(const Model& m, int batch, Backend& be, const NetworkOptions& opt = {});
  ~Network();  // out of line: Node is defined in network.cpp
  Network(const Network&) = delete;
  Network& operator=(const Network&) = delete;

  const Model& model() const { return model_; }
  Backend& backend() const { return be_; }
  int batch() const { return batch_; }
  Precision precision() const { return opt_.precision; }
  // Slots by backward position (0 = the last forward tensor, at offset 0).
  const std::vector<TensorSlot>& slots() const { return slots_; }
  int64_t param_count() const { return params_n_; }
  float* params() { return params_.get(); }  // working weights (half-rounded in mixed precision)
  const float* params() const { return params_.get(); }
  float* grads() { return grads_.get(); }
  // BatchNorm running statistics, all layers, in forward order (part of a checkpoint).
  std::span<float> running_stats() { return {running_.get(), running_n_}; }
  std::span<const float> running_stats() const { return {running_.get(), running_n_}; }

  // Refuses (InputError naming `what`) unless `other` has the same tensors (names,
  // shapes, order): the planner and the executor must never disagree about tensors.
  void check_same_tensors(const Model& other, const std::string& what) const;

  // Forward of a batch of `batch()` samples (input: batch x input_shape floats).
  // `dropout_rng` draws dropout masks in training. `before_layer(l)`, when given, runs
  // before layer l's forward starts (and outside its timing): the executor's per-layer
  // gate, which waits for the layer's parameters and updates them.
  void forward(const float* input, bool training, std::mt19937_64& dropout_rng,
               const std::function<void(int)>& before_layer = {});
  // The same in two parts, so that the executor can time them apart: the input brought
  // into the backend (its memory, layout and storage precision; issued, not waited for),
  // then the forward pass of it.
  void load_input(const float* input);
  void forward_loaded(bool training, std::mt19937_64& dropout_rng, const std::function<void(int)>& before_layer = {});
  // Starts copying a later batch into the backend (Backend::copy_in_ahead) where the
  // backend does not read host memory; `input` stays valid and unchanged until it is
  // passed to load_input, which then waits for the copy instead of making one.
  void prefetch_input(const float* input);
  // Every layer output and gradient of the last step holds a value of the storage
  // precision (FP16 / BF16 grid; always true in FP32): the check that skipping the
  // rounding where an op cannot leave the grid loses nothing. Host-memory backends only.
  bool stored_in_precision() const;
  // The logits of the last forward pass, [batch, classes]: in the backend's memory (16-bit
  // values where the backend stores activations in half precision), and as FP32 values in
  // host memory.
  const float* logits() const;
  void read_logits(std::vector<float>& host) const;
  // How many BatchNorm + ReLU and add + ReLU pairs run as one op (NetworkOptions::fuse_relu).
  int fused_relus() const;
  int classes() const;
  // Loss of the last forward against `labels`, and backward: gradients of every
  // parameter, multiplied by `loss_scale`, into grads(). After each layer's backward
  // `on_ready(backward positions complete)` is called (the executor starts allreduces).
  double backward(const int32_t* labels, float smoothing, float loss_scale, int* correct,
                  const std::function<void(int)>& on_ready = {});
  // Loss and accuracy only (evaluation).
  double loss(const int32_t* labels, float smoothing, int* correct);

  const std::vector<LayerTiming>& timings() const { return timings_; }
  const std::vector<LayerSpan>& last_spans() const { return spans_; }
  void reset_timings();

 private:
  struct Node;
  void init_weights();
  void forward_layer(int l, bool training, std::mt19937_64& rng);
  void backward_layer(int l);
  void zero_dout_once(int l);  // zeroes node l's gradient unless done this backward
  bool input_blocked() const;  // the model input is brought into the backend's blocked layout
  size_t input_elems() const { return size_t(batch_) * size_t(numel(model_.input_shape)); }  // one batch's input
  static std::pair<int, int> channels_and_plane(const Shape& shape);
  bool first_write(int l, int k);  // layer l is input k's first consumer in this backward (marks it)
  const float* input_of(int l, int k) const;
  float* grad_of_input(int l, int k);

  Model model_;
  int batch_;
  Backend& be_;
  NetworkOptions opt_;
  std::vector<TensorSlot> slots_;
  std::vector<int> slot_of_tensor_;  // forward tensor index -> backward position
  int64_t params_n_ = 0;
  DeviceBuffer params_, grads_;
  std::vector<Node> nodes_;
  DeviceBuffer running_;
  size_t running_n_ = 0;
  DeviceBuffer input_buf_;  // the input in the backend's memory (none where it reads host memory)
  DeviceBuffer ahead_buf_;  // a later batch copied ahead, FP32 NCHW (prefetch_input)
  const float* ahead_of_ = nullptr;  // the host batch ahead_buf_ is (being) copied from
  const float* input_ = nullptr;
  float* dlogits_ = nullptr;
  std::vector<int32_t> labels_;
  std::vector<LayerTiming> timings_;
  std::vector<LayerSpan> spans_;
  // Device-timed backends: the mark ending each layer's forward and backward, the one
  // starting backward, and the host time of mark 0 (the forward's start).
  std::vector<int> fwd_mark_, bwd_mark_;
  int bwd_start_mark_ = 0;
  std::chrono::steady_clock::time_point marks_origin_;
  void read_marks();  // timings and spans of the step from the marks (after a synchronize)
  std::vector<int> ready_after_;  // backward positions complete after layer l's backward
  std::vector<char> exact_out_, exact_dout_;  // per node: its output / gradient needs no half-precision rounding
  // A BatchNorm or add run fused with the ReLU after it: relu_after_[layer] = relu,
  // fused_into_[relu] = layer; -1 elsewhere.
  std::vector<int> relu_after_, fused_into_;
  std::vector<char> dout_ready_;  // per node: its gradient zeroed (or written) in this backward
  // The backend stores activations in the network's half precision (16-bit elements):
  // nothing to round, and they are zeroed and read through its activation calls.
  bool half_storage_ = false;
  DeviceBuffer discard_;  // the gradient of a BatchNorm on the model input (discarded)
  // Step graphs (NetworkOptions::graphs): the backend's numbers of the recorded training
  // forward and backward (-1 until recorded), and whether each has run once unrecorded.
  int fwd_graph_ = -1, bwd_graph_ = -1;
  bool fwd_warm_ = false, bwd_warm_ = false, in_graph_ = false;
  // Runs `layers` as the step graph in `graph` (recorded once `warm`, then replayed);
  // false where it ran the layers itself (graphs off, or the first time).
  bool run_as_graph(int& graph, bool& warm, const std::function<void()>& layers);
  void forward_layers(bool training, std::mt19937_64& rng, const std::function<void(int)>& before_layer);
  void backward_layers(const std::function<void(int)>& on_ready);
};

}  // namespace fuseplan::exec
