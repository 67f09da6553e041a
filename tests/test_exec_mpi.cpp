// The executor's allreduces over real MPI ranks (run by CTest under mpiexec with 2, 3
// and 4 ranks): every algorithm and transfer precision against a reference sum, the same
// result on every rank, a plan's buckets posted during a (fake) backward with both
// progress modes, and the timeout that names a silent rank.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <map>
#include <optional>
#include <cmath>
#include <thread>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/exec/half.hpp"
#include "fuseplan/exec/measure.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/exec/run.hpp"
#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"

using namespace fuseplan;
using namespace fuseplan::exec;

namespace {

MpiWorld* g_world = nullptr;

// Rank r's value i: multiples of 1/8 below 64, so every partial sum of up to 4 ranks is
// exact in FP16 and BF16 too; the reference sum is then exact whatever the order.
float value(int rank, int64_t i) { return float((rank * 37 + i * 11) % 29) * 0.125f - 1.5f; }

std::vector<std::string> all_algorithms() {
  std::vector<std::string> names;
  for (const auto& a : algorithms()) names.emplace_back(a.name);
  return names;
}

bool applies(const std::string& name, const Topo& topo, int64_t count, Precision p) {
  CollectiveArgs a;
  a.topo = topo;
  a.count = count;
  a.elem_bytes = bytes_per_element(p);
  return find_algorithm(name).not_applicable(a).empty();
}

// The same bytes on every rank.
bool same_everywhere(const std::vector<float>& v) {
  double h = 0;
  for (size_t i = 0; i < v.size(); ++i) h += double(v[i]) * double(i % 101 + 1);
  std::vector<double> all = g_world->allgather({h});
  for (double x : all)
    if (x != all[0]) return false;
  return true;
}

// One step of a fake backward over 6 positions (a millisecond each), the exchange posting
// buckets as they become ready (`after_ready(k)` runs after positions [0, k) are);
// returns how many sums differ from the exact reference.
int exchange_step(PlanExchange& ex, std::vector<float>& grads, int step,
                  const std::function<void(int)>& after_ready = {}) {
  MpiWorld& w = *g_world;
  for (size_t i = 0; i < grads.size(); ++i) grads[i] = value(w.rank(), int64_t(i) + step);
  ex.begin_step();
  for (int k = 1; k <= 6; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a layer's backward
    ex.ready(k);
    if (after_ready) after_ready(k);
  }
  // A sharded step's all-gathers wait for it; unchanged, they complete the allreduce.
  ex.wait_reductions();
  ex.release_held();
  ex.finish();
  int wrong = 0;
  for (size_t i = 0; i < grads.size(); ++i) {
    float want = 0;
    for (int r = 0; r < w.ranks(); ++r) want += value(r, int64_t(i) + step);
    wrong += grads[i] != want;
  }
  return wrong;
}

// 6 "tensors" of different sizes in backward order: where each begins in the flat buffer
// (and, last, the buffer's size).
const std::vector<int64_t> kOffsets = [] {
  std::vector<int64_t> offsets = {0};
  for (int64_t s : {1000, 20000, 3, 50000, 7, 4096}) offsets.push_back(offsets.back() + s);
  return offsets;
}();

// A bucket of positions [b, e) of kOffsets' tensors.
ExchangeBucket flat_bucket(int b, int e, const std::string& algo, int stream, Precision p,
                           ExchangeBucket::Pack pack = ExchangeBucket::Pack::None) {
  ExchangeBucket x;
  x.begin = b;
  x.end = e;
  x.offset = kOffsets[size_t(b)];
  x.count = kOffsets[size_t(e)] - kOffsets[size_t(b)];
  x.stream = stream;
  x.spec.algorithm = algo;
  x.spec.transfer = p;
  x.pack = pack;
  if (pack == ExchangeBucket::Pack::Compute)
    for (int pos = b; pos < e; ++pos) x.position_ends.push_back(kOffsets[size_t(pos) + 1]);
  return x;
}

}  // namespace

