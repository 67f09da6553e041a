// `fuseplan-exec run`: data-parallel training across MPI ranks that follows a plan: one
// allreduce per bucket, posted the moment the bucket's last gradient is written during
// backward, with the plan's algorithm and transfer precision; measures every layer and
// bucket on every rank into the shared Report and Timeline.
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.hpp"
#include "format.hpp"
#include "mpi_setup.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/error.hpp"
#include "progress.hpp"
#include "training.hpp"

namespace fuseplan::cli {

namespace {

using Clock = std::chrono::steady_clock;

struct RunFlags {
  TrainFlags t;
  std::string plan_path, cluster, progress = "thread", trace_path, report_path, comm;
  int64_t iterations = 20;
  int warmup = 2;
  double poll_us = 50, timeout_s = 60;
  int trace_steps = 2;
};

// The plan's buckets as the executor runs them: flat-buffer ranges and the algorithm
// (and variant) the cost model resolves `auto` to on the plan's cluster.
std::vector<exec::ExchangeBucket> resolve_buckets(const Plan& plan, const Model& model, const exec::Network& net,
                                                  const Cluster& cluster) {
  CollectiveModel cm(cluster, plan.gpus);
  std::vector<exec::ExchangeBucket> out;
  const auto& slots = net.slots();
  for (const PlanBucket& b : plan.buckets) {
    exec::ExchangeBucket x;
    x.begin = b.begin;
    x.end = b.end;
    x.offset = slots[size_t(b.begin)].offset;
    x.count = slots[size_t(b.end - 1)].offset + slots[size_t(b.end - 1)].numel - x.offset;
    if (x.count != bucket_elements(plan, model, b)) throw RunError("run: bucket layout differs from the plan's");
    x.stream = b.stream;
    x.spec.transfer = b.transfer;
    if (plan.gpus > 1) {
      const CollectiveChoice c = cm.cost(b.algorithm, x.count, b.transfer);
      x.spec.algorithm = std::string(c.algorithm->name);
      x.spec.variant = c.variant;
    }
    out.push_back(x);
  }
  return out;
}

// Cores this process may run on (mpirun binds each rank to its share).
int usable_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return 1;
  return std::max(1, CPU_COUNT(&set));
}

struct StepSample {
  double seconds, data, forward, backward, wait, optimizer;
  std::vector<exec::BucketTiming> buckets;
};

void run_run(RunFlags& f) {
  exec::MpiWorld world(nullptr, nullptr);
  const int rank = world.rank();
  std::string setup_error;
  Plan plan;
  TrainingData data;
  Cluster cluster;
  try {
    plan = load_plan(f.plan_path);
    if (plan.gpus != world.ranks())
      throw InputError("--plan " + f.plan_path + ": made for " + count_of(plan.gpus, "GPU") + ", but this job has " +
                       std::to_string(world.ranks()) + " ranks (mpirun -np " + std::to_string(plan.gpus) + ")");
    if (!world.layout().node_major)
      throw InputError("mpirun placed ranks across nodes out of order; fuseplan's schedules number ranks node by node "
                       "(use --map-by slot)");
    if (f.t.batch_opt->count() && f.t.opt.batch != plan.batch_per_gpu)
      throw InputError("--batch-per-gpu " + std::to_string(f.t.opt.batch) + " disagrees with " + f.plan_path + " (" +
                       std::to_string(plan.batch_per_gpu) + " per GPU)");
    if (f.t.precision_opt->count() && parse_precision(f.t.precision, "--precision") != plan.compute)
      throw InputError("--precision " + f.t.precision + " disagrees with " + f.plan_path + " (" +
                       std::string(precision_name(plan.compute)) + ")");
    f.t.opt.batch = plan.batch_per_gpu;
    f.t.precision = precision_name(plan.compute);
    // Threads per rank: --threads, else OMP_NUM_THREADS, else the cores this rank may use
    // (mpirun binds each rank to its share), divided among the node's ranks when unbound.
    if (f.t.threads == 0 && !std::getenv("OMP_NUM_THREADS")) {
      const int cores = usable_cores(), online = int(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
      f.t.threads = cores < online ? cores : std::max(1, cores / world.layout().local_ranks);
    }
    prepare_training(f.t);
    if (f.iterations < 1) throw InputError("--iterations: must be >= 1");
    if (f.warmup < 0) throw InputError("--warmup: must be >= 0");
    if (f.trace_steps < 0) throw InputError("--trace-steps: must be >= 0");
    if (!(f.timeout_s > 0)) throw InputError("--timeout: must be > 0 seconds");
    if (!(f.poll_us >= 0)) throw InputError("--poll-us: must be >= 0");
    if (f.progress != "poll" && f.progress != "thread")
      throw InputError("--progress: unknown mode '" + f.progress + "' (valid: poll, thread)");
    if (f.comm.empty()) f.comm = f.t.backend == "cuda" && exec::nccl_built() ? "nccl" : "mpi";
    if (f.comm != "nccl" && f.comm != "mpi") throw InputError("--comm: unknown '" + f.comm + "' (valid: nccl, mpi)");
    if (f.comm == "nccl" && f.t.backend != "cuda") throw InputError("--comm nccl: needs --backend cuda");
    if (f.comm == "nccl" && !exec::nccl_built())
      throw InputError("--comm nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use --comm mpi)");
    // The model's input and classes as the plan recorded them, unless flags say otherwise.
    if (!f.t.model_opt->count()) {
      const ModelOptions& po = plan.model_options;
      if (f.t.resolution == 0 && po.resolution) f.t.resolution = *po.resolution;
      if (f.t.channels == 0 && po.channels) f.t.channels = *po.channels;
      if (f.t.classes == 0 && po.classes) f.t.classes = *po.classes;
    }
    data = load_training(f.t, f.t.model_opt->count() ? f.t.model : plan.model);
    validate_plan(plan, data.model, f.plan_path);
    cluster = load_cluster(f.cluster.empty() ? plan.cluster : f.cluster);
    check_gpu_count(cluster, plan.gpus, "--plan " + f.plan_path + ": $.gpus");
  } catch (const InputError& e) {
    setup_error = e.what();
  }
  agree_on_setup(world, setup_error, "fuseplan-exec");
  const int P = world.ranks();

  // The trainer sizes its data sharding through the exchange, and the exchange needs the
  // trainer's gradient buffer: the trainer gets this forwarder, bound to the real one below.
  struct Deferred final : exec::GradientExchange {
    exec::MpiWorld& w;
    exec::TimedExchange* real = nullptr;
    explicit Deferred(exec::MpiWorld& world) : w(world) {}
    int rank() const override { return w.rank(); }
    int ranks() const override { return w.ranks(); }
    void begin_step() override { real->begin_step(); }
    void ready(int k) override { real->ready(k); }
    void finish() override { real->finish(); }
    void sum(double* v, int n) override { w.sum(v, n); }
    void broadcast(float* v, int64_t n) override { w.broadcast(v, n); }
  } deferred(world);
  // Local set-up that can still refuse the input (a checkpoint, an algorithm that does not
  // apply to this layout): agreed on before the exchange's collective set-up.
  std::unique_ptr<exec::Backend> backend;
  std::unique_ptr<exec::Trainer> trainer_ptr;
  std::vector<exec::ExchangeBucket> buckets;
  try {
    backend = make_training_backend(f.t, world.layout().local_rank);
    const int64_t per_epoch = data.train.size() / (int64_t(plan.batch_per_gpu) * world.ranks());
    if (per_epoch < 1) throw InputError("--dataset: fewer samples than one global batch");
    if (!f.t.epochs_opt->count()) {  // a measurement: --warmup + --iterations steps
      f.t.opt.max_steps = f.warmup + f.iterations;
      f.t.opt.epochs = double(f.t.opt.max_steps) / double(per_epoch);
      f.t.opt.evaluate = false;
    }
    if (f.progress == "thread" && !world.thread_multiple())
      throw InputError("--progress thread: this MPI library does not provide MPI_THREAD_MULTIPLE (use --progress poll)");
    f.t.opt.exchange = &deferred;
    trainer_ptr = std::make_unique<exec::Trainer>(data.model, data.train, &data.test, *backend, f.t.opt);
    buckets = resolve_buckets(plan, data.model, trainer_ptr->network(), cluster);
  } catch (const InputError& e) {
    setup_error = e.what();
  }
  agree_on_setup(world, setup_error, "fuseplan-exec");

  try {
    exec::Trainer& trainer = *trainer_ptr;
    exec::Network& net = trainer.network();
    exec::ExchangeOptions xo;
    xo.thread = f.progress == "thread";
    xo.poll_us = f.poll_us;
    xo.timeout_s = f.timeout_s;
    std::unique_ptr<exec::TimedExchange> exchange_ptr =
        f.comm == "nccl" ? exec::make_nccl_exchange(world, *backend, net.grads(), buckets, f.timeout_s)
                         : std::make_unique<exec::PlanExchange>(world, net.grads(), buckets, xo);
    exec::TimedExchange& exchange = *exchange_ptr;
    deferred.real = &exchange;

    if (rank == 0 && world.layout().per_node != std::min(cluster.gpus_per_node, plan.gpus))
      std::cerr << "fuseplan-exec run: note: " << cluster.name << " has " << cluster.gpus_per_node
                << " GPUs per node, this job " << world.layout().per_node
                << " ranks per node; the schedules follow the job's layout\n";

    // Samples of the measured steps, and the timeline of the last few, relative to a
    // barrier after warm-up (the ranks' clocks agree to the barrier's skew).
    std::vector<StepSample> samples;
    Timeline timeline;
    Clock::time_point t_sync = Clock::now();
    const int64_t total_steps = f.t.opt.max_steps > 0 ? f.t.opt.max_steps : -1;
    auto rel = [&](Clock::time_point t) { return std::chrono::duration<double>(t - t_sync).count(); };
    ProgressBar bar("steps", f.t.quiet || rank != 0);
    auto progress = step_progress(bar, f.t);
    if (f.warmup == 0) {
      world.barrier();
      t_sync = Clock::now();
    }
    auto result = trainer.run(
        [&](const exec::StepRecord& s, int64_t total, double rate) {
          progress(s, total, rate);
          if (s.step + 1 == f.warmup) {
            world.barrier();
            t_sync = Clock::now();
            return;
          }
          if (s.step < f.warmup) return;
          samples.push_back({s.seconds, s.data_s, s.forward_s, s.backward_s, s.comm_wait_s, s.optimizer_s,
                             exchange.timings()});
          const int64_t last = total_steps > 0 ? total_steps : total;
          if (s.step < last - f.trace_steps) return;
          const auto& spans = net.last_spans();
          const auto& layers = data.model.layers;
          const double bwd0 = rel(exchange.step_origin());
          const std::string it = " #" + std::to_string(s.step);
          const double fwd0 = rel(spans.front().fwd_start);
          timeline.events.push_back({rank, "compute", "data" + it, "data", fwd0 - s.data_s, s.data_s, 0});
          for (size_t l = 0; l < layers.size(); ++l) {
            timeline.events.push_back(
                {rank, "compute", layers[l].name + it, "forward", rel(spans[l].fwd_start), spans[l].fwd_s, 0});
            timeline.events.push_back(
                {rank, "compute", layers[l].name + it, "backward", rel(spans[l].bwd_start), spans[l].bwd_s, 0});
          }
          for (size_t b = 0; b < buckets.size(); ++b) {
            const auto& t = exchange.timings()[b];
            timeline.events.push_back({rank, "comm" + std::to_string(buckets[b].stream),
                                       "bucket " + std::to_string(b) + " " + buckets[b].spec.algorithm, "allreduce",
                                       bwd0 + t.start_s, t.end_s - t.start_s,
                                       buckets[b].count * bytes_per_element(buckets[b].spec.transfer)});
          }
          timeline.events.push_back({rank, "compute", "optimizer" + it, "optimizer",
                                     bwd0 + s.backward_s + s.comm_wait_s, s.optimizer_s, 0});
        },
        epoch_progress(bar));
    if (samples.empty()) throw InputError("--iterations: no step after the warm-up was measured");

    // Per rank, every step's phases and bucket times (gathered on every rank), to find
    // the rank each step waited for.
    const size_t per_step = 6 + 3 * buckets.size();
    std::vector<double> mine;
    for (const auto& s : samples) {
      mine.insert(mine.end(), {s.seconds, s.data, s.forward, s.backward, s.wait, s.optimizer});
      for (const auto& t : s.buckets) mine.insert(mine.end(), {t.ready_s, t.start_s, t.end_s});
    }
    const size_t width = mine.size();
    const std::vector<double> all = world.allgather(mine);
    nlohmann::json events = nlohmann::json::array();
    for (const auto& e : timeline.events)
      events.push_back({e.rank, e.stream, e.name, e.category, e.start_s, e.dur_s, e.bytes});
    const std::vector<std::string> traces = world.gather_text(events.dump());
    // The profile of the slowest rank (forward + backward): a data-parallel step waits for
    // it, so that is what predictions must use.
    const std::vector<std::string> profiles =
        world.gather_text(f.t.profile_path.empty() ? "" : profile_json(f.t, data.model, net, result).dump());
    if (rank != 0) return;

    // Step k's value j on rank r (j: 0 step, 1 data, 2 forward, 3 backward, 4 wait,
    // 5 optimizer, 6 + 3b.. bucket b's ready, start, end).
    auto at = [&](int r, size_t k, size_t j) { return all[size_t(r) * width + k * per_step + j]; };
    // Each step's critical rank: the slowest in forward + backward. Every allreduce waits
    // for it, and it is the rank the predictor's profile describes (the slowest), so the
    // phases are its; a faster rank's wait for it shows only in the spread.
    const size_t S = samples.size();
    std::vector<int> critical(S, 0), critical_steps(P, 0);
    double spread = 0;
    for (size_t k = 0; k < S; ++k) {
      double lo = 1e300, hi = -1;
      for (int r = 0; r < P; ++r) {
        const double c = at(r, k, 2) + at(r, k, 3);
        if (c > hi) {
          hi = c;
          critical[k] = r;
        }
        lo = std::min(lo, c);
      }
      spread += (hi - lo) / double(S);
      ++critical_steps[size_t(critical[k])];
    }
    auto avg = [&](size_t j) {
      double s = 0;
      for (size_t k = 0; k < S; ++k) s += at(critical[k], k, j);
      return s / double(S);
    };
    Report rep;
    rep.source = "measured";
    rep.model = data.model.name;
    rep.cluster = "this machine (" + std::to_string(world.layout().nodes) + " node" +
                  (world.layout().nodes > 1 ? "s" : "") + ", " + std::to_string(P) + " ranks)";
    rep.gpus = P;
    rep.batch_per_gpu = plan.batch_per_gpu;
    rep.compute = plan.compute;
    for (int r = 0; r < P; ++r) {  // the slowest rank's mean step
      double sum = 0;
      for (size_t k = 0; k < S; ++k) sum += at(r, k, 0);
      rep.iteration_s = std::max(rep.iteration_s, sum / double(S));
    }
    rep.data_wait_s = avg(1);  // the critical rank's, step by step
    rep.forward_s = avg(2);
    rep.backward_s = avg(3);
    rep.exposed_comm_s = avg(4);
    rep.optimizer_s = avg(5);
    rep.throughput_samples_s = double(plan.batch_per_gpu) * P / rep.iteration_s;
    for (size_t b = 0; b < buckets.size(); ++b) {
      BucketReport br;
      br.index = int(b);
      br.begin = buckets[b].begin;
      br.end = buckets[b].end;
      br.first_tensor = net.slots()[size_t(br.begin)].name;
      br.last_tensor = net.slots()[size_t(br.end - 1)].name;
      br.bytes = buckets[b].count * bytes_per_element(buckets[b].spec.transfer);
      br.algorithm = buckets[b].spec.algorithm;
      br.auto_chosen = plan.buckets[b].algorithm == "auto";
      br.stream = buckets[b].stream;
      br.transfer = buckets[b].spec.transfer;
      br.ready_s = avg(6 + 3 * b);
      br.start_s = avg(7 + 3 * b);
      br.end_s = avg(8 + 3 * b);
      rep.comm_busy_s += br.end_s - br.start_s;
      rep.comm_end_s = std::max(rep.comm_end_s, br.end_s);
      rep.buckets.push_back(br);
    }
    for (const std::string& t : traces)
      for (const auto& e : nlohmann::json::parse(t))
        rep.timeline.events.push_back({e[0].get<int>(), e[1].get<std::string>(), e[2].get<std::string>(),
                                       e[3].get<std::string>(), e[4].get<double>(), e[5].get<double>(),
                                       e[6].get<int64_t>()});

    std::cout << "fuseplan-exec run: " << rep.model << " x " << P << " ranks on " << world.layout().nodes << " node"
              << (world.layout().nodes > 1 ? "s" : "") << ", batch " << plan.batch_per_gpu << " per rank, "
              << precision_name(plan.compute) << ", " << plan.buckets.size() << " buckets (" << plan.strategy
              << "), " << (f.comm == "nccl" ? "NCCL" : "MPI, progress " + f.progress) << ", "
              << exec::cpu_threads() << " threads per rank, "
              << backend->name() << "\n\n";
    if (!result.epochs.empty() && f.t.epochs_opt->count()) {
      print_epochs(std::cout, result);
      std::cout << "\n";
    }
    Table it({"iteration", "ms (slowest rank)"});
    for (size_t k = 0; k < samples.size(); ++k) {
      if (samples.size() > 40 && k % (samples.size() / 20) != 0 && k + 1 != samples.size()) continue;
      double w = 0;
      for (int r = 0; r < P; ++r) w = std::max(w, at(r, k, 0));
      it.row({std::to_string(f.warmup + int64_t(k)), fixed(w * 1e3, 2)});
    }
    it.print(std::cout, "  ");
    std::cout << "\n  measured over " << samples.size() << " iterations after " << f.warmup
              << " warm-up (means over steps of each step's critical rank: the slowest in forward + backward)\n";
    Table ph({"<phase", "ms"});
    ph.row({"iteration (slowest rank)", fixed(rep.iteration_s * 1e3, 2)});
    ph.row({"data wait", fixed(rep.data_wait_s * 1e3, 2)});
    ph.row({"forward", fixed(rep.forward_s * 1e3, 2)});
    ph.row({"backward", fixed(rep.backward_s * 1e3, 2)});
    ph.row({"exposed communication", fixed(rep.exposed_comm_s * 1e3, 2)});
    ph.row({"optimizer", fixed(rep.optimizer_s * 1e3, 2)});
    ph.print(std::cout, "  ");
    if (P > 1) {
      std::cout << "  rank imbalance: forward + backward differ by " << fixed(spread * 1e3, 2)
                << " ms per step between the fastest and the slowest rank; critical rank per step:";
      for (int r = 0; r < P; ++r)
        if (critical_steps[size_t(r)] > 0) std::cout << " " << r << " (" << critical_steps[size_t(r)] << ")";
      std::cout << "\n";
    }
    std::cout << "\n";
    Table bt({"bucket", "<tensors", "bytes", "<algorithm", "stream", "ready ms", "start ms", "end ms", "busy ms"});
    for (const auto& b : rep.buckets)
      bt.row({std::to_string(b.index), std::to_string(b.begin) + ".." + std::to_string(b.end - 1),
              human_bytes(double(b.bytes)), b.algorithm + (b.auto_chosen ? " (auto)" : ""), std::to_string(b.stream),
              fixed(b.ready_s * 1e3, 2), fixed(b.start_s * 1e3, 2), fixed(b.end_s * 1e3, 2),
              fixed((b.end_s - b.start_s) * 1e3, 2)});
    bt.print(std::cout, "  ");
    std::cout << "\n  throughput " << fixed(rep.throughput_samples_s, 1) << " samples/s\n";
    if (plan.prediction.is_object() && plan.prediction.contains("iteration_s"))
      std::cout << "  the plan's own prediction (" << plan.cluster << "): "
                << fixed(plan.prediction.at("iteration_s").get<double>() * 1e3, 2) << " ms per iteration\n";
    if (!f.report_path.empty()) write_file_atomic(f.report_path, report_to_json(rep, true).dump(2) + "\n");
    if (!f.trace_path.empty()) rep.timeline.write_chrome_trace(f.trace_path);
    if (!f.t.metrics_path.empty()) write_metrics(f.t.metrics_path, f.t, data.model, data.train, result, P);
    if (!f.t.profile_path.empty()) {
      nlohmann::json slowest;
      int slowest_rank = 0;
      double slowest_us = -1;
      for (size_t r = 0; r < profiles.size(); ++r) {
        nlohmann::json p = nlohmann::json::parse(profiles[r]);
        double us = 0;  // forward + backward per step
        for (const auto& l : p.at("layers")) us += l.at("fwd_us").get<double>() + l.at("bwd_us").get<double>();
        if (us > slowest_us) {
          slowest = std::move(p);
          slowest_rank = static_cast<int>(r);
          slowest_us = us;
        }
      }
      slowest["device"] = slowest.at("device").get<std::string>() + ", rank " + std::to_string(slowest_rank) +
                          " (the slowest of " + std::to_string(P) + ")";
      write_file_atomic(f.t.profile_path, slowest.dump(2) + "\n");
      std::cout << "  profile of rank " << slowest_rank << " (the slowest in forward + backward) written to "
                << f.t.profile_path << "\n";
    }
  } catch (const RunError& e) {
    std::cerr << "fuseplan-exec run: rank " << rank << ": error: " << e.what() << "\n";
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
  cmd->add_option("--plan", f->plan_path, "plan .json (fuseplan tune/predict --out); its GPUs = the ranks")
      ->required();
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
  cmd->add_option("--timeout", f->timeout_s, "seconds a bucket may wait for the other ranks before the job stops")
      ->capture_default_str();
  cmd->add_option("--trace", f->trace_path, "Chrome trace of the last --trace-steps iterations, a track per rank and stream");
  cmd->add_option("--trace-steps", f->trace_steps, "iterations in the trace")->capture_default_str();
  cmd->add_option("--report", f->report_path, "the measured Report as JSON (the predictor's format)");
  cmd->callback([f] { run_run(*f); });
}

}  // namespace fuseplan::cli
