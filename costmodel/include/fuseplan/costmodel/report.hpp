// The Report and Timeline shared by prediction, simulation and measurement, and the
// Chrome Trace Event writer (opens in ui.perfetto.dev and chrome://tracing).
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan {

// When a bucket's allreduce ran, seconds from the start of backward: what the predictor
// schedules, the simulator replays and the executor measures.
struct BucketTiming {
  double ready_s = 0, start_s = 0, end_s = 0;
};

struct TimelineEvent {
  int rank = 0;
  std::string stream;    // "compute", "comm0", ...
  std::string name;      // trace_name's: the same for predicted, simulated and measured events
  std::string category;  // "forward", "backward", "allreduce", "optimizer", "overhead", "data"
  double start_s = 0, dur_s = 0;
  int64_t bytes = 0;
  int iteration = -1;    // which iteration, where a trace holds several (-1: the one predicted)
};

// Event names, one set for predicted, simulated and measured traces.
namespace trace_name {
inline std::string forward(const std::string& layer) { return layer; }
inline std::string backward(const std::string& layer) { return layer + " (bwd)"; }
inline std::string bucket(int index, const std::string& algorithm) {
  return "bucket " + std::to_string(index) + " " + algorithm;
}
// A bucket's average copied back into its parameters' gradients (PackOn::Compute).
inline std::string copy_back(int index) { return "copy back " + std::to_string(index); }
inline constexpr const char* kOptimizer = "optimizer";
inline constexpr const char* kDataWait = "data wait";
inline constexpr const char* kStepOverhead = "step overhead";  // the plan's fixed cost per step
// A simulated accumulation's micro-batches that only compute (no_sync), as one event.
inline constexpr const char* kLocalMicroBatches = "micro-batches without allreduce";
}  // namespace trace_name

struct Timeline {
  std::vector<TimelineEvent> events;
  // {"traceEvents": [...]} with one process per rank and one thread per stream; complete
  // events ("ph":"X") in microseconds, metadata events naming processes and threads.
  nlohmann::json to_chrome_trace() const;
  void write_chrome_trace(const std::string& path) const;  // atomic
};

struct BucketReport {
  int index = 0;
  int begin = 0, end = 0;           // backward positions
  std::string first_tensor, last_tensor;  // names, in backward order
  int64_t bytes = 0;
  std::string algorithm;            // the algorithm used (resolved when the plan said auto)
  std::string variant;              // which of its variants, where named ("nvls_tree/Simple" for nccl)
  bool auto_chosen = false;
  int stream = 0;
  Precision transfer = Precision::FP16;
  double ready_s = 0, start_s = 0, end_s = 0;  // from the start of backward
  Cost cost;                        // without the launch overhead
  double launch_s = 0;
  // On its stream within [start_s, end_s], before the allreduce: the copy into a fusion
  // buffer and a cast on comm (BucketTerms::copy_in_s); after it: the copy out and a cast
  // back (BucketTerms::copy_out_s); 0 where there is none.
  double copy_in_s = 0, copy_out_s = 0;
};

// What one layer class costs the mean GPU per micro-batch, as the compute model prices it
// (predict's compute_by_class): its layers, their forward and backward time, and their
// FLOPs (forward and backward, at the batch) from which the rate they reach follows.
struct ClassCompute {
  ComputeClass k = ComputeClass::Other;
  int layers = 0;        // layers of the class that take time (views excluded)
  double forward_s = 0, backward_s = 0;
  double flops = 0;
  int memory_bound = 0;  // of them, priced by their bytes rather than their FLOPs (roofline layers)
  int measured = 0;      // of them, timed by a profile or a measured rate rather than the roofline
  bool operator==(const ClassCompute&) const = default;
};

struct Report {
  std::string source;               // "predicted", "simulated", "measured"
  std::string model, cluster;
  int gpus = 1, batch_per_gpu = 1;
  Precision compute = Precision::FP16;
  double iteration_s = 0;
  double forward_s = 0, backward_s = 0, optimizer_s = 0, data_wait_s = 0;
  double comm_busy_s = 0;           // sum of bucket allreduce durations (per micro-batch under no_sync)
  double comm_end_s = 0;            // last allreduce end, from the start of backward
  double exposed_comm_s = 0;        // communication not hidden behind backward, copies back included
  double copy_back_s = 0;           // of which the copies back after the last allreduce (PackOn::Compute)
  // Of backward_s, what the plan's copies into buckets and casts in backward add to the
  // layers' own (PackOn::Compute, Plan::cast compute; per micro-batch under no_sync).
  double backward_copies_s = 0;
  double step_overhead_s = 0;       // the plan's fixed cost per step on more than one GPU (Plan::step_overhead_s)
  double compute_scale = 1;         // the framework's compute scale the compute was priced at (Cluster::compute_scale)
  // Where FP32 gradients were cast to their bucket's 16-bit transfer and back: the plan's
  // `cast` in predicted and simulated reports; in a measured one, what the executor did
  // (fuseplan-exec's exchanges and PlanDDP cast on comm). Empty: no casts, or a
  // measurement that does not say.
  std::optional<PackOn> cast;
  double variation_wait_s = 0;      // the step's wait for its slowest GPU's forward and backward (compute_variation;
                                    // simulated: stragglers and jitter too)
  double throughput_samples_s = 0;
  double single_gpu_iteration_s = 0;
  double scaling_efficiency = 0;    // single-GPU iteration time / iteration time
  double epochs = 0;                // the training goal: epochs x dataset_size samples,
  int64_t dataset_size = 0;
  double tokens = 0;                // or a token budget (epochs and dataset_size 0)
  std::string goal;                 // named: "90 epochs of ImageNet-1k (1,281,167 images), ..."
  int64_t iterations_to_train = 0;
  double time_to_train_s = 0;
  std::vector<BucketReport> buckets;
  // A scenario's prediction (predict(const Scenario&): predict, simulate and verify): the
  // compute per layer class, in ComputeClass order, classes without layers left out; empty
  // in the predictor's own reports (the tuner's, the fits', whatif's) and in simulated and
  // measured ones.
  std::vector<ClassCompute> compute_by_class;
  Timeline timeline;
};

inline constexpr const char* kReportSchema = "fuseplan.report/1";

// The figures every Report derives the same way, whoever timed it (predictor, simulator,
// executor). sum_buckets: communication busy and end from the buckets' times (the
// predictor needs them for its iteration). finish_report: throughput, scaling efficiency
// (0 when single_gpu_iteration_s is unknown) and the goal's iterations and time to train,
// from iteration_s, gpus and batch_per_gpu; `seq_len` turns a token goal into sequences.
void sum_buckets(Report& r);
void finish_report(Report& r, const TrainingGoal& goal, int seq_len);

nlohmann::json report_to_json(const Report& r, bool with_timeline = false);
// Reads what report_to_json wrote, strictly: the schema key, every field, no unknown
// key (a lossless round trip). Throws InputError naming `origin` and the JSON path.
Report report_from_json(const nlohmann::json& j, const std::string& origin);
Report load_report(const std::string& path);
// A timeline's events as JSON objects in seconds (rank, stream, name, category,
// start_s, dur_s, bytes): the report's `timeline`, read back bit for bit (the Chrome
// trace's microseconds would round). The reader names `origin` and `path` on bad input.
nlohmann::json timeline_to_json(const Timeline& t);
Timeline timeline_from_json(const nlohmann::json& events, const std::string& origin, const std::string& path);

}  // namespace fuseplan
