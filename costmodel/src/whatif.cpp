// What-if sweeps and inverse questions on top of the tuner and the predictor.
#include "fuseplan/costmodel/whatif.hpp"

#include "fuseplan/costmodel/compute.hpp"

#include "fuseplan/costmodel/scenario.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"
#include "fuseplan/models/model_json.hpp"

namespace fuseplan {

namespace {
std::string num(double v, const char* fmt = "%.4g") { return formatted(v, fmt); }
}  // namespace

WhatIf::WhatIf(Cluster base, WhatIfSettings settings) : base_(std::move(base)), settings_(std::move(settings)) {}

const Model& WhatIf::model(const std::string& name) const {
  for (const auto& [n, m] : models_)
    if (n == name) return m;
  Model m = load_model(name, settings_.model_options);
  if (!settings_.profile.empty()) apply_profile(m, settings_.profile);
  if (settings_.measured_rate > 0)
    set_measured_rate(m, base_, settings_.measured_batch, settings_.measured_precision, settings_.measured_loop,
                      settings_.tune.optimizer, settings_.measured_rate, field("measured_rate"));
  models_.emplace_back(name, std::move(m));
  return models_.back().second;
}

size_t WhatIf::count(const WhatIfAxes& a) const {
  return a.models.size() * a.gpus.size() * std::max<size_t>(1, a.inter_bw_Gbps.size()) * a.batch_per_gpu.size() *
         a.precisions.size() * a.algorithms.size() * a.strategies.size();
}

WhatIfRow WhatIf::evaluate(const WhatIfPoint& p) const {
  const Model& m = model(p.model);
  // A what-if may ask for more GPUs than the cluster file has: grown by whole nodes.
  Cluster c = grown_to(base_, p.gpus, field("gpus"));
  if (p.inter_bw_Gbps > 0) set_inter_bw(c, p.inter_bw_Gbps, field("whatif.inter_bw"));
  int batch = p.batch_per_gpu > 0 ? p.batch_per_gpu : default_batch_per_gpu(p.model);
  Tuner tuner(m, c, p.gpus, batch, p.precision, settings_.collective,
              settings_.goal ? settings_.goal(m) : training_goal(m));
  TuneOptions o = settings_.tune;
  o.strategy = p.strategy;
  o.algorithm = p.algorithm;
  if (settings_.transfer_follows_compute) o.transfer = p.precision;
  if (o.transfer == Precision::FP32) o.cast.reset();  // an FP32 point has nothing to cast
  TuneResult r = tuner.run(o);
  WhatIfRow row;
  row.point = p;
  row.point.batch_per_gpu = batch;
  row.point.inter_bw_Gbps = c.inter ? c.inter->nic_bw_Gbps : 0;
  row.buckets = static_cast<int>(r.plan.buckets.size());
  row.report = std::move(r.report);
  // A sweep reports every point: a model that does not fit is warned of, not refused;
  // so is a global batch past the literature's (check_setup, as predict and tune do).
  try {
    check_setup(m, c, p.gpus, batch, p.precision, o.transfer, field("gpus"), field("model") + " " + p.model, row.warnings);
  } catch (const InputError& e) {
    row.warnings.push_back("warning: " + e.text());
  }
  return row;
}

std::vector<WhatIfRow> WhatIf::sweep(const WhatIfAxes& a, const Progress& progress) const {
  for (const auto& name : a.models) model(name);  // refuse an unknown name before any work
  std::vector<WhatIfRow> rows;
  const size_t total = count(a);
  if (total > kMaxWhatIfPoints)
    throw InputError("the sweep has " + std::to_string(total) + " configurations (the product of its lists), more than " +
                     std::to_string(kMaxWhatIfPoints) + "; narrow a list");
  std::vector<double> bws = a.inter_bw_Gbps.empty() ? std::vector<double>{0} : a.inter_bw_Gbps;
  for (const auto& model_name : a.models)
    for (int g : a.gpus)
      for (double bw : bws)
        for (int b : a.batch_per_gpu)
          for (Precision pr : a.precisions)
            for (const auto& algo : a.algorithms)
              for (Strategy st : a.strategies) {
                rows.push_back(evaluate({model_name, g, bw, b, pr, algo, st}));
                if (progress) progress(rows.size(), total);
              }
  return rows;
}

double WhatIf::min_bandwidth_for(WhatIfPoint p, double target, const Progress& progress) const {
  if (!(target > 0 && target <= 1)) throw InputError(field("whatif.target_efficiency") + ": must be in (0, 1]");
  if (!base_.inter) throw InputError(field("whatif.target_efficiency") + ": cluster " + base_.name + " has no inter-node bandwidth to solve for");
  const double own = base_.inter->nic_bw_Gbps;
  auto eff = [&](double bw) {
    p.inter_bw_Gbps = bw;
    return evaluate(p).report.scaling_efficiency;
  };
  double hi = std::min(own * 1000, kMaxNicGbps), lo = std::max(own / 1000, kMinNicGbps);
  if (eff(hi) < target)
    throw InputError(field("whatif.target_efficiency") + " " + num(target) + " is unreachable: even " + num(hi, "%.0f") +
                     " Gbps per NIC gives " + num(eff(hi), "%.6f") +
                     " (compute, launch overheads or intra-node links limit it)");
  if (eff(lo) >= target) return lo;
  // Efficiency does not fall as bandwidth grows: bisect on a log scale to 0.1%.
  const int steps = static_cast<int>(std::ceil(std::log2(std::log(hi / lo) / std::log(1.001))));
  for (int s = 0; s < steps; ++s) {
    double mid = std::sqrt(lo * hi);
    (eff(mid) >= target ? hi : lo) = mid;
    if (progress) progress(s + 1, steps);
  }
  return hi;
}

WhatIfRow WhatIf::max_gpus_for(WhatIfPoint p, double target, const std::vector<int>& candidates,
                               const Progress& progress) const {
  if (!(target > 0 && target <= 1)) throw InputError(field("whatif.target_efficiency") + ": must be in (0, 1]");
  std::optional<WhatIfRow> best;
  double best_eff = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    p.gpus = candidates[i];
    WhatIfRow r = evaluate(p);
    best_eff = std::max(best_eff, r.report.scaling_efficiency);
    if (r.report.scaling_efficiency >= target) best = std::move(r);
    if (progress) progress(i + 1, candidates.size());
  }
  if (!best)
    throw InputError(field("whatif.target_efficiency") + " " + num(target) + " is unreachable: the best of " +
                     std::to_string(candidates.size()) + " GPU counts reaches " + num(best_eff, "%.6f"));
  return *best;
}

