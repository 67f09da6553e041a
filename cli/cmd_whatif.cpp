// `fuseplan whatif`: sweeps (table, CSV, JSON) and inverse capacity questions.

#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "progress.hpp"
#include "whatif_view.hpp"
#include "fuseplan/costmodel/whatif.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"

namespace fuseplan::cli {

namespace {

struct WhatIfFlags {
  std::string models = "resnet50", cluster = "tencent-p40", gpus = "1024", inter_bw, batch = "0";
  std::string precisions = "fp16", transfer, algorithms = "auto", strategies = "optimal";
  int segments = 2, group = 0, torus_x = 0, max_gpus = 0;
  std::string nccl_version, profile;
  double inter_lat_us = -1, compute_slowdown = 0, compute_variation = 0, measured_rate = 0, compute_scale = 1;
  int measured_accumulate = 0;
  CLI::Option *slowdown_opt = nullptr, *variation_opt = nullptr, *rate_opt = nullptr, *rate_accumulate_opt = nullptr;
  CLI::Option* scale_opt = nullptr;
  FusionFlags fusion;
  GoalFlags goal;
  std::string out, deadline, solve = "bandwidth";
  double target_efficiency = 0;
  bool quiet = false, json = false, csv = false;
  ModelFlags model_shape;  // --resolution etc. (its --model is unused here)
};

std::vector<int> to_ints(const std::vector<double>& v) { return {v.begin(), v.end()}; }

void run_whatif(const WhatIfFlags& f) {
  WhatIfSettings settings;
  settings.model_options = f.model_shape.options();
  settings.collective = {f.group, f.torus_x, f.nccl_version};
  settings.goal = [&f](const Model& m) { return f.goal.goal(m); };
  settings.tune.segments = f.segments;
  f.fusion.apply(settings.tune);
  if (!f.transfer.empty()) {
    settings.transfer_follows_compute = false;
    settings.tune.transfer = parse_precision(f.transfer, "--transfer");
  }
  WhatIfAxes axes;
  axes.models = split_list(f.models, "--model");
  axes.gpus = to_ints(parse_range(f.gpus, "--gpus", true));
  if (!f.inter_bw.empty()) axes.inter_bw_Gbps = parse_range(f.inter_bw, "--inter-bw", false);
  axes.batch_per_gpu = f.batch == "0" ? std::vector<int>{0} : to_ints(parse_range(f.batch, "--batch-per-gpu", true));
  axes.precisions.clear();
  for (const auto& p : split_list(f.precisions, "--precision")) axes.precisions.push_back(parse_precision(p, "--precision"));
  axes.algorithms = split_list(f.algorithms, "--algorithm");
  for (const auto& a : axes.algorithms)
    if (a != "auto") find_algorithm(a);
  axes.strategies.clear();
  for (const auto& s : split_list(f.strategies, "--strategy")) axes.strategies.push_back(parse_strategy(s));

  Cluster base = load_cluster(f.cluster);
  if (f.inter_lat_us != -1) set_inter_lat(base, f.inter_lat_us, "--inter-lat");
  if (f.slowdown_opt->count()) set_compute_slowdown(base, f.compute_slowdown, "--compute-slowdown");
  if (f.variation_opt->count()) set_compute_variation(base, f.compute_variation, "--compute-variation");
  if (f.scale_opt->count()) set_compute_scale(base, f.compute_scale, "--compute-scale");
  for (double bw : axes.inter_bw_Gbps) {  // each value checked here, to name the flag
    Cluster probe = base;
    set_inter_bw(probe, bw, "--inter-bw");
  }
  if (!f.profile.empty()) {
    // A profile is one model's layer times at one precision: every point must be of both.
    if (axes.models.size() != 1)
      throw InputError("--profile " + f.profile + ": measured times are of one model; give one --model");
    Model m = load_model(axes.models[0], settings.model_options);
    const ProfileInfo info = apply_profile(m, f.profile);
    for (Precision p : axes.precisions)
      for (int b : axes.batch_per_gpu) check_profile(info, f.profile, b ? b : default_batch_per_gpu(axes.models[0]), p);
    settings.profile = f.profile;
  }
  check_measured_rate_flags(f.rate_opt, f.rate_accumulate_opt, f.profile, f.measured_accumulate, f.scale_opt);
  if (f.rate_opt->count()) {
    // A rate is one model's at one batch and precision: every point must be of them.
    if (axes.models.size() != 1 || axes.batch_per_gpu.size() != 1 || axes.precisions.size() != 1)
      throw InputError("--measured-rate: a rate is measured with one model, batch and precision; give one --model, "
                       "--batch-per-gpu and --precision");
    settings.measured_rate = f.measured_rate;
    settings.measured_batch = axes.batch_per_gpu[0] ? axes.batch_per_gpu[0] : default_batch_per_gpu(axes.models[0]);
    settings.measured_precision = axes.precisions[0];
    settings.measured_loop =
        f.rate_accumulate_opt->count() ? measured_loop_of(f.measured_accumulate) : settings.tune.accumulate;
    // Checked here to name the flag, and the factor said once.
    Model m = load_model(axes.models[0], settings.model_options);
    const double factor = set_measured_rate(m, base, settings.measured_batch, settings.measured_precision,
                                            settings.measured_loop, settings.tune.optimizer, f.measured_rate,
                                            "--measured-rate");
    warn_later("fuseplan: " + measured_rate_note(f.measured_rate, factor));
  }
  // Non-default training-loop steps are named above the table ("step: 4 micro-batches ...").
  const std::string step =
      step_description(settings.tune.accumulate, settings.tune.optimizer, settings.tune.step_overhead_s);
  const WhatIfOutput output{f.csv, f.json, f.out, step.empty() ? "" : "step:" + step.substr(1)};
  WhatIf w(std::move(base), settings);
  ProgressBar bar("configurations", f.quiet);
  Progress progress = [&bar](size_t d, size_t t) { bar(int64_t(d), int64_t(t)); };

  const bool inverse = f.target_efficiency != 0 || !f.deadline.empty();
  if (!inverse) {
    print_rows(w.sweep(axes, progress), w.cluster(), output);
    return;
  }
  if (w.count(axes) != 1)
    throw InputError("--target-efficiency/--deadline answer for one setup: give one value per axis (got " +
                     std::to_string(w.count(axes)) + " combinations)");
  WhatIfPoint p{axes.models[0], axes.gpus[0], axes.inter_bw_Gbps.empty() ? 0 : axes.inter_bw_Gbps[0],
                axes.batch_per_gpu[0], axes.precisions[0], axes.algorithms[0], axes.strategies[0]};
  if (f.max_gpus < 0) throw InputError("--max-gpus: must be >= 1");
  const std::vector<int> candidates = w.gpu_candidates(f.max_gpus);
  nlohmann::json j;
  WhatIfRow row;
  std::string answer;
  if (!f.deadline.empty()) {
    if (f.target_efficiency != 0) throw InputError("--deadline and --target-efficiency are separate questions; ask one");
    double deadline = parse_duration(f.deadline, "--deadline");
    row = w.min_gpus_for_deadline(p, deadline, candidates, progress);
    double gpu_hours = row.point.gpus * row.report.time_to_train_s / 3600;
    answer = "fewest GPUs that train " + p.model + " (" + row.report.goal + ") within " + f.deadline + ": " + count_of(row.point.gpus, "GPU") + " (" +
             count_of(nodes_of(w.cluster(), row.point.gpus), "node") + "), " +
             human_duration(row.report.time_to_train_s) + ", " + fixed(gpu_hours, 1) + " GPU-hours";
    j = {{"question", "deadline"}, {"deadline_s", deadline}, {"goal", row.report.goal}, {"gpus", row.point.gpus},
         {"time_to_train_s", row.report.time_to_train_s}, {"gpu_hours", gpu_hours}};
  } else if (f.solve == "bandwidth") {
    double bw = w.min_bandwidth_for(p, f.target_efficiency, progress);
    p.inter_bw_Gbps = bw;
    row = w.evaluate(p);
    answer = "minimum inter-node bandwidth for " + percent(f.target_efficiency) + " scaling efficiency with " +
             p.model + " on " + count_of(p.gpus, "GPU") + ": " + fixed(bw, 2) + " Gbps per NIC (" +
             std::to_string(w.cluster().inter->nics_per_node) + " per node; the cluster has " +
             fixed(w.cluster().inter->nic_bw_Gbps, 1) + ")";
    j = {{"question", "target_efficiency"}, {"solve", "bandwidth"}, {"target", f.target_efficiency},
         {"inter_bw_Gbps", bw}};
  } else if (f.solve == "gpus") {
    row = w.max_gpus_for(p, f.target_efficiency, candidates, progress);
    // The largest count searched reached the target: the answer is the search's cap, not
    // a limit of the setup, and says so.
    const bool capped = row.point.gpus == candidates.back();
    answer = "most GPUs with at least " + percent(f.target_efficiency) + " scaling efficiency for " + p.model + ": " +
             std::to_string(row.point.gpus) + " (" + percent(row.report.scaling_efficiency) + ")" +
             (capped ? "; that is the largest count searched, so more may qualify (--max-gpus searches further)" : "");
    j = {{"question", "target_efficiency"}, {"solve", "gpus"}, {"target", f.target_efficiency},
         {"gpus", row.point.gpus}, {"search_cap_reached", capped}};
  } else {
    throw InputError("--solve: unknown value '" + f.solve + "' (valid: bandwidth, gpus)");
  }
  if (f.json) {  // print_rows warns in the other formats
    warn({row});
    j["row"] = row_json(row, w.cluster());
    emit(j.dump(2) + "\n", f.out);
  } else if (f.csv) {
    print_rows({row}, w.cluster(), output);
  } else {
    std::cout << answer << "\n";
    print_rows({row}, w.cluster(), output);
  }
}

}  // namespace

void add_whatif_command(CLI::App& app) {
  auto f = std::make_shared<WhatIfFlags>();
  auto* cmd = app.add_subcommand(
      "whatif",
      "Capacity planning: sweep models, GPUs, inter-node bandwidth, batch, precision, algorithm and strategy\n"
      "(each point tuned and predicted), or ask inverse questions. Lists are comma-separated; numeric axes\n"
      "also take MIN:MAX (doubling) or MIN:MAX:+STEP (at most " + std::to_string(kMaxRangeValues) + " values a list, " +
          std::to_string(kMaxWhatIfPoints) + " configurations).");
  cmd->add_option("--model", f->models, "model names or .json paths")->capture_default_str();
  cmd->add_option("--cluster", f->cluster, "shipped cluster name or .json path (grown by whole nodes if --gpus asks "
                                           "for more)")
      ->capture_default_str();
  cmd->add_option("--gpus", f->gpus, "GPU counts, e.g. 8:2048 or 64,512,1024")->capture_default_str();
  cmd->add_option("--inter-bw", f->inter_bw, "inter-node bandwidth per NIC in Gbps, e.g. 25,100,400 (default: the "
                                             "cluster's)");
  cmd->add_option("--batch-per-gpu", f->batch, "samples per GPU (0 = the model's default)")->capture_default_str();
  cmd->add_option("--precision", f->precisions, "compute precisions: fp16, bf16, fp32")->capture_default_str();
  cmd->add_option("--transfer", f->transfer, "gradient transfer precision for every point (default: the compute one)");
  cmd->add_option("--algorithm", f->algorithms, "allreduce algorithms: auto or names")->capture_default_str();
  cmd->add_option("--strategy", f->strategies, "fusion strategies: " + strategy_names())->capture_default_str();
  cmd->add_option("--segments", f->segments, "K for k-split")->capture_default_str();
  cmd->add_option("--group", f->group, "hierarchical group size in GPUs (default: GPUs per node)");
  cmd->add_option("--torus-x", f->torus_x, "torus2d row length in GPUs (default: square-ish grid)");
  add_nccl_version_option(cmd, f->nccl_version);
  f->fusion.add(cmd);
  cmd->add_option("--inter-lat", f->inter_lat_us, "inter-node latency in microseconds (default: the cluster's)");
  f->slowdown_opt = add_compute_slowdown_option(cmd, f->compute_slowdown);
  f->variation_opt = add_compute_variation_option(cmd, f->compute_variation);
  f->scale_opt = add_compute_scale_option(cmd, f->compute_scale);
  cmd->add_option("--profile", f->profile,
                  "measured per-layer times (fuseplan.profile/1, from `fuseplan-exec train --profile`) instead of the "
                  "roofline; one --model and its precision");
  f->rate_opt = cmd->add_option("--measured-rate", f->measured_rate,
                                 "samples/s one GPU was measured to train with the one --model, --batch-per-gpu,\n"
                                 "--precision and training loop: the compute model is scaled to it for every point\n"
                                 "(as predict --measured-rate); (0, 1e6]; not with --profile");
  f->rate_accumulate_opt = cmd->add_option(
      "--measured-accumulate", f->measured_accumulate,
      "--measured-rate: micro-batches per optimizer step in the measured run, where it stepped otherwise than the\n"
      "points (default: --accumulate's; 1 to 4096)");
  f->goal.add(cmd);
  auto* json = cmd->add_flag("--json", f->json, "print JSON rows instead of the table");
  cmd->add_flag("--csv", f->csv, "print CSV rows instead of the table")->excludes(json);
  cmd->add_option("--out", f->out, "write the table/CSV/JSON to FILE instead of stdout");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
  cmd->add_option("--target-efficiency", f->target_efficiency,
                  "inverse: the scaling efficiency to reach, in (0, 1]; see --solve");
  cmd->add_option("--solve", f->solve, "with --target-efficiency: bandwidth (minimum Gbps per NIC) | gpus (most GPUs)")
      ->capture_default_str();
  cmd->add_option("--deadline", f->deadline, "inverse: fewest GPUs that reach the training goal (the model family's, or --epochs, --dataset-size, --tokens) within "
                                             "this time (90s, 10m, 2h, 1.5d)");
  cmd->add_option("--max-gpus", f->max_gpus, "largest GPU count the inverse questions try (default: the cluster's "
                                             "size; more grows it by whole nodes)");
  cmd->add_option("--resolution", f->model_shape.resolution, "CNN input height = width in pixels");
  f->model_shape.resolution_opt = cmd->get_option("--resolution");
  f->model_shape.channels_opt = cmd->add_option("--channels", f->model_shape.channels, "CNN input channels");
  f->model_shape.classes_opt = cmd->add_option("--classes", f->model_shape.classes, "CNN classifier outputs");
  f->model_shape.seq_len_opt = cmd->add_option("--seq-len", f->model_shape.seq_len, "transformer sequence length");
  f->model_shape.add_attention(cmd);
  cmd->callback([f] { run_whatif(*f); });
}

}  // namespace fuseplan::cli
