// The measure runner: a plan run across MPI ranks, measured into the Report.
#include "fuseplan/exec/run.hpp"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan::exec {

namespace {

using Clock = std::chrono::steady_clock;

// The trainer sizes its data sharding through the exchange, and the exchange needs the
// trainer's gradient buffer: the trainer gets this forwarder, bound to the real one later.
struct Deferred final : GradientExchange {
  MpiWorld& w;
  TimedExchange* real = nullptr;
  explicit Deferred(MpiWorld& world) : w(world) {}
  int rank() const override { return w.rank(); }
  int ranks() const override { return w.ranks(); }
  void begin_step() override {
    previous = real->timings();  // a deferred exchange (TrainOptions::defers_exchange): the step before, complete by now
    previous_origin = real->step_origin();
    real->begin_step();
  }
  void ready(int k) override { real->ready(k); }
  void finish() override { real->finish(); }
  void wait_positions(int begin, int end) override { real->wait_positions(begin, end); }
  void wait_reductions() override { real->wait_reductions(); }
  void release_held() override { real->release_held(); }
  std::vector<std::pair<int64_t, int64_t>> owned_ranges() const override { return real->owned_ranges(); }
  std::vector<BucketTiming> previous;
  std::chrono::steady_clock::time_point previous_origin;
  void sum(double* v, int n) override { w.sum(v, n); }
  void broadcast(float* v, int64_t n) override { w.broadcast(v, n); }
};

// The slowest rank's profile (forward + backward): a data-parallel step waits for it, so
// that is what predictions must use. Rank 0 only (null elsewhere).
nlohmann::json slowest_profile(MpiWorld& world, const nlohmann::json& mine, int* slowest_rank) {
  const std::vector<std::string> profiles = world.gather_text(mine.dump());
  nlohmann::json slowest;
  double slowest_us = -1;
  for (size_t r = 0; r < profiles.size(); ++r) {
    nlohmann::json p = nlohmann::json::parse(profiles[r]);
    double us = 0;
    for (const auto& l : p.at("layers")) us += l.at("fwd_us").get<double>() + l.at("bwd_us").get<double>();
    if (us > slowest_us) {
      slowest = std::move(p);
      *slowest_rank = static_cast<int>(r);
      slowest_us = us;
    }
  }
  if (!slowest.is_null())
    slowest["device"] = slowest.at("device").get<std::string>() + ", rank " + std::to_string(*slowest_rank) +
                        " (the slowest of " + std::to_string(world.ranks()) + ")";
  return slowest;
}

}  // namespace

void check_run_options(PlanRunOptions& o, bool cuda_backend) {
  if (o.iterations < 1) throw InputError(field("run.iterations") + ": must be >= 1");
  if (o.warmup < 0) throw InputError(field("run.warmup") + ": must be >= 0");
  if (o.trace_steps < 0) throw InputError(field("run.trace_steps") + ": must be >= 0");
  if (!(o.exchange.timeout_s > 0)) throw InputError(field("comm.timeout") + ": must be > 0 seconds");
  if (!(o.exchange.poll_us >= 0)) throw InputError(field("comm.poll_us") + ": must be >= 0");
  if (o.comm.empty()) o.comm = cuda_backend && nccl_built() ? "nccl" : "mpi";
  if (o.comm != "nccl" && o.comm != "mpi")
    throw InputError(field("comm") + ": unknown '" + o.comm + "' (valid: nccl, mpi)");
  if (o.comm == "nccl" && !cuda_backend) throw InputError(field("comm") + " nccl: needs " + field("backend") + " cuda");
  if (o.comm == "nccl" && !nccl_built())
    throw InputError(field("comm") + " nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use " +
                     field("comm") + " mpi)");
}

