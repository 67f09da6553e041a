// The analytic wait-free-backprop predictor (DESIGN.md, "The overlap model"): backward
// runs layers in reverse; a bucket is ready when its last gradient is written (plus an
// optional packing copy); its allreduce starts when its stream is free and lasts the
// collective cost plus the launch overhead; streams running at once share bandwidth.
// Iteration = forward + max(backward end, last allreduce end) + optimizer + data wait,
// where a plan copies in backward (PackOn::Compute) the max being the end of the copies
// back after it (copies_back).
#pragma once
#include <cstdint>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan {

// `plan` must have been validated against `model`. The collective and compute models
// must be built for the plan's GPU count, batch and precision.
Report predict(const Model& model, const Cluster& cluster, const Plan& plan, const CollectiveModel& coll,
               const ComputeModel& compute, const TrainingGoal& goal = {}, bool with_timeline = true);

// Bucket timing only (no timeline): the core the tuner calls many times.
std::vector<BucketTiming> schedule_buckets(const std::vector<double>& ready_s, const std::vector<double>& latency_s,
                                           const std::vector<double>& bandwidth_s, const std::vector<int>& stream);

// One bucket's inputs to the schedule. The predictor and the tuner both build them here,
// so the tuner's objective and the predictor's iteration time are the same doubles.
struct BucketTerms {
  double ready_s = 0;      // last gradient ready
  // launch + latency + reduction (+ copy_in_s + copy_out_s): not shared between streams
  double latency_s = 0;
  // On the allreduce's stream (in latency_s), before it: a packed bucket's copy into its
  // fusion buffer, a cast on comm (CommCopies::before_s); after it: the copy out, the
  // cast back (CommCopies::after_s). The stream runs them in turn with its allreduces.
  double copy_in_s = 0, copy_out_s = 0;
  double bandwidth_s = 0;  // shared between streams that run at once
  int64_t bytes = 0;
  CollectiveChoice choice; // empty when there is one GPU
};
// Copying `bytes` into a fusion buffer: one read and one write at effective memory bandwidth.
// A bucket packed on comm (PackOn::Comm, Horovod's fusion buffer) pays it twice on more
// than one GPU, both on its allreduce's stream: the copy in before the allreduce
// (BucketTerms::copy_in_s: once the stream has ended its previous bucket, as Horovod's
// one fusion buffer and stream and fuseplan-exec's communication thread run it), the copy
// of the average back out into the gradients after it (BucketTerms::copy_out_s), so the
// bucket ends, and its stream is free, once the gradients are back in place.
double pack_time_s(const Cluster& cluster, int64_t bytes);
// Casting a gradient of `elems` FP32 elements to `transfer` (Plan::cast), or its average
// back: a read of 4 bytes and a write of 2 per element at effective memory bandwidth; 0
// for an FP32 transfer (nothing is cast).
double cast_time_s(const Cluster& cluster, int64_t elems, Precision transfer);
// DDP's compress hook (fp16_compress_hook, bf16_compress_hook) divides the 16-bit bucket
// by the number of ranks in place, a read and a write of 2 bytes per element at effective
// memory bandwidth: the Reducer, given a hook, copies the gradients in undivided.
double hook_division_s(const Cluster& cluster, int64_t elems);
// What a bucket's copies on its allreduce's stream cost: before it (the copy into a fusion
// buffer, a cast on comm; a cast on compute is in backward instead) and after it (the copy
// out, the cast back wherever the cast in ran); the stream is busy with them either way.
// One GPU has no allreduce and makes none of them.
struct CommCopies {
  double before_s = 0, after_s = 0;
};
CommCopies comm_copies_s(const Cluster& cluster, int64_t elems, Precision transfer, bool pack,
                         std::optional<PackOn> cast, int gpus);
// Copying a gradient of `elems` into its bucket during backward (PackOn::Compute): the
// buckets hold the parameters' precision, FP32 (mixed precision keeps FP32 parameters and
// gradients, as torch.cuda.amp does; a cast to the transfer precision is Plan::cast's).
double copy_in_backward_s(const Cluster& cluster, int64_t elems);
// A plan that copies its gradients into buckets in backward (PackOn::Compute) copies each
// averaged bucket back into its parameters' gradients after its allreduce (DDP's Reducer
// with gradient_as_bucket_view off, and PlanDDP): when backward has ended, in bucket
// order, each once its allreduce has ended and the copy before it is done, on the compute
// stream. Each copy costs what its copy in did (copy_in_backward_s of the bucket's
// elements). Per bucket; 0 for a bucket that is not packed, a plan that packs on comm,
// and one GPU (no allreduce, no Reducer).
std::vector<double> copy_back_s(const Model& model, const Cluster& cluster, const Plan& plan);
// The copies back as a chain after backward: each starts at the later of the previous
// copy's end (the first: `backward_end_s`) and its bucket's end. Their ends (times as
// `buckets`'); the last is the end of the copies.
std::vector<double> copies_back(double backward_end_s, const std::vector<BucketTiming>& buckets,
                                const std::vector<double>& copy_s);
