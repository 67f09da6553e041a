// The measure runner of the run contract: data-parallel training across the world's ranks
// that follows a plan (one exchange per bucket, posted as the bucket's last gradient is
// written), measured on every rank and gathered into the measured Report on rank 0
// (exec::measure), beside the predictor and the simulator.
#pragma once
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/exec/data.hpp"
#include "fuseplan/exec/measure.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/trainer.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

struct PlanRunOptions {
  TrainOptions train;            // batch and precision from the plan; the exchange is set here
  bool train_epochs = false;     // train.epochs as asked (with evaluation); else warmup + iterations steps
  int warmup = 2;                // steps before measuring
  int64_t iterations = 20;       // measured steps (without train_epochs)
  int trace_steps = 2;           // the last steps in the timeline
  std::string comm = "mpi";      // the gradient exchange: "mpi" (PlanExchange) or "nccl"
  ExchangeOptions exchange;      // progress thread or polling, timeout
  StepCallback on_step;          // progress, every step on every rank
  EpochCallback on_epoch;
  // This rank's per-layer profile (fuseplan.profile/1) after the run; when set, the
  // slowest rank's is gathered to rank 0.
  std::function<nlohmann::json(const Network&, const TrainResult&)> profile_of;
  // The exchange's buckets instead of the plan's (a schedule beyond fusion:
  // schedule_exchange_buckets), from the trainer's network. Called once on every rank.
  std::function<std::vector<ExchangeBucket>(const Network&)> buckets_of;
  // The ranks agree on set-up refusals before the exchange's collective set-up: called on
  // every rank with this rank's refusal (null: none); returns only if no rank refused.
  std::function<void(const InputError*)> agree;
};

// Checks the options a caller set (steps, trace, exchange): InputError naming the field
// (run.iterations, run.warmup, run.trace_steps, comm, comm.progress, comm.timeout,
// comm.poll_us). An empty `comm` becomes the default: NCCL with the CUDA backend where
// NCCL is built, else MPI.
void check_run_options(PlanRunOptions& o, bool cuda_backend);

// Compute threads per rank when nothing says: the cores this rank may use, divided among
// the node's ranks when mpirun did not bind them.
int default_threads(const RankLayout& layout);

struct PlanRun {
  std::optional<Measurement> measurement;  // rank 0
  TrainResult result;                      // this rank's
  nlohmann::json profile;                  // rank 0, with profile_of: the slowest rank's
  int profile_rank = 0;
  std::vector<std::string> notes;          // rank 0: what the run did differently from the plan
};

// Runs `plan` with `model` on this world's ranks. Throws InputError for input only one
// rank can see after set-up (the job must then be aborted) and RunError for a failed run.
PlanRun run_plan(MpiWorld& world, const Plan& plan, const Model& model, const Cluster& cluster, const Dataset& train,
                 const Dataset* test, Backend& backend, PlanRunOptions o);

}  // namespace fuseplan::exec
