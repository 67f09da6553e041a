#include "fuseplan/costmodel/calibrate.hpp"

#include "fuseplan/costmodel/compare.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <numeric>
#include <nlohmann/json.hpp>
#include <sstream>

#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

namespace {

// The arguments CollectiveModel's calibrated path evaluates: the flat textbook network
// over `ranks`, hierarchical groups of the sweep's ranks per node.
CollectiveArgs flat_args(const Sweep& s, double bytes, const Net& net) {
  CollectiveArgs a;
  a.topo = {s.ranks, 1};
  a.group = s.per_node;
  a.net = net;
  a.elem_bytes = s.elem_bytes;
  a.count = std::max<int64_t>(1, int64_t(std::llround(bytes / s.elem_bytes)));
  return a;
}

// Coefficients of alpha, beta, gamma in the formula at this size: the cost is linear in
// them on the flat network (every round's slower link is the same kind).
std::array<double, 3> coefficients(const Algorithm& algo, const Sweep& s, double bytes, int variant) {
  std::array<double, 3> c{};
  for (int k = 0; k < 3; ++k) {
    CollectiveArgs a = flat_args(s, bytes, Net::uniform(k == 0, k == 1, k == 2));
    a.variant = variant;
    c[size_t(k)] = closed_form_cost(algo, a).total();
  }
  return c;
}

// Solves the 3x3 (or smaller) normal equations restricted to the variables in `mask`.
bool solve(const std::array<std::array<double, 3>, 3>& A, const std::array<double, 3>& b, unsigned mask,
           std::array<double, 3>& x) {
  std::vector<int> idx;
  for (int k = 0; k < 3; ++k)
    if (mask & (1u << k)) idx.push_back(k);
  const size_t n = idx.size();
  std::vector<std::vector<double>> M(n, std::vector<double>(n + 1));
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) M[i][j] = A[size_t(idx[i])][size_t(idx[j])];
    M[i][n] = b[size_t(idx[i])];
  }
  for (size_t c = 0; c < n; ++c) {  // Gaussian elimination, partial pivoting
    size_t p = c;
    for (size_t r = c + 1; r < n; ++r)
      if (std::abs(M[r][c]) > std::abs(M[p][c])) p = r;
    if (std::abs(M[p][c]) < 1e-300) return false;
    std::swap(M[p], M[c]);
    for (size_t r = 0; r < n; ++r) {
      if (r == c) continue;
      const double f = M[r][c] / M[c][c];
      for (size_t k = c; k <= n; ++k) M[r][k] -= f * M[c][k];
    }
  }
  x = {0, 0, 0};
  for (size_t i = 0; i < n; ++i) x[size_t(idx[i])] = M[i][n] / M[i][i];
  return true;
}

}  // namespace

double calibrated_time(const Algorithm& a, const Sweep& s, const Calibration& k, double bytes, double launch_s) {
  CollectiveArgs args = flat_args(s, bytes, Net::uniform(k.alpha_us * 1e-6, k.beta_us_per_MB * 1e-12, k.gamma_us_per_MB * 1e-12));
  if (k.variant >= 0 && k.variant < a.variants) args.variant = k.variant;  // as CollectiveModel does
  return closed_form_cost(a, args).total() + launch_s;
}

