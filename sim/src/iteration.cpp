// Whole training iterations, rank by rank: compute actors mark gradients ready layer by
// layer; communication actors (one per stream) run each bucket's allreduce schedule.
#include <simgrid/s4u.hpp>

#include <algorithm>
#include <cmath>
#include <random>

#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"
#include "platform.hpp"
#include "replay_rounds.hpp"
#include "sharing.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

namespace {

struct BucketRun {
  Schedule schedule;
  ScheduleIndex index;
  Wire wire;
  int elem_bytes = 2;
  double copy_in_s = 0, launch_s = 0, copy_out_s = 0;
  int stream = 0, end = 0;  // end: backward positions [.., end) must be ready
  std::string label;
  int64_t bytes = 0;
};

// Per rank: how many gradients (backward positions, counted over all iterations) are
// ready, when each bucket became ready, and how many streams finished each iteration.
struct RankState {
  sg4::MutexPtr mutex = sg4::Mutex::create();
  sg4::ConditionVariablePtr cv = sg4::ConditionVariable::create();
  int64_t ready = 0;
  std::vector<double> bucket_ready_at;  // [iteration * buckets + b]
  std::vector<char> bucket_done;        // [iteration * buckets + b]: its allreduce has ended
  std::vector<int> streams_done;        // [iteration]
  SharedProcessor processor;            // one slot per stream (sharing.hpp)
};

void check_options(const SimOptions& o, int gpus) {
  check_network_model(o.network_model);
  if (o.iterations < 1 || o.iterations > kMaxSimIterations)
    throw InputError(field("sim.iterations") + ": must be in [1, " + std::to_string(kMaxSimIterations) + "] (got " +
                     std::to_string(o.iterations) + ")");
  if (!(o.jitter >= 0) || !std::isfinite(o.jitter)) throw InputError(field("sim.jitter") + ": must be >= 0");
  if (o.trace_ranks < 0) throw InputError(field("sim.trace_ranks") + ": must be >= 0");
  for (const auto& [rank, factor] : o.stragglers) {
    if (rank < 0 || rank >= gpus)
      throw InputError(field("sim.straggler") + ": rank " + std::to_string(rank) + " does not exist (valid: 0.." +
                       std::to_string(gpus - 1) + ")");
    if (!(factor > 0) || !std::isfinite(factor)) throw InputError(field("sim.straggler") + ": factor must be > 0");
  }
}

}  // namespace

Report simulate_plan(const Model& m, const Cluster& c, const Plan& plan, CollectiveOptions coll_opt,
                     const TrainingGoal& goal, const SimOptions& opt) {
  const std::string json = run_isolated(
      [&] { return report_to_json(simulate_plan_here(m, c, plan, coll_opt, goal, opt), true).dump(); });
  return report_from_json(nlohmann::json::parse(json), "the simulation");
}

Report simulate_plan(const Scenario& s, const SimOptions& opt) {
  return simulate_plan(s.model, s.cluster, s.plan, s.collective, s.goal, opt);
}