WhatIfRow WhatIf::min_gpus_for_deadline(WhatIfPoint p, double deadline_s, const std::vector<int>& candidates,
                                        const Progress& progress) const {
  if (!(deadline_s > 0)) throw InputError(field("whatif.deadline") + ": must be > 0");
  double fastest = INFINITY;
  int fastest_gpus = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    p.gpus = candidates[i];
    WhatIfRow r = evaluate(p);
    if (progress) progress(i + 1, candidates.size());
    if (r.report.time_to_train_s <= deadline_s) return r;
    if (r.report.time_to_train_s < fastest) {
      fastest = r.report.time_to_train_s;
      fastest_gpus = p.gpus;
    }
  }
  throw InputError(field("whatif.deadline") + ": unreachable within " + std::to_string(candidates.back()) + " GPUs; the fastest is " +
                   num(fastest / 60, "%.2f") + " min on " + std::to_string(fastest_gpus) +
                   " GPUs (raise " + field("whatif.max_gpus") + " or relax the deadline)");
}

std::vector<int> WhatIf::gpu_candidates() const {
  std::vector<int> out;
  for (int g = 1; g < base_.gpus_per_node; g *= 2) out.push_back(g);
  for (int n = 1; n <= base_.nodes; ++n) out.push_back(n * base_.gpus_per_node);
  return out;
}