namespace {

// The least-squares fit of one variant's formula (fit_calibration).
CalibrationFit fit_variant(const Algorithm& algo, const Sweep& s, double launch_s, const std::vector<bool>& use,
                           int variant) {
  // Minimise sum ((model - t) / t)^2 over the fitted points: rows scaled by 1/t.
  std::array<std::array<double, 3>, 3> A{};
  std::array<double, 3> b{};
  int fitted = 0;
  std::vector<std::array<double, 3>> coef;
  for (size_t i = 0; i < s.points.size(); ++i) {
    const SweepPoint& p = s.points[i];
    if (!(p.seconds > 0) || !(p.bytes > 0)) throw InputError("calibrate: sweep point with a non-positive size or time");
    coef.push_back(coefficients(algo, s, p.bytes, variant));
    if (!use.empty() && !use[i]) continue;
    const double w = 1.0 / p.seconds, y = (p.seconds - launch_s) * w;
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 3; ++c) A[size_t(r)][size_t(c)] += coef.back()[size_t(r)] * w * coef.back()[size_t(c)] * w;
      b[size_t(r)] += coef.back()[size_t(r)] * w * y;
    }
    ++fitted;
  }
  if (fitted < 2) throw InputError("calibrate: " + s.algorithm + " needs at least two sizes to fit");
  // Non-negative least squares by trying every support (three variables: eight sets).
  std::array<double, 3> best{};
  double best_err = std::numeric_limits<double>::infinity();
  for (unsigned mask = 1; mask < 8; ++mask) {
    std::array<double, 3> x;
    if (!solve(A, b, mask, x)) continue;
    if (x[0] < 0 || x[1] < 0 || x[2] < 0) continue;
    double err = 0;
    for (size_t i = 0; i < s.points.size(); ++i) {
      if (!use.empty() && !use[i]) continue;
      const double m = coef[i][0] * x[0] + coef[i][1] * x[1] + coef[i][2] * x[2] + launch_s;
      err += std::pow((m - s.points[i].seconds) / s.points[i].seconds, 2);
    }
    if (err < best_err) {
      best_err = err;
      best = x;
    }
  }
  CalibrationFit f;
  f.k = {best[0] * 1e6, best[1] * 1e12, best[2] * 1e12};
  f.k.variant = algo.variants > 1 ? variant : -1;
  f.fitted_sq = best_err;
  for (size_t i = 0; i < s.points.size(); ++i) {
    const double m = coef[i][0] * best[0] + coef[i][1] * best[1] + coef[i][2] * best[2] + launch_s;
    f.predicted_s.push_back(m);
    const double e = std::abs(m - s.points[i].seconds) / s.points[i].seconds;
    f.mean_rel_err += e / double(s.points.size());
    f.max_rel_err = std::max(f.max_rel_err, e);
  }
  return f;
}

}  // namespace

CalibrationFit fit_calibration(const Algorithm& algo, const Sweep& s, double launch_s, const std::vector<bool>& use) {
  if (s.ranks < 2) throw InputError("calibrate: a sweep needs 2 or more ranks (got " + std::to_string(s.ranks) + ")");
  // Every variant (the tree's pipeline depth) is fitted and the best kept, and the
  // constants remember it: prediction then uses the depth they were fitted with. NCCL's
  // algorithms fit one form (alpha + beta n) whatever their variant.
  const int variants = algo.direct ? 1 : algo.variants;
  CalibrationFit best;
  for (int v = 0; v < variants; ++v) {
    CalibrationFit f = fit_variant(algo, s, launch_s, use, v);
    if (v == 0 || f.fitted_sq < best.fitted_sq) best = std::move(f);
  }
  // One robust pass: sizes the fit misses by more than four times its median error (and
  // by more than 10 %) are left out and the rest refitted (a log's first row often times
  // the warm-up; a noisy machine spikes once). At least three sizes stay.
  std::vector<double> errs;
  std::vector<size_t> fitted;
  for (size_t i = 0; i < s.points.size(); ++i)
    if (use.empty() || use[i]) {
      fitted.push_back(i);
      errs.push_back(std::abs(best.predicted_s[i] - s.points[i].seconds) / s.points[i].seconds);
    }
  std::vector<double> sorted = errs;
  std::nth_element(sorted.begin(), sorted.begin() + long(sorted.size() / 2), sorted.end());
  const double cut = std::max(0.1, 4 * sorted[sorted.size() / 2]);
  std::vector<bool> kept(s.points.size(), false);
  size_t n = 0;
  for (size_t q = 0; q < fitted.size(); ++q)
    if (errs[q] <= cut) kept[fitted[q]] = true, ++n;
  if (n == fitted.size() || n < 3) return best;
  CalibrationFit robust;
  for (int v = 0; v < variants; ++v) {
    CalibrationFit f = fit_variant(algo, s, launch_s, kept, v);
    if (v == 0 || f.fitted_sq < robust.fitted_sq) robust = std::move(f);
  }
  return robust;
}

std::vector<Calibration> SegmentedFit::constants() const {
  std::vector<Calibration> out;
  for (const auto& seg : segments) out.push_back(seg.k);
  return out;
}

