// Schedules beyond fusion: the training iteration as a steady pipeline of one compute
// stream and one communication channel, in which gradients travel in partitions cut at
// any element (not only at tensor boundaries), leave in FIFO or priority order, are
// either allreduced or reduce-scattered during backward and all-gathered later, and the
// next forward pass's layer waits for all communication (a barrier, as DDP and Horovod
// do) or only for its own parameters (as ByteScheduler, DeAR and FSDP do).
//
// The model (docs/schedules.md):
// - The compute stream runs, per iteration, the forward layers in order, the backward
//   steps in reverse, and where the schedule keeps an optimizer step (`step_update`),
//   the update after backward once every reduction of the iteration has ended. With a
//   per-layer update the layer's update runs right before its next forward instead.
// - Gradients are a vector in backward order (position 0 = the last forward tensor);
//   partition i covers elements [bounds[i-1], bounds[i]). It is ready when the backward
//   step that writes the last of its elements ends (plus its packing copy, and never
//   before the partition before it: partitions are launched in backward order).
// - Allreduced partitions copied in backward (pack_on compute, DDP's Reducer) are copied
//   back after it, as the predictor's (copy_back_s): on the compute stream once backward
//   has ended, in partition order, each once its allreduce has ended.
// - The channel carries up to `credit` messages at once (ByteScheduler's credit; 1 =
//   one at a time). The latency part of a message runs on its own, the bandwidth parts of
//   messages in flight share the links equally, as in the predictor's streams; the
//   bandwidth part is at least the algorithm's busiest-link demand (message_cost). Messages
//   are not preempted; a new one starts when a slot frees, the most urgent ready one:
//   FIFO = earliest ready (then lowest index), priority = the earliest forward layer it
//   feeds (then the all-gather before the reduction, then the lowest index), older
//   iterations first in both.
// - An allreduce message costs what the predictor charges a bucket (bucket_terms). A
//   reduce-scatter and an all-gather each cost half of the ring-family allreduce of the
//   same vector (`ring` on MPI clusters, `nccl_ring` on NCCL clusters: those allreduces
//   are a reduce-scatter followed by an all-gather), the reduction in the reduce-scatter
//   and one launch each.
// - The iteration is the steady state's period: the schedule is run for successive
//   iterations until three periods between forward starts agree, plus the input
//   pipeline's wait (ComputeModel::data_wait_s).
// - Processor sharing (Cluster::comm_compute_sharing sigma): while k messages are in
//   flight the compute stream runs at 1 / (1 + sigma k), and messages at 1 / (1 + sigma)
//   while it computes, as the predictor's shared schedule (schedule_shared).
// Horovod's cycle is not part of this model.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/memory.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan {

enum class Exchange { Allreduce, ReduceScatterAllgather };
enum class Order { Fifo, Priority };
enum class Gate { Barrier, PerLayer };
const char* exchange_name(Exchange e);
const char* order_name(Order o);
const char* gate_name(Gate g);

struct PipelineSchedule {
  std::string strategy;          // how it was chosen
  std::vector<int64_t> bounds;   // partition ends in elements, strictly increasing, last = all elements
  Exchange exchange = Exchange::Allreduce;
  Order order = Order::Fifo;
  Gate gate = Gate::Barrier;
  // The optimizer runs once after backward and every reduction (optimizer.step()); else
  // each layer's update runs right before its next forward (ByteScheduler, DeAR).
  bool step_update = true;
  // Reduce-scatter + all-gather only: each GPU updates its 1/p shard of every partition
  // and the all-gather carries parameters (ZeRO-2, FSDP); needs step_update. Else the
  // all-gather carries the reduced gradients and every GPU updates all of them (DeAR).
  bool shard_optimizer = false;
  // Sharded parameters too (FSDP FULL_SHARD, ZeRO-3): each unit's parameters are freed
  // after its forward and all-gathered again before its backward (released when its
  // forward ends, the first backward layer of the unit waiting for it); needs
  // shard_optimizer.
  bool reshard = false;
  int credit = 1;                // messages in flight at once (>= 1)
  // Every partition is copied into a buffer (else it is a view), as the tuner's packed
  // plans are, where `pack_on` says (Plan::pack_on): once ready, off the compute stream
  // (pack_time_s on its message's stream before it: Horovod's fusion buffer), or each gradient as
  // backward makes it (copy_in_backward_s lengthens backward: DDP's bucket buffers).
  bool pack = false;
  PackOn pack_on = PackOn::Comm;
  std::string algorithm = "auto";  // allreduce messages: a registered name or auto
  Precision transfer = Precision::FP16;
};

struct MessageTiming {
  int partition = 0;
  // Allgather: the parameters (or gradients) for the next forward; Regather: a resharded
  // unit's parameters again before its backward.
  enum Kind { Allreduce, ReduceScatter, Allgather, Regather } kind = Allreduce;
  int64_t elems = 0;
  double ready_s = 0, start_s = 0, end_s = 0;  // from the forward start of the steady iteration
};
const char* message_kind_name(MessageTiming::Kind k);
// A partition's messages by slot, for the model and the simulator alike: 0 its reduction
// (an allreduce, or a reduce-scatter with `e` ReduceScatterAllgather), 1 its all-gather,
// 2 its re-gather (resharded).
MessageTiming::Kind message_kind(int slot, Exchange e);

