// Benchmark: how fast the tuner answers (issue targets: resnet50 under 5 ms, a
// 10,000-tensor model under 1 s on one core) and how many what-if configurations are
// evaluated per second. Prints figures; not a test.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/costmodel/whatif.hpp"
#include "fuseplan/models/zoo.hpp"

using namespace fuseplan;
using Clock = std::chrono::steady_clock;

namespace {

// A synthetic model: `n` single-tensor layers, sizes log-uniform in [1e3, 3e6] elements,
// backward time proportional to size (`us_per_melem` per million elements) plus 20 us.
Model synthetic(int n, double us_per_melem, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> log_size(3, 6.5);
  Model m;
  m.name = std::string("synthetic").append(std::to_string(n));
  m.input_shape = {1};
  for (int l = 0; l < n; ++l) {
    ParamTensor p;
    p.name = std::string("t").append(std::to_string(l));
    p.numel = static_cast<int64_t>(std::pow(10.0, log_size(rng)));
    p.shape = {p.numel};
    p.layer = l;
    Layer layer;
    layer.name = std::string("l").append(std::to_string(l));
    layer.inputs = {l - 1};
    layer.in_shape = layer.out_shape = {1};
    layer.first_tensor = l;
    layer.tensor_count = 1;
    double bwd = 20 + us_per_melem * double(p.numel) / 1e6;
    layer.measured = MeasuredTime{bwd / 2, bwd, 32};
    m.tensors.push_back(p);
    m.layers.push_back(layer);
  }
  return m;
}

struct Timing {
  double median_ms;
  TuneResult last;
};

Timing time_tune(const Tuner& t, const TuneOptions& o, int reps) {
  std::vector<double> ms;
  TuneResult r;
  for (int i = 0; i < reps; ++i) {
    auto t0 = Clock::now();
    r = t.run(o);
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], std::move(r)};
}

void row(const char* what, const Model& m, const Cluster& c, int gpus, int batch, Strategy s, int reps,
         Packing packing = Packing::Strategy) {
  Tuner t(m, c, gpus, batch, Precision::FP16);
  TuneOptions o;
  o.strategy = s;
  o.packing = packing;
  Timing tm = time_tune(t, o, reps);
  double exposed = tm.last.report.exposed_comm_s / std::max(1e-12, tm.last.report.comm_busy_s);
  std::printf("  %-34s %6zu tensors  %-12s %10.3f ms  %10lld costs  %5zu buckets  eff %5.1f%%"
              "  exposed/busy %4.0f%%%s\n",
              what, m.tensors.size(), strategy_name(s), tm.median_ms, static_cast<long long>(tm.last.evaluations),
              tm.last.plan.buckets.size(), tm.last.report.scaling_efficiency * 100, exposed * 100,
              tm.last.proven() ? "" : "  (local search)");
}

}  // namespace