SegmentedFit fit_segments(const Algorithm& algo, const Sweep& s, double launch_s, int max_segments, double tolerance,
                          const std::vector<bool>& use) {
  if (max_segments < 1) throw InputError(field("calibrate.max_segments") + ": must be >= 1");
  if (!(tolerance > 0)) throw InputError(field("calibrate.segment_tolerance") + ": must be > 0");
  std::vector<size_t> idx;  // the fitted points, by size
  for (size_t i = 0; i < s.points.size(); ++i)
    if (use.empty() || use[i]) idx.push_back(i);
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return s.points[a].bytes < s.points[b].bytes; });
  const size_t n = idx.size(), min_sizes = 3;
  // The fit over idx[i..j], its errors on those sizes and their sum of squares.
  auto fit_range = [&](size_t i, size_t j, double& sq) {
    std::vector<bool> mask(s.points.size(), false);
    for (size_t q = i; q <= j; ++q) mask[idx[q]] = true;
    const CalibrationFit f = fit_calibration(algo, s, launch_s, mask);
    SegmentFit seg;
    seg.k = f.k;
    seg.k.from_bytes = s.points[idx[i]].bytes;
    seg.k.to_bytes = s.points[idx[j]].bytes;
    seg.sizes = int(j - i + 1);
    sq = 0;
    for (size_t q = i; q <= j; ++q) {
      const double e = std::abs(f.predicted_s[idx[q]] - s.points[idx[q]].seconds) / s.points[idx[q]].seconds;
      seg.mean_rel_err += e / seg.sizes;
      seg.max_rel_err = std::max(seg.max_rel_err, e);
      sq += e * e;
    }
    return seg;
  };
  if (n < 2) throw InputError("calibrate: " + s.algorithm + " needs at least two sizes to fit");
  // Every admissible range's fit and squared error (sum over its sizes), then per range
  // count the partition of the sizes with the least total squared error (dynamic
  // programming over where the last range starts).
  const size_t K = std::min<size_t>(size_t(max_segments), std::max<size_t>(1, n / min_sizes));
  std::vector<std::vector<SegmentFit>> range(n, std::vector<SegmentFit>(n));
  std::vector<std::vector<double>> sse(n, std::vector<double>(n, std::numeric_limits<double>::infinity()));
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i + (n < min_sizes ? n - 1 : min_sizes - 1); j < n; ++j) range[i][j] = fit_range(i, j, sse[i][j]);
  constexpr double kInf = std::numeric_limits<double>::infinity();
  // best[m][j]: least error of sizes 0..j in m + 1 ranges; from[m][j]: where the last starts.
  std::vector<std::vector<double>> best(K, std::vector<double>(n, kInf));
  std::vector<std::vector<size_t>> from(K, std::vector<size_t>(n, 0));
  for (size_t j = 0; j < n; ++j) best[0][j] = sse[0][j];
  for (size_t m = 1; m < K; ++m)
    for (size_t j = 0; j < n; ++j)
      for (size_t i = 1; i <= j; ++i)
        if (best[m - 1][i - 1] + sse[i][j] < best[m][j]) {
          best[m][j] = best[m - 1][i - 1] + sse[i][j];
          from[m][j] = i;
        }
  // The fewest ranges whose every size is within tolerance; else the most allowed.
  SegmentedFit out;
  for (size_t m = 0; m < K; ++m) {
    if (!(best[m][n - 1] < kInf)) continue;
    std::vector<SegmentFit> segs;
    for (size_t j = n - 1, level = m;; --level) {
      const size_t i = level == 0 ? 0 : from[level][j];
      segs.insert(segs.begin(), range[i][j]);
      if (level == 0) break;
      j = i - 1;
    }
    out.segments = segs;
    bool within = true;
    for (const auto& seg : segs) within = within && seg.max_rel_err <= tolerance;
    if (within) break;
  }
  const std::vector<Calibration> k = out.constants();
  for (const SweepPoint& p : s.points) {
    const double m = calibrated_time(algo, s, calibration_at(k, p.bytes, algo.library == "nccl"), p.bytes, launch_s);
    out.predicted_s.push_back(m);
    const double e = std::abs(m - p.seconds) / p.seconds;
    out.mean_rel_err += e / double(s.points.size());
    out.max_rel_err = std::max(out.max_rel_err, e);
  }
  return out;
}

