// Predictor: the overlap timeline against hand calculations, plans and bucket specs,
// multi-stream sharing, and the Chrome trace.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>

#include "fuseplan/costmodel/memory.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/zoo.hpp"
#include "cluster_json.hpp"
#include "frozen_model.hpp"

using namespace fuseplan;

namespace {
// A three-layer MLP whose layer times are measured (so the compute model is exact).
Model toy() {
  ModelBuilder b("toy", {1024});
  int x = b.linear("l0", ModelBuilder::kInput, 1024, false);
  x = b.linear("l1", x, 1024, false);
  b.linear("l2", x, 1024, false);
  Model m = b.finish();
  // backward: l2 2 ms, l1 3 ms, l0 4 ms; forward 1 ms each.
  double bwd[] = {4000, 3000, 2000};
  for (int i = 0; i < 3; ++i) m.layers[i].measured = MeasuredTime{1000, bwd[i], 8};
  return m;
}

Cluster toy_cluster(double bw_GBps, double lat_us) {
  nlohmann::json j{{"schema", "fuseplan.cluster/1"},
                   {"name", "toy"},
                   {"nodes", 1},
                   {"gpus_per_node", 4},
                   {"device", {{"name", "d"}, {"peak_TFLOPS", {{"fp32", 1.0}}}, {"mem_bw_GBps", 1000}, {"compute_efficiency", 1.0}, {"memory_efficiency", 1.0}}},
                   {"intra_node", {{"kind", "nvlink"}, {"bw_GBps", bw_GBps}, {"lat_us", lat_us}}},
                   {"launch_overhead_us", 0},
                   {"reduce_bw_GBps", 1e6}};
  return cluster_from_json(j, "toy");
}

// The toy model on 4 GPUs at batch 8, FP32, every bucket of `spec` on the ring.
Plan toy_plan(const Model& m, const char* spec) {
  return make_plan(m, "toy", 4, 8, Precision::FP32, buckets_from_spec(spec, m, "ring", Precision::FP32), spec);
}

// The prediction of a toy plan on cluster c.
Report predict_toy(const Model& m, const Cluster& c, const Plan& p) {
  return predict(m, c, p, CollectiveModel(c, 4), ComputeModel(m, c, 8, Precision::FP32));
}

// A plan key naming where something runs ($.pack_on, $.cast): `p` writes it as `name` and
// reads it back as `value` (what `read` takes from a plan); a plan left at the default
// leaves it out; another value is refused.
template <typename Read>
void check_place_key(const Plan& p, const Plan& plain, const std::string& key, const std::string& name, Read read,
                     PackOn value) {
  auto j = plan_to_json(p);
  CHECK(j[key] == name);
  CHECK(read(plan_from_json(j, "p.json")) == value);
  CHECK(!plan_to_json(plain).contains(key));
  j[key] = "gpu";
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"),
                    Catch::Contains("p.json: $." + key + ": unknown value 'gpu' (valid: comm, compute)"));
}
}  // namespace

TEST_CASE("frozen parameters: a layer with no backward costs none, one computing its weights' gradient only half") {
  const Model m = model_from_json(resnet18_frozen_to_layer4().first, "frozen.json");
  const Model all = build_zoo_model("resnet18");
  const Cluster c = load_cluster("dgx-a100");
  const ComputeModel frozen(m, c, 32, Precision::FP16), full(all, c, 32, Precision::FP16);
  const double overhead = c.device.kernel_overhead_us * 1e-6;
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const double share = m.layers[i].backward_share;
    CHECK(frozen.layers()[i].fwd_s == Approx(full.layers()[i].fwd_s).epsilon(1e-12));  // frozen weights still read
    if (share == 0) CHECK(frozen.layers()[i].bwd_s == 0);
    else CHECK(frozen.layers()[i].bwd_s == Approx(share * (full.layers()[i].bwd_s - overhead) + overhead));
  }
  CHECK(frozen.backward_s() < 0.5 * full.backward_s());
  // Weights held either way; gradients, buffers and optimizer state for the trained ones only.
  const MemoryEstimate fm = estimate_memory(m, 32, Precision::FP16, Precision::FP16);
  const MemoryEstimate am = estimate_memory(all, 32, Precision::FP16, Precision::FP16);
  CHECK(fm.weights == am.weights);
  // Activations are kept for backward: none for the layers before the first trained one.
  int64_t kept = 0;
  for (const auto& l : m.layers) kept += l.backward_share > 0 ? l.activation_elems : 0;
  CHECK(fm.activations == double(kept) * 32 * 2);
  CHECK(fm.activations < 0.5 * am.activations);
  CHECK(fm.optimizer == Approx(am.optimizer * double(m.param_count()) / double(all.param_count())));
}

TEST_CASE("per-tensor buckets overlap backward exactly as the wait-free timeline says") {
  Model m = toy();
  Cluster c = toy_cluster(1.0, 0);  // 1 GB/s: a 4 MiB FP32 tensor takes 2*4MiB*3/4 / 1e9 s on a ring
  ComputeModel compute(m, c, 8, Precision::FP32);
  CollectiveModel coll(c, 4);
  Plan p = toy_plan(m, "per-tensor");
  validate_plan(p, m, "test");
  Report r = predict(m, c, p, coll, compute);
  const double bytes = 1024.0 * 1024 * 4;
  const double ar = 2 * bytes * 3 / 4 / 1e9 + 6 * 0.0 + bytes * 3 / 4 / 1e15;  // ring, 4 ranks
  REQUIRE(r.buckets.size() == 3);
  // Gradients: l2 ready at 2 ms, l1 at 5 ms, l0 at 9 ms.
  CHECK(r.buckets[0].ready_s == Approx(0.002));
  CHECK(r.buckets[0].start_s == Approx(0.002));
  CHECK(r.buckets[0].end_s == Approx(0.002 + ar));
  CHECK(r.buckets[1].start_s == Approx(std::max(0.005, 0.002 + ar)));
  double end1 = r.buckets[1].start_s + ar;
  CHECK(r.buckets[2].start_s == Approx(std::max(0.009, end1)));
  double end2 = r.buckets[2].start_s + ar;
  CHECK(r.comm_end_s == Approx(end2));
  CHECK(r.exposed_comm_s == Approx(std::max(0.0, end2 - 0.009)));
  CHECK(r.iteration_s == Approx(0.003 + std::max(0.009, end2) + r.optimizer_s));
  CHECK(r.scaling_efficiency == Approx((0.012 + r.optimizer_s) / r.iteration_s));
  CHECK(r.throughput_samples_s == Approx(32 / r.iteration_s));
}

TEST_CASE("one bucket after backward exposes its whole allreduce") {
  Model m = toy();
  Report r = predict_toy(m, toy_cluster(1.0, 10), toy_plan(m, "single"));
  REQUIRE(r.buckets.size() == 1);
  CHECK(r.buckets[0].start_s == Approx(0.009));
  CHECK(r.exposed_comm_s == Approx(r.buckets[0].end_s - r.buckets[0].start_s));
  CHECK(r.exposed_comm_s == Approx(r.comm_busy_s));
}

TEST_CASE("a framework cycle launches each ready bucket at the next tick of its thread") {
  CHECK(next_tick(0.0123, 0) == 0.0123);
  CHECK(next_tick(0.0123, 0.005) == Approx(0.015));
  CHECK(next_tick(0.015, 0.005) == Approx(0.015));  // ready on a tick: launched at it
  CHECK(next_tick(0.0, 0.005) == 0);
  Model m = toy();
  const Cluster c = toy_cluster(1.0, 0);
  Plan p = toy_plan(m, "per-tensor");
  Report free_run = predict_toy(m, c, p);
  p.cycle_s = 0.004;  // gradients ready at 2, 5 and 9 ms: launched at 4, 8 and 12
  Report cycled = predict_toy(m, c, p);
  const double ar = free_run.buckets[0].end_s - free_run.buckets[0].start_s;
  REQUIRE(cycled.buckets.size() == 3);
  CHECK(cycled.buckets[0].ready_s == Approx(0.004));
  CHECK(cycled.buckets[1].ready_s == Approx(0.008));
  CHECK(cycled.buckets[2].ready_s == Approx(0.012));
  CHECK(cycled.buckets[0].start_s == Approx(0.004));
  CHECK(cycled.buckets[1].start_s == Approx(std::max(0.008, 0.004 + ar)));
  CHECK(cycled.comm_end_s > free_run.comm_end_s);
  CHECK(cycled.iteration_s >= free_run.iteration_s);
  // Written to the plan file in ms and read back; out of range is refused.
  auto j = plan_to_json(p);
  CHECK(j["cycle_ms"] == Approx(4.0));
  CHECK(plan_from_json(j, "p.json").cycle_s == Approx(0.004));
  CHECK(!plan_to_json(make_plan(m, "toy", 4, 8, Precision::FP32, p.buckets, "x")).contains("cycle_ms"));
  j["cycle_ms"] = 5000;
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.cycle_ms: must be in [0, 1000] ms"));
}

