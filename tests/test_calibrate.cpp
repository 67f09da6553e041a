// Calibration: the least-squares fit recovers the constants a sweep was made with, the
// hold-out check, nccl-tests import (text and -J JSON), and refusals of bad files.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "fuseplan/costmodel/calibrate.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/zoo.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "cluster_json.hpp"

using namespace fuseplan;

namespace {
Sweep synthetic(const std::string& algo, int ranks, const Calibration& k, double launch_s) {
  Sweep s{algo, ranks, 1, 4, {}};
  for (double bytes = 4096; bytes <= 256.0 * (1 << 20); bytes *= 2)
    s.points.push_back({bytes, calibrated_time(find_algorithm(algo), s, k, bytes, launch_s)});
  return s;
}
std::string data(const std::string& name) { return std::string(FUSEPLAN_TEST_DATA) + "/" + name; }
// A run of resnet18 (2 ranks of local-cpu, batch 16) with buckets `spec`, "measured" as
// cluster `c` predicts it.
OverlapRun predicted_run(const Model& m, const Cluster& c, const std::string& spec) {
  OverlapRun r{m, make_plan(m, "local-cpu", 2, 16, Precision::FP32, buckets_from_spec(spec, m, "ring", Precision::FP32),
                            "test"), {}};
  CollectiveModel coll(c, 2);
  ComputeModel compute(m, c, 16, Precision::FP32);
  r.measured = predict(m, c, r.plan, coll, compute);
  return r;
}
// The three runs the two-rate fits read (two splits, one bucket, a bucket per tensor),
// predicted under sharing `sigma`, allreduce sharing `ar` and dispatch `dispatch_us`, each
// bucket's start recorded `late_s` after the predicted one; `c` is left with the three
// cleared, for the fit to recover them.
std::vector<OverlapRun> runs_with_overlap(const Model& m, Cluster& c, double sigma, double ar, double dispatch_us,
                                          double late_s = 0, double bandwidth_factor = 1) {
  c.comm_compute_sharing = sigma;
  c.allreduce_sharing = ar;
  c.dispatch_overhead_us = dispatch_us;
  c.job_bandwidth_factor = bandwidth_factor;
  std::vector<OverlapRun> runs;
  for (const char* spec : {"splits:20,40", "single", "per-tensor"}) {
    runs.push_back(predicted_run(m, c, spec));
    for (auto& b : runs.back().measured.buckets) b.start_s += late_s;
  }
  c.comm_compute_sharing = 0;
  c.allreduce_sharing.reset();
  c.dispatch_overhead_us = 0;
  c.job_bandwidth_factor = 1;
  return runs;
}
}  // namespace

TEST_CASE("calibrate: the fit recovers alpha, beta and gamma from an exact sweep") {
  const Calibration k{7.5, 120.0, 30.0};
  for (const char* algo : {"ring", "recursive_doubling", "rabenseifner", "mpi"})
    for (int ranks : {2, 4, 8}) {
      CAPTURE(algo, ranks);
      const Sweep s = synthetic(algo, ranks, k, 5e-6);
      const CalibrationFit f = fit_calibration(find_algorithm(algo), s, 5e-6);
      CHECK(f.max_rel_err < 1e-6);
      CHECK(f.k.alpha_us == Approx(k.alpha_us).epsilon(1e-4));
      // Beta and gamma multiply terms proportional to n in these formulas (the ring's
      // 2(p-1)/p n beta + (p-1)/p n gamma): one sweep fixes only that combination, which
      // the fit reproduces exactly (max error above), putting it into beta.
      const double per_byte = std::string(algo) == "recursive_doubling" ? 1.0 : 0.5;
      CHECK(f.k.beta_us_per_MB + per_byte * f.k.gamma_us_per_MB ==
            Approx(k.beta_us_per_MB + per_byte * k.gamma_us_per_MB).epsilon(1e-4));
    }
}

TEST_CASE("calibrate: constants are never negative, and a hold-out half is predicted") {
  Sweep s = synthetic("ring", 4, {3.0, 200.0, 0.0}, 0);
  // Noise of +-3 % alternating: the fit stays close and non-negative.
  for (size_t i = 0; i < s.points.size(); ++i) s.points[i].seconds *= i % 2 ? 1.03 : 0.97;
  std::vector<bool> even(s.points.size());
  for (size_t i = 0; i < even.size(); ++i) even[i] = i % 2 == 0;
  const CalibrationFit f = fit_calibration(find_algorithm("ring"), s, 0, even);
  CHECK(f.k.alpha_us >= 0);
  CHECK(f.k.gamma_us_per_MB >= 0);
  for (size_t i = 1; i < s.points.size(); i += 2)
    CHECK(std::abs(f.predicted_s[i] - s.points[i].seconds) / s.points[i].seconds < 0.08);
  CHECK_THROWS_AS(fit_calibration(find_algorithm("ring"), Sweep{"ring", 4, 1, 4, {{4096, 1e-5}}}, 0), InputError);
}

TEST_CASE("calibrate: a sweep whose slope changes is fitted in size ranges") {
  // Cache-resident sizes (up to 4 MiB) at 80 us/MB, then 220 us/MB: one line misses both.
  const Calibration small{3.0, 80.0, 0.0}, large{40.0, 220.0, 0.0};
  Sweep s{"ring", 2, 2, 4, {}};
  for (double bytes = 4096; bytes <= 256.0 * (1 << 20); bytes *= 2)
    s.points.push_back({bytes, calibrated_time(find_algorithm("ring"), s, bytes <= 4 << 20 ? small : large, bytes, 0)});
  const Algorithm& ring = find_algorithm("ring");
  const SegmentedFit one = fit_segments(ring, s, 0, 1, 0.05);
  CHECK(one.segments.size() == 1);
  CHECK(one.max_rel_err > 0.2);
  const SegmentedFit two = fit_segments(ring, s, 0, 4, 0.01);
  REQUIRE(two.segments.size() == 2);
  CHECK(two.segments[0].k.to_bytes == 4 << 20);
  CHECK(two.segments[1].k.from_bytes == 8 << 20);
  CHECK(two.segments[0].k.beta_us_per_MB == Approx(80.0).epsilon(1e-4));
  CHECK(two.segments[1].k.beta_us_per_MB == Approx(220.0).epsilon(1e-4));
  CHECK(two.segments[1].k.alpha_us == Approx(40.0).epsilon(1e-3));
  CHECK(two.max_rel_err < 1e-6);  // every measured size lies inside a range
  // A hold-out half: ranges from the even sizes predict the odd ones, except where the
  // slope changes between two fitted sizes (the blend there is a straight line).
  std::vector<bool> even(s.points.size());
  for (size_t i = 0; i < even.size(); ++i) even[i] = i % 2 == 0;
  const SegmentedFit half = fit_segments(ring, s, 0, 4, 0.01, even);
  int close = 0;
  for (size_t i = 1; i < s.points.size(); i += 2)
    close += std::abs(half.predicted_s[i] - s.points[i].seconds) / s.points[i].seconds < 0.01;
  CHECK(close >= int(s.points.size() / 2) - 1);
  CHECK_THROWS_WITH(fit_segments(ring, s, 0, 0, 0.05), Catch::Contains("calibrate.max_segments"));
  CHECK_THROWS_WITH(fit_segments(ring, s, 0, 2, 0), Catch::Contains("calibrate.segment_tolerance"));
}

