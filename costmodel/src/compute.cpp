// Roofline and measured-profile compute model.
#include "fuseplan/costmodel/compute.hpp"

#include <algorithm>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

namespace {
// Backward reads the forward's inputs and outputs, writes input gradients and reads the
// output gradients: about twice the forward traffic.
constexpr double kBackwardTrafficRatio = 2.0;
// Attention that materialises the scores, batch x heads x S x S (LayerAttrs::attention),
// reads and writes them between its two products. Eager, each step of the chain a kernel:
// forward the scaling, the mask, the softmax and the dropout, four reads and four writes,
// and the dropout's one-byte mask; backward the dropout's gradient (reading the mask), the
// softmax's (reading its output too) and the scaling's, four reads and three writes. A
// fused softmax: forward one kernel reads the scores and writes the probabilities, the
// dropout reads them and writes its output and mask (two reads, two writes); backward the
// dropout's gradient reads the incoming one and the mask and writes, the softmax's reads
// that and its output and writes the scores' gradient, the scaling folded in (three reads,
// two writes). The products' own reads and writes of the scores happen inside their
// kernels, priced with their FLOPs; a fused kernel (flash attention) moves none of these.
constexpr double kEagerForwardPasses = 8, kEagerBackwardPasses = 7, kDropoutMaskBytes = 1;
constexpr double kFusedSoftmaxForwardPasses = 4, kFusedSoftmaxBackwardPasses = 5;
}  // namespace

ComputeClass compute_class_of(const Layer& l) {
  if (l.attrs.compute_class) return *l.attrs.compute_class;  // a custom layer's own
  switch (l.kind) {
    case LayerKind::Conv2d:
      if (l.attrs.groups > 1) return ComputeClass::ConvGrouped;
      if (!l.in_shape.empty() && l.in_shape[0] <= 4) return ComputeClass::ConvStem;
      if (l.attrs.kernel == 1 && l.attrs.kernel_width() == 1) return ComputeClass::Conv1x1;
      if (l.attrs.kernel >= 3 && l.attrs.square() && l.attrs.stride == 1 && !l.attrs.dilated())
        return ComputeClass::ConvKxKs1;
      return ComputeClass::ConvKxK;
    case LayerKind::Linear: return ComputeClass::Gemm;
    case LayerKind::Attention: return ComputeClass::Attention;
    case LayerKind::BatchNorm:
    case LayerKind::LayerNorm: return ComputeClass::Norm;
    case LayerKind::ReLU:
    case LayerKind::Add:
    case LayerKind::Dropout:
    case LayerKind::GELU:
    case LayerKind::Tanh: return ComputeClass::Elementwise;
    case LayerKind::MaxPool:
    case LayerKind::AvgPool:
    case LayerKind::AdaptiveAvgPool: return ComputeClass::Pool;
    case LayerKind::Embedding:
    case LayerKind::TokenSelect: return ComputeClass::Embedding;
    case LayerKind::Flatten:
    case LayerKind::Custom: return ComputeClass::Other;
  }
  return ComputeClass::Other;
}

LayerTime roofline_time(const Model& m, size_t layer, const Cluster& c, int batch, Precision p) {
  const Layer& l = m.layers[layer];
  if (l.attrs.view) return {};  // no kernel, no memory moved
  const ComputeClass k = compute_class_of(l);
  const double flops = c.peak_flops(p) * c.device.compute_efficiency_of(k, p);
  const double bw = c.device.memory_Bps(k, p);
  const double eb = bytes_per_element(p);
  const double overhead = c.device.kernel_overhead_us * 1e-6;
  double in_elems = 0;
  for (int src : l.inputs) in_elems += src < 0 ? numel(m.input_shape_of(src)) : numel(m.layers[src].out_shape);
  if (l.inputs.empty()) in_elems = numel(l.in_shape);
  double params = 0;
  for (int i = 0; i < l.tensor_count; ++i) params += m.tensors[l.first_tensor + i].numel;
  params += double(l.frozen_elems);  // read in forward like any weight
  const double fwd_bytes = (in_elems + numel(l.out_shape)) * batch * eb + params * eb;
  LayerTime t;
  t.fwd_s = std::max(l.fwd_flops * batch / flops, fwd_bytes / bw) + overhead;
  double fwd_bytes_s = fwd_bytes / bw;
  // With frozen parameters only part of a layer's backward runs (backward_share), or none.
  const double share = l.backward_share;
  if (share > 0)
    t.bwd_s = share * std::max(l.bwd_flops * batch / flops, kBackwardTrafficRatio * fwd_bytes / bw) + overhead;
  if (l.kind == LayerKind::Attention && l.attrs.attention != AttentionKernels::Fused) {
    const bool eager = l.attrs.attention == AttentionKernels::Eager;
    const double fwd_passes = eager ? kEagerForwardPasses : kFusedSoftmaxForwardPasses;
    const double bwd_passes = eager ? kEagerBackwardPasses : kFusedSoftmaxBackwardPasses;
    const double scores = double(l.out_shape[0]) * double(l.out_shape[0]) * l.attrs.heads * batch;
    const double score_bytes_s = scores * (fwd_passes * eb + kDropoutMaskBytes) / bw;
    t.fwd_s += score_bytes_s;
    fwd_bytes_s += score_bytes_s;
    if (share > 0) t.bwd_s += share * scores * (bwd_passes * eb + kDropoutMaskBytes) / bw;
  }
  t.memory_bound = fwd_bytes_s > l.fwd_flops * batch / flops;
  return t;
}

