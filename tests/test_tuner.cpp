// The tuner: `optimal` and `k-split` equal the brute-force minimum over every contiguous
// partition; `optimal` is never worse than a baseline; costs grow with size (the pruning's
// premise); the baselines follow their published rules; what-if inverse questions.
#include <catch2/catch.hpp>
#include <optional>
#include <random>

#include "fuseplan/costmodel/framework_export.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/costmodel/whatif.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"
#include "random_model.hpp"

using namespace fuseplan;

namespace {

// Every partition of n tensors: bit i of `mask` set = a bucket starts at position i + 1.
std::vector<int> starts_of(unsigned mask, int n) {
  std::vector<int> s{0};
  for (int i = 0; i + 1 < n; ++i)
    if (mask >> i & 1u) s.push_back(i + 1);
  return s;
}

double brute_force(const Tuner& t, const TuneOptions& o, int n, int segments) {
  double best = INFINITY;
  for (unsigned mask = 0; mask < (1u << (n - 1)); ++mask) {
    auto s = starts_of(mask, n);
    if (segments > 0 && static_cast<int>(s.size()) != segments) continue;
    best = std::min(best, t.evaluate(t.plan_for(s, o)).iteration_s);
  }
  return best;
}

}  // namespace

TEST_CASE("optimal and k-split equal the brute-force minimum over all partitions") {
  std::mt19937_64 rng(20261122);
  std::vector<std::string> algos{"auto"};
  for (const auto& a : algorithms()) algos.emplace_back(a.name);
  int checked = 0;
  for (const char* cname : {"tencent-p40", "dgx1-v100", "dgx-a100", "local-cpu"}) {
    // The shipped cluster, and the same without processor sharing: with packing copies
    // the search is exact only there (under sharing it is a local search, tested below).
    const Cluster shipped = load_cluster(cname);
    Cluster free_overlap = shipped;
    free_overlap.comm_compute_sharing = 0;
    free_overlap.allreduce_sharing.reset();
    for (int gpus : {2, 8, 24, 64}) {
      if (gpus > shipped.capacity()) continue;
      std::uniform_int_distribution<int> len(2, 14);
      Model m = random_model(rng, len(rng));
      const int n = static_cast<int>(m.tensors.size());
      const Tuner with_sharing(m, shipped, gpus, 32, Precision::FP16);
      const Tuner without(m, free_overlap, gpus, 32, Precision::FP16);
      for (const auto& algo : algos) {
        TuneOptions o;
        o.algorithm = algo;
        o.fp32 = checked % 3 == 0 ? Fp32Tensors::Norm : Fp32Tensors::None;
        const Packing packings[] = {Packing::Pack, Packing::View, Packing::Inline};
        o.packing = packings[checked % 3];
        // Casts, without processor sharing (on comm they delay buckets as a fusion buffer
        // does); on compute with no FP32 tensors, as the tuner requires.
        const int cast = o.packing == Packing::View ? 0 : checked / 3 % 3;
        if (cast == 1 && o.fp32 == Fp32Tensors::None) o.cast = PackOn::Compute;
        if (cast == 2) o.cast = PackOn::Comm;
        const Tuner& t = o.packing == Packing::View ? with_sharing : without;
        o.strategy = Strategy::Optimal;
        TuneResult r;
        try {
          r = t.run(o);
        } catch (const InputError&) {
          continue;  // the algorithm does not apply to this rank layout
        }
        INFO(cname << " gpus=" << gpus << " n=" << n << " algorithm=" << algo << " cast=" << cast);
        REQUIRE(r.proven());
        CHECK(r.plan.cast == o.cast);
        double brute = brute_force(t, o, n, 0);
        CHECK(r.report.iteration_s == Approx(brute).epsilon(1e-9));
        CHECK(r.report.iteration_s <= brute * (1 + 1e-9));
        // The DP's own objective is the predictor's last allreduce end.
        CHECK(r.objective_s >= r.report.comm_end_s * (1 - 1e-9));
        o.strategy = Strategy::KSplit;
        o.segments = 1 + checked % std::min(n, 4);
        TuneResult k = t.run(o);
        CHECK(static_cast<int>(k.plan.buckets.size()) == o.segments);
        CHECK(k.report.iteration_s == Approx(brute_force(t, o, n, o.segments)).epsilon(1e-9));
        ++checked;
      }
    }
  }
  CHECK(checked > 60);
}

TEST_CASE("the training loop's step is written to every tuned plan and moves each candidate alike") {
  Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("dgx-a100");
  Tuner t(m, c, 8, 64, Precision::FP16);
  for (Strategy s : {Strategy::Optimal, Strategy::Horovod, Strategy::Ddp, Strategy::PerTensor}) {
    TuneOptions o;
    o.strategy = s;
    const TuneResult one = t.run(o);
    o.accumulate = {4, true};
    o.optimizer = optimizer_step("adam", "per-tensor", "x");
    const TuneResult acc = t.run(o);
    INFO(strategy_name(s));
    CHECK(acc.plan.buckets == one.plan.buckets);  // the same search: the last allreduce end
    CHECK(acc.plan.accumulate == Accumulation{4, true});
    CHECK(acc.plan.optimizer == o.optimizer);
    const double step = t.compute().optimizer_s(o.optimizer);
    CHECK(acc.report.optimizer_s == Approx(step / 4));
    CHECK(acc.report.exposed_comm_s == Approx(one.report.exposed_comm_s / 4).margin(1e-12));
    CHECK(acc.report.iteration_s == Approx(t.evaluate(acc.plan).iteration_s));
  }
}