TEST_CASE("mpi: every algorithm and transfer precision sums exactly, the same on every rank") {
  const MpiWorld& w = *g_world;
  const Topo topo = w.layout().topo();
  int checked = 0;
  for (const std::string& name : all_algorithms())
    for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16})
      for (int64_t count : {int64_t(1), int64_t(7), int64_t(1000), int64_t(100003)}) {
        if (!applies(name, topo, count, p)) continue;
        CAPTURE(name, precision_name(p), count, w.ranks());
        AllreduceSpec spec;
        spec.algorithm = name;
        spec.transfer = p;
        Allreduce op(w.comm(), topo, count, spec, 7);
        std::vector<float> data(static_cast<size_t>(count));
        for (int64_t i = 0; i < count; ++i) data[size_t(i)] = value(w.rank(), i);
        op.start(data.data());
        op.wait();
        int wrong = 0;
        for (int64_t i = 0; i < count; ++i) {
          float want = 0;
          for (int r = 0; r < w.ranks(); ++r) want += value(r, i);
          wrong += data[size_t(i)] != want;
        }
        CHECK(wrong == 0);
        CHECK(same_everywhere(data));
        ++checked;
      }
  CHECK(checked >= 3 * 4 * 4);  // mpi, ring, recursive doubling at least, 3 precisions, 4 sizes
}

TEST_CASE("mpi: random FP32 data matches a double-precision reference within rounding") {
  const MpiWorld& w = *g_world;
  const int64_t count = 50001;
  auto draw = [](int rank, int64_t i) {
    uint64_t x = uint64_t(rank) * 0x9e3779b97f4a7c15ull + uint64_t(i) * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    x *= 0x94d049bb133111ebull;
    return float(double(x >> 11) / double(1ull << 53) * 2.0 - 1.0);
  };
  for (const std::string& name : all_algorithms()) {
    if (!applies(name, w.layout().topo(), count, Precision::FP32)) continue;
    CAPTURE(name);
    AllreduceSpec spec;
    spec.algorithm = name;
    Allreduce op(w.comm(), w.layout().topo(), count, spec, 3);
    std::vector<float> data(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) data[size_t(i)] = draw(w.rank(), i);
    op.start(data.data());
    while (!op.test()) {
    }
    double worst = 0;
    for (int64_t i = 0; i < count; ++i) {
      double want = 0;
      for (int r = 0; r < w.ranks(); ++r) want += draw(r, i);
      worst = std::max(worst, std::abs(data[size_t(i)] - want));
    }
    CHECK(worst < 1e-6 * w.ranks());
    CHECK(same_everywhere(data));
  }
}

TEST_CASE("mpi: a plan's buckets run during backward, polled or on a communication thread") {
  MpiWorld& w = *g_world;
  // 4 buckets of kOffsets' tensors on 2 streams.
  const std::string second = w.ranks() == 3 ? "binary_blocks" : "rabenseifner";
  CHECK(w.thread_multiple());  // Debian's Open MPI provides it; the thread mode needs it
  for (bool thread : {false, true}) {
    if (thread && !w.thread_multiple()) continue;
    CAPTURE(thread);
    std::vector<float> grads(size_t(kOffsets.back()));
    PlanExchange ex(w, grads.data(),
                    {flat_bucket(0, 2, "ring", 0, Precision::FP32), flat_bucket(2, 3, "mpi", 1, Precision::FP16),
                     flat_bucket(3, 5, second, 0, Precision::BF16),
                     flat_bucket(5, 6, "recursive_doubling", 1, Precision::FP32)},
                    {thread, 20, 30});
    for (int step = 0; step < 3; ++step) {
      CHECK(exchange_step(ex, grads, step) == 0);
      for (const BucketTiming& t : ex.timings()) {
        CHECK(t.ready_s > 0);
        CHECK(t.start_s >= t.ready_s);
        CHECK(t.end_s >= t.start_s);
      }
      // Buckets of one stream run one after another.
      CHECK(ex.timings()[2].start_s >= ex.timings()[0].end_s);
      CHECK(ex.timings()[3].start_s >= ex.timings()[1].end_s);
    }
  }
}