struct PipelineResult {
  double iteration_s = 0;   // the steady period + the input pipeline's wait
  double compute_s = 0;     // forward + backward + the updates on the compute stream
  double exposed_s = 0;     // period - compute: what communication adds
  double comm_busy_s = 0;   // channel time per iteration (latency + bandwidth of every message)
  double data_wait_s = 0;
  int iterations_run = 0;   // iterations simulated to reach the steady state
  bool converged = true;    // three equal periods (else the mean of the last eight)
  // The steady iteration: messages, and each layer's forward start (after its gate),
  // from that iteration's first forward start.
  std::vector<MessageTiming> messages;
  std::vector<double> forward_start_s;
  double backward_start_s = 0, backward_end_s = 0;
};

// Per-GPU memory of a schedule (estimate_memory's layout): sharded schedules keep 1/p of
// the optimizer state and of the reduced gradients plus the largest partition's buffer.
MemoryEstimate schedule_memory(const Model& m, int gpus, int batch_per_gpu, Precision compute,
                               const PipelineSchedule& s);

// Binds a model, cluster, GPU count, batch and compute precision. Not thread-safe (the
// collective model and the message costs are cached).
class PipelineModel {
 public:
  PipelineModel(const Model& m, const Cluster& c, int gpus, int batch_per_gpu, Precision compute,
                CollectiveOptions coll = {});
  // InputError when the schedule is malformed (bounds, credit, shard without a step).
  PipelineResult evaluate(const PipelineSchedule& s, bool with_messages = true) const;
  // The layers' backward times in backward order with the copies `s` makes in backward.
  std::vector<double> backward_steps(const PipelineSchedule& s) const;

  // A lower bound of every schedule's iteration with this transfer precision (any
  // partition, order, exchange, gate and credit): the larger of (a) the compute
  // stream's work; (b) forward + backward + delivering the first layer's parameters after
  // backward; (c) the channel's bandwidth time for every element. A message's latency
  // part and bandwidth part per element are bounded by their minima over sizes 2^(k/4)
  // and all elements, for every algorithm it may use. `certified`: on that grid each
  // algorithm's latency part never falls and bandwidth per element never rises with the
  // size (so the minima lie at the ends); else the bound rests on the grid.
  struct Bound {
    double iteration_s = 0, compute_s = 0, first_layer_s = 0, channel_s = 0;
    bool certified = true;
  };
  Bound lower_bound(Precision transfer, const std::string& algorithm = "auto") const;

  int64_t elements() const { return offsets_.back(); }
  // Element offsets of the tensors in backward order (size tensors + 1).
  const std::vector<int64_t>& tensor_offsets() const { return offsets_; }
  // Bounds of tensor-aligned buckets from backward-position starts (Plan bucket begins).
  std::vector<int64_t> bounds_from_starts(const std::vector<int>& starts) const;
  const Model& model() const { return model_; }
  const Cluster& cluster() const { return cluster_; }
  const CollectiveModel& collectives() const { return coll_; }
  const ComputeModel& compute() const { return compute_; }
  const CollectiveOptions& collective_options() const { return coll_options_; }
  int gpus() const { return gpus_; }
  int batch() const { return batch_; }
  Precision compute_precision() const { return precision_; }
  // Seconds of one message: latency (own) and bandwidth (shared) parts. The total is the
  // closed form's; the bandwidth part is at least the algorithm's bandwidth per element
  // at 2^28 elements times the elements (the busiest link's demand: for small chunks the
  // closed form books a round at a high-alpha link while the NIC still carries it).
  struct Cost {
    double latency_s = 0, bandwidth_s = 0;
  };
  Cost message_cost(MessageTiming::Kind k, int64_t elems, const std::string& algorithm, Precision transfer) const;

  // A schedule's partitions as the pipeline (and the simulator) runs them. InputError
  // when the schedule is malformed.
  struct PartitionInfo {
    int64_t begin = 0, elems = 0;
    int ready_step = 0;        // the backward step whose end makes it ready
    int first_layer = 0;       // the earliest forward layer it feeds (its priority)
    int last_layer = 0;        // the last forward layer whose parameters it carries
    // Its copy into a fusion buffer before its first message, on that message's stream
    // (packed on comm, more than one GPU; as BucketTerms::copy_in_s), and its average
    // copied back out after its allreduce, on the same stream (allreduce exchange; as
    // BucketTerms::copy_out_s); 0 otherwise.
    double copy_in_s = 0, copy_out_s = 0;
    // Its average copied back into the gradients after its allreduce, on the compute
    // stream after backward, in partition order (copy_back_s: DDP's Reducer, packed on
    // compute, allreduce exchange, more than one GPU); 0 otherwise.
    double copy_back_s = 0;
    std::vector<int> layers;   // the forward layers whose parameters it carries
  };
  std::vector<PartitionInfo> partitions(const PipelineSchedule& s) const;
  // The order in which ready messages start, smaller first, for the model and the
  // simulator alike. FIFO: by ready time, then the older iteration, then re-gather,
  // all-gather, reduction. Priority: older iteration first; a re-gather (needed by
  // backward) before the rest of its iteration, in backward order; the rest by the
  // earliest forward layer fed, the all-gather before the reduction. Ties: lower partition.
  using MessageKey = std::tuple<double, double, int, size_t>;
  static MessageKey message_key(Order order, double ready_s, int iteration, MessageTiming::Kind kind,
                                const PartitionInfo& p, size_t partition);
  // Per forward layer: its share of the optimizer step (by parameters).
  const std::vector<double>& update_s() const { return update_s_; }
  // The algorithm whose halves price a reduce-scatter and an all-gather.
  const std::string& rsag_algorithm() const { return rsag_algorithm_; }