TEST_CASE("optimal's affine-tail fast path equals the exhaustive scan on larger models") {
  std::mt19937_64 rng(99);
  int faster = 0;
  for (const char* cname : {"tencent-p40", "dgx1-v100", "dgx-a100", "dgx-h100"}) {
    Cluster c = load_cluster(cname);
    c.comm_compute_sharing = 0;  // the free-overlap program's two paths (sharing searches after them)
    c.allreduce_sharing.reset();
    for (int gpus : {16, 256, 1024}) {
      for (int len : {150, 400}) {
        Model m = random_model(rng, len);
        // Scale measured times down so that communication is backlogged at times.
        for (auto& l : m.layers) l.measured->bwd_us *= (gpus == 1024 ? 0.05 : 1.0);
        Tuner t(m, c, gpus, 32, Precision::FP16);
        TuneOptions fast, slow;
        slow.exhaustive_scan = true;
        for (Packing pk : {Packing::View, Packing::Pack, Packing::Inline}) {
          fast.packing = slow.packing = pk;
          // Casts beside the copies: on compute (in backward, back in each bucket's time) with
          // DDP's, on comm with a fusion buffer's; views without.
          fast.cast = slow.cast = std::nullopt;
          if (pk == Packing::Inline && len == 150) fast.cast = slow.cast = PackOn::Compute;
          if (pk == Packing::Pack && len == 400) fast.cast = slow.cast = PackOn::Comm;
          auto a = t.run(fast), b = t.run(slow);
          INFO(cname << " gpus=" << gpus << " n=" << len << " cast " << bool(fast.cast));
          CHECK(a.objective_s == Approx(b.objective_s).epsilon(1e-12));
          CHECK(a.report.iteration_s == Approx(b.report.iteration_s).epsilon(1e-12));
          faster += a.evaluations < b.evaluations / 2;
        }
      }
    }
  }
  CHECK(faster > 0);  // the fast path did cut work somewhere
}

TEST_CASE("optimal's affine-tail fast path includes staging once per allreduce") {
  std::mt19937_64 rng(7);
  nlohmann::json j = cluster_to_json(load_cluster("tencent-p40"));
  j["inter_node"]["gdr"] = false;
  j["inter_node"]["host_copy_bw_GBps"] = 12;
  j["inter_node"]["host_copy_lat_us"] = 10;
  j["inter_node"]["staging"] = "collective";
  const Cluster c = cluster_from_json(j, "staged");
  for (int gpus : {16, 256}) {
    Model m = random_model(rng, 150);
    Tuner t(m, c, gpus, 32, Precision::FP16);
    TuneOptions fast, slow;
    slow.exhaustive_scan = true;
    auto a = t.run(fast), b = t.run(slow);
    INFO("gpus=" << gpus);
    CHECK(a.objective_s == Approx(b.objective_s).epsilon(1e-12));
    CHECK(a.report.iteration_s == Approx(b.report.iteration_s).epsilon(1e-12));
  }
}

TEST_CASE("optimal is never worse than a baseline: zoo x clusters x {8, 64, 512, 2048} GPUs") {
  for (const auto& entry : zoo()) {
    Model m = entry.build({});
    for (const auto& cname : shipped_cluster_names()) {
      Cluster c = load_cluster(cname);
      for (int gpus : {8, 64, 512, 2048}) {
        if (gpus > c.capacity()) continue;
        Tuner t(m, c, gpus, entry.default_batch_per_gpu, Precision::FP16);
        TuneOptions o;
        o.packing = Packing::View;  // the same conditions for every strategy
        double optimal = t.run(o).report.iteration_s;
        for (Strategy s : kAllStrategies) {
          o.strategy = s;
          INFO(entry.name << " on " << cname << " x " << gpus << ": " << strategy_name(s));
          CHECK(optimal <= t.run(o).report.iteration_s * (1 + 1e-12));
        }
        o.strategy = Strategy::Horovod;
        o.packing = Packing::Strategy;  // horovod and ddp as shipped copy into buffers
        CHECK(optimal <= t.run(o).report.iteration_s * (1 + 1e-12));
        o.packing = Packing::View;
      }
    }
  }
}

TEST_CASE("every allreduce cost is nondecreasing in the message size (the DP's pruning premise)") {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> jitter(1.0, 1.3);
  for (const auto& cname : shipped_cluster_names()) {
    Cluster c = load_cluster(cname);
    for (int gpus : {2, 6, 8, 24, 512, 2048}) {
      if (gpus > c.capacity()) continue;
      CollectiveModel coll(c, gpus);
      // NCCL's auto is not monotone (its tree correction factors); the DP then scans all.
      if (c.library == "nccl") CHECK(!coll.monotone("auto"));
      for (const char* algo : {"auto", "ring", "double_binary_tree", "rabenseifner", "hierarchical", "torus2d"}) {
        if (!coll.monotone(algo)) continue;
        double prev = 0;
        double count = 2;
        bool applies = true;
        while (count < 4e8 && applies) {
          try {
            double t = coll.cost(algo, static_cast<int64_t>(count), Precision::FP16).total_s();
            INFO(cname << " gpus=" << gpus << " " << algo << " count=" << int64_t(count));
            REQUIRE(t >= prev);
            prev = t;
          } catch (const InputError&) {
            applies = false;
          }
          count = std::ceil(count * jitter(rng));
        }
      }
    }
  }
}

