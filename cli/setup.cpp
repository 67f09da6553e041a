// The setup flags shared by predict, tune, compare and whatif.
#include <algorithm>
#include <iostream>
#include <optional>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

namespace {
constexpr int kDefaultGpus = 1024;  // the paper's scale

// Whether a plan's `cluster` (a name or path, perhaps gone) names cluster `c`.
bool same_cluster(const Cluster& c, const std::string& named) {
  try {
    return load_cluster(named).name == c.name;
  } catch (const InputError&) {
    return false;
  }
}

// Binding's notes and warnings, one line each on stderr.
void say(const std::vector<std::string>& warnings) {
  for (const auto& w : warnings) warn_later("fuseplan: " + with_flags(w));
}
}  // namespace

// A profile's layer times hold for the precision they were measured at: another one is
// refused. Another batch is scaled linearly (the compute model's rule), said on stderr.
void check_profile(const ProfileInfo& p, const std::string& path, int batch, Precision compute) {
  if (p.precision != precision_name(compute))
    throw InputError("--profile " + path + ": measured at " + p.precision + ", the prediction is at " +
                     std::string(precision_name(compute)) + " (profile again with --precision " +
                     std::string(precision_name(compute)) + ", or predict with --precision " + p.precision + ")");
  if (p.batch != batch)
    warn_later("fuseplan: warning: --profile " + path + " was measured at batch " + std::to_string(p.batch) +
               " per GPU; its layer times are scaled linearly to batch " + std::to_string(batch) +
               " (small batches often run below that)");
}

void SetupFlags::add(CLI::App* app) {
  model.add(app);
  cluster_opt = app->add_option("--cluster", cluster, "shipped cluster name (see `fuseplan clusters`) or a .json path")
                    ->capture_default_str();
  gpus_opt = app->add_option("--gpus", gpus, "number of GPUs (ranks); default 1024, capped at the cluster's size");
  batch_opt = app->add_option("--batch-per-gpu", batch,
                              "samples per GPU per iteration (default: the model's, e.g. resnet50 32, alexnet_bn 64)");
  precision_opt = app->add_option("--precision", precision, "compute precision: fp16 | bf16 | fp32")->capture_default_str();
  app->add_option("--transfer", transfer, "gradient transfer precision: fp16 | bf16 | fp32 (default: the compute precision)");
  app->add_option("--group", group, "hierarchical group size in GPUs (default: GPUs per node)");
  app->add_option("--torus-x", torus_x, "torus2d row length in GPUs (default: square-ish grid)");
  add_nccl_version_option(app, nccl_version);
  app->add_option("--profile", profile,
                  "measured per-layer times (fuseplan.profile/1, from `fuseplan-exec train --profile`) instead of the "
                  "roofline");
  app->add_option("--inter-bw", inter_bw_Gbps, "what-if: inter-node bandwidth per NIC in Gbps (default: the cluster's)");
  app->add_option("--inter-lat", inter_lat_us, "what-if: inter-node latency in microseconds (default: the cluster's)");
  app->add_option("--intra-bw", intra_bw_GBps,
                  "what-if: bandwidth inside a node in GB/s per GPU per direction, as a ring step sees it (replaces an\n"
                  "NCCL cluster's rates per NVLink; default: the cluster's)");
  slowdown_opt = add_compute_slowdown_option(app, compute_slowdown);
  variation_opt = add_compute_variation_option(app, compute_variation);
  scale_opt = add_compute_scale_option(app, compute_scale);
  rate_opt = app->add_option("--measured-rate", measured_rate,
                             "samples/s one GPU of the cluster was measured to train with this model, batch,\n"
                             "precision and training loop: the compute model is scaled to it (every layer and the\n"
                             "optimizer by one factor) before the GPUs are added; (0, 1e6]; not with --profile");
  rate_accumulate_opt = app->add_option(
      "--measured-accumulate", measured_accumulate,
      "--measured-rate: micro-batches per optimizer step in the measured run, where it stepped otherwise than the\n"
      "prediction (default: the prediction's own; 1 to 4096)");
  goal_flags.add(app);
}

void SetupFlags::check_rate_flags() const {
  check_measured_rate_flags(rate_opt, rate_accumulate_opt, profile, measured_accumulate, scale_opt);
}

void check_measured_rate_flags(const CLI::Option* rate, const CLI::Option* accumulate, const std::string& profile,
                               int measured_accumulate, const CLI::Option* scale) {
  if (accumulate->count() && !rate->count()) throw InputError("--measured-accumulate: applies with --measured-rate");
  if (rate->count() && !profile.empty())
    throw InputError("--measured-rate and --profile are exclusive: both measure the compute");
  if (scale->count() && (rate->count() || !profile.empty()))
    throw InputError(std::string("--compute-scale and ") + (rate->count() ? "--measured-rate" : "--profile") +
                     " are exclusive: the scale is of the roofline's compute, which the other measures");
  if (accumulate->count()) measured_loop_of(measured_accumulate);
}