TEST_CASE("gradient casts: in backward or before the allreduce, and back after it on its stream") {
  Model m = toy();
  Cluster c = toy_cluster(100.0, 0);  // allreduces short beside the casts
  c.device.mem_bw_GBps = 8.388608;    // a 1M-element gradient cast from FP32 to FP16 (6 MiB moved) in 0.75 ms
  CHECK(cast_time_s(c, 1 << 20, Precision::FP16) == Approx(0.00075));
  CHECK(cast_time_s(c, 1 << 20, Precision::BF16) == Approx(0.00075));
  CHECK(cast_time_s(c, 1 << 20, Precision::FP32) == 0);
  Plan p = make_plan(m, "toy", 4, 8, Precision::FP32, buckets_from_spec("per-tensor", m, "ring", Precision::FP16),
                     "per-tensor");
  const Report plain = predict_toy(m, c, p);
  REQUIRE(plain.backward_s == Approx(0.009));
  // Compute (DDP's compress hook): each gradient cast in the step that makes it, so
  // backward ends 2.25 ms later and gradients are ready at 2.75, 6.5 and 11.25 ms.
  p.cast = PackOn::Compute;
  const Report compute = predict_toy(m, c, p);
  CHECK(compute.backward_s == Approx(0.01125));
  CHECK(compute.buckets[0].ready_s == Approx(0.00275));
  CHECK(compute.buckets[1].ready_s == Approx(0.0065));
  CHECK(compute.buckets[2].ready_s == Approx(0.01125));
  CHECK(compute.backward_copies_s == Approx(0.00225));
  // ... and each average cast back once its allreduce has ended, on its stream (DDP's hook
  // decompresses when the allreduce's future completes): every bucket 0.75 ms longer, the
  // last one's cast back exposed after backward. Nothing is copied back on compute.
  for (size_t k = 0; k < 3; ++k) {
    CHECK(compute.buckets[k].copy_out_s == Approx(0.00075));
    CHECK(compute.buckets[k].end_s - compute.buckets[k].start_s ==
          Approx(plain.buckets[k].end_s - plain.buckets[k].start_s + 0.00075));
  }
  CHECK(compute.copy_back_s == 0);
  CHECK(compute.exposed_comm_s == Approx(compute.buckets[2].end_s - 0.01125));
  // With DDP's Reducer copying into the buckets (1 ms a gradient), its hook also divides
  // each 16-bit bucket in place (2 + 2 bytes per element: 0.5 ms a gradient).
  Plan ddp = p;
  for (auto& b : ddp.buckets) b.pack = true;
  ddp.pack_on = PackOn::Compute;
  CHECK(hook_division_s(c, 1 << 20) == Approx(0.0005));
  CHECK(predict_toy(m, c, ddp).backward_copies_s == Approx(3 * (0.001 + 0.00075 + 0.0005)));
  CHECK(compute.exposed_comm_s > 0.00075);
  CHECK(compute.single_gpu_iteration_s == Approx(plain.single_gpu_iteration_s));
  // The report file carries both, and reads them back.
  const Report again = report_from_json(report_to_json(compute), "r.json");
  CHECK(again.backward_copies_s == compute.backward_copies_s);
  CHECK(again.buckets[1].copy_out_s == compute.buckets[1].copy_out_s);
  CHECK(!report_to_json(plain).contains("backward_copies_s"));
  CHECK(!report_to_json(plain)["buckets"][0].contains("copy_out_s"));
  // Comm: backward as before; each bucket is ready with its gradients, and its stream casts
  // it (0.75 ms) before the allreduce and back (0.75 ms) after it.
  p.cast = PackOn::Comm;
  const Report comm = predict_toy(m, c, p);
  CHECK(comm.backward_s == Approx(0.009));
  CHECK(comm.backward_copies_s == 0);
  CHECK(comm.copy_back_s == 0);
  for (size_t k = 0; k < 3; ++k) {
    CHECK(comm.buckets[k].ready_s == Approx(plain.buckets[k].ready_s));
    CHECK(comm.buckets[k].copy_in_s == Approx(0.00075));
    CHECK(comm.buckets[k].end_s - comm.buckets[k].start_s ==
          Approx(plain.buckets[k].end_s - plain.buckets[k].start_s + 0.0015));
  }
  CHECK(report_from_json(report_to_json(comm), "r.json").buckets[2].copy_in_s == comm.buckets[2].copy_in_s);
  // A bucket sent in FP32 is not cast; on one GPU nothing is.
  Plan mixed = p;
  mixed.buckets[1].transfer = Precision::FP32;
  const Report m32 = predict_toy(m, c, mixed);
  CHECK(m32.buckets[1].copy_in_s == 0);
  CHECK(m32.buckets[1].copy_out_s == 0);
  CHECK(m32.buckets[0].copy_in_s == Approx(comm.buckets[0].copy_in_s));
  for (PackOn where : {PackOn::Compute, PackOn::Comm}) {
    Plan one = p;
    one.gpus = 1;
    one.cast = where;
    Plan uncast = one;
    uncast.cast.reset();
    auto alone = [&](const Plan& q) {
      return predict(m, c, q, CollectiveModel(c, 1), ComputeModel(m, c, q.batch_per_gpu, q.compute)).iteration_s;
    };
    CHECK(alone(one) == alone(uncast));
  }
  // The plan file carries it ($.cast) and reads it back; unset it is absent; a cast with
  // nothing to cast and an unknown place are refused.
  check_place_key(p, toy_plan(m, "single"), "cast", "comm", [](const Plan& q) { return q.cast; }, PackOn::Comm);
  auto fp32 = plan_to_json(toy_plan(m, "single"));
  fp32["cast"] = "compute";
  CHECK_THROWS_WITH(plan_from_json(fp32, "p.json"), Catch::Contains("p.json: $.cast: every bucket is sent in FP32"));
}

TEST_CASE("packing copies: in a fusion buffer they occupy the bucket's stream - in backward they lengthen backward") {
  Model m = toy();
  Cluster c = toy_cluster(100.0, 0);  // allreduces short beside the copies
  c.device.mem_bw_GBps = 8.388608;  // a 4 MiB FP32 gradient read and written in 1 ms
  Plan p = toy_plan(m, "per-tensor");
  for (auto& b : p.buckets) b.pack = true;
  // Comm (Horovod): backward as before, buckets ready with their gradients (2, 5, 9 ms);
  // the stream copies each into the fusion buffer (1 ms) before its allreduce and its
  // average back out (1 ms) after it: every bucket lasts 2 ms longer than unpacked, and
  // ends with its gradients in place.
  const Report comm = predict_toy(m, c, p);
  CHECK(comm.backward_s == Approx(0.009));
  CHECK(comm.buckets[0].ready_s == Approx(0.002));
  CHECK(comm.buckets[1].ready_s == Approx(0.005));
  CHECK(comm.buckets[2].ready_s == Approx(0.009));
  Plan views = p;
  for (auto& b : views.buckets) b.pack = false;
  const Report unpacked = predict_toy(m, c, views);
  for (size_t k = 0; k < 3; ++k) {
    CHECK(comm.buckets[k].copy_in_s == Approx(0.001));
    CHECK(comm.buckets[k].copy_out_s == Approx(0.001));
    CHECK(comm.buckets[k].end_s - comm.buckets[k].start_s ==
          Approx(unpacked.buckets[k].end_s - unpacked.buckets[k].start_s + 0.002));
  }
  CHECK(comm.comm_busy_s == Approx(unpacked.comm_busy_s + 0.006));
  // Where buckets queue, a copy in waits for the stream, as Horovod's one fusion buffer
  // and stream and fuseplan-exec's communication thread run it: on a slow network bucket
  // 1 starts as bucket 0 ends and lasts its allreduce plus both copies.
  Cluster slow_copies = toy_cluster(0.5, 0);
  slow_copies.device.mem_bw_GBps = c.device.mem_bw_GBps;
  const Report queued = predict_toy(m, slow_copies, p), queued_views = predict_toy(m, slow_copies, views);
  REQUIRE(queued_views.buckets[0].end_s > queued_views.buckets[1].ready_s);  // bucket 1 waits
  CHECK(queued.buckets[1].start_s == Approx(queued.buckets[0].end_s));
  CHECK(queued.buckets[1].end_s - queued.buckets[1].start_s ==
        Approx(queued_views.buckets[1].end_s - queued_views.buckets[1].start_s + 0.002));
  // On one GPU there is no allreduce and nothing to copy out.
  Plan one = p;
  one.gpus = 1;
  const Report alone = predict(m, c, one, CollectiveModel(c, 1), ComputeModel(m, c, one.batch_per_gpu, one.compute));
  for (const auto& b : alone.buckets) CHECK(b.end_s == Approx(b.start_s));
  // Compute (DDP's Reducer): each step copies its gradient, so backward ends 3 ms later
  // and a bucket is ready once the copies of every gradient before it are done.
  p.pack_on = PackOn::Compute;
  const Report inline_copies = predict_toy(m, c, p);
  CHECK(inline_copies.backward_s == Approx(0.012));
  CHECK(inline_copies.buckets[0].ready_s == Approx(0.003));
  CHECK(inline_copies.buckets[1].ready_s == Approx(0.007));
  CHECK(inline_copies.buckets[2].ready_s == Approx(0.012));
  CHECK(inline_copies.iteration_s > comm.iteration_s);
  // The timeline's backward steps carry the copies; the single-GPU iteration does not.
  double bwd = 0;
  for (const auto& e : inline_copies.timeline.events) bwd += e.category == "backward" ? e.dur_s : 0;
  CHECK(bwd == Approx(0.012));
  CHECK(inline_copies.single_gpu_iteration_s == Approx(comm.single_gpu_iteration_s));
  // ... and each average is copied back after backward, in bucket order, 1 ms each, once
  // its allreduce has ended: at 12, 13 and 14 ms (the allreduces end by 12 ms + a little).
  const double last_end = inline_copies.buckets[2].end_s;
  REQUIRE(last_end > 0.012);
  REQUIRE(last_end < 0.0121);
  CHECK(inline_copies.copy_back_s == Approx(0.015 - last_end));
  CHECK(inline_copies.exposed_comm_s == Approx(0.003));
  std::vector<std::pair<double, double>> copies;  // (start, duration) from backward start
  for (const auto& e : inline_copies.timeline.events)
    if (e.category == "copy") copies.push_back({e.start_s - inline_copies.forward_s, e.dur_s});
  REQUIRE(copies.size() == 3);
  for (int k = 0; k < 3; ++k) {
    CHECK(copies[size_t(k)].first == Approx(0.012 + 0.001 * k));
    CHECK(copies[size_t(k)].second == Approx(0.001));
  }
  CHECK(inline_copies.iteration_s == Approx(inline_copies.forward_s + 0.015 + inline_copies.optimizer_s));
  // A slow last allreduce: only its own copy follows it.
  Cluster slow = toy_cluster(0.5, 0);
  slow.device.mem_bw_GBps = c.device.mem_bw_GBps;
  const Report late = predict_toy(m, slow, p);
  REQUIRE(late.buckets[2].end_s > 0.020);
  CHECK(late.copy_back_s == Approx(0.001));
  CHECK(late.exposed_comm_s == Approx(late.comm_end_s - late.backward_s + 0.001));
  // The report file carries it, and reads it back.
  CHECK(report_from_json(report_to_json(late), "r.json").copy_back_s == late.copy_back_s);
  CHECK(!report_to_json(comm).contains("copy_back_s"));
  // Unpacked buckets copy nothing, wherever the plan says copies run.
  for (auto& b : p.buckets) b.pack = false;
  CHECK(predict_toy(m, c, p).backward_s == Approx(0.009));
  // Written to the plan file when not the default and read back; other values are refused.
  check_place_key(p, toy_plan(m, "single"), "pack_on", "compute", [](const Plan& q) { return q.pack_on; },
                  PackOn::Compute);
}

TEST_CASE("gradient accumulation shares the optimizer step and no_sync exposes one allreduce in steps") {
  Model m = toy();
  const Cluster c = toy_cluster(1.0, 10);
  Plan p = toy_plan(m, "single");  // one bucket after backward: its whole allreduce is exposed
  const Report base = predict_toy(m, c, p);
  REQUIRE(base.exposed_comm_s > 0.001);
  REQUIRE(base.optimizer_s > 0);
  // Every micro-batch allreduces (DDP without no_sync): only the optimizer is shared.
  p.accumulate = {4, false};
  Report every = predict_toy(m, c, p);
  CHECK(every.optimizer_s == Approx(base.optimizer_s / 4));
  CHECK(every.exposed_comm_s == Approx(base.exposed_comm_s));
  CHECK(every.iteration_s == Approx(base.iteration_s - base.optimizer_s * 3 / 4));
  CHECK(every.single_gpu_iteration_s == Approx(0.003 + 0.009 + base.optimizer_s / 4));
  CHECK(every.throughput_samples_s == Approx(4 * 8 / every.iteration_s));
  // no_sync: three micro-batches only compute, the fourth allreduces and steps.
  p.accumulate = {4, true};
  Report last = predict_toy(m, c, p);
  CHECK(last.backward_s == Approx(0.009));
  CHECK(last.exposed_comm_s == Approx(base.exposed_comm_s / 4));
  CHECK(last.comm_busy_s == Approx(base.comm_busy_s / 4));
  CHECK(last.iteration_s == Approx(0.003 + 0.009 + (base.exposed_comm_s + base.optimizer_s) / 4));
  CHECK(last.buckets[0].end_s == Approx(base.buckets[0].end_s));  // the allreducing micro-batch's times
  // The timeline is that micro-batch, with the whole optimizer step.
  Report traced = predict(m, c, p, CollectiveModel(c, 4), ComputeModel(m, c, 8, Precision::FP32), {}, true);
  bool found = false;
  for (const auto& e : traced.timeline.events)
    if (e.category == "optimizer") {
      found = true;
      CHECK(e.dur_s == Approx(base.optimizer_s));
      CHECK(e.start_s == Approx(0.003 + base.buckets[0].end_s));
    }
  CHECK(found);
  // Written to the plan file and read back; out of range and unknown keys are refused.
  auto j = plan_to_json(p);
  CHECK(j["accumulate"]["steps"] == 4);
  CHECK(j["accumulate"]["no_sync"] == true);
  CHECK(plan_from_json(j, "p.json").accumulate == Accumulation{4, true});
  CHECK(!plan_to_json(toy_plan(m, "single")).contains("accumulate"));
  j["accumulate"]["steps"] = 0;
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.accumulate.steps: must be in [1, 4096]"));
  j["accumulate"] = {{"steps", 1}, {"no_sync", true}};
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"),
                    Catch::Contains("p.json: $.accumulate.no_sync: needs steps 2 or more"));
  j["accumulate"] = {{"steps", 2}, {"sync", true}};
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.accumulate.sync"));
  // A plan built in code is held to the same range by the predictor, named bare.
  Plan bad = toy_plan(m, "single");
  bad.accumulate = {0, false};
  CHECK_THROWS_WITH(predict_toy(m, c, bad), Catch::Contains("accumulate: must be in [1, 4096] (got 0)"));
  bad.accumulate = {1, true};
  CHECK_THROWS_WITH(predict_toy(m, c, bad), Catch::Contains("no_sync: needs accumulate 2 or more"));
  // Consumers that run one micro-batch per step refuse such a plan, naming it.
  CHECK_THROWS_WITH(require_no_accumulation(p, "p.json", "fuseplan-exec run"),
                    Catch::Contains("p.json: $.accumulate: fuseplan-exec run runs one micro-batch"));
  CHECK_NOTHROW(require_no_accumulation(toy_plan(m, "single"), "p.json", "fuseplan-exec run"));
}