TEST_CASE("mpi: packed buckets are summed in buffers of their own: the fusion buffer and DDP's bucket buffers") {
  MpiWorld& w = *g_world;
  using Pack = ExchangeBucket::Pack;
  const Precision fp32 = Precision::FP32;
  const std::vector<ExchangeBucket> buckets = {
      flat_bucket(0, 2, "ring", 0, fp32, Pack::Compute), flat_bucket(2, 3, "ring", 1, fp32, Pack::Comm),
      flat_bucket(3, 5, "ring", 0, fp32, Pack::Compute), flat_bucket(5, 6, "ring", 1, fp32, Pack::None)};
  const std::vector<int64_t>& offsets = kOffsets;
  for (bool thread : {false, true}) {
    if (thread && !w.thread_multiple()) continue;
    CAPTURE(thread);
    std::vector<float> grads(size_t(offsets.back()));
    PlanExchange ex(w, grads.data(), buckets, {thread, 20, 30});
    for (int step = 0; step < 3; ++step) {
      CAPTURE(step);
      // A bucket packed on compute took each gradient as it became final: what is written
      // into the flat buffer afterwards is not summed, and the bucket's sum is copied back
      // over it.
      const int wrong = exchange_step(ex, grads, step, [&](int k) {
        if (k != 3 && k != 6)
          std::fill(grads.begin() + offsets[size_t(k) - 1], grads.begin() + offsets[size_t(k)], -1e6f);
      });
      CHECK(wrong == 0);
      CHECK(same_everywhere(grads));
      for (const BucketTiming& t : ex.timings()) CHECK(t.start_s >= t.ready_s);
    }
  }
}

