// The fusion tuner: the exact dynamic program and the baselines users know.
#include "fuseplan/costmodel/tuner.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <list>
#include <numeric>
#include <optional>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {
constexpr const char* kStrategyNames[] = {"optimal", "k-split", "per-tensor", "single", "horovod", "ddp", "mgwfbp"};
constexpr double kInf = std::numeric_limits<double>::infinity();
// The shared program by values (SharedProgram::run_values): breakpoints it may handle.
constexpr int64_t kValuesBudget = 100'000'000;
// k-split keeps one parent row per segment count; refuse tables larger than this.
constexpr int64_t kMaxKSplitCells = 100'000'000;
}  // namespace

const char* strategy_name(Strategy s) { return kStrategyNames[static_cast<int>(s)]; }

std::string strategy_names() {
  std::string out;
  for (const char* n : kStrategyNames) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

Strategy parse_strategy(const std::string& s, const std::string& flag) {
  for (Strategy st : kAllStrategies)
    if (s == strategy_name(st)) return st;
  throw InputError(flag + ": unknown strategy '" + s + "' (valid: " + strategy_names() + ")");
}

Fp32Tensors parse_fp32_tensors(const std::string& s, const std::string& flag) {
  if (s == "none") return Fp32Tensors::None;
  if (s == "norm") return Fp32Tensors::Norm;
  if (s == "norm+bias") return Fp32Tensors::NormAndBias;
  throw InputError(flag + ": unknown value '" + s + "' (valid: none, norm, norm+bias)");
}

const char* fp32_tensors_name(Fp32Tensors f) {
  switch (f) {
    case Fp32Tensors::None: return "none";
    case Fp32Tensors::Norm: return "norm";
    case Fp32Tensors::NormAndBias: return "norm+bias";
  }
  return "none";
}

namespace {

// Where the tuned plan's copies run, if it copies: Horovod fills a fusion buffer off the
// compute stream, DDP copies each gradient into its bucket in backward.
std::optional<PackOn> copies(const TuneOptions& opt) {
  switch (opt.packing) {
    case Packing::View: return std::nullopt;
    case Packing::Pack: return PackOn::Comm;
    case Packing::Inline: return PackOn::Compute;
    case Packing::Strategy: break;
  }
  if (opt.strategy == Strategy::Horovod) return PackOn::Comm;
  if (opt.strategy == Strategy::Ddp) return PackOn::Compute;
  return std::nullopt;
}

bool keeps_fp32(const ParamTensor& t, Fp32Tensors f) {
  bool norm = t.role == TensorRole::NormScale || t.role == TensorRole::NormShift;
  if (f == Fp32Tensors::Norm) return norm;
  if (f == Fp32Tensors::NormAndBias) return norm || t.role == TensorRole::Bias;
  return false;
}

void check_options(const TuneOptions& opt, int tensors) {
  if (opt.strategy == Strategy::KSplit && (opt.segments < 1 || opt.segments > tensors))
    throw InputError(field("tuner.segments") + ": " + std::to_string(opt.segments) + " buckets asked for, the model has " +
                     std::to_string(tensors) + " tensors (valid: 1.." + std::to_string(tensors) + ")");
  if (opt.strategy == Strategy::KSplit && int64_t(opt.segments) * (tensors + 1) > kMaxKSplitCells)
    throw InputError(field("tuner.segments") + ": " + std::to_string(opt.segments) + " x " + std::to_string(tensors) +
                     " tensors is too large a table for k-split; use " + field("tuner.strategy") + " optimal");
  if (opt.horovod_threshold_bytes < 0) throw InputError(field("tuner.threshold") + ": must be >= 0 bytes");
  if (!(opt.horovod_cycle_s >= 0) || !std::isfinite(opt.horovod_cycle_s))
    throw InputError(field("tuner.cycle_time") + ": must be >= 0 ms");
  if (opt.ddp_cap_bytes <= 0) throw InputError(field("tuner.ddp_cap") + ": must be > 0 bytes");
  if (opt.ddp_first_bytes <= 0) throw InputError(field("tuner.ddp_first") + ": must be > 0 bytes");
  if (opt.streams < 1) throw InputError(field("tuner.streams") + ": must be >= 1");
  if (opt.cast && opt.transfer == Precision::FP32) throw InputError(field("tuner.cast") + ": " + kNothingToCast);
  if (opt.cast == PackOn::Compute && opt.fp32 != Fp32Tensors::None)
    throw InputError(field("tuner.cast") + ": compute with " + field("tuner.fp32_tensors") + " " +
                     fp32_tensors_name(opt.fp32) + ": a bucket holding an FP32 tensor is not cast, so the casts in "
                     "backward would depend on the partition (use " + field("tuner.fp32_tensors") +
                     " none, or cast on comm)");
  check_accumulation(opt.accumulate);
  check_step_overhead(opt.step_overhead_s);
  if (opt.algorithm != "auto") find_algorithm(opt.algorithm);
}

// A sparse table over a growing array: append in O(log n), range minimum (value, index)
// in O(1) over any range of what has been appended.
class GrowingRangeMin {
 public:
  explicit GrowingRangeMin(int capacity) : levels_(floor_log2(std::max(capacity, 1)) + 1) {
    t_.assign(levels_, std::vector<std::pair<double, int>>(std::max(capacity, 1)));
  }
  void push(double v) {
    const int i = n_++;
    t_[0][i] = {v, i};
    for (int k = 1; k < levels_ && i - (1 << k) + 1 >= 0; ++k) {
      const int s = i - (1 << k) + 1;
      t_[k][s] = std::min(t_[k - 1][s], t_[k - 1][s + (1 << (k - 1))]);
    }
  }
  std::pair<double, int> min(int l, int r) const {  // inclusive, l <= r < size
    const int k = floor_log2(r - l + 1);
    return std::min(t_[k][l], t_[k][r - (1 << k) + 1]);
  }

 private:
  static int floor_log2(int v) { return 31 - __builtin_clz(static_cast<unsigned>(v)); }
  int levels_, n_ = 0;
  std::vector<std::vector<std::pair<double, int>>> t_;
};

// Bucket [i, j) of backward positions, costed exactly as the predictor costs it (its
// ready time is the latest of its gradients', a range maximum).
class BucketCoster {
 public:
  BucketCoster(const Model& m, const Cluster& c, const CollectiveModel& coll, const TuneOptions& opt,
               const std::vector<double>& ready)
      : cluster_(c), coll_(coll), opt_(opt), pack_(copies(opt) == PackOn::Comm),
        monotone_(coll.monotone(opt.algorithm)), copies_back_(copies(opt) == PackOn::Compute && coll.gpus() > 1),
        neg_ready_(static_cast<int>(ready.size())) {
    const int n = static_cast<int>(m.tensors.size());
    for (double r : ready) neg_ready_.push(-r);
    elems_.assign(n + 1, 0);
    fp32_.assign(n + 1, 0);
    for (int pos = 0; pos < n; ++pos) {
      const auto& t = m.tensors[m.tensor_at_backward(pos)];
      elems_[pos + 1] = elems_[pos] + t.numel;
      fp32_[pos + 1] = fp32_[pos] + keeps_fp32(t, opt.fp32);
    }
  }
  Precision transfer(int i, int j) const { return fp32_[j] > fp32_[i] ? Precision::FP32 : opt_.transfer; }
  double last_ready(int i, int j) const { return -neg_ready_.min(i, j - 1).first; }
  BucketTerms at(int i, int j) {
    ++evaluations;
    return bucket_terms(cluster_, coll_, last_ready(i, j), elems_[j] - elems_[i], opt_.algorithm, transfer(i, j), pack_,
                        opt_.cast);
  }
  int64_t elems(int i, int j) const { return elems_[j] - elems_[i]; }
  // What the copies on each allreduce's stream (copy in and out of a fusion buffer, cast
  // and cast back on comm) add per byte of the transfer type: linear in the bucket, so an
  // affine tail's slope grows by it.
  double copies_per_byte() const {
    const CommCopies one = comm_copies_s(cluster_, 1, opt_.transfer, pack_, opt_.cast, coll_.gpus());
    return (one.before_s + one.after_s) / bytes_per_element(opt_.transfer);
  }
  // Bucket [i, j)'s copy back after its allreduce (copy_back_s), 0 where the plan makes none.
  bool copies_back() const { return copies_back_; }
  double copy_back(int i, int j) const { return copies_back_ ? copy_in_backward_s(cluster_, elems(i, j)) : 0; }
  int tensors() const { return static_cast<int>(elems_.size()) - 1; }
  // A bound of R + C for bucket [i, j) and every larger bucket [i', j), i' < i: the terms
  // themselves when costs grow with the bucket, else the cost model's monotone lower bound
  // (NCCL's costs are not monotone: its tree correction factors).
  double grown_bound(int i, int j, const BucketTerms& t) const {
    if (monotone_) return t.ready_s + t.latency_s + t.bandwidth_s;
    return t.ready_s + coll_.lower_bound_s(opt_.algorithm, elems(i, j), transfer(i, j));
  }
  int64_t evaluations = 0;

 private:
  const Cluster& cluster_;
  const CollectiveModel& coll_;
  const TuneOptions& opt_;
  bool pack_, monotone_, copies_back_;
  GrowingRangeMin neg_ready_;  // of -ready: range maxima of the ready times
  std::vector<int64_t> elems_;
  std::vector<int> fp32_;
};

double end_after(double free_at, const BucketTerms& t) {
  return std::max(t.ready_s, free_at) + t.latency_s + t.bandwidth_s;  // as schedule_buckets
}

// The dynamic program over prefixes (DESIGN.md, "The overlap model"): best[j] is the
// earliest end of the last allreduce over any partition of positions [0, j) into
// `segments` buckets (0 = any number). The end of a bucket [i, j) after prefix i is
// max(best[i], R(i, j)) + C(i, j), nondecreasing in best[i], so prefixes combine
// exactly. Pruning: R and C only grow as the bucket grows (i decreases; costs are
// nondecreasing in bytes), so once R(i, j) + C(i, j) reaches the best end found, no
// larger bucket can beat it and the scan over i stops. NCCL's costs are not monotone in
// bytes (its tree correction factors): the scan then stops on a monotone lower bound of
// C instead (BucketCoster::grown_bound), which is as exact.
//
// With copies back (`copies`, CopiesBack) the same program keeps, per prefix, the earliest
// end among the partitions whose every bucket k meets E_k <= tau + kappa S_k, and is exact
// for that bound: a smaller end never delays a later bucket. Larger buckets only end later
// and have less before them, so once the bound fails for [i, j) it fails for every larger
// bucket and the scan stops. `objective` is infinity where no partition meets it.
//
// `table`, where given, receives the program's prefixes (Prefixes).
struct CopiesBack;
struct Prefixes;
// `stop_at`: a bound program gives up once the coster has evaluated that many bucket costs
// (`objective` NaN: not known).
std::vector<int> dynamic_program(BucketCoster& cost, int segments, double& objective,
                                 const CopiesBack* copies = nullptr, double tau = kInf, Prefixes* table = nullptr,
                                 int64_t stop_at = INT64_MAX);

// A dynamic program's prefixes: best[j], the earliest end of the last allreduce over the
// partitions of [0, j) (with one bucket fewer than asked, for k-split: those the last
// bucket follows), and the partition that gives it.
struct Prefixes {
  std::vector<double> best;
  std::vector<std::vector<int>> parent;  // per layer (one where the count is free), per prefix
  int layer = 0;                         // the layer `best` holds
  bool any = true;                       // any number of buckets

  std::vector<int> starts(int j) const {
    std::vector<int> s;
    for (int k = layer; j > 0; k = any ? 0 : k - 1) {
      j = parent[size_t(k)][size_t(j)];
      s.push_back(j);
    }
    std::reverse(s.begin(), s.end());
    return s;
  }
};

// A partition's buckets, their terms and their allreduces' ends, one after another.
struct ScheduledBucket {
  int begin, end;
  BucketTerms t;
  double finish;
};

std::vector<ScheduledBucket> schedule_partition(BucketCoster& cost, const std::vector<int>& starts) {
  std::vector<ScheduledBucket> bs;
  double free_at = 0;
  for (size_t k = 0; k < starts.size(); ++k) {
    const int j = k + 1 < starts.size() ? starts[k + 1] : cost.tensors();
    ScheduledBucket b{starts[k], j, cost.at(starts[k], j), 0};
    b.finish = free_at = end_after(free_at, b.t);
    bs.push_back(b);
  }
  return bs;
}

// DDP's copies back (copy_back_s): when backward has ended (at B), bucket k's average is
// copied back once its allreduce has ended (E_k) and the copy before it is done. Each copy
// costs kappa per element, so the last one ends at kappa T + max(B, max_k (E_k - kappa S_k))
// (T: every element; S_k: those before bucket k). The search minimises that end.
struct CopiesBack {
  double backward_end = 0;
  std::vector<double> before;  // kappa S at each backward position (0..n)

  CopiesBack(const BucketCoster& cost, double backward_end_s) : backward_end(backward_end_s) {
    for (int i = 0; i <= cost.tensors(); ++i) before.push_back(cost.copy_back(0, i));
  }
  // E_k - kappa S_k of a bucket that begins at `begin` and whose allreduce ends at `end`.
  double term(int begin, double end) const { return end - before[size_t(begin)]; }
  // max(B, max_k (E_k - kappa S_k)) of the partition `starts`, its allreduces one after another.
  double value(BucketCoster& cost, const std::vector<int>& starts) const {
    double v = backward_end;
    for (const auto& b : schedule_partition(cost, starts)) v = std::max(v, term(b.begin, b.finish));
    return v;
  }
  double copies_end(double value) const { return value + before.back(); }
};

std::vector<int> dynamic_program(BucketCoster& cost, int segments, double& objective, const CopiesBack* copies,
                                 double tau, Prefixes* table, int64_t stop_at) {
  const int n = cost.tensors();
  const bool any = segments == 0;
  const int layers = any ? 1 : segments;
  // Layer k: the best end with exactly k + 1 buckets (any number when `any`).
  std::vector<double> prev(n + 1, kInf), cur(n + 1, kInf);
  std::vector<std::vector<int>> parent(layers, std::vector<int>(n + 1, 0));
  for (int k = 0; k < layers; ++k) {
    if (table && !any && k == layers - 1 && k > 0) table->best = prev;  // k buckets: what the last one follows
    std::fill(cur.begin(), cur.end(), kInf);
    cur[0] = any ? 0 : kInf;
    // Exactly `segments` buckets: layer k covers at least k + 1 tensors and leaves at
    // least segments - k - 1 for the later buckets.
    // The last layer only needs the whole model.
    const int j_lo = any ? 1 : (k == layers - 1 ? n : k + 1);
    const int j_hi = any ? n : n - (segments - k - 1);
    for (int j = j_lo; j <= j_hi; ++j) {
      if (cost.evaluations > stop_at) {
        objective = std::numeric_limits<double>::quiet_NaN();
        return {};
      }
      if (!any && k == 0) {  // one bucket [0, j)
        const double end = end_after(0, cost.at(0, j));
        cur[j] = !copies || end <= tau ? end : kInf;
        continue;
      }
      const std::vector<double>& before = any ? cur : prev;  // ends of the shorter prefixes
      const int i_lo = any ? 0 : k;
      double best = kInf;
      for (int i = j - 1; i >= i_lo; --i) {
        BucketTerms t = cost.at(i, j);
        double end = end_after(before[i], t);
        const double limit = copies ? tau + copies->before[size_t(i)] : kInf;
        if (end < best && end <= limit) {
          best = end;
          parent[k][j] = i;
        }
        const double bound = cost.grown_bound(i, j, t);
        if (bound >= best || bound > limit) break;
      }
      cur[j] = best;
    }
    std::swap(prev, cur);
  }
  objective = prev[n];
  if (table) {
    if (any) table->best = prev;
    table->layer = any ? 0 : layers - 2;
    table->any = any;
    table->parent = parent;
  }
  if (!(objective < kInf)) return {};
  Prefixes walk{{}, std::move(parent), layers - 1, any};
  return walk.starts(n);
}

// The least bound tau that some partition meets. A bound for every partition first: its
// last bucket [s, n) ends no earlier than after the earliest prefix end best[s], and its
// copy follows, so the value is at least max(B, end(best[s], [s, n)) - kappa S_s) for the
// best s. Where the allreduces are backlogged and cost more per element than a copy, the
// last bucket's term is the largest, and the best prefix followed by the best last bucket
// meets that bound: the search ends there, after one pass over s. Otherwise the bound
// program runs, alternately just below the best value found (no partition meets it: that
// value is the least) and halfway to the lower bound; a met bound gives a partition whose
// own value becomes the upper end. It stops within 1e-12 of the least value. `best`: the
// partition whose allreduces end first (the program without a bound, `table` its
// prefixes). `objective`: the end of the copies back. The bound programs scan quadratically
// where the allreduces are backlogged (the affine-tail path has no bound), so they stop
// after kCopiesBudget bucket costs: `gap` is then how much lower the least value may be
// than the partition returned (0 where it is proven the least).
constexpr int64_t kCopiesBudget = 250'000;

std::vector<int> dynamic_program_copies(BucketCoster& cost, int segments, const CopiesBack& copies,
                                        const Prefixes& table, std::vector<int> best, double& objective,
                                        double& gap) {
  const int n = cost.tensors();
  const int64_t spent = cost.evaluations;  // before the bound programs
  double hi = copies.value(cost, best), lo = copies.backward_end;
  std::vector<std::pair<double, int>> last;  // (the bound of partitions whose last bucket is [s, n), s)
  for (int s = 0; s < n && !table.best.empty(); ++s)
    if (table.best[size_t(s)] < kInf)
      last.push_back({std::max(copies.backward_end, end_after(table.best[size_t(s)], cost.at(s, n)) -
                                                        copies.before[size_t(s)]), s});
  std::sort(last.begin(), last.end());
  if (!last.empty()) lo = std::max(lo, last.front().first);
  for (const auto& [bound, s] : last) {
    if (bound >= hi) break;
    std::vector<int> cand = table.starts(s);
    cand.push_back(s);
    const double v = copies.value(cost, cand);
    if (v < hi) {
      hi = v;
      best = std::move(cand);
    }
  }
  for (int round = 0; round < 200 && hi - lo > 1e-12 * std::max(hi, 1e-9); ++round) {
    const double tau = round % 2 == 0 ? hi - 1e-12 * std::max(hi, 1e-9) : lo + (hi - lo) / 2;
    double met = 0;
    std::vector<int> starts = dynamic_program(cost, segments, met, &copies, tau, nullptr, spent + kCopiesBudget);
    if (std::isnan(met)) break;  // the budget is spent
    if (met < kInf) {
      best = std::move(starts);
      hi = std::min(tau, copies.value(cost, best));
    } else {
      lo = tau;
    }
  }
  objective = copies.copies_end(copies.value(cost, best));
  gap = hi - lo > 1e-12 * std::max(hi, 1e-9) ? hi - lo : 0;
  return best;
}

// The same dynamic program (any number of buckets), faster when communication is
// backlogged. Beyond X bytes every algorithm's time is exactly affine, a_q + b_q x
// (AffineTail), so for a bucket [i, j) that large the candidates split in two:
//   caught up (best[i] <= R(i, j)): the end is R(i, j) + C(i, j), nondecreasing as the
//     bucket grows, so only the largest such i matters;
//   backlogged (best[i] > R(i, j)): the end is min over q of
//     (best[i] - b_q S_i) + a_q + b_q S_j, a range minimum per algorithm over i.
// Both sets are contiguous (best[] is nondecreasing in i, R(i, j) nonincreasing), found
// by bisection. Buckets below X are scanned exactly as in dynamic_program, with the same
// stopping rule. The chosen candidate's end is recomputed with the predictor's terms.
std::vector<int> dynamic_program_tails(BucketCoster& cost, std::vector<AffineTail> tails, int elem_bytes,
                                       double& objective, Prefixes* table = nullptr) {
  const int n = cost.tensors();
  std::vector<double> S(n + 1, 0);
  for (int i = 0; i < n; ++i) S[i + 1] = double(cost.elems(0, i + 1) * elem_bytes);
  double X = 2.0 * elem_bytes;  // two elements: every algorithm applies
  for (const auto& t : tails) X = std::max(X, t.from_bytes);
  // Keep the lower envelope beyond X: drop a tail another beats everywhere there.
  std::vector<AffineTail> env;
  for (const auto& q : tails) {
    bool dominated = false;
    for (const auto& p : tails)
      if (&p != &q && p.b <= q.b && p.a + p.b * X <= q.a + q.b * X &&
          (p.b < q.b || p.a + p.b * X < q.a + q.b * X || &p < &q))
        dominated = true;
    if (!dominated) env.push_back(q);
  }
  std::vector<GrowingRangeMin> g(env.size(), GrowingRangeMin(n + 1));
  std::vector<double> best(n + 1, 0);
  std::vector<int> parent(n + 1, 0);
  for (auto& t : g) t.push(0);
  for (int j = 1; j <= n; ++j) {
    double b = kInf;
    int arg = j - 1, i = j - 1;
    auto consider = [&](int k, const BucketTerms& t) {
      double end = end_after(best[k], t);
      if (end < b) {
        b = end;
        arg = k;
      }
    };
    bool stopped = false;
    for (; i >= 0 && S[j] - S[i] < X; --i) {
      BucketTerms t = cost.at(i, j);
      consider(i, t);
      if (t.ready_s + t.latency_s + t.bandwidth_s >= b) {
        stopped = true;
        break;
      }
    }
    if (!stopped && i >= 0) {
      // Far candidates [0, i]: find the last caught-up one, i0 (-1 if none).
      auto caught_up = [&](int k) {
        return best[k] <= cost.at(k, j).ready_s;
      };
      int lo = -1, hi = i + 1;  // caught_up(lo) holds (or lo = -1); caught_up(hi) fails (or hi = i + 1)
      while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        (caught_up(mid) ? lo : hi) = mid;
      }
      if (lo >= 0) consider(lo, cost.at(lo, j));
      if (lo + 1 <= i) {
        double v = kInf;
        int k = -1;
        for (size_t q = 0; q < env.size(); ++q) {
          auto [gv, gi] = g[q].min(lo + 1, i);
          double e = gv + env[q].a + env[q].b * S[j];
          if (e < v) {
            v = e;
            k = gi;
          }
        }
        if (k >= 0) consider(k, cost.at(k, j));
      }
    }
    best[j] = b;
    parent[j] = arg;
    for (size_t q = 0; q < env.size(); ++q) g[q].push(best[j] - env[q].b * S[j]);
  }
  objective = best[n];
  Prefixes walk{std::move(best), {std::move(parent)}, 0, true};
  std::vector<int> starts = walk.starts(n);
  if (table) *table = std::move(walk);
  return starts;
}

// Among the many partitions that tie with the optimum (everything hidden behind
// backward), prefer fewer buckets: walking forward, a bucket absorbs the next one when
// the schedule's last allreduce end does not grow. After a merge, the first later
// allreduce that ends no later than before lets every one after it do so too, which
// cuts the check short.
std::vector<int> merge_ties(BucketCoster& cost, const std::vector<int>& starts) {
  const std::vector<ScheduledBucket> scheduled = schedule_partition(cost, starts);
  std::list<ScheduledBucket> bs(scheduled.begin(), scheduled.end());
  const double last_finish = bs.back().finish;
  double before = 0;  // finish of the bucket before `cur`
  for (auto cur = bs.begin(); std::next(cur) != bs.end();) {
    auto next = std::next(cur);
    BucketTerms merged = cost.at(cur->begin, next->end);
    double f = end_after(before, merged);
    // Follow the later allreduces until one ends no later than it did (then all do).
    auto m = std::next(next);
    double chain = f;
    while (m != bs.end() && chain > std::prev(m)->finish) {
      chain = end_after(chain, m->t);
      ++m;
    }
    bool accept = m != bs.end() || chain <= last_finish;
    if (!accept) {
      before = cur->finish;
      cur = next;
      continue;
    }
    cur->end = next->end;
    cur->t = merged;
    cur->finish = f;
    bs.erase(next);
    for (auto k = std::next(cur); k != bs.end(); ++k) {  // refresh finishes until unchanged
      double nf = end_after(std::prev(k)->finish, k->t);
      if (nf == k->finish) break;
      k->finish = nf;
    }
  }
  std::vector<int> out;
  for (const auto& b : bs) out.push_back(b.begin);
  return out;
}

// merge_ties with copies back: a bucket absorbs the next one when the end of the copies
// (CopiesBack::value) does not grow. A candidate's value is the larger of the buckets'
// before it (a running maximum), the merged bucket's, and the later ones', followed until
// one ends no later than it did (from there on each ends no later, so their old values
// bound theirs: a merge is never taken on a value lower than its own).
std::vector<int> merge_ties_copies(BucketCoster& cost, const std::vector<int>& starts, const CopiesBack& copies) {
  std::vector<ScheduledBucket> bs = schedule_partition(cost, starts);
  std::vector<double> after;  // after[k]: the largest value of buckets k.. (0 past the end)
  auto refresh = [&] {
    after.assign(bs.size() + 1, 0);
    for (size_t k = bs.size(); k-- > 0;) after[k] = std::max(after[k + 1], copies.term(bs[k].begin, bs[k].finish));
  };
  refresh();
  double before = copies.backward_end;  // B and the values of the buckets before k
  for (size_t k = 0; k + 1 < bs.size();) {
    const double now = std::max(before, after[k]);
    const BucketTerms merged = cost.at(bs[k].begin, bs[k + 1].end);
    const double f = end_after(k ? bs[k - 1].finish : 0, merged);
    double v = std::max(before, copies.term(bs[k].begin, f)), chain = f;
    size_t m = k + 2;
    for (; m < bs.size() && chain > bs[m - 1].finish; ++m) {
      chain = end_after(chain, bs[m].t);
      v = std::max(v, copies.term(bs[m].begin, chain));
    }
    v = std::max(v, after[m]);
    if (v > now) {
      before = std::max(before, copies.term(bs[k].begin, bs[k].finish));
      ++k;
      continue;
    }
    bs[k].end = bs[k + 1].end;
    bs[k].t = merged;
    bs[k].finish = f;
    bs.erase(bs.begin() + static_cast<long>(k) + 1);
    for (size_t q = k + 1; q < bs.size(); ++q) bs[q].finish = end_after(bs[q - 1].finish, bs[q].t);
    refresh();
  }
  std::vector<int> out;
  for (const auto& b : bs) out.push_back(b.begin);
  return out;
}

// MG-WFBP (Shi, Chu, Li 2019; its reference code's merge rule): walking backward, the
// next gradient joins the open group when it is ready before the group's allreduce
// would end and either the allreduce has not started by then or waiting for it costs
// less than the startup latency a merge saves.
std::vector<int> mgwfbp(const std::vector<double>& ready, BucketCoster& cost) {
  const int n = static_cast<int>(ready.size());
  std::vector<int> starts{0};
  int g = 0;
  double prev_end = 0;
  BucketTerms cur = cost.at(0, 1);
  for (int t = 1; t < n; ++t) {
    const double start = std::max(prev_end, cur.ready_s);
    const double end = start + cur.latency_s + cur.bandwidth_s;
    const double alpha = cur.choice.launch_s + cur.choice.cost.latency_s;
    const double r = ready[t];
    bool merge = r < end && (start > r || r - start < alpha);
    if (!merge) {
      prev_end = end;
      g = t;
      starts.push_back(t);
    }
    cur = cost.at(g, t + 1);
  }
  return starts;
}

// With processor sharing (Cluster::sharing) communication stretches
// backward, so a bucket's ready time depends on the allreduces before it and the dynamic
// program's objective (free overlap) is only a lower bound. The search then refines its
// partition by hill climbing on the predictor's own schedule (schedule_shared): move a
// boundary anywhere between its neighbours, drop it, or (any bucket count) add one;
// take the best strict improvement until none is left. Starting points: the partitions
// given and one bucket.
class SharedSearch {
 public:
  SharedSearch(BucketCoster& cost, const Model& m, std::vector<double> steps_s, ProcessorSharing sigma, int streams)
      : cost_(cost), steps_(std::move(steps_s)), ready_step_(gradient_ready_steps(m)), sigma_(sigma),
        streams_(streams) {}

  // The end of the stretched backward and of the last allreduce, whichever is later, as
  // predict() computes them; with copies back, the end of the last copy.
  double objective(const std::vector<int>& starts) {
    const int n = cost_.tensors();
    work_ += int64_t(steps_.size() + starts.size());
    std::vector<SharedBucket> bs;
    std::vector<double> copy_back;
    for (size_t k = 0; k < starts.size(); ++k) {
      const int i = starts[k], j = k + 1 < starts.size() ? starts[k + 1] : n;
      BucketTerms t = cost_.at(i, j);
      int after = 0;
      for (int pos = i; pos < j; ++pos) after = std::max(after, ready_step_[pos]);
      bs.push_back({after, t.latency_s, t.bandwidth_s, static_cast<int>(k % streams_)});
      if (cost_.copies_back()) copy_back.push_back(cost_.copy_back(i, j));
    }
    return schedule_shared(steps_, bs, sigma_, 0, copy_back).copies_end_s;
  }

  // The best of the climbs from each of `seeds` (and, any bucket count, from one bucket).
  std::vector<int> refine(std::vector<std::vector<int>> seeds, bool keep_count, double& best_objective) {
    if (!keep_count) seeds.push_back({0});
    std::vector<int> best;
    best_objective = kInf;
    for (size_t k = 0; k < seeds.size(); ++k) {
      if (std::find(seeds.begin(), seeds.begin() + long(k), seeds[k]) != seeds.begin() + long(k)) continue;
      std::vector<int> s = climb(seeds[k], keep_count);
      const double v = objective(s);
      if (v < best_objective) {
        best = std::move(s);
        best_objective = v;
      }
    }
    return best;
  }

 private:
  std::vector<int> climb(std::vector<int> cur, bool keep_count) {
    const int n = cost_.tensors();
    double value = objective(cur);
    for (;;) {
      if (work_ > kClimbWork) return cur;  // out of budget: the best partition so far
      std::vector<int> best_move;
      double best_value = value;
      auto consider = [&](std::vector<int> cand) {
        if (work_ > kClimbWork) return;
        double v = objective(cand);
        if (v < best_value * (1 - 1e-12)) {
          best_value = v;
          best_move = std::move(cand);
        }
      };
      for (size_t b = 1; b < cur.size(); ++b) {
        const int lo = cur[b - 1] + 1, hi = b + 1 < cur.size() ? cur[b + 1] - 1 : n - 1;
        for (int p = lo; p <= hi; ++p) {
          if (p == cur[b]) continue;
          std::vector<int> cand = cur;
          cand[b] = p;
          consider(std::move(cand));
        }
        if (!keep_count) {
          std::vector<int> cand = cur;
          cand.erase(cand.begin() + static_cast<long>(b));
          consider(std::move(cand));
        }
      }
      if (!keep_count)
        for (int p = 1; p < n; ++p) {
          auto at = std::lower_bound(cur.begin(), cur.end(), p);
          if (at != cur.end() && *at == p) continue;
          std::vector<int> cand = cur;
          cand.insert(cand.begin() + (at - cur.begin()), p);
          consider(std::move(cand));
        }
      if (best_move.empty()) return cur;
      cur = std::move(best_move);
      value = best_value;
    }
  }

  // The steps and buckets the climb may schedule (about a second's worth): past it, a
  // climb takes the best move found and stops.
  static constexpr int64_t kClimbWork = 100'000'000;

  BucketCoster& cost_;
  std::vector<double> steps_;
  std::vector<int> ready_step_;
  ProcessorSharing sigma_;
  int streams_;
  int64_t work_ = 0;
};

// Under processor sharing on one stream, with no copies back, the search stays exact
// (docs/tuner.md, "Under processor sharing"): optimal by one function of the queued work
// per prefix (run_values), k-split by a dynamic program over prefixes that keeps a Pareto
// front of states instead of one best end (run). After the buckets of a prefix [0, i),
// backward has ended step P_i (the latest ready step of its gradients) at wall time W,
// and the allreduces still queued at W hold X seconds of work at full speed: they run
// back to back from W (one stream, each bucket's copies on it part of its work), so the
// busy time after W is one interval. Backward then runs at 1 / (1 + sigma.compute) while
// X > 0 and the allreduces at 1 / (1 + sigma.comm) while backward runs, so the next
// bucket's ready time R, the work X' left then, and
// every later end are nondecreasing in both W and X: a state with no larger W and no
// larger X never ends later, and the states of a prefix that no other dominates are all
// the program needs. Pruning: an upper bound U (a partition's own end) discards a state
// whose lower bound on the last end exceeds it, and the scan over i stops once even the
// unstretched ready time of step P_j plus a lower bound of the bucket's cost does.
class SharedProgram {
 public:
  // Where the program is exact: one stream, no copies back after backward. (Copies on a
  // bucket's stream are part of its work.)
  static bool exact_for(const BucketCoster& cost, const TuneOptions& opt) {
    return opt.streams == 1 && !cost.copies_back();
  }

  SharedProgram(BucketCoster& cost, const Model& m, const std::vector<double>& steps_s, ProcessorSharing sigma)
      : cost_(cost), sigma_(sigma) {
    for (double s : steps_s) cum_.push_back((cum_.empty() ? 0 : cum_.back()) + s);
    const std::vector<int> step = gradient_ready_steps(m);
    prefix_step_.assign(step.size() + 1, -1);
    for (size_t p = 0; p < step.size(); ++p) prefix_step_[p + 1] = std::max(prefix_step_[p], step[p]);
  }

  // Any number of buckets, by values instead of fronts. The dynamics from a state hold no
  // absolute time, so W only shifts what follows: the best end from a state (W, X) after
  // [0, j) is W + v_j(X), one function of the queued work per prefix, continuous, piecewise
  // linear and nondecreasing. v_n: the steps after the last gradient's with X queued
  // beside them. v_j: the least over next buckets [j, k) of W' + v_k(X' + C(j, k)), where,
  // with w the bucket's steps and x* = w (1 + sigma_compute) / (1 + sigma_comm), up to x*
  // the queued work drains before backward has done them (a line: w + (1 + sigma_comm)
  // sigma_compute / (1 + sigma_compute) X + v_k(C)), and past x* backward is done first
  // (w (1 + sigma_compute) + v_k(X - x* + C): v_k moved). Each v_j is the exact lower
  // envelope of those pieces, and the partition follows from X = 0 at position 0, each
  // bucket the one whose value is least (ties: the larger bucket). Empty past `budget`
  // (kCostWork per bucket priced, one per envelope point handled).
  //
  // `bound`: an end some partition meets. A state after [0, j) with more than
  // bound - (step P_j's unslowed end) queued ends later, so v_j is kept exact up to there
  // only and continued with slope 1 + sigma_comm, which is never below it (X + d queued
  // ends no later than X queued d (1 + sigma_comm) later).
  std::vector<int> run_values(int64_t budget, double bound) {
    const int n = cost_.tensors();
    std::vector<Piecewise> v(size_t(n) + 1);
    auto clip = [&](Piecewise& f, int j) {
      const double x_max = std::max(0.0, bound - done_at(prefix_step_[size_t(j)]));
      if (f.x.back() <= x_max && f.slope <= 1 + sigma_.comm) return;
      const double y = f.at(x_max);
      while (f.x.size() > 1 && f.x.back() >= x_max) {
        f.x.pop_back();
        f.y.pop_back();
      }
      if (f.x.back() < x_max) {
        f.x.push_back(x_max);
        f.y.push_back(y);
      }
      f.slope = 1 + sigma_.comm;
    };
    next_bucket(Piecewise{{0}, {0}, 1}, after_last_gradient(), 0, v[size_t(n)]);  // the steps left, no bucket
    clip(v[size_t(n)], n);
    int64_t work = 0;
    Piecewise f, merged;
    for (int j = n - 1; j >= 0; --j) {
      Piecewise& best = v[size_t(j)];
      for (int k = j + 1; k <= n; ++k) {
        if (!(v[size_t(k)].y[0] < kInf)) continue;  // nothing after k ends in time
        const BucketTerms t = cost_.at(j, k);
        work += kCostWork;
        // The bucket and every larger one end after `bound`: step P_k's unslowed end, then
        // at least their least cost.
        if (done_at(prefix_step_[size_t(k)]) + cost_.grown_bound(j, k, t) - t.ready_s > bound) break;
        next_bucket(v[size_t(k)], work_between(j, k), t.latency_s + t.bandwidth_s, f);
        clip(f, j);
        if (best.x.empty()) {
          std::swap(best, f);
        } else {
          lower_envelope(best, f, merged);
          std::swap(best, merged);
        }
        work += int64_t(best.x.size() + f.x.size());
        if (work > budget) return {};
      }
      if (best.x.empty()) best = Piecewise{{0}, {kInf}, 0};  // no bucket from here ends in time
    }
    if (!(v[0].at(0) < kInf)) return {};  // no partition ends by the bound (rounding)
    std::vector<int> starts;
    double x = 0;
    for (int j = 0; j < n;) {
      starts.push_back(j);
      std::vector<std::pair<double, State>> value;  // per k > j: the end, the state after
      double least = kInf;
      for (int k = j + 1; k <= n; ++k) {
        const BucketTerms t = cost_.at(j, k);
        State s = advance(State{0, x}, work_between(j, k));
        s.X += t.latency_s + t.bandwidth_s;
        value.push_back({s.W + v[size_t(k)].at(s.X), s});
        least = std::min(least, value.back().first);
      }
      int k = n;
      while (value[size_t(k - j - 1)].first > least * (1 + 1e-12)) --k;
      x = value[size_t(k - j - 1)].second.X;
      j = k;
    }
    return starts;
  }

  // The partition of exactly `segments` buckets (0: any number) whose last allreduce ends
  // first; `bound`: the end of a partition known to be reachable (pruning; infinity for
  // none). Empty where no partition ends by the bound, or past kStates (kCostWork per
  // bucket priced, one per state extended).
  std::vector<int> run(int segments, double bound) {
    const int n = cost_.tensors();
    const bool any = segments == 0;
    const int layers = any ? 1 : segments;
    // The least work below prices every bucket: past the budget already, no program.
    if (int64_t(n) * (n + 1) / 2 * kCostWork > kStates) return {};
    // fronts[k][j]: the states after exactly k + 1 buckets over [0, j) (any number: k = 0).
    std::vector<std::vector<Front>> fronts(layers, std::vector<Front>(n + 1));
    // The least allreduce work of the positions [j, n) over their partitions.
    std::vector<double> rest_comm(size_t(n) + 1, 0);
    for (int j = n - 1; j >= 0; --j) {
      rest_comm[size_t(j)] = kInf;
      for (int k = j + 1; k <= n; ++k) {
        const BucketTerms t = cost_.at(j, k);
        rest_comm[size_t(j)] = std::min(rest_comm[size_t(j)], t.latency_s + t.bandwidth_s + rest_comm[size_t(k)]);
      }
    }
    // The least work of a last bucket: it runs after the last gradient is ready.
    double last_cost = kInf;
    for (int k = n - 1; k >= 0; --k) {
      const BucketTerms t = cost_.at(k, n);
      last_cost = std::min(last_cost, t.latency_s + t.bandwidth_s);
    }
    // A lower bound of the objective from a state after [0, j): the work queued and the
    // least work of the positions left run after W; backward's remaining steps run too,
    // slowed while that work runs beside them (work done after backward ends only ends
    // later), and the last bucket runs after the last gradient is ready.
    const double stretch = sigma_.compute / (1 + sigma_.compute);
    auto tail_bound = [&](int j, const State& s) {
      if (j == n) return last_end(s);
      const double queued = s.X + rest_comm[size_t(j)], at = done_at(prefix_step_[j]);
      const double to_end = done_at(int(cum_.size()) - 1) - at, to_last = done_at(prefix_step_[n]) - at;
      return s.W + std::max({queued, to_end + queued * stretch,
                             to_last + (queued - last_cost) * stretch + last_cost});
    };
    for (int k = 0; k < layers; ++k) {
      const int j_lo = any ? 1 : (k == layers - 1 ? n : k + 1);
      const int j_hi = any ? n : n - (segments - k - 1);
      for (int j = j_lo; j <= j_hi; ++j) {
        Front& front = fronts[size_t(k)][size_t(j)];
        const double t0 = done_at(prefix_step_[j]);  // step P_j's end without sharing
        // The first of k-split's buckets begins at 0, the others after k tensors at least.
        const int i_lo = any ? 0 : k, i_hi = !any && k == 0 ? 0 : j - 1;
        for (int i = i_hi; i >= i_lo; --i) {
          const bool first = any ? i == 0 : k == 0;
          const BucketTerms t = cost_.at(i, j);
          states_ += kCostWork;
          const double c = t.latency_s + t.bandwidth_s;
          // This bucket and every larger one: no earlier W than step P_j's unslowed end, no
          // less work queued than the bucket's least cost.
          if (tail_bound(j, State{t0, cost_.grown_bound(i, j, t) - t.ready_s}) > bound) break;
          const Front& from = first ? origin_ : fronts[size_t(any ? 0 : k - 1)][size_t(i)];
          const double work = work_between(i, j);
          // States whose allreduces are done before backward is: they queue c alone, and
          // only the one with the earliest W counts.
          State drained{kInf, c};
          chain_.clear();  // the others, in the front's order: W rising, X falling
          for (size_t q = 0; q < from.size(); ++q) {
            State s = advance(from[q], work);
            s.parent = i;
            s.from = int(q);
            s.buckets = from[q].buckets + 1;
            if (s.X > 0) {
              s.X += c;
              if (tail_bound(j, s) <= bound && !dominated(front, s)) chain_.push_back(s);
            } else if (s.W < drained.W || (s.W == drained.W && s.buckets < drained.buckets)) {
              drained = s;
              drained.X = c;
            }
          }
          states_ += int64_t(from.size());
          if (states_ > kStates) return {};
          merge(front, chain_);
          if (drained.W < kInf && tail_bound(j, drained) <= bound) insert(front, drained);
        }
      }
    }
    const Front& last = fronts[size_t(layers - 1)][size_t(n)];
    if (last.empty()) return {};
    size_t best = 0;
    for (size_t q = 1; q < last.size(); ++q) {
      const double a = last_end(last[q]), b = last_end(last[best]);
      if (a < b || (a == b && last[q].buckets < last[best].buckets)) best = q;
    }
    std::vector<int> starts;
    int j = n, q = int(best);
    for (int k = layers - 1; j > 0; k = any ? 0 : k - 1) {
      const State& s = fronts[size_t(k)][size_t(j)][size_t(q)];
      starts.push_back(s.parent);
      j = s.parent;
      q = s.from;
    }
    std::reverse(starts.begin(), starts.end());
    return starts;
  }

 private:
  struct State {
    double W = 0, X = 0;  // step P's end; the allreduces' work queued then, at full speed
    int parent = 0, from = 0, buckets = 0;
  };
  using Front = std::vector<State>;  // by W ascending, X descending: none dominates another

  double done_at(int step) const { return step < 0 ? 0 : cum_[size_t(step)]; }

  static constexpr double kTol = 1e-13;  // relative: the envelopes' rounding
  // A bucket's cost, in the budgets' units (a point of an envelope, a state extended): it
  // takes about as long as that many.
  static constexpr int64_t kCostWork = 40;
  // A continuous piecewise-linear function on [0, infinity): through (x[m], y[m]), x[0] = 0,
  // then `slope` past x.back().
  struct Piecewise {
    std::vector<double> x, y;
    double slope = 0;
    double at(double X) const {
      if (X >= x.back()) return on(x.size() - 1, X);
      return on(size_t(std::upper_bound(x.begin(), x.end(), X) - x.begin()) - 1, X);
    }
    // The value at X on segment m (X at or past x[m]; the last: the line past x.back()).
    double on(size_t m, double X) const {
      if (m + 1 >= x.size()) return y.back() + slope * (X - x.back());
      return y[m] + (y[m + 1] - y[m]) * (X - x[m]) / (x[m + 1] - x[m]);
    }
  };

  // Backward's work at full speed after the last gradient is ready.
  double after_last_gradient() const { return done_at(int(cum_.size()) - 1) - done_at(prefix_step_.back()); }
  // Backward's work at full speed from step P_j to step P_k.
  double work_between(int j, int k) const {
    return done_at(prefix_step_[size_t(k)]) - done_at(prefix_step_[size_t(j)]);
  }

  // X -> W' + v(X' + c) for a bucket of cost c whose steps take w at full speed (run_values).
  void next_bucket(const Piecewise& v, double w, double c, Piecewise& f) const {
    const double slow_bwd = 1 + sigma_.compute, slow_comm = 1 + sigma_.comm;
    const double x_star = w * slow_bwd / slow_comm, base = v.at(c);
    f.x.assign(1, 0);
    f.y.assign(1, w + base);
    f.slope = v.slope;
    if (x_star > 0) {
      f.x.push_back(x_star);
      f.y.push_back(w * slow_bwd + base);
    }
    for (size_t m = 0; m < v.x.size(); ++m)
      if (v.x[m] > c) {
        f.x.push_back(v.x[m] - c + x_star);
        f.y.push_back(w * slow_bwd + v.y[m]);
      }
  }

  // The pointwise least of a and b, with the points where they cross, into `out`: one walk
  // over both functions' points.
  static void lower_envelope(const Piecewise& a, const Piecewise& b, Piecewise& out) {
    out.x.clear();
    out.y.clear();
    auto push = [&out](double x, double y) {
      const size_t m = out.x.size();
      if (m >= 2) {  // within rounding of the line through the two before: moves that point
        const double s1 = (out.y[m - 1] - out.y[m - 2]) / (out.x[m - 1] - out.x[m - 2]);
        if (std::abs(out.y[m - 2] + s1 * (x - out.x[m - 2]) - y) <= kTol * std::abs(y)) {
          out.x.back() = x;
          out.y.back() = y;
          return;
        }
      }
      out.x.push_back(x);
      out.y.push_back(y);
    };
    size_t ia = 0, ib = 0;
    double X = 0, da = a.y[0], db = b.y[0];
    for (;;) {
      push(X, std::min(da, db));
      const double xa = ia + 1 < a.x.size() ? a.x[ia + 1] : kInf, xb = ib + 1 < b.x.size() ? b.x[ib + 1] : kInf;
      const double next = std::min(xa, xb);
      if (!(next < kInf)) {  // past both last points, two lines: where they cross, if they do
        const double d = da - db, ds = a.slope - b.slope;
        out.slope = d < 0 || (d == 0 && ds < 0) ? a.slope : b.slope;
        if ((d > 0 && ds < 0) || (d < 0 && ds > 0)) {
          const double at = X - d / ds;
          if (at > X) {
            push(at, da + a.slope * (at - X));
            out.slope = std::min(a.slope, b.slope);
          }
        }
        return;
      }
      const double na = xa == next ? a.y[ia + 1] : a.on(ia, next);
      const double nb = xb == next ? b.y[ib + 1] : b.on(ib, next);
      // Differences within rounding are ties: no crossing.
      const double tol = kTol * std::max(std::abs(da), std::abs(na));
      const double d0 = std::abs(da - db) <= tol ? 0 : da - db, d1 = std::abs(na - nb) <= tol ? 0 : na - nb;
      if ((d0 < 0 && d1 > 0) || (d0 > 0 && d1 < 0)) {  // they cross inside
        const double at = X + (next - X) * d0 / (d0 - d1);
        if (at > X && at < next) push(at, std::min(a.on(ia, at), b.on(ib, at)));
      }
      ia += xa == next;
      ib += xb == next;
      X = next;
      da = na;
      db = nb;
    }
  }

  // Backward computes `work` seconds (at full speed) from state s while its queued
  // allreduces run: the state when backward is done.
  State advance(State s, double work) const {
    if (!(s.X > 0)) {
      s.W += work;
      return s;
    }
    const double slow_bwd = 1 + sigma_.compute, slow_comm = 1 + sigma_.comm;
    if (work * slow_bwd <= s.X * slow_comm) {  // backward ends first
      s.W += work * slow_bwd;
      s.X = std::max(0.0, s.X - work * slow_bwd / slow_comm);
    } else {  // the allreduces end first, then backward runs alone
      const double busy = s.X * slow_comm;
      s.W += busy + work - busy / slow_bwd;
      s.X = 0;
    }
    return s;
  }

  // The end of backward and of the last allreduce from a state over the whole model,
  // whichever is later (the search's objective, SharedSearch::objective): the steps after
  // the last gradient's still run beside the allreduces.
  double last_end(const State& s) const {
    const State b = advance(s, after_last_gradient());  // backward's end; the allreduces' work left then
    return b.W + b.X;
  }

  // The front's order: W rising, then X, then fewer buckets (ties keep the fewer).
  static bool before(const State& a, const State& b) {
    if (a.W != b.W) return a.W < b.W;
    if (a.X != b.X) return a.X < b.X;
    return a.buckets < b.buckets;
  }
  // Whether a state of the front is no later in W and X than s (ties: no more buckets).
  static bool dominated(const Front& front, const State& s) {
    auto at = std::upper_bound(front.begin(), front.end(), s, before);
    return at != front.begin() && std::prev(at)->X <= s.X;
  }
  // Adds s unless a state of the front dominates it, and drops the states s dominates.
  static void insert(Front& front, const State& s) {
    if (dominated(front, s)) return;
    auto at = std::upper_bound(front.begin(), front.end(), s, before);
    auto end = at;
    while (end != front.end() && end->X >= s.X) ++end;  // no smaller W, no smaller X
    at = front.erase(at, end);
    front.insert(at, s);
  }
  // Adds a chain of states in the front's order (W rising, X falling), keeping only the
  // states no other dominates: one pass over both.
  void merge(Front& front, const std::vector<State>& chain) {
    if (chain.size() < 2) {
      for (const State& s : chain) insert(front, s);
      return;
    }
    merged_.clear();
    double least_x = kInf;
    auto keep = [&](const State& s) {
      if (!(s.X < least_x)) return;  // an earlier state has no larger W and no larger X
      least_x = s.X;
      merged_.push_back(s);
    };
    size_t a = 0, b = 0;
    while (a < front.size() || b < chain.size())
      keep(b == chain.size() || (a < front.size() && before(front[a], chain[b])) ? front[a++] : chain[b++]);
    front.swap(merged_);
  }

  // The states the program may extend (its work), about a second's worth.
  static constexpr int64_t kStates = 40'000'000;

  BucketCoster& cost_;
  ProcessorSharing sigma_;
  int64_t states_ = 0;
  std::vector<State> chain_, merged_;  // scratch
  std::vector<double> cum_;       // backward's time at full speed to the end of each step
  std::vector<int> prefix_step_;  // P_j: the latest ready step of positions [0, j)
  Front origin_{State{}};         // before any bucket
};

}  // namespace

