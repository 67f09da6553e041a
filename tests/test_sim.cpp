// The SimGrid replay of collective schedules: on a contention-free platform (one rank per
// node, full bisection) every algorithm's simulated allreduce equals its closed form.
#include <catch2/catch.hpp>

#include "fuseplan/models/error.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/zoo.hpp"
#include "fuseplan/sim/simulator.hpp"

using namespace fuseplan;

namespace {
// One GPU per node: every message crosses two NICs, alpha-beta exactly.
Cluster one_rank_per_node(int nodes) {
  Cluster c = load_cluster("tencent-p40");
  c.nodes = nodes;
  c.gpus_per_node = 1;
  return c;
}
}  // namespace

TEST_CASE("simulated allreduce equals the closed form on a contention-free platform") {
  for (int p : {2, 3, 4, 7, 8, 16}) {
    Cluster c = one_rank_per_node(p);
    for (const auto& algo : algorithms()) {
      for (int64_t bytes : {int64_t(1) << 10, int64_t(1) << 20, int64_t(64) << 20}) {
        INFO(algo.name << " p=" << p << " bytes=" << bytes);
        sim::SimCollectiveResult r;
        try {
          r = sim::simulate_allreduce(c, p, std::string(algo.name), bytes / 2, Precision::FP16);
        } catch (const InputError&) {
          continue;  // does not apply to this layout
        }
        bool pow2 = (p & (p - 1)) == 0;
        if (algo.name == "double_binary_tree" || (algo.name == "binary_blocks" && !pow2)) {
          // Closed forms that charge every rank every round: the tree's pipeline ramp-up
          // and drain, binary blocks' idle ranks (they run ahead in the simulation). The
          // simulation is faster, never slower.
          CHECK(r.simulated_s <= r.closed_form_s * 1.01);
          CHECK(r.simulated_s >= r.closed_form_s * 0.7);
        } else {
          CHECK(r.simulated_s == Approx(r.closed_form_s).epsilon(0.01));
        }
      }
    }
  }
}

TEST_CASE("simulated allreduce is deterministic and refuses what it cannot model") {
  Cluster c = one_rank_per_node(8);
  auto a = sim::simulate_allreduce(c, 8, "ring", 1 << 20, Precision::FP16);
  auto b = sim::simulate_allreduce(c, 8, "ring", 1 << 20, Precision::FP16);
  CHECK(a.simulated_s == b.simulated_s);
  CHECK(a.messages == 2 * 7 * 8);
  CHECK_THROWS_AS(sim::simulate_allreduce(c, 8, "torus2d", 0, Precision::FP16), InputError);
  CHECK_THROWS_WITH(sim::simulate_allreduce(c, 7, "torus2d", 1024, Precision::FP16), Catch::Contains("does not apply"));
  Cluster staged = c;
  staged.inter->gdr = false;
  CHECK_THROWS_WITH(sim::simulate_allreduce(staged, 8, "ring", 1024, Precision::FP16), Catch::Contains("gdr false"));
}

TEST_CASE("simulated allreduce on two-level clusters (shared NICs, intra-node links)") {
  for (const char* cname : {"dgx1-v100", "dgx-a100", "tencent-p40"}) {
    Cluster c = load_cluster(cname);
    for (int p : {8, 16, 32}) {
      for (const char* algo : {"ring", "hierarchical", "hierarchical_rs", "rabenseifner", "torus2d"}) {
        INFO(cname << " " << algo << " p=" << p);
        auto r = sim::simulate_allreduce(c, p, algo, int64_t(16) << 20, Precision::FP16);
        CHECK(r.simulated_s == Approx(r.closed_form_s).epsilon(0.01));
      }
    }
  }
}

namespace {
// Simulates in a child process; returns the report JSON.
nlohmann::json simulate(const Model& m, const Cluster& c, const Plan& p, const sim::SimOptions& o = {}) {
  return nlohmann::json::parse(sim::run_isolated([&] { return report_to_json(sim::simulate_plan(m, c, p, {}, {}, o)).dump(); }));
}
}  // namespace