TEST_CASE("baselines follow their rules") {
  Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("tencent-p40");
  Tuner t(m, c, 1024, 32, Precision::FP16);
  TuneOptions o;
  auto elems = [&](const PlanBucket& b) {
    int64_t e = 0;
    for (int pos = b.begin; pos < b.end; ++pos) e += m.tensors[m.tensor_at_backward(pos)].numel;
    return e;
  };
  SECTION("per-tensor and single") {
    o.strategy = Strategy::PerTensor;
    CHECK(t.run(o).plan.buckets.size() == m.tensors.size());
    o.strategy = Strategy::Single;
    CHECK(t.run(o).plan.buckets.size() == 1);
  }
  SECTION("horovod: no bucket exceeds the threshold unless one tensor does; threshold 0 = no fusion") {
    o.strategy = Strategy::Horovod;
    o.horovod_threshold_bytes = 8 << 20;
    auto p = t.run(o).plan;
    CHECK(p.buckets.size() > 3);
    for (size_t k = 0; k < p.buckets.size(); ++k) {
      const auto& b = p.buckets[k];
      CHECK(b.pack);
      if (b.end - b.begin > 1) CHECK(elems(b) * 2 <= o.horovod_threshold_bytes);
      // Greedy: the next tensor would not have fit.
      if (k + 1 < p.buckets.size())
        CHECK(elems(b) * 2 + m.tensors[m.tensor_at_backward(b.end)].numel * 2 > o.horovod_threshold_bytes);
    }
    o.horovod_threshold_bytes = 0;
    CHECK(t.run(o).plan.buckets.size() == m.tensors.size());
    // A cycle time fuses only gradients ready by the same tick: a tiny cycle gives one
    // bucket per layer (a layer's tensors are ready together), a huge one changes nothing.
    o.horovod_threshold_bytes = int64_t(64) << 20;
    o.horovod_cycle_s = 1e-9;
    auto per_layer = t.run(o).plan;
    for (const auto& b : per_layer.buckets)
      CHECK(m.tensors[m.tensor_at_backward(b.begin)].layer == m.tensors[m.tensor_at_backward(b.end - 1)].layer);
    CHECK(per_layer.buckets.size() < m.tensors.size());
    o.horovod_cycle_s = 0;
    auto no_cycle = t.run(o).plan.buckets.size();
    o.horovod_cycle_s = 1e3;
    CHECK(t.run(o).plan.buckets.size() == no_cycle);
  }
  SECTION("ddp: 1 MiB first bucket, then 25 MiB, on FP32 parameter bytes, closing once reached") {
    o.strategy = Strategy::Ddp;
    auto p = t.run(o).plan;
    REQUIRE(p.buckets.size() >= 3);
    CHECK(elems(p.buckets[0]) * 4 >= (1 << 20));
    CHECK((elems(p.buckets[0]) - m.tensors[m.tensor_at_backward(p.buckets[0].end - 1)].numel) * 4 < (1 << 20));
    for (size_t k = 1; k + 1 < p.buckets.size(); ++k) {
      CHECK(elems(p.buckets[k]) * 4 >= (25 << 20));
      CHECK((elems(p.buckets[k]) - m.tensors[m.tensor_at_backward(p.buckets[k].end - 1)].numel) * 4 < (25 << 20));
    }
  }
  SECTION("streams: buckets go round-robin; fp32 tensors make their bucket FP32") {
    o.strategy = Strategy::PerTensor;
    o.streams = 3;
    o.fp32 = Fp32Tensors::Norm;
    auto r = t.run(o);
    for (size_t k = 0; k < r.plan.buckets.size(); ++k) {
      CHECK(r.plan.buckets[k].stream == static_cast<int>(k % 3));
      auto role = m.tensors[m.tensor_at_backward(r.plan.buckets[k].begin)].role;
      bool norm = role == TensorRole::NormScale || role == TensorRole::NormShift;
      CHECK((r.plan.buckets[k].transfer == Precision::FP32) == norm);
    }
  }
  SECTION("k-split with K = 2 on the paper's case finds one split and the plan names real algorithms") {
    o.strategy = Strategy::KSplit;
    auto r = t.run(o);
    REQUIRE(r.plan.buckets.size() == 2);
    for (const auto& b : r.plan.buckets) CHECK(b.algorithm != "auto");
    validate_plan(r.plan, m, "tuned");
  }
  SECTION("bad options are refused") {
    o.strategy = Strategy::KSplit;
    o.segments = 162;
    CHECK_THROWS_WITH(t.run(o), Catch::Contains("tuner.segments: 162 buckets asked for, the model has 161 tensors"));
    o.segments = 0;
    CHECK_THROWS_AS(t.run(o), InputError);
    o = {};
    o.horovod_threshold_bytes = -1;
    CHECK_THROWS_WITH(t.run(o), Catch::Contains("tuner.threshold"));
    o = {};
    o.streams = 0;
    CHECK_THROWS_WITH(t.run(o), Catch::Contains("tuner.streams"));
    o = {};
    o.cast = PackOn::Comm;
    o.transfer = Precision::FP32;
    CHECK_THROWS_WITH(t.run(o), Catch::Contains("tuner.cast: every bucket is sent in FP32, so nothing is cast"));
    o.transfer = Precision::FP16;
    o.cast = PackOn::Compute;
    o.fp32 = Fp32Tensors::Norm;
    CHECK_THROWS_WITH(t.run(o), Catch::Contains("tuner.cast: compute with tuner.fp32_tensors norm"));
    o.cast = PackOn::Comm;  // a bucket kept in FP32 is simply not cast there
    CHECK(t.run(o).plan.cast == PackOn::Comm);
    CHECK_THROWS_WITH(parse_strategy("fastest"), Catch::Contains("valid: optimal, k-split, per-tensor"));
  }
}

TEST_CASE("tuning is deterministic") {
  Model m = build_zoo_model("gpt2");
  Cluster c = load_cluster("dgx-a100");
  Tuner t(m, c, 512, 8, Precision::BF16);
  auto a = t.run({}), b = t.run({});
  CHECK(plan_to_json(a.plan) == plan_to_json(b.plan));
  CHECK(a.report.iteration_s == b.report.iteration_s);
}