int main() {
  std::printf("fuseplan tuner: wall time per tune on one core (median), bucket costs evaluated, result\n");
  Cluster p40 = load_cluster("tencent-p40"), a100 = load_cluster("dgx-a100");
  Model resnet = build_zoo_model("resnet50"), gpt = build_zoo_model("gpt2_xl");
  row("resnet50, tencent-p40 x 1024", resnet, p40, 1024, 32, Strategy::Optimal, 51);
  row("resnet50, tencent-p40 x 1024", resnet, p40, 1024, 32, Strategy::KSplit, 51);
  row("resnet50, tencent-p40 x 2048", resnet, p40, 2048, 32, Strategy::Optimal, 51);
  row("resnet50, tencent-p40 x 1024", resnet, p40, 1024, 32, Strategy::Mgwfbp, 51);
  row("gpt2_xl, tencent-p40 x 1024", gpt, p40, 1024, 2, Strategy::Optimal, 11);
  row("gpt2_xl, dgx-a100 x 1024", gpt, a100, 1024, 2, Strategy::Optimal, 11);
  // Compute-heavy: backward hides most communication; comm-heavy: it cannot, so the
  // dynamic program's pruning stops late (its worst case is quadratic).
  Model syn_compute = synthetic(10000, 20000, 1), syn_comm = synthetic(10000, 200, 1);
  row("synthetic, compute-heavy, p40 x 1024", syn_compute, p40, 1024, 32, Strategy::Optimal, 3);
  row("synthetic, comm-heavy, p40 x 1024", syn_comm, p40, 1024, 32, Strategy::Optimal, 3);
  row("synthetic, comm-heavy, a100 x 1024", syn_comm, a100, 1024, 32, Strategy::Optimal, 3);
  // DDP's copies (--pack inline): the search minimises the end of the copies back, by
  // bisection over the dynamic program (about 40 runs of it, without the affine-tail path).
  row("resnet50, p40 x 1024, copies back", resnet, p40, 1024, 32, Strategy::Optimal, 51, Packing::Inline);
  row("gpt2_xl, dgx-a100 x 1024, copies back", gpt, a100, 1024, 2, Strategy::Optimal, 11, Packing::Inline);
  row("synthetic, compute-heavy, copies back", syn_compute, p40, 1024, 32, Strategy::Optimal, 3, Packing::Inline);
  row("synthetic, comm-heavy, copies back", syn_comm, p40, 1024, 32, Strategy::Optimal, 3, Packing::Inline);

  // Processor sharing (--compute-slowdown 0.189: backward 18.9 % slower beside an
  // allreduce): the program over Pareto fronts, or past its budget the local search.
  for (const char* name : {"resnet50", "resnet152", "bert_large"}) {
    const Model zm = build_zoo_model(name);
    for (const Cluster* base : {&a100, &p40}) {
      Cluster c = *base;
      set_compute_slowdown(c, 0.189, "--compute-slowdown");
      const std::string what = std::string(name) + ", " + c.name + (base == &a100 ? " x 64" : " x 1024") + ", shared";
      row(what.c_str(), zm, c, base == &a100 ? 64 : 1024, 32, Strategy::Optimal, 3);
    }
  }
  // With a packing copy before each allreduce (Horovod's) under the same slowdown: a local
  // search, started from the free-overlap optimum, one bucket and the exact partition
  // without the copies.
  for (const char* name : {"resnet50", "bert_large"}) {
    Cluster c = a100;
    set_compute_slowdown(c, 0.189, "--compute-slowdown");
    const std::string what = std::string(name) + ", dgx-a100 x 64, shared, pack";
    row(what.c_str(), build_zoo_model(name), c, 64, 32, Strategy::Optimal, 3, Packing::Pack);
  }
  // 10,000 tensors under sharing: past the programs' budgets, a local search with its own.
  {
    Cluster c = p40;
    set_compute_slowdown(c, 0.189, "--compute-slowdown");
    row("synthetic, compute-heavy, shared", syn_compute, c, 1024, 32, Strategy::Optimal, 1);
    row("synthetic, comm-heavy, shared", syn_comm, c, 1024, 32, Strategy::Optimal, 1);
  }

  const WhatIfSettings settings;
  WhatIf w(p40, settings);
  WhatIfAxes axes;
  axes.models = {"resnet50"};
  axes.gpus = {8, 16, 32, 64, 128, 256, 512, 1024, 2048};
  axes.inter_bw_Gbps = {25, 50, 100, 200, 400};
  axes.strategies = {Strategy::Optimal, Strategy::Horovod, Strategy::Ddp};
  auto t0 = Clock::now();
  auto rows = w.sweep(axes);
  double s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("  what-if sweep: %zu configurations (resnet50, 9 GPU counts x 5 bandwidths x 3 strategies) in %.3f s"
              " = %.0f configurations/s\n", rows.size(), s, double(rows.size()) / s);

  // Schedules beyond fusion: `fuseplan schedule --strategy best` (issue target: resnet50
  // in <= 10 ms). Cold: on a fresh pipeline model, so the search pays the collective
  // model's first pricing of every algorithm at this rank count (what any prediction
  // pays once); warm: the search again on the same model (what `fuseplan schedule`
  // reports as "tuned ms", after the lower bound has priced the algorithms).
  std::printf("fuseplan schedule --strategy best: wall time per search (median of 15), evaluations\n");
  for (const char* name : {"p100-horovod", "tencent-p40", "dgx-a100", "aws-p4d"}) {
    for (int gpus : {64, 512, 8192}) {
      Cluster c = load_cluster(name);
      c.nodes = std::max(c.nodes, (gpus + c.gpus_per_node - 1) / c.gpus_per_node);
      ScheduleOptions o;
      o.memory_limit_bytes = c.device.mem_GiB * 1024.0 * 1024 * 1024;
      std::vector<double> cold, warm;
      ScheduleResult r;
      auto timed = [&](const PipelineModel& pm) {
        auto t0 = Clock::now();
        r = schedule_for(pm, ScheduleStrategy::Best, o);
        return std::chrono::duration<double>(Clock::now() - t0).count();
      };
      for (int i = 0; i < 15; ++i) {
        const PipelineModel pm(resnet, c, gpus, 64, Precision::FP16);
        cold.push_back(timed(pm));
        warm.push_back(timed(pm));
      }
      std::sort(cold.begin(), cold.end());
      std::sort(warm.begin(), warm.end());
      std::printf("  resnet50 b64 fp16, %-13s x %-5d cold %6.2f ms  warm %6.2f ms  %4lld evaluations (%5.1f us each, warm)"
                  "  iteration %.2f ms\n",
                  name, gpus, cold[7] * 1e3, warm[7] * 1e3, (long long)r.evaluations, warm[7] * 1e6 / double(r.evaluations),
                  r.result.iteration_s * 1e3);
    }
  }
  return 0;
}