TEST_CASE("calibrate: nccl-tests all_reduce_perf text and -J JSON are read") {
  const Sweep t = load_nccl_tests(data("nccl-tests-allreduce.txt"), "ring", 0, 0);
  CHECK(t.ranks == 4);  // from the '#  Rank' lines
  CHECK(t.elem_bytes == 4);
  REQUIRE(t.points.size() == 8);
  CHECK(t.points[0].bytes == 1024);
  // The file's out-of-place times follow the ring with alpha 2.5 us and 4 GB/s links.
  const CalibrationFit f = fit_calibration(find_algorithm("ring"), t, 0);
  CHECK(f.k.alpha_us == Approx(2.5).epsilon(0.02));
  CHECK(f.k.beta_us_per_MB + f.k.gamma_us_per_MB * 0.5 == Approx(250).epsilon(0.02));
  const Sweep j = load_nccl_tests(data("nccl-tests-allreduce.json"), "double_binary_tree", 0, 0);
  CHECK(j.ranks == 2);
  CHECK(j.elem_bytes == 2);
  REQUIRE(j.points.size() == 3);
  CHECK(j.points[2].seconds == Approx(95e-6));
  CHECK_THROWS_WITH(load_nccl_tests(data("nccl-tests-allreduce.txt"), "butterfly", 0, 0),
                    Catch::Contains("unknown algorithm 'butterfly'"));
  CHECK_THROWS_AS(load_nccl_tests(data("golden-model.json"), "ring", 2, 1), InputError);
  CHECK_THROWS_AS(load_sweep(data("nccl-tests-allreduce.txt")), InputError);
}

TEST_CASE("calibrate: sweep files are validated") {
  const auto dir = std::filesystem::temp_directory_path() / "fuseplan-test-calibrate";
  std::filesystem::create_directories(dir);
  auto write = [&](const std::string& text) {
    const std::string p = (dir / "s.json").string();
    std::ofstream(p) << text;
    return p;
  };
  const auto good = load_sweep(write(R"({"schema":"fuseplan.sweep/1","ranks":2,"per_node":2,"precision":"fp16",
    "host":"x","points":[{"algorithm":"ring","bytes":4096,"seconds":1e-5,"iterations":10},
    {"algorithm":"mpi","bytes":4096,"seconds":2e-5}]})"));
  REQUIRE(good.size() == 2);
  CHECK(good[0].elem_bytes == 2);
  CHECK_THROWS_WITH(load_sweep(write(R"({"schema":"fuseplan.sweep/1","ranks":2,"per_node":2,"precision":"fp32",
    "points":[{"algorithm":"spin","bytes":1,"seconds":1}]})")),
                    Catch::Contains("unknown algorithm 'spin'"));
  CHECK_THROWS_WITH(load_sweep(write(R"({"schema":"fuseplan.sweep/1","ranks":2,"per_node":2,"precision":"fp32",
    "color":1,"points":[]})")),
                    Catch::Contains("$.color: unknown key"));
  CHECK_THROWS_AS(load_sweep(write("{")), InputError);
}

TEST_CASE("report: a measured report reads back with its buckets and timeline") {
  Report r;
  r.source = "measured";
  r.model = "resnet18";
  r.cluster = "here";
  r.gpus = 2;
  r.iteration_s = 0.25;
  r.exposed_comm_s = 0.01;
  BucketReport b;
  b.index = 0;
  b.end = 3;
  b.algorithm = "ring";
  b.bytes = 4096;
  b.ready_s = 0.1;
  b.start_s = 0.11;
  b.end_s = 0.2;
  r.buckets.push_back(b);
  r.timeline.events.push_back({1, "comm0", "bucket 0 ring", "allreduce", 0.11, 0.09, 4096});
  r.compute_scale = 1.25;
  const Report back = report_from_json(report_to_json(r, true), "test");
  CHECK(back.iteration_s == r.iteration_s);
  CHECK(back.compute_scale == 1.25);
  REQUIRE(back.buckets.size() == 1);
  CHECK(back.buckets[0].start_s == b.start_s);
  REQUIRE(back.timeline.events.size() == 1);
  CHECK(back.timeline.events[0].stream == "comm0");
  CHECK(back.timeline.events[0].rank == 1);
  CHECK(back.timeline.events[0].dur_s == Approx(0.09));
  CHECK_THROWS_AS(report_from_json(nlohmann::json{{"source", "x"}}, "test"), InputError);
}

TEST_CASE("calibrate: processor sharing and dispatch overhead are recovered from runs they predicted") {
  Model m = load_model("resnet18", {28, 1, 10, {}, {}});
  Cluster c = load_cluster("local-cpu");
  c.comm_compute_sharing = 0.6;
  c.dispatch_overhead_us = 250;
  auto run = [&](const std::string& spec) { return predicted_run(m, c, spec); };
  const std::vector<OverlapRun> runs = {run("splits:20,40"), run("per-tensor")};
  c.comm_compute_sharing = 0;
  c.dispatch_overhead_us = 0;
  const OverlapFit both = fit_overlap(c, runs, {true, true}, {});
  CHECK(both.sigma == Approx(0.6).margin(0.006));
  CHECK(both.dispatch_us == Approx(250).margin(1));
  for (const auto& e : both.after) CHECK(std::abs(e.iteration) < 0.005);
  CHECK(both.before[1].iteration < -0.05);  // 62 buckets without their dispatch: too fast
  CHECK_FALSE(both.sigma_at_bound);
  CHECK_FALSE(both.dispatch_at_bound);
  // Sharing alone on the few-bucket run, dispatch kept at the cluster's.
  c.dispatch_overhead_us = 250;
  const OverlapFit one = fit_overlap(c, {runs[0]}, {true, false}, {});
  CHECK(one.sigma == Approx(0.6).margin(0.006));
  CHECK(one.dispatch_us == 250);
  CHECK(std::abs(one.after[0].iteration) < 1e-6);
  CHECK(one.before[0].iteration < 0);  // free overlap predicts it too fast
  // Backward half as long again as full sharing makes it: the fit stops at sigma = 1 and says so.
  c.comm_compute_sharing = 1;
  std::vector<OverlapRun> slower = {run("splits:20,40"), run("per-tensor")};
  for (OverlapRun& r : slower) {
    r.measured.backward_s *= 1.5;
    r.measured.comm_end_s *= 1.5;
    r.measured.iteration_s *= 1.5;
  }
  c.comm_compute_sharing = 0;
  const OverlapFit capped = fit_overlap(c, slower, {true, false}, {});
  CHECK(capped.sigma == Approx(1));
  CHECK(capped.sigma_at_bound);
  CHECK(capped.after[0].backward < -0.2);  // what the bound leaves unexplained
  std::vector<OverlapRun> single = {runs[0]};
  single[0].plan.gpus = 1;
  CHECK_THROWS_AS(fit_overlap(c, single, {true, false}, {}), InputError);
  CHECK_THROWS_AS(fit_overlap(c, {}, {true, false}, {}), InputError);
}

