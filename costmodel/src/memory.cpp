#include "fuseplan/costmodel/memory.hpp"

#include <cmath>
#include <cstdio>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {
constexpr double kGiB = 1024.0 * 1024 * 1024;

std::string gib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, bytes < 10 * kGiB ? "%.1f" : "%.0f", bytes / kGiB);
  return b;
}
}  // namespace

MemoryEstimate estimate_memory(const Model& m, int batch_per_gpu, Precision compute, Precision transfer) {
  const double params = double(m.param_count());
  MemoryEstimate e;
  e.weights = (params + double(m.frozen_count())) * bytes_per_element(compute);  // frozen ones too
  e.gradients = params * bytes_per_element(compute);
  e.fusion_buffers = params * bytes_per_element(transfer);
  e.optimizer = params * (4 + 4);  // FP32 master weights and momenta
  e.activations = double(m.activation_elems()) * double(batch_per_gpu) * bytes_per_element(compute);
  return e;
}

std::string check_memory(const Model& m, const Cluster& c, int batch_per_gpu, Precision compute, Precision transfer,
                         const std::string& flag) {
  if (!(c.device.mem_GiB > 0)) return "";
  const double have = c.device.mem_GiB * kGiB;
  const MemoryEstimate e = estimate_memory(m, batch_per_gpu, compute, transfer);
  const std::string device = c.device.name.empty() ? "a GPU of " + c.name : c.device.name + " (" + c.name + ")";
  if (e.states() > have)
    throw InputError(flag + ": " + m.name + " does not fit one GPU: its weights, gradients, fusion buffers and " +
                     "optimizer state need " + gib(e.states()) + " GiB per replica, " + device + " has " +
                     gib(have) + " GiB (data parallelism replicates them; no batch fits)");
  if (e.total() <= have) return "";
  const double per_sample = e.activations / batch_per_gpu;
  const long fits = per_sample > 0 ? long(std::floor((have - e.states()) / per_sample)) : 0;
  return "warning: " + m.name + " at batch " + std::to_string(batch_per_gpu) + " per GPU needs about " +
         gib(e.total()) + " GiB per GPU (" + gib(e.states()) + " GiB of weights, gradients, buffers and optimizer " +
         "state, " + gib(e.activations) + " GiB of activations at " + std::string(precision_name(compute)) + "); " +
         device + " has " + gib(have) + " GiB. " +
         (fits >= 1 ? "Batch " + std::to_string(fits) + " per GPU fits; " : "Not even batch 1 fits; ") +
         "activation checkpointing would need less. Predicted as asked.";
}

}  // namespace fuseplan
