// The single-process training loop: loader -> forward -> loss -> backward -> loss-scale
// check -> optimizer, with per-epoch evaluation, metrics, a per-layer timing profile and
// atomic checkpoints that a resumed run continues bit for bit.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/exec/data.hpp"
#include "fuseplan/exec/network.hpp"
#include "fuseplan/exec/optimizer.hpp"

namespace fuseplan::exec {

// What the trainer needs from data parallelism (implemented over MPI by the plan
// executor, exec/exchange.hpp). Every rank runs the same steps on its own slice of each
// global batch; after finish() the gradients are the sums over the ranks.
class GradientExchange {
 public:
  virtual ~GradientExchange() = default;
  virtual int rank() const = 0;
  virtual int ranks() const = 0;
  virtual void begin_step() = 0;
  // Backward positions [0, positions) are final on this rank (Network's on_ready).
  virtual void ready(int positions) = 0;
  // Blocks until every bucket is summed over the ranks, in place in the gradients.
  virtual void finish() = 0;
  // Blocks until the gradients of backward positions [begin, end) are summed over the
  // ranks (every bucket writing one of them has run), moving the others on meanwhile: the
  // per-layer gate of the next forward pass (TrainOptions::per_layer). This default waits
  // for every bucket.
  virtual void wait_positions(int begin, int end) {
    (void)begin, (void)end;
    finish();
  }
  // A sharded optimizer step (TrainOptions::shard_optimizer): blocks until every bucket
  // but the held all-gathers has run; then, after the step, lets the held ones start.
  // The element ranges of the flat gradient buffer this rank holds fully reduced once
  // the reductions ran (its shard). This default has no held buckets and no shard.
  virtual void wait_reductions() { finish(); }
  virtual void release_held() {}
  virtual std::vector<std::pair<int64_t, int64_t>> owned_ranges() const { return {}; }
  // Small blocking collectives off the hot path (metrics, BatchNorm statistics).
  virtual void sum(double* v, int n) = 0;
  virtual void broadcast(float* v, int64_t n) = 0;  // from rank 0
};

struct TrainOptions {
  int batch = 64;                // per rank
  double epochs = 1;             // may be fractional
  int64_t max_steps = 0;         // stop after this many steps in total (0 = no limit)
  Precision precision = Precision::FP32;
  OptimizerOptions optimizer;    // warmup_steps and total_steps are derived from the epochs
  double warmup_epochs = 0;
  float label_smoothing = 0;
  uint64_t seed = 1;
  bool augment = false;
  bool evaluate = true;          // test accuracy after every epoch
  int64_t checkpoint_every = 0;  // steps; 0 = never
  std::string checkpoint_path;   // where checkpoints are written
  // A checkpoint write that has not finished after this long is given up (a file system
  // that does not answer): an error naming the file, the previous checkpoint kept. 0 =
  // wait as long as it takes. fuseplan-exec run sets it to half its comm.timeout.
  double checkpoint_timeout_s = 0;
  std::string resume_path;       // continue from this checkpoint
  int64_t inject_overflow_at = -1;  // test hook: make this step's gradients overflow
  int loss_scale_window = 2000;
  GradientExchange* exchange = nullptr;  // data parallelism across ranks (none: one process)
  // The exchange reads gradients where the backend keeps them (NCCL on the GPU's streams),
  // so backward need not wait for the device layer by layer.
  bool exchange_on_device = false;
  // A BatchNorm or an add and the ReLU after it as one op where the backend has it
  // (NetworkOptions).
  bool fuse_relu = true;
  // Step graphs (NetworkOptions::graphs; without an exchange).
  bool graphs = false;
  // Per-layer gating (schedules beyond fusion, docs/schedules.md): the step does not wait
  // for the exchange after backward; instead each layer of the next forward pass waits
  // only for its own parameters' sums (GradientExchange::wait_positions) and runs its
  // update right before its forward, as ByteScheduler and DeAR do. The exchange is
  // drained (every update applied) before evaluation, checkpoints and at the end. Needs
  // an exchange and FP32 or BF16 compute: FP16's dynamic loss scale checks every gradient
  // for overflow before any update. A layer whose summed gradients are not finite keeps
  // its weights and momenta (the step counts as skipped).
  bool per_layer = false;
  // A sharded optimizer step (ZeRO-2, FSDP SHARD_GRAD_OP), with an exchange whose
  // reduce-scatters leave each rank a shard (GradientExchange::owned_ranges) and whose
  // all-gathers are held until the step (ExchangeBucket::after_step): after backward the
  // step waits for the reduce-scatters, updates this rank's shard (LARS norms summed over
  // the ranks' shards; the overflow check too, so FP16 works), writes the shard's new
  // parameters into the gradient buffer and releases the all-gathers, which carry them to
  // every rank. The next forward pass takes the gathered parameters: all of them before its
  // first layer, or each layer its own (with per_layer). Host-memory backends; no
  // checkpoints (each rank keeps 1/N of the optimizer state).
  bool shard_optimizer = false;
  bool defers_exchange() const { return per_layer || shard_optimizer; }
  // What defers it, for messages.
  const char* deferred_by() const { return shard_optimizer ? "a sharded optimizer step" : "per-layer gating"; }
  int ranks() const { return exchange ? exchange->ranks() : 1; }
  int64_t global_batch() const { return int64_t(batch) * ranks(); }
};

struct StepRecord {
  int64_t step = 0, epoch = 0;
  double loss = 0, lr = 0;
  float loss_scale = 1;
  bool skipped = false;
  double seconds = 0;  // wall time of the step, waiting for data included
  double optimizer_start_s = -1;  // from the step's start; -1: no single optimizer step (per-layer updates)
  // Where the step's time went: waiting for data, forward, backward (allreduces run
  // alongside), waiting for the last allreduces after backward, optimizer. With per-layer
  // gating the waits and the updates run inside the forward pass (before each layer): they
  // are counted in comm_wait_s and optimizer_s, not in forward_s.
  double data_s = 0, forward_s = 0, backward_s = 0, comm_wait_s = 0, optimizer_s = 0;
};

struct EpochRecord {
  int64_t epoch = 0, steps = 0;
  double train_loss = 0, train_accuracy = 0, test_accuracy = -1, test_loss = 0;
  double seconds = 0, samples_per_s = 0, data_wait_s = 0;
  float loss_scale = 1;
  int64_t skipped_steps = 0;
};

struct TrainResult {
  std::vector<StepRecord> steps;
  std::vector<EpochRecord> epochs;
  double seconds = 0;
  int64_t samples = 0;
};

// Called after every step (for the progress bar): the step just done, steps in total.
using StepCallback = std::function<void(const StepRecord&, int64_t total_steps, double samples_per_s)>;
// Called after every epoch (with its test accuracy when evaluated).
using EpochCallback = std::function<void(const EpochRecord&)>;

class Trainer {
 public:
  Trainer(const Model& model, const Dataset& train, const Dataset* test, Backend& backend, const TrainOptions& opt);
  TrainResult run(const StepCallback& on_step = {}, const EpochCallback& on_epoch = {});
  Network& network() { return net_; }
  // Where a run resumed from a checkpoint starts, and what it has left to do; a line for
  // the user ("resumed ... at step 120 (epoch 2), loss scale 1024: 80 steps remain").
  struct Resumed {
    std::string path;
    int64_t step = 0, epoch = 0, remaining = 0;
    float loss_scale = 1;
    std::string line() const;
  };
  const std::optional<Resumed>& resumed() const { return resumed_; }
  // Writes the checkpoint of the current state to `path` atomically (temporary file,
  // flush, fsync, rename).
  void save_checkpoint(const std::string& path) const;