Report simulate_plan_here(const Model& m, const Cluster& c, const Plan& plan, CollectiveOptions coll_opt,
                          const TrainingGoal& goal, const SimOptions& opt) {
  check_options(opt, plan.gpus);
  const int P = plan.gpus, L = static_cast<int>(m.tensors.size()), N = opt.iterations;
  CollectiveModel coll(c, P, coll_opt);
  ComputeModel compute(m, c, plan.batch_per_gpu, plan.compute);
  Report rep = predict(m, c, plan, coll, compute, goal, false);  // names, bytes, costs
  rep.source = "simulated";

  std::vector<BucketRun> runs;
  int streams = 0;
  for (size_t k = 0; k < plan.buckets.size(); ++k) {
    const auto& b = plan.buckets[k];
    BucketRun run;
    run.stream = b.stream;
    run.end = b.end;
    run.bytes = rep.buckets[k].bytes;
    run.label = trace_name::bucket(int(k), rep.buckets[k].algorithm);
    const int64_t elems = bucket_elements(plan, m, b);
    // The copies and casts on the bucket's stream, as the predictor's (comm_copies_s).
    const CommCopies copies =
        comm_copies_s(c, elems, b.transfer, b.pack && plan.pack_on == PackOn::Comm, plan.cast, P);
    run.copy_in_s = copies.before_s;
    run.copy_out_s = copies.after_s;
    if (P > 1) {
      CollectiveChoice ch = coll.cost(b.algorithm, elems, b.transfer);
      run.schedule = coll.schedule(ch, elems, b.transfer);
      run.index = ScheduleIndex(run.schedule, P);
      run.wire = wire_for(c, coll, ch, elems, b.transfer, run.schedule);
      run.elem_bytes = bytes_per_element(b.transfer);
      run.launch_s = ch.launch_s;
    }
    streams = std::max(streams, b.stream + 1);
    runs.push_back(std::move(run));
  }
  const int B = static_cast<int>(runs.size());
  StepCounter steps;
  for (const auto& run : runs) steps.total += int64_t(run.schedule.rounds.size()) * P * N;
  steps.report = opt.progress;
  // Backward: after layer l (reverse order) the gradients up to this position are ready.
  const std::vector<int> ready_after = m.ready_prefix_after();
  // Backward steps (backward order) with the copies the plan makes in backward.
  const std::vector<double> bwd_steps = backward_steps_s(m, compute, c, plan);
  // The copies back after backward (PackOn::Compute), as the predictor's (copy_back_s).
  const std::vector<double> copy_s = copy_back_s(m, c, plan);
  const bool copies = std::any_of(copy_s.begin(), copy_s.end(), [](double x) { return x > 0; });

  sg4::Engine e("fuseplan-sim");
  configure_engine(opt.network_model);
  Platform plat = build_platform(c, coll.topo(), platform_net(c, coll));
  std::vector<RankState> state(P);
  const int stream_count = std::max(streams, 1);
  for (auto& s : state) {
    s.bucket_ready_at.assign(static_cast<size_t>(N) * B, 0);
    s.bucket_done.assign(static_cast<size_t>(N) * B, 0);
    s.streams_done.assign(N, 0);
    s.processor = SharedProcessor(size_t(stream_count));
  }
  // Processor sharing as the predictor models it (schedule_shared; sharing.hpp), one slot per stream.
  const ProcessorSharing sigma = c.sharing(P);
  std::vector<double> slow(P, 1.0);
  for (const auto& [rank, factor] : opt.stragglers) slow[rank] *= factor;
  std::vector<double> iteration_end(P, 0), last_bwd_start(P, 0), last_bwd_end(P, 0), last_copies_end(P, 0);
  // Each rank's forward and backward span per iteration (from its iteration's start): the
  // wait for the slowest GPU where compute varies (compute_variation, jitter, stragglers).
  std::vector<std::vector<double>> spans(P, std::vector<double>(N, 0));
  const bool varies = c.compute_variation > 0 || opt.jitter > 0 || !opt.stragglers.empty();
  std::vector<std::vector<std::pair<double, double>>> bucket_times(P, std::vector<std::pair<double, double>>(B));
  Mailboxes boxes(P, std::max(streams, 1));
  auto traced = [&](int r) { return r < opt.trace_ranks; };
  std::vector<TimelineEvent> events;
  const int micro_batches = plan.accumulate.steps;
  const bool no_sync = plan.accumulate.no_sync;
  const double optimizer_step_s = compute.optimizer_s(plan.optimizer);
  const double overhead_s = P > 1 ? plan.step_overhead_s : 0;  // per micro-batch, as the predictor's

  for (int r = 0; r < P; ++r) {
    sg4::Actor::create(std::string("compute").append(std::to_string(r)), plat.hosts[r], [&, r] {
      std::mt19937_64 rng(opt.seed * 1000003u + static_cast<uint64_t>(r));
      std::normal_distribution<double> noise(0.0, opt.jitter);
      // The cluster's compute_variation: one draw per rank and iteration for its forward and
      // backward, from a stream of its own (the jitter's draws stay as they were).
      std::mt19937_64 step_rng(opt.seed * 1000003u + static_cast<uint64_t>(r) + 0x9e3779b97f4a7c15u);
      std::normal_distribution<double> step_noise(0.0, c.compute_variation);
      double step_factor = 1;
      int it = 0;
      auto work = [&](double nominal, const std::string& name, const char* cat, bool varied = true) {
        double f = slow[r] * (opt.jitter > 0 ? std::max(0.1, 1 + noise(rng)) : 1.0) * (varied ? step_factor : 1.0);
        double t0 = sg4::Engine::get_clock();
        if (!sigma.any()) {
          sg4::this_actor::sleep_for(nominal * f);
        } else {
          RankState& s = state[r];
          std::unique_lock lock(*s.mutex);
          s.processor.compute(t0, nominal * f, sigma, lock, *s.cv);
        }
        if (traced(r)) events.push_back({r, "compute", name, cat, t0, sg4::Engine::get_clock() - t0, 0, it});
      };
      RankState& s = state[r];
      for (; it < N; ++it) {
        const double iteration_start = sg4::Engine::get_clock();
        step_factor = c.compute_variation > 0 ? std::max(0.1, 1 + step_noise(step_rng)) : 1.0;
        // Each simulated iteration allreduces once. Under no_sync it is a whole accumulation:
        // micro_batches - 1 that only compute (one span of work, one jitter draw, whatever
        // their number), then the allreducing one.
        if (no_sync)
          work((micro_batches - 1) * (compute.forward_s() + compute.backward_s()), trace_name::kLocalMicroBatches,
               "compute");
        for (size_t l = 0; l < m.layers.size(); ++l)
          work(compute.layers()[l].fwd_s, trace_name::forward(m.layers[l].name), "forward");
        last_bwd_start[r] = sg4::Engine::get_clock();
        int next_bucket = 0;
        for (int l = static_cast<int>(m.layers.size()) - 1; l >= 0; --l) {
          work(bwd_steps[m.layers.size() - 1 - size_t(l)], trace_name::backward(m.layers[l].name), "backward");
          std::unique_lock lock(*s.mutex);
          s.ready = int64_t(it) * L + ready_after[l];
          for (; next_bucket < B && runs[next_bucket].end <= ready_after[l]; ++next_bucket)
            s.bucket_ready_at[size_t(it) * B + next_bucket] = sg4::Engine::get_clock();
          s.cv->notify_all();
        }
        last_bwd_end[r] = sg4::Engine::get_clock();
        spans[r][it] = last_bwd_end[r] - iteration_start;
        // The copies back, in bucket order, each once its allreduce has ended.
        for (int b = 0; copies && b < B; ++b) {
          {
            std::unique_lock lock(*s.mutex);
            while (!s.bucket_done[size_t(it) * B + b]) s.cv->wait(lock);
          }
          if (copy_s[size_t(b)] > 0) work(copy_s[size_t(b)], trace_name::copy_back(b), "copy", false);
        }
        {
          std::unique_lock lock(*s.mutex);
          while (s.streams_done[it] < streams) s.cv->wait(lock);
        }
        last_copies_end[r] = sg4::Engine::get_clock();
        // The whole step once per accumulation under no_sync; else each micro-batch's share.
        work(no_sync ? optimizer_step_s : optimizer_step_s / micro_batches, trace_name::kOptimizer, "optimizer", false);
        if (overhead_s > 0) {  // the plan's fixed cost per micro-batch: the host's, no jitter or slow-down
          const double t0 = sg4::Engine::get_clock();
          sg4::this_actor::sleep_for(overhead_s * (no_sync ? micro_batches : 1));
          if (traced(r)) events.push_back({r, "compute", trace_name::kStepOverhead, "overhead", t0,
                                           sg4::Engine::get_clock() - t0, 0, it});
        }
      }
      iteration_end[r] = sg4::Engine::get_clock();
    });
    for (int st = 0; st < streams; ++st) {
      sg4::Actor::create(std::string("comm").append(std::to_string(r)).append("_").append(std::to_string(st)),
                         plat.hosts[r], [&, r, st] {
        RankState& s = state[r];
        for (int it = 0; it < N; ++it) {
          for (int b = 0; b < B; ++b) {
            const BucketRun& run = runs[b];
            if (run.stream != st) continue;
            {
              std::unique_lock lock(*s.mutex);
              while (s.ready < int64_t(it) * L + run.end) s.cv->wait(lock);
            }
            // The framework's cycle delays readiness (as in the predictor); ticks count from
            // this rank's backward start. The copies run on the stream, in the bucket's time.
            const double bwd = last_bwd_start[r];
            double ready = bwd + next_tick(s.bucket_ready_at[size_t(it) * B + b] - bwd, plan.cycle_s);
            if (sg4::Engine::get_clock() < ready) sg4::this_actor::sleep_until(ready);
            double start = sg4::Engine::get_clock();
            if (sigma.any()) {
              std::unique_lock lock(*s.mutex);
              s.processor.start(st, start, sigma, *s.cv);
            }
            if (P > 1) {
              sg4::this_actor::sleep_for(run.launch_s);
              sg4::this_actor::sleep_for(run.copy_in_s);  // into the fusion buffer, or the cast on comm
              run_rounds(run.schedule, run.index, r, run.elem_bytes, run.wire, st, boxes, &steps);
              sg4::this_actor::sleep_for(run.copy_out_s);  // the average out of the fusion buffer, or cast back
            }
            if (sigma.any()) {
              std::unique_lock lock(*s.mutex);
              s.processor.finish(st, start, sigma, lock, *s.cv);
            }
            double end = sg4::Engine::get_clock();
            {
              std::unique_lock lock(*s.mutex);
              s.bucket_done[size_t(it) * B + b] = 1;
              s.cv->notify_all();
            }
            if (it == N - 1) bucket_times[r][b] = {start, end};
            if (traced(r))
              events.push_back({r, "comm" + std::to_string(st), run.label, "allreduce", start, end - start, run.bytes, it});
          }
          std::unique_lock lock(*s.mutex);
          ++s.streams_done[it];
          s.cv->notify_all();
        }
      });
    }
  }
  e.run();
  if (opt.progress) opt.progress(steps.done, steps.total);

  // Rank 0's last iteration, from its backward start; the iteration time is the mean
  // over iterations of the slowest rank.
  const double bwd0 = last_bwd_start[0];
  for (int b = 0; b < B; ++b) {
    auto& br = rep.buckets[b];
    br.ready_s = next_tick(state[0].bucket_ready_at[size_t(N - 1) * B + b] - bwd0, plan.cycle_s);
    br.start_s = bucket_times[0][b].first - bwd0;
    br.end_s = bucket_times[0][b].second - bwd0;
  }
  sum_buckets(rep);
  // Rank 0's last copies back: what they add after its backward and its last allreduce.
  rep.copy_back_s = copies ? std::max(0.0, last_copies_end[0] - std::max(last_bwd_end[0], bwd0 + rep.comm_end_s)) : 0;
  if (no_sync) {  // per micro-batch, as the predictor's
    rep.comm_busy_s /= micro_batches;
    rep.copy_back_s /= micro_batches;
  }
  double busy = *std::max_element(iteration_end.begin(), iteration_end.end()) / N / (no_sync ? micro_batches : 1);
  rep.step_overhead_s = overhead_s;
  rep.compute_scale = c.compute_scale;
  // The wait for the slowest GPU, as simulated: the mean over iterations of the slowest
  // rank's forward and backward, beyond the predicted span (per micro-batch). Without any
  // variation none is counted.
  rep.variation_wait_s = 0;
  if (varies) {
    const int per = no_sync ? micro_batches : 1;
    double slowest = 0;
    for (int it = 0; it < N; ++it) {
      double s = 0;
      for (int r = 0; r < P; ++r) s = std::max(s, spans[r][it]);
      slowest += s / N;
    }
    rep.variation_wait_s = std::max(0.0, slowest / per - rep.forward_s - rep.backward_s);
  }
  rep.exposed_comm_s =
      std::max(0.0, busy - rep.forward_s - rep.backward_s - rep.optimizer_s - overhead_s - rep.variation_wait_s);
  rep.data_wait_s = compute.data_wait_s(busy);
  rep.iteration_s = busy + rep.data_wait_s;
  finish_report(rep, goal, sequence_length(m));
  std::stable_sort(events.begin(), events.end(),
                   [](const TimelineEvent& a, const TimelineEvent& b) { return a.rank < b.rank; });
  rep.timeline.events = std::move(events);
  return rep;
}

}  // namespace fuseplan::sim