TEST_CASE("per-tensor optimizer kernels add the device's kernel overhead per kernel and tensor") {
  Model m = toy();  // three weight tensors (no biases)
  Cluster c = toy_cluster(1.0, 10);
  c.device.kernel_overhead_us = 10;
  Plan p = toy_plan(m, "single");
  const Report fused = predict_toy(m, c, p);
  CHECK(fused.optimizer_s == Approx(3 * 1024.0 * 1024 * 28 / 1e12));  // memory bound: 28 B per parameter at 1 TB/s
  p.optimizer = optimizer_step("lars", "per-tensor", "x");  // LARS's bytes, torch.optim.SGD's 5 kernels
  const Report looped = predict_toy(m, c, p);
  CHECK(looped.optimizer_s == Approx(fused.optimizer_s + 3 * 5 * 10e-6));
  CHECK(looped.iteration_s == Approx(fused.iteration_s + 3 * 5 * 10e-6));
  // A measured optimizer step is used as is: it was timed with whatever kernels ran.
  Model measured = toy();
  measured.measured_optimizer_us = 500;
  CHECK(predict_toy(measured, c, p).optimizer_s == Approx(500e-6));
  auto j = plan_to_json(p);
  CHECK(j["optimizer"]["bytes_per_param"] == 28);
  CHECK(j["optimizer"]["kernels_per_tensor"] == 5);
  CHECK(plan_from_json(j, "p.json").optimizer == p.optimizer);
  CHECK_FALSE(plan_to_json(toy_plan(m, "single")).contains("optimizer"));  // the default is not written
  // Plans written before the bytes were a field say "fused" or "per-tensor" at LARS's bytes.
  j.erase("optimizer");
  j["optimizer_kernels"] = "per-tensor";
  CHECK(plan_from_json(j, "p.json").optimizer == OptimizerStep{28, 5});
  j["optimizer_kernels"] = "foreach";
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"),
                    Catch::Contains("p.json: $.optimizer_kernels: unknown optimizer kernels 'foreach' "
                                    "(valid: fused, per-tensor;"));
  j["optimizer_kernels"] = "fused";
  j["optimizer"] = {{"bytes_per_param", 28}, {"kernels_per_tensor", 0}};
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("$.optimizer_kernels: give it or $.optimizer"));
  j.erase("optimizer_kernels");
  j["optimizer"]["bytes_per_param"] = 0;
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.optimizer.bytes_per_param"));
  j["optimizer"] = {{"bytes_per_param", 92}, {"kernels_per_tensor", 101}};
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.optimizer.kernels_per_tensor"));
}

TEST_CASE("an optimizer's update rule sets the bytes its step moves, fused or per tensor") {
  // Counted from each implementation's code (plan.cpp's table): fused passes once over
  // every parameter; torch.optim's per-tensor loop moves more, in more kernels.
  CHECK(optimizer_step("lars", "fused", "x") == OptimizerStep{});
  CHECK(optimizer_step("sgd", "fused", "x") == OptimizerStep{20, 0});
  CHECK(optimizer_step("sgd", "per-tensor", "x") == OptimizerStep{48, 5});
  CHECK(optimizer_step("adam", "fused", "x") == OptimizerStep{28, 0});
  CHECK(optimizer_step("adam", "per-tensor", "x") == OptimizerStep{92, 10});
  CHECK(optimizer_step("adam", "per-tensor:12", "x") == OptimizerStep{92, 12});
  CHECK(optimizer_step("adam", "foreach", "x") == OptimizerStep{92, 0});  // the loop's passes, few launches
  CHECK(optimizer_step("sgd", "foreach", "x") == OptimizerStep{48, 0});
  CHECK(optimizer_step("lamb", "fused", "x") == OptimizerStep{52, 0});
  CHECK_THROWS_WITH(optimizer_step("lamb", "per-tensor", "--k"), Catch::StartsWith("--k: optimizer 'lamb' runs fused"));
  CHECK_THROWS_WITH(optimizer_step("lamb", "foreach", "--k"), Catch::StartsWith("--k: optimizer 'lamb' runs fused"));
  // ... unless the caller gives the bytes of the implementation, and its kernels per tensor.
  CHECK(optimizer_step("lamb", "per-tensor:8", "x", true).kernels_per_tensor == 8);
  CHECK(optimizer_step("lamb", "foreach", "x", true).fused());
  CHECK_THROWS_WITH(optimizer_step("lamb", "per-tensor", "--k", true), Catch::StartsWith("--k: optimizer 'lamb' runs"));
  CHECK_THROWS_WITH(optimizer_step("adagrad", "fused", "--o"),
                    Catch::Contains("--o: unknown optimizer 'adagrad' (valid: lars, sgd, adam, lamb)"));
  for (const char* bad : {"per-tensor:", "per-tensor:0", "per-tensor:101", "per-tensor:3x", "per-tensors", "foreach:2"})
    CHECK_THROWS_WITH(optimizer_step("adam", bad, "--k"), Catch::StartsWith("--k: "));
  // The step costs its bytes at the memory bandwidth and its kernels at the kernel overhead.
  Model m = toy();  // three weight tensors of 1 Mi parameters
  Cluster c = toy_cluster(1.0, 10);
  c.device.kernel_overhead_us = 10;
  const ComputeModel compute(m, c, 8, Precision::FP32);
  const double params = 3 * 1024.0 * 1024;
  CHECK(compute.optimizer_s(optimizer_step("adam", "per-tensor", "x")) == Approx(params * 92 / 1e12 + 3 * 10 * 10e-6));
  CHECK(compute.optimizer_s(optimizer_step("lamb", "fused", "x")) == Approx(params * 52 / 1e12));
  CHECK_THROWS_WITH(check_optimizer_step({0, 0}, "--b"), Catch::StartsWith("--b: bytes per parameter must be in"));
  CHECK_THROWS_WITH(check_optimizer_step({28, -1}, "--b"), Catch::StartsWith("--b: kernels per tensor must be in"));
}

TEST_CASE("the expected maximum of n standard normals - known values and its growth") {
  CHECK(expected_max_normal(1) == 0);
  CHECK(expected_max_normal(2) == Approx(1 / std::sqrt(M_PI)).epsilon(1e-9));      // E|Z1 - Z2| / 2
  CHECK(expected_max_normal(3) == Approx(1.5 / std::sqrt(M_PI)).epsilon(1e-9));    // 3 / (2 sqrt(pi))
  // Integrals of x n phi(x) Phi(x)^(n-1), the density's form, by mpmath at 30 digits.
  CHECK(expected_max_normal(5) == Approx(1.1629644736).epsilon(1e-8));
  CHECK(expected_max_normal(10) == Approx(1.5387527308).epsilon(1e-8));
  CHECK(expected_max_normal(100) == Approx(2.5075936364).epsilon(1e-8));
  CHECK(expected_max_normal(1024) == Approx(3.2482396014).epsilon(1e-8));
  // It grows like sqrt(2 ln n), slowly: 1024 GPUs wait about 2.3 times what 8 do.
  double previous = 0;
  for (int n : {2, 4, 8, 16, 1024, 1 << 20}) {
    CHECK(expected_max_normal(n) > previous);
    previous = expected_max_normal(n);
  }
  CHECK(previous < std::sqrt(2 * std::log(double(1 << 20))));
  CHECK_THROWS(expected_max_normal(0));
}

TEST_CASE("compute variation: the step waits for its slowest GPU's forward and backward, not on one GPU") {
  Model m = toy();
  Cluster c = toy_cluster(1.0, 10);
  Plan p = toy_plan(m, "single");
  const Report base = predict_toy(m, c, p);
  CHECK(base.variation_wait_s == 0);
  c.compute_variation = 0.05;
  const Report varied = predict_toy(m, c, p);
  const ComputeModel compute(m, c, 8, Precision::FP32);
  const double wait = expected_max_normal(4) * 0.05 * (compute.forward_s() + compute.backward_s());
  CHECK(varied.variation_wait_s == Approx(wait));
  CHECK(varied.iteration_s == Approx(base.iteration_s + wait));
  CHECK(varied.exposed_comm_s == Approx(base.exposed_comm_s));
  CHECK(varied.single_gpu_iteration_s == Approx(base.single_gpu_iteration_s));  // one GPU waits for none
  // Per micro-batch, whatever the accumulation: the accumulation's spread over its micro-batches.
  p.accumulate = {4, true};
  Cluster none = c;
  none.compute_variation = 0;
  CHECK(predict_toy(m, c, p).iteration_s == Approx(predict_toy(m, none, p).iteration_s + wait));
  p.accumulate = {};
  Plan one = make_plan(m, "toy", 1, 8, Precision::FP32, buckets_from_spec("single", m, "ring", Precision::FP32), "1");
  CHECK(predict(m, c, one, CollectiveModel(c, 1), compute).variation_wait_s == 0);
  // The trace is the slowest GPU's step: its forward and backward stretched, the rest after;
  // carried by the report file; absent means none.
  Report traced = predict(m, c, p, CollectiveModel(c, 4), compute, {}, true);
  double forward = 0, end = 0;
  for (const auto& e : traced.timeline.events) {
    if (e.category == "forward") forward += e.dur_s;
    end = std::max(end, e.start_s + e.dur_s);
  }
  const double slowest = 1 + expected_max_normal(4) * 0.05;
  CHECK(slowest_gpu_factor(c, 4) == Approx(slowest));
  CHECK(slowest_gpu_factor(c, 1) == 1);
  CHECK(forward == Approx(compute.forward_s() * slowest));
  CHECK(end == Approx(varied.iteration_s));
  CHECK(report_from_json(report_to_json(varied), "r.json").variation_wait_s == Approx(wait));
  CHECK(!report_to_json(base).contains("variation_wait_s"));
  // The cluster file carries it; its range, and the what-if's.
  auto j = cluster_to_json(c);
  CHECK(j["compute_variation"] == Approx(0.05));
  CHECK(cluster_from_json(j, "c.json").compute_variation == Approx(0.05));
  CHECK(!cluster_to_json(none).contains("compute_variation"));
  j["compute_variation"] = 0.6;
  CHECK_THROWS_WITH(cluster_from_json(j, "c.json"),
                    Catch::Contains("c.json: $.compute_variation: must be in [0, 0.5]"));
  CHECK_THROWS_WITH(set_compute_variation(c, -0.1, "--x"), Catch::StartsWith("--x: must be in [0, 0.5]"));
  set_compute_variation(c, 0, "--x");
  CHECK(predict_toy(m, c, p).iteration_s == Approx(base.iteration_s));
}