void SetupFlags::apply_measured_rate(Model& m, const Cluster& c, int batch, Precision compute, const Accumulation& a,
                                     const OptimizerStep& o) const {
  if (!rate_opt->count()) return;
  const Accumulation loop = rate_accumulate_opt->count() ? measured_loop_of(measured_accumulate) : a;
  const double factor = set_measured_rate(m, c, batch, compute, loop, o, measured_rate, "--measured-rate");
  say({measured_rate_note(measured_rate, factor)});
}

Accumulation measured_loop_of(int measured_accumulate) {
  if (measured_accumulate < 1 || measured_accumulate > kMaxAccumulationSteps)
    throw InputError("--measured-accumulate: must be in [1, " + std::to_string(kMaxAccumulationSteps) + "] (got " +
                     std::to_string(measured_accumulate) + ")");
  return {measured_accumulate, false};
}

std::string measured_rate_note(double rate, double factor) {
  return "note: --measured-rate " + formatted(rate, "%g") + ": the compute of one GPU scaled by " +
         formatted(factor, "%.4f") + " (the roofline gave " + formatted(rate * factor, "%.1f") + " samples/s)";
}

void GoalFlags::add(CLI::App* app) {
  epochs_opt = app->add_option("--epochs", epochs,
                               "time to train: epochs over --dataset-size (default: the model family's goal, e.g. "
                               "ResNet 90 epochs of ImageNet-1k, AlexNet 95)");
  dataset_opt = app->add_option("--dataset-size", dataset_size,
                                "time to train: samples per epoch (default: the family's data set, e.g. ImageNet-1k "
                                "1281167)");
  tokens_opt = app->add_option("--tokens", tokens,
                               "time to train: a token budget, e.g. 300e9 (default for BERT 131e9, GPT-2 300e9)");
}

TrainingGoal GoalFlags::goal(const Model& m) const {
  TrainingGoal g = training_goal(m);
  const bool epochs_given = epochs_opt && epochs_opt->count(), dataset_given = dataset_opt && dataset_opt->count();
  if (tokens_opt && tokens_opt->count()) {
    if (epochs_given || dataset_given)
      throw InputError("--tokens: a token budget and --epochs/--dataset-size are two goals; give one");
    if (!(tokens > 0)) throw InputError("--tokens: must be > 0");
    if (sequence_length(m) < 1)
      throw InputError("--tokens: " + m.name + " has no sequence length (not a zoo transformer); use --epochs and "
                       "--dataset-size");
    g.tokens = tokens;
    g.what = grouped(int64_t(tokens)) + " tokens (--tokens)";
    return g;
  }
  if (!epochs_given && !dataset_given) return g;
  if (g.tokens > 0 && !dataset_given)
    throw InputError("--epochs: " + m.name + "'s goal is a token budget (" + g.what + "); give --tokens, or "
                     "--dataset-size in sequences with --epochs");
  // Their ranges are check_goal's (the predictor's), which knows the global batch.
  if (epochs_given) g.epochs = epochs;
  if (dataset_given) g.dataset_size = dataset_size;
  if (g.tokens > 0 && !epochs_given) g.epochs = 1;
  g.tokens = 0;
  g.what = epochs_goal(g.epochs, g.dataset_size) + " (" +
           (epochs_given && dataset_given ? "--epochs, --dataset-size" : epochs_given ? "--epochs" : "--dataset-size") +
           ")";
  return g;
}