TEST_CASE("what-if: sweeps and inverse questions") {
  const WhatIfSettings settings;
  WhatIf w(load_cluster("tencent-p40"), settings);
  WhatIfAxes axes;
  axes.models = {"alexnet_bn"};
  axes.gpus = {64, 1024};
  axes.strategies = {Strategy::Optimal, Strategy::Single};
  auto rows = w.sweep(axes);
  REQUIRE(rows.size() == 4);
  CHECK(rows[0].report.scaling_efficiency >= rows[1].report.scaling_efficiency);
  WhatIfPoint p{"alexnet_bn", 1024, 0, 64, Precision::FP16, "auto", Strategy::Optimal};
  double bw = w.min_bandwidth_for(p, 0.95);
  p.inter_bw_Gbps = bw;
  CHECK(w.evaluate(p).report.scaling_efficiency >= 0.95);
  p.inter_bw_Gbps = bw * 0.99;
  CHECK(w.evaluate(p).report.scaling_efficiency < 0.95);
  p.inter_bw_Gbps = 0;
  CHECK_THROWS_WITH(w.min_bandwidth_for(p, 0.99999999), Catch::Contains("unreachable"));
  CHECK_THROWS_AS(w.min_bandwidth_for(p, 1.5), InputError);
  // Deadline: the answer trains in time and one node fewer would not (candidates ascend).
  auto cands = w.gpu_candidates();
  auto r = w.min_gpus_for_deadline(p, 600, cands);
  CHECK(r.report.time_to_train_s <= 600);
  auto it = std::find(cands.begin(), cands.end(), r.point.gpus);
  REQUIRE(it != cands.begin());
  p.gpus = *(it - 1);
  CHECK(w.evaluate(p).report.time_to_train_s > 600);
  CHECK_THROWS_WITH(w.min_gpus_for_deadline(p, 1, cands), Catch::Contains("unreachable"));
  CHECK(parse_duration("10m", "--deadline") == 600);
  CHECK(parse_duration("1.5h", "--deadline") == 5400);
  CHECK_THROWS_AS(parse_duration("soon", "--deadline"), InputError);
  CHECK_THROWS_AS(parse_duration("-3m", "--deadline"), InputError);
  CHECK_THROWS_WITH(parse_duration("600", "--deadline"), Catch::Contains("--deadline: '600' needs a unit: s, m, h or d"));
  // Axes: lists, doubling ranges, stepped ranges; whole numbers where asked.
  CHECK(parse_range("8,64,512", "gpus", true) == std::vector<double>{8, 64, 512});
  CHECK(parse_range("8:64", "gpus", true) == std::vector<double>{8, 16, 32, 64});
  CHECK(parse_range("100:400:+100", "bw", false) == std::vector<double>{100, 200, 300, 400});
  CHECK_THROWS_WITH(parse_range("1.5", "gpus", true), Catch::Contains("gpus: values must be whole numbers"));
  CHECK_THROWS_WITH(parse_range("64:8", "gpus", true), Catch::Contains("needs 0 < MIN <= MAX"));
  CHECK_THROWS_WITH(parse_range("8:64:2", "gpus", true), Catch::Contains("+STEP"));
  CHECK_THROWS_WITH(split_list(",,", "model"), Catch::Contains("model: empty list"));
  // Candidates past the cluster's capacity grow by whole nodes up to the cap.
  const auto capped = w.gpu_candidates(w.cluster().capacity() + 3 * w.cluster().gpus_per_node);
  CHECK(capped.back() == w.cluster().capacity() + 3 * w.cluster().gpus_per_node);
  CHECK(w.gpu_candidates(2) == std::vector<int>{1, 2});
  // Casts apply to the points sent in FP16 or BF16; an FP32 point casts nothing.
  WhatIfSettings casting;
  casting.tune.cast = PackOn::Compute;
  WhatIf wc(load_cluster("tencent-p40"), casting);
  WhatIfPoint q{"alexnet_bn", 64, 0, 64, Precision::FP16, "auto", Strategy::Optimal};
  const WhatIfRow cast16 = wc.evaluate(q);
  CHECK(cast16.report.iteration_s > w.evaluate(q).report.iteration_s);
  q.precision = Precision::FP32;
  CHECK(wc.evaluate(q).report.iteration_s == w.evaluate(q).report.iteration_s);
}

