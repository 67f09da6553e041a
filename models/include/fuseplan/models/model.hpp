// The Model contract: ordered layers (forward order) with shapes, parameter tensors and
// per-sample FLOPs. Gradient order is the reverse of the forward tensor order.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fuseplan {

using Shape = std::vector<int64_t>;  // per sample, no batch dimension
int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);

enum class LayerKind {
  Conv2d, BatchNorm, Linear, MaxPool, AvgPool, AdaptiveAvgPool, ReLU, Add, Dropout,
  Embedding, LayerNorm, Attention, GELU, Tanh, Flatten, TokenSelect, Custom
};
inline constexpr int kLayerKindCount = 17;
std::string_view layer_kind_name(LayerKind k);
std::optional<LayerKind> parse_layer_kind(std::string_view name);
std::string layer_kind_list();  // "conv2d, batchnorm, ..." for error messages

// Classes of layers that reach different fractions of a device's peak: convolutions by
// shape class (a square KxK kernel, K >= 3, with stride 1, which cuDNN runs with fewer
// multiplications than the direct FLOPs: Winograd for 3x3, FFT for 5x5 and larger; any
// other kernel larger than 1x1: strided, dilated, or rectangular such as Inception's 1x7; a 1x1
// kernel; grouped or depthwise; a stem with at most 4 input channels), GEMMs (linear
// layers), attention, normalisation, element-wise ops, pooling, embeddings, and the rest.
// A layer's class follows from its kind and shape (compute_class_of, costmodel/compute.hpp);
// a custom layer may name its own (LayerAttrs::compute_class). A cluster's device gives a
// class its own efficiencies (device.by_kind); one without a conv_kxk_s1 value prices those
// layers as conv_kxk.
enum class ComputeClass {
  ConvKxKs1, ConvKxK, Conv1x1, ConvGrouped, ConvStem, Gemm, Attention, Norm, Elementwise, Pool, Embedding, Other
};
inline constexpr int kComputeClassCount = 12;
std::string_view compute_class_name(ComputeClass k);  // "conv_kxk", "conv_1x1", ...
std::optional<ComputeClass> parse_compute_class(std::string_view name);
std::string compute_class_list();  // "conv_kxk_s1, conv_kxk, ..." for error messages

// What optimizers must know about a tensor: LARS and weight decay skip norms and biases.
enum class TensorRole { Weight, Bias, NormScale, NormShift, Embedding };
std::string_view tensor_role_name(TensorRole r);
std::optional<TensorRole> parse_tensor_role(std::string_view name);
bool role_skips_decay(TensorRole r);

struct ParamTensor {
  std::string name;   // framework name, e.g. "layer1.0.conv1.weight"
  Shape shape;        // framework layout (torchvision / Hugging Face)
  int64_t numel = 0;
  int layer = 0;      // index of the owning layer
  TensorRole role = TensorRole::Weight;
  // Held but not trained (PyTorch's requires_grad off, a frozen backbone in fine-tuning):
  // no gradient, no allreduce, no optimizer state. Only a model file's tensors carry it
  // while being read; a Model keeps such tensors apart, in Model::frozen.
  bool frozen = false;
};

// A frozen parameter, with its place among its layer's parameters in the model file.
struct FrozenTensor {
  ParamTensor tensor;
  int slot = 0;
};

// Hyper-parameters a layer needs to be executed; zero where not applicable. `kernel`,
// `stride`, `padding` and `dilation` are the window's height (and width, when square); a
// conv2d with a rectangular window (Inception's 1x7 and 7x1) sets the width's own, else
// they stay -1. A dilated conv2d (DeepLab's atrous convolutions) spaces its kernel's taps
// `dilation` apart.
// A window's height and width: a conv2d with a rectangular kernel, stride or padding.
struct Hw {
  int h, w;
};

// How an attention layer's kernels run (LayerAttrs::attention):
// - Fused: one kernel (flash attention, PyTorch 2's scaled_dot_product_attention) moves
//   only q, k, v and the output;
// - Eager: its scores (batch x heads x S x S) are materialised by the first product and
//   read and written by each step of the scale, mask, softmax and dropout chain, as
//   2019-2022 BERT and GPT-2 code does;
// - FusedSoftmax: the scores are materialised, the scaling, mask and softmax run as one
//   kernel and the dropout as another (Megatron-LM's FusedScaleMaskSoftmax; XLA's fusions
//   of the same chain, split at the softmax's reductions, come to about as many passes).
enum class AttentionKernels { Fused, Eager, FusedSoftmax };