void StepFlags::add(CLI::App* cmd) {
  accumulate_opt = cmd->add_option("--accumulate", accumulate,
                                   "gradient accumulation: micro-batches of --batch-per-gpu per optimizer step (1 to "
                                   "4096; figures are per micro-batch; default 1)");
  cmd->add_flag("--no-sync", no_sync, "--accumulate: allreduce on the last micro-batch only, as inside DDP's "
                                      "no_sync() (default: every micro-batch allreduces, as DDP without it)");
  optimizer_opt = cmd->add_option("--optimizer", optimizer,
                                  "the optimizer's update rule, which sets the bytes its step moves per parameter: "
                                  "lars (28 B fused) | sgd (momentum: 20 fused, 48 per-tensor) | adam (Adam, AdamW: "
                                  "28 fused, 92 per-tensor) | lamb (52, fused only)")
                      ->capture_default_str();
  kernels_opt = cmd->add_option("--optimizer-kernels", optimizer_kernels,
                                "fused (one pass over the parameters, bound by memory: apex and PyTorch fused "
                                "optimizers) | foreach (the per-tensor loop's passes in multi-tensor launches: "
                                "PyTorch 2's default) | per-tensor (torch.optim's loop before PyTorch 2.0: the rule's "
                                "kernels per parameter tensor, sgd 5, adam 10) | per-tensor:N (N kernels per tensor)")
                    ->capture_default_str();
  bytes_opt = cmd->add_option("--optimizer-bytes", optimizer_bytes,
                              "bytes the optimizer step moves per parameter, in place of the rule's (an "
                              "implementation the rules do not hold); (0, 1000]");
  overhead_opt = cmd->add_option("--step-overhead", step_overhead_ms,
                                 "a fixed cost in ms every step pays on more than one GPU and not on one (the "
                                 "framework's, beyond what the model prices; calibrated from a measured 1-GPU and "
                                 "N-GPU rate: predict --measured-efficiency; 0 to 1000, default 0)");
}

double StepFlags::overhead_s() const {
  check_step_overhead(step_overhead_ms * 1e-3);
  return step_overhead_ms * 1e-3;
}

Accumulation StepFlags::accumulation() const {
  const Accumulation a{accumulate, no_sync};
  check_accumulation(a);
  return a;
}

OptimizerStep StepFlags::optimizer_step() const {
  OptimizerStep o = fuseplan::optimizer_step(optimizer, "fused", "--optimizer");
  if (kernels_opt->count())
    o = fuseplan::optimizer_step(optimizer, optimizer_kernels, "--optimizer-kernels", bytes_opt->count() > 0);
  if (bytes_opt->count()) {
    o.bytes_per_param = optimizer_bytes;
    check_optimizer_step(o, "--optimizer-bytes");
  }
  return o;
}

std::string step_description(const Accumulation& a, const OptimizerStep& o, double step_overhead_s) {
  std::string s;
  if (a.steps > 1)
    s += ", " + std::to_string(a.steps) + " micro-batches per optimizer step (allreduce on " +
         (a.no_sync ? "the last" : "every one") + "; figures per micro-batch)";
  if (o != OptimizerStep{}) s += ", optimizer " + optimizer_step_description(o);
  if (step_overhead_s > 0)
    s += ", a fixed " + formatted(step_overhead_s * 1e3, "%g") + " ms per step on more than one GPU";
  return s;
}

void FusionFlags::add(CLI::App* cmd) {
  cmd->add_option("--threshold", threshold,
                  "horovod: fusion threshold with a unit, e.g. 64MiB (HOROVOD_FUSION_THRESHOLD; 0 = no fusion)")
      ->capture_default_str();
  cmd->add_option("--cycle-time", cycle_ms, "horovod: background cycle in ms (HOROVOD_CYCLE_TIME; 0 = threshold only)")
      ->capture_default_str();
  cmd->add_option("--ddp-cap", ddp_cap,
                  "ddp: bucket cap; a bare number is MiB, as DDP's bucket_cap_mb (25 = 25 MiB), else a size such as 4MB")
      ->capture_default_str();
  cmd->add_option("--ddp-first", ddp_first, "ddp: first bucket cap with a unit, e.g. 1MiB")->capture_default_str();
  cmd->add_option("--fp32-tensors", fp32, "tensors sent in FP32 whatever --transfer: none | norm | norm+bias "
                                          "(a bucket holding one is sent in FP32)")
      ->capture_default_str();
  cmd->add_option("--streams", streams, "communication streams sharing the links; buckets go round-robin (AIACC)")
      ->capture_default_str();
  cmd->add_option("--pack", pack, "how gradients fill buckets: pack (a fusion buffer copied once the bucket is "
                                  "ready, off the compute stream: Horovod) | inline (each gradient copied into its "
                                  "bucket in backward, on the compute stream: DDP, PlanDDP) | view (no copy) | "
                                  "strategy (horovod pack, ddp inline, others view)")
      ->capture_default_str();
  cmd->add_option("--cast", cast, kCastHelp)->capture_default_str();
  step.add(cmd);
}

const char* const kCastHelp =
    "gradient casts: none (gradients at the transfer precision) | compute (FP32 gradients cast to --transfer in "
    "backward, on the compute stream, and back after the allreduce on its stream: DDP's fp16_compress_hook, "
    "Horovod's Compression.fp16) | comm (both casts on the allreduce's stream, before and after it)";

