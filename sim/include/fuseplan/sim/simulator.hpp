// The SimGrid simulator (first slice): replays an allreduce algorithm's explicit
// schedule (costmodel, the same one the executor will run) as real point-to-point
// messages on a SimGrid platform built from a cluster file, one host per rank.
//
// Platform: every rank has a split-duplex port to its node (intra-node bandwidth, half
// the intra-node latency each way); every NIC is a split-duplex link (one NIC's
// bandwidth, half the inter-node latency each way) and a rank uses NIC (local rank mod
// NICs per node). A message inside a node crosses the sender's and receiver's ports;
// between nodes, the two ranks' NICs (a full-bisection fabric). Network model CM02 with cross-traffic off: a message of b
// bytes alone on its route takes latency + b / bandwidth, the alpha-beta of the cost
// model; concurrent messages share links max-min fairly. Reductions run on the rank's
// host at 1 / gamma bytes per second.
// Not yet: whole training iterations with compute overlap, oversubscribed fat-trees,
// host staging without GPUDirect RDMA (refused), stragglers (issue 4 continues).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/predictor.hpp"

namespace fuseplan::sim {

struct SimCollectiveResult {
  double simulated_s = 0;    // the last rank's finish
  double closed_form_s = 0;  // the cost model's time for the same call (without launch overhead)
  int64_t messages = 0;
  int rounds = 0;
};

// SimGrid runs one simulation per process, so this forks: the child simulates and
// reports back. Throws InputError for an inapplicable algorithm or unsupported cluster.
SimCollectiveResult simulate_allreduce(const Cluster& cluster, int gpus, const std::string& algorithm,
                                       int64_t count, Precision transfer, CollectiveOptions opt = {});

// Iterations one simulation replays at most: the steady state shows after a few, and a
// bound keeps a mistyped count from running for days.
inline constexpr int kMaxSimIterations = 1000;

struct SimOptions {
  int iterations = 1;       // 1 .. kMaxSimIterations
  double jitter = 0;        // relative std. dev. of every compute duration (normal, >= 0)
  uint64_t seed = 1;        // jitter draws: same seed, same simulation
  std::vector<std::pair<int, double>> stragglers;  // rank, compute slowdown factor (> 0)
  int trace_ranks = 4;      // ranks recorded in the timeline (the first ones)
  std::string network_model = "cm02";  // cm02 (alpha-beta), lv08, smpi
  // Called now and then with (rank-rounds replayed, total): one rank's round of one
  // bucket's schedule is a step. Runs inside the simulating process.
  std::function<void(int64_t, int64_t)> progress;
};

// Simulates `iterations` training iterations of `plan` rank by rank: per rank, a compute
// actor runs forward, then backward layer by layer, marking gradients ready; one actor
// per communication stream starts each bucket's allreduce once its gradients are ready
// (plus the packing copy) and its stream is free, after the launch overhead, and
// replays the algorithm's schedule as messages; the optimizer step waits for every
// bucket. Returns the predictor's Report with simulated timing (bucket times from rank
// 0's last iteration, from its backward start). It runs in a child process of its own
// (SimGrid: one engine per process; `opt.progress` is called there) and its Report comes
// back losslessly (fuseplan.report/1). Throws InputError on bad options.
Report simulate_plan(const Model& m, const Cluster& c, const Plan& plan, CollectiveOptions coll_opt,
                     const TrainingGoal& goal, const SimOptions& opt);
// The simulator on a bound scenario.
Report simulate_plan(const Scenario& s, const SimOptions& opt);
// The same in this process, for a caller that isolates it itself (run_isolated), as the
// benchmark does to measure the child's memory and CPU time.
Report simulate_plan_here(const Model& m, const Cluster& c, const Plan& plan, CollectiveOptions coll_opt,
                          const TrainingGoal& goal, const SimOptions& opt);

// Schedules beyond fusion (pipeline.hpp), rank by rank: per rank a compute actor whose
// forward pass waits for the previous iteration's messages (per layer or at a barrier),
// backward marking partitions ready (and, resharded, waiting for each unit's re-gather,
// released when the unit's forward ends), the optimizer step where the schedule has one;
// and `credit` channel actors replaying each partition's allreduce, or the reduce-scatter
// and all-gather halves of the ring-family schedule, as messages. The processor is shared
// as the model shares it (Cluster::comm_compute_sharing). Rank 0 coordinates (as
// Horovod's rank 0 does): a message goes to a free slot of rank 0 once every rank has it
// ready, the most urgent first (the schedule's order), and every rank's slot replays the
// same sequence. `opt.iterations` >= 3; no jitter or stragglers. The result is rank 0's,
// as PipelineModel::evaluate reports it: the last period and the iteration two before the
// last, plus the traced ranks' events. Runs in a child process (run_isolated).
struct SimScheduleResult {
  PipelineResult result;
  std::vector<TimelineEvent> events;
};
SimScheduleResult simulate_schedule(const PipelineModel& pm, const PipelineSchedule& s, const SimOptions& opt);
SimScheduleResult simulate_schedule_here(const PipelineModel& pm, const PipelineSchedule& s, const SimOptions& opt);

// Runs `fn` in a forked child (SimGrid: one simulation per process) and returns the
// string it returned. InputError and RunError thrown by `fn` are rethrown here.
std::string run_isolated(const std::function<std::string()>& fn);

}  // namespace fuseplan::sim