TEST_CASE("mpi: schedules beyond fusion run with exact sums: partitions cutting tensors, priority order, reduce-scatter + all-gather") {
  MpiWorld& w = *g_world;
  // 6 tensors in 5 layers (the second holds two), forward order; measured times so the
  // pipeline model's predicted order is fixed.
  const std::vector<int64_t> sizes = {4096, 7, 50000, 3, 20000, 1000};  // forward order
  Model m;
  m.name = "exchange";
  m.input_shape = {1};
  const std::vector<int> layer_of = {0, 1, 1, 2, 3, 4};
  for (int l = 0; l < 5; ++l) {
    Layer layer;
    layer.name = "layer" + std::to_string(l);
    layer.inputs = {l - 1};
    layer.in_shape = layer.out_shape = {1};
    layer.measured = MeasuredTime{100, 200, 8};
    m.layers.push_back(layer);
  }
  for (size_t t = 0; t < sizes.size(); ++t) {
    ParamTensor p;
    p.name = "t" + std::to_string(t);
    p.numel = sizes[t];
    p.shape = {p.numel};
    p.layer = layer_of[t];
    m.tensors.push_back(p);
    Layer& layer = m.layers[size_t(p.layer)];
    if (layer.tensor_count == 0) layer.first_tensor = int(t);
    ++layer.tensor_count;
  }
  const Cluster c = load_cluster("tencent-p40");  // an MPI cluster: `ring` halves for rs+ag
  PipelineModel pm(m, c, w.ranks(), 8, Precision::FP32);
  const int64_t total = pm.elements();
  REQUIRE(total == 75106);
  struct Case {
    const char* name;
    PipelineSchedule s;
  };
  std::vector<Case> cases;
  PipelineSchedule cut;  // tensors cut mid-way, priority, two in flight
  cut.bounds = {500, 1000, 11000, 21003, 46003, 71003, 75106};
  cut.order = Order::Priority;
  cut.gate = Gate::PerLayer;
  cut.step_update = false;
  cut.credit = 2;
  cut.transfer = Precision::FP32;
  cases.push_back({"partitions, priority, credit 2", cut});
  PipelineSchedule rsag = cut;  // DeAR-like
  rsag.exchange = Exchange::ReduceScatterAllgather;
  rsag.credit = 1;
  cases.push_back({"reduce-scatter + all-gather, priority", rsag});
  PipelineSchedule zero = rsag;  // ZeRO-2-like, FP16 transfer
  zero.bounds = {30000, 75106};
  zero.order = Order::Fifo;
  zero.gate = Gate::Barrier;
  zero.step_update = true;
  zero.shard_optimizer = true;
  zero.transfer = Precision::FP16;
  cases.push_back({"reduce-scatter, sharded step, all-gather, fp16", zero});
  for (const auto& k : cases) {
    CAPTURE(k.name);
    const auto buckets = schedule_exchange_buckets(pm, k.s);
    REQUIRE(buckets.size() == k.s.bounds.size() * (k.s.exchange == Exchange::Allreduce ? 1 : 2));
    // Every stream runs its buckets in one order on every rank.
    std::vector<double> orders;
    for (const auto& b : buckets) orders.push_back(b.order * 1000.0 + b.stream);
    CHECK(w.allgather(orders) == [&] {
      std::vector<double> all;
      for (int r = 0; r < w.ranks(); ++r) all.insert(all.end(), orders.begin(), orders.end());
      return all;
    }());
    for (bool thread : {false, true}) {
      CAPTURE(thread);
      std::vector<float> grads(static_cast<size_t>(total));
      PlanExchange ex(w, grads.data(), buckets, {thread, 20, 30});
      for (int step = 0; step < 2; ++step) {
        CHECK(exchange_step(ex, grads, step) == 0);
        CHECK(same_everywhere(grads));
        // An all-gather never starts before its reduce-scatter ended; held for a sharded
        // step, never before every reduce-scatter ended.
        double reduced = 0;
        for (size_t b = 0; b < buckets.size(); ++b)
          if (buckets[b].spec.half == AllreduceSpec::Half::ReduceScatter) reduced = std::max(reduced, ex.timings()[b].end_s);
        for (size_t b = 0; b + 1 < buckets.size(); ++b)
          if (buckets[b].spec.half == AllreduceSpec::Half::ReduceScatter) {
            CHECK(ex.timings()[b + 1].start_s >= ex.timings()[b].end_s);
            CHECK(buckets[b + 1].after_step == k.s.shard_optimizer);
            if (k.s.shard_optimizer) CHECK(ex.timings()[b + 1].start_s >= reduced);
          }
      }
    }
  }
  // Resharded parameters (ZeRO-3) are not executed.
  PipelineSchedule z3 = zero;
  z3.gate = Gate::PerLayer;
  z3.reshard = true;
  CHECK_THROWS_WITH(schedule_exchange_buckets(pm, z3), Catch::Contains("not executed"));
  // A half needs a ring-family schedule.
  AllreduceSpec bad;
  bad.algorithm = "recursive_doubling";
  bad.half = AllreduceSpec::Half::Allgather;
  CHECK_THROWS_WITH(Allreduce(w.comm(), w.layout().topo(), 1000, bad, 0), Catch::Contains("needs ring or nccl_ring"));
}

TEST_CASE("mpi: a rank that does not answer is named after the timeout") {
  MpiWorld& w = *g_world;
  std::vector<float> grads(1000, 1.0f);
  ExchangeBucket b;
  b.end = 1;
  b.count = 1000;
  b.spec.algorithm = "ring";
  // Only rank 0 is impatient; the others wait for rank 1 as long as it takes.
  PlanExchange ex(w, grads.data(), {b}, {false, 20, w.rank() == 0 ? 0.3 : 60.0});
  if (w.rank() == 1) std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // silent for a while
  ex.begin_step();
  if (w.rank() == 0) {
    try {
      ex.ready(1);
      ex.finish();
      FAIL("no timeout");
    } catch (const RunError& e) {
      // With more ranks, rank 0 may be waiting on a rank that itself waits on rank 1.
      CHECK_THAT(e.what(), Catch::Contains(w.ranks() == 2 ? "got no answer from rank 1" : "got no answer from rank"));
    }
    ex.set_timeout(60);  // then let the exchange complete, so that the job ends cleanly
  } else {
    ex.ready(1);
  }
  ex.finish();
  CHECK(grads[0] == float(w.ranks()));
}