TEST_CASE("a step overhead is paid after the optimizer on more than one GPU and not on one") {
  Model m = toy();
  const Cluster c = toy_cluster(1.0, 10);
  Plan p = toy_plan(m, "single");
  const Report base = predict_toy(m, c, p);
  CHECK(base.step_overhead_s == 0);
  p.step_overhead_s = 0.005;
  const Report paid = predict_toy(m, c, p);
  CHECK(paid.step_overhead_s == Approx(0.005));
  CHECK(paid.iteration_s == Approx(base.iteration_s + 0.005));
  CHECK(paid.exposed_comm_s == Approx(base.exposed_comm_s));  // serial: it hides nothing and shows no comm
  CHECK(paid.single_gpu_iteration_s == Approx(base.single_gpu_iteration_s));
  CHECK(paid.scaling_efficiency == Approx(base.single_gpu_iteration_s / (base.iteration_s + 0.005)));
  // Per micro-batch, whatever the accumulation.
  p.accumulate = {4, true};
  Plan q = p;
  q.step_overhead_s = 0;
  CHECK(predict_toy(m, c, p).iteration_s == Approx(predict_toy(m, c, q).iteration_s + 0.005));
  p.accumulate = {};
  // One GPU pays none: the plan's GPUs are 1.
  Plan one = make_plan(m, "toy", 1, 8, Precision::FP32, buckets_from_spec("single", m, "ring", Precision::FP32), "1");
  one.step_overhead_s = 0.005;
  const Report alone = predict(m, c, one, CollectiveModel(c, 1), ComputeModel(m, c, 8, Precision::FP32));
  CHECK(alone.step_overhead_s == 0);
  CHECK(alone.iteration_s == Approx(alone.single_gpu_iteration_s));
  // The timeline shows it after the optimizer.
  Report traced = predict(m, c, p, CollectiveModel(c, 4), ComputeModel(m, c, 8, Precision::FP32), {}, true);
  double optimizer_end = -1, overhead_start = -2;
  for (const auto& e : traced.timeline.events) {
    if (e.category == "optimizer") optimizer_end = e.start_s + e.dur_s;
    if (e.name == trace_name::kStepOverhead) {
      overhead_start = e.start_s;
      CHECK(e.dur_s == Approx(0.005));
      CHECK(e.category == "overhead");
    }
  }
  CHECK(overhead_start == Approx(optimizer_end));
  // Plan and report files carry it (in ms and s); absent means none; the range is the plan's.
  auto j = plan_to_json(p);
  CHECK(j["step_overhead_ms"] == Approx(5));
  CHECK(plan_from_json(j, "p.json").step_overhead_s == Approx(0.005));
  CHECK(!plan_to_json(toy_plan(m, "single")).contains("step_overhead_ms"));
  CHECK(report_from_json(report_to_json(paid), "r.json").step_overhead_s == Approx(0.005));
  CHECK(!report_to_json(base).contains("step_overhead_s"));
  j["step_overhead_ms"] = 1001;
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.step_overhead_ms: must be in [0, 1000]"));
  j["step_overhead_ms"] = -1;
  CHECK_THROWS_WITH(plan_from_json(j, "p.json"), Catch::Contains("p.json: $.step_overhead_ms"));
  CHECK_THROWS_WITH(check_step_overhead(std::nan("")), Catch::Contains("step_overhead: must be in [0, 1000] ms"));
  CHECK_NOTHROW(check_step_overhead(1.0));
  // A plan built in code is held to the same range by the predictor (and the simulator, which calls it).
  Plan bad = toy_plan(m, "single");
  bad.step_overhead_s = -0.001;
  CHECK_THROWS_WITH(predict_toy(m, c, bad), Catch::Contains("step_overhead: must be in [0, 1000] ms (got -1)"));
}

TEST_CASE("streams: one stream equals the serial formula, two streams share bandwidth") {
  std::vector<double> ready{0, 0}, lat{0, 0}, bw{1, 1};
  auto serial = schedule_buckets(ready, lat, bw, {0, 0});
  CHECK(serial[1].end_s == Approx(2));
  auto shared = schedule_buckets(ready, lat, bw, {0, 1});
  CHECK(shared[0].end_s == Approx(2));  // both progress at half rate
  CHECK(shared[1].end_s == Approx(2));
  // Latency parts overlap across streams; bandwidth parts do not gain.
  auto lat_bound = schedule_buckets(ready, {1, 1}, {0, 0}, {0, 1});
  CHECK(lat_bound[1].end_s == Approx(1));
  // Staggered: bucket 1 arrives at 0.5 while bucket 0 runs alone, then they share.
  auto stag = schedule_buckets({0, 0.5}, {0, 0}, {1, 1}, {0, 1});
  CHECK(stag[0].end_s == Approx(1.5));
  CHECK(stag[1].end_s == Approx(2.0));
}

TEST_CASE("plans: JSON round trip and validation against the model") {
  Model m = build_zoo_model("resnet50");
  auto b = buckets_from_spec("splits:10,76", m, "ring", Precision::FP16);
  REQUIRE(b.size() == 3);
  CHECK(b[1].begin == 10);
  CHECK(b[2].begin == 76);
  CHECK(b[2].end == 161);
  Plan p = make_plan(m, "tencent-p40", 1024, 32, Precision::FP16, b, "splits");
  Plan back = plan_from_json(plan_to_json(p), "mem");
  CHECK_NOTHROW(validate_plan(back, m, "mem"));
  CHECK(back.buckets.size() == 3);
  CHECK(back.buckets[1].algorithm == "ring");

  Model other = build_zoo_model("resnet18");
  CHECK_THROWS_WITH(validate_plan(back, other, "plan.json"), Catch::Contains("plan is for model resnet50"));
  Plan gap = back;
  gap.buckets[1].begin = 11;
  CHECK_THROWS_WITH(validate_plan(gap, m, "plan.json"), Catch::Contains("$.buckets[1]: begins at 11, expected 10"));
  Plan short_plan = back;
  short_plan.buckets.pop_back();
  CHECK_THROWS_WITH(validate_plan(short_plan, m, "plan.json"), Catch::Contains("cover 76 of 161"));
  auto j = plan_to_json(p);
  j["buckets"][0]["algorithm"] = "magic";
  CHECK_THROWS_WITH(plan_from_json(j, "plan.json"), Catch::Contains("plan.json: $.buckets[0].algorithm: unknown algorithm 'magic'"));
  j = plan_to_json(p);
  j["buckets"][0]["priority"] = 1;
  CHECK_THROWS_WITH(plan_from_json(j, "plan.json"), Catch::Contains("$.buckets[0].priority: unknown key"));

  // The prediction a plan carries is typed: it reads back, and anything else is refused.
  CHECK_FALSE(back.prediction);
  Plan predicted = p;
  predicted.prediction = PlanPrediction{0.25, 0.01, 0.2, 0.9};
  const Plan again = plan_from_json(plan_to_json(predicted), "mem");
  REQUIRE(again.prediction);
  CHECK(again.prediction->iteration_s == 0.25);
  CHECK(again.prediction->comm_end_s == 0.2);
  CHECK(plan_to_json(again) == plan_to_json(predicted));
  j = plan_to_json(predicted);
  j["prediction"]["colour"] = 1;
  CHECK_THROWS_WITH(plan_from_json(j, "plan.json"), Catch::Contains("$.prediction.colour: unknown key"));
  j = plan_to_json(predicted);
  j["prediction"]["iteration_s"] = "fast";
  CHECK_THROWS_WITH(plan_from_json(j, "plan.json"), Catch::Contains("$.prediction.iteration_s"));
}

TEST_CASE("bucket specs: threshold packs greedily in backward order") {
  Model m = build_zoo_model("resnet50");
  auto per = buckets_from_spec("per-tensor", m, "auto", Precision::FP16);
  CHECK(per.size() == 161);
  auto one = buckets_from_spec("single", m, "auto", Precision::FP16);
  CHECK(one.size() == 1);
  auto t = buckets_from_spec("threshold:25MB", m, "auto", Precision::FP16);
  Plan p = make_plan(m, "x", 8, 32, Precision::FP16, t, "t");
  for (const auto& b : t) {
    int64_t bytes = bucket_elements(p, m, b) * 2;
    if (b.end - b.begin > 1) CHECK(bytes <= 25000000);
  }
  CHECK(t.size() == 3);  // 51 MB of FP16 gradients
  CHECK_THROWS_WITH(buckets_from_spec("splits:10,5", m, "auto", Precision::FP16), Catch::Contains("must increase"));
  CHECK_THROWS_WITH(buckets_from_spec("threshold:64XB", m, "auto", Precision::FP16), Catch::Contains("unknown size unit"));
  CHECK_THROWS_WITH(buckets_from_spec("every-other", m, "auto", Precision::FP16), Catch::Contains("valid: per-tensor"));
  CHECK(parse_bytes("64MiB", "x") == 64 << 20);
  CHECK(parse_bytes("25MB", "x") == 25000000);
  CHECK(parse_bytes("4K", "x") == 4096);
  // A bare number: bytes like nccl-tests' -b/-e, MiB like DDP's bucket_cap_mb, or refused.
  CHECK(parse_bytes("4096", "x") == 4096);
  CHECK(parse_bytes("25", "x", BareNumber::MiB) == 25 << 20);
  CHECK(parse_bytes("4MB", "x", BareNumber::MiB) == 4000000);
  CHECK_THROWS_WITH(parse_bytes("64", "--threshold", BareNumber::Refused),
                    Catch::Contains("--threshold: '64' needs a unit (e.g. 64MiB"));
  CHECK(parse_bytes("64B", "x", BareNumber::Refused) == 64);
  CHECK(parse_bytes("0", "x", BareNumber::Refused, true) == 0);
  CHECK_THROWS(parse_bytes("0", "x", BareNumber::Refused));
  CHECK_THROWS_WITH(buckets_from_spec("threshold:64", m, "auto", Precision::FP16), Catch::Contains("needs a unit"));
}

TEST_CASE("the Chrome trace has the Trace Event fields and nests per thread") {
  Model m = build_zoo_model("resnet18");
  Cluster c = load_cluster("dgx-a100");
  ComputeModel compute(m, c, 32, Precision::FP16);
  CollectiveModel coll(c, 16);
  Plan p = make_plan(m, c.name, 16, 32, Precision::FP16, buckets_from_spec("threshold:4MiB", m, "auto", Precision::FP16), "t");
  Report r = predict(m, c, p, coll, compute);
  auto trace = nlohmann::json::parse(r.timeline.to_chrome_trace().dump());
  REQUIRE(trace["traceEvents"].is_array());
  int complete = 0, meta = 0;
  std::map<int, double> last_end;  // tid -> end, slices on one thread must not overlap
  for (const auto& e : trace["traceEvents"]) {
    REQUIRE(e.contains("ph"));
    REQUIRE(e.contains("pid"));
    REQUIRE(e.contains("tid"));
    if (e["ph"] == "X") {
      ++complete;
      for (const char* k : {"name", "cat", "ts", "dur"}) REQUIRE(e.contains(k));
      CHECK(e["dur"].get<double>() >= 0);
      int tid = e["tid"];
      CHECK(e["ts"].get<double>() >= last_end[tid] - 1e-6);
      last_end[tid] = e["ts"].get<double>() + e["dur"].get<double>();
    } else {
      CHECK(e["ph"] == "M");
      ++meta;
    }
  }
  // Forward and backward per layer (the slowest GPU's: the wait has no event of its own), the
  // buckets and the optimizer.
  CHECK(complete == static_cast<int>(2 * m.layers.size() + p.buckets.size() + 1));
  CHECK(meta >= 3);
}

