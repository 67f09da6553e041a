// Golden event logs: small simulations (2-4 ranks) whose every event (compute layers,
// bucket allreduces, per rank, in simulated microseconds) is pinned in
// tests/data/golden/*.log. A change of the simulator that moves any timestamp by a
// picosecond fails here; if the change is intended, regenerate with
// FUSEPLAN_UPDATE_GOLDEN=1 and review the diff. The first scenario is also checked
// against a hand calculation, so the pinned numbers are not merely self-consistent.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/sim/simulator.hpp"

using namespace fuseplan;

namespace {

const std::string kData = FUSEPLAN_TEST_DATA;

struct GoldenCase {
  std::string name;
  int gpus;
  int gpus_per_node;
  std::vector<PlanBucket> buckets;
  sim::SimOptions opt;
};

Plan make_plan(const Model& m, const Cluster& c, const GoldenCase& s) {
  Plan p;
  p.model = m.name;
  p.tensors = static_cast<int>(m.tensors.size());
  p.params = m.param_count();
  p.fingerprint = m.fingerprint_hex();
  p.cluster = c.name;
  p.gpus = s.gpus;
  p.batch_per_gpu = 8;
  p.compute = Precision::FP16;
  p.strategy = "golden";
  p.buckets = s.buckets;
  return p;
}

std::string event_log(const Report& r) {
  std::ostringstream os;
  char line[512];
  std::snprintf(line, sizeof line, "iteration_us %.6f comm_end_us %.6f exposed_us %.6f\n", r.iteration_s * 1e6,
                r.comm_end_s * 1e6, r.exposed_comm_s * 1e6);
  os << line;
  for (const auto& e : r.timeline.events) {
    std::snprintf(line, sizeof line, "rank %d %-7s %-9s %-22s start_us %14.6f dur_us %12.6f bytes %lld\n", e.rank,
                  e.stream.c_str(), e.category.c_str(), e.name.c_str(), e.start_s * 1e6, e.dur_s * 1e6,
                  static_cast<long long>(e.bytes));
    os << line;
  }
  return os.str();
}

std::string simulate_log(const GoldenCase& s) {
  Model m = load_model_file(kData + "/golden-model.json");
  Cluster c = load_cluster(kData + "/golden-cluster.json");
  c.gpus_per_node = s.gpus_per_node;
  Plan p = make_plan(m, c, s);
  sim::SimOptions o = s.opt;
  o.trace_ranks = s.gpus;
  return event_log(sim::simulate_plan(m, c, p, {}, {}, o));  // the Report comes back from its process losslessly
}

void compare_golden(const std::string& name, const std::string& got) {
  const std::string path = kData + "/golden/" + name + ".log";
  if (const char* u = std::getenv("FUSEPLAN_UPDATE_GOLDEN"); u && std::string(u) == "1") {
    std::ofstream(path) << got;
    WARN("updated " << path);
    return;
  }
  std::ifstream in(path);
  REQUIRE(in.good());
  std::stringstream want;
  want << in.rdbuf();
  // Line by line, so a failure names the first event that moved.
  std::istringstream g(got), w(want.str());
  std::string gl, wl;
  int line = 0;
  while (true) {
    bool more_g = static_cast<bool>(std::getline(g, gl)), more_w = static_cast<bool>(std::getline(w, wl));
    ++line;
    INFO(path << " line " << line);
    REQUIRE(more_g == more_w);
    if (!more_g) break;
    REQUIRE(gl == wl);
  }
}

void check_golden(const GoldenCase& s) { compare_golden(s.name, simulate_log(s)); }

// A schedule beyond fusion on the golden model and cluster: its event log and result.
struct ScheduleLog {
  std::string log;
  PipelineResult model, simulated;
};
ScheduleLog schedule_log(int gpus, int gpus_per_node, const PipelineSchedule& sched) {
  Model m = load_model_file(kData + "/golden-model.json");
  Cluster c = load_cluster(kData + "/golden-cluster.json");
  c.gpus_per_node = gpus_per_node;
  PipelineModel pm(m, c, gpus, 8, Precision::FP16);
  sim::SimOptions o;
  o.iterations = 3;
  o.trace_ranks = gpus;
  const auto r = sim::simulate_schedule(pm, sched, o);
  Report rep;  // the event_log format: the period, and the events
  rep.iteration_s = r.result.iteration_s;
  rep.timeline.events = r.events;
  return {event_log(rep), pm.evaluate(sched), r.result};
}

// A number from the first event line starting with `prefix` and containing `what`.
double event_field(const std::string& log, const std::string& prefix, const std::string& what, const std::string& key) {
  std::istringstream in(log);
  for (std::string l; std::getline(in, l);)
    if (l.rfind(prefix, 0) == 0 && l.find(what) != std::string::npos) return std::stod(l.substr(l.find(key) + key.size()));
  FAIL("no event '" << prefix << "' with '" << what << "'");
  return 0;
}

PlanBucket bucket(int begin, int end, const char* algorithm) {
  PlanBucket b;
  b.begin = begin;
  b.end = end;
  b.algorithm = algorithm;
  return b;
}

}  // namespace

