// `fuseplan-exec run`: data-parallel training across MPI ranks that follows a plan: one
// allreduce per bucket, posted the moment the bucket's last gradient is written during
// backward, with the plan's algorithm and transfer precision; measures every layer and
// bucket on every rank into the shared Report and Timeline.

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "format.hpp"
#include "mpi_setup.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/costmodel/scenario.hpp"
#include "fuseplan/exec/run.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "progress.hpp"
#include "run_view.hpp"
#include "training.hpp"

namespace fuseplan::cli {

namespace {

struct RunFlags {
  TrainFlags t;
  std::string plan_path, schedule_path, cluster, progress = "thread", trace_path, report_path, comm;
  int64_t iterations = 20;
  int warmup = 2;
  double poll_us = 50, timeout_s = 60;
  int trace_steps = 2;
  bool verify = false;
};

// The run's scenario, bound once on every rank: the plan, the data set and model, the
// cluster whose cost model resolves `auto`.
struct Bound {
  Scenario scenario;  // through bind_scenario, as predict and simulate bind theirs
  TrainingData data;
  exec::PlanRunOptions run;  // checked; the trainer's options and callbacks come later
  std::optional<PipelineSchedule> schedule;  // --schedule: the schedule whose communication runs
};

// --schedule: its setup as the plan the run binds (one bucket of every tensor), and the
// schedule; --plan: the plan.
Plan plan_of(RunFlags& f, Bound& b) {
  if (f.schedule_path.empty() == f.plan_path.empty())
    throw InputError("--plan or --schedule: give one (a fusion plan, or a schedule of fuseplan schedule --out)");
  if (f.plan_path.empty()) {
    if (f.verify) throw InputError("--verify: reads plans; a --schedule run prints the schedule's prediction beside it");
    ScheduleFile sf = load_schedule(f.schedule_path);
    b.schedule = std::move(sf.schedule);
    return std::move(sf.setup);
  }
  Plan plan = load_plan(f.plan_path);
  require_no_accumulation(plan, "--plan " + f.plan_path, "fuseplan-exec run");
  return plan;
}

Bound bind(RunFlags& f, exec::MpiWorld& world) {
  Bound b;
  const Plan plan = plan_of(f, b);
  const std::string origin = (b.schedule ? "--schedule " + f.schedule_path : "--plan " + f.plan_path);
  const std::string& file = b.schedule ? f.schedule_path : f.plan_path;
  if (plan.gpus != world.ranks())
    throw InputError(origin + ": made for " + count_of(plan.gpus, "GPU") + ", but this job has " +
                     std::to_string(world.ranks()) + " ranks (mpirun -np " + std::to_string(plan.gpus) + ")");
  if (!world.layout().node_major)
    throw InputError("mpirun placed ranks across nodes out of order; fuseplan's schedules number ranks node by node "
                     "(use --map-by slot)");
  if (f.t.batch_opt->count() && f.t.opt.batch != plan.batch_per_gpu)
    throw InputError("--batch-per-gpu " + std::to_string(f.t.opt.batch) + " disagrees with " + file + " (" +
                     std::to_string(plan.batch_per_gpu) + " per GPU)");
  if (f.t.precision_opt->count() && parse_precision(f.t.precision, "--precision") != plan.compute)
    throw InputError("--precision " + f.t.precision + " disagrees with " + file + " (" +
                     std::string(precision_name(plan.compute)) + ")");
  f.t.opt.batch = plan.batch_per_gpu;
  f.t.precision = precision_name(plan.compute);
  // Threads per rank: --threads, else OMP_NUM_THREADS, else the cores this rank may use
  // (mpirun binds each rank to its share), divided among the node's ranks when unbound.
  if (f.t.threads == 0 && !std::getenv("OMP_NUM_THREADS")) f.t.threads = exec::default_threads(world.layout());
  prepare_training(f.t);
  if (f.progress != "poll" && f.progress != "thread")
    throw InputError("--progress: unknown mode '" + f.progress + "' (valid: poll, thread)");
  b.run.warmup = f.warmup;
  b.run.iterations = f.iterations;
  b.run.trace_steps = f.trace_steps;
  b.run.comm = f.comm;
  b.run.exchange = {f.progress == "thread", f.poll_us, f.timeout_s};
  exec::check_run_options(b.run, f.t.backend == "cuda");
  // The model's input and classes as the plan recorded them, unless flags say otherwise.
  if (!f.t.model_opt->count()) {
    const ModelOptions& po = plan.model_options;
    if (f.t.resolution == 0 && po.resolution) f.t.resolution = *po.resolution;
    if (f.t.channels == 0 && po.channels) f.t.channels = *po.channels;
    if (f.t.classes == 0 && po.classes) f.t.classes = *po.classes;
  }
  b.data = load_training(f.t, f.t.model_opt->count() ? f.t.model : plan_model_ref(plan));
  b.scenario = bind_scenario(b.data.model, load_cluster(f.cluster.empty() ? plan.cluster : f.cluster), plan, {},
                             training_goal(b.data.model), origin);
  return b;
}

// --schedule: the pipeline model of the bound scenario (which must stay where it is), its
// partitions checked against the model the run built, errors named as the file's JSON paths.
std::unique_ptr<PipelineModel> bind_pipeline(const RunFlags& f, const Bound& b) {
  const Scenario& sc = b.scenario;
  auto pm = std::make_unique<PipelineModel>(sc.model, sc.cluster, sc.plan.gpus, sc.plan.batch_per_gpu, sc.plan.compute);
  try {
    pm->partitions(*b.schedule);
  } catch (const InputError& e) {
    throw InputError("--schedule " + f.schedule_path + ": " + e.render([](std::string_view field) {
      return "$." + std::string(field.substr(field.rfind('.') + 1));
    }));
  }
  return pm;
}

// What the executor runs of a schedule: its partitions, order, exchange and gate.
// Per-layer updates (ByteScheduler, DeAR) as scheduled; a sharded step (ZeRO-2, FSDP) as
// scheduled where the backend keeps its memory on the host (cpu). Elsewhere a sharded
// schedule runs with every rank updating every layer from the all-gathered sums: per
// layer before its forward where the schedule gates per layer, else as one step after a
// barrier.
PipelineSchedule executed(const PipelineSchedule& s, bool can_shard) {
  PipelineSchedule r = s;
  if (s.shard_optimizer && can_shard) return r;
  r.shard_optimizer = false;
  if (s.gate == Gate::PerLayer && (!s.step_update || s.shard_optimizer)) {
    r.step_update = false;
  } else {
    r.gate = Gate::Barrier;
    r.step_update = true;
  }
  return r;
}

// How the executor runs it, in a few words (the prediction "as run here").
std::string how_run(const PipelineSchedule& r) {
  if (r.shard_optimizer)
    return std::string("the shard's update after the reduce-scatters, ") +
           (r.gate == Gate::PerLayer ? "each layer's forward after its all-gathered parameters"
                                     : "the forward after every all-gather");
  if (r.gate == Gate::PerLayer) return "each layer's update and forward after its own sums";
  return "a barrier before one optimizer step";
}

// Each message of a schedule run, predicted (the schedule as run, with the run's own
// layer profile) beside its measured bucket; times from the start of its iteration's
// backward. The exchange's buckets are the predicted messages in the same order: per
// partition its allreduce, or its reduce-scatter and then its all-gather.
void print_schedule_messages(std::ostream& os, const PipelineResult& predicted, const Report& measured) {
  if (predicted.messages.size() != measured.buckets.size()) return;  // a schedule the executor did not run as priced
  Table t({"message", "<kind", "elements", "predicted start ms", "measured", "predicted end ms", "measured", "end error ms"});
  double abs_error = 0;
  for (size_t i = 0; i < measured.buckets.size(); ++i) {
    const MessageTiming& m = predicted.messages[i];
    const BucketReport& b = measured.buckets[i];
    const double start = m.start_s - predicted.backward_start_s, end = m.end_s - predicted.backward_start_s;
    abs_error += std::abs(end - b.end_s);
    t.row({std::to_string(i), message_kind_name(m.kind), std::to_string(m.elems), fixed(start * 1e3, 2),
           fixed(b.start_s * 1e3, 2), fixed(end * 1e3, 2), fixed(b.end_s * 1e3, 2), fixed((end - b.end_s) * 1e3, 2)});
  }
  os << "\n  each message, predicted as run here with the run's profile and measured (ms from its iteration's backward "
        "start):\n";
  t.print(os, "  ");
  os << "  mean |end error| " << fixed(abs_error / double(measured.buckets.size()) * 1e3, 2) << " ms over "
     << count_of(int64_t(measured.buckets.size()), "message") << "\n";
}

std::optional<ForVerify> run_run(RunFlags& f) {
  exec::MpiWorld world(nullptr, nullptr);
  world.set_timeout(setup_wait_s(f.timeout_s));  // no collective waits past --timeout for a silent rank
  const int rank = world.rank();
  std::string setup_error;
  Bound bound;
  std::unique_ptr<PipelineModel> pipeline;  // --schedule
  try {
    bound = bind(f, world);
    if (bound.schedule) pipeline = bind_pipeline(f, bound);
  } catch (const InputError& e) {
    setup_error = with_flags(e);
  }
  agree_on_setup(world, setup_error, "fuseplan-exec");
  const Plan& plan = bound.scenario.plan;
  TrainingData& data = bound.data;
  if (rank == 0)
    for (const auto& w : bound.scenario.warnings) err_line("fuseplan-exec run: " + with_flags(w));

  std::unique_ptr<exec::Backend> backend;
  try {
    backend = make_training_backend(f.t, world.layout().local_rank, world.rank(), world.ranks());
  } catch (const InputError& e) {
    setup_error = with_flags(e);
  }
  agree_on_setup(world, setup_error, "fuseplan-exec");

  exec::PlanRunOptions& o = bound.run;
  o.train = f.t.opt;
  const std::optional<PipelineSchedule> as_run =
      bound.schedule ? std::optional(executed(*bound.schedule, backend->reads_host_memory())) : std::nullopt;
  o.train.per_layer = as_run && as_run->gate == Gate::PerLayer;
  o.train.shard_optimizer = as_run && as_run->shard_optimizer;
  o.train_epochs = f.t.epochs_opt->count() > 0;
  ProgressBar bar("steps", f.t.quiet || rank != 0);
  o.on_step = step_progress(bar, f.t);
  o.on_epoch = epoch_progress(bar);
  if (!f.t.profile_path.empty() || f.verify || bound.schedule)  // the same on every rank
    o.profile_of = [&](const exec::Network& net, const exec::TrainResult& result) {
      return profile_json(f.t, data.model, net, result);
    };
  o.agree = [&](const InputError* e) {
    agree_on_setup(world, e ? with_flags(*e) : "", "fuseplan-exec");
  };
  if (pipeline) {
    o.buckets_of = [&](const exec::Network& net) {
      // The flat gradient buffer holds the tensors in backward order, one after another.
      const auto& slots = net.slots();
      const auto& off = pipeline->tensor_offsets();
      for (size_t pos = 0; pos < slots.size(); ++pos)
        if (slots[pos].offset != slots[0].offset + off[pos])
          throw RunError("run: the gradient buffer's layout differs from the schedule's (tensor " + slots[pos].name + ")");
      return exec::schedule_exchange_buckets(*pipeline, *as_run, slots.empty() ? 0 : slots[0].offset);
    };
  }
  try {
    const exec::PlanRun run = exec::run_plan(world, plan, data.model, bound.scenario.cluster, data.train, &data.test, *backend, o);
    if (rank != 0) return std::nullopt;
    for (const auto& n : run.notes) err_line("fuseplan-exec run: note: " + n);
    const exec::TrainResult& result = run.result;
    const std::optional<exec::Measurement>& m = run.measurement;
    const Report& rep = m->report;
    if (!bound.schedule && rep.cast && rep.cast != plan.cast)
      err_line(std::string("fuseplan-exec run: note: the exchange cast the FP32 gradients of the plan's 16-bit "
                           "buckets to their transfer and back on its stream (on ") + pack_on_name(*rep.cast) +
               "; the plan's cast: " + cast_name(plan.cast) +
               "); the report says so and verify predicts the run so");
    out() << "fuseplan-exec run: " << rep.model << " x " << world.ranks() << " ranks on "
              << count_of(world.layout().nodes, "node") << ", batch " << plan.batch_per_gpu << " per rank, "
              << precision_name(plan.compute) << ", " << count_of(int64_t(plan.buckets.size()), "bucket") << " ("
              << plan.strategy << "), " << (o.comm == "nccl" ? "NCCL" : "MPI, progress " + f.progress) << ", "
              << exec::cpu_threads() << " threads per rank, " << backend->name() << "\n\n";
    if (!result.epochs.empty() && f.t.epochs_opt->count()) {
      print_epochs(out(), result);
      out() << "\n";
    }
    print_measurement(out(), *m, f.warmup, world.ranks());
    if (plan.prediction)
      out() << "  the plan's own prediction (" << plan.cluster << "): " << fixed(plan.prediction->iteration_s * 1e3, 2)
            << " ms per iteration\n";
    if (as_run) {
      out() << "  the schedule's prediction (" << bound.scenario.cluster.name << ", " << bound.schedule->strategy
            << "): " << fixed(pipeline->evaluate(*bound.schedule, false).iteration_s * 1e3, 2) << " ms per iteration as "
            << "scheduled, " << fixed(pipeline->evaluate(*as_run, false).iteration_s * 1e3, 2) << " ms as run here ("
            << how_run(*as_run)
            << (bound.schedule->shard_optimizer && !as_run->shard_optimizer ? ", every rank updating every layer" : "")
            << ")\n";
      // The same with this run's own per-layer profile (the slowest rank's), as verify
      // predicts: the error is then the communication's and the overlap's.
      Model measured = bound.scenario.model;
      apply_profile_json(measured, run.profile, "the run's profile");
      const PipelineModel own(measured, bound.scenario.cluster, plan.gpus, plan.batch_per_gpu, plan.compute);
      const PipelineResult own_run = own.evaluate(*as_run, true);
      const double predicted = own_run.iteration_s;
      out() << "  with this run's per-layer profile: " << fixed(predicted * 1e3, 2) << " ms predicted as run here, "
            << fixed(rep.iteration_s * 1e3, 2) << " ms measured (" << signed_percent(predicted / rep.iteration_s - 1)
            << ")\n";
      print_schedule_messages(out(), own_run, rep);
    }
    ForVerify v{f.report_path, f.t.profile_path, {}};
    for (std::string* p : {&v.report_path, &v.profile_path})
      if (f.verify && p->empty()) v.temporary.push_back(*p = temporary_file(p == &v.report_path ? "report" : "profile"));
    if (!v.report_path.empty()) write_file_atomic(v.report_path, report_to_json(rep, true).dump(2) + "\n");
    if (!f.trace_path.empty()) rep.timeline.write_chrome_trace(f.trace_path);
    if (!f.t.metrics_path.empty()) write_metrics(f.t.metrics_path, f.t, data.model, data.train, result, world.ranks());
    if (!v.profile_path.empty()) write_file_atomic(v.profile_path, run.profile.dump(2) + "\n");
    if (!f.t.profile_path.empty())
      out() << "  profile of rank " << run.profile_rank << " (the slowest in forward + backward) written to "
                << f.t.profile_path << "\n";
    if (!f.verify) return std::nullopt;
    return v;
  } catch (const InputError& e) {  // after set-up: one rank's, so the job is aborted
    if (!*e.what()) throw;            // the ranks' agreed set-up refusal, said already
    err_line("fuseplan-exec run: rank " + std::to_string(rank) + ": " + with_flags(e));
    discard_outputs();
    world.abort(2);
  } catch (const RunError& e) {
    err_line("fuseplan-exec run: rank " + std::to_string(rank) + ": error: " + e.what());
    discard_outputs();
    world.abort(1);
  } catch (const std::exception& e) {
    err_line("fuseplan-exec run: rank " + std::to_string(rank) + ": internal error: " + e.what());
    discard_outputs();
    world.abort(1);
  }
}

}  // namespace

void add_run_command(CLI::App& app) {
  auto f = std::make_shared<RunFlags>();
  auto* cmd = app.add_subcommand(
      "run",
      "Execute a plan across MPI ranks (mpirun -np N fuseplan-exec run --plan P): data-parallel\n"
      "training with one allreduce per bucket, posted as soon as its last gradient is written\n"
      "during backward; measures every layer and bucket on every rank.");
  cmd->add_option("--plan", f->plan_path, "plan .json (fuseplan tune/predict --out); its GPUs = the ranks");
  cmd->add_option("--schedule", f->schedule_path,
                  "instead of --plan: a schedule (fuseplan schedule --out): its partitions, order, reduce-scatter + "
                  "all-gather, per-layer gating and sharded step run (the step sharded on --backend cpu); its GPUs = "
                  "the ranks");
  add_training_flags(cmd, f->t);
  cmd->add_option("--iterations", f->iterations,
                 "measured iterations after the warm-up (ignored with --epochs)")
      ->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "iterations before measuring (first touch of buffers)")->capture_default_str();
  cmd->add_option("--cluster", f->cluster, "cluster whose cost model resolves `auto` buckets (default: the plan's)");
  cmd->add_option("--comm", f->comm,
                  "gradient exchange: nccl (default with --backend cuda: NCCL on communication streams) | mpi");
  cmd->add_option("--progress", f->progress,
                  "how allreduces advance during backward: poll (between layers) | thread (a communication thread)")
      ->capture_default_str();
  cmd->add_option("--poll-us", f->poll_us, "thread: sleep between polls that found nothing, microseconds")
      ->capture_default_str();
  cmd->add_option("--timeout", f->timeout_s,
                  "seconds a bucket, or a rank at set-up, may wait for the other ranks before the job stops (a checkpoint write: half of it)")
      ->capture_default_str();
  cmd->add_option("--trace", f->trace_path, "Chrome trace of the last --trace-steps iterations, a track per rank and stream");
  cmd->add_option("--trace-steps", f->trace_steps, "iterations in the trace")->capture_default_str();
  cmd->add_option("--report", f->report_path, "the measured Report as JSON (the predictor's format)");
  cmd->add_flag("--verify", f->verify,
                "after the run, the verify table: predicted (with this run's per-layer profile, the slowest "
                "rank's) and simulated on the plan's cluster against the measurement, as `fuseplan verify` prints");
  cmd->callback([f] {
    const std::optional<ForVerify> v = run_run(*f);  // MPI is finalized here
    if (!v) return;
    out() << "\n";
    struct RemoveAfter {  // the temporary report and profile, however verify ends
      const std::vector<std::string>& files;
      ~RemoveAfter() {
        std::error_code ec;
        for (const auto& p : files) std::filesystem::remove(p, ec);
      }
    } remove_after{v->temporary};
    commit_outputs();  // the run succeeded: its report and profile are what verify reads
    const int code = run_verify(f->plan_path, f->cluster, *v);
    if (code == 2) throw InputError("");  // `fuseplan verify` said why
    if (code != 0) throw RunError("--verify: fuseplan verify failed (exit " + std::to_string(code) + ")");
  });
}

}  // namespace fuseplan::cli
