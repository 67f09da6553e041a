// Schedules beyond fusion, rank by rank (simulator.hpp, simulate_schedule): per rank a
// compute actor whose forward pass waits per layer (or at a barrier) for the messages of
// the previous iteration, and `credit` channel actors that replay each partition's
// allreduce, reduce-scatter or all-gather as messages. Resharded schedules (ZeRO-3, FSDP
// FULL_SHARD) re-gather each unit after its forward, and its backward waits for that. Rank 0's channel actors
// coordinate, as Horovod's rank 0 does: a message is dispatched to a free slot once
// every rank has it ready, the most urgent first, and every rank's slot replays the
// same sequence.
#include <simgrid/s4u.hpp>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>

#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"
#include "platform.hpp"
#include "replay_rounds.hpp"
#include "sharing.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

namespace {

constexpr double kNever = std::numeric_limits<double>::infinity();

// One partition's collectives: the allreduce (or reduce-scatter) and the all-gather.
struct PartRun {
  PipelineModel::PartitionInfo info;
  Schedule first, second;
  ScheduleIndex first_index, second_index;
  Wire wire;
  int elem_bytes = 2;
  double launch_s = 0;
};

// The halves of a ring-family allreduce schedule: its reduce-scatter rounds, then its
// all-gather rounds (ring and NCCL's ring: p - 1 of each on every channel).
std::pair<Schedule, Schedule> halves(const Schedule& s) {
  std::pair<Schedule, Schedule> h;
  const size_t mid = s.rounds.size() / 2;
  h.first.rounds.assign(s.rounds.begin(), s.rounds.begin() + long(mid));
  h.second.rounds.assign(s.rounds.begin() + long(mid), s.rounds.end());
  return h;
}

nlohmann::json result_json(const PipelineResult& r, const std::vector<TimelineEvent>& events) {
  nlohmann::json j{{"iteration_s", r.iteration_s}, {"compute_s", r.compute_s},       {"exposed_s", r.exposed_s},
                   {"comm_busy_s", r.comm_busy_s}, {"data_wait_s", r.data_wait_s},   {"iterations_run", r.iterations_run},
                   {"backward_start_s", r.backward_start_s}, {"backward_end_s", r.backward_end_s},
                   {"forward_start_s", r.forward_start_s}};
  for (const auto& m : r.messages)
    j["messages"].push_back({m.partition, int(m.kind), m.elems, m.ready_s, m.start_s, m.end_s});
  for (const auto& e : events)
    j["events"].push_back({e.rank, e.stream, e.name, e.category, e.start_s, e.dur_s, e.bytes, e.iteration});
  return j;
}

SimScheduleResult result_from_json(const nlohmann::json& j) {
  SimScheduleResult out;
  PipelineResult& r = out.result;
  r.iteration_s = j.at("iteration_s");
  r.compute_s = j.at("compute_s");
  r.exposed_s = j.at("exposed_s");
  r.comm_busy_s = j.at("comm_busy_s");
  r.data_wait_s = j.at("data_wait_s");
  r.iterations_run = j.at("iterations_run");
  r.backward_start_s = j.at("backward_start_s");
  r.backward_end_s = j.at("backward_end_s");
  r.forward_start_s = j.at("forward_start_s").get<std::vector<double>>();
  for (const auto& m : j.value("messages", nlohmann::json::array()))
    r.messages.push_back({m[0].get<int>(), MessageTiming::Kind(m[1].get<int>()), m[2].get<int64_t>(), m[3].get<double>(),
                          m[4].get<double>(), m[5].get<double>()});
  for (const auto& e : j.value("events", nlohmann::json::array()))
    out.events.push_back({e[0].get<int>(), e[1].get<std::string>(), e[2].get<std::string>(), e[3].get<std::string>(),
                          e[4].get<double>(), e[5].get<double>(), e[6].get<int64_t>(), e[7].get<int>()});
  return out;
}

}  // namespace

