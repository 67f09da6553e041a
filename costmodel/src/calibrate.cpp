#include "fuseplan/costmodel/calibrate.hpp"

#include "fuseplan/costmodel/compare.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"
#include "fuseplan/models/zoo.hpp"

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

namespace {
// A file that the option field(`option`) names, parsed; a bad one is named by the option
// and the path.
nlohmann::json parse_option_file(const std::string& option, const std::string& path) {
  try {
    return parse_json_file(path);
  } catch (const InputError& e) {
    throw InputError(field(option) + " " + e.text());
  }
}
void require_schema(JsonObject& r, const std::string& schema) {
  if (r.string("schema") != schema) r.fail("schema", "must be \"" + schema + "\"");
}
}  // namespace

std::vector<Sweep> load_sweep(const std::string& path) {
  const std::string origin = field("calibrate.sweep") + " " + path;
  const nlohmann::json j = parse_option_file("calibrate.sweep", path);
  JsonObject r(j, origin);
  require_schema(r, "fuseplan.sweep/1");
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

namespace {

// Whether a layer of class `k` in `m` takes a time the efficiency fitted moves: one with
// FLOPs for compute_efficiency, any priced layer (not a view) for memory_efficiency.
bool has_priced_layer(const Model& m, ComputeClass k, bool memory) {
  return std::any_of(m.layers.begin(), m.layers.end(), [&](const Layer& l) {
    return compute_class_of(l) == k && !l.attrs.view && (memory || l.fwd_flops + l.bwd_flops > 0);
  });
}

// A library error about a setting the file gives: its field names as the file's keys
// (the last part of each name), the leading one left out (the caller names the path).
std::string as_in_file(const InputError& e) {
  std::string t = e.render([](std::string_view f) { return std::string(f.substr(f.rfind('.') + 1)); });
  if (const size_t colon = t.find(": "); colon != std::string::npos && t.find(' ') > colon) t.erase(0, colon + 2);
  return t;
}

const char* efficiency_key(bool memory) { return memory ? "memory_efficiency" : "compute_efficiency"; }
const char* fitted_key(const ThroughputMeasurement& m) {
  return m.overhead ? "kernel_overhead_us" : efficiency_key(m.memory);
}

void set_efficiency(Cluster& c, const ThroughputMeasurement& m, double value) {
  if (m.overhead) c.device.kernel_overhead_us = value;
  for (ComputeClass k : m.classes) {
    ClassEfficiency& e = c.device.by_kind[k];
    (m.memory ? e.memory : e.compute)[m.precision] = value;
  }
}

double rate_on(const Cluster& c, const ThroughputMeasurement& m) {
  return m.batch / single_gpu_step_s(m.model, c, m.batch, m.precision, m.loop, m.optimizer);
}

std::string class_names(const std::vector<ComputeClass>& ks) {
  if (ks.empty()) return "the fixed cost per layer pass";
  std::string s;
  for (ComputeClass k : ks) s += (s.empty() ? "" : ", ") + std::string(compute_class_name(k));
  return s;
}

// Levenberg-Marquardt from `x`, kept within [lo, hi]: the x whose residuals f(x) have the
// least sum of squares (zero where the system has a solution), with finite-difference
// derivatives. Stops when the residuals are at rounding level, when no damped step
// lowers them (at a bound, or settled), or after 200 iterations; returns the iterations.
int least_squares(const std::function<std::vector<double>(const std::vector<double>&)>& residuals,
                  std::vector<double>& x, const std::vector<double>& lo, const std::vector<double>& hi) {
  const size_t n = x.size();
  auto sq = [](const std::vector<double>& f) { return std::inner_product(f.begin(), f.end(), f.begin(), 0.0); };
  constexpr int kMaxIterations = 200;
  constexpr double kStep = 1e-7;  // of x, for the finite differences
  std::vector<double> f = residuals(x);
  double lambda = 1e-3;
  int iterations = 0;
  while (iterations < kMaxIterations && sq(f) > 1e-24 * double(f.size())) {
    ++iterations;
    std::vector<std::vector<double>> jac(f.size(), std::vector<double>(n));  // jac[i][j] = d f_i / d x_j
    for (size_t j = 0; j < n; ++j) {
      std::vector<double> xj = x;
      const double h = xj[j] + kStep <= hi[j] ? kStep : -kStep;
      xj[j] += h;
      const std::vector<double> fj = residuals(xj);
      for (size_t i = 0; i < f.size(); ++i) jac[i][j] = (fj[i] - f[i]) / h;
    }
    std::vector<std::vector<double>> a(n, std::vector<double>(n, 0.0));  // the normal matrix
    std::vector<double> g(n, 0.0);
    for (size_t i = 0; i < f.size(); ++i)
      for (size_t j = 0; j < n; ++j) {
        g[j] += jac[i][j] * f[i];
        for (size_t k = 0; k < n; ++k) a[j][k] += jac[i][j] * jac[i][k];
      }
    bool improved = false;
    while (!improved && lambda < 1e12) {
      std::vector<std::vector<double>> m = a;
      std::vector<double> d(n);
      for (size_t j = 0; j < n; ++j) {
        m[j][j] += lambda * (a[j][j] + 1e-12);
        d[j] = -g[j];
      }
      // Gaussian elimination (the damped normal matrix is positive definite).
      for (size_t p = 0; p < n; ++p)
        for (size_t r = p + 1; r < n; ++r) {
          const double q = m[r][p] / m[p][p];
          for (size_t k = p; k < n; ++k) m[r][k] -= q * m[p][k];
          d[r] -= q * d[p];
        }
      for (size_t p = n; p-- > 0;) {
        for (size_t k = p + 1; k < n; ++k) d[p] -= m[p][k] * d[k];
        d[p] /= m[p][p];
      }
      std::vector<double> xn(n);
      for (size_t j = 0; j < n; ++j) xn[j] = std::clamp(x[j] + d[j], lo[j], hi[j]);
      const std::vector<double> fn = residuals(xn);
      if (sq(fn) < sq(f)) {
        x = xn;
        f = fn;
        lambda = std::max(lambda / 10, 1e-12);
        improved = true;
      } else {
        lambda *= 10;
      }
    }
    if (!improved) break;
  }
  return iterations;
}

// A file a throughput file names (a model or a plan): a relative path not found from the
// working directory is taken from the throughput file's folder.
std::string beside(std::string name, const std::string& path) {
  if (!std::filesystem::path(name).is_absolute() && !std::filesystem::exists(name)) {
    const std::filesystem::path there = std::filesystem::path(path).parent_path() / name;
    if (std::filesystem::exists(there)) name = there.string();
  }
  return name;
}

// Where in its file a measurement sits ($.measurements[i]): `where` past its file.
std::string json_path_of(const ThroughputMeasurement& m) { return m.where.substr(m.where.rfind(": ") + 2); }

// A measurement of one GPU's training rate ($.measurements[i] without `plan`).
ThroughputMeasurement read_rate(JsonObject& o, const std::string& origin, const std::string& path,
                                const std::vector<ThroughputMeasurement>& out) {
  ThroughputMeasurement m;
  m.where = origin + ": " + o.path();
  ModelOptions options;
  if (auto opt = o.opt_object("options")) options = model_options_from_json(*opt);
  std::string model = o.string("model");
  if (names_a_file(model)) model = beside(model, path);
  try {
    m.model = load_model(model, options);
  } catch (const InputError& e) {
    throw InputError(origin + ": " + o.where("model") + ": " + as_in_file(e));
  }
  m.batch = static_cast<int>(o.integer("batch_per_gpu", 1, 1 << 24));
  m.precision = parse_precision(o.string("precision"), origin + ": " + o.where("precision"));
  m.samples_per_s = o.in_range("samples_per_s", 1e-6, kMaxMeasuredRate, "samples/s per GPU");
  m.loop.steps = static_cast<int>(o.opt_integer("accumulate", 1, kMaxAccumulationSteps).value_or(1));
  const std::string rule = o.opt_string("optimizer").value_or("lars");
  const auto kernels = o.opt_string("optimizer_kernels");
  const auto bytes = o.opt_in_range("optimizer_bytes", 1e-9, kMaxOptimizerBytesPerParam, "B per parameter");
  m.optimizer = optimizer_step(rule, kernels.value_or("fused"),
                               origin + ": " + o.where(kernels ? "optimizer_kernels" : "optimizer"),
                               bytes.has_value());
  if (bytes) m.optimizer.bytes_per_param = *bytes;
  const std::string kind = o.opt_string("efficiency").value_or("compute");
  if (kind != "compute" && kind != "memory")
    o.fail("efficiency", "unknown '" + kind + "' (valid: compute, memory)");
  m.memory = kind == "memory";
  const nlohmann::json& fit = o.array("fit");
  // An empty list holds the rate out: predicted and reported beside the fitted ones.
  for (size_t k = 0; k < fit.size(); ++k) {
    const std::string at = o.where("fit") + "[" + std::to_string(k) + "]";
    if (fit[k] == "kernel_overhead_us") {
      if (fit.size() > 1 || m.memory)
        throw InputError(origin + ": " + at + ": kernel_overhead_us is the device's, fitted alone (no class and "
                         "no efficiency beside it)");
      for (const ThroughputMeasurement& before : out)
        if (before.overhead)
          throw InputError(origin + ": " + at + ": kernel_overhead_us is fitted by " + json_path_of(before) +
                           " already");
      m.overhead = true;
      continue;
    }
    if (fit[k] == "compute_scale") {
      if (fit.size() > 1 || m.memory)
        throw InputError(origin + ": " + at + ": compute_scale is the framework's, fitted alone (no class and no "
                         "efficiency beside it)");
      for (const ThroughputMeasurement& before : out)
        if (before.fits_cluster())
          throw InputError(origin + ": " + at + ": compute_scale is a framework's speed on the cluster as given, and " +
                           json_path_of(before) + " fits the cluster's own values: fit them in a file of their own");
      m.scale = true;
      continue;
    }
    const auto cls = fit[k].is_string() ? parse_compute_class(fit[k].get<std::string>()) : std::nullopt;
    if (!cls)
      throw InputError(origin + ": " + at + ": not a layer class (valid: " + compute_class_list() +
                       "; or kernel_overhead_us, or compute_scale; compute_variation is fitted by a measurement "
                       "with a plan)");
    if (std::find(m.classes.begin(), m.classes.end(), *cls) != m.classes.end())
      throw InputError(origin + ": " + at + ": " + std::string(compute_class_name(*cls)) + " is named twice");
    if (!has_priced_layer(m.model, *cls, m.memory))
      throw InputError(origin + ": " + at + ": " + m.model.name + " has no layer of class " +
                       std::string(compute_class_name(*cls)) + (m.memory ? "" : " with FLOPs") +
                       " (a prediction's compute_by_class lists the classes it holds)");
    for (const ThroughputMeasurement& b : out)
      if (b.precision == m.precision && b.memory == m.memory &&
          std::find(b.classes.begin(), b.classes.end(), *cls) != b.classes.end())
        throw InputError(origin + ": " + at + ": " + std::string(compute_class_name(*cls)) + "'s " +
                         efficiency_key(m.memory) + " at " + std::string(precision_name(m.precision)) +
                         " is fitted by " + json_path_of(b) + " already (one value per class and precision)");
    m.classes.push_back(*cls);
  }
  if (m.fits_cluster())
    for (const ThroughputMeasurement& before : out)
      if (before.scale)
        throw InputError(origin + ": " + o.where("fit") + ": " + json_path_of(before) + " fits compute_scale, a "
                         "framework's speed on the cluster as given: fit the cluster's own values in a file of "
                         "their own");
  m.source = o.opt_string("source").value_or("");
  o.finish();
  return m;
}

// A measured scaling efficiency of a plan's training ($.measurements[i] with `plan`).
ScalingMeasurement read_scaling(JsonObject& o, const std::string& origin, const std::string& path) {
  for (const char* key : {"model", "options", "batch_per_gpu", "precision", "samples_per_s", "accumulate",
                          "optimizer", "optimizer_kernels", "optimizer_bytes", "efficiency"})
    if (o.has(key))
      o.fail(key, "a measurement with a plan takes its model, batch, precision and training loop from the plan "
                  "(give the plan and scaling_efficiency)");
  ScalingMeasurement m;
  m.where = origin + ": " + o.path();
  m.plan_path = o.string("plan");
  try {
    m.plan = load_plan(beside(m.plan_path, path));
    m.model = load_model(plan_model_ref(m.plan), m.plan.model_options);
    validate_plan(m.plan, m.model, m.plan_path);
  } catch (const InputError& e) {
    throw InputError(origin + ": " + o.where("plan") + " " + m.plan_path + ": " + as_in_file(e));
  }
  if (m.plan.gpus < 2)
    o.fail("plan", "a scaling efficiency is measured on more than one GPU (" + m.plan_path + " has " +
                       std::to_string(m.plan.gpus) + ")");
  m.efficiency = o.in_range("scaling_efficiency", 1e-6, kMaxMeasuredScaling,
                            "(the rate on the plan's GPUs over as many times the rate on one)");
  const nlohmann::json& fit = o.array("fit");
  for (size_t k = 0; k < fit.size(); ++k) {
    bool& fits = fit[k] == "compute_variation" ? m.fits_variation : m.fits_overhead;
    if ((fit[k] != "compute_variation" && fit[k] != "step_overhead") || fits)
      throw InputError(origin + ": " + o.where("fit") + "[" + std::to_string(k) + "]: a measurement with a plan fits "
                       "compute_variation (the cluster's wait for the slowest GPU), step_overhead (the plans' fixed "
                       "cost per step), each once, or nothing (empty: held out)");
    fits = true;
  }
  m.source = o.opt_string("source").value_or("");
  o.finish();
  return m;
}

// The framework's compute_scale at each precision that brings the rates naming it there
// closest to their measurements (least squares on the logs of their ratios, as the
// classes), on `c` as the classes left it; where one is fitted, every rate's prediction
// after it in `fit` (the held-out ones with their precision's scale).
void fit_compute_scale(const Cluster& c, const std::vector<ThroughputMeasurement>& ms, ThroughputFit& fit) {
  std::map<Precision, std::vector<size_t>> scaled;  // the rates naming it, per precision
  for (size_t i = 0; i < ms.size(); ++i)
    if (ms[i].scale) scaled[ms[i].precision].push_back(i);
  if (scaled.empty()) return;  // the rates after the classes stand
  Cluster framework = c;
  for (const auto& [p, rates] : scaled) {
    std::vector<double> x{0.0};  // log(1): the cluster's own speed
    const std::vector<double> lo{std::log(kMinComputeScale)}, hi{std::log(kMaxComputeScale)};
    auto errors = [&](const std::vector<double>& at) {
      framework.compute_scale = std::exp(at[0]);
      std::vector<double> f;
      for (size_t i : rates) f.push_back(std::log(rate_on(framework, ms[i]) / ms[i].samples_per_s));
      return f;
    };
    fit.iterations += least_squares(errors, x, lo, hi);
    const std::vector<double> f = errors(x);  // at the value found
    fit.compute_scale[p] = framework.compute_scale;
    for (size_t i : rates) fit.rows[i].value = framework.compute_scale;
    // At a bound, a rate still short of its measurement is beyond what a framework's
    // factor explains (or the input pipeline caps it).
    const bool at_bound = std::abs(x[0] - lo[0]) <= 1e-9 || std::abs(x[0] - hi[0]) <= 1e-9;
    for (size_t j = 0; j < rates.size() && at_bound; ++j)
      if (std::abs(f[j]) > 1e-6) {
        const ThroughputMeasurement& m = ms[rates[j]];
        throw InputError(m.where + ": " + formatted(m.samples_per_s, "%g") + " samples/s needs compute_scale " +
                         "beyond [" + formatted(kMinComputeScale, "%g") + ", " + formatted(kMaxComputeScale, "%g") +
                         "] on " + c.name + " (at " + formatted(framework.compute_scale, "%g") + ": " +
                         formatted(m.samples_per_s * std::exp(f[j]), "%.4g") + " samples/s): the cluster's own " +
                         "constants, or its input pipeline, are what is off");
      }
  }
  for (size_t i = 0; i < ms.size(); ++i) {
    const auto it = fit.compute_scale.find(ms[i].precision);
    framework.compute_scale = it == fit.compute_scale.end() ? c.compute_scale : it->second;
    fit.rows[i].rate_after = rate_on(framework, ms[i]);
  }
}

}  // namespace

ThroughputFile load_throughput_file(const std::string& path) {
  const std::string origin = field("calibrate.throughput") + " " + path;
  const nlohmann::json j = parse_option_file("calibrate.throughput", path);
  JsonObject r(j, origin);
  require_schema(r, "fuseplan.throughput/1");
  r.opt_string("description");
  const nlohmann::json& list = r.array("measurements");
  if (list.empty()) r.fail("measurements", "must hold at least one measurement");
  r.finish();
  ThroughputFile out;
  for (size_t i = 0; i < list.size(); ++i) {
    JsonObject o = element_object(list[i], origin, "$.measurements[" + std::to_string(i) + "]");
    if (o.has("plan")) {
      out.scaling.push_back(read_scaling(o, origin, path));
    } else {
      if (o.has("scaling_efficiency")) o.fail("scaling_efficiency", "needs `plan`: the training it was measured on");
      out.rates.push_back(read_rate(o, origin, path, out.rates));
    }
  }
  return out;
}

ThroughputFit fit_throughputs(const Cluster& cluster, const std::vector<ThroughputMeasurement>& ms) {
  Cluster c = cluster;
  ThroughputFit fit;
  for (const auto& m : ms) {
    if (!c.device.peak_TFLOPS.count(m.precision))
      throw InputError(m.where + ": cluster " + c.name + "'s device has no " +
                       std::string(precision_name(m.precision)) + " peak (device.peak_TFLOPS)");
    const double before = m.overhead     ? c.device.kernel_overhead_us
                          : m.scale      ? 1
                          : m.held_out() ? 0
                          : m.memory     ? c.device.memory_efficiency_of(m.classes.front(), m.precision)
                                         : c.device.compute_efficiency_of(m.classes.front(), m.precision);
    fit.rows.push_back({before, before, rate_on(c, m), 0});
  }
  std::vector<size_t> fitted;  // the measurements that fit a value of the cluster
  for (size_t i = 0; i < ms.size(); ++i)
    if (ms[i].fits_cluster()) fitted.push_back(i);
  // All values together, on the logs of the rates' ratios in the logs of the values: each
  // rate moves with every class its model holds, and two measurements may share their
  // models' classes (ResNet-18 fitting norms, ResNet-50 convolutions), which fitting one
  // value at a time can push apart to the bounds.
  const size_t n = fitted.size();
  std::vector<double> lo(n), hi(n), x(n);
  for (size_t j = 0; j < n; ++j) {
    const ThroughputMeasurement& m = ms[fitted[j]];
    lo[j] = std::log(m.overhead ? kMinThroughputOverheadUs : kMinThroughputEfficiency);
    hi[j] = std::log(m.overhead ? kMaxThroughputOverheadUs : m.memory ? 1.0 : kMaxClassEfficiency);
    // A device without a fixed cost (0) starts the fit at 1 us.
    const double start = fit.rows[fitted[j]].before;
    x[j] = std::clamp(std::log(m.overhead && start <= 0 ? 1.0 : start), lo[j], hi[j]);
  }
  auto errors = [&](const std::vector<double>& at) {
    std::vector<double> f(n);
    for (size_t j = 0; j < n; ++j) set_efficiency(c, ms[fitted[j]], std::exp(at[j]));
    for (size_t j = 0; j < n; ++j) f[j] = std::log(rate_on(c, ms[fitted[j]]) / ms[fitted[j]].samples_per_s);
    return f;
  };
  fit.iterations = least_squares(errors, x, lo, hi);
  errors(x);  // the cluster at the values found
  for (size_t j = 0; j < n; ++j) fit.rows[fitted[j]].value = std::exp(x[j]);
  for (size_t i = 0; i < ms.size(); ++i) fit.rows[i].rate_after = rate_on(c, ms[i]);
  for (size_t j = 0; j < n; ++j) {
    const size_t i = fitted[j];
    const ThroughputMeasurement& m = ms[i];
    if (std::abs(fit.rows[i].rate_after - m.samples_per_s) <= 1e-6 * m.samples_per_s) continue;
    const bool more = m.samples_per_s > fit.rows[i].rate_after;
    // The rate grows with an efficiency and falls as the fixed cost grows.
    if (std::abs(x[j] - (more != m.overhead ? hi[j] : lo[j])) > 1e-9) {
      std::string bounded;  // the other values the fit left at a bound, which keep this one from its rate
      for (size_t k = 0; k < n; ++k)
        if (k != j && (std::abs(x[k] - lo[k]) <= 1e-9 || std::abs(x[k] - hi[k]) <= 1e-9))
          bounded += (bounded.empty() ? "" : "; ") + class_names(ms[fitted[k]].classes) + " " +
                     fitted_key(ms[fitted[k]]) + " at its bound " + formatted(std::exp(x[k]), "%g") + " (" +
                     json_path_of(ms[fitted[k]]) + ")";
      throw InputError(m.where + ": " + formatted(m.samples_per_s, "%g") + " samples/s is not reached together with "
                       "the other measurements (" + formatted(fit.rows[i].rate_after, "%.4g") + " at " +
                       class_names(m.classes) + " " + fitted_key(m) + " " + formatted(fit.rows[i].value, "%.4g") +
                       (bounded.empty() ? "): measurements of models whose classes overlap contradict each other"
                                        : "; " + bounded + ")"));
    }
    throw InputError(m.where + ": " + formatted(m.samples_per_s, "%g") + " samples/s is " + (more ? "more" : "less") +
                     " than " + m.model.name + " trains on one GPU of " + cluster.name + " with " +
                     class_names(m.classes) + " at " + fitted_key(m) + " " +
                     formatted(fit.rows[i].value, "%g") + ", its bound: " + formatted(fit.rows[i].rate_after, "%.4g") +
                     " samples/s (the other classes, the optimizer step or the input pipeline set the rest)");
  }
  fit_compute_scale(c, ms, fit);
  return fit;
}

void apply_throughput_fit(Cluster& cluster, const std::vector<ThroughputMeasurement>& ms, const ThroughputFit& fit,
                          const std::string& how) {
  for (size_t i = 0; i < ms.size(); ++i) {
    const ThroughputMeasurement& m = ms[i];
    if (!m.fits_cluster()) continue;  // held out, or the framework's compute_scale
    set_efficiency(cluster, m, fit.rows[i].value);
    const std::string precision(precision_name(m.precision));
    const std::string what = "FITTED (" + how + "): " + m.model.name + " at batch " + std::to_string(m.batch) + ", " +
                             precision + ", " + formatted(m.samples_per_s, "%g") + " samples/s on one GPU" +
                             (m.classes.size() > 1 ? ", one value for " + class_names(m.classes) : "") +
                             (m.source.empty() ? "" : " (" + m.source + ")");
    if (m.overhead) cluster.provenance["device.kernel_overhead_us"] = what;
    for (ComputeClass k : m.classes)
      cluster.provenance["device.by_kind." + std::string(compute_class_name(k)) + "." + efficiency_key(m.memory) +
                         "." + precision] = what;
  }
}

namespace {

// The argument in [lo, hi] where f is least: a scan of 32 steps first (f need not have one
// minimum: the framework's cycle makes a step a staircase in the values), then golden
// sections around its best point, by the same steps every run.
double least_in(const std::function<double(double)>& f, double lo, double hi) {
  if (!(hi > lo)) return lo;
  constexpr int kScan = 32;
  const double step = (hi - lo) / kScan;
  double best = lo, best_f = f(lo);
  for (int k = 1; k <= kScan; ++k) {
    const double x = lo + step * k, fx = f(x);
    if (fx < best_f) {
      best = x;
      best_f = fx;
    }
  }
  double a = std::max(lo, best - step), b = std::min(hi, best + step);
  const double g = (std::sqrt(5.0) - 1) / 2;
  double x1 = b - g * (b - a), x2 = a + g * (b - a), f1 = f(x1), f2 = f(x2);
  for (int k = 0; k < 100 && b - a > 1e-12 * std::max(1.0, hi); ++k) {
    if (f1 <= f2) {  // the minimum is in [a, x2]: x1 becomes its upper inner point
      b = x2;
      x2 = x1;
      f2 = f1;
      x1 = b - g * (b - a);
      f1 = f(x1);
    } else {
      a = x1;
      x1 = x2;
      f1 = f2;
      x2 = a + g * (b - a);
      f2 = f(x2);
    }
  }
  return f(0.5 * (a + b)) <= best_f ? 0.5 * (a + b) : best;
}

}  // namespace

ScalingFit fit_scaling(const Cluster& cluster, const std::vector<ScalingMeasurement>& ms,
                       const std::map<Precision, double>& compute_scale) {
  ScalingFit fit;
  fit.variation_before = fit.variation = cluster.compute_variation;
  std::vector<Scenario> runs;
  for (const ScalingMeasurement& m : ms) {
    runs.push_back(bind_scenario(m.model, cluster, m.plan, {}, {}, m.where));
    if (const auto it = compute_scale.find(m.plan.compute); it != compute_scale.end())
      runs.back().cluster.compute_scale = it->second;
  }
  // Run i's scenario at compute_variation `cv`, its step overhead `overhead` where it fits
  // one (its plan's own otherwise).
  auto at = [&](size_t i, double cv, double overhead) -> Scenario& {
    runs[i].cluster.compute_variation = cv;
    runs[i].plan.step_overhead_s = ms[i].fits_overhead ? overhead : ms[i].plan.step_overhead_s;
    return runs[i];
  };
  auto efficiency = [&](size_t i, double cv, double overhead) {
    return predict(at(i, cv, overhead), false).scaling_efficiency;
  };
  std::vector<size_t> fitting;
  bool all_both = true;  // every run that fits fits both values
  std::set<int> counts;  // at these GPU counts
  for (size_t i = 0; i < ms.size(); ++i) {
    fit.given.push_back(predict(runs[i], false).scaling_efficiency);  // the cluster and plan as given
    if (ms[i].held_out()) continue;
    fitting.push_back(i);
    fit.variation_fitted = fit.variation_fitted || ms[i].fits_variation;
    fit.overhead_fitted = fit.overhead_fitted || ms[i].fits_overhead;
    all_both = all_both && ms[i].fits_variation && ms[i].fits_overhead;
    counts.insert(ms[i].plan.gpus);
  }
  // A run fitting one value alone pins it; runs fitting both at one count cannot tell them apart.
  if (fit.variation_fitted && fit.overhead_fitted && all_both && counts.size() == 1)
    throw InputError(ms[fitting.front()].where + ": compute_variation and step_overhead fitted together need runs "
                     "that fit both at two GPU counts or more (the wait for the slowest GPU grows with the count, a "
                     "fixed cost per step does not: at one count the two are one unknown)");
  auto squares = [&](double cv, double overhead) {
    double sum = 0;
    for (size_t i : fitting) sum += std::pow(efficiency(i, cv, overhead) - ms[i].efficiency, 2);
    return sum;
  };
  // Each value `what` that one run alone needs (the other value as given), over the runs
  // whose prediction moves with it (every fitting run moves with the cluster's wait, only
  // those fitting it with the step overhead): every efficiency falls as either value grows,
  // so below the smallest of them every prediction is above its run and the squares fall,
  // above the largest they rise; the least squares lie between. A run at or above its
  // prediction without the value needs none.
  auto own_range = [&](Calibrated what, double cv, double overhead) {
    std::pair<double, double> range{std::numeric_limits<double>::infinity(), 0};
    for (size_t i : fitting) {
      if (what == Calibrated::StepOverhead && !ms[i].fits_overhead) continue;
      double own = 0;
      if (ms[i].efficiency <= 1) {
        const EfficiencyFit one = fit_to_efficiency(at(i, cv, overhead), ms[i].efficiency, what);
        own = one.kind == EfficiencyFit::Kind::AtOrBelow ? 0 : one.value;
      }
      range = {std::min(range.first, own), std::max(range.second, own)};
    }
    return range;
  };
  // The compute_variation that fits best at step overhead `overhead`.
  auto best_variation = [&](double overhead) {
    const auto [lo, hi] = own_range(Calibrated::ComputeVariation, 0, overhead);
    return least_in([&](double cv) { return squares(cv, overhead); }, lo, hi);
  };
  if (fit.overhead_fitted) {
    // The overhead each run would need with no wait for the slowest GPU bounds it from
    // above; with the wait fitted beside it, from below by none.
    auto [lo, hi] = own_range(Calibrated::StepOverhead, fit.variation_fitted ? 0 : fit.variation, 0);
    if (fit.variation_fitted) lo = 0;
    fit.overhead_s = least_in(
        [&](double overhead) {
          return squares(fit.variation_fitted ? best_variation(overhead) : fit.variation, overhead);
        },
        lo, hi);
  }
  if (fit.variation_fitted) fit.variation = best_variation(fit.overhead_s);
  double sum = 0;
  for (size_t i = 0; i < ms.size(); ++i) {
    fit.after.push_back(efficiency(i, fit.variation, fit.overhead_s));
    if (!ms[i].held_out()) sum += std::pow(100 * (fit.after[i] - ms[i].efficiency), 2);
  }
  if (!fitting.empty()) fit.rms_points = std::sqrt(sum / double(fitting.size()));
  return fit;
}

void apply_scaling_fit(Cluster& cluster, const std::vector<ScalingMeasurement>& ms, const ScalingFit& fit,
                       const std::string& how) {
  if (!fit.variation_fitted) return;
  cluster.compute_variation = fit.variation;
  std::string on;
  for (const ScalingMeasurement& m : ms) {
    if (!m.fits_variation) continue;
    on += (on.empty() ? "" : "; ") + m.model.name + " on " + std::to_string(m.plan.gpus) + " GPUs (" + m.plan_path +
          "), " + formatted(100 * m.efficiency, "%.4g") + " % of linear";
    if (!m.source.empty()) on += " (" + m.source + ")";
  }
  cluster.provenance["compute_variation"] =
      "FITTED (" + how + "): least squares in points of scaling efficiency on " + on +
      (fit.overhead_fitted ? ", with a fixed cost per step of " + formatted(fit.overhead_s * 1e3, "%.4g") +
                                 " ms fitted beside it"
                           : "") +
      ". A relative standard deviation of each GPU's forward and backward time per step; a step waits for its "
      "slowest GPU";
}

}  // namespace fuseplan
