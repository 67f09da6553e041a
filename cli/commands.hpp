// Subcommand registration and the flags several subcommands share.
#pragma once
#include <CLI/CLI.hpp>
#include <iostream>
#include <string>

#include "format.hpp"
#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan::cli {

struct ModelFlags {
  std::string model = "resnet50";
  int resolution = 0, channels = 0, classes = 0, seq_len = 0;
  std::string attention;
  CLI::Option *model_opt = nullptr, *resolution_opt = nullptr, *channels_opt = nullptr, *classes_opt = nullptr,
              *seq_len_opt = nullptr, *attention_opt = nullptr;
  void add(CLI::App* app, bool positional = false);
  void add_shape(CLI::App* app);      // --resolution, --channels, --classes, --seq-len, --attention only
  void add_attention(CLI::App* app);  // --attention alone
  ModelOptions options() const;   // InputError for an --attention that is neither eager nor fused
  bool shape_given() const;  // any of the shape flags
};

// What "trained" means for time to train: the model family's goal (training_goal),
// unless --epochs / --dataset-size or --tokens say otherwise.
struct GoalFlags {
  double epochs = 0, tokens = 0;
  int64_t dataset_size = 0;
  CLI::Option *epochs_opt = nullptr, *dataset_opt = nullptr, *tokens_opt = nullptr;
  void add(CLI::App* app);
  TrainingGoal goal(const Model& m) const;  // InputError naming the flag
};

// Model, cluster, GPUs, batch, precisions, collective options and the training goal:
// the setup shared by predict, tune, compare and whatif.
struct SetupFlags {
  ModelFlags model;
  std::string cluster = "tencent-p40", precision = "fp16", transfer, profile, nccl_version;
  int gpus = 0, batch = 0, group = 0, torus_x = 0;
  double inter_bw_Gbps = 0, inter_lat_us = -1, intra_bw_GBps = 0, compute_slowdown = 0, compute_variation = 0;
  double measured_rate = 0, compute_scale = 1;
  int measured_accumulate = 0;
  GoalFlags goal_flags;
  CLI::Option *slowdown_opt = nullptr, *variation_opt = nullptr, *rate_opt = nullptr, *rate_accumulate_opt = nullptr;
  CLI::Option* scale_opt = nullptr;
  CLI::Option *cluster_opt = nullptr, *gpus_opt = nullptr, *batch_opt = nullptr, *precision_opt = nullptr;
  // Refuse a model whose replicated states exceed the GPU's memory (schedule turns it
  // off: it prices sharded schedules and marks which fit).
  bool replicated_memory = true;
  void add(CLI::App* app);

  struct Resolved {
    Model model;
    Cluster cluster;
    int gpus = 1, batch = 1;
    Precision compute = Precision::FP16, transfer = Precision::FP16;
  };
  // Loads the model and cluster; GPUs default to 1024 (the paper's scale) capped at the
  // cluster's size; batch to the model's default. Throws InputError naming the flag.
  Resolved resolve() const;
  // --inter-bw / --inter-lat / --intra-bw: what-if overrides of the cluster's networks;
  // --compute-slowdown: of backward's rate beside a running allreduce; --compute-variation:
  // the spread of one GPU's compute time per step; --compute-scale: the framework's speed.
  void apply_overrides(Cluster& c) const;
  // A saved plan bound with the model and cluster it names (--model/--cluster override
  // them) and the training goal: bind_scenario's checks, its warnings on stderr; the
  // --inter-* overrides apply; --gpus, --batch-per-gpu
  // and --precision, if given, must agree with it.
  Scenario load_plan_file(const std::string& path) const;
  // --measured-rate: one GPU's measured training rate in place of the roofline's speed
  // (set_measured_rate), measured with the training loop the command prices (`a`, `k`)
  // unless --measured-accumulate gives the measured run's micro-batches per step; a note
  // on stderr says by how much the compute was scaled. Nothing without the flag.
  // load_plan_file applies it with the plan's loop.
  void apply_measured_rate(Model& m, const Cluster& c, int batch, Precision compute, const Accumulation& a,
                           const OptimizerStep& o) const;
  // --measured-rate's companions and exclusions, before anything is loaded (resolve and
  // load_plan_file call it).
  void check_rate_flags() const;
  CollectiveOptions collective() const { return {group, torus_x, nccl_version}; }
  TrainingGoal goal(const Model& m) const { return goal_flags.goal(m); }
};

// How the training loop steps (--accumulate, --no-sync, --optimizer, --optimizer-kernels,
// --optimizer-bytes, --step-overhead): shared by predict, tune, compare and whatif;
// written to the plans they make.
struct StepFlags {
  int accumulate = 1;
  bool no_sync = false;
  std::string optimizer = "lars", optimizer_kernels = "fused";
  double optimizer_bytes = 0;
  double step_overhead_ms = 0;
  CLI::Option* accumulate_opt = nullptr;
  CLI::Option* optimizer_opt = nullptr;
  CLI::Option* kernels_opt = nullptr;
  CLI::Option* bytes_opt = nullptr;
  CLI::Option* overhead_opt = nullptr;
  void add(CLI::App* app);
  bool given() const {
    return accumulate_opt->count() || no_sync || optimizer_opt->count() || kernels_opt->count() ||
           bytes_opt->count() || overhead_opt->count();
  }
  Accumulation accumulation() const;  // throws InputError naming the flag
  OptimizerStep optimizer_step() const;  // throws InputError naming the flag
  double overhead_s() const;          // throws InputError naming the flag
};

