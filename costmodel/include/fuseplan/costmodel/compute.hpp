// Compute model: per-layer forward/backward time from a measured profile when the model
// carries one, else a roofline: max(FLOPs / (peak x efficiency), bytes / (memory
// bandwidth x efficiency)) + a kernel overhead, scaled by batch per GPU and precision.
// The efficiencies are the layer class's where the cluster gives them (device.by_kind),
// else the device's: with no by_kind, one roofline for every layer. The cluster's
// compute_scale (a framework's speed) multiplies the roofline's times and the optimizer's.
#pragma once
#include <optional>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan {

struct LayerTime {
  double fwd_s = 0, bwd_s = 0;
  bool measured = false;
  bool memory_bound = false;  // the roofline's forward priced by bytes, not FLOPs
};

// The class whose efficiencies price a layer (DeviceSpec::by_kind).
ComputeClass compute_class_of(const Layer& l);
// Layer `layer`'s roofline time at `batch` (whether or not it carries a measured time), as
// the device's constants price it: ComputeModel scales it by the cluster's compute_scale.
LayerTime roofline_time(const Model& m, size_t layer, const Cluster& c, int batch, Precision p);

// A measured single-GPU training rate in place of the roofline's speed: what one GPU of
// `c` trains, in samples per second, with this model, batch, precision and training loop
// (`a`'s micro-batches per optimizer step, `o`'s optimizer step; its whole step:
// forward, backward and its share of the optimizer). Every layer's forward and backward
// time and the optimizer step become measured times (as a profile sets them, so every
// runner prices them), the roofline's times the one factor that makes one GPU train
// `samples_per_s`. Returns that factor (the measured step over the roofline's). The input
// pipeline (Cluster::input_samples_per_s_per_gpu) stays as it is. InputError naming
// `where` unless the rate is positive and finite, the model carries no measured time
// already (a profile) and the input pipeline can feed the rate.
double set_measured_rate(Model& m, const Cluster& c, int batch, Precision p, const Accumulation& a,
                         const OptimizerStep& o, double samples_per_s, const std::string& where);
// The largest rate set_measured_rate takes (a million samples per second per GPU).
inline constexpr double kMaxMeasuredRate = 1e6;

// One GPU's training time per micro-batch, as a run on one GPU pays it: forward, backward,
// its share of the optimizer step (`o` once every `a.steps` micro-batches) and the wait for
// an input pipeline slower than those (the predictor's single_gpu_iteration_s).
double single_gpu_step_s(const Model& m, const Cluster& c, int batch, Precision p, const Accumulation& a,
                         const OptimizerStep& o);

class ComputeModel {
 public:
  ComputeModel(const Model& m, const Cluster& c, int batch_per_gpu, Precision compute);

  const std::vector<LayerTime>& layers() const { return layers_; }
  double forward_s() const { return forward_s_; }
  double backward_s() const { return backward_s_; }
  // The optimizer step `o` (OptimizerStep): its bytes per trained parameter at the
  // device's memory bandwidth, and per tensor its kernels at the device's kernel overhead.
  // A measured step (the model's) is used as is.
  double optimizer_s(const OptimizerStep& o = {}) const;
  // Extra wait per iteration when the input pipeline is slower than compute.
  double data_wait_s(double busy_s) const;
  // One micro-batch on one GPU: forward, backward and the optimizer step's share (`o` once
  // every `steps` micro-batches), before any wait for the input pipeline.
  double single_gpu_busy_s(const OptimizerStep& o, int steps) const {
    return forward_s_ + backward_s_ + optimizer_s(o) / steps;
  }
  int measured_layers() const { return measured_; }

 private:
  std::vector<LayerTime> layers_;
  double forward_s_ = 0, backward_s_ = 0;
  std::optional<double> measured_optimizer_s_;
  // The optimizer step's cost per byte it moves per parameter (every trained parameter at
  // the memory bandwidth) and per kernel it launches per tensor (every trained tensor).
  double optimizer_s_per_byte_ = 0, optimizer_s_per_kernel_ = 0;
  double loader_s_ = 0;
  int measured_ = 0;
};

// The compute model's layer times summed per class (ClassCompute), in ComputeClass order;
// classes without a layer that takes time are left out. The sums are the model's
// forward_s() and backward_s().
std::vector<ClassCompute> compute_by_class(const Model& m, const ComputeModel& c, int batch_per_gpu);

}  // namespace fuseplan