TEST_CASE("processor sharing: optimal and k-split stay exact on one stream") {
  // Backward slowed while an allreduce runs (and, where the sharing is symmetric, the
  // allreduce slowed while backward runs): the shared programs against every partition,
  // judged by the predictor's own shared schedule. Models with layers that have
  // no parameters (backward runs on after the last gradient), on a CPU cluster with one
  // shared processor and on GPU clusters with backward's side only (--compute-slowdown).
  std::mt19937_64 rng(7);
  int cases = 0;
  struct Case {
    const char* cluster;
    int gpus;
    double sigma;
    std::optional<double> allreduce_sharing;
  };
  const Case setups[] = {{"local-cpu", 2, 0.3, {}},      {"local-cpu", 2, 1.0, {}},   {"local-cpu", 2, 0.83, 2.0},
                         {"dgx-a100", 16, 0.189, 0.0},   {"tencent-p40", 64, 0.4, 0.0}, {"dgx1-v100", 8, 1.0, 0.0}};
  for (const Case& setup : setups) {
    for (int trial = 0; trial < 10; ++trial) {
      Cluster c = load_cluster(setup.cluster);
      c.comm_compute_sharing = 0;
      c.allreduce_sharing.reset();
      std::uniform_int_distribution<int> len(3, 12);
      Model m = random_model(rng, len(rng), trial % 2 ? 0.3 : 0.0);
      if (setup.gpus > 2)  // GPU clusters: backward fast enough that the allreduces weigh
        for (auto& l : m.layers) l.measured->bwd_us *= 0.02;
      const int n = static_cast<int>(m.tensors.size());
      Tuner free_tuner(m, c, setup.gpus, 32, Precision::FP32);
      c.comm_compute_sharing = setup.sigma;
      c.allreduce_sharing = setup.allreduce_sharing;
      Tuner t(m, c, setup.gpus, 32, Precision::FP32);
      TuneOptions o;
      o.strategy = Strategy::Optimal;
      // Casts on compute keep the program exact: in backward (the same steps whatever the
      // partition) and back in each bucket's allreduce time.
      if (trial % 3 == 2 && setup.gpus == 2) o.cast = PackOn::Compute;
      TuneResult r = t.run(o);
      INFO(setup.cluster << " sigma " << setup.sigma << " trial " << trial << " n=" << n << " cast " << bool(o.cast));
      // The objective is the end of the stretched backward and of the allreduces, on the
      // slowest GPU's clock (the DGX files' compute_variation): the report's backward is the
      // mean GPU's.
      const double late_s = (slowest_gpu_factor(c, setup.gpus) - 1) * t.compute().backward_s();
      CHECK(r.objective_s == Approx(std::max(r.report.backward_s + late_s, r.report.comm_end_s)).epsilon(1e-12));
      CHECK(r.search_gap_s == 0);
      CHECK(r.proven());
      // Equal to the best partition; so never worse than the free-overlap optimum judged
      // under sharing.
      const double brute = brute_force(t, o, n, 0);
      CHECK(r.report.iteration_s == Approx(brute).epsilon(1e-9));
      CHECK(r.report.iteration_s <= t.evaluate(free_tuner.run(o).plan).iteration_s * (1 + 1e-12));
      for (int segments : {2, 3}) {
        if (segments > n) continue;
        o.strategy = Strategy::KSplit;
        o.segments = segments;
        const TuneResult k = t.run(o);
        CHECK(static_cast<int>(k.plan.buckets.size()) == segments);
        CHECK(k.report.iteration_s == Approx(brute_force(t, o, n, segments)).epsilon(1e-9));
      }
      ++cases;
    }
  }
  CHECK(cases == 60);
}

TEST_CASE("processor sharing: optimal's program by values equals the best k-split's by fronts on larger models") {
  // Two exact programs, independent of each other: optimal's (one function of the queued
  // work per prefix) and k-split's (Pareto fronts of states), the latter over every bucket
  // count and, as optimal's fallback, over any count at once. Models of 20-40 tensors, too
  // many for brute force, with backward from fast enough that the allreduces queue to slow
  // enough that they hide, so the functions have many pieces (leaving out the points where
  // two pieces cross fails this test).
  std::mt19937_64 rng(11);
  int cases = 0;
  for (const char* cname : {"dgx-a100", "tencent-p40", "local-cpu"}) {
    for (int trial = 0; trial < 24; ++trial) {
      Cluster c = load_cluster(cname);
      const int gpus = c.name == "local-cpu" ? 2 : 64;
      c.comm_compute_sharing = trial % 2 ? 0.189 : 1.0;
      c.allreduce_sharing = c.name == "local-cpu" ? std::optional<double>() : std::optional<double>(0.0);
      std::uniform_int_distribution<int> len(20, 40);
      Model m = random_model(rng, len(rng), trial % 4 < 2 ? 0.0 : 0.3);
      const double scale = c.name == "local-cpu" ? 0.1 * (1 + trial % 8) : 0.002 * (1 + trial % 10);
      for (auto& l : m.layers) l.measured->bwd_us *= scale;
      const int n = static_cast<int>(m.tensors.size());
      Tuner t(m, c, gpus, 32, Precision::FP32);
      TuneOptions o;
      const TuneResult r = t.run(o);
      double best_k = INFINITY;
      o.strategy = Strategy::KSplit;
      for (o.segments = 1; o.segments <= n; ++o.segments) {
        const TuneResult k = t.run(o);
        REQUIRE(k.proven());
        best_k = std::min(best_k, k.report.iteration_s);
      }
      // optimal's fallback past the values program's budget: the fronts over any count.
      o.strategy = Strategy::Optimal;
      o.exhaustive_scan = true;
      const TuneResult fronts = t.run(o);
      INFO(cname << " trial " << trial << " n=" << n);
      REQUIRE(r.proven());
      REQUIRE(fronts.proven());
      CHECK(r.report.iteration_s == Approx(best_k).epsilon(1e-9));
      CHECK(fronts.report.iteration_s == Approx(best_k).epsilon(1e-9));
      ++cases;
    }
  }
  CHECK(cases == 72);
}