TEST_CASE("mpi: run_plan, the measure runner, runs a plan and gathers the measured Report on rank 0") {
  MpiWorld& w = *g_world;
  ModelBuilder b("tiny", {1, 8, 8});
  int x = b.conv("conv1", ModelBuilder::kInput, 4, 3, 1, 1, false);
  x = b.relu("relu1", x);
  x = b.flatten("flat", x);
  b.linear("fc", x, 4, true);
  const Model m = b.finish();
  Cluster c = load_cluster("local-cpu");
  c.gpus_per_node = w.ranks();
  const Plan plan = make_plan(m, "local-cpu", w.ranks(), 4, Precision::FP32,
                              buckets_from_spec("splits:1", m, "ring", Precision::FP32), "test");
  const Dataset train = make_synthetic(64 * w.ranks(), 1, 8, 8, 4, 7);
  auto be = make_cpu_backend();
  PlanRunOptions o;
  o.train.batch = plan.batch_per_gpu;
  o.warmup = 1;
  o.iterations = 3;
  int agreed = 0;
  o.agree = [&](const InputError* e) {
    ++agreed;
    CHECK(e == nullptr);
  };
  o.profile_of = [](const Network&, const TrainResult&) {
    return nlohmann::json{{"device", "cpu"}, {"layers", nlohmann::json::array()}};
  };
  const PlanRun run = run_plan(w, plan, m, c, train, nullptr, *be, o);
  CHECK(agreed == 1);
  CHECK(run.result.steps.size() == 4);  // warm-up + iterations
  if (w.rank() == 0) {
    REQUIRE(run.measurement);
    const Report& r = run.measurement->report;
    CHECK(r.buckets.size() == plan.buckets.size());
    CHECK(r.iteration_s > 0);
    CHECK_FALSE(r.cast);  // FP32 buckets: nothing cast
    CHECK(run.measurement->step_s.size() == 3);
    CHECK(run.profile.at("device").get<std::string>().find("the slowest of " + std::to_string(w.ranks())) !=
          std::string::npos);
  } else {
    CHECK_FALSE(run.measurement);
  }
  // 16-bit buckets: the exchange casts them on its stream, whatever the plan's cast says.
  const Plan half = make_plan(m, "local-cpu", w.ranks(), 4, Precision::FP32,
                              buckets_from_spec("splits:1", m, "ring", Precision::FP16), "test");
  REQUIRE_FALSE(half.cast);
  PlanRunOptions short_run = o;
  short_run.iterations = 1;
  const PlanRun cast_run = run_plan(w, half, m, c, train, nullptr, *be, short_run);
  if (w.rank() == 0) {
    REQUIRE(cast_run.measurement);
    CHECK(cast_run.measurement->report.cast == PackOn::Comm);
  }
  // A refusal is handed to the agreement, not thrown past it.
  PlanRunOptions bad = o;
  bad.train.batch = plan.batch_per_gpu;
  const Dataset tiny = make_synthetic(1, 1, 8, 8, 4, 7);
  bool refused = false;
  bad.agree = [&](const InputError* e) {
    refused = e != nullptr;
    if (e) CHECK_THAT(std::string(e->what()), Catch::Contains("train.dataset: fewer samples than one global batch"));
    throw InputError("");
  };
  CHECK_THROWS_AS(run_plan(w, plan, m, c, tiny, nullptr, *be, bad), InputError);
  CHECK(refused);
  // The caller's options are checked by field; the exchange defaults to MPI on the CPU.
  PlanRunOptions opts;
  opts.comm = "";
  check_run_options(opts, false);
  CHECK(opts.comm == "mpi");
  opts.iterations = 0;
  CHECK_THROWS_WITH(check_run_options(opts, false), Catch::Contains("run.iterations: must be >= 1"));
  opts.iterations = 1;
  opts.comm = "nccl";
  CHECK_THROWS_WITH(check_run_options(opts, false), Catch::Contains("comm nccl: needs backend cuda"));
  opts.comm = "gloo";
  CHECK_THROWS_WITH(check_run_options(opts, false), Catch::Contains("comm: unknown 'gloo' (valid: nccl, mpi)"));
  CHECK(default_threads(w.layout()) >= 1);
}

