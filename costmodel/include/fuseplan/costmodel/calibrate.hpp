// Calibration of the communication model from measurements: an allreduce sweep (time per
// message size, from `fuseplan-exec sweep` or NVIDIA nccl-tests) fitted by least squares
// to the alpha, beta and gamma of an algorithm's textbook formula, as the cluster file's
// `calibrated` section holds them (CollectiveModel then costs that algorithm with them).
#pragma once
#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan {

struct SweepPoint {
  double bytes = 0, seconds = 0;
  double nccl_estimate_s = 0;  // NCCL's own estimate of the call (`sweep --comm nccl`), 0 = none
};

// One algorithm's measured sweep on `ranks` ranks with `elem_bytes` per element.
struct Sweep {
  std::string algorithm;  // a registered algorithm name
  int ranks = 2, per_node = 1, elem_bytes = 4;
  std::vector<SweepPoint> points;
};

struct CalibrationFit {
  Calibration k;                         // with the variant it was fitted with (k.variant)
  std::vector<double> predicted_s;       // the fitted formula at every point
  double mean_rel_err = 0, max_rel_err = 0;
  double fitted_sq = 0;                  // sum of squared relative errors over the fitted points
};

// The calibrated formula's time for `bytes` (as CollectiveModel computes it: the flat
// textbook network, `group` for hierarchical algorithms), plus `launch_s`.
double calibrated_time(const Algorithm& a, const Sweep& s, const Calibration& k, double bytes, double launch_s);

// Non-negative least squares on relative errors (every size counts alike) of the times
// minus `launch_s`. Only points whose index passes `use` are fitted; errors are reported
// over all points. Algorithms with variants (the tree's pipeline depth) are fitted per
// variant and the best fit kept, with its variant in k.variant (prediction then uses that
// depth, not the one another network would pick). NCCL's algorithms fit alpha + beta n.
// Throws InputError if fewer than two points are fitted.
CalibrationFit fit_calibration(const Algorithm& a, const Sweep& s, double launch_s, const std::vector<bool>& use = {});

// A piecewise fit: the sweep's sizes cut into at most `max_segments` ranges of at least
// three sizes, each fitted as fit_calibration does. For each number of ranges the cut
// with the least total squared relative error (dynamic programming); the fewest ranges
// whose every size is within `tolerance`, else the most allowed. Between ranges the
// constants blend (calibration_at). Caches and transport protocols change the slope of
// a measured allreduce (a ring runs at 11 GB/s on a cache-resident 1 MiB and 4.5 GB/s
// at 64 MiB here), which one straight line cannot follow.
struct SegmentFit {
  Calibration k;  // with from_bytes / to_bytes: the first and last fitted size
  int sizes = 0;
  double mean_rel_err = 0, max_rel_err = 0;  // over its own fitted sizes
};
struct SegmentedFit {
  std::vector<SegmentFit> segments;
  std::vector<double> predicted_s;  // at every point, through calibration_at
  double mean_rel_err = 0, max_rel_err = 0;  // over every point
  std::vector<Calibration> constants() const;
};
SegmentedFit fit_segments(const Algorithm& a, const Sweep& s, double launch_s, int max_segments, double tolerance,
                          const std::vector<bool>& use = {});

// The hold-out check: fit_segments on every other point (indices 0, 2, 4, ...), judged
// on the rest; the relative error of each held-out point (indices 1, 3, 5, ...), in order.
std::vector<double> holdout_errors(const Algorithm& a, const Sweep& s, double launch_s, int max_segments,
                                   double tolerance);

// Why a fitted size range cannot stand for the measurements, "" when it can: nothing
// fitted (every constant 0), no bandwidth term in the range of the largest sizes
// (`largest`: infinite bandwidth there; below, a latency-bound range may fit beta 0), or
// a mean error beyond 4 x the tolerance the ranges were cut for.
std::string degenerate_fit(const SegmentFit& seg, bool largest, double tolerance);

// Keeps each sweep's sizes in [lo, hi] (fit where the plans operate, not where protocols
// and caches change the slope). InputError naming `origin` when fewer than two remain.
void restrict_sizes(std::vector<Sweep>& sweeps, double lo, double hi, const std::string& origin);