struct LayerAttrs {
  int kernel = 0, stride = 1, padding = 0, groups = 1, dilation = 1;
  int kernel_w = -1, stride_w = -1, padding_w = -1, dilation_w = -1;
  // The window: the heights, and the widths only where one differs from its height, so
  // that a square window compares equal however it was given.
  void set_window(Hw k, Hw s, Hw p, Hw d) {
    kernel = k.h;
    stride = s.h;
    padding = p.h;
    dilation = d.h;
    if (k.w != k.h || s.w != s.h || p.w != p.h || d.w != d.h) {
      kernel_w = k.w;
      stride_w = s.w;
      padding_w = p.w;
      dilation_w = d.w;
    }
  }
  int kernel_width() const { return kernel_w < 0 ? kernel : kernel_w; }
  int stride_width() const { return stride_w < 0 ? stride : stride_w; }
  int padding_width() const { return padding_w < 0 ? padding : padding_w; }
  int dilation_width() const { return dilation_w < 0 ? dilation : dilation_w; }
  bool square() const {
    return kernel_width() == kernel && stride_width() == stride && padding_width() == padding &&
           dilation_width() == dilation;
  }
  bool dilated() const { return dilation != 1 || dilation_width() != 1; }
  int heads = 0;
  double dropout = 0;
  bool causal = false;
  // An attention layer's kernels (AttentionKernels).
  AttentionKernels attention = AttentionKernels::Fused;
  bool bias = false;
  // A custom layer's class of kernels, where its export knows it (a matrix product is a
  // gemm, a counted nn.LSTM too); none: `other`.
  std::optional<ComputeClass> compute_class;
  // A custom layer that is a view of its input (a reshape, transpose, slice): no kernel
  // runs and no memory moves, so it takes no time (a copy such as `contiguous` is no view).
  bool view = false;
  bool operator==(const LayerAttrs&) const = default;
};

// Measured per-sample times from a profile (optional; the roofline is used otherwise).
struct MeasuredTime {
  double fwd_us = 0, bwd_us = 0;  // per iteration at `batch`
  int batch = 1;
};

struct Layer {
  std::string name;
  LayerKind kind = LayerKind::Custom;
  std::vector<int> inputs;  // producer layer indices; -1 = the model input, -1 - k its input k (Model::extra_inputs)
  Shape in_shape, out_shape;
  LayerAttrs attrs;
  int first_tensor = 0, tensor_count = 0;  // range in Model::tensors
  double fwd_flops = 0, bwd_flops = 0;      // per sample; bwd_flops as if every parameter trained
  // With frozen parameters (Model::frozen): the share of bwd_flops autograd still runs
  // (the weights' gradients where they train, the input's where a layer upstream trains;
  // 0: no backward at all), and the frozen parameter elements the layer reads. Derived
  // when a model file is read, not written.
  double backward_share = 1;
  int64_t frozen_elems = 0;
  int64_t activation_elems = 0;              // elements this layer stores per sample
  std::optional<MeasuredTime> measured;
};

// A model's second and later inputs (an attention mask, token types), as a model file
// names them; per sample, no batch dimension.
struct ModelInput {
  std::string name;
  Shape shape;
  bool operator==(const ModelInput&) const = default;
};

struct Model {
  std::string name;
  std::string file;  // the .json it was read from; empty for a zoo model
  Shape input_shape;                     // the first input (layer input -1)
  std::vector<ModelInput> extra_inputs;  // input k >= 1 is extra_inputs[k - 1] (layer input -1 - k)
  std::vector<Layer> layers;
  std::vector<ParamTensor> tensors;  // forward order: the tensors training updates (their gradients are allreduced)
  std::vector<FrozenTensor> frozen;  // parameters held but not trained, in forward order (none in the zoo)
  // Measured optimizer step (all parameters; it does not depend on the batch), from a
  // profile's optional `optimizer_us`.
  std::optional<double> measured_optimizer_us;

  // The shape of model input `ref` as layers refer to it (-1, -2, ...); throws on no such input.
  const Shape& input_shape_of(int ref) const;
  int64_t param_count() const;   // trained parameter elements (the gradients)
  int64_t frozen_count() const;  // frozen parameter elements (held, read, not trained)
  double fwd_flops() const;  // per sample
  double bwd_flops() const;  // what backward runs: each layer's bwd_flops x backward_share
  int64_t activation_elems() const;
  // 64-bit FNV-1a over tensor names and shapes: a plan names the model it was made for.
  uint64_t fingerprint() const;
  std::string fingerprint_hex() const;
  // Tensor at backward position b (0 = the last forward tensor, whose gradient comes first).
  int tensor_at_backward(int b) const { return static_cast<int>(tensors.size()) - 1 - b; }
  // Gradient readiness, the one rule the predictor, the simulator and the executor share.
  // Backward runs the layers in reverse; step k runs layer L - 1 - k. For each backward
  // position: the step whose end writes its gradient.
  std::vector<int> ready_steps() const;
  // For each layer (forward index): once backward has run it, positions [0, n) are all
  // written (n = this layer's value): what a bucket ending at n waits for.
  std::vector<int> ready_prefix_after() const;
};

}  // namespace fuseplan