// Per-layer gating in a measured trace: (rank, iteration, layer) forward events that start
// before a bucket of the previous iteration writing one of the layer's parameters ended.
int gate_violations(const Report& r, const Model& m, int* checked) {
  const int T = int(m.tensors.size());
  std::map<std::pair<int, int>, std::vector<const TimelineEvent*>> buckets;  // (rank, iteration)
  for (const auto& e : r.timeline.events)
    if (e.category == "allreduce") buckets[{e.rank, e.iteration}].push_back(&e);
  int bad = 0;
  *checked = 0;
  for (const auto& e : r.timeline.events) {
    if (e.category != "forward") continue;
    const auto it = buckets.find({e.rank, e.iteration - 1});
    if (it == buckets.end()) continue;
    const Layer* layer = nullptr;
    for (const auto& l : m.layers)
      if (l.name == e.name) layer = &l;
    REQUIRE(layer);
    if (layer->tensor_count == 0) continue;
    const int first = T - layer->first_tensor - layer->tensor_count, end = T - layer->first_tensor;  // backward positions
    for (const TimelineEvent* b : it->second) {
      int index = -1;
      REQUIRE(std::sscanf(b->name.c_str(), "bucket %d", &index) == 1);
      const BucketReport& br = r.buckets[size_t(index)];
      if (br.begin >= end || first >= br.end) continue;
      ++*checked;
      bad += e.start_s < b->start_s + b->dur_s;
    }
  }
  return bad;
}

// A small CNN (conv, [batchnorm,] relu, conv, relu, fc) trained through run_plan on every
// rank with a schedule's buckets, for the gated and sharded tests.
struct ScheduleRun {
  MpiWorld& w = *g_world;
  Model m;
  Cluster c = load_cluster("local-cpu");
  Plan plan;
  Dataset train = make_synthetic(64 * g_world->ranks(), 1, 8, 8, 4, 7);
  std::unique_ptr<PipelineModel> pm;

  explicit ScheduleRun(bool batchnorm) {
    ModelBuilder mb(batchnorm ? "sharded" : "gated", {1, 8, 8});
    int x = mb.conv("conv1", ModelBuilder::kInput, 4, 3, 1, 1, true);
    if (batchnorm) x = mb.batchnorm("bn1", x);
    x = mb.relu("relu1", x);
    x = mb.conv("conv2", x, 8, 3, 1, 1, false);
    x = mb.relu("relu2", x);
    x = mb.flatten("flat", x);
    mb.linear("fc", x, 4, true);
    m = mb.finish();
    c.gpus_per_node = w.ranks();
    plan = make_plan(m, "local-cpu", w.ranks(), 4, Precision::FP32,
                     buckets_from_spec("splits:1", m, "ring", Precision::FP32), "test");
    pm = std::make_unique<PipelineModel>(m, c, w.ranks(), 4, Precision::FP32);
  }
  // Partitions cutting tensors, FP32 transfer.
  PipelineSchedule schedule() const {
    PipelineSchedule s;
    s.bounds = {100, 300, pm->elements() - 200, pm->elements()};
    s.transfer = Precision::FP32;
    return s;
  }
  // Runs `s`'s buckets: per-layer gating as `per_layer` says, the step sharded as `s` says;
  // the final weights and every step's loss of this rank.
  PlanRun run(const PipelineSchedule& s, bool thread, bool per_layer, Precision precision, std::vector<float>* weights,
              std::vector<double>* losses) {
    auto be = make_cpu_backend();
    PlanRunOptions o;
    o.train.batch = plan.batch_per_gpu;
    o.train.precision = precision;
    o.train.per_layer = per_layer;
    o.train.shard_optimizer = s.shard_optimizer;
    o.warmup = 1;
    o.iterations = 3;
    o.trace_steps = 2;
    o.exchange = {thread, 20, 30};
    o.buckets_of = [&](const Network& net) { return schedule_exchange_buckets(*pm, s, net.slots()[0].offset); };
    o.profile_of = [&](const Network& net, const TrainResult&) {
      weights->assign(net.params(), net.params() + net.param_count());
      return nlohmann::json{{"device", "cpu"}, {"layers", nlohmann::json::array()}};
    };
    PlanRun r = run_plan(w, plan, m, c, train, nullptr, *be, o);
    for (const auto& st : r.result.steps) losses->push_back(st.loss);
    return r;
  }
  // Set-up refused on every rank with a message containing `what`.
  void expect_refused(PlanRunOptions o, const std::string& what) {
    auto be = make_cpu_backend();
    o.train.batch = plan.batch_per_gpu;
    o.warmup = 1;
    o.iterations = 1;
    o.agree = [&](const InputError* e) {
      REQUIRE(e);
      CHECK_THAT(std::string(e->what()), Catch::Contains(what));
      throw InputError("");
    };
    CHECK_THROWS_AS(run_plan(w, plan, m, c, train, nullptr, *be, o), InputError);
  }
};