TEST_CASE("calibrate: how much backward slows an allreduce is recovered apart from how much it slows backward") {
  Model m = load_model("resnet18", {28, 1, 10, {}, {}});
  Cluster c = load_cluster("local-cpu");
  const std::vector<OverlapRun> runs = runs_with_overlap(m, c, 0.4, 1.5, 200);
  const OverlapFit all = fit_overlap(c, runs, {true, true, true}, {});
  REQUIRE(all.allreduce_sharing);
  CHECK(*all.allreduce_sharing == Approx(1.5).margin(0.01));
  CHECK(all.sigma == Approx(0.4).margin(0.004));
  CHECK(all.dispatch_us == Approx(200).margin(2));
  CHECK_FALSE(all.allreduce_sharing_at_bound);
  for (const auto& e : all.after) CHECK(std::abs(e.iteration) < 0.005);
  // Runs whose end times are 3 % off (noise a real run has) leave the two rates near the
  // truth, held by the buckets' durations.
  std::vector<OverlapRun> noisy = runs;
  for (size_t i = 0; i < noisy.size(); ++i) {
    const double f = i % 2 ? 0.97 : 1.03;
    noisy[i].measured.backward_s *= f;
    noisy[i].measured.comm_end_s *= f;
  }
  const OverlapFit near = fit_overlap(c, noisy, {true, true, true}, {});
  CHECK(*near.allreduce_sharing == Approx(1.5).margin(0.3));
  // One rate for both sides stands in for the two on these runs' end times (within 0.1 %),
  // with another sharing and dispatch: the buckets' durations tell them apart.
  const OverlapFit one_rate = fit_overlap(c, runs, {true, true}, {});
  CHECK_FALSE(one_rate.allreduce_sharing);
  CHECK(std::abs(one_rate.sigma - 0.4) > 0.1);
  // Written into the cluster with its provenance; kept (absent) where not fitted.
  Cluster written = c;
  apply_overlap_fit(written, all, {true, true, true}, "runs");
  CHECK(written.allreduce_sharing == all.allreduce_sharing);
  CHECK(written.provenance.count("allreduce_sharing") == 1);
  Cluster kept = c;
  apply_overlap_fit(kept, one_rate, {true, true}, "runs");
  CHECK_FALSE(kept.allreduce_sharing);
}

TEST_CASE("calibrate: a step's slower bytes are recovered apart from how backward slows an allreduce") {
  // Runs whose allreduces move bytes 1.8 times slower than the sweep, in backward and
  // after it, besides the two sharing rates and the dispatch.
  Model m = load_model("resnet18", {28, 1, 10, {}, {}});
  Cluster c = load_cluster("local-cpu");
  const std::vector<OverlapRun> runs = runs_with_overlap(m, c, 0.4, 0.5, 200, 0, 1.8);
  const OverlapFit all = fit_overlap(c, runs, {true, true, true, true}, {});
  CHECK(all.bandwidth_factor == Approx(1.8).margin(0.01));
  REQUIRE(all.allreduce_sharing);
  CHECK(*all.allreduce_sharing == Approx(0.5).margin(0.02));
  CHECK(all.sigma == Approx(0.4).margin(0.01));
  CHECK(all.dispatch_us == Approx(200).margin(5));
  CHECK_FALSE(all.bandwidth_at_bound);
  for (const auto& e : all.after) CHECK(std::abs(e.iteration) < 0.005);
  // Without the factor the three other values cannot make up for it: some run is then
  // predicted more than 2 % off.
  const OverlapFit three = fit_overlap(c, runs, {true, true, true}, {});
  CHECK(three.bandwidth_factor == 1);
  double worst = 0;
  for (const auto& e : three.after) worst = std::max(worst, std::abs(e.iteration));
  CHECK(worst > 0.02);
  // Written with its provenance; a factor of 1 is left out, as the file leaves it out.
  Cluster written = c;
  apply_overlap_fit(written, all, {true, true, true, true}, "runs");
  CHECK(written.job_bandwidth_factor == all.bandwidth_factor);
  CHECK(written.provenance.count("job_bandwidth_factor") == 1);
  CHECK(cluster_from_json(cluster_to_json(written), "t").job_bandwidth_factor == all.bandwidth_factor);
  Cluster kept = c;
  apply_overlap_fit(kept, three, {true, true, true}, "runs");
  CHECK(kept.job_bandwidth_factor == 1);
  CHECK_FALSE(cluster_to_json(kept).contains("job_bandwidth_factor"));
}

TEST_CASE("calibrate: a run that starts each bucket after its thread's hand-off is fitted with that hand-off") {
  // PlanDDP and fuseplan-exec record a bucket's start once their communication thread has
  // woken for it: later, by the hand-off, than the prediction's start, which counts the
  // hand-off inside the bucket (dispatch_overhead_us). The end times are the same.
  Model m = load_model("resnet18", {28, 1, 10, {}, {}});
  Cluster c = load_cluster("local-cpu");
  const std::vector<OverlapRun> runs = runs_with_overlap(m, c, 0.4, 1.5, 800, 800e-6);
  const OverlapFit fit = fit_overlap(c, runs, {true, true, true}, {});
  CHECK(fit.dispatch_us == Approx(800).margin(8));
  CHECK(fit.sigma == Approx(0.4).margin(0.004));
  REQUIRE(fit.allreduce_sharing);
  CHECK(*fit.allreduce_sharing == Approx(1.5).margin(0.01));
  for (const auto& e : fit.after) CHECK(std::abs(e.iteration) < 0.005);
}