TEST_CASE("a simulated iteration matches the predictor on a contention-free platform") {
  Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("tencent-p40");
  Tuner t(m, c, 64, 32, Precision::FP16);
  for (Strategy s : {Strategy::Optimal, Strategy::Single, Strategy::PerTensor, Strategy::Horovod, Strategy::Ddp}) {
    TuneOptions o;
    o.strategy = s;
    TuneResult r = t.run(o);
    auto j = simulate(m, c, r.plan);
    INFO(strategy_name(s));
    CHECK(j["iteration_s"].get<double>() == Approx(r.report.iteration_s).epsilon(0.01));
    CHECK(j["comm_end_s"].get<double>() == Approx(r.report.comm_end_s).epsilon(0.01));
    CHECK(j["source"] == "simulated");
  }
}

TEST_CASE("stragglers and jitter slow the iteration; the same seed gives the same simulation") {
  Model m = build_zoo_model("alexnet_bn");
  Cluster c = load_cluster("tencent-p40");
  Tuner t(m, c, 16, 64, Precision::FP16);
  Plan p = t.run({}).plan;
  double base = simulate(m, c, p)["iteration_s"];
  sim::SimOptions slow;
  slow.stragglers = {{3, 1.5}};
  double straggled = simulate(m, c, p, slow)["iteration_s"];
  // Everyone waits for rank 3's gradients: at least its extra compute.
  double compute = t.compute().forward_s() + t.compute().backward_s();
  CHECK(straggled >= base + 0.5 * compute * 0.99);
  sim::SimOptions jit;
  jit.jitter = 0.05;
  jit.iterations = 3;
  auto a = simulate(m, c, p, jit), b = simulate(m, c, p, jit);
  CHECK(a.dump() == b.dump());
  CHECK(a["iteration_s"].get<double>() > base);
  jit.seed = 2;
  CHECK(simulate(m, c, p, jit)["iteration_s"] != a["iteration_s"]);
  sim::SimOptions bad;
  bad.stragglers = {{16, 2.0}};
  CHECK_THROWS_WITH(simulate(m, c, p, bad), Catch::Contains("rank 16 does not exist"));
}

TEST_CASE("an oversubscribed fat-tree slows what crosses the core, as a hand calculation says") {
  // 16 nodes of one rank, 8 nodes per leaf, 4:1 oversubscribed core.
  Cluster c = one_rank_per_node(16);
  c.inter->nodes_per_leaf = 8;
  c.inter->oversubscription = 4;
  const int64_t count = int64_t(32) << 20;  // 64 MiB of FP16
  const double n = 2.0 * double(count), beta = 8.0 / (c.inter->nic_bw_Gbps * 1e9);
  // Recursive doubling exchanges the whole vector at distances 1, 2, 4, 8: at distance 8
  // all 8 nodes of a leaf cross the core at once, each at a quarter of its NIC's rate:
  // the closed form misses 3 n beta.
  auto rd = sim::simulate_allreduce(c, 16, "recursive_doubling", count, Precision::FP16);
  CHECK(rd.simulated_s == Approx(rd.closed_form_s + 3 * n * beta).epsilon(0.01));
  CHECK(rd.simulated_s > 1.3 * rd.closed_form_s);
  // A node-major ring crosses the core with one flow each way: no slowdown.
  auto ring = sim::simulate_allreduce(c, 16, "ring", count, Precision::FP16);
  CHECK(ring.simulated_s == Approx(ring.closed_form_s).epsilon(0.01));
  c.inter->nodes_per_leaf = 0;
  CHECK_THROWS_WITH(sim::simulate_allreduce(c, 16, "ring", count, Precision::FP16), Catch::Contains("nodes_per_leaf"));
}