ComputeModel::ComputeModel(const Model& m, const Cluster& c, int batch, Precision p) {
  if (batch < 1) throw InputError(field("batch_per_gpu") + ": must be >= 1 (got " + std::to_string(batch) + ")");
  const double bw = c.device.memory_Bps();
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    LayerTime t;
    if (l.measured) {
      // Measured at another batch size: scaled linearly (documented approximation).
      double scale = double(batch) / l.measured->batch;
      t = {l.measured->fwd_us * 1e-6 * scale, l.measured->bwd_us * 1e-6 * scale, true};
      ++measured_;
    } else {
      t = roofline_time(m, i, c, batch, p);
      t.fwd_s *= c.compute_scale;
      t.bwd_s *= c.compute_scale;
    }
    forward_s_ += t.fwd_s;
    backward_s_ += t.bwd_s;
    layers_.push_back(t);
  }
  // The optimizer touches every parameter once whatever the batch: a measured step is used as is.
  if (m.measured_optimizer_us) measured_optimizer_s_ = *m.measured_optimizer_us * 1e-6;
  optimizer_s_per_byte_ = c.compute_scale * double(m.param_count()) / bw;
  optimizer_s_per_kernel_ = c.compute_scale * double(m.tensors.size()) * c.device.kernel_overhead_us * 1e-6;
  if (c.input_samples_per_s_per_gpu > 0) loader_s_ = batch / c.input_samples_per_s_per_gpu;
}

std::vector<ClassCompute> compute_by_class(const Model& m, const ComputeModel& c, int batch_per_gpu) {
  std::vector<ClassCompute> all(kComputeClassCount);
  for (int i = 0; i < kComputeClassCount; ++i) all[size_t(i)].k = ComputeClass(i);
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const LayerTime& t = c.layers()[i];
    if (l.attrs.view && !t.measured) continue;  // no kernel, no time
    ClassCompute& k = all[size_t(compute_class_of(l))];
    ++k.layers;
    k.forward_s += t.fwd_s;
    k.backward_s += t.bwd_s;
    k.flops += (l.fwd_flops + l.backward_share * l.bwd_flops) * batch_per_gpu;
    k.measured += t.measured;
    k.memory_bound += !t.measured && t.memory_bound;
  }
  std::erase_if(all, [](const ClassCompute& k) { return k.layers == 0; });
  return all;
}

double ComputeModel::optimizer_s(const OptimizerStep& o) const {
  if (measured_optimizer_s_) return *measured_optimizer_s_;
  return o.bytes_per_param * optimizer_s_per_byte_ + o.kernels_per_tensor * optimizer_s_per_kernel_;
}

double ComputeModel::data_wait_s(double busy_s) const { return std::max(0.0, loader_s_ - busy_s); }

double single_gpu_step_s(const Model& m, const Cluster& c, int batch, Precision p, const Accumulation& a,
                         const OptimizerStep& o) {
  const ComputeModel compute(m, c, batch, p);
  const double busy = compute.single_gpu_busy_s(o, a.steps);
  return busy + compute.data_wait_s(busy);
}

double set_measured_rate(Model& m, const Cluster& c, int batch, Precision p, const Accumulation& a,
                         const OptimizerStep& o, double samples_per_s, const std::string& where) {
  if (!(samples_per_s > 0 && samples_per_s <= kMaxMeasuredRate))
    throw InputError(where + ": must be in (0, 1e6] samples/s per GPU (got " + formatted(samples_per_s, "%g") + ")");
  check_accumulation(a);
  for (const auto& l : m.layers)
    if (l.measured)
      throw InputError(where + ": model " + m.name + " carries measured layer times already (a profile); give one "
                       "or the other");
  if (m.measured_optimizer_us)
    throw InputError(where + ": model " + m.name + " carries a measured optimizer step already (a profile)");
  if (c.input_samples_per_s_per_gpu > 0 && samples_per_s > c.input_samples_per_s_per_gpu)
    throw InputError(where + ": " + formatted(samples_per_s, "%g") + " samples/s is more than cluster " + c.name +
                     "'s input pipeline feeds one GPU (input_samples_per_s_per_gpu " +
                     formatted(c.input_samples_per_s_per_gpu, "%g") + ")");
  const ComputeModel roofline(m, c, batch, p);
  // One micro-batch's share of the step, as the single-GPU run paid it.
  const double step_s = roofline.single_gpu_busy_s(o, a.steps);
  if (!(step_s > 0)) throw InputError(where + ": model " + m.name + " prices no compute on one GPU to scale");
  const double factor = (batch / samples_per_s) / step_s;
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const LayerTime& t = roofline.layers()[i];
    m.layers[i].measured = MeasuredTime{t.fwd_s * 1e6 * factor, t.bwd_s * 1e6 * factor, batch};
  }
  m.measured_optimizer_us = roofline.optimizer_s(o) * 1e6 * factor;
  return factor;
}

}  // namespace fuseplan