 private:
  const Model& model_;
  const Cluster& cluster_;
  int gpus_, batch_;
  Precision precision_;
  CollectiveOptions coll_options_;
  CollectiveModel coll_;
  ComputeModel compute_;
  std::vector<int64_t> offsets_;         // backward order
  std::vector<int> pos_step_;            // backward position -> backward step that writes it
  std::vector<int> pos_layer_;           // backward position -> forward layer index
  std::vector<double> update_s_;         // per layer: its share of the optimizer step
  std::string rsag_algorithm_;
  // message_cost's answers, per algorithm name, by (elements, kind, transfer).
  mutable std::map<std::string, std::unordered_map<int64_t, Cost>, std::less<>> costs_;
  // The link demand per element at kLinkDemandElems, per chosen algorithm, by (kind, transfer).
  mutable std::map<std::string, std::unordered_map<int64_t, double>, std::less<>> demand_;
};

// The schedules users know, and the search over all of them (docs/schedules.md).
enum class ScheduleStrategy { Best, Fusion, Ddp, Horovod, ByteScheduler, UsByte, Dear, Zero2, Fsdp, Zero3 };
inline constexpr ScheduleStrategy kAllScheduleStrategies[] = {
    ScheduleStrategy::Best,  ScheduleStrategy::Fusion, ScheduleStrategy::Ddp,  ScheduleStrategy::Horovod,
    ScheduleStrategy::ByteScheduler, ScheduleStrategy::UsByte, ScheduleStrategy::Dear, ScheduleStrategy::Zero2,
    ScheduleStrategy::Fsdp, ScheduleStrategy::Zero3};
const char* schedule_strategy_name(ScheduleStrategy s);
std::string schedule_strategy_names();
ScheduleStrategy parse_schedule_strategy(const std::string& s, const std::string& flag);

struct ScheduleOptions {
  Precision transfer = Precision::FP16;
  std::string algorithm = "auto";
  int64_t partition_elems = 1000000;    // bytescheduler: BYTESCHEDULER_PARTITION (parameters)
  int64_t credit_elems = 4000000;       // bytescheduler: BYTESCHEDULER_CREDIT (parameters in flight)
  int64_t dear_threshold_bytes = int64_t(25) << 20;  // dear: its fusion buffer
  int64_t zero_bucket_elems = 500000000;             // zero2: reduce_bucket_size = allgather_bucket_size
  int64_t fsdp_min_params = 100000000;               // fsdp: size_based_auto_wrap_policy min_num_params
  int64_t search_evaluations = 300;                  // best: the local search's budget
  // best: only schedules whose per-GPU memory (schedule_memory) is at most this many
  // bytes, when > 0 (the device's memory); if none is found, the fastest regardless.
  double memory_limit_bytes = 0;
};

struct ScheduleResult {
  PipelineSchedule schedule;
  PipelineResult result;
  MemoryEstimate memory;
  bool fits = true;  // memory.total() within ScheduleOptions::memory_limit_bytes (or no limit)
  int64_t evaluations = 0;
  double seconds = 0;
};

// One strategy's schedule. `Best` searches partitions (uniform, growing, tensor-aligned,
// the fusion optimum's), both exchanges, both orders, both gates and credits 1..4, then
// moves boundaries locally; it is never worse than the fusion-only optimum, which it
// starts from.
ScheduleResult schedule_for(const PipelineModel& pm, ScheduleStrategy s, const ScheduleOptions& o);

}  // namespace fuseplan

#include <nlohmann/json.hpp>

#include "fuseplan/costmodel/plan.hpp"

namespace fuseplan {
inline constexpr const char* kScheduleSchema = "fuseplan.schedule/1";
// The schedule, its setup and its prediction as JSON (docs/formats.md, "Schedules").
// `setup` is a one-bucket plan of the same model, cluster, GPUs, batch and precision (the
// model and cluster written as plans write them), so that a reader rebuilds the setup.
nlohmann::json schedule_to_json(const PipelineModel& pm, const ScheduleResult& r, const PipelineModel::Bound* bound);

// A schedule file read back: its setup (a plan, whose buckets are one bucket of every
// tensor) and the schedule. InputError naming the file and JSON path.
struct ScheduleFile {
  Plan setup;
  PipelineSchedule schedule;
};
ScheduleFile load_schedule(const std::string& path);
}  // namespace fuseplan