std::optional<PackOn> parse_cast(const std::string& s) {
  if (s == "none") return std::nullopt;
  if (s == "compute") return PackOn::Compute;
  if (s == "comm") return PackOn::Comm;
  throw InputError("--cast: unknown value '" + s + "' (valid: none, compute, comm)");
}

void FusionFlags::apply(TuneOptions& o) const {
  o.horovod_threshold_bytes = parse_bytes(threshold, "--threshold", BareNumber::Refused, true);
  if (!(cycle_ms >= 0)) throw InputError("--cycle-time: must be >= 0 ms");
  o.horovod_cycle_s = cycle_ms * 1e-3;
  o.ddp_cap_bytes = parse_bytes(ddp_cap, "--ddp-cap", BareNumber::MiB);
  o.ddp_first_bytes = parse_bytes(ddp_first, "--ddp-first", BareNumber::Refused);
  o.fp32 = parse_fp32_tensors(fp32);
  o.streams = streams;
  if (pack == "strategy") o.packing = Packing::Strategy;
  else if (pack == "pack") o.packing = Packing::Pack;
  else if (pack == "inline") o.packing = Packing::Inline;
  else if (pack == "view") o.packing = Packing::View;
  else throw InputError("--pack: unknown value '" + pack + "' (valid: strategy, pack, inline, view)");
  o.cast = parse_cast(cast);
  o.accumulate = step.accumulation();
  o.optimizer = step.optimizer_step();
  o.step_overhead_s = step.overhead_s();
}

CLI::Option* add_compute_slowdown_option(CLI::App* app, double& fraction) {
  return app->add_option("--compute-slowdown", fraction,
                         "what-if: how much longer backward takes while an allreduce runs beside it, 0 to 1\n"
                         "(0.189: 18.9 %, the mean Lee et al. 2025 measured on A100, H100 and AMD GPUs);\n"
                         "the allreduces keep their rate (sets comm_compute_sharing; default: the cluster's,\n"
                         "0 on GPU clusters)");
}

CLI::Option* add_compute_variation_option(CLI::App* app, double& cv) {
  return app->add_option("--compute-variation", cv,
                         "what-if: how much one GPU's forward and backward time varies from step to step and GPU\n"
                         "to GPU, as a relative standard deviation, 0 to 0.5; a step waits for its slowest GPU\n"
                         "(sets compute_variation; default: the cluster's, 0 where it has none)");
}

CLI::Option* add_compute_scale_option(CLI::App* app, double& scale) {
  return app->add_option("--compute-scale", scale,
                         "the framework's compute time over what the cluster's constants price: every layer's\n"
                         "forward and backward and the optimizer step times it (TensorFlow with XLA, MXNet, ...\n"
                         "against the cluster's fit; calibrate --throughput fits it from the framework's rate of\n"
                         "another model: compute_scale); 0.05 to 20, default 1; not with --profile or --measured-rate");
}

void add_nccl_version_option(CLI::App* app, std::string& release) {
  std::string valid;
  for (const auto& r : nccl_releases()) valid += (valid.empty() ? "" : " | ") + r;
  app->add_option("--nccl-version", release,
                  "NCCL release whose tuning constants price NCCL clusters: " + valid +
                      " (2.20 = 2.19-2.22, 2.23 = 2.23 and later; default: the cluster file's, else the newest)");
}

SetupFlags::Resolved SetupFlags::resolve() const {
  check_rate_flags();
  Resolved r;
  r.model = load_model(model.model, model.options());
  std::optional<ProfileInfo> measured;
  if (!profile.empty()) measured = apply_profile(r.model, profile);
  r.cluster = load_cluster(cluster);
  apply_overrides(r.cluster);
  r.gpus = gpus_opt->count() ? gpus : std::min(kDefaultGpus, r.cluster.capacity());
  r.batch = batch_opt->count() ? batch : default_batch_per_gpu(model.model);
  if (r.batch < 1) throw InputError("--batch-per-gpu: must be >= 1 (got " + std::to_string(r.batch) + ")");
  r.compute = parse_precision(precision, "--precision");
  r.transfer = transfer.empty() ? r.compute : parse_precision(transfer, "--transfer");
  if (measured) check_profile(*measured, profile, r.batch, r.compute);
  std::vector<std::string> warnings;
  r.cluster = check_setup(r.model, r.cluster, r.gpus, r.batch, r.compute, r.transfer, "--gpus",
                          "--model " + r.model.name, warnings, replicated_memory);
  say(warnings);
  return r;
}