 private:
  void load_checkpoint(const std::string& path);
  int64_t total_steps() const;  // the schedule's, capped by max_steps
  // Per-layer gating: the last backward's update, still to run layer by layer. Sharded:
  // the last step's parameters, still to arrive (all-gathered) and be taken.
  struct Pending {
    bool active = false, nonfinite = false;
    int64_t step = 0;
    float scale = 1;
    double wait_s = 0, update_s = 0;  // spent on it in the current forward pass
  };
  void gate_layer(int l);  // waits for layer l's sums and runs its update (sharded: takes its parameters)
  void take_parameters(int first, int end);  // sharded: gathered parameters of positions [first, end)
  bool sharded_step(float scale);  // sharded: the shard's update, then the all-gathers; false if skipped
  std::vector<std::pair<int64_t, int64_t>> shard_;  // sharded: this rank's element ranges
  void drain();            // waits for the whole exchange and runs every update left
  void close_pending();
  Pending pending_;
  std::vector<std::pair<int, int>> layer_positions_;  // per layer: its backward positions [first, end)
  double evaluate(const Dataset& d, double* loss);

  Model model_;
  const Dataset& train_;
  const Dataset* test_;
  Backend& be_;
  TrainOptions opt_;
  Network net_;
  Optimizer optim_;
  LossScaler scaler_;
  std::mt19937_64 dropout_rng_;
  int64_t step_ = 0, epoch_ = 0, position_ = 0;
  std::optional<Resumed> resumed_;
};

}  // namespace fuseplan::exec