TEST_CASE("predictions are deterministic and respond to the cluster the right way") {
  Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("tencent-p40");
  auto run = [&](int gpus, const char* spec) {
    ComputeModel compute(m, c, 32, Precision::FP16);
    CollectiveModel coll(c, gpus);
    Plan p = make_plan(m, c.name, gpus, 32, Precision::FP16, buckets_from_spec(spec, m, "ring", Precision::FP16), spec);
    return predict(m, c, p, coll, compute);
  };
  CHECK(report_to_json(run(1024, "single"), true).dump() == report_to_json(run(1024, "single"), true).dump());
  // Flat ring per tensor pays 2(p-1) latencies 161 times: far worse than one bucket at 1024 GPUs.
  CHECK(run(1024, "per-tensor").iteration_s > run(1024, "single").iteration_s);
  // More GPUs, more ring latency.
  CHECK(run(1024, "single").iteration_s > run(64, "single").iteration_s);
  CHECK(run(1, "single").scaling_efficiency == Approx(1.0));
}

TEST_CASE("processor sharing: hand-checked stretch of backward and communication") {
  // Backward steps of 4 and 6 ms; bucket 0 ready after step 0 (4 ms of communication),
  // bucket 1 after step 1 (1 ms).
  const std::vector<double> steps{0.004, 0.006};
  const std::vector<SharedBucket> bs{{0, 0, 0.004, 0}, {1, 0, 0.001, 0}};
  // sigma = 1: from 4 ms both run at half rate; the allreduce's 4 ms take 8 (to 12 ms),
  // backward has done 4 of its 6 ms by then and ends at 14; bucket 1 ends at 15 = the
  // total work: nothing is hidden.
  SharedTiming one = schedule_shared(steps, bs, 1.0);
  CHECK(one.buckets[0].start_s == Approx(0.004));
  CHECK(one.buckets[0].end_s == Approx(0.012));
  CHECK(one.backward_end_s == Approx(0.014));
  CHECK(one.buckets[1].start_s == Approx(0.014));
  CHECK(one.comm_end_s == Approx(0.015));
  // sigma = 0.5: both at 2/3: the allreduce ends at 4 + 6 = 10 ms, backward has 2 ms left.
  SharedTiming half = schedule_shared(steps, bs, 0.5);
  CHECK(half.buckets[0].end_s == Approx(0.010));
  CHECK(half.backward_end_s == Approx(0.012));
  CHECK(half.comm_end_s == Approx(0.013));
  // sigma = 0: free overlap, the allreduce ends at 8 ms behind backward's 10.
  SharedTiming free = schedule_shared(steps, bs, 0.0);
  CHECK(free.buckets[0].end_s == Approx(0.008));
  CHECK(free.backward_end_s == Approx(0.010));
  CHECK(free.comm_end_s == Approx(0.011));
  // A latency part (a copy into a fusion buffer is one): bucket 0 ready at 4 ms with 1 + 4
  // ms of work; both at half rate from 4 ms, the allreduce ends at 14 with backward 1 ms
  // short, which it runs alone to 15; bucket 1 at 16.
  SharedTiming lat = schedule_shared(steps, {{0, 0.001, 0.004, 0}, {1, 0, 0.001, 0}}, 1.0);
  CHECK(lat.buckets[0].ready_s == Approx(0.004));
  CHECK(lat.buckets[0].end_s == Approx(0.014));
  CHECK(lat.backward_end_s == Approx(0.015));
  CHECK(lat.comm_end_s == Approx(0.016));
}

TEST_CASE("processor sharing: each side's rate apart (allreduce_sharing) hand-checked") {
  // The steps and buckets of the case above.
  const std::vector<double> steps{0.004, 0.006};
  const std::vector<SharedBucket> bs{{0, 0, 0.004, 0}, {1, 0, 0.001, 0}};
  // Backward unslowed, the allreduce at half rate while it runs: backward ends at 10 ms;
  // by then the allreduce has done 3 of its 4 ms, the last at full rate: 11; bucket 1 at 12.
  SharedTiming comm = schedule_shared(steps, bs, ProcessorSharing{0, 1});
  CHECK(comm.backward_end_s == Approx(0.010));
  CHECK(comm.buckets[0].end_s == Approx(0.011));
  CHECK(comm.buckets[1].start_s == Approx(0.011));
  CHECK(comm.comm_end_s == Approx(0.012));
  // The other way round: the allreduce at full rate ends at 8 ms, backward at half rate
  // meanwhile (2 of its 6 ms done), then alone: 12; bucket 1 at 13.
  SharedTiming compute = schedule_shared(steps, bs, ProcessorSharing{1, 0});
  CHECK(compute.buckets[0].end_s == Approx(0.008));
  CHECK(compute.backward_end_s == Approx(0.012));
  CHECK(compute.comm_end_s == Approx(0.013));
  // An allreduce at a quarter of its rate (allreduce_sharing 3) while backward runs at
  // half: from 4 ms, backward's 6 ms take 12 (to 16 ms) while the allreduce does 3 of its
  // 4 ms; its last ms alone: 17; bucket 1 at 18.
  SharedTiming both = schedule_shared(steps, bs, ProcessorSharing{1, 3});
  CHECK(both.backward_end_s == Approx(0.016));
  CHECK(both.buckets[0].end_s == Approx(0.017));
  CHECK(both.comm_end_s == Approx(0.018));
  // The predictor takes them from the cluster: absent, the allreduces follow the sharing.
  Cluster c = load_cluster("local-cpu");
  CHECK(c.sharing(2).comm == c.comm_compute_sharing);
  c.allreduce_sharing = 2;
  CHECK(c.sharing(2).compute == c.comm_compute_sharing);
  CHECK(c.sharing(2).comm == 2);
  CHECK_FALSE(c.sharing(1).any());  // one rank shares nothing
}

TEST_CASE("processor sharing: sigma 0 is the free-overlap predictor, sigma > 0 stretches backward") {
  Model m = toy();
  Cluster c = toy_cluster(1.0, 0);
  ComputeModel compute(m, c, 8, Precision::FP32);
  CollectiveModel coll(c, 4);
  Plan p = make_plan(m, "toy", 4, 8, Precision::FP32, buckets_from_spec("per-tensor", m, "ring", Precision::FP32),
                     "per-tensor");
  const Report free = predict(m, c, p, coll, compute);
  // The shared schedule at sigma = 0 gives the same times as the free-overlap path.
  std::vector<SharedBucket> bs;
  for (int i = 0; i < 3; ++i)
    bs.push_back({i, free.buckets[i].cost.latency_s + free.buckets[i].cost.reduce_s + free.buckets[i].launch_s,
                  free.buckets[i].cost.bandwidth_s, 0});
  SharedTiming zero = schedule_shared(backward_steps_s(compute), bs, 0.0);
  for (int i = 0; i < 3; ++i) {
    CHECK(zero.buckets[i].start_s == Approx(free.buckets[i].start_s).epsilon(1e-12));
    CHECK(zero.buckets[i].end_s == Approx(free.buckets[i].end_s).epsilon(1e-12));
  }
  CHECK(zero.backward_end_s == Approx(free.backward_s).epsilon(1e-12));
  c.comm_compute_sharing = 1.0;
  const Report shared = predict(m, c, p, coll, compute);
  CHECK(shared.backward_s > free.backward_s);
  CHECK(shared.comm_end_s >= free.comm_end_s);
  // One processor: backward plus the allreduces' work, whatever overlaps (no gaps here:
  // each gradient is ready before the previous allreduce ends... or backward runs).
  double work = compute.backward_s();
  for (const auto& b : free.buckets) work += b.end_s - b.start_s;
  CHECK(shared.comm_end_s == Approx(work).epsilon(1e-9));
  // The single-GPU iteration is not stretched; the timeline's backward is.
  CHECK(shared.single_gpu_iteration_s == Approx(free.single_gpu_iteration_s));
  double bwd_events = 0;
  for (const auto& e : shared.timeline.events)
    if (e.category == "backward") bwd_events += e.dur_s;
  CHECK(bwd_events == Approx(shared.backward_s));
}

TEST_CASE("processor sharing: the cluster key is validated and written back") {
  Cluster c = load_cluster("local-cpu");
  nlohmann::json j = cluster_to_json(c);
  j["comm_compute_sharing"] = 0.25;
  CHECK(cluster_from_json(j, "t").comm_compute_sharing == 0.25);
  CHECK(cluster_to_json(cluster_from_json(j, "t"))["comm_compute_sharing"] == 0.25);
  for (double bad : {-0.1, 1.5}) {
    j["comm_compute_sharing"] = bad;
    CHECK_THROWS_AS(cluster_from_json(j, "t"), InputError);
  }
  j["comm_compute_sharing"] = 0.25;
  CHECK_FALSE(cluster_from_json(j, "t").allreduce_sharing);
  CHECK_FALSE(cluster_to_json(cluster_from_json(j, "t")).contains("allreduce_sharing"));
  for (double fine : {0.0, 1.5, 10.0}) {
    j["allreduce_sharing"] = fine;
    CHECK(cluster_from_json(j, "t").allreduce_sharing == fine);
    CHECK(cluster_to_json(cluster_from_json(j, "t"))["allreduce_sharing"] == fine);
  }
  for (double bad : {-0.1, 10.5}) {
    j["allreduce_sharing"] = bad;
    CHECK_THROWS_WITH(cluster_from_json(j, "t"), Catch::Contains("allreduce_sharing"));
  }
}

TEST_CASE("training goal: each model family's, named with its source, and a token budget for language models") {
  const TrainingGoal resnet = training_goal(load_model("resnet50"));
  CHECK(resnet.epochs == 90);
  CHECK(resnet.dataset_size == 1281167);
  CHECK(resnet.tokens == 0);
  CHECK_THAT(resnet.what, Catch::Contains("ImageNet-1k"));
  CHECK(training_goal(load_model("alexnet_bn")).epochs == 95);
  const TrainingGoal fashion = training_goal(load_model("resnet18", {28, 1, 10, {}, {}}));
  CHECK(fashion.dataset_size == 60000);
  CHECK_THAT(fashion.what, Catch::Contains("Fashion-MNIST"));
  // A CNN of another shape: ImageNet's goal, said to be assumed.
  CHECK_THAT(training_goal(load_model("resnet18", {64, 3, 200, {}, {}})).what, Catch::Contains("assumed"));
  const Model bert = load_model("bert_large");
  const TrainingGoal bg = training_goal(bert);
  CHECK(bg.tokens == 1e6 * 256 * 512);
  CHECK(sequence_length(bert) == 128);
  CHECK(sequence_length(load_model("resnet50")) == 0);
  CHECK(training_goal(load_model("gpt2")).tokens == 300e9);

  // Iterations to train: the goal's samples (sequences for tokens) over the global batch.
  const Cluster c = load_cluster("dgx-a100");
  const Plan plan = make_plan(bert, "dgx-a100", 64, 8, Precision::FP16,
                              buckets_from_spec("single", bert, "auto", Precision::FP16), "single");
  CollectiveModel coll(c, 64);
  ComputeModel compute(bert, c, 8, Precision::FP16);
  const Report r = predict(bert, c, plan, coll, compute, bg, false);
  CHECK(r.iterations_to_train == int64_t(std::ceil(1e6 * 256 * 512 / 128.0 / (64 * 8))));
  CHECK(r.time_to_train_s == Approx(double(r.iterations_to_train) * r.iteration_s));
  CHECK(r.tokens == bg.tokens);
  CHECK(r.epochs == 0);
  CHECK(r.goal == bg.what);
  CHECK(r.throughput_samples_s == Approx(64 * 8 / r.iteration_s));
  CHECK(r.scaling_efficiency == Approx(r.single_gpu_iteration_s / r.iteration_s));
}

