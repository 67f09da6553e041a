// Schedules beyond fusion (pipeline.hpp): the steady pipeline reduces to the predictor
// for fusion plans, hand-checked timelines (order, gating, reduce-scatter + all-gather,
// credit), the lower bound under brute force, the search never worse than the fusion-only
// optimum, memory per scheme, malformed schedules refused.
#include <array>
#include <filesystem>
#include <fstream>
#include <catch2/catch.hpp>
#include <random>

#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"
#include "random_model.hpp"

using namespace fuseplan;

namespace {

// Layers with measured times (per iteration at batch 32, microseconds) and one tensor of
// `elems` each; elems 0 = no parameters.
Model timed_model(const std::vector<std::array<double, 3>>& layers) {
  Model m;
  m.name = "timed";
  m.input_shape = {1};
  for (size_t l = 0; l < layers.size(); ++l) {
    Layer layer;
    layer.name = "layer" + std::to_string(l);
    layer.inputs = {int(l) - 1};
    layer.in_shape = layer.out_shape = {1};
    layer.first_tensor = int(m.tensors.size());
    layer.measured = MeasuredTime{layers[l][0], layers[l][1], 32};
    if (layers[l][2] > 0) {
      ParamTensor p;
      p.name = layer.name + ".weight";
      p.numel = int64_t(layers[l][2]);
      p.shape = {p.numel};
      p.layer = int(l);
      m.tensors.push_back(p);
      layer.tensor_count = 1;
    }
    m.layers.push_back(layer);
  }
  return m;
}

PipelineSchedule schedule_of(std::vector<int64_t> bounds, Exchange e, Order o, Gate g, bool step, bool shard = false,
                             int credit = 1) {
  PipelineSchedule s;
  s.bounds = std::move(bounds);
  s.exchange = e;
  s.order = o;
  s.gate = g;
  s.step_update = step;
  s.shard_optimizer = shard;
  s.credit = credit;
  s.transfer = Precision::FP32;
  return s;
}

double total(const PipelineModel::Cost& c) { return c.latency_s + c.bandwidth_s; }

const MessageTiming& message(const PipelineResult& r, int partition, MessageTiming::Kind k) {
  for (const auto& m : r.messages)
    if (m.partition == partition && m.kind == k) return m;
  FAIL("no message " << partition);
  return r.messages.front();
}

}  // namespace

TEST_CASE("pipeline: a barrier, FIFO allreduce of tensor-aligned buckets is the predictor's iteration") {
  std::mt19937_64 rng(20261204);
  int checked = 0;
  // local-cpu: processor sharing (comm_compute_sharing 0.83), as the predictor's shared
  // schedule; "local-cpu*" with the allreduces slowed apart (allreduce_sharing 2).
  for (const char* cname : {"tencent-p40", "p100-horovod", "dgx-a100", "p100-bigbasin", "local-cpu", "local-cpu*"}) {
    const bool apart = std::string(cname) == "local-cpu*";
    Cluster c = load_cluster(apart ? "local-cpu" : cname);
    if (apart) c.allreduce_sharing = 2;
    // The pipeline compares schedules without the wait for the slowest GPU (dgx-a100's
    // compute_variation), the same for every schedule; the predictor prices it.
    c.compute_variation = 0;
    for (int gpus : {2, 8, 64, 256}) {
      if (gpus > c.capacity()) continue;
      for (int which = 0; which < 2; ++which) {
        const Model m = which ? load_model("resnet50") : random_model(rng, 12);
        Tuner tuner(m, c, gpus, 32, Precision::FP16);
        PipelineModel pm(m, c, gpus, 32, Precision::FP16);
        for (Strategy st : {Strategy::Optimal, Strategy::PerTensor, Strategy::Single, Strategy::Ddp, Strategy::Horovod}) {
          TuneOptions o;
          o.strategy = st;
          o.transfer = Precision::FP16;
          const TuneResult tr = tuner.run(o);
          std::vector<int> starts;
          PipelineSchedule s;
          for (const auto& b : tr.plan.buckets) {
            starts.push_back(b.begin);
            s.pack = s.pack || b.pack;
          }
          s.pack_on = tr.plan.pack_on;  // ddp copies in backward, horovod into its fusion buffer
          s.bounds = pm.bounds_from_starts(starts);
          s.transfer = Precision::FP16;
          const PipelineResult r = pm.evaluate(s);
          INFO(cname << " " << gpus << " GPUs, " << m.name << ", " << strategy_name(st));
          CHECK(r.converged);
          CHECK(r.iteration_s == Approx(tr.report.iteration_s).epsilon(1e-9));
          CHECK(r.backward_end_s - r.backward_start_s == Approx(tr.report.backward_s).epsilon(1e-9));
          ++checked;
        }
      }
    }
  }
  CHECK(checked >= 40);
}

