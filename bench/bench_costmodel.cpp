// Benchmark: how fast the cost model answers, the figure the tuner depends on (it calls
// the predictor and the collective costs thousands of times per plan). Prints per-call
// times; not a test.
#include <chrono>
#include <cstdio>

#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/zoo.hpp"

using namespace fuseplan;
using Clock = std::chrono::steady_clock;

template <class F>
double per_call_us(F&& f, int reps) {
  auto t0 = Clock::now();
  for (int i = 0; i < reps; ++i) f();
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count() / reps;
}

int main() {
  Model m = build_zoo_model("resnet50");
  Cluster c = load_cluster("tencent-p40");
  CollectiveModel coll(c, 1024);
  ComputeModel compute(m, c, 32, Precision::FP16);
  Plan per = make_plan(m, c.name, 1024, 32, Precision::FP16, buckets_from_spec("per-tensor", m, "auto", Precision::FP16), "p");
  Plan ring = make_plan(m, c.name, 1024, 32, Precision::FP16, buckets_from_spec("per-tensor", m, "ring", Precision::FP16), "p");
  volatile double sink = 0;
  coll.cost("auto", 1 << 20, Precision::FP16);  // warm the profile cache
  std::printf("fuseplan cost model, resnet50 on tencent-p40 at 1024 GPUs (161 tensors)\n");
  std::printf("  collective cost, auto (8 algorithms):   %8.2f us/call\n",
              per_call_us([&] { sink = sink + coll.cost("auto", 1 << 20, Precision::FP16).total_s(); }, 2000));
  std::printf("  collective cost, ring:                  %8.2f us/call\n",
              per_call_us([&] { sink = sink + coll.cost("ring", 1 << 20, Precision::FP16).total_s(); }, 20000));
  std::printf("  predict, 161 buckets, ring, no trace:   %8.2f us/call\n",
              per_call_us([&] { sink = sink + predict(m, c, ring, coll, compute, {}, false).iteration_s; }, 200));
  std::printf("  predict, 161 buckets, auto, no trace:   %8.2f us/call\n",
              per_call_us([&] { sink = sink + predict(m, c, per, coll, compute, {}, false).iteration_s; }, 50));
  auto args = coll.args(1 << 20, Precision::FP16);
  const Algorithm& ringa = find_algorithm("ring");
  std::printf("  ring schedule (2046 rounds x 1024) + replay: %8.1f ms\n",
              per_call_us([&] { sink = sink + replay(ringa.schedule(args), args).total(); }, 3) / 1e3);
  std::printf("  ring closed form, same case:            %8.2f us\n",
              per_call_us([&] { sink = sink + closed_form_cost(ringa, args).total(); }, 20) );
  return 0;
}