std::vector<Sweep> load_sweep(const std::string& path) {
  const std::string origin = field("calibrate.sweep") + " " + path;
  nlohmann::json j;
  try {
    j = parse_json_file(path);
  } catch (const InputError& e) {
    throw InputError(field("calibrate.sweep") + " " + e.text());
  }
  JsonObject r(j, origin);
  if (r.string("schema") != "fuseplan.sweep/1") r.fail("schema", "must be \"fuseplan.sweep/1\"");
  const int ranks = static_cast<int>(r.integer("ranks", 2, kMaxGpus));
  const int per_node = static_cast<int>(r.integer("per_node", 1, ranks));
  const int elem = bytes_per_element(parse_precision(r.string("precision"), origin + ": $.precision"));
  r.opt_string("host");
  const nlohmann::json& points = r.array("points");
  std::vector<Sweep> out;
  for (size_t i = 0; i < points.size(); ++i) {
    JsonObject p = element_object(points[i], origin, "$.points[" + std::to_string(i) + "]");
    const std::string algo = p.string("algorithm");
    find_algorithm(algo, origin + ": " + p.where("algorithm"));
    const double bytes = p.in_range("bytes", 1, 1e15, "bytes");
    const double seconds = p.in_range("seconds", 1e-9, 1e4, "s");
    p.opt_integer("iterations", 1, int64_t(1) << 40);
    const double estimate = p.opt_in_range("nccl_estimate_seconds", 1e-9, 1e4, "s").value_or(0);
    p.finish();
    auto it = std::find_if(out.begin(), out.end(), [&](const Sweep& s) { return s.algorithm == algo; });
    if (it == out.end()) {
      out.push_back({algo, ranks, per_node, elem, {}});
      it = out.end() - 1;
    }
    it->points.push_back({bytes, seconds, estimate});
  }
  r.finish();
  if (out.empty()) r.fail("points", "no points");
  return out;
}

namespace {
// Bucket b's time on its stream: from when the stream could take it (the bucket ready, and
// the one before it on its stream done) to its end. A run records a start once its
// communication thread has woken for the bucket, later than that by the hand-off the
// prediction counts inside the bucket (dispatch_overhead_us); from here both count it.
double stream_time_s(const Report& r, size_t b) {
  const BucketReport& x = r.buckets[b];
  double from = x.ready_s;
  for (size_t k = b; k-- > 0;)
    if (r.buckets[k].stream == x.stream) {
      from = std::max(from, r.buckets[k].end_s);
      break;
    }
  return x.end_s - from;
}

// The mean squared error of each bucket's time on its stream (stream_time_s), relative to
// the run's last allreduce end: what an allreduce loses while backward runs shows in the
// buckets that overlap it, where the run's two end times alone let one sharing rate stand
// in for two.
double bucket_duration_error(const Report& predicted, const Report& measured) {
  const size_t n = std::min(predicted.buckets.size(), measured.buckets.size());
  if (n == 0) return 0;
  double sq = 0;
  for (size_t b = 0; b < n; ++b) {
    const double e = (stream_time_s(predicted, b) - stream_time_s(measured, b)) / measured.comm_end_s;
    sq += e * e;
  }
  return sq / double(n);
}
}  // namespace