TEST_CASE("pipeline: hand-checked timelines of order, gating and credit") {
  // Forward 1 ms per layer, backward 2 ms; layer 1 has no parameters.
  const Model m = timed_model({{1000, 2000, 4e6}, {1000, 2000, 0}, {1000, 2000, 2e6}, {1000, 2000, 1e6}});
  const Cluster c = load_cluster("p100-horovod");
  PipelineModel pm(m, c, 64, 32, Precision::FP32);
  const auto& off = pm.tensor_offsets();  // backward order: layer 3 (1e6), layer 2 (2e6), layer 0 (4e6)
  REQUIRE(off == std::vector<int64_t>{0, 1000000, 3000000, 7000000});
  const double u = pm.compute().optimizer_s();
  const double F = 4e-3, B = 8e-3;
  const double c3 = total(pm.message_cost(MessageTiming::Allreduce, 1000000, "auto", Precision::FP32));
  const double c2 = total(pm.message_cost(MessageTiming::Allreduce, 2000000, "auto", Precision::FP32));
  const double c0 = total(pm.message_cost(MessageTiming::Allreduce, 4000000, "auto", Precision::FP32));
  REQUIRE(c3 > 0);

  SECTION("barrier: forward waits for every allreduce and the step") {
    const auto r = pm.evaluate(schedule_of({1000000, 3000000, 7000000}, Exchange::Allreduce, Order::Fifo, Gate::Barrier, true));
    // Layer 3's gradient is ready at F + 2 ms, layer 2's at F + 4 ms, layer 0's at F + B.
    const double e3 = F + 2e-3 + c3, e2 = std::max(e3, F + 4e-3) + c2, e0 = std::max(e2, F + B) + c0;
    CHECK(message(r, 2, MessageTiming::Allreduce).end_s == Approx(e0));
    CHECK(r.iteration_s == Approx(std::max(F + B, e0) + u));
  }
  SECTION("per layer: the next forward's layer waits only for its own parameters") {
    const auto r = pm.evaluate(schedule_of({1000000, 3000000, 7000000}, Exchange::Allreduce, Order::Fifo, Gate::PerLayer, false));
    // Each forward carries its layer's update, so backward starts at F + u.
    const double Fu = F + u;
    const double e3 = Fu + 2e-3 + c3, e2 = std::max(e3, Fu + 4e-3) + c2, e0 = std::max(e2, Fu + B) + c0;
    // The next iteration starts once layer 0's parameters are in; layers 2 and 3 wait for
    // theirs (here long delivered).
    CHECK(r.converged);
    CHECK(r.iteration_s == Approx(std::max(Fu + B, e0)));
    // Gating in the steady state: iteration j + 1 starts layer l at period + its offset,
    // never before the messages of iteration j that carry layer l's parameters.
    const std::vector<std::pair<int, int>> layer_of_partition{{0, 3}, {1, 2}, {2, 0}};
    for (auto [part, layer] : layer_of_partition)
      CHECK(r.iteration_s + r.forward_start_s[size_t(layer)] >= message(r, part, MessageTiming::Allreduce).end_s - 1e-12);
  }
  SECTION("priority: the earliest forward layer goes first among ready messages") {
    // A short backward and a large last layer: layer 2's and layer 0's gradients are both
    // ready while layer 3's allreduce runs. FIFO sends layer 2's next, priority layer 0's.
    const Model slow = timed_model({{1000, 10, 4e6}, {1000, 10, 0}, {1000, 10, 2e6}, {1000, 10, 8e6}});
    PipelineModel sp(slow, c, 64, 32, Precision::FP32);
    for (Order o : {Order::Fifo, Order::Priority}) {
      const auto r = sp.evaluate(schedule_of({8000000, 10000000, 14000000}, Exchange::Allreduce, o, Gate::PerLayer, false));
      const auto& first = message(r, 0, MessageTiming::Allreduce);  // layer 3, ready first
      const auto& mid = message(r, 1, MessageTiming::Allreduce);    // layer 2
      const auto& last = message(r, 2, MessageTiming::Allreduce);   // layer 0
      REQUIRE(mid.ready_s < first.end_s);
      REQUIRE(last.ready_s < first.end_s);
      if (o == Order::Fifo) CHECK(mid.start_s == Approx(first.end_s));
      else CHECK(last.start_s == Approx(first.end_s));
    }
  }
  SECTION("credit: messages in flight share the bandwidth, their latencies overlap") {
    const auto one = pm.evaluate(schedule_of({1000000, 3000000, 7000000}, Exchange::Allreduce, Order::Fifo, Gate::Barrier, true, false, 1));
    const auto three = pm.evaluate(schedule_of({1000000, 3000000, 7000000}, Exchange::Allreduce, Order::Fifo, Gate::Barrier, true, false, 3));
    CHECK(three.comm_busy_s == Approx(one.comm_busy_s));
    CHECK(three.iteration_s <= one.iteration_s + 1e-12);
  }
  SECTION("reduce-scatter, sharded step, all-gather (ZeRO-2): one partition") {
    const auto rs = pm.message_cost(MessageTiming::ReduceScatter, 7000000, "auto", Precision::FP32);
    const auto ag = pm.message_cost(MessageTiming::Allgather, 7000000, "auto", Precision::FP32);
    const auto r = pm.evaluate(schedule_of({7000000}, Exchange::ReduceScatterAllgather, Order::Fifo, Gate::Barrier, true, true));
    CHECK(r.iteration_s == Approx(F + B + total(rs) + u / 64 + total(ag)));
    CHECK(r.compute_s == Approx(F + B + u / 64));
    // DeAR: the all-gather follows the reduce-scatter at once, every GPU updates all.
    const auto d = pm.evaluate(schedule_of({7000000}, Exchange::ReduceScatterAllgather, Order::Fifo, Gate::PerLayer, false));
    CHECK(d.iteration_s == Approx(F + B + total(rs) + total(ag) + u));
    // ZeRO-3 (FULL_SHARD): the parameters are gathered again when forward ends, before
    // the first backward layer (layer 3) may run.
    auto z3 = schedule_of({7000000}, Exchange::ReduceScatterAllgather, Order::Priority, Gate::PerLayer, true, true);
    z3.reshard = true;
    const auto z = pm.evaluate(z3);
    CHECK(z.iteration_s == Approx(F + total(ag) + B + total(rs) + u / 64 + total(ag)));
    REQUIRE(z.messages.size() == 3);
    CHECK(z.messages[2].kind == MessageTiming::Regather);
    CHECK(z.messages[2].start_s == Approx(F));
    CHECK(z.messages[2].end_s == Approx(F + total(ag)));
    z3.shard_optimizer = false;
    CHECK_THROWS_WITH(pm.evaluate(z3), Catch::Contains("schedule.reshard"));
  }
}

