// A plan in DDP, Horovod and DeepSpeed settings (framework_export.hpp).
#include "fuseplan/costmodel/framework_export.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <utility>

namespace fuseplan {

namespace {
constexpr int64_t kMiB = int64_t(1) << 20;
constexpr double kDdpDefaultCapMib = 25;  // DDP's bucket_cap_mb when unset
// Horovod's shortest practical cycle (HOROVOD_CYCLE_TIME, ms): with groups, each group
// waits for at most one cycle of its background thread, which the prediction prices.
constexpr double kHorovodCycleMs = 0.1;

std::set<int> starts_of(const Plan& p) {
  std::set<int> s;
  for (const auto& b : p.buckets)
    if (b.begin > 0) s.insert(b.begin);
  return s;
}

// The algorithm the plan gives every bucket, or auto when its buckets differ.
std::string common_algorithm(const Plan& p) {
  for (const auto& b : p.buckets)
    if (b.algorithm != p.buckets.front().algorithm) return "auto";
  return p.buckets.front().algorithm;
}

// Where DDP and Horovod cast a plan's FP32 gradients: DDP's compress hook runs as the
// Reducer hands it a bucket, and Horovod's compression in each gradient's hook, both in
// backward on the compute stream, wherever the plan (made for fuseplan-exec or PlanDDP,
// which cast on comm) has its casts.
std::optional<PackOn> cast_in_backward(const std::optional<PackOn>& cast) {
  return cast ? std::optional(PackOn::Compute) : std::nullopt;
}

TuneOptions options_like(const Plan& p) {
  TuneOptions o;
  o.algorithm = common_algorithm(p);
  o.transfer = p.buckets.front().transfer;
  o.packing = Packing::Pack;  // every framework here copies gradients into bucket buffers (DDP in backward)
  if (o.transfer != Precision::FP32) o.cast = p.cast;  // DDP and Horovod: cast_in_backward
  o.accumulate = p.accumulate;
  o.optimizer = p.optimizer;
  o.step_overhead_s = p.step_overhead_s;
  return o;
}

int64_t tensor_elements(const Model& m, int backward_position) {
  return m.tensors[m.tensor_at_backward(backward_position)].numel;
}

bool closer(const FrameworkSettings& a, const FrameworkSettings& b) {
  const int da = a.boundaries_missing + a.boundaries_extra, db = b.boundaries_missing + b.boundaries_extra;
  if (da != db) return da < db;
  if (a.predicted.iteration_s != b.predicted.iteration_s) return a.predicted.iteration_s < b.predicted.iteration_s;
  return a.cap_units < b.cap_units;
}

void score(FrameworkSettings& s, const Plan& plan) {
  const std::set<int> want = starts_of(plan), got = starts_of(s.approximation);
  s.boundaries_missing = s.boundaries_extra = 0;
  for (int b : want) s.boundaries_missing += got.count(b) ? 0 : 1;
  for (int b : got) s.boundaries_extra += want.count(b) ? 0 : 1;
}

// DeepSpeed ZeRO-1/2 (stage_1_and_2.py): gradients join the current bucket in the order
// they become ready; one that would take it past reduce_bucket_size elements has the
// bucket reduced first.
std::vector<int> deepspeed_starts(const Model& m, int64_t cap_elements) {
  std::vector<int> starts{0};
  int64_t fill = 0;
  const int n = static_cast<int>(m.tensors.size());
  for (int i = 0; i < n; ++i) {
    const int64_t e = tensor_elements(m, i);
    if (fill > 0 && fill + e > cap_elements) {
      starts.push_back(i);
      fill = 0;
    }
    fill += e;
  }
  return starts;
}

// The bucket_cap_mb torch reads back as `cap_bytes` or just below (it truncates
// bucket_cap_mb * 1024 * 1024; a cap a byte lower closes the same buckets).
double printed_mib(int64_t cap_bytes) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.9g", double(cap_bytes) / double(kMiB));
  return std::strtod(buf, nullptr);
}
}  // namespace

namespace {
constexpr std::pair<Framework, const char*> kFrameworks[] = {
    {Framework::Ddp, "ddp"}, {Framework::Horovod, "horovod"}, {Framework::DeepSpeed, "deepspeed"}};
}  // namespace

Framework parse_framework(const std::string& s, const std::string& flag) {
  for (auto [f, name] : kFrameworks)
    if (s == name) return f;
  throw InputError(flag + ": unknown framework '" + s + "' (valid: ddp, horovod, deepspeed)");
}

const char* framework_name(Framework f) {
  for (auto [g, name] : kFrameworks)
    if (f == g) return name;
  return "?";
}

DdpTorch parse_ddp_torch(const std::string& s, const std::string& flag) {
  if (s == "2.6") return DdpTorch::Any;
  if (s == "1.13") return DdpTorch::V1_13;
  throw InputError(flag + ": unknown torch '" + s + "' (valid: 2.6, 1.13)");
}