TEST_CASE("calibrate: calibrate_communication writes the fits into the cluster, held out and judged") {
  Cluster c = load_cluster("local-cpu");
  std::vector<Sweep> sweeps{synthetic("ring", 4, {3.0, 200.0, 10.0}, 0), synthetic("recursive_doubling", 4, {5.0, 90.0, 0}, 0)};
  restrict_sizes(sweeps, 65536, 64.0 * (1 << 20), "sizes");
  for (const Sweep& s : sweeps) {
    CHECK(s.points.front().bytes == 65536);
    CHECK(s.points.back().bytes == 64.0 * (1 << 20));
  }
  const auto fits = calibrate_communication(c, sweeps, {"sweep.json", 0, 4, 0.05, true});
  REQUIRE(fits.size() == 2);
  for (const auto& f : fits) {
    CAPTURE(f.algorithm);
    CHECK(f.fit.max_rel_err < 1e-6);  // exact sweeps
    REQUIRE(f.holdout_mean);
    CHECK(*f.holdout_mean < 1e-6);
    CHECK(f.degenerate == std::vector<std::string>(f.fit.segments.size(), ""));
    CHECK(c.calibrated.count(f.algorithm) == 1);
    CHECK_THAT(c.provenance.at("calibrated." + f.algorithm), Catch::Contains("sweep.json"));
  }
  CHECK_THAT(c.description, Catch::EndsWith("(calibrated: sweep.json)"));
  // Degenerate ranges: nothing fitted, infinite bandwidth at the largest sizes, errors far
  // beyond the tolerance.
  SegmentFit zero;
  CHECK(degenerate_fit(zero, false, 0.05) == "every constant at its bound 0");
  SegmentFit latency_only;
  latency_only.k.alpha_us = 5;
  CHECK(degenerate_fit(latency_only, false, 0.05).empty());
  CHECK_THAT(degenerate_fit(latency_only, true, 0.05), Catch::Contains("infinite bandwidth"));
  SegmentFit noisy;
  noisy.k.beta_us_per_MB = 100;
  noisy.mean_rel_err = 0.3;
  CHECK(degenerate_fit(noisy, true, 0.05) == "mean error 30.0 % above 4 x the tolerance");
  CHECK_THROWS_WITH(restrict_sizes(sweeps, 1, 2, "sizes 1:2"), Catch::Contains("sizes 1:2: fewer than two sizes of ring"));
}

namespace {
// The profile a cluster's roofline gives `m` at `batch` and `p` (fuseplan.profile/1).
nlohmann::json roofline_profile(const Model& m, const Cluster& c, int batch, Precision p) {
  const ComputeModel cm(m, c, batch, p);
  nlohmann::json layers = nlohmann::json::array();
  for (size_t l = 0; l < m.layers.size(); ++l)
    layers.push_back({{"name", m.layers[l].name}, {"fwd_us", cm.layers()[l].fwd_s * 1e6},
                      {"bwd_us", cm.layers()[l].bwd_s * 1e6}, {"batch", batch}});
  return {{"schema", "fuseplan.profile/1"}, {"model", m.name}, {"fingerprint", m.fingerprint_hex()},
          {"device", c.device.name}, {"precision", std::string(precision_name(p))}, {"batch", batch}, {"layers", layers}};
}
}  // namespace

TEST_CASE("calibrate: each layer class's efficiency is recovered from a profile its roofline made") {
  nlohmann::json j = cluster_to_json(load_cluster("dgx-a100"));
  drop_by_kind(j);  // the file's classes, replaced here: a class the fit leaves (flatten's) is then the device's
  const Cluster plain = cluster_from_json(j, "plain");
  j["device"]["by_kind"] = {{"conv_kxk", {{"compute_efficiency", {{"fp16", 0.31}}}}},
                            {"conv_1x1", {{"compute_efficiency", {{"fp16", 0.22}}}}},
                            {"norm", {{"memory_efficiency", 0.41}}}};
  const Cluster truth = cluster_from_json(j, "truth");
  Model m = load_model("resnet50");
  const nlohmann::json profile = roofline_profile(m, truth, 32, Precision::FP16);
  apply_profile_json(m, profile, "profile");
  const std::vector<ClassFit> fits = fit_compute_classes(plain, m, 32, Precision::FP16);
  std::map<ComputeClass, ClassFit> by;
  for (const auto& f : fits) by[f.k] = f;
  REQUIRE(by.count(ComputeClass::ConvKxK));
  CHECK_FALSE(by[ComputeClass::ConvKxK].memory);
  CHECK(by[ComputeClass::ConvKxK].value == Approx(0.31).epsilon(1e-6));
  CHECK(by[ComputeClass::Conv1x1].value == Approx(0.22).epsilon(1e-6));
  CHECK(by[ComputeClass::Norm].memory);
  CHECK(by[ComputeClass::Norm].value == Approx(0.41).epsilon(1e-6));
  // Classes the truth left to the device come back as the device's values.
  CHECK(by[ComputeClass::Elementwise].value == Approx(plain.device.memory_efficiency).epsilon(1e-6));
  for (const auto& f : fits) {
    INFO(compute_class_name(f.k));
    CHECK(f.bound.empty());
    CHECK(f.after_s == Approx(f.measured_s).epsilon(1e-9));
  }
  // Written back, the cluster predicts the profile's compute without it.
  Cluster fitted = plain;
  apply_compute_fit(fitted, fits, Precision::FP16, "test");
  const Cluster reread = cluster_from_json(cluster_to_json(fitted), "fitted");
  const ComputeModel a(load_model("resnet50"), reread, 32, Precision::FP16), b(load_model("resnet50"), truth, 32, Precision::FP16);
  CHECK(a.forward_s() + a.backward_s() == Approx(b.forward_s() + b.backward_s()).epsilon(1e-6));
  CHECK(reread.provenance.at("device.by_kind.conv_kxk") == "test: " + std::to_string(by[ComputeClass::ConvKxK].layers) + " layers");
  // A memory-bound class is fitted at the profile's precision only, as a compute-bound one is.
  CHECK(reread.device.memory_efficiency_of(ComputeClass::Norm, Precision::FP16) == Approx(0.41).epsilon(1e-6));
  CHECK(reread.device.memory_efficiency_of(ComputeClass::Norm, Precision::FP32) == plain.device.memory_efficiency);
}

TEST_CASE("calibrate: a class measured faster than its roofline can be is at its bound, and says so") {
  const Cluster plain = load_cluster("dgx-a100");
  Model m = load_model("resnet18");
  nlohmann::json profile = roofline_profile(m, plain, 16, Precision::FP32);
  for (auto& l : profile["layers"]) l["fwd_us"] = l["bwd_us"] = 1e-3;  // far below any roofline
  apply_profile_json(m, profile, "profile");
  for (const auto& f : fit_compute_classes(plain, m, 16, Precision::FP32)) {
    INFO(compute_class_name(f.k));
    CHECK_THAT(f.bound, Catch::Contains("measured faster than the roofline at"));
    CHECK(f.value == (f.memory ? 1.0 : kMaxClassEfficiency));
  }
}

namespace {
// A measurement of `model` at batch `batch`, precision `p`, at the rate cluster `truth`
// predicts for it, fitting `classes`.
ThroughputMeasurement measured_on(const Cluster& truth, const std::string& model, int batch, Precision p,
                                  std::vector<ComputeClass> classes, bool memory = false) {
  ThroughputMeasurement m;
  m.model = load_model(model);
  m.batch = batch;
  m.precision = p;
  m.loop.steps = 4;
  m.optimizer = optimizer_step("sgd", "per-tensor", "test");
  m.samples_per_s = batch / single_gpu_step_s(m.model, truth, batch, p, m.loop, m.optimizer);
  m.classes = std::move(classes);
  m.memory = memory;
  m.where = model;
  return m;
}
// A fuseplan.throughput/1 file of `measurements` (JSON text) in a fresh folder.
std::string throughput_file(const std::string& measurements) {
  const auto dir = std::filesystem::temp_directory_path() / "fuseplan_test_throughput";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "rates.json").string();
  std::ofstream(path) << R"({"schema": "fuseplan.throughput/1", "measurements": [)" << measurements << "]}";
  return path;
}
}  // namespace