TEST_CASE("report: the JSON round trip is lossless and the reader is strict") {
  const Model m = load_model("resnet50");
  const Cluster c = load_cluster("dgx-h100");
  const Plan plan = make_plan(m, "dgx-h100", 16, 32, Precision::FP16,
                              buckets_from_spec("threshold:25MB", m, "auto", Precision::FP16), "threshold");
  CollectiveModel coll(c, 16);
  ComputeModel compute(m, c, 32, Precision::FP16);
  const Report r = predict(m, c, plan, coll, compute, training_goal(m), true);
  const nlohmann::json j = report_to_json(r, true);
  CHECK(j.at("schema") == kReportSchema);
  CHECK(report_to_json(report_from_json(j, "test"), true) == j);

  // Each change of a written report, and what the refusal names.
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> cases = {
      {[](nlohmann::json& x) { x["colour"] = 1; }, "colour"},
      {[](nlohmann::json& x) { x["buckets"][0]["colour"] = 1; }, "$.buckets[0]"},
      {[](nlohmann::json& x) { x.erase("schema"); }, "schema"},
      {[](nlohmann::json& x) { x["schema"] = "fuseplan.report/0"; }, "fuseplan.report/1"},
      {[](nlohmann::json& x) { x.erase("time_to_train_s"); }, "time_to_train_s"},
      {[](nlohmann::json& x) { x["source"] = "guessed"; }, "valid: predicted, simulated, measured"}};
  for (const auto& [change, what] : cases) {
    INFO(what);
    nlohmann::json bad = j;
    change(bad);
    CHECK_THROWS_WITH(report_from_json(bad, "r.json"), Catch::Contains("r.json") && Catch::Contains(what));
  }
}

namespace {
// A shipped cluster with its per-class efficiencies taken out: one roofline for every layer.
Cluster one_roofline(const std::string& name) {
  nlohmann::json j = cluster_to_json(load_cluster(name));
  drop_by_kind(j);
  return cluster_from_json(j, name + " without by_kind");
}
}  // namespace

TEST_CASE("compute per layer class: the device's efficiencies given per class are today's roofline") {
  const Model vgg = load_model("vgg16");
  const Cluster plain = one_roofline("dgx-a100");
  nlohmann::json j = cluster_to_json(plain);
  for (int k = 0; k < kComputeClassCount; ++k)
    j["device"]["by_kind"][std::string(compute_class_name(ComputeClass(k)))] = {
        {"compute_efficiency", j["device"]["compute_efficiency"]}, {"memory_efficiency", j["device"]["memory_efficiency"]}};
  const Cluster same = cluster_from_json(j, "t");
  CHECK(same.device.by_kind.size() == size_t(kComputeClassCount));
  for (Precision p : {Precision::FP32, Precision::FP16}) {
    const ComputeModel a(vgg, plain, 32, p), b(vgg, same, 32, p);
    for (size_t l = 0; l < vgg.layers.size(); ++l) {
      CHECK(a.layers()[l].fwd_s == b.layers()[l].fwd_s);
      CHECK(a.layers()[l].bwd_s == b.layers()[l].bwd_s);
    }
  }
}

TEST_CASE("compute scale: a framework's factor multiplies the roofline's layers and optimizer, not measured ones") {
  const Model bert = load_model("bert_large");
  Cluster plain = load_cluster("dgx-a100"), scaled = plain;
  set_compute_scale(scaled, 1.25, "--compute-scale");
  const OptimizerStep adam = optimizer_step("adam", "per-tensor", "test");
  const ComputeModel a(bert, plain, 8, Precision::FP16), b(bert, scaled, 8, Precision::FP16);
  for (size_t l = 0; l < bert.layers.size(); ++l) {
    CHECK(b.layers()[l].fwd_s == Approx(1.25 * a.layers()[l].fwd_s));
    CHECK(b.layers()[l].bwd_s == Approx(1.25 * a.layers()[l].bwd_s));
    CHECK(b.layers()[l].memory_bound == a.layers()[l].memory_bound);
  }
  CHECK(b.optimizer_s(adam) == Approx(1.25 * a.optimizer_s(adam)));
  CHECK(single_gpu_step_s(bert, scaled, 8, Precision::FP16, {}, adam) ==
        Approx(1.25 * single_gpu_step_s(bert, plain, 8, Precision::FP16, {}, adam)));
  // 1 is the model as it was: the same times to the bit.
  Cluster one = plain;
  set_compute_scale(one, 1, "--compute-scale");
  const ComputeModel c(bert, one, 8, Precision::FP16);
  for (size_t l = 0; l < bert.layers.size(); ++l) CHECK(c.layers()[l].fwd_s == a.layers()[l].fwd_s);
  // Measured times (a profile, a measured rate) are the framework's own: left as they are.
  Model measured = bert;
  set_measured_rate(measured, plain, 8, Precision::FP16, {}, adam, 40, "rate");
  const ComputeModel m1(measured, plain, 8, Precision::FP16), m2(measured, scaled, 8, Precision::FP16);
  CHECK(m2.forward_s() == m1.forward_s());
  CHECK(m2.optimizer_s(adam) == m1.optimizer_s(adam));
  // The iteration on 8 GPUs: compute 25 % longer, so more of the same communication hidden.
  const Plan plan = make_plan(bert, "dgx-a100", 8, 8, Precision::FP16,
                              buckets_from_spec("threshold:25MB", bert, "auto", Precision::FP16), "threshold:25MB");
  const Report ra = predict(bert, plain, plan, CollectiveModel(plain, 8), a);
  const Report rb = predict(bert, scaled, plan, CollectiveModel(scaled, 8), b);
  CHECK(rb.single_gpu_iteration_s == Approx(1.25 * ra.single_gpu_iteration_s));
  CHECK(rb.scaling_efficiency >= ra.scaling_efficiency);
  // A plan carries the scale it was made for ($.compute_scale, absent at 1), and binding it
  // prices its compute with it whatever the cluster says.
  Plan framework = plan;
  framework.compute_scale = 1.25;
  nlohmann::json pj = plan_to_json(framework);
  CHECK(pj["compute_scale"] == 1.25);
  CHECK_FALSE(plan_to_json(plan).contains("compute_scale"));
  CHECK(plan_from_json(pj, "p.json").compute_scale == 1.25);
  const Scenario bound = bind_scenario(bert, plain, plan_from_json(pj, "p.json"), {}, {}, "p.json");
  CHECK(bound.cluster.compute_scale == 1.25);
  CHECK(predict(bound, false).iteration_s == Approx(rb.iteration_s).epsilon(1e-12));
  CHECK(bind_scenario(bert, scaled, plan, {}, {}, "p.json").cluster.compute_scale == 1);  // the plan's own
  pj["compute_scale"] = 0;
  CHECK_THROWS_WITH(plan_from_json(pj, "p.json"), Catch::Contains("p.json: $.compute_scale: must be in [0.05, 20]"));
  CHECK_THROWS_WITH(set_compute_scale(scaled, 0.01, "--compute-scale"),
                    "--compute-scale: must be in [0.05, 20] (the framework's compute time over the cluster's) "
                    "(got 0.01)");
}

TEST_CASE("compute per layer class: a class's efficiency prices its layers only, and a profile still overrides it") {
  Model r50 = load_model("resnet50");
  CHECK(compute_class_of(r50.layers[0]) == ComputeClass::ConvStem);  // conv1: 3 input channels
  int kxk = -1, k3 = -1, one = -1, bn = -1;
  for (size_t l = 0; l < r50.layers.size(); ++l) {
    const ComputeClass k = compute_class_of(r50.layers[l]);
    if (k == ComputeClass::ConvKxK && kxk < 0) kxk = int(l);
    if (k == ComputeClass::ConvKxKs1 && k3 < 0) k3 = int(l);
    if (k == ComputeClass::Conv1x1 && one < 0) one = int(l);
    if (k == ComputeClass::Norm && bn < 0) bn = int(l);
  }
  REQUIRE((kxk > 0 && k3 > 0 && one > 0 && bn > 0));
  CHECK(r50.layers[size_t(k3)].name == "layer1.0.conv2");  // 3x3, stride 1: what Winograd serves
  CHECK(r50.layers[size_t(kxk)].name == "layer2.0.conv2");  // 3x3, stride 2 (ResNet v1.5)
  const Cluster plain = one_roofline("dgx-a100");
  nlohmann::json j = cluster_to_json(plain);
  // Half the device's FP16 efficiency for KxK convolutions, FP32 left to the device.
  const double e16 = plain.device.compute_efficiency.at(Precision::FP16);
  j["device"]["by_kind"]["conv_kxk"] = {{"compute_efficiency", {{"fp16", e16 / 2}}}};
  j["device"]["by_kind"]["norm"] = {{"memory_efficiency", plain.device.memory_efficiency / 4}};
  const Cluster kinds = cluster_from_json(j, "t");
  CHECK(cluster_from_json(cluster_to_json(kinds), "t2").device.by_kind.size() == 2);  // written back
  const double overhead = plain.device.kernel_overhead_us * 1e-6;
  const ComputeModel a(r50, plain, 64, Precision::FP16), b(r50, kinds, 64, Precision::FP16);
  // A compute-bound 3x3 convolution takes twice as long, less the fixed overhead.
  CHECK(b.layers()[kxk].fwd_s - overhead == Approx(2 * (a.layers()[kxk].fwd_s - overhead)).epsilon(1e-12));
  CHECK(b.layers()[one].fwd_s == a.layers()[one].fwd_s);
  CHECK(b.layers()[bn].fwd_s - overhead == Approx(4 * (a.layers()[bn].fwd_s - overhead)).epsilon(1e-12));
  // Without a conv_kxk_s1 value the stride-1 KxK layers are priced as conv_kxk; with one, by it alone.
  CHECK(b.layers()[k3].fwd_s - overhead == Approx(2 * (a.layers()[k3].fwd_s - overhead)).epsilon(1e-12));
  j["device"]["by_kind"]["conv_kxk_s1"] = {{"compute_efficiency", {{"fp16", e16 / 4}}}};
  const ComputeModel c(r50, cluster_from_json(j, "t3"), 64, Precision::FP16);
  CHECK(c.layers()[k3].fwd_s - overhead == Approx(4 * (a.layers()[k3].fwd_s - overhead)).epsilon(1e-12));
  CHECK(c.layers()[kxk].fwd_s == b.layers()[kxk].fwd_s);
  const ComputeModel a32(r50, plain, 64, Precision::FP32), b32(r50, kinds, 64, Precision::FP32);
  CHECK(b32.layers()[kxk].fwd_s == a32.layers()[kxk].fwd_s);
  // A memory efficiency given per precision prices that precision's layers only; written back the same.
  j["device"]["by_kind"]["norm"] = {{"memory_efficiency", {{"fp16", plain.device.memory_efficiency / 2}}}};
  const Cluster half16 = cluster_from_json(cluster_to_json(cluster_from_json(j, "t4")), "t5");
  const ComputeModel d(r50, half16, 64, Precision::FP16), d32(r50, half16, 64, Precision::FP32);
  CHECK(d.layers()[bn].fwd_s - overhead == Approx(2 * (a.layers()[bn].fwd_s - overhead)).epsilon(1e-12));
  CHECK(d32.layers()[bn].fwd_s == a32.layers()[bn].fwd_s);
  // Measured layers keep their times whatever the class's efficiency.
  r50.layers[kxk].measured = MeasuredTime{123, 456, 64};
  CHECK(ComputeModel(r50, kinds, 64, Precision::FP16).layers()[kxk].fwd_s == Approx(123e-6));
}