// The communication calibration of a cluster from measured sweeps: each sweep fitted in
// size ranges (fit_segments), optionally held out (fitted on every other size, judged on
// the rest), each range judged (degenerate_fit); the constants written into
// cluster.calibrated, with provenance naming `source`.
struct CommCalibrationOptions {
  std::string source;     // the measurements' file
  double launch_s = 0;    // per-call overhead inside the times, kept apart
  int max_segments = 4;
  double tolerance = 0.05;
  bool holdout = false;
};
struct CommCalibration {
  std::string algorithm;
  SegmentedFit fit;
  std::vector<std::string> degenerate;          // per range, degenerate_fit's answer
  std::optional<double> holdout_mean, holdout_max;  // relative errors on the held-out sizes
};
std::vector<CommCalibration> calibrate_communication(Cluster& cluster, const std::vector<Sweep>& sweeps,
                                                     const CommCalibrationOptions& o);

// Sweeps from files: fuseplan.sweep/1 (fuseplan-exec sweep), or nccl-tests
// all_reduce_perf output (its text table or -J JSON), whose points are attributed to
// `as_algorithm` on `ranks` ranks. Throw InputError naming the file.
std::vector<Sweep> load_sweep(const std::string& path);
Sweep load_nccl_tests(const std::string& path, const std::string& as_algorithm, int ranks, int per_node);

// What a plan's run adds to the sweep's communication model, fitted to measured runs of
// plans whose allreduces overlap backward: the processor sharing between backward and
// communication (Cluster::comm_compute_sharing), optionally how much backward slows an
// allreduce apart from it (Cluster::allreduce_sharing), and the per-bucket dispatch
// overhead (Cluster::dispatch_overhead_us). Least squares of the relative errors of the
// predictor's backward end and last allreduce end over every run, on a grid (sigma 0..1
// by 0.05, dispatch 0..2000 us by 20 us) refined around its best point (by 0.005 and
// 0.5 us); the lowest of equal minima. With allreduce_sharing (0..4) the grid has three
// dimensions and is refined twice (0.25, 0.025 then 0.005; dispatch by 100, 10 then 1
// us), and each bucket's allreduce duration joins the targets (mean squared error
// relative to the run's last allreduce end): the two end times alone let one rate stand
// in for two unless they differ several times over. A value not fitted keeps the
// cluster's. Two runs with different bucket counts tell sharing and dispatch apart (one
// alone fits both badly); the allreduce sharing wants runs whose allreduces overlap
// backward to different extents. With bandwidth, Cluster::job_bandwidth_factor joins the
// search (1..4 by 0.25, refined by 0.025 then 0.005: a step moves bytes no faster than a
// back-to-back sweep on idle ranks) and each bucket's duration joins the targets as
// above: a step's allreduces may move bytes slower than the sweep's also where backward
// does not run, which no sharing expresses.
struct OverlapRun {
  Model model;    // with the measured per-layer profile
  Plan plan;      // validated against `model`
  Report measured;
};
struct OverlapTargets {  // which values fit_overlap fits
  bool sharing = false, dispatch = false, allreduce_sharing = false, bandwidth = false;
};
inline constexpr double kMaxFittedAllreduceSharing = 4;
inline constexpr double kMaxFittedBandwidthFactor = 4;
struct OverlapFit {
  double sigma = 0, dispatch_us = 0;
  std::optional<double> allreduce_sharing;  // the cluster's where not fitted
  double bandwidth_factor = 1;              // Cluster::job_bandwidth_factor (the cluster's where not fitted)
  struct Errors {
    double backward = 0, comm_end = 0, iteration = 0;  // signed, relative
  };
  std::vector<Errors> before, after;  // per run: the cluster as given, and as fitted
  bool dispatch_at_bound = false;     // the fit wanted more than the grid's 2000 us
  // The sharing ended at its bound 1 (two threads sharing one core evenly): the runs may
  // slow backward more than the model can express, which their errors after the fit show.
  bool sigma_at_bound = false;
  bool allreduce_sharing_at_bound = false;  // the fit wanted more than kMaxFittedAllreduceSharing
  bool bandwidth_at_bound = false;          // the fit wanted more than kMaxFittedBandwidthFactor
};
OverlapFit fit_overlap(const Cluster& cluster, const std::vector<OverlapRun>& runs, OverlapTargets fit,
                       const CollectiveOptions& coll_opt);

// Writes an overlap fit into the cluster: the fitted values with provenance naming
// `sources` (a value of 0 is not written, so no provenance points at it).
void apply_overlap_fit(Cluster& cluster, const OverlapFit& fit, OverlapTargets fitted, const std::string& sources);