TEST_CASE("calibrate: class efficiencies are recovered from the whole-model rates they predicted") {
  nlohmann::json j = cluster_to_json(load_cluster("dgx-a100"));
  drop_by_kind(j);
  const Cluster plain = cluster_from_json(j, "plain");
  j["device"]["by_kind"] = {{"conv_kxk", {{"compute_efficiency", {{"fp16", 0.37}}}}},
                            {"conv_1x1", {{"compute_efficiency", {{"fp16", 0.37}}}}},
                            {"gemm", {{"compute_efficiency", {{"fp16", 0.52}}}}},
                            {"attention", {{"compute_efficiency", {{"fp16", 0.52}}}}},
                            {"norm", {{"memory_efficiency", {{"fp16", 0.33}}}}}};
  const Cluster truth = cluster_from_json(j, "truth");
  // ResNet-50 holds a GEMM (its classifier), and both ResNets convolutions and norms:
  // each rate moves with the others' values, and fitted one value at a time the two
  // ResNets would push convolutions and norms apart to their bounds.
  const std::vector<ThroughputMeasurement> ms = {
      measured_on(truth, "resnet50", 256, Precision::FP16, {ComputeClass::ConvKxK, ComputeClass::Conv1x1}),
      measured_on(truth, "bert_large", 32, Precision::FP16, {ComputeClass::Gemm, ComputeClass::Attention}),
      measured_on(truth, "resnet18", 128, Precision::FP16, {ComputeClass::Norm}, true),
      measured_on(truth, "resnet101", 64, Precision::FP16, {})};  // held out
  const ThroughputFit fit = fit_throughputs(plain, ms);
  REQUIRE(fit.rows.size() == 4);
  // The held-out rate, predicted with what the others fitted, is met; as given, it is not.
  CHECK(fit.rows[3].rate_after == Approx(ms[3].samples_per_s).epsilon(1e-6));
  CHECK(fit.rows[3].rate_before != Approx(ms[3].samples_per_s).epsilon(1e-3));
  CHECK(fit.rows[3].value == 0);
  CHECK(fit.rows[0].value == Approx(0.37).epsilon(1e-7));
  CHECK(fit.rows[1].value == Approx(0.52).epsilon(1e-7));
  CHECK(fit.rows[2].value == Approx(0.33).epsilon(1e-7));
  for (size_t i = 0; i < 3; ++i) {
    CHECK(fit.rows[i].rate_after == Approx(ms[i].samples_per_s).epsilon(1e-9));
    CHECK(fit.rows[i].rate_before != Approx(ms[i].samples_per_s).epsilon(1e-3));
  }
  // Written back and read again: the values at the measured precision, provenance per
  // class and precision, the other precisions the device's.
  Cluster fitted = plain;
  apply_throughput_fit(fitted, ms, fit, "test rates.json");
  const Cluster reread = cluster_from_json(cluster_to_json(fitted), "fitted");
  CHECK(reread.device.compute_efficiency_of(ComputeClass::Conv1x1, Precision::FP16) == Approx(0.37).epsilon(1e-7));
  CHECK(reread.device.compute_efficiency_of(ComputeClass::Conv1x1, Precision::FP32) ==
        plain.device.compute_efficiency_of(ComputeClass::Conv1x1, Precision::FP32));
  CHECK(reread.device.memory_efficiency_of(ComputeClass::Norm, Precision::FP16) == Approx(0.33).epsilon(1e-7));
  CHECK_THAT(reread.provenance.at("device.by_kind.gemm.compute_efficiency.fp16"),
             Catch::StartsWith("FITTED (test rates.json): bert_large at batch 32, fp16") &&
                 Catch::Contains("one value for gemm, attention"));
  CHECK(reread.provenance.count("device.by_kind.norm.memory_efficiency.fp16"));
}

TEST_CASE("calibrate: rates a cluster already predicts leave its class efficiencies as they are") {
  const Cluster shipped = load_cluster("dgx1-v100");
  const std::vector<ThroughputMeasurement> ms = {
      measured_on(shipped, "resnet50", 112, Precision::FP32, {ComputeClass::ConvKxK, ComputeClass::Conv1x1}),
      measured_on(shipped, "bert_large", 8, Precision::FP16, {ComputeClass::Gemm})};
  const ThroughputFit fit = fit_throughputs(shipped, ms);
  CHECK(fit.rows[0].value == Approx(shipped.device.compute_efficiency_of(ComputeClass::Conv1x1, Precision::FP32))
                                 .epsilon(1e-9));
  CHECK(fit.rows[1].value == Approx(shipped.device.compute_efficiency_of(ComputeClass::Gemm, Precision::FP16))
                                 .epsilon(1e-9));
}

TEST_CASE("calibrate: throughput files are validated, and a rate out of reach is refused") {
  const Cluster c = load_cluster("dgx1-v100");
  const std::string ok = R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900,
                             "fit": ["conv_kxk", "conv_1x1"], "accumulate": 2, "optimizer": "adam",
                             "optimizer_kernels": "per-tensor", "source": "a run"})";
  const auto ms = load_throughputs(throughput_file(ok));
  REQUIRE(ms.size() == 1);
  CHECK(ms[0].loop.steps == 2);
  CHECK(ms[0].optimizer == optimizer_step("adam", "per-tensor", "test"));
  CHECK(ms[0].source == "a run");
  auto refused = [](const std::string& measurements, const std::string& what) {
    INFO(measurements);
    CHECK_THROWS_WITH(load_throughputs(throughput_file(measurements)), Catch::Contains(what));
  };
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900,
              "fit": ["attention"]})",
          "$.measurements[0].fit[0]: resnet50 has no layer of class attention");
  refused(ok + R"(, {"model": "resnet101", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 500,
                     "fit": ["conv_1x1"]})",
          "$.measurements[1].fit[0]: conv_1x1's compute_efficiency at fp16 is fitted by $.measurements[0] already");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900, "fit": ["conv"]})",
          "$.measurements[0].fit[0]: not a layer class");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 0, "fit": ["gemm"]})",
          "$.measurements[0].samples_per_s: must be in");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 9, "fit": ["gemm"],
              "efficiency": "flops"})",
          "$.measurements[0].efficiency: unknown 'flops' (valid: compute, memory)");
  refused(R"({"model": "resnet5", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 9, "fit": ["gemm"]})",
          "$.measurements[0].model: unknown model 'resnet5'");
  refused("", "$.measurements: must hold at least one measurement");
  // Two rates no values within the bounds meet together: the refusal names the value held
  // at its bound.
  const auto apart = load_throughputs(throughput_file(
      R"({"model": "resnet50", "batch_per_gpu": 256, "precision": "fp16", "samples_per_s": 2470,
          "fit": ["conv_kxk", "conv_1x1"], "accumulate": 8, "optimizer": "sgd", "optimizer_kernels": "per-tensor"},
         {"model": "resnet18", "batch_per_gpu": 128, "precision": "fp16", "samples_per_s": 7400,
          "fit": ["norm"], "efficiency": "memory"})"));
  CHECK_THROWS_WITH(fit_throughputs(load_cluster("dgx-a100"), apart),
                    Catch::Contains("$.measurements[0]: 2470 samples/s is not reached together with the other "
                                    "measurements") &&
                        Catch::Contains("norm memory_efficiency at its bound 1 ($.measurements[1])"));
  // Out of reach: ResNet-50's convolutions at any efficiency leave the rest of its step.
  const auto fast = load_throughputs(throughput_file(
      R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 99999,
          "fit": ["conv_kxk", "conv_1x1"]})"));
  CHECK_THROWS_WITH(fit_throughputs(c, fast), Catch::Contains("$.measurements[0]: 99999 samples/s is more than "
                                                              "resnet50 trains on one GPU of dgx1-v100"));
}