SimScheduleResult simulate_schedule_here(const PipelineModel& pm, const PipelineSchedule& s, const SimOptions& opt) {
  if (opt.iterations < 3 || opt.iterations > kMaxSimIterations)
    throw InputError(field("sim.iterations") + ": a schedule needs [3, " + std::to_string(kMaxSimIterations) +
                     "] iterations (its steady period is the last one; got " + std::to_string(opt.iterations) + ")");
  if (opt.jitter != 0 || !opt.stragglers.empty())
    throw InputError(field("sim.jitter") + ": schedules are simulated without jitter or stragglers");
  check_network_model(opt.network_model);
  const Cluster& c = pm.cluster();
  const CollectiveModel& coll = pm.collectives();
  const int P = pm.gpus(), N = opt.iterations;
  const bool rsag = s.exchange == Exchange::ReduceScatterAllgather;
  std::vector<PartRun> parts;
  for (auto& info : pm.partitions(s)) {
    PartRun run;
    run.info = std::move(info);
    if (P > 1) {
      const int64_t n = run.info.elems;
      const CollectiveChoice ch = coll.cost(rsag ? pm.rsag_algorithm() : s.algorithm, n, s.transfer);
      Schedule whole = coll.schedule(ch, n, s.transfer);
      run.wire = wire_for(c, coll, ch, n, s.transfer, whole);
      if (rsag) std::tie(run.first, run.second) = halves(whole);
      else run.first = std::move(whole);
      run.first_index = ScheduleIndex(run.first, P);
      run.second_index = ScheduleIndex(run.second, P);
      run.elem_bytes = bytes_per_element(s.transfer);
      run.launch_s = ch.launch_s;
    }
    parts.push_back(std::move(run));
  }
  const size_t B = parts.size();
  const auto& layers = pm.compute().layers();
  const std::vector<double> bwd_steps = pm.backward_steps(s);  // backward order, with copies made in backward
  const size_t L = layers.size();
  std::vector<std::vector<size_t>> step_parts(L), forward_last(L);
  for (size_t i = 0; i < B; ++i) {
    step_parts[size_t(parts[i].info.ready_step)].push_back(i);
    if (s.reshard) forward_last[size_t(parts[i].info.last_layer)].push_back(i);  // re-gathered once its forward ends
  }
  double total_update = 0;
  for (double u : pm.update_s()) total_update += u;
  const double step_s = s.shard_optimizer ? total_update / P : total_update;
  const int per_iteration = int(B) * (rsag ? (s.reshard ? 3 : 2) : 1);
  // A message: iteration, partition and slot (message_kind: 0 the reduction, 1 the
  // all-gather, 2 the re-gather before backward).
  constexpr size_t kSlots = 3;
  const size_t messages = size_t(N) * B * kSlots;
  auto id = [B](int it, size_t part, size_t slot) { return (size_t(it) * B + part) * kSlots + slot; };
  auto kind_of = [&s](size_t slot) { return message_kind(int(slot), s.exchange); };

  sg4::Engine e("fuseplan-sim");
  configure_engine(opt.network_model);
  Platform plat = build_platform(c, coll.topo(), platform_net(c, coll));
  // Shared state (SimGrid runs the actors one at a time): one lock, one condition.
  sg4::MutexPtr mutex = sg4::Mutex::create();
  sg4::ConditionVariablePtr cv = sg4::ConditionVariable::create();
  std::vector<int> ready_ranks(messages, 0);
  std::vector<double> ready_at(messages, 0);  // the last rank's ready time
  std::vector<size_t> candidates;             // ready on every rank, not dispatched
  std::vector<std::vector<size_t>> sequence(size_t(s.credit));
  size_t dispatched = 0, expected = size_t(N) * size_t(per_iteration);
  std::vector<std::vector<double>> end_at(size_t(P), std::vector<double>(messages, kNever));
  std::vector<std::vector<int>> done(size_t(P), std::vector<int>(size_t(N), 0)), reduced = done;
  std::vector<std::vector<double>> last_end(size_t(P), std::vector<double>(size_t(N), 0));
  std::vector<double> rank0_start(messages, 0), fwd_start(size_t(N) * L, 0), bwd_start(size_t(N), 0), bwd_end(size_t(N), 0);
  std::vector<double> iteration_start, launched(size_t(P), 0);
  std::vector<TimelineEvent> events;
  // Processor sharing as the pipeline model has it (Cluster::sharing; sharing.hpp): one
  // slot per message credit, all ranks under the one lock.
  const ProcessorSharing sigma = c.sharing(P);
  std::vector<SharedProcessor> sharing(static_cast<size_t>(P), SharedProcessor(size_t(s.credit)));
  auto traced = [&](int r) { return r < opt.trace_ranks; };
  Mailboxes boxes(P, s.credit);
  StepCounter steps;
  steps.report = opt.progress;
  for (const auto& p : parts)
    steps.total += int64_t(p.first.rounds.size() + p.second.rounds.size() * (s.reshard ? 2 : 1)) * P * N;

  auto key = [&](size_t msg) {
    const size_t part = (msg / kSlots) % B;
    return PipelineModel::message_key(s.order, ready_at[msg], int(msg / kSlots / B), kind_of(msg % kSlots),
                                      parts[part].info, part);
  };
  // Called with the lock held: rank r has message `msg` ready at `at`.
  auto make_ready = [&](int, size_t msg, double at) {
    ready_at[msg] = std::max(ready_at[msg], at);
    if (++ready_ranks[msg] == P) candidates.push_back(msg);
    cv->notify_all();
  };

  for (int r = 0; r < P; ++r) {
    sg4::Actor::create(std::string("compute").append(std::to_string(r)), plat.hosts[size_t(r)], [&, r] {
      auto work = [&](double d, const std::string& name, const char* cat, int it) {
        const double t0 = sg4::Engine::get_clock();
        if (!sigma.any()) {
          sg4::this_actor::sleep_for(d);
        } else {
          std::unique_lock lock(*mutex);
          sharing[size_t(r)].compute(t0, d, sigma, lock, *cv);
        }
        if (traced(r)) events.push_back({r, "compute", name, cat, t0, sg4::Engine::get_clock() - t0, 0, it});
      };
      const auto& model = pm.model();
      for (int it = 0; it < N; ++it) {
        for (size_t l = 0; l < L; ++l) {
          if (it > 0) {
            std::unique_lock lock(*mutex);
            const size_t prev = size_t(it - 1);
            if (s.gate == Gate::Barrier) {
              while (l == 0 && done[size_t(r)][prev] < per_iteration) cv->wait(lock);
            } else {
              for (size_t part = 0; part < B; ++part) {
                const auto& ls = parts[part].info.layers;
                if (std::find(ls.begin(), ls.end(), int(l)) == ls.end()) continue;
                while (end_at[size_t(r)][id(it - 1, part, rsag ? 1 : 0)] == kNever) cv->wait(lock);
              }
            }
          }
          const double now = sg4::Engine::get_clock();
          if (r == 0) {
            fwd_start[size_t(it) * L + l] = now;
            if (l == 0) iteration_start.push_back(now);
          }
          work(layers[l].fwd_s + (s.step_update ? 0 : pm.update_s()[l]), trace_name::forward(model.layers[l].name),
               "forward", it);
          if (!forward_last[l].empty()) {  // the units whose forward this layer ends: re-gathered for backward
            std::unique_lock lock(*mutex);
            for (size_t part : forward_last[l]) make_ready(r, id(it, part, 2), sg4::Engine::get_clock());
          }
        }
        if (r == 0) bwd_start[size_t(it)] = sg4::Engine::get_clock();
        for (size_t k = 0; k < L; ++k) {
          if (s.reshard) {  // a resharded unit's layer waits for the unit's re-gather
            std::unique_lock lock(*mutex);
            for (size_t part = 0; part < B; ++part) {
              const auto& ls = parts[part].info.layers;
              if (std::find(ls.begin(), ls.end(), int(L - 1 - k)) == ls.end()) continue;
              while (end_at[size_t(r)][id(it, part, 2)] == kNever) cv->wait(lock);
            }
          }
          work(bwd_steps[k], trace_name::backward(model.layers[L - 1 - k].name), "backward", it);
          std::unique_lock lock(*mutex);
          for (size_t part : step_parts[k]) {  // in backward order, as the pipeline launches them
            launched[size_t(r)] = std::max(launched[size_t(r)], sg4::Engine::get_clock());
            make_ready(r, id(it, part, 0), launched[size_t(r)]);
          }
        }
        if (r == 0) bwd_end[size_t(it)] = sg4::Engine::get_clock();
        // The copies back (PartitionInfo::copy_back_s), in partition order, each once its
        // allreduce has ended on this rank.
        for (size_t part = 0; part < B; ++part) {
          if (!(parts[part].info.copy_back_s > 0)) continue;
          {
            std::unique_lock lock(*mutex);
            while (end_at[size_t(r)][id(it, part, 0)] == kNever) cv->wait(lock);
          }
          work(parts[part].info.copy_back_s, trace_name::copy_back(int(part)), "copy", it);
        }
        if (s.step_update) {
          {
            std::unique_lock lock(*mutex);
            if (s.shard_optimizer)
              while (reduced[size_t(r)][size_t(it)] < int(B)) cv->wait(lock);
            else
              while (done[size_t(r)][size_t(it)] < per_iteration) cv->wait(lock);
          }
          work(step_s, trace_name::kOptimizer, "optimizer", it);
          if (s.shard_optimizer) {
            std::unique_lock lock(*mutex);
            for (size_t part = 0; part < B; ++part) make_ready(r, id(it, part, 1), sg4::Engine::get_clock());
          }
        }
      }
    });
    for (int slot = 0; slot < s.credit; ++slot) {
      sg4::Actor::create(std::string("channel").append(std::to_string(r)).append("_").append(std::to_string(slot)),
                         plat.hosts[size_t(r)], [&, r, slot] {
        auto& seq = sequence[size_t(slot)];
        for (size_t next = 0;; ++next) {
          size_t msg = 0;
          {
            std::unique_lock lock(*mutex);
            if (r == 0) {
              // The coordinator: the most urgent message every rank has ready, once its
              // packing copy is done.
              for (;;) {
                if (dispatched == expected) return;
                const double now = sg4::Engine::get_clock();
                double soonest = kNever;
                auto best = candidates.end();
                for (auto it = candidates.begin(); it != candidates.end(); ++it) {
                  if (ready_at[*it] > now + 1e-12 * std::max(1.0, now)) {
                    soonest = std::min(soonest, ready_at[*it]);
                    continue;
                  }
                  if (best == candidates.end() || key(*it) < key(*best)) best = it;
                }
                if (best != candidates.end()) {
                  msg = *best;
                  candidates.erase(best);
                  seq.push_back(msg);
                  ++dispatched;
                  cv->notify_all();
                  break;
                }
                if (soonest < kNever) cv->wait_until(lock, soonest);
                else cv->wait(lock);
              }
            } else {
              while (seq.size() <= next) {
                if (dispatched == expected && seq.size() <= next) return;
                cv->wait(lock);
              }
              msg = seq[next];
            }
          }
          const auto& part = parts[(msg / kSlots) % B];
          const size_t slot_of_msg = msg % kSlots;
          const bool second = slot_of_msg != 0;  // an all-gather or a re-gather: the all-gather half
          const double start = sg4::Engine::get_clock();
          if (r == 0) rank0_start[msg] = start;
          SharedProcessor& processor = sharing[size_t(r)];
          if (sigma.any()) {
            std::unique_lock lock(*mutex);
            processor.start(size_t(slot), start, sigma, *cv);
          }
          if (P > 1) {
            sg4::this_actor::sleep_for(part.launch_s);
            if (!second) sg4::this_actor::sleep_for(part.info.copy_in_s);  // into the fusion buffer
            run_rounds(second ? part.second : part.first, second ? part.second_index : part.first_index, r,
                       part.elem_bytes, part.wire, slot, boxes, &steps);
            if (!second) sg4::this_actor::sleep_for(part.info.copy_out_s);  // out of the fusion buffer
          }
          if (sigma.any()) {
            std::unique_lock lock(*mutex);
            processor.finish(size_t(slot), start, sigma, lock, *cv);
          }
          const double end = sg4::Engine::get_clock();
          const int it = int(msg / kSlots / B);
          if (traced(r)) {
            const std::string kind = message_kind_name(kind_of(slot_of_msg));
            events.push_back({r, "comm" + std::to_string(slot),
                              "partition " + std::to_string((msg / kSlots) % B) + " " + kind, kind, start, end - start,
                              part.info.elems * part.elem_bytes, it});
          }
          std::unique_lock lock(*mutex);
          end_at[size_t(r)][msg] = end;
          ++done[size_t(r)][size_t(it)];
          last_end[size_t(r)][size_t(it)] = std::max(last_end[size_t(r)][size_t(it)], end);
          if (!second) {
            ++reduced[size_t(r)][size_t(it)];
            if (rsag && !s.shard_optimizer) make_ready(r, msg + 1, end);
          }
          cv->notify_all();
        }
      });
    }
  }
  e.run();
  if (opt.progress) opt.progress(steps.done, steps.total);
  if (iteration_start.size() != size_t(N) || dispatched != expected)
    throw std::logic_error("simulate_schedule: the simulation stopped before its last iteration");

  // Rank 0: the last period, and the iteration two before the last (all its messages
  // ended before the last iteration starts), as the pipeline model reports them.
  SimScheduleResult out;
  PipelineResult& r = out.result;
  r.iterations_run = N;
  const double period = iteration_start[size_t(N) - 1] - iteration_start[size_t(N) - 2];
  const int j = N - 3;
  const double t0 = iteration_start[size_t(j)];
  for (const auto& l : layers) r.compute_s += l.fwd_s + l.bwd_s;
  r.compute_s += s.step_update ? step_s : total_update;
  for (size_t part = 0; part < B; ++part) {
    for (size_t slot : {0, 1, 2}) {
      if ((slot == 1 && !rsag) || (slot == 2 && !s.reshard)) continue;
      const size_t m = id(j, part, slot);
      MessageTiming t;
      t.partition = int(part);
      t.kind = kind_of(slot);
      t.elems = parts[part].info.elems;
      t.ready_s = ready_at[m] - t0;
      t.start_s = rank0_start[m] - t0;
      t.end_s = end_at[0][m] - t0;
      r.messages.push_back(t);
      r.comm_busy_s += end_at[0][m] - rank0_start[m];
    }
  }
  r.exposed_s = std::max(0.0, period - r.compute_s);
  r.data_wait_s = pm.compute().data_wait_s(period);
  r.iteration_s = period + r.data_wait_s;
  r.backward_start_s = bwd_start[size_t(j)] - t0;
  r.backward_end_s = bwd_end[size_t(j)] - t0;
  for (size_t l = 0; l < L; ++l) r.forward_start_s.push_back(fwd_start[size_t(j) * L + l] - t0);
  std::stable_sort(events.begin(), events.end(), [](const TimelineEvent& a, const TimelineEvent& b) {
    return std::tie(a.rank, a.start_s) < std::tie(b.rank, b.start_s);
  });
  out.events = std::move(events);
  return out;
}

SimScheduleResult simulate_schedule(const PipelineModel& pm, const PipelineSchedule& s, const SimOptions& opt) {
  const std::string json = run_isolated([&] {
    const SimScheduleResult r = simulate_schedule_here(pm, s, opt);
    return result_json(r.result, r.events).dump();
  });
  return result_from_json(nlohmann::json::parse(json));
}

}  // namespace fuseplan::sim