double parse_duration(const std::string& s, const std::string& flag) {
  const std::string valid = " (e.g. 90s, 10m, 2h, 1.5d)";
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (...) {
    throw InputError(flag + ": '" + s + "' is not a duration" + valid);
  }
  std::string unit = s.substr(used);
  if (unit.empty()) throw InputError(flag + ": '" + s + "' needs a unit: s, m, h or d" + valid);
  double scale = unit == "s" ? 1 : unit == "m" || unit == "min" ? 60 : unit == "h" ? 3600 : unit == "d" ? 86400 : -1;
  if (scale < 0) throw InputError(flag + ": unknown unit '" + unit + "'" + valid);
  if (!(v > 0) || !std::isfinite(v)) throw InputError(flag + ": must be > 0" + valid);
  return v * scale;
}

std::vector<std::string> split_list(const std::string& s, const std::string& flag) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string tok;
  while (std::getline(ss, tok, ','))
    if (!tok.empty()) out.push_back(tok);
  if (out.empty()) throw InputError(flag + ": empty list");
  return out;
}

double parse_number(const std::string& tok, const std::string& flag) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(tok, &used);
  } catch (...) {
    used = 0;
  }
  if (used != tok.size() || !std::isfinite(v)) throw InputError(flag + ": '" + tok + "' is not a number");
  return v;
}

// "8,64,512", or "MIN:MAX" doubling from MIN, or "MIN:MAX:+STEP".
std::vector<double> parse_range(const std::string& s, const std::string& flag, bool integers) {
  std::vector<double> out;
  for (const auto& tok : split_list(s, flag)) {
    auto c1 = tok.find(':');
    if (c1 == std::string::npos) {
      out.push_back(parse_number(tok, flag));
      if (out.size() > kMaxRangeValues)
        throw InputError(flag + ": more than " + std::to_string(kMaxRangeValues) + " values");
      continue;
    }
    auto c2 = tok.find(':', c1 + 1);
    double lo = parse_number(tok.substr(0, c1), flag);
    double hi = parse_number(tok.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1), flag);
    double step = 0;
    if (c2 != std::string::npos) {
      std::string st = tok.substr(c2 + 1);
      if (st.empty() || st[0] != '+') throw InputError(flag + ": range step must look like +STEP (" + tok + ")");
      step = parse_number(st.substr(1), flag);
      if (!(step > 0)) throw InputError(flag + ": range step must be > 0 (" + tok + ")");
    }
    if (!(lo > 0) || hi < lo) throw InputError(flag + ": range '" + tok + "' needs 0 < MIN <= MAX");
    const double values = step > 0 ? (hi - lo) / step + 1 : std::log2(hi / lo) + 1;
    if (!(values + double(out.size()) <= double(kMaxRangeValues)))
      throw InputError(flag + ": range '" + tok + "' makes more than " + std::to_string(kMaxRangeValues) +
                       " values (a larger step, or a narrower range)");
    for (double v = lo; v <= hi * (1 + 1e-12); v = step > 0 ? v + step : v * 2) out.push_back(v);
  }
  for (double v : out) {
    if (!(v > 0)) throw InputError(flag + ": values must be > 0 (got " + num(v, "%.3f") + ")");
    if (integers && v != std::floor(v)) throw InputError(flag + ": values must be whole numbers (got " + num(v, "%.3f") + ")");
  }
  return out;
}

std::vector<int> WhatIf::gpu_candidates(int max_gpus) const {
  if (max_gpus <= 0) return gpu_candidates();
  std::vector<int> out;
  for (int g : gpu_candidates())
    if (g <= max_gpus) out.push_back(g);
  const int per = base_.gpus_per_node;
  for (int g = (base_.capacity() / per + 1) * per; g <= max_gpus; g += per) out.push_back(g);
  return out;
}

}  // namespace fuseplan