Tuner::Tuner(const Model& m, const Cluster& c, int gpus, int batch_per_gpu, Precision compute,
             CollectiveOptions coll, TrainingGoal goal)
    : Tuner(m, c, batch_per_gpu, compute, CollectiveModel(c, gpus, coll), goal) {}

Tuner::Tuner(const Model& m, const Cluster& c, int batch_per_gpu, Precision compute, const CollectiveModel& coll,
             TrainingGoal goal)
    : model_(m),
      cluster_(c),
      gpus_(coll.gpus()),
      batch_(batch_per_gpu),
      compute_precision_(compute),
      goal_(goal),
      coll_(coll),
      compute_(m, c, batch_per_gpu, compute) {
  if (m.tensors.empty()) throw InputError("model " + m.name + " has no parameter tensors to reduce");
}

std::vector<double> Tuner::backward_steps(const TuneOptions& opt) const {
  // Copied in backward, every gradient is (a plan's copies there do not depend on where
  // its buckets split): the ready times are the partition's own, as the search needs.
  const bool in_backward = copies(opt) == PackOn::Compute;
  const bool cast = opt.cast == PackOn::Compute && gpus_ > 1;  // every gradient: no FP32 tensors (check_options)
  // On the slowest GPU's clock, as the predictor times them (slowest_gpu_factor).
  const size_t n = model_.tensors.size();
  std::vector<double> steps =
      backward_steps_s(model_, compute_, cluster_, std::vector<bool>(n, in_backward), std::vector<bool>(n, cast));
  for (double& x : steps) x *= slowest_gpu_factor(cluster_, gpus_);
  return steps;
}