OverlapFit fit_overlap(const Cluster& cluster, const std::vector<OverlapRun>& runs, OverlapTargets fit_what,
                       const CollectiveOptions& coll_opt) {
  if (runs.empty()) throw InputError("calibrate: no measured run to fit");
  std::vector<ComputeModel> compute;
  for (const OverlapRun& run : runs) {
    if (run.plan.gpus < 2) throw InputError(field("plan") + ": one rank has no communication to overlap (need >= 2 GPUs)");
    const Report& m = run.measured;
    if (!(m.backward_s > 0) || !(m.comm_end_s > 0) || !(m.iteration_s > 0))
      throw InputError(field("measured") + ": no backward, allreduce or iteration time to fit against");
    check_gpu_count(cluster, run.plan.gpus, field("plan"));
    compute.emplace_back(run.model, cluster, run.plan.batch_per_gpu, run.plan.compute);
  }
  // A point of the search: sharing, allreduce sharing (none: it follows the sharing),
  // dispatch overhead, bandwidth factor.
  struct Point {
    double sigma, dispatch;
    std::optional<double> comm;
    double bw;
  };
  const bool per_bucket = fit_what.allreduce_sharing || fit_what.bandwidth;  // bucket durations are targets
  // The squared errors at a point; the per-run errors into `errs` if given.
  auto evaluate = [&](const Point& p, std::vector<OverlapFit::Errors>* errs) {
    Cluster c = cluster;
    c.comm_compute_sharing = p.sigma;
    c.allreduce_sharing = p.comm;
    c.dispatch_overhead_us = p.dispatch;
    c.job_bandwidth_factor = p.bw;
    double sq = 0;
    for (size_t i = 0; i < runs.size(); ++i) {
      const OverlapRun& run = runs[i];
      CollectiveModel coll(c, run.plan.gpus, coll_opt);
      const Report r = predict(run.model, c, run.plan, coll, compute[i], {}, false);
      const ReportErrors x = report_errors(r, run.measured);  // measured times are > 0 (checked above)
      const OverlapFit::Errors e{x.backward, x.comm_end, x.iteration};
      sq += e.backward * e.backward + e.comm_end * e.comm_end;
      if (per_bucket) sq += bucket_duration_error(r, run.measured);
      if (errs) errs->push_back(e);
    }
    return sq;
  };
  constexpr double kMaxDispatchUs = 2000;
  const double kMaxComm = kMaxFittedAllreduceSharing, kMaxBw = kMaxFittedBandwidthFactor;
  const Point given{cluster.comm_compute_sharing, cluster.dispatch_overhead_us, cluster.allreduce_sharing,
                    cluster.job_bandwidth_factor};
  Point best = given;
  double best_sq = std::numeric_limits<double>::infinity();
  // One axis of the grid: from lo to hi by step where fitted, the best value so far else.
  struct Axis {
    double lo, hi, step;
  };
  auto values = [](bool fitted, Axis a, double kept) {
    if (!fitted) return std::vector<double>{kept};
    std::vector<double> v;
    const int n = int(std::lround((a.hi - a.lo) / a.step));
    for (int i = 0; i <= n; ++i) v.push_back(a.lo + i * a.step);
    return v;
  };
  auto search = [&](Axis sigma, Axis comm, Axis dispatch, Axis bw) {
    const Point at = best;
    for (double s : values(fit_what.sharing, sigma, at.sigma))
      for (double k : values(fit_what.allreduce_sharing, comm, at.comm.value_or(0)))
        for (double d : values(fit_what.dispatch, dispatch, at.dispatch))
          for (double f : values(fit_what.bandwidth, bw, at.bw)) {
            const Point p{s, d, fit_what.allreduce_sharing ? std::optional<double>(k) : at.comm, f};
            const double sq = evaluate(p, nullptr);
            if (sq < best_sq) {
              best_sq = sq;
              best = p;
            }
          }
  };
  // Around the best point so far: +-width, by step, within [lo, hi].
  auto around = [&](double v, double width, double step, double hi, double lo = 0) {
    return Axis{std::max(lo, v - width), std::min(hi, v + width), step};
  };
  // A step moves bytes no faster than a back-to-back sweep on idle ranks: a fit below 1
  // would make up for a sweep that is off, not describe the step.
  constexpr double kMinBw = 1;
  if (!per_bucket) {
    search({0, 1, 0.05}, {}, {0, kMaxDispatchUs, 20}, {});
    search(around(best.sigma, 0.05, 0.005, 1), {}, around(best.dispatch, 20, 0.5, kMaxDispatchUs), {});
  } else {
    // The bandwidth factor's first pass is coarser (by 0.25 from 1) than the other axes',
    // so that four axes take seconds.
    search({0, 1, 0.05}, {0, kMaxComm, 0.25}, {0, kMaxDispatchUs, 100}, {kMinBw, kMaxBw, 0.25});
    search(around(best.sigma, 0.05, 0.01, 1), around(best.comm.value_or(0), 0.25, 0.025, kMaxComm),
           around(best.dispatch, 100, 10, kMaxDispatchUs), around(best.bw, 0.25, 0.025, kMaxBw, kMinBw));
    search(around(best.sigma, 0.01, 0.002, 1), around(best.comm.value_or(0), 0.025, 0.005, kMaxComm),
           around(best.dispatch, 10, 1, kMaxDispatchUs), around(best.bw, 0.025, 0.005, kMaxBw, kMinBw));
  }
  OverlapFit fit;
  fit.sigma = best.sigma;
  fit.dispatch_us = best.dispatch;
  fit.allreduce_sharing = best.comm;
  fit.bandwidth_factor = best.bw;
  fit.dispatch_at_bound = fit_what.dispatch && best.dispatch >= kMaxDispatchUs;
  fit.sigma_at_bound = fit_what.sharing && best.sigma >= 1 - 1e-9;
  fit.allreduce_sharing_at_bound = fit_what.allreduce_sharing && best.comm.value_or(0) >= kMaxComm - 1e-9;
  fit.bandwidth_at_bound = fit_what.bandwidth && best.bw >= kMaxBw - 1e-9;
  evaluate(given, &fit.before);
  evaluate(best, &fit.after);
  return fit;
}