Scenario SetupFlags::load_plan_file(const std::string& path) const {
  check_rate_flags();
  Plan plan = load_plan(path);
  // The model as the plan recorded it, unless flags say otherwise.
  ModelOptions mo = model.options();
  if (!model.model_opt->count()) {
    if (!mo.resolution) mo.resolution = plan.model_options.resolution;
    if (!mo.channels) mo.channels = plan.model_options.channels;
    if (!mo.classes) mo.classes = plan.model_options.classes;
    if (!mo.seq_len) mo.seq_len = plan.model_options.seq_len;
    if (!mo.attention) mo.attention = plan.model_options.attention;
  }
  Model m = load_model(model.model_opt->count() ? model.model : plan_model_ref(plan), mo);
  std::optional<ProfileInfo> measured;
  if (!profile.empty()) measured = apply_profile(m, profile);
  Cluster c = load_cluster(cluster_opt->count() ? cluster : plan.cluster);
  // Said once the plan is bound: a refusal below is then the only line.
  std::string other_cluster;
  if (cluster_opt->count() && !same_cluster(c, plan.cluster))
    other_cluster = "warning: --cluster " + cluster + " is not the cluster " + path + " was made for (" + plan.cluster +
                    "); its buckets and algorithms are priced on " + c.name + " as they are";
  apply_overrides(c);
  if (gpus_opt->count() && gpus != plan.gpus)
    throw InputError("--gpus " + std::to_string(gpus) + " disagrees with " + path + " (made for " +
                     count_of(plan.gpus, "GPU") + ")");
  if (batch_opt->count() && batch != plan.batch_per_gpu)
    throw InputError("--batch-per-gpu " + std::to_string(batch) + " disagrees with " + path + " (" +
                     std::to_string(plan.batch_per_gpu) + ")");
  if (precision_opt->count() && parse_precision(precision, "--precision") != plan.compute)
    throw InputError("--precision disagrees with " + path);
  if (measured) check_profile(*measured, profile, plan.batch_per_gpu, plan.compute);
  if (scale_opt->count()) plan.compute_scale = c.compute_scale;  // in place of the plan's own
  TrainingGoal g = goal(m);
  Scenario s = bind_scenario(std::move(m), std::move(c), std::move(plan), collective(), std::move(g), path);
  apply_measured_rate(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute, s.plan.accumulate,
                      s.plan.optimizer);
  if (!other_cluster.empty()) s.warnings.insert(s.warnings.begin(), other_cluster);
  say(s.warnings);
  return s;
}

void SetupFlags::apply_overrides(Cluster& c) const {
  if (inter_bw_Gbps != 0) set_inter_bw(c, inter_bw_Gbps, "--inter-bw");
  if (inter_lat_us != -1) set_inter_lat(c, inter_lat_us, "--inter-lat");
  if (intra_bw_GBps != 0) set_intra_bw(c, intra_bw_GBps, "--intra-bw");
  if (slowdown_opt->count()) set_compute_slowdown(c, compute_slowdown, "--compute-slowdown");
  if (variation_opt->count()) set_compute_variation(c, compute_variation, "--compute-variation");
  if (scale_opt->count()) set_compute_scale(c, compute_scale, "--compute-scale");
}

Report load_measured_run(const std::string& measured_path, const Plan& plan, const std::string& plan_path) {
  Report measured = load_report(measured_path);
  if (measured.model != plan.model || measured.gpus != plan.gpus || measured.batch_per_gpu != plan.batch_per_gpu ||
      measured.buckets.size() != plan.buckets.size())
    throw InputError("--measured " + measured_path + ": measures another run than --plan " + plan_path + ": " +
                     measured.model + " x " + std::to_string(measured.gpus) + " ranks, batch " +
                     std::to_string(measured.batch_per_gpu) + ", " + std::to_string(measured.buckets.size()) +
                     " buckets; the plan has " + plan.model + " x " + std::to_string(plan.gpus) + ", batch " +
                     std::to_string(plan.batch_per_gpu) + ", " + std::to_string(plan.buckets.size()) + " buckets");
  return measured;
}

std::string setup_line(const std::string& command, const Model& m, const Cluster& c, int gpus, int batch,
                       Precision compute) {
  int nodes = (gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  return "fuseplan " + command + ": " + m.name + " on " + c.name + " (" + count_of(gpus, "GPU") + " = " +
         std::to_string(nodes) + (nodes == 1 ? " node x " : " nodes x ") + std::to_string(std::min(gpus, c.gpus_per_node)) + "), batch " +
         std::to_string(batch) + " per GPU, " + std::string(precision_name(compute)) + " compute" +
         (c.compute_scale != 1 ? " x " + formatted(c.compute_scale, "%g") + " (the framework's compute scale)" : "");
}

}  // namespace fuseplan::cli
