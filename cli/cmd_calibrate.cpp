// `fuseplan calibrate`: fits each measured algorithm's alpha, beta and gamma (an allreduce
// sweep from `fuseplan-exec sweep`, or nccl-tests all_reduce_perf output) and writes them
// into a copy of the cluster file; --holdout checks the fit on sizes it did not see.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>
#include <memory>

#include "commands.hpp"
#include "calibrate_view.hpp"
#include "format.hpp"
#include "verify_view.hpp"
#include "fuseplan/costmodel/calibrate.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/exec/discover.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan::cli {

namespace {

struct CalibrateFlags {
  std::string cluster = "local-cpu", sweep, nccl_tests, as, out, fit_sizes, model, throughput;
  std::vector<std::string> profiles;  // every --profile
  std::vector<std::string> plans, measured, fit;
  int ranks = 0, per_node = 0, max_segments = 4;
  double segment_tolerance = 0.05;
  bool holdout = false, discover = false, accept_degenerate = false;
  CLI::Option* cluster_opt = nullptr;
  ModelFlags shape;  // --model's shape: the profile names the model, not its input
  std::string profile() const { return profiles.empty() ? "" : profiles.front(); }  // the first, or ""
};

// A draft cluster file of this machine: the CPU executor's template (local-cpu) with
// what hwloc and rdma-core report; every discovered value says so in `provenance`.
void run_discover(const CalibrateFlags& f) {
  const exec::MachineInfo m = exec::discover_machine();
  print_machine(out(), m);
  const Cluster c = exec::draft_cluster(m, load_cluster(f.cluster), f.cluster);
  if (!f.out.empty()) {
    const nlohmann::json j = cluster_to_json(c);
    cluster_from_json(j, f.out);  // the draft must read back
    write_file_atomic(f.out, j.dump(2) + "\n");
    out() << "  wrote the draft " << f.out << " (check the values marked as template or assumption)\n";
  }
}

void fit_communication(const CalibrateFlags& f, Cluster& c);
std::vector<OverlapRun> overlap_runs(const CalibrateFlags& f, const Cluster& c);
OverlapTargets overlap_targets(const CalibrateFlags& f);
void fit_overlap(const CalibrateFlags& f, const OverlapTargets& targets, const std::vector<OverlapRun>& runs,
                 Cluster& c);
struct MeasuredModel {  // --model with its --profile applied
  Model model;
  ProfileInfo info;
  Precision precision;  // the profile's
};
void fit_compute(const CalibrateFlags& f, const MeasuredModel& measured, Cluster& c);
std::map<Precision, double> fit_rates(const CalibrateFlags& f, const std::vector<ThroughputMeasurement>& rates,
                                      Cluster& c);
void calibrate_scaling(const CalibrateFlags& f, const std::vector<ScalingMeasurement>& ms,
                       const std::map<Precision, double>& compute_scale, Cluster& c);

void run_calibrate(const CalibrateFlags& f) {
  if (f.discover) {
    if (!f.sweep.empty() || !f.nccl_tests.empty() || !f.throughput.empty() || !f.plans.empty() || !f.profiles.empty())
      throw InputError("--discover: give it without --sweep/--nccl-tests/--plan/--profile/--throughput");
    return run_discover(f);
  }
  if (!f.sweep.empty() && !f.nccl_tests.empty()) throw InputError("calibrate: give --sweep or --nccl-tests, not both");
  if (f.plans.size() != f.measured.size())
    throw InputError("calibrate: give one --measured per --plan (" + std::to_string(f.plans.size()) + " plans, " +
                     std::to_string(f.measured.size()) + " measured)");
  if (f.sweep.empty() && f.nccl_tests.empty() && f.plans.empty() && f.profile().empty() && f.throughput.empty())
    throw InputError("calibrate: give --sweep, --nccl-tests, --plan with --measured, --profile with --model, or "
                     "--throughput (or --discover)");
  if (!f.throughput.empty() && !f.profile().empty() && f.plans.empty())
    throw InputError("--throughput and --profile with --model are exclusive: both fit the layer classes' compute");
  if (!f.model.empty() && (f.profile().empty() || !f.plans.empty()))
    throw InputError("--model: only with --profile and without --plan (the layer classes' compute fit)");
  if (!f.profile().empty() && f.plans.empty() && f.model.empty())  // before any fit prints
    throw InputError("--profile: give --model, the model it was measured on (a zoo name or the model .json)");
  if (f.shape.shape_given() && f.model.empty())
    throw InputError("--resolution/--channels/--classes/--seq-len/--attention: set the shape of --model "
                     "(with --profile); give --model");
  if (!f.nccl_tests.empty() && !f.cluster_opt->count()) {
    std::string names;
    for (const auto& n : shipped_cluster_names())
      if (load_cluster(n).library == "nccl") names += (names.empty() ? "" : ", ") + n;
    throw InputError("--nccl-tests: give --cluster, the cluster the log was measured on (shipped NCCL clusters: " +
                     names + "; or a .json path)");
  }
  if (!f.fit.empty() && f.plans.empty())
    throw InputError("--fit: only with --plan and --measured (what the overlap fit fits)");
  if (f.profiles.size() > 1 && f.plans.empty())
    throw InputError("--profile: one only with --model (the layer classes' compute fit)");
  if (f.profiles.size() > 1 && f.profiles.size() != f.plans.size())
    throw InputError("--profile: give one for every run, or one per --plan in order (" +
                     std::to_string(f.plans.size()) + " plans, " + std::to_string(f.profiles.size()) + " profiles)");
  Cluster c = load_cluster(f.cluster);
  // Every input read before any fit prints: a bad one is then the only line.
  const OverlapTargets targets = overlap_targets(f);
  std::optional<MeasuredModel> measured;
  if (!f.profile().empty() && f.plans.empty()) {
    Model m = load_model(f.model, f.shape.options());
    ProfileInfo info = apply_profile(m, f.profile());
    const Precision p = parse_precision(info.precision, "--profile " + f.profile() + ": precision");
    measured = MeasuredModel{std::move(m), std::move(info), p};
  }
  // Bound on the cluster as given: binding checks its size and memory, which the
  // communication fit below leaves as they are; the overlap is fitted on the cluster as
  // calibrated by then.
  const std::vector<OverlapRun> runs = overlap_runs(f, c);
  const ThroughputFile rates = f.throughput.empty() ? ThroughputFile{} : load_throughput_file(f.throughput);
  if (!f.throughput.empty() && !rates.fits_cluster() && !f.out.empty() && f.sweep.empty() && f.nccl_tests.empty() &&
      f.plans.empty())
    throw InputError("--out: no measurement of --throughput " + f.throughput + " fits a value of the cluster file "
                     "(each is held out, its `fit` empty, or fits only a framework's compute_scale or step "
                     "overhead): nothing to write");
  if (!f.sweep.empty() || !f.nccl_tests.empty()) fit_communication(f, c);
  if (!f.plans.empty()) fit_overlap(f, targets, runs, c);
  if (measured) fit_compute(f, *measured, c);
  // A framework's compute scale prices the file's scaling runs too (its runs are that
  // framework's), but is not the cluster's: the file written leaves it out.
  const auto scale = rates.rates.empty() ? std::map<Precision, double>{} : fit_rates(f, rates.rates, c);
  if (!rates.scaling.empty()) {
    if (!rates.rates.empty()) out() << "\n";  // after the rates' table
    calibrate_scaling(f, rates.scaling, scale, c);
  }
  if (!f.out.empty()) {
    if (c.name.find("-calibrated") == std::string::npos) c.name += "-calibrated";
    write_file_atomic(f.out, cluster_to_json(c).dump(2) + "\n");
    out() << "  wrote " << f.out << " (use it as --cluster)\n";
  }
}

// The measured runs of --plan / --measured, bound on cluster `c` (its warnings are about
// training, not this fit).
std::vector<OverlapRun> overlap_runs(const CalibrateFlags& f, const Cluster& c) {
  std::vector<OverlapRun> runs;
  for (size_t i = 0; i < f.plans.size(); ++i) {
    Plan plan = load_plan(f.plans[i]);
    require_no_accumulation(plan, f.plans[i], "calibrate (it fits runs of one micro-batch per step)");
    Model model = load_model(plan_model_ref(plan), plan.model_options);
    // Each run's own profile where there is one per run (a compute speed of its own job).
    if (!f.profiles.empty()) apply_profile(model, f.profiles[f.profiles.size() > 1 ? i : 0]);
    Scenario s = bind_scenario(std::move(model), c, std::move(plan), {}, {}, f.plans[i]);
    Report measured = load_measured_run(f.measured[i], s.plan, f.plans[i]);
    if (const auto planned = plan_as_run(s.plan, measured))
      out() << "  --plan " << f.plans[i] << ": " << as_run_line(*planned, measured.cast) << "\n";
    runs.push_back({std::move(s.model), std::move(s.plan), std::move(measured)});
  }
  return runs;
}

// What --fit asks the overlap fit for (default: the sharing for one run, with the
// dispatch overhead for several).
OverlapTargets overlap_targets(const CalibrateFlags& f) {
  std::vector<std::string> what = f.fit;
  if (what.empty()) what = f.plans.size() > 1 ? std::vector<std::string>{"sharing", "dispatch"} : std::vector<std::string>{"sharing"};
  OverlapTargets t;
  for (const auto& name : what) {
    if (name == "sharing") t.sharing = true;
    else if (name == "dispatch") t.dispatch = true;
    else if (name == "allreduce-sharing") t.allreduce_sharing = true;
    else if (name == "bandwidth") t.bandwidth = true;
    else throw InputError("--fit: unknown '" + name + "' (valid: sharing, dispatch, allreduce-sharing, bandwidth)");
  }
  return t;
}

// The processor sharing between backward and communication and the per-bucket dispatch
// overhead, fitted to measured runs of plans that overlap them (on the cluster as
// calibrated so far).
void fit_overlap(const CalibrateFlags& f, const OverlapTargets& t, const std::vector<OverlapRun>& runs,
                 Cluster& c) {
  const OverlapFit fit = fit_overlap(c, runs, t, {});
  print_overlap_fit(out(), fit, runs, f.plans, t,
                    f.profiles.size() > 1 ? "one per run (" + std::to_string(f.profiles.size()) + ")" : f.profile());
  std::string sources;
  for (size_t i = 0; i < runs.size(); ++i)
    sources += (i ? ", " : "") + f.plans[i] + " (" + signed_percent(fit.after[i].iteration) + ")";
  apply_overlap_fit(c, fit, t, sources);
}

// Each layer class's efficiency from measured layer times (a profile of fuseplan-exec or
// of the PyTorch bridge), written into the cluster's device.by_kind.
void fit_compute(const CalibrateFlags& f, const MeasuredModel& measured, Cluster& c) {
  const Model& m = measured.model;
  const ProfileInfo& info = measured.info;
  const Precision p = measured.precision;
  out() << "fuseplan calibrate: compute per layer class from " << f.profile() << " (" << m.name << ", batch "
        << info.batch << ", " << info.precision << (info.device.empty() ? "" : ", " + info.device) << "), cluster "
        << c.name << " (" << c.device.name << ")\n\n";
  const std::vector<ClassFit> fits = fit_compute_classes(c, m, info.batch, p);
  print_compute_fits(out(), fits, info.precision);
  apply_compute_fit(c, fits, p,
                    "fuseplan calibrate --profile " + f.profile() + " (" + m.name + ", batch " +
                        std::to_string(info.batch) + ", " + info.precision + ")");
}

// Each named layer class's efficiency from one GPU's measured training rates of whole
// models (--throughput), written into the cluster's device.by_kind; the framework's
// compute_scale where rates name it (returned, not written).
std::map<Precision, double> fit_rates(const CalibrateFlags& f, const std::vector<ThroughputMeasurement>& rates,
                                      Cluster& c) {
  const ThroughputFit fit = fit_throughputs(c, rates);  // before printing: a refusal is the only line
  out() << "fuseplan calibrate: compute per layer class from one GPU's measured training rates, " << f.throughput
        << " (" << count_of(int64_t(rates.size()), "measurement") << "), cluster " << c.name << " (" << c.device.name
        << ")\n\n";
  print_throughput_fits(out(), rates, fit);
  apply_throughput_fit(c, rates, fit, "fuseplan calibrate --throughput " + f.throughput);
  return fit.compute_scale;
}

// The cluster's compute_variation (and a step overhead, printed) from measured scaling
// efficiencies of plans (--throughput measurements with a plan), on the cluster as
// calibrated so far (its classes fitted first), each run at the framework's compute scale
// where the file fits one at its precision.
void calibrate_scaling(const CalibrateFlags& f, const std::vector<ScalingMeasurement>& ms,
                       const std::map<Precision, double>& compute_scale, Cluster& c) {
  const ScalingFit fit = fit_scaling(c, ms, compute_scale);  // before printing: a refusal is the only line
  out() << "fuseplan calibrate: the wait for the slowest GPU (compute_variation) from measured scaling "
           "efficiencies, "
        << f.throughput << " (" << count_of(int64_t(ms.size()), "measurement") << "), cluster " << c.name << "\n\n";
  print_scaling_fit(out(), ms, fit);
  apply_scaling_fit(c, ms, fit, "fuseplan calibrate --throughput " + f.throughput);
}

void fit_communication(const CalibrateFlags& f, Cluster& c) {
  std::vector<Sweep> sweeps;
  if (!f.sweep.empty()) {
    if (!f.as.empty()) throw InputError("--as: only with --nccl-tests (a sweep file names its algorithms)");
    sweeps = load_sweep(f.sweep);
  } else {
    // NCCL logs fit NCCL's model on NCCL clusters (alpha + beta n per size range).
    const std::string as = !f.as.empty() ? f.as : c.library == "nccl" ? "nccl" : "ring";
    sweeps.push_back(load_nccl_tests(f.nccl_tests, as, f.ranks, f.per_node));
    const Sweep& s = sweeps.back();
    check_gpu_count(c, s.ranks, "--nccl-tests " + f.nccl_tests + " (" + std::to_string(s.ranks) + " ranks)");
  }
  const std::string source = f.sweep.empty() ? f.nccl_tests : f.sweep;
  if (!f.fit_sizes.empty()) {
    // Fit where the plans operate (gradient buckets), not where protocols and caches
    // change the slope (small messages, cache-resident sizes).
    const auto colon = f.fit_sizes.find(':');
    if (colon == std::string::npos) throw InputError("--fit-sizes: MIN:MAX (e.g. 256K:256M)");
    restrict_sizes(sweeps, double(parse_bytes(f.fit_sizes.substr(0, colon), "--fit-sizes")),
                   double(parse_bytes(f.fit_sizes.substr(colon + 1), "--fit-sizes")), "--fit-sizes " + f.fit_sizes);
  }
  // A sweep through the executor includes the per-call launch overhead, which the model
  // adds apart; nccl-tests times are the library's own (no framework overhead).
  const double launch_s = f.sweep.empty() ? 0 : c.launch_overhead_us * 1e-6;
  // Fitted before anything is printed: a bad fit option is then the only line.
  const Cluster given = c;
  const std::vector<CommCalibration> fits =
      calibrate_communication(c, sweeps, {source, launch_s, f.max_segments, f.segment_tolerance, f.holdout});
  const Sweep& s = sweeps.front();
  if (!f.nccl_tests.empty() && s.ranks > s.per_node && s.per_node != c.gpus_per_node)
    out() << "note: the log ran " << s.per_node << " ranks per node, cluster " << c.name << " has " << c.gpus_per_node
          << " GPUs per node\n";
  out() << "fuseplan calibrate: " << source << " on " << sweeps.front().ranks << " ranks ("
            << sweeps.front().per_node << " per node), cluster " << c.name << " ("
            << (f.sweep.empty() ? "nccl-tests times: no launch overhead to keep apart"
                                : "launch overhead " + fixed(c.launch_overhead_us, 1) + " us kept apart")
            << ")\n\n";
  const std::vector<std::string> bad = print_comm_fits(out(), fits, f.holdout);
  print_nccl_estimates(out(), given, sweeps, fits);
  for (const auto& b : bad) out() << "  degenerate fit: " << b << "\n";
  if (!bad.empty() && !f.out.empty() && !f.accept_degenerate)
    throw InputError("calibrate: " + std::to_string(bad.size()) + " degenerate fit(s), not written to " + f.out +
                     " (give more sizes, --fit-sizes, or --accept-degenerate to write them anyway)");
}

}  // namespace