TEST_CASE("pipeline: a reduce-scatter and an all-gather are the halves of the ring allreduce") {
  for (const char* cname : {"tencent-p40", "dgx-a100", "p100-horovod"}) {
    const Cluster c = load_cluster(cname);
    const Model m = load_model("resnet18");
    PipelineModel pm(m, c, 64, 32, Precision::FP16);
    const std::string ring = pm.collectives().library() == "nccl" ? "nccl_ring" : "ring";
    const CollectiveChoice big = pm.collectives().cost(ring, int64_t(1) << 28, Precision::FP16);
    for (int64_t n : {int64_t(1000), int64_t(1) << 20, int64_t(50000000), int64_t(1) << 28}) {
      const auto rs = pm.message_cost(MessageTiming::ReduceScatter, n, "auto", Precision::FP16);
      const auto ag = pm.message_cost(MessageTiming::Allgather, n, "auto", Precision::FP16);
      const CollectiveChoice ar = pm.collectives().cost(ring, n, Precision::FP16);
      INFO(cname << " n=" << n);
      // The two halves take the allreduce's time, with a launch each.
      CHECK(total(rs) + total(ag) == Approx(ar.total_s() + ar.launch_s).epsilon(1e-12));
      // What the links carry: the closed form's bandwidth part, or at least the busiest
      // link's demand per element (read at 2^28 elements) for every element.
      const double demand = big.cost.bandwidth_s / double(int64_t(1) << 28) * double(n);
      CHECK(rs.bandwidth_s + ag.bandwidth_s ==
            Approx(std::min(ar.cost.total() + 2 * ar.launch_s, std::max(ar.cost.bandwidth_s, demand))).epsilon(1e-9));
    }
  }
}

