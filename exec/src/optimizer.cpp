#include "fuseplan/exec/optimizer.hpp"

#include <algorithm>
#include <cmath>

#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "lars") return OptimizerKind::Lars;
  if (s == "sgd") return OptimizerKind::Sgd;
  throw InputError(field("optimizer") + ": unknown optimizer '" + s + "' (valid: lars, sgd)");
}

Optimizer::Optimizer(const Network& net, const float* initial_params, const OptimizerOptions& opt)
    : opt_(opt), be_(net.backend()), n_(size_t(net.param_count())) {
  if (!(opt.lr > 0)) throw InputError(field("optimizer.lr") + ": must be > 0");
  if (opt.momentum < 0 || opt.momentum >= 1) throw InputError(field("optimizer.momentum") + ": must be in [0, 1)");
  if (opt.weight_decay < 0) throw InputError(field("optimizer.weight_decay") + ": must be >= 0");
  if (!(opt.trust > 0)) throw InputError(field("optimizer.lars_trust") + ": must be > 0");
  if (opt.total_steps < 1 || opt.warmup_steps < 0) throw InputError(field("train.epochs") + ": the schedule needs at least one step");
  masters_ = DeviceBuffer(be_, std::max<size_t>(n_, 1));
  momenta_ = DeviceBuffer(be_, std::max<size_t>(n_, 1));
  be_.copy_in(masters_.get(), initial_params, n_);
  be_.zero(momenta_.get(), std::max<size_t>(n_, 1));
  for (const auto& s : net.slots())
    slots_.push_back({s.offset, s.numel, s.role == TensorRole::Bias || s.role == TensorRole::NormScale ||
                                             s.role == TensorRole::NormShift});
  local_rate_.assign(slots_.size(), 1.0);
}

double Optimizer::lr_at(int64_t step) const {
  if (step < opt_.warmup_steps) return opt_.lr * double(step + 1) / double(opt_.warmup_steps);
  const double span = double(std::max<int64_t>(1, opt_.total_steps - opt_.warmup_steps));
  const double progress = std::min(1.0, double(step - opt_.warmup_steps) / span);
  return opt_.lr * std::pow(1.0 - progress, opt_.power);
}

void Optimizer::step(int64_t step, const float* grads, float loss_scale, float* params, Precision working) {
  this->step(step, grads, loss_scale, params, working, 0, int(slots_.size()));
}

void Optimizer::step(int64_t step, const float* grads, float loss_scale, float* params, Precision working, int first,
                     int end) {
  if (first < 0 || end > int(slots_.size()) || first > end) throw RunError("optimizer: slots out of range");
  if (first == end) return;
  Backend::OptimizerStep o;
  o.lr = lr_at(step), o.momentum = opt_.momentum, o.weight_decay = opt_.weight_decay;
  o.trust = opt_.trust, o.eps = opt_.eps, o.inv_scale = 1.0 / double(loss_scale);
  o.lars = opt_.kind == OptimizerKind::Lars;
  o.working = working;
  if (first == 0 && end == int(slots_.size())) {
    be_.optimizer_step(slots_, o, masters_.get(), momenta_.get(), grads, params, local_rate_.data());
    return;
  }
  const std::vector<Backend::OptimizerSlot> some(slots_.begin() + first, slots_.begin() + end);
  be_.optimizer_step(some, o, masters_.get(), momenta_.get(), grads, params, local_rate_.data() + first);
}

namespace {
// Calls f(slot, first, end) for every part of a slot inside the shard's ranges.
template <class F>
void for_shard(const std::vector<Backend::OptimizerSlot>& slots, const std::vector<std::pair<int64_t, int64_t>>& shard,
               const F& f) {
  for (size_t k = 0; k < slots.size(); ++k)
    for (const auto& [first, end] : shard) {
      const int64_t lo = std::max(first, slots[k].offset), hi = std::min(end, slots[k].offset + slots[k].numel);
      if (lo < hi) f(k, lo, hi);
    }
}
}  // namespace

std::vector<double> Optimizer::shard_sums(const std::vector<std::pair<int64_t, int64_t>>& shard, const float* grads) const {
  if (!be_.reads_host_memory()) throw RunError("optimizer: a sharded step runs on host memory only");
  std::vector<double> sums(2 * slots_.size(), 0.0);
  const float* w = masters_.get();
  for_shard(slots_, shard, [&](size_t k, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      sums[2 * k] += double(w[i]) * w[i];
      sums[2 * k + 1] += double(grads[i]) * grads[i];
    }
  });
  return sums;
}

void Optimizer::step_shard(int64_t step, const std::vector<std::pair<int64_t, int64_t>>& shard,
                           const std::vector<double>& sums, const float* grads, float loss_scale, float* params,
                           Precision working) {
  if (sums.size() < 2 * slots_.size()) throw RunError("optimizer: the shard's sums do not cover every tensor");
  std::vector<Backend::OptimizerSlot> parts;
  std::vector<size_t> slot_of;
  for_shard(slots_, shard, [&](size_t k, int64_t lo, int64_t hi) {
    parts.push_back({lo, hi - lo, slots_[k].plain, sums[2 * k], sums[2 * k + 1]});
    slot_of.push_back(k);
  });
  Backend::OptimizerStep o;
  o.lr = lr_at(step), o.momentum = opt_.momentum, o.weight_decay = opt_.weight_decay;
  o.trust = opt_.trust, o.eps = opt_.eps, o.inv_scale = 1.0 / double(loss_scale);
  o.lars = opt_.kind == OptimizerKind::Lars;
  o.working = working;
  std::vector<double> rates(parts.size(), 1.0);
  if (!parts.empty()) be_.optimizer_step(parts, o, masters_.get(), momenta_.get(), grads, params, rates.data());
  for (size_t i = 0; i < parts.size(); ++i) local_rate_[slot_of[i]] = rates[i];
}

bool LossScaler::update(bool overflow) {
  if (overflow) {
    scale_ = std::max(1.0f, scale_ * 0.5f);
    good_ = 0;
    ++skipped_;
    return false;
  }
  if (++good_ >= window_) {
    scale_ = std::min(scale_ * 2.0f, 16777216.0f);  // 2^24: beyond it FP32 gradients lose range
    good_ = 0;
  }
  return true;
}

}  // namespace fuseplan::exec