std::vector<int> Tuner::search(const TuneOptions& opt, double& objective, int64_t& evaluations, double& gap,
                              std::string& local_search) const {
  const int n = static_cast<int>(model_.tensors.size());
  const std::vector<double> steps = backward_steps(opt);
  const std::vector<double> ready = gradient_ready_times(model_, steps);
  BucketCoster cost(model_, cluster_, coll_, opt, ready);
  // DDP's copies back after backward: the search minimises their end (CopiesBack).
  std::optional<CopiesBack> copies_back;
  if (cost.copies_back()) copies_back.emplace(cost, std::accumulate(steps.begin(), steps.end(), 0.0));
  std::vector<int> starts{0};
  objective = -1;
  gap = 0;
  evaluations = 0;
  auto tensor_bytes = [&](int pos, int elem_bytes) {
    return model_.tensors[model_.tensor_at_backward(pos)].numel * elem_bytes;
  };
  switch (opt.strategy) {
    case Strategy::Optimal: {
      auto tails = opt.fp32 == Fp32Tensors::None && !opt.exhaustive_scan ? coll_.affine_tails(opt.transfer)
                                                                          : std::vector<AffineTail>{};
      for (auto& t : tails) t.b += cost.copies_per_byte();  // a bucket's copies on its stream
      Prefixes table;
      Prefixes* keep = copies_back ? &table : nullptr;
      starts = tails.empty() ? dynamic_program(cost, 0, objective, nullptr, kInf, keep)
                             : dynamic_program_tails(cost, std::move(tails), bytes_per_element(opt.transfer),
                                                     objective, keep);
      starts = copies_back ? merge_ties_copies(cost, dynamic_program_copies(cost, 0, *copies_back, table, starts,
                                                                            objective, gap), *copies_back)
                           : merge_ties(cost, starts);
      break;
    }
    case Strategy::KSplit: {
      Prefixes table;
      starts = dynamic_program(cost, opt.segments, objective, nullptr, kInf, copies_back ? &table : nullptr);
      if (copies_back)
        starts = dynamic_program_copies(cost, opt.segments, *copies_back, table, starts, objective, gap);
      break;
    }
    case Strategy::PerTensor:
      for (int i = 1; i < n; ++i) starts.push_back(i);
      break;
    case Strategy::Single: break;
    case Strategy::Horovod: {
      // Greedy in backward order: a tensor that would overflow the fusion buffer starts a
      // new one (threshold 0 disables fusion). With a cycle time, only tensors ready by
      // the same background-thread tick are fused.
      int64_t fill = 0;
      double tick = 0;
      for (int i = 0; i < n; ++i) {
        int64_t b = tensor_bytes(i, bytes_per_element(cost.transfer(i, i + 1)));
        double t = opt.horovod_cycle_s > 0 ? std::ceil(ready[i] / opt.horovod_cycle_s) : 0;
        if (i > 0 && (fill + b > opt.horovod_threshold_bytes || t != tick)) {
          starts.push_back(i);
          fill = 0;
        }
        fill += b;
        tick = t;
      }
      break;
    }
    case Strategy::Ddp: {
      // compute_bucket_assignment_by_size: parameters in reverse order; a bucket closes
      // once its FP32 parameter bytes reach the limit (first 1 MiB, then 25 MiB).
      int64_t fill = 0, limit = opt.ddp_first_bytes;
      for (int i = 0; i < n; ++i) {
        fill += tensor_bytes(i, 4);
        if (fill >= limit && i + 1 < n) {
          starts.push_back(i + 1);
          fill = 0;
          limit = opt.ddp_cap_bytes;
        }
      }
      break;
    }
    case Strategy::Mgwfbp: starts = mgwfbp(ready, cost); break;
  }
  const bool searched = opt.strategy == Strategy::Optimal || opt.strategy == Strategy::KSplit;
  if (searched && cluster_.sharing(gpus_).any()) {
    const ProcessorSharing sigma = cluster_.sharing(gpus_);
    SharedSearch shared(cost, model_, steps, sigma, opt.streams);
    // The exact program over `c` (one stream, no copies back), bounded by the end of the
    // partition `from` under the same schedule (and a rounding's margin); empty past its
    // budgets.
    auto program = [&](BucketCoster& c, const std::vector<int>& from) {
      SharedSearch judge(c, model_, steps, sigma, 1);
      const double end = judge.objective(from);
      SharedProgram p(c, model_, steps, sigma);
      std::vector<int> s;
      if (opt.strategy == Strategy::Optimal && !opt.exhaustive_scan) s = p.run_values(kValuesBudget, end * (1 + 1e-9));
      if (s.empty()) s = p.run(opt.strategy == Strategy::KSplit ? opt.segments : 0, end * (1 + 1e-9));
      if (!s.empty() && judge.objective(s) > end) s = from;  // the same end, rounded
      return s;
    };
    std::vector<int> exact;
    std::vector<std::vector<int>> seeds{starts};  // the local search's starting points
    if (SharedProgram::exact_for(cost, opt)) {
      exact = program(cost, starts);
      if (exact.empty()) local_search = "past the exact program's budget";
    } else if (opt.streams > 1) {
      local_search = "several streams";
    } else {
      local_search = "copies back";  // DDP's, after backward (pack_on compute)
      // The exact partition without them (over the same backward steps) is a second start.
      TuneOptions view = opt;
      view.packing = Packing::View;
      BucketCoster view_cost(model_, cluster_, coll_, view, ready);
      std::vector<int> seed = program(view_cost, starts);
      evaluations += view_cost.evaluations;
      if (!seed.empty()) seeds.push_back(std::move(seed));
    }
    if (!exact.empty()) {
      starts = std::move(exact);
      objective = shared.objective(starts);
    } else {  // a local search: no bound to hold it to
      starts = shared.refine(std::move(seeds), opt.strategy == Strategy::KSplit, objective);
    }
    gap = 0;
  }
  evaluations += cost.evaluations;
  return starts;
}