TEST_CASE("processor sharing: on two streams the search climbs - copies on one stream keep it exact") {
  // Two streams: the busy time after a prefix is not one interval, and the search refines
  // the free-overlap optimum by hill climbing. A packing copy or a cast on comm runs on
  // the bucket's stream, part of its work: on one stream the program stays exact.
  std::mt19937_64 rng(8);
  int cases = 0, at_brute = 0;
  for (double sigma : {0.3, 1.0}) {
    for (int trial = 0; trial < 12; ++trial) {
      Cluster c = load_cluster("local-cpu");
      c.comm_compute_sharing = sigma;
      std::uniform_int_distribution<int> len(3, 12);
      Model m = random_model(rng, len(rng));
      const int n = static_cast<int>(m.tensors.size());
      Tuner t(m, c, 2, 32, Precision::FP32);
      TuneOptions o;
      o.strategy = Strategy::Optimal;
      if (trial % 3 == 1) o.streams = 2;
      else if (trial % 3 == 0) o.packing = Packing::Pack;
      else o.cast = PackOn::Comm;  // delays each bucket as a packing copy does
      TuneResult r = t.run(o);
      INFO("sigma " << sigma << " trial " << trial << " n=" << n);
      CHECK(r.objective_s == Approx(std::max(r.report.backward_s, r.report.comm_end_s)).epsilon(1e-12));
      CHECK(r.local_search == (o.streams > 1 ? "several streams" : ""));
      CHECK(r.proven() == (o.streams == 1));
      for (Strategy s : {Strategy::Single, Strategy::PerTensor}) {
        TuneOptions b = o;
        b.strategy = s;
        CHECK(r.report.iteration_s <= t.run(b).report.iteration_s * (1 + 1e-12));
      }
      if (o.packing == Packing::Pack) {
        // One of the climb's starting points is the exact partition without the copies
        // (the same backward steps when the copies run off the compute stream).
        TuneOptions view = o;
        view.packing = Packing::View;
        const TuneResult exact_view = t.run(view);
        REQUIRE(exact_view.proven());
        std::vector<int> starts;
        for (const auto& b : exact_view.plan.buckets) starts.push_back(b.begin);
        CHECK(r.report.iteration_s <= t.evaluate(t.plan_for(starts, o)).iteration_s * (1 + 1e-12));
      }
      const double brute = brute_force(t, o, n, 0);
      CHECK(r.report.iteration_s >= brute * (1 - 1e-12));
      if (o.streams == 1) {
        CHECK(r.report.iteration_s <= brute * (1 + 1e-9));  // exact
        continue;
      }
      at_brute += r.report.iteration_s <= brute * (1 + 1e-9);
      ++cases;
    }
  }
  // A local search: report how often it is the global optimum (it is not guaranteed).
  WARN("shared-schedule local search at the brute-force optimum in " << at_brute << " of " << cases << " cases");
  CHECK(at_brute * 10 >= cases * 8);
}

TEST_CASE("copies back: the search minimises the end of the last copy, exactly") {
  // DDP's buckets (copied in backward) are copied back after their allreduces, in bucket
  // order. Memory slow enough that the copies weigh as much as the allreduces: the
  // partition whose allreduces end first is then often not the best one.
  std::mt19937_64 rng(20261206);
  int cases = 0, moved = 0, shared_cases = 0, shared_at_brute = 0;
  for (double mem_GBps : {2.0, 8.0, 40.0}) {
    for (int trial = 0; trial < 10; ++trial) {
      Cluster c = load_cluster("local-cpu");
      c.comm_compute_sharing = 0;
      c.device.mem_bw_GBps = mem_GBps;
      std::uniform_int_distribution<int> len(3, 12);
      Model m = random_model(rng, len(rng));
      const int n = static_cast<int>(m.tensors.size());
      Tuner t(m, c, 2, 32, Precision::FP32);
      TuneOptions o;
      o.strategy = Strategy::Optimal;
      o.packing = Packing::Inline;
      const TuneResult r = t.run(o);
      INFO("memory " << mem_GBps << " GB/s, trial " << trial << " n=" << n);
      REQUIRE(r.report.copy_back_s > 0);
      // The objective is the end of the last copy: backward, the allreduces and the copies.
      CHECK(r.objective_s == Approx(std::max(r.report.backward_s, r.report.comm_end_s) + r.report.copy_back_s)
                                 .epsilon(1e-12));
      // Against every partition; and the partition whose last allreduce ends first.
      double best = INFINITY, first_end = INFINITY, at_first_end = 0;
      for (unsigned mask = 0; mask < (1u << (n - 1)); ++mask) {
        const Report p = t.evaluate(t.plan_for(starts_of(mask, n), o), false);
        best = std::min(best, p.iteration_s);
        const double end = std::max(p.backward_s, p.comm_end_s);
        if (end < first_end * (1 - 1e-12)) {
          first_end = end;
          at_first_end = p.iteration_s;
        }
      }
      CHECK(r.report.iteration_s == Approx(best).epsilon(1e-9));
      moved += at_first_end > best * (1 + 1e-9);
      ++cases;
      o.strategy = Strategy::KSplit;
      o.segments = std::min(n, 3);
      const TuneResult k = t.run(o);
      CHECK(static_cast<int>(k.plan.buckets.size()) == o.segments);
      CHECK(k.report.iteration_s == Approx(brute_force(t, o, n, o.segments)).epsilon(1e-9));
      // Under processor sharing the copies share the core with the allreduces still
      // running; the search's local climb judges partitions by the same schedule.
      c.comm_compute_sharing = 1.0;
      Tuner shared(m, c, 2, 32, Precision::FP32);
      o.strategy = Strategy::Optimal;
      const TuneResult sr = shared.run(o);
      CHECK(sr.objective_s == Approx(std::max(sr.report.backward_s, sr.report.comm_end_s) + sr.report.copy_back_s)
                                  .epsilon(1e-12));
      const double shared_best = brute_force(shared, o, n, 0);
      CHECK(sr.report.iteration_s >= shared_best * (1 - 1e-12));
      shared_at_brute += sr.report.iteration_s <= shared_best * (1 + 1e-9);
      ++shared_cases;
    }
  }
  WARN("copies back: the first-ending partition is not the best in " << moved << " of " << cases << " cases; "
       "under sharing the search is at the brute-force optimum in " << shared_at_brute << " of " << shared_cases);
  CHECK(moved > 0);
  CHECK(shared_at_brute * 10 >= shared_cases * 8);
}