void add_calibrate_command(CLI::App& app) {
  auto f = std::make_shared<CalibrateFlags>();
  auto* cmd = app.add_subcommand(
      "calibrate",
      "Fit the communication model to measurements: each algorithm's alpha, beta, gamma by least\n"
      "squares (relative error) from `fuseplan-exec sweep --out` or nccl-tests all_reduce_perf output,\n"
      "written into a copy of the cluster file. Compute: --profile with --model fits each layer class's\n"
      "efficiency (device.by_kind) to measured layer times (fuseplan-exec run/train --profile, or the\n"
      "PyTorch bridge's), or --throughput to measured training rates of whole models; predict, tune and\n"
      "verify also take a profile as --profile.");
  f->cluster_opt = cmd->add_option("--cluster", f->cluster,
                                   "cluster file to calibrate (shipped name or path); required with --nccl-tests")
                       ->capture_default_str();
  cmd->add_option("--sweep", f->sweep, "fuseplan.sweep/1 file from `mpirun -np N fuseplan-exec sweep --out FILE`");
  cmd->add_option("--nccl-tests", f->nccl_tests, "nccl-tests all_reduce_perf output (text, or -J JSON)");
  cmd->add_option("--as", f->as,
                  "--nccl-tests: the algorithm whose formula the measurements fit (default: nccl on NCCL clusters, "
                  "NCCL's model as alpha + beta n per size range; ring elsewhere)");
  cmd->add_option("--ranks", f->ranks, "--nccl-tests: ranks (default: the '#  Rank' lines or JSON devices)");
  cmd->add_option("--per-node", f->per_node,
                  "--nccl-tests: ranks per node (default: from the host names of the '#  Rank' lines, else one node)");
  cmd->add_flag("--accept-degenerate", f->accept_degenerate,
                "write the file even when a fit is degenerate (a bandwidth at its bound, errors far above tolerance)");
  cmd->add_option("--fit-sizes", f->fit_sizes, "fit only the sizes in MIN:MAX (e.g. 256K:256M, the buckets' range)");
  cmd->add_option("--max-segments", f->max_segments,
                  "fit each algorithm in up to N size ranges of >= 3 sizes (1 = one straight line)")
      ->capture_default_str();
  cmd->add_option("--segment-tolerance", f->segment_tolerance,
                  "a size range grows while its fit's max relative error stays within this")
      ->capture_default_str();
  cmd->add_flag("--holdout", f->holdout, "also fit on every other size and report the error on the others");
  cmd->add_option("--plan", f->plans,
                  "a plan whose allreduces overlap backward, with its --measured run (repeat both for\n"
                  "several runs): fit comm_compute_sharing and dispatch_overhead_us (see --fit)");
  cmd->add_option("--measured", f->measured, "each --plan's measured report (fuseplan-exec run --report), in order");
  cmd->add_option("--fit", f->fit,
                  "--plan: what to fit, of sharing,dispatch,allreduce-sharing,bandwidth (default: sharing for one\n"
                  "run, sharing and dispatch for several; allreduce-sharing: how much backward slows an allreduce,\n"
                  "apart from how much it slows backward; bandwidth: how much slower a step's allreduces move bytes\n"
                  "than the sweep's, job_bandwidth_factor)")
      ->delimiter(',');
  cmd->add_option("--profile", f->profiles,
                  "measured per-layer times (fuseplan.profile/1): with --plan, the runs' compute (one for all, or\n"
                  "one per --plan in order: each run's own job's); with --model alone, fit each layer class's\n"
                  "efficiency (device.by_kind) to them");
  cmd->add_option("--throughput", f->throughput,
                  "fuseplan.throughput/1 file: one GPU's measured training rates of whole models (a vendor's page,\n"
                  "a paper, a run of one's own), each naming the layer classes it sets (or kernel_overhead_us, or\n"
                  "none: held out); fits their efficiencies (device.by_kind) all together; and measured scaling\n"
                  "efficiencies of plans, which fit compute_variation and a step overhead (docs/formats.md)");
  cmd->add_option("--model", f->model, "--profile: the model it was measured on (zoo name or model .json)");
  // The profile names the model but not its input: a zoo CNN profiled at another
  // resolution needs it here, or every layer is priced at the zoo default.
  f->shape.add_shape(cmd);
  cmd->add_option("--out", f->out, "write the calibrated (or discovered) cluster file here");
  cmd->add_flag("--discover", f->discover,
                "draft a cluster file of this machine: hwloc (sockets, cores, GPUs, NICs) and rdma-core\n"
                "(each RDMA port's link layer, speed, width); the template is --cluster");
  cmd->callback([f] { run_calibrate(*f); });
}

}  // namespace fuseplan::cli
