// The optimizer of the 4-minute paper: FP32 master weights, LARS (layer-wise adaptive
// rate scaling) with momentum on unscaled gradients, no LARS and no weight decay for
// BatchNorm parameters and biases; linear warm-up, then polynomial decay (power 2);
// dynamic loss scaling that skips the whole step on overflow. Plain SGD with momentum
// for comparison.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/exec/network.hpp"

namespace fuseplan::exec {

enum class OptimizerKind { Lars, Sgd };
OptimizerKind parse_optimizer(const std::string& s);  // InputError naming --optimizer

struct OptimizerOptions {
  OptimizerKind kind = OptimizerKind::Lars;
  double lr = 0.1;             // peak learning rate, reached at the end of warm-up
  double momentum = 0.9;
  double weight_decay = 5e-4;  // weights only; BatchNorm parameters and biases get none
  double trust = 0.001;        // LARS trust coefficient (eta)
  double eps = 1e-9;           // LARS: added to the denominator
  int64_t warmup_steps = 0;    // linear warm-up from 0 to lr
  int64_t total_steps = 1;     // then lr (1 - progress)^power down to 0 at total_steps
  double power = 2;
};

class Optimizer {
 public:
  // Masters start as a copy of the network's (FP32) initial weights. Masters and momenta
  // live in the network's backend's memory and the update runs there
  // (Backend::optimizer_step).
  Optimizer(const Network& net, const float* initial_params, const OptimizerOptions& opt);

  double lr_at(int64_t step) const;
  // One update at `step` from grads (multiplied by loss_scale in backward): unscales in
  // FP32, updates masters and momenta, writes the masters rounded to the working
  // precision into `params`.
  void step(int64_t step, const float* grads, float loss_scale, float* params, Precision working);
  // The same update of the slots (backward positions) [first, end) only: per-layer
  // updates (the executor's per-layer gate). LARS is per slot, so updating every slot
  // once this way equals one step().
  void step(int64_t step, const float* grads, float loss_scale, float* params, Precision working, int first, int end);
  // A sharded step (ZeRO): this rank updates only the element ranges `shard` (sorted,
  // disjoint) of the flat buffers. LARS needs each tensor's norms over the whole tensor:
  // shard_sums gives this rank's part of every slot's sums of squares of the masters and
  // of the gradients (2 per slot, host memory), and step_shard takes them summed over the
  // ranks. Host-memory backends only.
  std::vector<double> shard_sums(const std::vector<std::pair<int64_t, int64_t>>& shard, const float* grads) const;
  void step_shard(int64_t step, const std::vector<std::pair<int64_t, int64_t>>& shard, const std::vector<double>& sums,
                  const float* grads, float loss_scale, float* params, Precision working);

  // Host code reads these after Backend::synchronize().
  std::span<float> masters() { return {masters_.get(), n_}; }
  std::span<float> momenta() { return {momenta_.get(), n_}; }
  std::span<const float> masters() const { return {masters_.get(), n_}; }
  std::span<const float> momenta() const { return {momenta_.get(), n_}; }
  const OptimizerOptions& options() const { return opt_; }
  // The last step's LARS local rate of slot `b` (1 where LARS does not apply).
  double local_rate(int slot) const { return local_rate_[size_t(slot)]; }

 private:
  OptimizerOptions opt_;
  Backend& be_;
  size_t n_;
  std::vector<Backend::OptimizerSlot> slots_;
  DeviceBuffer masters_, momenta_;
  std::vector<double> local_rate_;
};

// Dynamic loss scaling: start at 2^16, double after `window` good steps in a row, halve
// on overflow (and the step is skipped).
class LossScaler {
 public:
  explicit LossScaler(float initial = 65536.0f, int window = 2000) : scale_(initial), window_(window) {}
  float scale() const { return scale_; }
  int good_steps() const { return good_; }
  int64_t skipped() const { return skipped_; }
  // true = apply this step; false = overflow, skip it.
  bool update(bool overflow);
  void restore(float scale, int good, int64_t skipped) { scale_ = scale, good_ = good, skipped_ = skipped; }

 private:
  float scale_;
  int window_, good_ = 0;
  int64_t skipped_ = 0;
};

}  // namespace fuseplan::exec
