// What-if capacity planning: sweeps over models, GPU counts, inter-node bandwidth, batch,
// precision, algorithm and fusion strategy, each point tuned and predicted; and inverse
// questions (the bandwidth or GPU count that reaches a scaling efficiency, the fewest
// GPUs that train within a deadline).
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan {

struct WhatIfAxes {
  std::vector<std::string> models{"resnet50"};
  std::vector<int> gpus{1024};
  std::vector<double> inter_bw_Gbps;           // empty: the cluster's own
  std::vector<int> batch_per_gpu{0};           // 0: the model's default
  std::vector<Precision> precisions{Precision::FP16};
  std::vector<std::string> algorithms{"auto"};
  std::vector<Strategy> strategies{Strategy::Optimal};
};

struct WhatIfSettings {
  ModelOptions model_options;
  CollectiveOptions collective;
  // Each model's goal for time to train; empty: its family's (training_goal).
  std::function<TrainingGoal(const Model&)> goal;
  TuneOptions tune;        // strategy, algorithm and transfer are set per point
  bool transfer_follows_compute = true;  // else tune.transfer
  std::string profile;     // measured layer times (fuseplan.profile/1) for every model; "" = the roofline
  // One GPU's measured training rate (samples/s) in place of the roofline's speed
  // (set_measured_rate), for one model at one batch and precision, measured with
  // `measured_loop` and the tune options' optimizer kernels; 0: none.
  double measured_rate = 0;
  int measured_batch = 1;
  Precision measured_precision = Precision::FP16;
  Accumulation measured_loop;
};

struct WhatIfPoint {
  std::string model;
  int gpus = 1;
  double inter_bw_Gbps = 0;  // 0: the cluster has no inter-node network
  int batch_per_gpu = 1;
  Precision precision = Precision::FP16;
  std::string algorithm = "auto";
  Strategy strategy = Strategy::Optimal;
};

struct WhatIfRow {
  WhatIfPoint point;
  int buckets = 0;
  Report report;  // without timeline
  // check_setup's at this point: memory (a refusal as a warning) and global batch
  std::vector<std::string> warnings;
};

// Called after each point with (done, total).
using Progress = std::function<void(size_t, size_t)>;

class WhatIf {
 public:
  WhatIf(Cluster base, WhatIfSettings settings);
  size_t count(const WhatIfAxes& axes) const;
  // Every combination, in axis order (model outermost, strategy innermost).
  std::vector<WhatIfRow> sweep(const WhatIfAxes& axes, const Progress& progress = {}) const;
  WhatIfRow evaluate(const WhatIfPoint& p) const;

  // The smallest inter-node bandwidth (Gbps, to 0.1%) at which `p` reaches `target`
  // scaling efficiency; throws InputError if even 1000x the cluster's does not.
  double min_bandwidth_for(WhatIfPoint p, double target, const Progress& progress = {}) const;
  // The largest GPU count among `candidates` reaching `target` (every candidate is
  // evaluated: efficiency need not fall monotonically). Throws if none does.
  WhatIfRow max_gpus_for(WhatIfPoint p, double target, const std::vector<int>& candidates,
                         const Progress& progress = {}) const;
  // The fewest GPUs among `candidates` (ascending) that train within `deadline_s`.
  // Throws InputError with the fastest time found if none does.
  WhatIfRow min_gpus_for_deadline(WhatIfPoint p, double deadline_s, const std::vector<int>& candidates,
                                  const Progress& progress = {}) const;

  // GPU counts worth trying on this cluster: 1, 2, 4, ... up to a node, then every whole
  // number of nodes up to the cluster's capacity.
  std::vector<int> gpu_candidates() const;
  // The same up to `max_gpus`, growing by whole nodes past the cluster's capacity.
  std::vector<int> gpu_candidates(int max_gpus) const;
  const Cluster& cluster() const { return base_; }

 private:
  const Model& model(const std::string& name) const;
  Cluster base_;
  WhatIfSettings settings_;
  mutable std::vector<std::pair<std::string, Model>> models_;
};

// "10m", "2h", "90s", "1.5d" (a bare number is refused: seconds or minutes?); throws
// InputError naming `flag`.
double parse_duration(const std::string& s, const std::string& flag);

// An axis of values: "8,64,512", "MIN:MAX" (doubling from MIN) or "MIN:MAX:+STEP", each
// > 0 (and whole with `integers`). InputError naming `flag`.
// At most kMaxRangeValues values per list (InputError past it).
std::vector<double> parse_range(const std::string& s, const std::string& flag, bool integers);
// Bounds that keep a mistyped range from running for hours: values per axis, and points
// (the product of the axes) per sweep.
inline constexpr size_t kMaxRangeValues = 10'000, kMaxWhatIfPoints = 100'000;
// A comma-separated list, empty items dropped; InputError naming `flag` when empty.
std::vector<std::string> split_list(const std::string& s, const std::string& flag);

}  // namespace fuseplan