TEST_CASE("pipeline: the lower bound holds under brute force, and the search reaches near it") {
  std::mt19937_64 rng(7);
  int checked = 0;
  for (const char* cname : {"tencent-p40", "p100-horovod", "dgx-a100"}) {
    const Cluster c = load_cluster(cname);
    for (int gpus : {16, 128}) {
      const Model m = random_model(rng, 5);
      PipelineModel pm(m, c, gpus, 32, Precision::FP32);
      const auto bound = pm.lower_bound(Precision::FP32);
      // Every subset of 7 cuts on a grid of eighths, every exchange (with ZeRO-3's
      // resharding too), order, gate and credit 1 or 2.
      std::vector<int64_t> cuts;
      for (int k = 1; k < 8; ++k) cuts.push_back(pm.elements() * k / 8);
      double brute = INFINITY;
      for (unsigned mask = 0; mask < (1u << cuts.size()); ++mask) {
        std::vector<int64_t> b;
        for (size_t i = 0; i < cuts.size(); ++i)
          if (mask >> i & 1u) b.push_back(cuts[i]);
        b.push_back(pm.elements());
        b.erase(std::unique(b.begin(), b.end()), b.end());
        for (int shape = 0; shape < 5; ++shape)
          for (Order o : {Order::Fifo, Order::Priority})
            for (Gate g : {Gate::Barrier, Gate::PerLayer})
              for (int credit : {1, 2}) {
                const bool rsag = shape >= 2, step = shape != 1 && shape != 2, shard = shape >= 3;
                auto sched = schedule_of(b, rsag ? Exchange::ReduceScatterAllgather : Exchange::Allreduce, o, g, step,
                                         shard, credit);
                sched.reshard = shape == 4;  // ZeRO-3
                brute = std::min(brute, pm.evaluate(sched, false).iteration_s);
              }
      }
      const ScheduleResult best = schedule_for(pm, ScheduleStrategy::Best, {ScheduleOptions{Precision::FP32}});
      INFO(cname << " " << gpus << " GPUs: bound " << bound.iteration_s << " brute " << brute << " best "
                 << best.result.iteration_s);
      CHECK(bound.iteration_s <= brute * (1 + 1e-12));
      CHECK(bound.iteration_s <= best.result.iteration_s * (1 + 1e-12));
      // The search is not exhaustive; on these small models it is within 2 % of the grid's best.
      CHECK(best.result.iteration_s <= brute * 1.02);
      ++checked;
    }
  }
  CHECK(checked == 6);
}