int default_threads(const RankLayout& layout) {
  cpu_set_t set;
  const int cores = sched_getaffinity(0, sizeof set, &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
  const int online = int(std::max(1L, sysconf(_SC_NPROCESSORS_ONLN)));
  return cores < online ? cores : std::max(1, cores / layout.local_ranks);
}

PlanRun run_plan(MpiWorld& world, const Plan& plan, const Model& model, const Cluster& cluster, const Dataset& train,
                 const Dataset* test, Backend& backend, PlanRunOptions o) {
  const int rank = world.rank();
  Deferred deferred(world);
  // Local set-up that can still refuse the input (a checkpoint, an algorithm that does not
  // apply to this layout): agreed on before the exchange's collective set-up.
  std::unique_ptr<Trainer> trainer_ptr;
  std::vector<ExchangeBucket> buckets;
  std::optional<InputError> refused;
  bool unpacked = false;  // the plan packs, and the NCCL exchange does not
  try {
    const int64_t per_epoch = train.size() / (int64_t(plan.batch_per_gpu) * world.ranks());
    if (per_epoch < 1) throw InputError(field("train.dataset") + ": fewer samples than one global batch");
    if (!o.train_epochs) {  // a measurement: warmup + iterations steps
      o.train.max_steps = o.warmup + o.iterations;
      o.train.epochs = double(o.train.max_steps) / double(per_epoch);
      o.train.evaluate = false;
    } else if (o.train.epochs > 0 && o.train.epochs <= 1e6) {  // else the trainer refuses the value itself
      int64_t steps = std::max<int64_t>(1, int64_t(std::ceil(o.train.epochs * double(per_epoch))));
      if (o.train.max_steps > 0) steps = std::min(steps, o.train.max_steps);
      if (steps <= o.warmup)
        throw InputError(field("train.epochs") + ": " + formatted(o.train.epochs, "%g") + " epochs make " +
                         std::to_string(steps) + " steps, none after the " + std::to_string(o.warmup) +
                         " of " + field("run.warmup") + ": nothing would be measured");
    }
    check_progress_mode(world, o.exchange);
    if (o.train.defers_exchange() && o.warmup < 1)
      throw InputError(field("run.warmup") + ": " + o.train.deferred_by() +
                       " measures each step with the step before it: needs >= 1");
    if (o.train.defers_exchange() && o.comm != "mpi")
      throw InputError(field("comm") + ": " + o.train.deferred_by() + " runs on mpi");
    o.train.exchange = &deferred;
    o.train.exchange_on_device = o.comm == "nccl";
    // Rank 0 writes the checkpoint while the others wait in the next step's collectives,
    // for comm.timeout at most; half of it for the write lets rank 0 say why it is late
    // (a file system that does not answer) before they give up on it.
    o.train.checkpoint_timeout_s = o.exchange.timeout_s / 2;
    trainer_ptr = std::make_unique<Trainer>(model, train, test, backend, o.train);
    buckets = o.buckets_of ? o.buckets_of(trainer_ptr->network()) : plan_buckets(plan, model, trainer_ptr->network(), cluster);
    const auto packed = std::find_if(buckets.begin(), buckets.end(),
                                     [](const ExchangeBucket& b) { return b.pack != ExchangeBucket::Pack::None; });
    if (packed != buckets.end() && o.train.defers_exchange())
      throw InputError("plan: $.buckets[" + std::to_string(packed - buckets.begin()) + "].pack: " +
                       o.train.deferred_by() + " runs every bucket in place (a plan without pack)");
    if (packed != buckets.end() && o.comm == "nccl") {
      for (auto& b : buckets) b.pack = ExchangeBucket::Pack::None;
      unpacked = true;
    }
  } catch (const InputError& e) {
    refused = e;
  }
  if (o.agree) o.agree(refused ? &*refused : nullptr);
  else if (refused) throw *refused;

  Trainer& trainer = *trainer_ptr;
  Network& net = trainer.network();
  std::unique_ptr<TimedExchange> exchange_ptr =
      o.comm == "nccl" ? make_nccl_exchange(world, backend, net.grads(), buckets, o.exchange.timeout_s)
                       : std::make_unique<PlanExchange>(world, net.grads(), buckets, o.exchange);
  TimedExchange& exchange = *exchange_ptr;
  deferred.real = &exchange;

  PlanRun run;
  if (rank == 0 && unpacked)
    run.notes.push_back("the NCCL exchange allreduces every bucket in place: the plan's packing copies are not made");
  if (rank == 0 && trainer.resumed())
    run.notes.push_back(trainer.resumed()->line() + (o.train_epochs ? "" : "; warm-up and iterations count from step 0"));
  if (rank == 0 && world.layout().per_node != std::min(cluster.gpus_per_node, plan.gpus))
    run.notes.push_back(cluster.name + " has " + std::to_string(cluster.gpus_per_node) + " GPUs per node, this job " +
                        std::to_string(world.layout().per_node) + " ranks per node; the schedules follow the job's layout");

  // Samples of the measured steps, and the timeline of the last few, relative to a
  // barrier after warm-up (the ranks' clocks agree to the barrier's skew).
  std::vector<StepSample> samples;
  Timeline timeline;
  Clock::time_point t_sync = Clock::now();
  const int64_t total_steps = o.train.max_steps > 0 ? o.train.max_steps : -1;
  if (o.warmup == 0) {
    world.barrier();
    t_sync = Clock::now();
  }
  run.result = trainer.run(
      [&](const StepRecord& s, int64_t total, double rate) {
        if (o.on_step) o.on_step(s, total, rate);
        if (s.step + 1 == o.warmup) {
          world.barrier();
          t_sync = Clock::now();
          return;
        }
        if (s.step < o.warmup) return;
        // With per-layer gating or a sharded step a step's buckets end in the next
        // forward: each step is measured with the buckets of the step before it.
        const bool gated = o.train.defers_exchange();
        samples.push_back(step_sample(s, gated ? deferred.previous : exchange.timings()));
        const int64_t last = total_steps > 0 ? total_steps : total;
        const StepBuckets comm = gated ? StepBuckets{&deferred.previous, deferred.previous_origin, s.step - 1}
                                       : StepBuckets{&exchange.timings(), exchange.step_origin(), s.step};
        if (s.step >= last - o.trace_steps) trace_step(timeline, rank, s, model, net, buckets, comm, t_sync);
      },
      o.on_epoch);
  if (samples.empty()) throw InputError(field("run.iterations") + ": no step after the warm-up was measured");

  run.measurement = measure(world, samples, timeline, measured_setup(plan, model, net, buckets, world.layout()));
  if (o.profile_of) run.profile = slowest_profile(world, o.profile_of(net, run.result), &run.profile_rank);
  return run;
}

}  // namespace fuseplan::exec