TEST_CASE("calibrate: the fixed cost per layer pass is recovered beside a class from rates at two batches") {
  const Cluster plain = load_cluster("p100-dgx1");
  Cluster truth = plain;
  truth.device.kernel_overhead_us = 150;
  truth.device.by_kind[ComputeClass::Conv1x1].compute[Precision::FP32] = 0.6;
  std::vector<ThroughputMeasurement> ms = {
      measured_on(truth, "resnet50", 64, Precision::FP32, {ComputeClass::Conv1x1}),
      measured_on(truth, "resnet50", 16, Precision::FP32, {})};
  ms[1].overhead = true;
  const ThroughputFit fit = fit_throughputs(plain, ms);
  CHECK(fit.rows[0].value == Approx(0.6).epsilon(1e-7));
  CHECK(fit.rows[1].value == Approx(150).epsilon(1e-7));
  CHECK(fit.rows[1].before == plain.device.kernel_overhead_us);
  Cluster fitted = plain;
  apply_throughput_fit(fitted, ms, fit, "test");
  CHECK(fitted.device.kernel_overhead_us == Approx(150).epsilon(1e-7));
  CHECK_THAT(fitted.provenance.at("device.kernel_overhead_us"),
             Catch::StartsWith("FITTED (test): resnet50 at batch 16"));

  const std::string one = R"({"model": "resnet50", "batch_per_gpu": 16, "precision": "fp32", "samples_per_s": 100,
                              "fit": ["kernel_overhead_us"]})";
  CHECK(load_throughputs(throughput_file(one)).at(0).overhead);
  CHECK_THROWS_WITH(load_throughputs(throughput_file(one + ", " + one)),
                    Catch::Contains("$.measurements[1].fit[0]: kernel_overhead_us is fitted by $.measurements[0] "
                                    "already"));
  CHECK_THROWS_WITH(load_throughputs(throughput_file(
                        R"({"model": "resnet50", "batch_per_gpu": 16, "precision": "fp32", "samples_per_s": 100,
                            "fit": ["gemm", "kernel_overhead_us"]})")),
                    Catch::Contains("$.measurements[0].fit[1]: kernel_overhead_us is the device's, fitted alone"));
}

TEST_CASE("calibrate: a framework's compute_scale is recovered from its rates, and prices its held-out rates") {
  const Cluster plain = load_cluster("dgx1-v100");
  Cluster framework = plain;  // another framework on the same server: everything 14 % faster
  framework.compute_scale = 0.86;
  std::vector<ThroughputMeasurement> ms = {measured_on(framework, "resnet50", 128, Precision::FP32, {}),
                                           measured_on(framework, "resnet101", 64, Precision::FP32, {}),
                                           measured_on(framework, "vgg16", 32, Precision::FP32, {})};
  ms[0].scale = ms[1].scale = true;  // vgg16 held out
  const ThroughputFit fit = fit_throughputs(plain, ms);
  REQUIRE(fit.compute_scale.size() == 1);
  CHECK(fit.compute_scale.at(Precision::FP32) == Approx(0.86).epsilon(1e-7));
  CHECK(fit.rows[0].value == fit.compute_scale.at(Precision::FP32));
  CHECK(fit.rows[0].before == 1);
  CHECK(fit.rows[2].rate_before == Approx(ms[2].samples_per_s * 0.86).epsilon(1e-3));  // all compute, no input wait
  CHECK(fit.rows[2].rate_after == Approx(ms[2].samples_per_s).epsilon(1e-7));          // the held-out one, with it
  // Not the cluster's: nothing written.
  Cluster written = plain;
  apply_throughput_fit(written, ms, fit, "test");
  CHECK(cluster_to_json(written) == cluster_to_json(plain));
  // Two rates that disagree: the geometric mean of what each needs alone.
  ms[1].samples_per_s *= 1.1;
  const ThroughputFit apart = fit_throughputs(plain, ms);
  CHECK(apart.compute_scale.at(Precision::FP32) == Approx(0.86 / std::sqrt(1.1)).epsilon(1e-6));
  // Another precision its own value, which its held-out rates take; a held-out rate at a
  // precision with none is predicted on the cluster as given.
  ms[1].samples_per_s /= 1.1;
  const Cluster a100 = load_cluster("dgx-a100");
  Cluster fp32 = a100, fp16 = a100;
  fp32.compute_scale = 0.86;
  fp16.compute_scale = 1.3;
  std::vector<ThroughputMeasurement> two = {measured_on(fp32, "resnet50", 128, Precision::FP32, {}),
                                            measured_on(fp16, "resnet50", 256, Precision::FP16, {}),
                                            measured_on(fp16, "resnet101", 128, Precision::FP16, {}),
                                            measured_on(a100, "resnet18", 128, Precision::BF16, {})};
  two[0].scale = two[1].scale = true;
  const ThroughputFit both = fit_throughputs(a100, two);
  CHECK(both.compute_scale.size() == 2);
  CHECK(both.compute_scale.at(Precision::FP16) == Approx(1.3).epsilon(1e-7));
  CHECK(both.compute_scale.at(Precision::FP32) == Approx(0.86).epsilon(1e-7));
  CHECK(both.rows[2].rate_after == Approx(two[2].samples_per_s).epsilon(1e-7));
  CHECK(both.rows[3].rate_after == both.rows[3].rate_before);
  // Beyond its bounds: refused, naming the rate.
  ms[1].samples_per_s = 1e5;
  CHECK_THROWS_WITH(fit_throughputs(plain, {ms[1]}), Catch::Contains("resnet101: 100000 samples/s needs compute_scale "
                                                                     "beyond [0.05, 20] on dgx1-v100"));

  const std::string scale = R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp32", "samples_per_s": 300,
                                "fit": ["compute_scale"]})";
  CHECK(load_throughputs(throughput_file(scale)).at(0).scale);
  CHECK(load_throughputs(throughput_file(scale + ", " + scale)).size() == 2);  // one value, shared
  const std::string cls = R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp32", "samples_per_s": 300,
                              "fit": ["conv_1x1"]})";
  auto refused = [](const std::string& measurements, const std::string& what) {
    INFO(measurements);
    CHECK_THROWS_WITH(load_throughputs(throughput_file(measurements)), Catch::Contains(what));
  };
  refused(cls + ", " + scale, "$.measurements[1].fit[0]: compute_scale is a framework's speed on the cluster as given, "
                              "and $.measurements[0] fits the cluster's own values");
  refused(scale + ", " + cls, "$.measurements[1].fit: $.measurements[0] fits compute_scale");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp32", "samples_per_s": 300,
              "fit": ["compute_scale", "gemm"]})",
          "$.measurements[0].fit[0]: compute_scale is the framework's, fitted alone");
}