Plan Tuner::plan_for(const std::vector<int>& starts, const TuneOptions& opt) const {
  const int n = static_cast<int>(model_.tensors.size());
  BucketCoster cost(model_, cluster_, coll_, opt, gradient_ready_times(model_, backward_steps(opt)));
  std::vector<PlanBucket> buckets;
  for (size_t k = 0; k < starts.size(); ++k) {
    PlanBucket b;
    b.begin = starts[k];
    b.end = k + 1 < starts.size() ? starts[k + 1] : n;
    b.algorithm = opt.algorithm;
    b.transfer = cost.transfer(b.begin, b.end);
    b.stream = static_cast<int>(k % opt.streams);
    b.pack = copies(opt).has_value();
    buckets.push_back(b);
  }
  Plan p = make_plan(model_, cluster_reference(cluster_), gpus_, batch_, compute_precision_, std::move(buckets),
                     strategy_name(opt.strategy));
  // Horovod's background thread launches a fused bucket at its next tick.
  if (opt.strategy == Strategy::Horovod) p.cycle_s = opt.horovod_cycle_s;
  p.pack_on = copies(opt).value_or(PackOn::Comm);
  p.cast = opt.cast;
  p.accumulate = opt.accumulate;
  p.optimizer = opt.optimizer;
  p.step_overhead_s = opt.step_overhead_s;
  p.compute_scale = cluster_.compute_scale;
  return p;
}