TEST_CASE("copies back: on a large backlogged model the search stops at its budget and says how much it may miss") {
  std::mt19937_64 rng(5);
  Model m = random_model(rng, 800);
  for (auto& l : m.layers) l.measured->bwd_us *= 0.05;  // communication backlogged: the bound programs scan long
  // Without processor sharing: under it, copies back are searched locally (below).
  Cluster cluster = load_cluster("tencent-p40");
  cluster.comm_compute_sharing = 0;
  cluster.allreduce_sharing.reset();
  Tuner t(m, cluster, 1024, 32, Precision::FP16);
  TuneOptions o;
  o.packing = Packing::Inline;
  const TuneResult r = t.run(o);
  const Report& p = r.report;
  CHECK(r.objective_s == Approx(std::max(p.backward_s, p.comm_end_s) + p.copy_back_s).epsilon(1e-12));
  REQUIRE(r.search_gap_s > 0);
  WARN("800 backlogged tensors: the search stopped within " << r.search_gap_s / r.objective_s * 100
       << " % of the least end of the copies back");
  CHECK(r.search_gap_s < 0.05 * r.objective_s);  // the bounds hold it close
  // A small model is searched to the end.
  const Model small_model = random_model(rng, 12);
  Tuner small(small_model, cluster, 1024, 32, Precision::FP16);
  CHECK(small.run(o).search_gap_s == 0);
  CHECK(small.run(o).proven());
}

TEST_CASE("tuner: the best distinct plans for --validate sim, ranked by prediction") {
  const Model m = build_zoo_model("resnet50");
  const Cluster c = load_cluster("tencent-p40");  // the tuner keeps a reference
  const Tuner t(m, c, 64, 32, Precision::FP16);
  TuneOptions o;
  const TuneResult tuned = t.run(o);
  const auto best = best_distinct_plans(t, o, tuned, 3);
  REQUIRE(best.size() == 3);
  CHECK(best[0].label == "optimal");  // the optimum is never beaten by prediction
  CHECK(best[0].result.report.iteration_s == tuned.report.iteration_s);
  for (size_t i = 1; i < best.size(); ++i) {
    CHECK(best[i - 1].result.report.iteration_s <= best[i].result.report.iteration_s);
    for (size_t j = 0; j < i; ++j) CHECK_FALSE(best[i].result.plan.buckets == best[j].result.plan.buckets);
  }
  CHECK(best_distinct_plans(t, o, tuned, 100).size() <= 1 + std::size(kAllStrategies) + 2);
  CHECK_THROWS_WITH(best_distinct_plans(t, o, tuned, 0), Catch::Contains("tuner.top: must be >= 1"));
}

TEST_CASE("framework export: each framework's settings form the buckets fuseplan prices") {
  const Model m = build_zoo_model("resnet50");
  const Cluster c = load_cluster("tencent-p40");
  const Tuner t(m, c, 64, 32, Precision::FP16);
  auto elems = [&](const PlanBucket& b) {
    int64_t e = 0;
    for (int pos = b.begin; pos < b.end; ++pos) e += m.tensors[m.tensor_at_backward(pos)].numel;
    return e;
  };
  TuneOptions o;
  o.strategy = Strategy::KSplit;
  o.segments = 4;
  const Plan plan = t.run(o).plan;
  SECTION("horovod: one group per bucket, the plan's tensors, a threshold that holds each") {
    const FrameworkSettings s = framework_settings(t, plan, Framework::Horovod);
    REQUIRE(s.groups.size() == plan.buckets.size());
    CHECK(s.boundaries_missing + s.boundaries_extra == 0);
    for (size_t k = 0; k < plan.buckets.size(); ++k) {
      const auto& b = plan.buckets[k];
      REQUIRE(s.groups[k].size() == size_t(b.end - b.begin));
      CHECK(s.groups[k].front() == m.tensors[m.tensor_at_backward(b.begin)].name);
      CHECK(s.fusion_threshold_bytes >= elems(b) * 2);
    }
    CHECK(s.predicted.iteration_s >= s.plan_predicted.iteration_s);  // Horovod copies into its buffer
  }
  SECTION("ddp: a plan DDP itself made is found exactly, with its caps, as each torch forms it") {
    TuneOptions d;
    d.strategy = Strategy::Ddp;
    auto exact = [&](const FrameworkSettings& s, const Plan& p) {
      CHECK(s.boundaries_missing + s.boundaries_extra == 0);
      CHECK(s.approximation.buckets.size() == p.buckets.size());
    };
    // DDP(bucket_cap_mb unset): 1 MiB then 25 MiB under either torch.
    const Plan by_default = t.run(d).plan;
    const FrameworkSettings unset = framework_settings(t, by_default, Framework::Ddp);
    exact(unset, by_default);
    CHECK(unset.cap_unset);
    CHECK(unset.first_bucket_bytes == int64_t(1) << 20);
    // DDP(bucket_cap_mb=10) under torch 2.6: the first bucket capped at 10 MiB too.
    d.ddp_cap_bytes = d.ddp_first_bytes = int64_t(10) << 20;
    const Plan torch26 = t.run(d).plan;
    const FrameworkSettings given = framework_settings(t, torch26, Framework::Ddp);
    exact(given, torch26);
    CHECK_FALSE(given.cap_unset);
    CHECK(given.first_bucket_bytes == given.cap_units);
    // A 1 MiB first bucket before 10 MiB ones: torch 1.13 only (bucket_cap_mb=10 with
    // _DEFAULT_FIRST_BUCKET_BYTES at 1 MiB); the portable settings cannot form it.
    d.ddp_first_bytes = int64_t(1) << 20;
    const Plan torch113 = t.run(d).plan;
    auto begins = [](const Plan& p) {
      std::vector<int> b;
      for (const auto& k : p.buckets) b.push_back(k.begin);
      return b;
    };
    REQUIRE(begins(torch113) != begins(torch26));
    exact(framework_settings(t, torch113, Framework::Ddp, DdpTorch::V1_13), torch113);
    const FrameworkSettings portable = framework_settings(t, torch113, Framework::Ddp);
    CHECK(portable.boundaries_missing + portable.boundaries_extra > 0);
    CHECK((portable.cap_unset || portable.first_bucket_bytes == portable.cap_units));
    CHECK_THROWS_WITH(parse_ddp_torch("2.0", "--torch"), "--torch: unknown torch '2.0' (valid: 2.6, 1.13)");
  }
  SECTION("ddp and deepspeed: the chosen cap's buckets follow the framework's rule") {
    const FrameworkSettings ds = framework_settings(t, plan, Framework::DeepSpeed);
    const auto& bs = ds.approximation.buckets;
    for (size_t k = 0; k < bs.size(); ++k) {
      if (bs[k].end - bs[k].begin > 1) CHECK(elems(bs[k]) <= ds.cap_units);
      if (k + 1 < bs.size()) CHECK(elems(bs[k]) + m.tensors[m.tensor_at_backward(bs[k].end)].numel > ds.cap_units);
    }
    const FrameworkSettings dd = framework_settings(t, plan, Framework::Ddp);
    CHECK(dd.cap_units > 0);
    CHECK(dd.boundaries_missing + dd.boundaries_extra <= int(plan.buckets.size()) + 1);
  }
  SECTION("a plan that casts on comm (fuseplan-exec's, PlanDDP's): DDP and Horovod priced casting in backward") {
    TuneOptions on_comm = o;
    on_comm.cast = PackOn::Comm;
    const Plan cast_plan = t.run(on_comm).plan;
    REQUIRE(cast_plan.cast == PackOn::Comm);
    for (Framework f : {Framework::Ddp, Framework::Horovod}) {
      const FrameworkSettings s = framework_settings(t, cast_plan, f);
      CHECK(s.approximation.cast == PackOn::Compute);
      CHECK(s.predicted.iteration_s == Approx(t.evaluate(s.approximation).iteration_s).epsilon(1e-12));
      CHECK(s.predicted.backward_copies_s > 0);  // the casts in backward
    }
    CHECK(framework_settings(t, cast_plan, Framework::DeepSpeed).approximation.cast == PackOn::Comm);
    CHECK_FALSE(framework_settings(t, plan, Framework::Ddp).approximation.cast);  // nothing to cast: none
  }
  CHECK_THROWS_WITH(parse_framework("fsdp"), Catch::Contains("export.to: unknown framework 'fsdp' (valid: ddp, horovod, deepspeed)"));
}