TEST_CASE("golden: 2 ranks in one node, ring, two buckets (and a hand calculation)") {
  GoldenCase s{"ring_2ranks", 2, 2, {bucket(0, 2, "ring"), bucket(2, 4, "ring")}, {}};
  check_golden(s);
  // Bucket 0 = fc3.bias + fc3.weight = 2570 FP16 elements; each rank owns 1285 (2570 B).
  // Ring on 2 ranks: launch 5 us, a reduce-scatter step (2 us latency + 2570 B at 1 GB/s),
  // the reduction of 2570 B at 10 GB/s, an allgather step: 14.397 us.
  const double want_us = 5 + (2 + 2.570) + 0.257 + (2 + 2.570);
  const std::string log = simulate_log(s);
  CHECK(event_field(log, "rank 0 comm0", "bucket 0", "dur_us") == Approx(want_us).epsilon(1e-9));
  // fc3's backward (20 us at batch 8) readies bucket 0: it starts 20 us into backward,
  // after forward (100 + 100 + 10 us).
  CHECK(event_field(log, "rank 0 comm0", "bucket 0", "start_us") == Approx(210 + 20).epsilon(1e-9));
}

TEST_CASE("golden: 4 ranks on 2 nodes, hierarchical, a straggler") {
  GoldenCase s{"hierarchical_4ranks_straggler", 4, 2, {bucket(0, 4, "hierarchical")}, {}};
  s.opt.stragglers = {{3, 1.5}};
  check_golden(s);
}

TEST_CASE("golden: 3 ranks on 2 nodes, rabenseifner, jitter, two iterations") {
  GoldenCase s{"rabenseifner_3ranks_jitter", 3, 2, {bucket(0, 2, "rabenseifner"), bucket(2, 4, "rabenseifner")}, {}};
  s.opt.jitter = 0.1;
  s.opt.seed = 7;
  s.opt.iterations = 2;
  check_golden(s);
}

TEST_CASE("golden: 4 ranks on 4 nodes, 2:1 oversubscribed leaves, recursive doubling") {
  GoldenCase s{"recursive_doubling_4nodes_oversubscribed", 4, 1, {bucket(0, 4, "recursive_doubling")}, {}};
  check_golden(s);
  // The whole gradient (267284 B) is exchanged at distance 1 inside a leaf (10 us + n at
  // 1 GB/s), then at distance 2 across leaves, where the two flows of a leaf share its
  // 1 GB/s uplink (10 us + n at 0.5 GB/s); a reduction (n at 10 GB/s) follows each; launch 5 us.
  const double n = 267.284;  // us for the gradient at 1 GB/s
  const double want_us = 5 + (10 + n) + n / 10 + (10 + 2 * n) + n / 10;
  CHECK(event_field(simulate_log(s), "rank 0 comm0", "bucket 0", "dur_us") == Approx(want_us).epsilon(1e-9));
}

TEST_CASE("golden: schedule, 2 ranks, tensors cut in halves, priority, per-layer gating") {
  PipelineSchedule s;
  s.bounds = {2570, 2570 + 32768, 2570 + 65536, 2570 + 65536 + 32768, 133642};  // fc3 | fc2 / 2 | fc1 / 2
  s.order = Order::Priority;
  s.gate = Gate::PerLayer;
  s.step_update = false;
  s.algorithm = "ring";
  const ScheduleLog g = schedule_log(2, 2, s);
  compare_golden("schedule_partitioned_2ranks", g.log);
  // One node, one message at a time: the ring replays its closed form exactly.
  CHECK(g.simulated.iteration_s == Approx(g.model.iteration_s).epsilon(1e-9));
  REQUIRE(g.simulated.messages.size() == 5);
  for (size_t i = 0; i < 5; ++i) CHECK(g.simulated.messages[i].end_s == Approx(g.model.messages[i].end_s).epsilon(1e-9));
  // fc3's gradients (partition 0) leave when its backward (20 us at batch 8) ends; each
  // forward carries its layer's update (per-layer), so fc1's forward is 100 us + update.
  CHECK(g.simulated.messages[0].start_s == Approx(g.simulated.backward_start_s + 20e-6).epsilon(1e-9));
  CHECK(g.simulated.forward_start_s[1] > 100e-6);
}

TEST_CASE("golden: schedule, 4 ranks on 2 nodes, reduce-scatter, sharded step, all-gather (ZeRO-2)") {
  PipelineSchedule s;
  s.bounds = {2570, 2570 + 65536, 133642};  // fc3, fc2, fc1
  s.exchange = Exchange::ReduceScatterAllgather;
  s.shard_optimizer = true;
  const ScheduleLog g = schedule_log(4, 2, s);
  compare_golden("schedule_zero2_4ranks", g.log);
  CHECK(g.simulated.iteration_s == Approx(g.model.iteration_s).epsilon(0.01));
  REQUIRE(g.simulated.messages.size() == 6);
  // Every all-gather starts after the sharded step, which follows the last reduce-scatter.
  double last_rs = 0, first_ag = 1e9;
  for (const auto& m : g.simulated.messages)
    (m.kind == MessageTiming::ReduceScatter ? last_rs : first_ag) =
        m.kind == MessageTiming::ReduceScatter ? std::max(last_rs, m.end_s) : std::min(first_ag, m.start_s);
  CHECK(first_ag > last_rs);
}