TEST_CASE("pipeline: the best schedule is never worse than the fusion-only optimum: zoo x clusters") {
  for (const char* model : {"resnet50", "vgg16", "bert_base"})
    for (const char* cname : {"tencent-p40", "p100-horovod", "dgx-a100"}) {
      const Model m = load_model(model);
      const Cluster c = load_cluster(cname);
      for (int gpus : {64, 512}) {
        if (gpus > c.capacity()) continue;
        PipelineModel pm(m, c, gpus, default_batch_per_gpu(model), Precision::FP16);
        ScheduleOptions o;
        o.search_evaluations = 40;
        const auto fusion = schedule_for(pm, ScheduleStrategy::Fusion, o);
        const auto best = schedule_for(pm, ScheduleStrategy::Best, o);
        INFO(model << " " << cname << " " << gpus);
        CHECK(best.result.iteration_s <= fusion.result.iteration_s * (1 + 1e-12));
        CHECK(best.result.iteration_s >= pm.lower_bound(Precision::FP16).iteration_s * (1 - 1e-12));
      }
    }
}

TEST_CASE("pipeline: the schedules users know follow their rules") {
  const Model m = load_model("resnet50");
  const Cluster c = load_cluster("p100-horovod");
  PipelineModel pm(m, c, 64, 32, Precision::FP32);
  ScheduleOptions o;
  o.transfer = Precision::FP32;
  const auto bs = schedule_for(pm, ScheduleStrategy::ByteScheduler, o);
  // Tensors are cut into pieces of at most 1M parameters, never fused; credit 4M / 1M.
  int64_t prev = 0;
  for (int64_t b : bs.schedule.bounds) {
    CHECK(b - prev <= o.partition_elems);
    prev = b;
  }
  for (int64_t t : pm.tensor_offsets())
    if (t > 0) CHECK(std::binary_search(bs.schedule.bounds.begin(), bs.schedule.bounds.end(), t));
  CHECK(bs.schedule.credit == 4);
  CHECK(bs.schedule.order == Order::Priority);
  CHECK(bs.schedule.gate == Gate::PerLayer);
  const auto z = schedule_for(pm, ScheduleStrategy::Zero2, o);
  CHECK(z.schedule.bounds.size() == 1);  // 25.6M parameters fit one 500M-element bucket
  CHECK(z.schedule.shard_optimizer);
  CHECK(z.memory.optimizer == Approx(double(m.param_count()) * 8 / 64));
  CHECK(z.memory.total() < bs.memory.total());
  ScheduleOptions units = o;
  units.fsdp_min_params = 2000000;  // several units: one gathered (and the next prefetched) at a time
  const auto z3 = schedule_for(pm, ScheduleStrategy::Zero3, units);
  CHECK(z3.schedule.reshard);
  CHECK(z3.memory.weights < z.memory.weights);  // parameters sharded too
  const auto f = schedule_for(pm, ScheduleStrategy::Fsdp, o);
  CHECK(f.schedule.bounds.size() == 1);  // under 100M parameters: one wrap unit
  o.fsdp_min_params = 2000000;
  const auto f2 = schedule_for(pm, ScheduleStrategy::Fsdp, o);
  CHECK(f2.schedule.bounds.size() > 5);
  for (int64_t b : f2.schedule.bounds) CHECK(std::binary_search(pm.tensor_offsets().begin(), pm.tensor_offsets().end(), b));
  const auto d = schedule_for(pm, ScheduleStrategy::Dear, o);
  CHECK(d.schedule.exchange == Exchange::ReduceScatterAllgather);
  CHECK_FALSE(d.schedule.shard_optimizer);
  // Deterministic.
  CHECK(schedule_for(pm, ScheduleStrategy::Best, o).result.iteration_s ==
        schedule_for(pm, ScheduleStrategy::Best, o).result.iteration_s);
}