TEST_CASE("processor sharing: with packing copies on the bucket's stream the search is exact") {
  // Random models on dgx1-v100 at 8 and 64 GPUs, a copy into the fusion buffer before each
  // allreduce and out after it (Horovod's), backward slowed 18.9 % or 50 % beside an
  // allreduce. The copies are part of each bucket's work on its stream, so the program is
  // exact: the brute-force best in all 30 cases, never above the partition that is best
  // without the copies.
  std::mt19937_64 rng(22);
  int cases = 0, at_brute = 0;
  for (int trial = 0; trial < 30; ++trial) {
    Cluster c = load_cluster("dgx1-v100");
    const int gpus = trial % 3 == 0 ? 8 : 64;
    c.comm_compute_sharing = trial % 2 ? 0.189 : 0.5;
    c.allreduce_sharing = 0.0;
    std::uniform_int_distribution<int> len(6, 12);
    Model m = random_model(rng, len(rng), trial % 4 < 2 ? 0.0 : 0.3);
    for (auto& l : m.layers) l.measured->bwd_us *= 0.002 * (1 + trial % 10);
    const int n = static_cast<int>(m.tensors.size());
    Tuner t(m, c, gpus, 32, Precision::FP32);
    TuneOptions o;
    o.packing = Packing::Pack;
    const TuneResult r = t.run(o);
    INFO("trial " << trial << " n=" << n);
    CHECK(r.local_search.empty());
    CHECK(r.proven());
    TuneOptions view = o;
    view.packing = Packing::View;
    std::vector<int> starts;
    for (const auto& b : t.run(view).plan.buckets) starts.push_back(b.begin);
    CHECK(r.report.iteration_s <= t.evaluate(t.plan_for(starts, o)).iteration_s * (1 + 1e-12));
    at_brute += r.report.iteration_s <= brute_force(t, o, n, 0) * (1 + 1e-9);
    ++cases;
  }
  CHECK(at_brute == cases);
}

TEST_CASE("processor sharing: past the exact program's budget the search says so and climbs") {
  // k-split's fronts price every bucket of the model first: 1500 tensors are past their
  // budget at once, so the search is the climb from the free-overlap partition.
  std::mt19937_64 rng(5);
  const Cluster c = load_cluster("local-cpu");
  REQUIRE(c.sharing(2).any());
  Model m = random_model(rng, 1500);
  Tuner t(m, c, 2, 32, Precision::FP32);
  TuneOptions o;
  o.strategy = Strategy::KSplit;
  o.segments = 2;
  const TuneResult r = t.run(o);
  CHECK_FALSE(r.proven());
  CHECK(r.local_search == "past the exact program's budget");
  REQUIRE(r.plan.buckets.size() == 2);
  // Never worse than where it started: the free-overlap 2-split, judged under sharing.
  Cluster free_overlap = c;
  free_overlap.comm_compute_sharing = 0;
  free_overlap.allreduce_sharing.reset();
  Tuner ft(m, free_overlap, 2, 32, Precision::FP32);
  std::vector<int> starts;
  for (const auto& b : ft.run(o).plan.buckets) starts.push_back(b.begin);
  CHECK(r.report.iteration_s <= t.evaluate(t.plan_for(starts, o)).iteration_s * (1 + 1e-12));
}