// Per layer class, the efficiency that makes the roofline reproduce measured layer times
// (a profile applied to `m`, measured at `batch` and precision `p`): for each class with
// FLOPs, the value whose summed forward + backward roofline equals the class's measured
// sum (bisection; the roofline is monotone in it). Classes whose time the FLOPs set
// (under the cluster as given) fit compute_efficiency at `p`, up to 4 (fewer operations
// than the direct FLOPs, as Winograd does); those the bytes set fit memory_efficiency at `p`.
// The others keep the cluster's values while one class is fitted.
struct ClassFit {
  ComputeClass k = ComputeClass::Other;
  int layers = 0;
  double measured_s = 0, before_s = 0, after_s = 0;  // forward + backward per iteration
  bool memory = false;  // memory_efficiency fitted (else compute_efficiency)
  double value = 0;
  std::string bound;    // non-empty: the value is at its bound, and why
};
std::vector<ClassFit> fit_compute_classes(const Cluster& cluster, const Model& m, int batch, Precision p);

// Writes the fitted classes into the cluster's device.by_kind, with provenance `source`
// (a value at its bound, the closest the roofline comes, says so).
void apply_compute_fit(Cluster& cluster, const std::vector<ClassFit>& fits, Precision p, const std::string& source);

// One GPU's measured training rate of one model (a fuseplan.throughput/1 file's
// measurement: a vendor's performance page, a paper, a run of one's own) and the layer
// classes it calibrates: their efficiency, one value for all of them at the measured
// precision (compute_efficiency, or memory_efficiency for classes the bytes price).
struct ThroughputMeasurement {
  Model model;
  int batch = 1;
  Precision precision = Precision::FP32;
  Accumulation loop;       // micro-batches per optimizer step in the measured run
  OptimizerStep optimizer;
  double samples_per_s = 0;
  std::vector<ComputeClass> classes;  // empty when `overhead`, or held out (fits nothing)
  bool memory = false;     // memory_efficiency (else compute_efficiency)
  // The device's kernel_overhead_us instead of a class efficiency: the fixed cost of each
  // layer pass, which a rate at a second, smaller batch sets apart from the classes.
  bool overhead = false;
  // The framework's compute_scale instead (Cluster::compute_scale: its compute time over
  // what the cluster's constants price), one value per precision shared by every rate
  // naming it there; not the cluster's, so not written into it.
  bool scale = false;
  std::string where;       // "FILE: $.measurements[i]", for messages
  std::string source;      // where the rate comes from (provenance); may be empty
  bool held_out() const { return !overhead && !scale && classes.empty(); }  // fits nothing: predicted and reported
  bool fits_cluster() const { return !held_out() && !scale; }  // a value of the cluster file
};
// A measured scaling efficiency (a fuseplan.throughput/1 measurement with a `plan`): the
// training the plan describes ran `efficiency` times as fast per GPU on the plan's GPUs
// as on one (its rate on N GPUs over N times its rate on one, the same software and
// hardware), which calibrates the cluster's compute_variation (the wait for the slowest
// GPU) or, held out, is predicted and reported.
struct ScalingMeasurement {
  Model model;
  Plan plan;                // more than one GPU; its model, batch, precision and training loop
  double efficiency = 0;    // in (0, kMaxMeasuredScaling]
  bool fits_variation = false;  // fits the cluster's compute_variation
  bool fits_overhead = false;   // fits one step overhead with the others that do (the plans' own otherwise)
  std::string where;        // "FILE: $.measurements[i]", for messages
  std::string plan_path;    // as the file names it
  std::string source;       // may be empty
  bool held_out() const { return !fits_variation && !fits_overhead; }  // predicted and reported only
};
// A run may beat N times one GPU's rate a little (caches, clocks): published 100.9 %.
inline constexpr double kMaxMeasuredScaling = 2;

// A fuseplan.throughput/1 file: one GPU's rates and measured scaling efficiencies.
struct ThroughputFile {
  std::vector<ThroughputMeasurement> rates;
  std::vector<ScalingMeasurement> scaling;
  // Whether a measurement fits a value the cluster file holds (a class, kernel_overhead_us,
  // compute_variation); a compute scale and a step overhead are a framework's, not written.
  bool fits_cluster() const {
    return std::any_of(rates.begin(), rates.end(), [](const auto& m) { return m.fits_cluster(); }) ||
           std::any_of(scaling.begin(), scaling.end(), [](const auto& m) { return m.fits_variation; });
  }
};
// Reads a fuseplan.throughput/1 file; InputError naming the file and JSON path of a bad
// field, an unknown class, a class the model has no priced layer of, a class fitted at one
// precision by two measurements, kernel_overhead_us fitted twice or beside a class,
// compute_scale beside anything else or in a file whose rates fit the cluster's values, or
// a scaling measurement's plan that does not read, is for one GPU or beside the keys it
// gives.
ThroughputFile load_throughput_file(const std::string& path);
// Its single-GPU rates only.
inline std::vector<ThroughputMeasurement> load_throughputs(const std::string& path) {
  return load_throughput_file(path).rates;
}

