// The executor's runner output: a run's steps, measured on every rank, gathered into the
// measured Report on rank 0 (the third runner beside the predictor and the simulator,
// finished by the same finish_report). Each step's critical rank, the slowest in forward
// + backward, is the one every allreduce waits for and the one the predictor's profile
// describes, so the phases are its; a faster rank's wait shows only in the spread.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/network.hpp"
#include "fuseplan/exec/trainer.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan::exec {

// One measured step on this rank: its phases and each bucket's allreduce.
struct StepSample {
  double seconds = 0, data_s = 0, forward_s = 0, backward_s = 0, wait_s = 0, optimizer_s = 0;
  std::vector<BucketTiming> buckets;  // from this step's backward start
};
StepSample step_sample(const StepRecord& s, const std::vector<BucketTiming>& buckets);

// The buckets of one step as they ran: each one's times from `origin`, that step's
// backward start (TimedExchange::timings and step_origin).
struct StepBuckets {
  const std::vector<BucketTiming>* timings = nullptr;
  std::chrono::steady_clock::time_point origin;
  int64_t step = 0;
};

// Appends step `s`'s events on `rank` to `t`: data wait, every layer's forward and
// backward, the buckets of `comm` and the optimizer, in seconds from `origin`, named as
// predicted and simulated events are (trace_name), each with its step as the iteration.
// Where the trainer defers the exchange (per-layer gating, a sharded step) `comm` is the
// previous step's (its buckets run into this step's forward); per-layer updates, spread
// over the forward pass, get no event of their own.
void trace_step(Timeline& t, int rank, const StepRecord& s, const Model& model, const Network& net,
                const std::vector<ExchangeBucket>& buckets, const StepBuckets& comm,
                std::chrono::steady_clock::time_point origin);

// What the measured Report describes: the run's setup and its buckets as they ran
// (index, range, tensor names, bytes, algorithm, stream, transfer; measure sets times).
struct MeasuredSetup {
  std::string model, cluster;
  int batch_per_gpu = 1;
  Precision compute = Precision::FP32;
  std::vector<BucketReport> buckets;
  TrainingGoal goal;
  int seq_len = 0;
  // Buckets packed on compute are copied back after backward (Report::copy_back_s: the
  // time from the later of backward's end and the last allreduce's end until the wait
  // after backward returns).
  bool copies_back = false;
  // The exchanges hold FP32 gradients and cast a 16-bit bucket on their stream, to its
  // transfer when it starts and back when it ends, whatever the plan's `cast` says:
  // Report::cast comm where a bucket is 16-bit.
  std::optional<PackOn> cast;
};

// The plan's buckets as the executor runs them: flat-buffer ranges, the packed ones'
// buffers (PlanBucket::pack, where Plan::pack_on says) and the algorithm (and variant)
// the cost model resolves `auto` to on `cluster`. RunError when the network's layout
// differs from the plan's.
std::vector<ExchangeBucket> plan_buckets(const Plan& plan, const Model& model, const Network& net,
                                         const Cluster& cluster);
// A schedule beyond fusion (docs/schedules.md) as exchange buckets over a flat gradient
// buffer holding the tensors in backward order from element `base`: each partition an
// allreduce (the algorithm `auto` resolves to on the schedule's cluster), or a
// reduce-scatter and then an all-gather (the halves of the ring schedule) on the same
// stream. Partitions are dealt round-robin to `credit` streams; each stream runs its
// buckets in the order the pipeline model predicts they start. What this runs is the
// schedule's communication; per-layer gating and the sharded step are the trainer's
// (TrainOptions::per_layer, shard_optimizer): a sharded schedule's all-gathers are held
// for the step (after_step) and carry parameters, else they carry the reduced gradients.
std::vector<ExchangeBucket> schedule_exchange_buckets(const PipelineModel& pm, const PipelineSchedule& s, int64_t base = 0);
// The MeasuredSetup of `plan` run with `buckets` on this job's `layout`, for the model's
// family's training goal.
MeasuredSetup measured_setup(const Plan& plan, const Model& model, const Network& net,
                             const std::vector<ExchangeBucket>& buckets, const RankLayout& layout);

struct Measurement {
  Report report;                    // source "measured", with every rank's trace events
  std::vector<double> step_s;       // each measured step: the slowest rank's time
  double spread_s = 0;              // mean forward + backward gap between the fastest and slowest rank
  std::vector<int> critical_steps;  // per rank: the steps in which it was the slowest
};

// Collective: every rank passes its samples (the same count on each) and its events;
// rank 0 gets the Measurement, the others nothing. The Report's iteration is the
// slowest rank's mean step; its phases and bucket times the means over steps of each
// step's critical rank.
std::optional<Measurement> measure(MpiWorld& world, const std::vector<StepSample>& samples, const Timeline& local,
                                   const MeasuredSetup& setup);

}  // namespace fuseplan::exec