Report Tuner::evaluate(const Plan& p, bool with_timeline) const {
  return predict(model_, cluster_, p, coll_, compute_, goal_, with_timeline);
}

TuneResult Tuner::run(const TuneOptions& opt) const {
  check_options(opt, static_cast<int>(model_.tensors.size()));
  auto t0 = std::chrono::steady_clock::now();
  TuneResult r;
  std::vector<int> starts = search(opt, r.objective_s, r.evaluations, r.search_gap_s, r.local_search);
  r.plan = plan_for(starts, opt);
  r.report = evaluate(r.plan);
  // Record the algorithm each bucket runs, so executors need not re-run the choice.
  for (size_t k = 0; k < r.plan.buckets.size(); ++k)
    if (r.report.buckets[k].algorithm != "none") r.plan.buckets[k].algorithm = r.report.buckets[k].algorithm;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (r.objective_s < 0) r.objective_s = r.report.comm_end_s;
  return r;
}

std::vector<LabelledPlan> best_distinct_plans(const Tuner& tuner, const TuneOptions& o, const TuneResult& tuned, int top) {
  if (top < 1) throw InputError(field("tuner.top") + ": must be >= 1");
  std::vector<LabelledPlan> cands{{std::string(strategy_name(o.strategy)), tuned}};
  for (Strategy st : kAllStrategies) {
    TuneOptions c = o;
    c.strategy = st;
    if (st == Strategy::KSplit) {
      for (int k = 2; k <= std::min(4, static_cast<int>(tuner.model().tensors.size())); ++k) {
        c.segments = k;
        cands.push_back({"k-split (K=" + std::to_string(k) + ")", tuner.run(c)});
      }
    } else {
      cands.push_back({std::string(strategy_name(st)), tuner.run(c)});
    }
  }
  std::vector<LabelledPlan> distinct;
  for (auto& c : cands) {
    const bool seen = std::any_of(distinct.begin(), distinct.end(),
                                  [&](const LabelledPlan& d) { return d.result.plan.buckets == c.result.plan.buckets; });
    if (!seen) distinct.push_back(std::move(c));
  }
  std::stable_sort(distinct.begin(), distinct.end(), [](const LabelledPlan& a, const LabelledPlan& b) {
    return a.result.report.iteration_s < b.result.report.iteration_s;
  });
  distinct.resize(std::min<size_t>(distinct.size(), static_cast<size_t>(top)));
  return distinct;
}

}  // namespace fuseplan