TEST_CASE("compute per layer class: a custom layer that names its class is priced by it, others as other") {
  // A model file's custom matrix product (a PyTorch export's `x @ w`) names class gemm.
  nlohmann::json j = nlohmann::json::parse(R"({"schema": "fuseplan.model/1", "name": "c", "input_shape": [64, 256],
    "layers": [
      {"name": "mm", "kind": "custom", "out_shape": [64, 256], "fwd_flops": 8388608, "bwd_flops": 16777216,
       "params": [{"name": "w", "shape": [256, 256]}], "attrs": {"class": "gemm"}},
      {"name": "mm_other", "kind": "custom", "out_shape": [64, 256], "fwd_flops": 8388608, "bwd_flops": 16777216,
       "params": [{"name": "w2", "shape": [256, 256]}]}]})");
  const Model m = model_from_json(j, "c.json");
  CHECK(compute_class_of(m.layers[0]) == ComputeClass::Gemm);
  CHECK(compute_class_of(m.layers[1]) == ComputeClass::Other);
  CHECK(model_to_json(m)["layers"][0]["attrs"] == nlohmann::json{{"class", "gemm"}});  // written back
  const Cluster plain = one_roofline("dgx-a100");
  nlohmann::json c = cluster_to_json(plain);
  const double e16 = plain.device.compute_efficiency.at(Precision::FP16);
  c["device"]["by_kind"]["gemm"] = {{"compute_efficiency", {{"fp16", e16 / 2}}}};
  const double overhead = plain.device.kernel_overhead_us * 1e-6;
  const ComputeModel a(m, plain, 256, Precision::FP16), b(m, cluster_from_json(c, "t"), 256, Precision::FP16);
  CHECK(b.layers()[0].fwd_s - overhead == Approx(2 * (a.layers()[0].fwd_s - overhead)).epsilon(1e-12));
  CHECK(b.layers()[1].fwd_s == a.layers()[1].fwd_s);
  // Only a custom layer names its class, and only one of the classes.
  j["layers"][0]["attrs"]["class"] = "matmul";
  CHECK_THROWS_WITH(model_from_json(j, "c.json"), Catch::Contains("c.json: $.layers[0].attrs.class: unknown layer "
                                                                  "class 'matmul' (valid: conv_kxk_s1"));
  nlohmann::json conv = model_to_json(load_model("resnet18"));
  conv["layers"][0]["attrs"]["class"] = "gemm";
  CHECK_THROWS_WITH(model_from_json(conv, "r.json"), Catch::Contains("$.layers[0].attrs.class: only a custom layer "
                                                                     "names its class (a conv2d's follows"));
}

TEST_CASE("compute: a custom layer marked a view takes no time, one that copies is priced by its bytes") {
  // A PyTorch export's transpose (a view) and contiguous (a copy), both of 0 FLOPs.
  nlohmann::json j = nlohmann::json::parse(R"({"schema": "fuseplan.model/1", "name": "v", "input_shape": [64, 256],
    "layers": [
      {"name": "fc", "kind": "linear", "params": [{"name": "fc.weight", "shape": [256, 256]}]},
      {"name": "transpose", "kind": "custom", "out_shape": [256, 64], "fwd_flops": 0, "bwd_flops": 0,
       "activation_elems": 0, "params": [], "attrs": {"view": true}},
      {"name": "contiguous", "kind": "custom", "out_shape": [256, 64], "fwd_flops": 0, "bwd_flops": 0,
       "activation_elems": 0, "params": []}]})");
  const Model m = model_from_json(j, "v.json");
  CHECK(model_to_json(m)["layers"][1]["attrs"] == nlohmann::json{{"view", true}});  // written back
  const Cluster c = load_cluster("dgx-a100");
  const ComputeModel t(m, c, 32, Precision::FP16);
  CHECK(t.layers()[1].fwd_s == 0);
  CHECK(t.layers()[1].bwd_s == 0);
  CHECK(t.layers()[2].fwd_s > c.device.kernel_overhead_us * 1e-6);  // its bytes, and a kernel
  // Only a custom layer of no FLOPs is a view.
  j["layers"][1]["fwd_flops"] = 5;
  CHECK_THROWS_WITH(model_from_json(j, "v.json"), Catch::Contains("$.layers[1].attrs.view: a view computes nothing"));
  nlohmann::json conv = model_to_json(load_model("resnet18"));
  conv["layers"][0]["attrs"]["view"] = true;
  CHECK_THROWS_WITH(model_from_json(conv, "r.json"),
                    Catch::Contains("$.layers[0].attrs.view: only a custom layer is marked a view"));
}

TEST_CASE("compute: eager attention and a fused softmax add their score traffic to the attention layers, fused "
          "attention none") {
  const Cluster c = load_cluster("dgx-a100");
  ModelOptions eager;
  eager.seq_len = 256;
  ModelOptions fused = eager, softmax = eager;
  eager.attention = AttentionKernels::Eager;
  softmax.attention = AttentionKernels::FusedSoftmax;
  const Model me = load_model("bert_base", eager), mf = load_model("bert_base", fused),
              ms = load_model("bert_base", softmax);
  // The zoo builds fused attention, and --attention fused changes nothing.
  fused.attention = AttentionKernels::Fused;
  CHECK(model_to_json(load_model("bert_base", fused)) == model_to_json(mf));
  for (Precision p : {Precision::FP16, Precision::FP32}) {
    const int batch = 8;
    const ComputeModel te(me, c, batch, p), tf(mf, c, batch, p), ts(ms, c, batch, p);
    const double eb = p == Precision::FP16 ? 2 : 4;
    const double bw = c.device.mem_bw_GBps * 1e9 * c.device.memory_efficiency_of(ComputeClass::Attention, p);
    const double scores = 256.0 * 256 * 12 * batch;  // batch x heads x S x S
    int attention = 0;
    for (size_t i = 0; i < me.layers.size(); ++i) {
      if (me.layers[i].kind != LayerKind::Attention) {
        CHECK(te.layers()[i].fwd_s == tf.layers()[i].fwd_s);
        CHECK(te.layers()[i].bwd_s == tf.layers()[i].bwd_s);
        CHECK(ts.layers()[i].fwd_s == tf.layers()[i].fwd_s);
        continue;
      }
      ++attention;
      CHECK(me.layers[i].attrs.attention == AttentionKernels::Eager);
      // Eager, forward: four reads and four writes of the scores and the dropout's byte;
      // backward: four reads, three writes and the byte.
      CHECK(te.layers()[i].fwd_s - tf.layers()[i].fwd_s == Approx(scores * (8 * eb + 1) / bw).epsilon(1e-9));
      CHECK(te.layers()[i].bwd_s - tf.layers()[i].bwd_s == Approx(scores * (7 * eb + 1) / bw).epsilon(1e-9));
      // A fused softmax, forward: the softmax's read and write and the dropout's, and the
      // byte; backward: three reads, two writes and the byte.
      CHECK(ts.layers()[i].fwd_s - tf.layers()[i].fwd_s == Approx(scores * (4 * eb + 1) / bw).epsilon(1e-9));
      CHECK(ts.layers()[i].bwd_s - tf.layers()[i].bwd_s == Approx(scores * (5 * eb + 1) / bw).epsilon(1e-9));
    }
    CHECK(attention == 12);
  }
  // The attribute is the model file's too, on attention layers only.
  for (const Model* m : {&me, &ms}) {
    const nlohmann::json j = model_to_json(*m);
    const Model back = model_from_json(j, "e.json");
    CHECK(model_to_json(back) == j);
    for (size_t i = 0; i < back.layers.size(); ++i)
      CHECK(back.layers[i].attrs.attention == m->layers[i].attrs.attention);
  }
  nlohmann::json bad = model_to_json(load_model("resnet18"));
  bad["layers"][0]["attrs"]["eager"] = true;
  CHECK_THROWS_WITH(model_from_json(bad, "r.json"),
                    Catch::Contains("$.layers[0].attrs.eager: only an attention layer runs eagerly"));
  bad["layers"][0]["attrs"].erase("eager");
  bad["layers"][0]["attrs"]["fused_softmax"] = true;
  CHECK_THROWS_WITH(model_from_json(bad, "r.json"), Catch::Contains("$.layers[0].attrs.fused_softmax: only an"));
  nlohmann::json both = model_to_json(me);
  for (auto& l : both["layers"])
    if (l["kind"] == "attention") l["attrs"]["fused_softmax"] = true;
  CHECK_THROWS_WITH(model_from_json(both, "b.json"), Catch::Contains("eager or fused_softmax, not both"));
  ModelOptions cnn;
  cnn.attention = AttentionKernels::Eager;
  CHECK_THROWS_WITH(load_model("resnet18", cnn), Catch::Contains("resnet18 has no attention layer"));
}

TEST_CASE("compute per layer class: bad by_kind entries are refused naming the JSON path") {
  nlohmann::json j = cluster_to_json(load_cluster("dgx-a100"));
  auto refused = [&](const nlohmann::json& by_kind, const std::string& says) {
    j["device"]["by_kind"] = by_kind;
    CHECK_THROWS_WITH(cluster_from_json(j, "c.json"), Catch::Contains(says));
  };
  refused({{"conv3x3", {{"compute_efficiency", 0.5}}}},
          "$.device.by_kind.conv3x3: unknown layer class (valid: conv_kxk_s1, conv_kxk, conv_1x1, conv_grouped");
  refused({{"gemm", nlohmann::json::object()}}, "$.device.by_kind.gemm.compute_efficiency: missing");
  refused({{"gemm", {{"compute_efficiency", 8.5}}}},
          "$.device.by_kind.gemm.compute_efficiency: must be in [0.0001, 8] of peak (got 8.5)");
  refused({{"gemm", {{"compute_efficiency", {{"fp8", 0.5}}}}}}, "fp8");
  refused({{"norm", {{"memory_efficiency", 0}}}}, "$.device.by_kind.norm.memory_efficiency: must be in");
  refused({{"norm", {{"memory_efficiency", {{"fp16", 1.5}}}}}},
          "$.device.by_kind.norm.memory_efficiency.fp16: must be in [0.0001, 1] of peak (got 1.5)");
}

