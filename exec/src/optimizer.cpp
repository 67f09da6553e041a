#include "fuseplan/exec/optimizer.hpp"

#include <algorithm>
#include <cmath>

#include "fuseplan/exec/half.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "lars") return OptimizerKind::Lars;
  if (s == "sgd") return OptimizerKind::Sgd;
  throw InputError("--optimizer: unknown optimizer '" + s + "' (valid: lars, sgd)");
}

Optimizer::Optimizer(const Network& net, const float* initial_params, const OptimizerOptions& opt)
    : opt_(opt),
      masters_(initial_params, initial_params + net.param_count()),
      momenta_(size_t(net.param_count()), 0.0f) {
  if (!(opt.lr > 0)) throw InputError("--lr: must be > 0");
  if (opt.momentum < 0 || opt.momentum >= 1) throw InputError("--momentum: must be in [0, 1)");
  if (opt.weight_decay < 0) throw InputError("--weight-decay: must be >= 0");
  if (!(opt.trust > 0)) throw InputError("--lars-trust: must be > 0");
  if (opt.total_steps < 1 || opt.warmup_steps < 0) throw InputError("--epochs: the schedule needs at least one step");
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
  const double lr = lr_at(step), m = opt_.momentum, wd = opt_.weight_decay;
  const double inv = 1.0 / double(loss_scale);
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t k = 0; k < slots_.size(); ++k) {
    const Slot& s = slots_[k];
    float* w = masters_.data() + s.offset;
    float* v = momenta_.data() + s.offset;
    const float* g = grads + s.offset;
    double rate = lr, decay = s.plain ? 0.0 : wd;
    if (opt_.kind == OptimizerKind::Lars && !s.plain) {
      // Local rate eta ||w|| / (||g|| + wd ||w||), on the unscaled gradient.
      double ww = 0, gg = 0;
      for (int64_t i = 0; i < s.numel; ++i) {
        ww += double(w[i]) * w[i];
        gg += double(g[i]) * g[i];
      }
      const double wn = std::sqrt(ww), gn = std::sqrt(gg) * inv;
      const double local = (wn > 0 && gn > 0) ? opt_.trust * wn / (gn + wd * wn + opt_.eps) : 1.0;
      local_rate_[k] = local;
      rate = lr * local;
    }
    for (int64_t i = 0; i < s.numel; ++i) {
      const double grad = double(g[i]) * inv + decay * w[i];
      v[i] = float(m * v[i] + rate * grad);
      w[i] -= v[i];
      params[s.offset + i] = round_to(working, w[i]);
    }
  }
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

bool has_overflow(const float* x, int64_t n) {
  bool bad = false;
#pragma omp parallel for reduction(|| : bad) schedule(static)
  for (int64_t i = 0; i < n; ++i) bad = bad || !std::isfinite(x[i]);
  return bad;
}

}  // namespace fuseplan::exec