std::vector<double> holdout_errors(const Algorithm& a, const Sweep& s, double launch_s, int max_segments,
                                   double tolerance) {
  std::vector<bool> use(s.points.size());
  for (size_t i = 0; i < use.size(); ++i) use[i] = i % 2 == 0;
  const SegmentedFit half = fit_segments(a, s, launch_s, max_segments, tolerance, use);
  std::vector<double> errors;
  for (size_t i = 1; i < s.points.size(); i += 2)
    errors.push_back(std::abs(half.predicted_s[i] - s.points[i].seconds) / s.points[i].seconds);
  return errors;
}

std::string degenerate_fit(const SegmentFit& seg, bool largest, double tolerance) {
  const Calibration& k = seg.k;
  if (!(k.alpha_us > 0) && !(k.beta_us_per_MB > 0) && !(k.gamma_us_per_MB > 0)) return "every constant at its bound 0";
  if (largest && !(k.beta_us_per_MB > 0) && !(k.gamma_us_per_MB > 0))
    return "beta at its bound 0 for the largest sizes (infinite bandwidth): too few or too noisy sizes";
  if (seg.mean_rel_err > 4 * tolerance) {
    char b[96];
    std::snprintf(b, sizeof b, "mean error %.1f %% above 4 x the tolerance", 100 * seg.mean_rel_err);
    return b;
  }
  return "";
}

void restrict_sizes(std::vector<Sweep>& sweeps, double lo, double hi, const std::string& origin) {
  for (Sweep& s : sweeps) {
    std::erase_if(s.points, [&](const SweepPoint& p) { return p.bytes < lo || p.bytes > hi; });
    if (s.points.size() < 2) throw InputError(origin + ": fewer than two sizes of " + s.algorithm + " in that range");
  }
}

std::vector<CommCalibration> calibrate_communication(Cluster& cluster, const std::vector<Sweep>& sweeps,
                                                     const CommCalibrationOptions& o) {
  std::vector<CommCalibration> out;
  for (const Sweep& s : sweeps) {
    const Algorithm& algo = find_algorithm(s.algorithm, o.source + ": algorithm");
    CommCalibration c{s.algorithm, fit_segments(algo, s, o.launch_s, o.max_segments, o.tolerance), {}, {}, {}};
    if (o.holdout) {
      const std::vector<double> e = holdout_errors(algo, s, o.launch_s, o.max_segments, o.tolerance);
      if (!e.empty()) {
        c.holdout_mean = std::accumulate(e.begin(), e.end(), 0.0) / double(e.size());
        c.holdout_max = *std::max_element(e.begin(), e.end());
      }
    }
    for (const SegmentFit& seg : c.fit.segments)
      c.degenerate.push_back(degenerate_fit(seg, &seg == &c.fit.segments.back(), o.tolerance));
    cluster.calibrated[s.algorithm] = c.fit.constants();
    char err[32];
    std::snprintf(err, sizeof err, "%.1f %%", 100 * c.fit.mean_rel_err);
    cluster.provenance["calibrated." + s.algorithm] =
        "fuseplan calibrate: " + o.source + ", " + std::to_string(s.points.size()) + " sizes on " +
        std::to_string(s.ranks) + " ranks in " + std::to_string(c.fit.segments.size()) + " range(s), mean error " + err;
    out.push_back(std::move(c));
  }
  cluster.description += " (calibrated: " + o.source + ")";
  return out;
}