TEST_CASE("a step overhead fitted to a measured efficiency reproduces it, also where a data wait absorbs part of it") {
  const Model m = build_zoo_model("alexnet_bn");
  Cluster c = load_cluster("tencent-p40");
  const Plan plan = make_plan(m, "tencent-p40", 16, 64, Precision::FP16,
                              buckets_from_spec("threshold:25MB", m, "auto", Precision::FP16), "threshold:25MB");
  const Scenario s = bind_scenario(m, c, plan, {}, training_goal(m), "plan.json");
  auto overhead = [](const Scenario& sc, double e) { return fit_to_efficiency(sc, e, Calibrated::StepOverhead); };
  const Report none = predict(s, false);
  REQUIRE(none.data_wait_s == 0);
  // An input pipeline just slower than one GPU's step: the 16-GPU step waits for data
  // until the overhead makes it longer than the loader, so efficiency(overhead) bends.
  c.input_samples_per_s_per_gpu = 64 / (none.single_gpu_iteration_s * 1.05);
  const Scenario fed = bind_scenario(m, c, plan, {}, training_goal(m), "plan.json");
  const Report fed_none = predict(fed, false);
  REQUIRE(fed_none.data_wait_s > 0);
  for (const Scenario* sc : {&s, &fed}) {
    const double without = predict(*sc, false).scaling_efficiency;
    for (double measured : {without - 0.01, 0.9, 0.6}) {
      const EfficiencyFit fit = fit_to_efficiency(*sc, measured, Calibrated::StepOverhead);
      REQUIRE(fit.kind == EfficiencyFit::Kind::Fitted);
      CHECK(fit.efficiency_without == Approx(without));
      Scenario with = *sc;
      with.plan.step_overhead_s = fit.value;
      CHECK(predict(with, false).scaling_efficiency == Approx(measured).margin(1e-9));
    }
    CHECK(overhead(*sc, 1.0).kind == EfficiencyFit::Kind::AtOrBelow);
    CHECK(overhead(*sc, 1.0).value == 0);
    CHECK(overhead(*sc, 0.001).kind == EfficiencyFit::Kind::Beyond);
  }
  // Where the loader hides part of the overhead, the fit takes more than a linear one would.
  const double measured = 0.9;
  const double linear_s = fed_none.iteration_s * (fed_none.scaling_efficiency / measured - 1);
  CHECK(overhead(fed, measured).value > linear_s * 1.01);
  Scenario one = s;
  one.plan.gpus = 1;
  CHECK_THROWS_AS(overhead(one, 0.9), InputError);
  CHECK_THROWS_AS(overhead(s, 0), InputError);
  CHECK_THROWS_AS(overhead(s, 1.01), InputError);
}

TEST_CASE("a compute variation fitted to a measured efficiency reproduces it, and prices other GPU counts") {
  const Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("dgx1-v100");
  c.compute_variation = 0;
  auto scenario = [&](int gpus) {
    const Plan plan = make_plan(m, "dgx1-v100", gpus, 96, Precision::FP32,
                                buckets_from_spec("threshold:25MB", m, "auto", Precision::FP32), "threshold:25MB");
    return bind_scenario(m, c, plan, {}, training_goal(m), "plan.json");
  };
  const Scenario eight = scenario(8);
  const double without = predict(eight, false).scaling_efficiency;
  const double measured = without - 0.02;
  const EfficiencyFit fit = fit_to_efficiency(eight, measured, Calibrated::ComputeVariation);
  REQUIRE(fit.kind == EfficiencyFit::Kind::Fitted);
  CHECK(fit.efficiency_without == Approx(without));
  Scenario with = eight;
  with.cluster.compute_variation = fit.value;
  CHECK(predict(with, false).scaling_efficiency == Approx(measured).margin(1e-9));
  // The wait it prices grows as the slowest of N: on 2 GPUs the fitted value's wait is
  // 0.56 / 1.42 of the 8-GPU one (the same forward and backward per GPU).
  Scenario two = scenario(2);
  two.cluster.compute_variation = fit.value;
  CHECK(predict(two, false).variation_wait_s ==
        Approx(predict(with, false).variation_wait_s * expected_max_normal(2) / expected_max_normal(8)));
  // Its range's top, and none where the prediction is already at or below.
  CHECK(fit_to_efficiency(eight, 1.0, Calibrated::ComputeVariation).kind == EfficiencyFit::Kind::AtOrBelow);
  const EfficiencyFit beyond = fit_to_efficiency(eight, 0.01, Calibrated::ComputeVariation);
  CHECK(beyond.kind == EfficiencyFit::Kind::Beyond);
  CHECK(beyond.value == kMaxComputeVariation);
  CHECK_THROWS_WITH(fit_to_efficiency(scenario(1), 0.9, Calibrated::ComputeVariation),
                    Catch::Contains("the wait for the slowest GPU is paid on more than one GPU only"));
}

TEST_CASE("a measured single-GPU rate scales every layer and the optimizer by one factor, and one GPU trains at it") {
  const Cluster c = load_cluster("dgx-a100");
  const Model roof = load_model("resnet50");
  const ComputeModel before(roof, c, 128, Precision::FP16);
  for (const Accumulation a : {Accumulation{1, false}, Accumulation{4, true}}) {
    for (const OptimizerStep k : {OptimizerStep{}, OptimizerStep{92, 10}}) {
      INFO(a.steps << " micro-batches, kernels " << k.kernels_per_tensor);
      Model m = load_model("resnet50");
      const double factor = set_measured_rate(m, c, 128, Precision::FP16, a, k, 1500, "rate");
      const ComputeModel after(m, c, 128, Precision::FP16);
      CHECK(after.measured_layers() == int(m.layers.size()));
      // One GPU: forward, backward and its share of the optimizer step take batch / rate.
      CHECK(after.forward_s() + after.backward_s() + after.optimizer_s(k) / a.steps == Approx(128.0 / 1500));
      CHECK(after.forward_s() == Approx(before.forward_s() * factor));
      CHECK(after.backward_s() == Approx(before.backward_s() * factor));
      CHECK(after.optimizer_s(k) == Approx(before.optimizer_s(k) * factor));
      for (size_t l = 0; l < m.layers.size(); l += 37)
        CHECK(after.layers()[l].bwd_s == Approx(before.layers()[l].bwd_s * factor));
      // The predictor's single-GPU step is that time.
      Plan p = make_plan(m, c.name, 8, 128, Precision::FP16, buckets_from_spec("single", m, "auto", Precision::FP16),
                         "single");
      p.accumulate = a;
      p.optimizer = k;
      const Report r = predict(m, c, p, CollectiveModel(c, 8), after, training_goal(m), false);
      CHECK(r.single_gpu_iteration_s == Approx(128.0 / 1500));
    }
  }
  Model m = load_model("resnet50");
  CHECK_THROWS_WITH(set_measured_rate(m, c, 128, Precision::FP16, {}, OptimizerStep{}, 0, "rate"),
                    Catch::Contains("rate: must be in (0, 1e6] samples/s per GPU (got 0)"));
  CHECK_THROWS_WITH(set_measured_rate(m, c, 128, Precision::FP16, {}, OptimizerStep{}, NAN, "rate"),
                    Catch::Contains("got nan"));
  set_measured_rate(m, c, 128, Precision::FP16, {}, OptimizerStep{}, 1500, "rate");
  CHECK_THROWS_WITH(set_measured_rate(m, c, 128, Precision::FP16, {}, OptimizerStep{}, 1500, "rate"),
                    Catch::Contains("carries measured layer times already"));
  // An input pipeline slower than the rate cannot have fed it.
  nlohmann::json j = cluster_to_json(c);
  j["input_pipeline"] = {{"samples_per_s_per_gpu", 1000}};
  const Cluster fed = cluster_from_json(j, "fed");
  Model n = load_model("resnet50");
  CHECK_THROWS_WITH(set_measured_rate(n, fed, 128, Precision::FP16, {}, OptimizerStep{}, 1500, "rate"),
                    Catch::Contains("more than cluster dgx-a100's input pipeline feeds one GPU"));
  CHECK(set_measured_rate(n, fed, 128, Precision::FP16, {}, OptimizerStep{}, 900, "rate") > 0);
}

TEST_CASE("compute per layer class: the breakdown sums to the compute model, counts bytes-bound and measured layers") {
  const Cluster c = load_cluster("dgx-a100");
  ModelOptions o;
  o.seq_len = 384;
  o.attention = AttentionKernels::Eager;
  const Model m = load_model("bert_large", o);
  const int batch = 32;
  const ComputeModel compute(m, c, batch, Precision::FP16);
  const auto classes = compute_by_class(m, compute, batch);
  double fwd = 0, bwd = 0, flops = 0;
  int layers = 0;
  for (size_t i = 0; i < classes.size(); ++i) {
    const ClassCompute& k = classes[i];
    if (i > 0) CHECK(int(classes[i - 1].k) < int(k.k));  // ComputeClass order, each class once
    CHECK(k.layers > 0);
    CHECK(k.measured == 0);
    fwd += k.forward_s;
    bwd += k.backward_s;
    flops += k.flops;
    layers += k.layers;
  }
  CHECK(fwd == Approx(compute.forward_s()).epsilon(1e-12));
  CHECK(bwd == Approx(compute.backward_s()).epsilon(1e-12));
  CHECK(layers == int(m.layers.size()));
  CHECK(flops == Approx((m.fwd_flops() + m.bwd_flops()) * batch).epsilon(1e-12));
  auto of = [&](ComputeClass want) {
    for (const auto& k : classes)
      if (k.k == want) return k;
    FAIL("no class " << compute_class_name(want));
    return ClassCompute{};
  };
  // Element-wise layers and layer norms move bytes; the encoder's linear layers are FLOP-bound
  // (the span head's 2 outputs and the pooler's one vector are not); eager attention's
  // scores make every attention layer bytes-bound.
  CHECK(of(ComputeClass::Elementwise).memory_bound == of(ComputeClass::Elementwise).layers);
  CHECK(of(ComputeClass::Norm).memory_bound == of(ComputeClass::Norm).layers);
  CHECK(of(ComputeClass::Gemm).memory_bound < 3);
  CHECK(of(ComputeClass::Attention).memory_bound == 24);
  ModelOptions f = o;
  f.attention = AttentionKernels::Fused;
  const Model fm = load_model("bert_large", f);
  for (const auto& k : compute_by_class(fm, ComputeModel(fm, c, batch, Precision::FP16), batch))
    if (k.k == ComputeClass::Attention) CHECK(k.memory_bound == 0);  // fused: its FLOPs bound it
  // A measured rate times every layer: all measured, none priced by the roofline's bounds.
  Model rated = m;
  set_measured_rate(rated, c, batch, Precision::FP16, {}, OptimizerStep{}, 100, "rate");
  const ComputeModel measured(rated, c, batch, Precision::FP16);
  for (const auto& k : compute_by_class(rated, measured, batch)) {
    CHECK(k.measured == k.layers);
    CHECK(k.memory_bound == 0);
  }
  // A scenario's prediction carries it, and it survives the JSON round trip; the
  // predictor's own reports (the tuner's, the fits') and simulated and measured ones have
  // none (the key is absent).
  const Plan plan = make_plan(m, c.name, 8, batch, Precision::FP16,
                              buckets_from_spec("single", m, "auto", Precision::FP16), "single");
  const Report r = predict(bind_scenario(m, c, plan, {}, training_goal(m), "plan.json"), false);
  CHECK(r.compute_by_class == classes);
  CHECK(predict(m, c, plan, CollectiveModel(c, 8), compute, training_goal(m), false).compute_by_class.empty());
  const nlohmann::json j = report_to_json(r);
  CHECK(j.at("compute_by_class").size() == classes.size());
  CHECK(report_from_json(j, "r.json").compute_by_class == classes);
  Report plain = r;
  plain.compute_by_class.clear();
  CHECK_FALSE(report_to_json(plain).contains("compute_by_class"));
  const std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>> bad = {
      {[](nlohmann::json& x) { x["compute_by_class"][0]["class"] = "matmul"; }, "$.compute_by_class[0].class"},
      {[](nlohmann::json& x) { x["compute_by_class"][0]["memory_bound"] = 1000; }, "memory_bound"},
      {[](nlohmann::json& x) { x["compute_by_class"][0]["colour"] = 1; }, "$.compute_by_class[0]"}};
  for (const auto& [change, what] : bad) {
    INFO(what);
    nlohmann::json x = j;
    change(x);
    CHECK_THROWS_WITH(report_from_json(x, "r.json"), Catch::Contains("r.json") && Catch::Contains(what));
  }
}
