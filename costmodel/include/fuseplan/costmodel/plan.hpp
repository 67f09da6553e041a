// The Plan contract: versioned JSON naming the model, cluster, batch, precisions and the
// buckets (contiguous ranges of tensors in backward order, each with its allreduce
// algorithm, stream and transfer precision). One loader/validator for every consumer.
#pragma once
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/models/error.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/models/model.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan {

inline constexpr const char* kPlanSchema = "fuseplan.plan/1";
// The longest framework cycle a plan may name (Horovod's autotuner searches 1-100 ms).
inline constexpr double kMaxCycleMs = 1000;
// The longest fixed cost per step a plan may name ($.step_overhead_ms).
inline constexpr double kMaxStepOverheadMs = 1000;
// The most micro-batches a plan may accumulate per optimizer step.
inline constexpr int kMaxAccumulationSteps = 4096;

struct PlanBucket {
  int begin = 0, end = 0;           // backward positions [begin, end); 0 = last forward tensor
  std::string algorithm = "auto";   // a registered name or "auto"
  int stream = 0;
  Precision transfer = Precision::FP16;
  bool pack = false;                // copied into a buffer (Plan::pack_on says where), else a view
  bool operator==(const PlanBucket&) const = default;
};

// Where a plan's packing copies run ($.pack_on):
// - Comm: a bucket's gradients are copied into its fusion buffer once they are all ready,
//   off the compute stream (Horovod's background thread fills its fusion buffer on its own
//   stream): the copy runs on the allreduce's stream before it (after the stream's
//   previous bucket), not in backward.
// - Compute: each gradient is copied into its bucket as backward makes it, on the compute
//   stream (PyTorch DDP's Reducer copies in the autograd hook, on the gradient's stream):
//   the copies lengthen backward, and every bucket after them is ready later.
enum class PackOn { Comm, Compute };
const char* pack_on_name(PackOn p);
// "comm" | "compute"; InputError naming `where` otherwise.
PackOn parse_pack_on(const std::string& s, const std::string& where);

struct Report;

// Gradient accumulation ($.accumulate): `steps` micro-batches per optimizer step, each
// with its forward and backward. no_sync: the buckets are allreduced on the last
// micro-batch only (PyTorch DDP's no_sync() around the others); otherwise on every one
// (DDP without no_sync, as NVIDIA's DeepLearningExamples train). Figures per micro-batch.
struct Accumulation {
  int steps = 1;
  bool no_sync = false;
  bool operator==(const Accumulation&) const = default;
};

// InputError naming the field unless 1 <= steps <= kMaxAccumulationSteps and no_sync
// comes with steps >= 2.
void check_accumulation(const Accumulation& a);
// InputError naming the field unless 0 <= seconds <= kMaxStepOverheadMs / 1000.
void check_step_overhead(double seconds);

// The optimizer step ($.optimizer): the bytes its update moves per trained parameter and
// how it is launched. kernels_per_tensor 0: fused (one kernel, or multi-tensor launches
// over every parameter: launch cost not priced; LARS/SGD in fuseplan-exec, apex's and
// PyTorch's fused optimizers); N > 0: a loop over the parameter tensors launching N
// kernels each at the device's kernel overhead (torch.optim before PyTorch 2.0 made
// foreach the default). The defaults are fuseplan-exec's fused LARS.
struct OptimizerStep {
  double bytes_per_param = 28;
  int kernels_per_tensor = 0;
  bool fused() const { return kernels_per_tensor == 0; }
  bool operator==(const OptimizerStep&) const = default;
};
inline constexpr double kMaxOptimizerBytesPerParam = 1000;
inline constexpr int kMaxOptimizerKernelsPerTensor = 100;
// An update rule ("lars", "sgd", "adam", "lamb") launched as `kernels` says ("fused";
// "foreach": the per-tensor form's bytes in multi-tensor launches; "per-tensor", or
// "per-tensor:N" for N kernels per tensor) -> its step, its bytes from
// each implementation's code (plan.cpp's table); InputError naming `where` for an
// unknown rule or launch, or a rule with no per-tensor form unless `bytes_given` (the
// caller sets the bytes) and the launch is foreach or per-tensor:N (the bytes_per_param
// returned is then 0, for the caller to set).
OptimizerStep optimizer_step(const std::string& rule, const std::string& kernels, const std::string& where,
                             bool bytes_given = false);
// InputError naming `where` unless bytes_per_param is in (0, kMaxOptimizerBytesPerParam]
// and kernels_per_tensor in [0, kMaxOptimizerKernelsPerTensor].
void check_optimizer_step(const OptimizerStep& s, const std::string& where);
// "28 B per parameter, fused" | "92 B per parameter, 10 kernels per tensor".
std::string optimizer_step_description(const OptimizerStep& s);

// A plan's prediction on the cluster it was made for, kept in the plan file.
struct PlanPrediction {
  double iteration_s = 0, exposed_comm_s = 0, comm_end_s = 0, scaling_efficiency = 0;
};
PlanPrediction plan_prediction(const Report& r);

struct Plan {
  std::string model;                // model name
  // The model's .json when it is not a zoo model ($.model.file): written relative to the
  // plan's directory by save_plan, read back relative to it by load_plan, so that a plan
  // and its model travel together. Empty for zoo models.
  std::string model_file;
  int tensors = 0;
  int64_t params = 0;
  std::string fingerprint;          // Model::fingerprint_hex()
  // The CNN input and classes the plan was made for ($.model.options), so that readers
  // rebuild the same model without repeating --resolution, --channels, --classes.
  ModelOptions model_options;
  std::string cluster;              // shipped name, or a .json path (relative to the plan, as model_file)
  int gpus = 1;
  int batch_per_gpu = 1;
  Precision compute = Precision::FP16;
  std::string strategy;             // how the buckets were chosen
  std::vector<PlanBucket> buckets;
  // The framework's background cycle ($.cycle_ms; Horovod's HOROVOD_CYCLE_TIME): a bucket
  // whose gradients are ready waits for the next tick of the thread that launches
  // allreduces, ticks counted from the start of backward. 0 = launched at once.
  double cycle_s = 0;
  PackOn pack_on = PackOn::Comm;    // where the packed buckets' copies run
  // Gradient casts ($.cast): the gradients are FP32 (FP32 parameters, as under
  // torch.cuda.amp or Keras mixed_float16) and each one sent in FP16 or BF16 is cast to
  // its bucket's transfer precision before the allreduce and the average back after it,
  // a read of 4 bytes and a write of 2 per element each way. The cast in runs where this
  // says, the cast back on the allreduce's stream as the allreduce ends:
  // - Compute: on the compute stream, each gradient as backward makes it (lengthening
  //   backward: PyTorch DDP's fp16_compress_hook / bf16_compress_hook, Horovod's
  //   Compression.fp16);
  // - Comm: on the allreduce's stream, before the allreduce (a framework that casts in
  //   its communication thread, as fuseplan-exec's CPU exchange and PlanDDP do).
  // Unset: the gradients are written at the transfer precision (a model cast to FP16),
  // nothing is cast.
  std::optional<PackOn> cast;
  Accumulation accumulate;
  OptimizerStep optimizer;
  // A fixed cost every iteration (micro-batch) pays on more than one GPU and not on one
  // ($.step_overhead_ms): what a framework's data-parallel step costs beyond the model's
  // terms, calibrated from a measured single-GPU and multi-GPU rate of the same software
  // and hardware (nothing derives it). Serial, after the optimizer; 0 = none.
  double step_overhead_s = 0;
  // The framework's compute scale the plan was made for ($.compute_scale; Cluster::
  // compute_scale: its compute time over what the cluster's constants price): binding the
  // plan prices its compute with it. 1 = the cluster's own speed.
  double compute_scale = 1;
  std::optional<PlanPrediction> prediction;  // what it was predicted to do when made (informational)
};

// Whether any of the plan's buckets is sent in FP16 or BF16 (what a cast applies to).
bool sends_16_bit(const Plan& p);
// Whether the plan casts any gradient: a cast and a bucket sent in FP16 or BF16.
inline bool casts_any(const Plan& p) { return p.cast && sends_16_bit(p); }
// A plan's `cast` as --cast and the reports spell it: compute, comm, or none.
inline const char* cast_name(const std::optional<PackOn>& cast) { return cast ? pack_on_name(*cast) : "none"; }
// The refusal of a cast with nothing to cast (every bucket sent in FP32).
inline constexpr const char* kNothingToCast =
    "every bucket is sent in FP32, so nothing is cast (a cast is to a bucket's FP16 or BF16 transfer and back)";

nlohmann::json plan_to_json(const Plan& p);
Plan plan_from_json(const nlohmann::json& j, const std::string& origin);
class JsonObject;
// A model's shape options as plans keep them ($.model.options: resolution, channels,
// classes, seq_len, attention); InputError naming the file and path of a bad one.
ModelOptions model_options_from_json(JsonObject& o);
// Reads a plan file; its model and cluster paths are taken relative to its directory.
Plan load_plan(const std::string& path);
// The plan as written to `path`: model and cluster paths made relative to its directory.
nlohmann::json plan_to_json_at(const Plan& p, const std::string& path);
// What `--model` loads for this plan: its model file, else its zoo name.
inline const std::string& plan_model_ref(const Plan& p) { return p.model_file.empty() ? p.model : p.model_file; }
// Every tensor covered exactly once, in order; algorithms known; the model matches.
void validate_plan(const Plan& p, const Model& m, const std::string& origin);
int64_t bucket_elements(const Plan& p, const Model& m, const PlanBucket& b);
// For consumers that run or fit one micro-batch per optimizer step (the executors,
// calibrate): InputError naming `origin` and $.accumulate when the plan accumulates.
void require_no_accumulation(const Plan& p, const std::string& origin, const std::string& consumer);

// Bucket specs for quick what-ifs: "per-tensor", "single", "threshold:SIZE" (greedy in
// backward order, Horovod-style), "splits:A,B,..." (backward positions that start a new
// bucket). Throws InputError naming `flag`.
std::vector<PlanBucket> buckets_from_spec(const std::string& spec, const Model& m, const std::string& algorithm,
                                          Precision transfer, const std::string& flag = field("buckets"));
Plan make_plan(const Model& m, const std::string& cluster, int gpus, int batch, Precision compute,
               std::vector<PlanBucket> buckets, const std::string& strategy);

// What a number without a unit means to a size flag: bytes where the peer tool's own flag
// takes bytes (nccl-tests' -b/-e), MiB where it takes MB (PyTorch DDP's bucket_cap_mb,
// whose MB are 2^20 bytes), and otherwise nothing: `--threshold 64` is refused with the
// unit named rather than read as 64 bytes. A bare 0 passes where `zero_ok`.
enum class BareNumber { Bytes, MiB, Refused };

// "64MiB", "25MB", "4K" (K, M, G = powers of 1024 like nccl-tests; KB, MB, GB = 1000;
// KiB, MiB, GiB = 1024); throws InputError naming `flag`.
int64_t parse_bytes(const std::string& s, const std::string& flag, BareNumber bare = BareNumber::Bytes,
                    bool zero_ok = false);
// Where an output named `path` is written: `path` with its symbolic links followed, so
// that a rename into place replaces the file a link names, not the link. A target that
// exists and is not a regular file (/dev/null, a FIFO, a device), and this process's
// standard streams by name (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N), are
// written through (`direct`), never replaced.
struct OutputTarget {
  std::string path;
  bool direct = false;
};
OutputTarget output_target(const std::string& path);
// Appends `content` to a `direct` target: this process's standard streams through
// std::cout / std::cerr (in order with the text around it), any other by opening it.
void write_through(const std::string& target, const std::string& content);

// Writes atomically: a temporary file beside the target (output_target), then rename;
// nothing half-written on failure. A `direct` target is written through, appended to.
// InputError when `path` is a directory or cannot be written.
void write_file_atomic(const std::string& path, const std::string& content);

// A command's outputs land together, only once it has succeeded: while staging is on
// (the command line turns it on for every command), write_file_atomic writes the
// temporary file at once (so a full disk or a missing directory still fails the
// command) and commit_outputs() renames every staged file into place; discard_outputs()
// removes them, leaving existing files byte-identical. A file staged twice keeps the
// last content; a `direct` target (output_target) gets each, in order, at commit.
void stage_outputs(bool on);
void commit_outputs();
void discard_outputs();

}  // namespace fuseplan
