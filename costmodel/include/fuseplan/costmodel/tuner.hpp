// The fusion tuner: chooses the gradient buckets (contiguous tensor ranges in backward
// order) and each bucket's allreduce algorithm, judged by the analytic predictor.
//   optimal      exact minimum over all contiguous partitions (one stream), by dynamic
//                programming over prefixes with an exact pruning rule; under processor
//                sharing (backward slowed while an allreduce runs) programs over the
//                queued allreduce work, exact on one stream without packing copies
//   k-split      the same, with exactly K buckets (K = 2: the 4-minute paper's method)
//   per-tensor   one allreduce per tensor (plain wait-free backprop)
//   single       one allreduce after backward
//   horovod      Horovod tensor fusion: greedy up to a byte threshold (64 MiB), fused in
//                the transfer dtype, copied into a fusion buffer; optional cycle time
//   ddp          PyTorch DDP: 1 MiB first bucket, then 25 MiB caps on FP32 parameter
//                bytes, a bucket closes once it reaches its cap; copied into bucket buffers
//   mgwfbp       MG-WFBP's greedy merge rule (Shi, Chu, Li, INFOCOM 2019)
// Options beyond today's tools, evaluated by the predictor: several communication
// streams sharing the links (AIACC), and FP32 transfer for chosen tensors.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fuseplan/models/error.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/predictor.hpp"

namespace fuseplan {

enum class Strategy { Optimal, KSplit, PerTensor, Single, Horovod, Ddp, Mgwfbp };
inline constexpr Strategy kAllStrategies[] = {Strategy::Optimal, Strategy::KSplit,  Strategy::PerTensor,
                                              Strategy::Single,  Strategy::Horovod, Strategy::Ddp,
                                              Strategy::Mgwfbp};
const char* strategy_name(Strategy s);
std::string strategy_names();
// Throws InputError naming `flag` and listing the valid names.
Strategy parse_strategy(const std::string& s, const std::string& flag = field("tuner.strategy"));

// Which tensors travel in FP32 whatever the bucket's transfer precision: none, the
// normalisation layers' weights and biases (norm), or those plus every bias (norm+bias).
// A bucket holding any of them is sent in FP32.
enum class Fp32Tensors { None, Norm, NormAndBias };
Fp32Tensors parse_fp32_tensors(const std::string& s, const std::string& flag = field("tuner.fp32_tensors"));
const char* fp32_tensors_name(Fp32Tensors f);

// How the tuned plan's buckets are filled: Pack copies each bucket into a fusion buffer
// once it is ready, off the compute stream (Horovod); Inline copies each gradient into its
// bucket in backward, on the compute stream (PyTorch DDP's Reducer, fuseplan_torch's
// PlanDDP); View copies nothing. Strategy: horovod packs, ddp copies inline, the rest view.
enum class Packing { Strategy, Pack, Inline, View };

struct TuneOptions {
  Strategy strategy = Strategy::Optimal;
  int segments = 2;                                  // k-split
  int64_t horovod_threshold_bytes = int64_t(64) << 20;
  double horovod_cycle_s = 0;                        // 0: pure threshold fusion
  int64_t ddp_cap_bytes = int64_t(25) << 20;         // bucket_cap_mb = 25 (x 1024 x 1024)
  int64_t ddp_first_bytes = int64_t(1) << 20;        // dist._DEFAULT_FIRST_BUCKET_BYTES
  std::string algorithm = "auto";                    // per bucket: cheapest, or one name for all
  Precision transfer = Precision::FP16;
  Fp32Tensors fp32 = Fp32Tensors::None;
  int streams = 1;                                   // buckets go round-robin to streams
  Packing packing = Packing::Strategy;
  // Gradient casts written to every plan (Plan::cast): priced in every candidate, on
  // compute (each gradient's cast in backward, whatever the partition, so the search keeps
  // its ready times) or on comm (before each allreduce on its stream); each bucket's casts
  // on its stream are part of its time. Compute refuses FP32 tensors (fp32), whose buckets would not
  // be cast.
  std::optional<PackOn> cast;
  // How the training loop steps, written to every plan: it moves every candidate's
  // iteration alike (the optimizer's share, the exposure under no_sync divided by the
  // steps), so the search for the last allreduce end is the same.
  Accumulation accumulate;
  OptimizerStep optimizer;
  double step_overhead_s = 0;  // Plan::step_overhead_s of every plan made (serial: no partition moves)
  // optimal: skip the fast paths and search every candidate (tests, benches): no affine-tail
  // scan, and under processor sharing the program over fronts of states instead of the one
  // by values.
  bool exhaustive_scan = false;
};

struct TuneResult {
  Plan plan;               // buckets with concrete algorithm names
  Report report;           // the predictor's report of the plan
  double objective_s = 0;  // the end the search minimised (optimal, k-split: the last allreduce's, or with
                           // copies back the last copy's, from backward start; under processor sharing
                           // the later of it and the stretched backward's), else the report's comm_end_s
  int64_t evaluations = 0; // bucket costs evaluated
  // With copies back (--pack inline), where the search stopped at its budget before it
  // proved its partition the least: how much lower the least objective may be (0: exact).
  double search_gap_s = 0;
  // Where optimal or k-split ran a local search instead of an exact one (processor sharing
  // with several streams or packing copies, or past the exact programs' budgets), why: "several
  // streams", "packing copies" or "past the exact program's budget". Empty: not a local search.
  std::string local_search;
  bool proven() const { return local_search.empty(); }  // the partition is the least
  double seconds = 0;      // wall time of the search
};

// Binds a model, cluster, GPU count, batch and compute precision; `run` tunes one
// strategy. Not thread-safe (the collective model caches); one per thread.
class Tuner {
 public:
  Tuner(const Model& m, const Cluster& c, int gpus, int batch_per_gpu, Precision compute,
        CollectiveOptions coll = {}, TrainingGoal goal = {});
  // With a copy of a collective model already bound to `c` (its profiles, once computed,
  // are not computed again): its GPU count is the tuner's.
  Tuner(const Model& m, const Cluster& c, int batch_per_gpu, Precision compute, const CollectiveModel& coll,
        TrainingGoal goal = {});
  TuneResult run(const TuneOptions& opt) const;
  // The prediction of a given plan under the same models (for brute-force checks).
  Report evaluate(const Plan& p, bool with_timeline = false) const;
  Plan plan_for(const std::vector<int>& starts, const TuneOptions& opt) const;
  const Model& model() const { return model_; }
  const CollectiveModel& collectives() const { return coll_; }
  const ComputeModel& compute() const { return compute_; }

 private:
  std::vector<int> search(const TuneOptions& opt, double& objective, int64_t& evaluations, double& gap,
                          std::string& local_search) const;
  // The backward steps' times (backward order) with the copies `opt` makes in backward.
  std::vector<double> backward_steps(const TuneOptions& opt) const;
  const Model& model_;
  const Cluster& cluster_;
  int gpus_, batch_;
  Precision compute_precision_;
  TrainingGoal goal_;
  CollectiveModel coll_;
  ComputeModel compute_;
};

// The `top` best distinct plans by prediction among the tuned one (`tuned`, labelled by
// o's strategy), every strategy's and k-split's with 2..4 buckets: what `tune --validate
// sim` simulates. Plans with the same buckets count once (the first label kept); ordered
// by predicted iteration, ties in that order. InputError when top < 1.
struct LabelledPlan {
  std::string label;
  TuneResult result;
};
std::vector<LabelledPlan> best_distinct_plans(const Tuner& tuner, const TuneOptions& o, const TuneResult& tuned, int top);

}  // namespace fuseplan