// The class efficiencies that make one GPU of `cluster` train each measured model at its
// measured rate (single_gpu_step_s: forward, backward, the optimizer's share, the input
// pipeline's wait), all together: a rate moves with every class its model holds, so a
// measurement fitting convolutions also moves with a GEMM or norm value another one fits.
// Levenberg-Marquardt on the logs of the rates' ratios, in the logs of the values, with
// finite-difference derivatives; values within [kMinThroughputEfficiency,
// kMaxClassEfficiency] (memory: up to 1; kernel_overhead_us within
// [kMinThroughputOverheadUs, kMaxThroughputOverheadUs]). InputError naming the
// measurement when its rate lies beyond what its classes reach at their bound (the other
// classes', the optimizer's or the input pipeline's time bound it), or when no values
// meet the rates together (naming any value held at its bound). A measurement that fits
// nothing is held out: its rate is predicted as given and as fitted.
// Rates naming compute_scale fit the framework's factor (Cluster::compute_scale) at their
// precision the same way, on the cluster as given (such a file fits no class); the
// held-out rates at that precision are then predicted with it (a file of one framework's
// runs). InputError when it lies at its bound [kMinComputeScale, kMaxComputeScale] short
// of a rate.
inline constexpr double kMinThroughputEfficiency = 1e-3;
inline constexpr double kMinThroughputOverheadUs = 1e-3, kMaxThroughputOverheadUs = 1e4;
struct ThroughputFit {
  struct Row {
    double value = 0;                     // the fitted efficiency (kernel_overhead_us: in us); 0 held out
    double before = 0;                    // its value in the cluster as given
    double rate_before = 0, rate_after = 0;  // predicted samples/s, as given and fitted
  };
  std::vector<Row> rows;  // per measurement, in order
  int iterations = 0;     // of the least-squares fit
  std::map<Precision, double> compute_scale;  // per precision where a rate names it (its rows' value too)
};
ThroughputFit fit_throughputs(const Cluster& cluster, const std::vector<ThroughputMeasurement>& ms);

// Writes the fitted values into the cluster's device.by_kind at each measurement's
// precision, with provenance (device.by_kind.CLASS.KEY.PRECISION) naming `how` (the
// command and file), the measurement and its source. Not compute_scale: the framework's.
void apply_throughput_fit(Cluster& cluster, const std::vector<ThroughputMeasurement>& ms, const ThroughputFit& fit,
                          const std::string& how);

// The cluster's compute_variation, and one step overhead (a plan's fixed cost per step on
// more than one GPU: one framework's), that bring the predicted scaling efficiencies of the
// measurements that fit them closest to the measured ones, least squares in points over
// every measurement that fits either, the plans bound on `cluster` (its other values as
// given). Every efficiency falls as either value grows, so the least squares lie between
// the smallest and the largest value one measurement alone needs (fit_to_efficiency; 0
// where a run is met or beaten without it): a scan of that range and golden sections
// around its best point find them, the step overhead outside and compute_variation for
// each step overhead inside. Runs that all fit both need two GPU counts or more
// (InputError): the wait grows with the count, a fixed cost does not. Held-out
// measurements are predicted as given and as fitted. Each run is priced with
// `compute_scale` at its plan's precision where it holds one (a framework's, fitted on the
// file's rates), else the cluster's.
struct ScalingFit {
  bool variation_fitted = false, overhead_fitted = false;  // some measurement fits it
  double variation_before = 0;  // the cluster's compute_variation as given
  double variation = 0;         // fitted (the given one when nothing fits it)
  double overhead_s = 0;        // the step overhead fitted, seconds (0 when nothing fits it)
  std::vector<double> given, after;  // per measurement: the predicted efficiency as given and fitted
  double rms_points = 0;              // of the measurements that fit, after
};
ScalingFit fit_scaling(const Cluster& cluster, const std::vector<ScalingMeasurement>& ms,
                       const std::map<Precision, double>& compute_scale = {});

// Writes a fitted compute_variation into the cluster, with provenance naming `how` (the
// command and file) and the measurements it was fitted on (the step overhead is the
// plans', not the cluster's: not written).
void apply_scaling_fit(Cluster& cluster, const std::vector<ScalingMeasurement>& ms, const ScalingFit& fit,
                       const std::string& how);

}  // namespace fuseplan