FrameworkSettings framework_settings(const Tuner& tuner, const Plan& plan, Framework framework, DdpTorch torch) {
  const Model& m = tuner.model();
  validate_plan(plan, m, field("export.plan"));
  // DDP accumulates either way (no_sync() or not); Horovod's backward_passes_per_step
  // accumulates locally and allreduces once; DeepSpeed's reduction points under
  // gradient_accumulation_steps depend on the ZeRO stage, which no plan describes.
  const std::string accumulating = field("export.plan") + ": $.accumulate: ";
  if (plan.accumulate.steps > 1 && framework == Framework::Horovod && !plan.accumulate.no_sync)
    throw InputError(accumulating + "Horovod's backward_passes_per_step allreduces once per accumulation; this plan "
                     "allreduces every micro-batch (make it with no_sync, or export it to ddp)");
  if (plan.accumulate.steps > 1 && framework == Framework::DeepSpeed)
    throw InputError(accumulating + "not exported to deepspeed (where ZeRO reduces under gradient_accumulation_steps "
                     "depends on its stage); export it to ddp or horovod");
  TuneOptions o = options_like(plan);
  std::vector<int64_t> elements;  // per plan bucket
  for (const auto& b : plan.buckets) elements.push_back(bucket_elements(plan, m, b));

  std::vector<FrameworkSettings> candidates;
  auto consider = [&](FrameworkSettings s) {
    s.framework = framework;
    score(s, plan);
    candidates.push_back(std::move(s));
  };
  switch (framework) {
    case Framework::Ddp: {
      // Caps that close a bucket exactly where one of the plan's ends (DDP counts FP32
      // parameter bytes), and one past the largest; for the first bucket, torch's own cap
      // and the plan's first bucket. Under either torch, a given cap with the first
      // bucket's cap set to it, and bucket_cap_mb left unset with either first cap;
      // under torch 1.13 only, any pair.
      o.strategy = Strategy::Ddp;
      o.packing = Packing::Inline;  // the Reducer copies each gradient into its bucket in backward
      o.cast = cast_in_backward(o.cast);
      const int64_t torch_first = o.ddp_first_bytes;
      std::set<int64_t> caps, firsts{torch_first, 4 * elements.front()};
      for (int64_t e : elements) caps.insert(4 * e);
      caps.insert(4 * (*std::max_element(elements.begin(), elements.end())) * 2);
      auto ddp = [&](double cap_mib, std::optional<int64_t> first, bool unset) {
        FrameworkSettings s;
        s.cap = cap_mib;
        s.cap_units = static_cast<int64_t>(s.cap * double(kMiB));
        if (s.cap_units < 1) return;
        s.cap_unset = unset;
        s.first_bucket_bytes = o.ddp_first_bytes = first.value_or(s.cap_units);
        o.ddp_cap_bytes = s.cap_units;
        TuneResult r = tuner.run(o);
        s.approximation = std::move(r.plan);
        s.predicted = std::move(r.report);
        consider(std::move(s));
      };
      for (int64_t bytes : caps) ddp(printed_mib(bytes), std::nullopt, false);
      for (int64_t first : firsts) ddp(kDdpDefaultCapMib, first, true);
      if (torch == DdpTorch::V1_13)
        for (int64_t first : firsts)
          for (int64_t bytes : caps) ddp(printed_mib(bytes), first, false);
      break;
    }
    case Framework::DeepSpeed: {
      std::set<int64_t> caps(elements.begin(), elements.end());
      for (int64_t cap : caps) {
        FrameworkSettings s;
        s.cap = double(cap);
        s.cap_units = cap;
        s.approximation = tuner.plan_for(deepspeed_starts(m, cap), o);
        s.approximation.strategy = "deepspeed";
        s.predicted = tuner.evaluate(s.approximation);
        consider(std::move(s));
      }
      break;
    }
    case Framework::Horovod: {
      // The plan's own buckets, algorithms, precisions and streams, copied into Horovod's buffer.
      FrameworkSettings s;
      s.approximation = plan;
      s.approximation.strategy = "horovod groups";
      s.approximation.pack_on = PackOn::Comm;  // its background thread fills the fusion buffer
      s.approximation.cast = cast_in_backward(plan.cast);
      s.approximation.prediction.reset();
      for (size_t k = 0; k < plan.buckets.size(); ++k) {
        const PlanBucket& b = plan.buckets[k];
        s.approximation.buckets[k].pack = true;
        std::vector<std::string> names;
        for (int pos = b.begin; pos < b.end; ++pos) names.push_back(m.tensors[m.tensor_at_backward(pos)].name);
        s.groups.push_back(std::move(names));
        s.fusion_threshold_bytes = std::max(s.fusion_threshold_bytes, elements[k] * bytes_per_element(b.transfer));
      }
      s.cycle_time_ms = kHorovodCycleMs;
      s.approximation.cycle_s = kHorovodCycleMs * 1e-3;
      s.predicted = tuner.evaluate(s.approximation);
      consider(std::move(s));
      break;
    }
  }
  FrameworkSettings best = *std::min_element(candidates.begin(), candidates.end(), closer);
  best.plan_predicted = tuner.evaluate(plan);
  return best;
}

}  // namespace fuseplan