namespace {
// Plans of ResNet-50 at batch 64 in FP32, 25 MB buckets, on `gpus` of `cluster`.
Plan resnet50_plan(const Model& m, int gpus) {
  return make_plan(m, "dgx1-v100", gpus, 64, Precision::FP32,
                   buckets_from_spec("threshold:25MB", m, "auto", Precision::FP32), "threshold:25MB");
}
// A scaling measurement of ResNet-50 on `gpus` as `truth` predicts it (with a fixed cost
// per step of `overhead_s`, at truth's compute scale), fitting compute_variation where `fit`.
ScalingMeasurement scaling_on(const Cluster& truth, const Model& m, int gpus, bool fit, double overhead_s = 0) {
  ScalingMeasurement s;
  s.model = m;
  s.plan = resnet50_plan(m, gpus);
  Plan measured = s.plan;
  measured.step_overhead_s = overhead_s;
  measured.compute_scale = truth.compute_scale;
  s.efficiency = predict(bind_scenario(m, truth, measured, {}, {}, "test"), false).scaling_efficiency;
  s.fits_variation = fit;
  s.where = "plan-" + std::to_string(gpus);
  s.plan_path = "plan-" + std::to_string(gpus) + ".json";
  return s;
}
}  // namespace

TEST_CASE("calibrate: compute_variation is recovered from the scaling efficiencies it predicted") {
  const Model m = load_model("resnet50", {});
  Cluster truth = load_cluster("dgx1-v100");
  truth.compute_variation = 0.03;
  std::vector<ScalingMeasurement> ms = {scaling_on(truth, m, 2, true), scaling_on(truth, m, 4, true),
                                        scaling_on(truth, m, 8, true), scaling_on(truth, m, 16, false)};
  Cluster given = truth;
  given.compute_variation = 0;
  const ScalingFit fit = fit_scaling(given, ms);
  REQUIRE(fit.variation_fitted);
  CHECK_FALSE(fit.overhead_fitted);
  CHECK(fit.variation_before == 0);
  CHECK(fit.variation == Approx(0.03).margin(1e-7));
  CHECK(fit.rms_points < 1e-4);
  for (size_t i = 0; i < ms.size(); ++i) {
    INFO(ms[i].where);
    CHECK(fit.given[i] > ms[i].efficiency);  // without the wait, every prediction is above
    CHECK(fit.after[i] == Approx(ms[i].efficiency).margin(1e-7));  // the held-out one too
  }
  apply_scaling_fit(given, ms, fit, "test");
  CHECK(given.compute_variation == fit.variation);
  CHECK_THAT(given.provenance.at("compute_variation"),
             Catch::StartsWith("FITTED (test): least squares in points of scaling efficiency on resnet50 on 2 GPUs "
                               "(plan-2.json)") &&
                 !Catch::Contains("16 GPUs"));
  // The least squares of runs that disagree lie between the values each gives alone.
  std::vector<ScalingMeasurement> apart = {ms[0], ms[2]};
  apart[0].efficiency -= 0.004;  // loses more on 2 GPUs than the truth's wait
  const ScalingFit both = fit_scaling(given, apart);
  const ScalingFit first = fit_scaling(given, {apart[0]});
  CHECK(first.variation > 0.03);
  CHECK(both.variation > 0.03);
  CHECK(both.variation < first.variation);
  CHECK(both.rms_points > 0.1);
  // A run at or above the prediction without any wait is met by none; held out alone, nothing is fitted.
  ScalingMeasurement linear = ms[0];
  linear.efficiency = 1;
  CHECK(fit_scaling(given, {linear}).variation == 0);
  linear.fits_variation = false;
  const ScalingFit none = fit_scaling(given, {linear});
  CHECK_FALSE(none.variation_fitted);
  CHECK(none.variation == given.compute_variation);
  Cluster kept = given;
  apply_scaling_fit(kept, {linear}, none, "test");
  CHECK(kept.compute_variation == given.compute_variation);
  // Runs of a framework 20 % faster than the cluster prices: priced at its compute scale
  // (the runs' precision), the wait comes back; at the cluster's speed it does not.
  Cluster faster = truth;
  faster.compute_scale = 0.8;
  const std::vector<ScalingMeasurement> framework = {scaling_on(faster, m, 2, true), scaling_on(faster, m, 8, true)};
  CHECK(fit_scaling(given, framework, {{Precision::FP32, 0.8}}).variation == Approx(0.03).margin(1e-7));
  CHECK(fit_scaling(given, framework, {{Precision::FP16, 0.8}}).variation !=
        Approx(0.03).margin(1e-4));  // another precision's scale: the runs at the cluster's speed
  // Plans made for that framework (their compute_scale) are priced at it with no scale fitted.
  std::vector<ScalingMeasurement> own = framework;
  for (auto& r : own) r.plan.compute_scale = 0.8;
  CHECK(fit_scaling(given, own).variation == Approx(0.03).margin(1e-7));
}