TEST_CASE("mpi: per-layer gating: each layer's update and forward wait only for its own sums, with the weights of one step per iteration") {
  ScheduleRun t(false);
  MpiWorld& w = t.w;
  PipelineSchedule bs = t.schedule();  // ByteScheduler-like: priority, credit 2
  bs.order = Order::Priority;
  bs.gate = Gate::PerLayer;
  bs.step_update = false;
  bs.credit = 2;
  PipelineSchedule dear = bs;  // DeAR-like: reduce-scatter, then all-gather
  dear.exchange = Exchange::ReduceScatterAllgather;
  dear.credit = 1;
  for (const PipelineSchedule& s : {bs, dear}) {
    for (bool thread : {false, true}) {
      CAPTURE(exchange_name(s.exchange), thread);
      // The same buckets with a barrier and gated per layer: the same weights, bit for bit.
      std::vector<float> weights[2];
      std::vector<double> losses[2];
      t.run(s, thread, false, Precision::FP32, &weights[0], &losses[0]);
      const PlanRun gated = t.run(s, thread, true, Precision::FP32, &weights[1], &losses[1]);
      CHECK(losses[0] == losses[1]);
      CHECK(weights[0] == weights[1]);
      CHECK(same_everywhere(weights[1]));
      if (w.rank() != 0) continue;
      REQUIRE(gated.measurement);
      const Report& r = gated.measurement->report;
      int checked = 0;
      CHECK(gate_violations(r, t.m, &checked) == 0);
      CHECK(checked >= 3 * w.ranks() * 2);  // 3 layers with parameters, 2 traced pairs of steps, every rank
      // The check sees a layer started too early.
      Report early = r;
      int last = 0;
      for (const auto& e : early.timeline.events) last = std::max(last, e.category == "forward" ? e.iteration : 0);
      for (auto& e : early.timeline.events)
        if (e.category == "forward" && e.name == "fc" && e.iteration == last) e.start_s = -1;
      CHECK(gate_violations(early, t.m, &checked) > 0);
    }
  }
  // FP16 compute (its loss scale needs every gradient before any update) is refused.
  auto be = make_cpu_backend();
  TrainOptions opt;
  opt.batch = 4;
  opt.per_layer = true;
  opt.precision = Precision::FP16;
  CHECK_THROWS_WITH(Trainer(t.m, t.train, nullptr, *be, opt), Catch::Contains("per-layer gating needs ranks"));
  PlanRunOptions o;
  o.train = opt;
  t.expect_refused(o, "fp32 or bf16 (fp16's dynamic loss scale");
}