void apply_overlap_fit(Cluster& c, const OverlapFit& fit, OverlapTargets fitted, const std::string& sources) {
  const std::string provenance = "fuseplan calibrate: fitted to " + sources;
  c.comm_compute_sharing = fit.sigma;
  c.dispatch_overhead_us = fit.dispatch_us;
  c.allreduce_sharing = fit.allreduce_sharing;
  c.job_bandwidth_factor = fit.bandwidth_factor;
  if (fitted.sharing) c.provenance.erase("comm_compute_sharing");
  if (fitted.sharing && fit.sigma > 0) c.provenance["comm_compute_sharing"] = provenance;
  if (fitted.dispatch) c.provenance.erase("dispatch_overhead_us");
  if (fitted.dispatch && fit.dispatch_us > 0) c.provenance["dispatch_overhead_us"] = provenance;
  if (fitted.allreduce_sharing) c.provenance["allreduce_sharing"] = provenance;  // 0 is written too
  if (fitted.bandwidth) c.provenance.erase("job_bandwidth_factor");
  if (fitted.bandwidth && fit.bandwidth_factor != 1) c.provenance["job_bandwidth_factor"] = provenance;
}

std::vector<ClassFit> fit_compute_classes(const Cluster& cluster, const Model& m, int batch, Precision p) {
  std::vector<ClassFit> fits;
  for (int ki = 0; ki < kComputeClassCount; ++ki) {
    const ComputeClass k = ComputeClass(ki);
    std::vector<size_t> layers;
    double measured = 0;
    for (size_t l = 0; l < m.layers.size(); ++l) {
      const Layer& layer = m.layers[l];
      if (compute_class_of(layer) != k || layer.fwd_flops + layer.bwd_flops <= 0) continue;
      if (!layer.measured)
        throw InputError(field("profile") + ": layer " + layer.name + " has no measured time (the profile must cover every layer)");
      layers.push_back(l);
      const double scale = double(batch) / layer.measured->batch;
      measured += (layer.measured->fwd_us + layer.measured->bwd_us) * 1e-6 * scale;
    }
    if (layers.empty()) continue;
    // The class's forward + backward roofline on cluster c.
    auto class_time = [&](const Cluster& c) {
      double t = 0;
      for (size_t l : layers) {
        const LayerTime lt = roofline_time(m, l, c, batch, p);
        t += lt.fwd_s + lt.bwd_s;
      }
      return t;
    };
    ClassFit fit;
    fit.k = k;
    fit.layers = static_cast<int>(layers.size());
    fit.measured_s = measured;
    fit.before_s = class_time(cluster);
    // Which term sets the class's time under the cluster as given: each alone, the other free.
    Cluster trial = cluster;
    trial.device.by_kind[k].memory[p] = 1e9;
    const double flops_s = class_time(trial);
    trial = cluster;
    trial.device.by_kind[k].compute[p] = 1e9;
    fit.memory = class_time(trial) > flops_s;
    trial = cluster;
    auto predicted = [&](double value) {
      if (fit.memory) trial.device.by_kind[k].memory[p] = value;
      else trial.device.by_kind[k].compute[p] = value;
      return class_time(trial);
    };
    // The roofline falls as the efficiency grows: bisect on a log scale.
    const double lo_bound = 1e-4, hi_bound = fit.memory ? 1.0 : kMaxClassEfficiency;
    const std::string of = fit.memory ? " of the memory bandwidth" : " x peak FLOP/s";
    if (measured < predicted(hi_bound)) {
      fit.value = hi_bound;
      fit.bound = "measured faster than the roofline at " + formatted(hi_bound, "%g") + of;
    } else if (measured > predicted(lo_bound)) {
      fit.value = lo_bound;
      fit.bound = "measured slower than the roofline at " + formatted(lo_bound, "%g") + of;
    } else {
      double lo = std::log(lo_bound), hi = std::log(hi_bound);
      for (int i = 0; i < 100; ++i) {
        const double mid = (lo + hi) / 2;
        (predicted(std::exp(mid)) > measured ? lo : hi) = mid;
      }
      fit.value = std::exp((lo + hi) / 2);
    }
    fit.after_s = predicted(fit.value);
    fits.push_back(fit);
  }
  return fits;
}

void apply_compute_fit(Cluster& cluster, const std::vector<ClassFit>& fits, Precision p, const std::string& source) {
  for (const ClassFit& f : fits) {
    ClassEfficiency& e = cluster.device.by_kind[f.k];
    if (f.memory) e.memory[p] = f.value;
    else e.compute[p] = f.value;
    cluster.provenance["device.by_kind." + std::string(compute_class_name(f.k))] =
        source + ": " + count_of(f.layers, "layer") +
        (f.bound.empty() ? "" : " (at its bound: " + f.bound + "; the closest the roofline comes)");
  }
}

}  // namespace fuseplan