// ", 4 micro-batches per optimizer step (...), optimizer 92 B per parameter, 10 kernels
// per tensor, a fixed 7 ms per step on more than one GPU" for a plan's step, or "" for one
// micro-batch, the default optimizer step and no fixed cost.
std::string step_description(const Accumulation& a, const OptimizerStep& o, double step_overhead_s = 0);

// The fusion strategies' own settings (Horovod's threshold and cycle, DDP's caps), the
// FP32 tensors, streams and packing, and the training loop's step: shared by tune,
// compare and whatif.
struct FusionFlags {
  std::string threshold = "64MiB", ddp_cap = "25", ddp_first = "1MiB", fp32 = "none", pack = "strategy", cast = "none";
  int streams = 1;
  double cycle_ms = 0;
  StepFlags step;
  void add(CLI::App* app);
  void apply(TuneOptions& o) const;  // throws InputError naming the flag
};

// --cast: none | compute | comm (Plan::cast), InputError naming the flag otherwise; and its help.
std::optional<PackOn> parse_cast(const std::string& s);
extern const char* const kCastHelp;

// --measured-rate's companions and exclusions: --measured-accumulate only with it and in
// [1, kMaxAccumulationSteps], no --profile beside it, and --compute-scale (`scale`) beside
// neither (InputError naming the flags).
void check_measured_rate_flags(const CLI::Option* rate, const CLI::Option* accumulate, const std::string& profile,
                               int measured_accumulate, const CLI::Option* scale);
// --measured-accumulate K as the measured run's loop (InputError naming the flag unless
// 1 <= K <= kMaxAccumulationSteps), and the note --measured-rate leaves on stderr.
Accumulation measured_loop_of(int measured_accumulate);
std::string measured_rate_note(double rate, double factor);

// A profile's layer times hold for the precision they were measured at: another one is
// refused (InputError). Another batch is scaled linearly, said on stderr.
void check_profile(const ProfileInfo& p, const std::string& path, int batch, Precision compute);

// --nccl-version, listing the NCCL releases whose tuning constants the model carries.
void add_nccl_version_option(CLI::App* app, std::string& release);
// --compute-slowdown (the what-if set_compute_slowdown applies); the option, to tell
// whether it was given.
CLI::Option* add_compute_slowdown_option(CLI::App* app, double& fraction);
// --compute-variation (the what-if set_compute_variation applies); the option likewise.
CLI::Option* add_compute_variation_option(CLI::App* app, double& cv);
// --compute-scale (the framework's factor set_compute_scale applies); the option likewise.
CLI::Option* add_compute_scale_option(CLI::App* app, double& scale);

// A measured report (fuseplan-exec run --report) of `plan`: the same model, rank count,
// batch and bucket count, or InputError naming both files.
Report load_measured_run(const std::string& measured_path, const Plan& plan, const std::string& plan_path);

// "fuseplan X: resnet50 on tencent-p40 (1024 GPUs = 128 nodes x 8), batch 32 per GPU, fp16 compute"
std::string setup_line(const std::string& command, const Model& m, const Cluster& c, int gpus, int batch,
                       Precision compute);

// The per-bucket table (ready/start/end from backward start) and the iteration summary.
void print_bucket_table(const Report& r, std::ostream& os = out());
void print_iteration_summary(const Report& r, std::ostream& os = out());
// predict --by-class: the report's compute per layer class (nothing where it has none).
void print_compute_by_class(const Report& r, std::ostream& os = out());
// tune --validate sim: plans ranked by prediction, simulated, ranked again.
struct Validated {
  std::string label;
  int buckets;
  double predicted_s, simulated_s;
};
void print_validation(const std::vector<Validated>& v);

void add_models_commands(CLI::App& app);   // models, show
void add_clusters_command(CLI::App& app);
void add_predict_command(CLI::App& app);
void add_collective_command(CLI::App& app);
void add_tune_commands(CLI::App& app);     // tune, compare
void add_whatif_command(CLI::App& app);
void add_simulate_command(CLI::App& app);
void add_calibrate_command(CLI::App& app);
void add_verify_command(CLI::App& app);
void add_export_command(CLI::App& app);
void add_schedule_command(CLI::App& app);
// fuseplan-exec
void add_train_command(CLI::App& app);
void add_run_command(CLI::App& app);
void add_sweep_command(CLI::App& app);
// Parses and runs `app`; library errors become exit codes (2 bad input, 1 failed run).
int run_app(CLI::App& app, int argc, char** argv, const std::string& prog);

}  // namespace fuseplan::cli