TEST_CASE("calibrate: scaling measurements read their plans beside the file, and bad ones are refused") {
  const Model m = load_model("resnet50", {});
  const auto dir = std::filesystem::temp_directory_path() / "fuseplan_test_throughput";
  std::filesystem::create_directories(dir);
  for (int gpus : {1, 8}) {
    const std::string path = (dir / ("plan-" + std::to_string(gpus) + ".json")).string();
    std::ofstream(path) << plan_to_json_at(resnet50_plan(m, gpus), path).dump();
  }
  const std::string rate = R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900,
                               "fit": ["conv_1x1"]})";
  const std::string scaling = R"({"plan": "plan-8.json", "scaling_efficiency": 0.97, "fit": ["compute_variation"],
                                  "source": "a run"})";
  // A relative plan not found from the working directory is read from the file's folder.
  const ThroughputFile f = load_throughput_file(throughput_file(rate + ", " + scaling));
  REQUIRE(f.rates.size() == 1);
  REQUIRE(f.scaling.size() == 1);
  CHECK(f.scaling[0].plan.gpus == 8);
  CHECK(f.scaling[0].model.name == "resnet50");
  CHECK(f.scaling[0].efficiency == 0.97);
  CHECK(f.scaling[0].fits_variation);
  CHECK_FALSE(f.scaling[0].fits_overhead);
  CHECK(f.scaling[0].source == "a run");
  CHECK_THAT(f.scaling[0].where, Catch::EndsWith("$.measurements[1]"));
  CHECK(load_throughputs(throughput_file(rate + ", " + scaling)).size() == 1);
  auto refused = [](const std::string& measurements, const std::string& what) {
    INFO(measurements);
    CHECK_THROWS_WITH(load_throughput_file(throughput_file(measurements)), Catch::Contains(what));
  };
  // A class fitted twice names the earlier measurement by its place in the file.
  refused(rate + ", " + scaling + ", " + rate,
          "$.measurements[2].fit[0]: conv_1x1's compute_efficiency at fp16 is fitted by $.measurements[0] already");
  refused(R"({"plan": "plan-8.json", "model": "resnet50", "scaling_efficiency": 0.9, "fit": []})",
          "$.measurements[0].model: a measurement with a plan takes its model, batch, precision and training loop "
          "from the plan");
  refused(R"({"plan": "plan-1.json", "scaling_efficiency": 0.9, "fit": []})",
          "$.measurements[0].plan: a scaling efficiency is measured on more than one GPU (plan-1.json has 1)");
  refused(R"({"plan": "plan-8.json", "scaling_efficiency": 0.9, "fit": ["conv_1x1"]})",
          "$.measurements[0].fit[0]: a measurement with a plan fits compute_variation");
  refused(R"({"plan": "plan-8.json", "scaling_efficiency": 0.9, "fit": ["step_overhead", "step_overhead"]})",
          "$.measurements[0].fit[1]: a measurement with a plan fits compute_variation (the cluster's wait for the "
          "slowest GPU), step_overhead (the plans' fixed cost per step), each once");
  CHECK(load_throughput_file(throughput_file(
                                 R"({"plan": "plan-8.json", "scaling_efficiency": 0.9,
                                     "fit": ["step_overhead", "compute_variation"]})"))
            .scaling.at(0)
            .fits_overhead);
  refused(R"({"plan": "plan-8.json", "scaling_efficiency": 3, "fit": []})",
          "$.measurements[0].scaling_efficiency: must be in [1e-06, 2]");
  refused(R"({"plan": "nowhere.json", "scaling_efficiency": 0.9, "fit": []})",
          "$.measurements[0].plan nowhere.json: cannot open");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900, "fit": [],
              "scaling_efficiency": 0.9})",
          "$.measurements[0].scaling_efficiency: needs `plan`");
  refused(R"({"model": "resnet50", "batch_per_gpu": 64, "precision": "fp16", "samples_per_s": 900,
              "fit": ["compute_variation"]})",
          "compute_variation is fitted by a measurement with a plan");
}

TEST_CASE("calibrate: compute_variation and a step overhead are told apart by runs at several GPU counts") {
  const Model m = load_model("resnet50", {});
  Cluster truth = load_cluster("dgx1-v100");
  truth.compute_variation = 0.02;
  const double overhead = 5e-3;  // a framework's fixed 5 ms per step on more than one GPU
  std::vector<ScalingMeasurement> ms;
  for (int gpus : {2, 4, 8, 16}) {
    ms.push_back(scaling_on(truth, m, gpus, true, overhead));
    ms.back().fits_overhead = true;
  }
  Cluster given = truth;
  given.compute_variation = 0;
  const ScalingFit fit = fit_scaling(given, ms);
  REQUIRE(fit.variation_fitted);
  REQUIRE(fit.overhead_fitted);
  CHECK(fit.variation == Approx(0.02).margin(1e-6));
  CHECK(fit.overhead_s == Approx(overhead).margin(1e-7));
  CHECK(fit.rms_points < 1e-3);
  // The wait alone cannot follow a fixed cost over the counts: its best leaves more.
  std::vector<ScalingMeasurement> wait_only = ms;
  for (auto& s : wait_only) s.fits_overhead = false;
  CHECK(fit_scaling(given, wait_only).rms_points > 10 * fit.rms_points + 0.01);
  // The step overhead alone, the wait as the cluster gives it.
  std::vector<ScalingMeasurement> overhead_only = ms;
  for (auto& s : overhead_only) s.fits_variation = false;
  const ScalingFit alone = fit_scaling(truth, overhead_only);
  CHECK_FALSE(alone.variation_fitted);
  CHECK(alone.variation == truth.compute_variation);
  CHECK(alone.overhead_s == Approx(overhead).margin(1e-7));
  Cluster unchanged = truth;
  apply_scaling_fit(unchanged, overhead_only, alone, "test");  // a plan's value: the cluster keeps its own
  CHECK(unchanged.compute_variation == truth.compute_variation);
  CHECK(unchanged.provenance.count("compute_variation") == truth.provenance.count("compute_variation"));
  // One run fitting the wait alone (its plan's own fixed cost, none) pins it, and another at
  // the same count then gives the fixed cost.
  ScalingMeasurement pinned = scaling_on(truth, m, 8, true);
  ScalingMeasurement costly = ms[2];
  costly.fits_variation = false;
  const ScalingFit apart_kinds = fit_scaling(given, {pinned, costly});
  CHECK(apart_kinds.variation == Approx(0.02).margin(1e-6));
  CHECK(apart_kinds.overhead_s == Approx(overhead).margin(1e-7));
  // A run fitting only the step overhead still moves with the cluster's wait: one that
  // loses less than another run's wait allows pulls the wait down, where no fixed cost
  // (at least 0) can make up for it.
  Cluster low = truth, high = truth;
  low.compute_variation = 0.01;
  high.compute_variation = 0.03;
  ScalingMeasurement wait_run = scaling_on(high, m, 2, true), fixed_run = scaling_on(low, m, 8, false);
  fixed_run.fits_overhead = true;
  const ScalingFit pulled = fit_scaling(given, {wait_run, fixed_run});
  CHECK(pulled.variation > 0.011);
  CHECK(pulled.variation < 0.029);
  CHECK(pulled.overhead_s < 1e-6);
  // At one GPU count the two are one unknown: refused, naming the measurement.
  const std::vector<ScalingMeasurement> one_count = {ms[2], ms[2]};
  CHECK_THROWS_WITH(fit_scaling(given, one_count),
                    Catch::Contains("plan-8: compute_variation and step_overhead fitted together need runs that fit "
                                    "both at two GPU counts or more"));
}