// When a bucket ready at `t` (seconds from the start of backward) is launched by a
// framework thread that ticks every `cycle_s` (Plan::cycle_s): the first tick at or after
// `t`; `t` itself when there is no cycle.
double next_tick(double t, double cycle_s);
// `last_ready_s`: the latest ready time of the bucket's gradients (from backward start).
// `pack`: copied into a fusion buffer (PackOn::Comm); `cast`: the plan's casts (Plan::cast).
BucketTerms bucket_terms(const Cluster& cluster, const CollectiveModel& coll, double last_ready_s, int64_t elems,
                         std::string_view algorithm, Precision transfer, bool pack,
                         std::optional<PackOn> cast = std::nullopt);

// Time from the start of backward at which each backward position's gradient is ready.
std::vector<double> gradient_ready_times(const Model& model, const ComputeModel& compute);
// For each backward position, the backward step (0 = the last layer, run first) whose
// end makes its gradient ready.
std::vector<int> gradient_ready_steps(const Model& model);
// The layers' backward times in backward order (the last layer first).
std::vector<double> backward_steps_s(const ComputeModel& compute);
// The same with copy_in_backward_s of each backward position where `copied`, and
// cast_time_s to a 2-byte transfer where `cast` (empty: none), added to the step that makes
// its gradient; where both (DDP's Reducer copies into its bucket and its compress hook
// casts it), hook_division_s too.
std::vector<double> backward_steps_s(const Model& model, const ComputeModel& compute, const Cluster& cluster,
                                     const std::vector<bool>& copied, const std::vector<bool>& cast = {});
// The same with the copies and casts `plan` makes in backward (its packed buckets'
// gradients when $.pack_on is compute; every gradient of a bucket sent in FP16 or BF16
// when $.cast is compute, on more than one GPU; none otherwise).
std::vector<double> backward_steps_s(const Model& model, const ComputeModel& compute, const Cluster& cluster,
                                     const Plan& plan);
// Ready times from backward steps' times (backward order).
std::vector<double> gradient_ready_times(const Model& model, std::vector<double> steps_s);
// How much longer the slowest of `gpus` GPUs computes than the mean one: 1 + E[max of gpus
// standard normals] x Cluster::compute_variation (1 on one GPU). Every allreduce needs every
// GPU's gradients, so the predictor and the tuner's search time backward on its clock.
double slowest_gpu_factor(const Cluster& cluster, int gpus);

// Backward and the allreduces sharing the processor (Cluster::sharing, sigma). While k
// allreduces run, backward proceeds at rate 1 / (1 + sigma.compute k) and, while backward
// runs, each allreduce at rate 1 / (1 + sigma.comm); the bandwidth parts of
// concurrent allreduces share the links as in schedule_buckets. A bucket is ready at the
// end of backward step `after_step`, at the next tick of the framework's cycle `cycle_s`
// where there is one (next_tick); copies on its stream are in its latency. With
// sigma = 1 on one stream this is processor sharing of one core by two threads:
// overlapping saves nothing but the gaps, the total work stays.
struct SharedBucket {
  int after_step = 0;
  double latency_s = 0, bandwidth_s = 0;
  int stream = 0;
};
// `copy_back_s` (per bucket, or empty for none): the copies back (copy_back_s above) run
// after backward as compute work, each once its bucket has ended, sharing the processor
// with the allreduces still running.
struct SharedTiming {
  std::vector<BucketTiming> buckets;
  std::vector<double> step_end_s;  // backward order
  std::vector<double> copy_end_s;  // per bucket, where there are copies back
  double backward_end_s = 0, comm_end_s = 0;
  double copies_end_s = 0;         // the last copy back's end, else max(backward end, comm end)
};
SharedTiming schedule_shared(const std::vector<double>& step_s, const std::vector<SharedBucket>& buckets,
                             ProcessorSharing sigma, double cycle_s = 0, const std::vector<double>& copy_back_s = {});

}  // namespace fuseplan