TEST_CASE("pipeline: malformed schedules are refused with the field named") {
  const Model m = load_model("resnet18");
  const Cluster c = load_cluster("tencent-p40");
  PipelineModel pm(m, c, 16, 32, Precision::FP16);
  auto s = schedule_of({pm.elements()}, Exchange::Allreduce, Order::Fifo, Gate::Barrier, true);
  CHECK_NOTHROW(pm.evaluate(s));
  s.bounds = {pm.elements() - 1};
  CHECK_THROWS_WITH(pm.evaluate(s), Catch::Contains("schedule.bounds"));
  s.bounds = {100, 100, pm.elements()};
  CHECK_THROWS_WITH(pm.evaluate(s), Catch::Contains("nonempty and in order"));
  s.bounds = {pm.elements()};
  s.credit = 0;
  CHECK_THROWS_WITH(pm.evaluate(s), Catch::Contains("schedule.credit"));
  s.credit = 1;
  s.shard_optimizer = true;
  CHECK_THROWS_WITH(pm.evaluate(s), Catch::Contains("schedule.shard_optimizer"));
  CHECK_THROWS_WITH(parse_schedule_strategy("bytesched", "--strategy"), Catch::Contains("bytescheduler"));
}

TEST_CASE("pipeline: a schedule file reads back as the schedule and setup it was written from") {
  const Model m = load_model("resnet18");
  const Cluster c = load_cluster("p100-horovod");
  PipelineModel pm(m, c, 16, 32, Precision::FP16);
  // ddp: its buckets copied in backward (pack_on compute), read back as such.
  for (ScheduleStrategy st : {ScheduleStrategy::Dear, ScheduleStrategy::ByteScheduler, ScheduleStrategy::Zero2,
                              ScheduleStrategy::Ddp}) {
    const ScheduleResult r = schedule_for(pm, st, {});
    const auto bound = pm.lower_bound(Precision::FP16);
    const std::string path = (std::filesystem::temp_directory_path() / "fuseplan-test-schedule.json").string();
    std::ofstream(path) << schedule_to_json(pm, r, &bound).dump(1);
    const ScheduleFile f = load_schedule(path);
    INFO(schedule_strategy_name(st));
    CHECK(f.schedule.bounds == r.schedule.bounds);
    CHECK(f.schedule.exchange == r.schedule.exchange);
    CHECK(f.schedule.order == r.schedule.order);
    CHECK(f.schedule.gate == r.schedule.gate);
    CHECK(f.schedule.step_update == r.schedule.step_update);
    CHECK(f.schedule.shard_optimizer == r.schedule.shard_optimizer);
    CHECK(f.schedule.credit == r.schedule.credit);
    CHECK(f.schedule.pack == r.schedule.pack);
    CHECK(f.schedule.pack_on == r.schedule.pack_on);
    CHECK((st == ScheduleStrategy::Ddp) == (r.schedule.pack_on == PackOn::Compute));
    CHECK(f.setup.model == "resnet18");
    CHECK(f.setup.fingerprint == m.fingerprint_hex());
    CHECK(f.setup.gpus == 16);
    CHECK(f.setup.batch_per_gpu == 32);
    CHECK(pm.evaluate(f.schedule).iteration_s == r.result.iteration_s);
    // Strict: a misspelt key or value names the file and the JSON path.
    auto j = schedule_to_json(pm, r, &bound);
    j["credits"] = 2;
    std::ofstream(path) << j.dump();
    CHECK_THROWS_WITH(load_schedule(path), Catch::Contains("$.credits"));
    j.erase("credits");
    j["order"] = "lifo";
    std::ofstream(path) << j.dump();
    CHECK_THROWS_WITH(load_schedule(path), Catch::Contains("$.order: unknown value 'lifo' (valid: fifo, priority)"));
  }
}