TEST_CASE("mpi: a sharded optimizer step (ZeRO-2, FSDP) updates each rank's shard and all-gathers parameters, as one step per iteration would") {
  ScheduleRun t(true);
  MpiWorld& w = t.w;
  PipelineSchedule zero2 = t.schedule();  // reduce-scatter, sharded step, all-gather, a barrier
  zero2.exchange = Exchange::ReduceScatterAllgather;
  zero2.shard_optimizer = true;
  PipelineSchedule fsdp = zero2;  // the same, each layer's forward after its own parameters
  fsdp.gate = Gate::PerLayer;
  fsdp.order = Order::Priority;
  fsdp.credit = 2;
  for (const PipelineSchedule& s : {zero2, fsdp}) {
    for (bool thread : {false, true}) {
      CAPTURE(gate_name(s.gate), thread);
      const bool per_layer = s.gate == Gate::PerLayer;
      // Unsharded, the same partitions: every rank updates everything from all-gathered sums.
      PipelineSchedule replicated = s;
      replicated.shard_optimizer = false;
      std::vector<float> weights[2];
      std::vector<double> losses[2];
      t.run(replicated, thread, per_layer, Precision::FP32, &weights[0], &losses[0]);
      const PlanRun sharded = t.run(s, thread, per_layer, Precision::FP32, &weights[1], &losses[1]);
      // LARS sums a tensor's norms over the ranks' shards: equal up to rounding.
      REQUIRE(weights[0].size() == weights[1].size());
      double worst = 0;
      for (size_t i = 0; i < weights[0].size(); ++i)
        worst = std::max(worst, std::abs(double(weights[0][i]) - weights[1][i]) / std::max(1.0, std::abs(double(weights[0][i]))));
      CHECK(worst < 1e-6);
      for (size_t i = 0; i < losses[0].size(); ++i) CHECK(losses[1][i] == Approx(losses[0][i]).epsilon(1e-6));
      CHECK(same_everywhere(weights[1]));
      if (w.rank() != 0) continue;
      REQUIRE(sharded.measurement);
      int checked = 0;
      CHECK(gate_violations(sharded.measurement->report, t.m, &checked) == 0);
      CHECK(checked > 0);
      int steps = 0;
      for (const auto& e : sharded.measurement->report.timeline.events) steps += e.category == "optimizer";
      CHECK(steps == 2 * w.ranks());  // one sharded step per traced step and rank
    }
  }
  // FP16 compute: the overflow check is summed over the shards, so the loss scale works.
  std::vector<float> weights;
  std::vector<double> losses;
  PipelineSchedule half = fsdp;
  half.transfer = Precision::FP16;
  t.run(half, true, true, Precision::FP16, &weights, &losses);
  for (double l : losses) CHECK(std::isfinite(l));
  CHECK(same_everywhere(weights));
  // Each rank keeps 1/N of the optimizer state: no checkpoints.
  PlanRunOptions o;
  o.train.shard_optimizer = true;
  o.train.checkpoint_every = 2;
  o.train.checkpoint_path = "/tmp/never-written.ckpt";
  t.expect_refused(o, "keeps 1/N of the optimizer state");
}

TEST_CASE("mpi: a collective waits no longer than twice the world's timeout, then names the call and the silent ranks") {
  MpiWorld& w = *g_world;
  static double v[1] = {1};  // outlives the call: the late ranks complete it afterwards
  w.set_timeout(1);
  if (w.rank() == 0) {
    const auto start = std::chrono::steady_clock::now();
    // The timeout, then another for the ranks still there to report: none does.
    CHECK_THROWS_WITH(w.sum(v, 1), Catch::Contains("rank 0: no answer from rank 1") &&
                                       Catch::Contains("within 1.0 s in a sum across the ranks"));
    CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 10);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));  // silent past rank 0's timeout
    w.sum(v, 1);  // joins the sum rank 0 posted
  }
  w.set_timeout(0);
  w.barrier();  // everything above completes; the ranks are in step again
  CHECK(w.max(double(w.rank())) == w.ranks() - 1);
}

int main(int argc, char** argv) {
  MpiWorld world(&argc, &argv);
  g_world = &world;
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv); rc != 0) return rc;
  const int failed = session.run();
  // Any rank's failure fails the job.
  const double worst = world.max(failed);
  return worst > 0 ? 1 : 0;
}
