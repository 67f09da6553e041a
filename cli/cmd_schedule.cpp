// `fuseplan schedule`: schedules beyond fusion (partitions, priorities, per-layer gating,
// reduce-scatter + all-gather) on the steady pipeline, next to the fusion strategies.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "progress.hpp"
#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/costmodel/whatif.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

namespace {
struct ScheduleFlags {
  SetupFlags setup;
  std::string strategies = "all", partition = "1000000", credit = "4000000", out, trace;
  int64_t budget = ScheduleOptions{}.search_evaluations;
  int sim_iterations = 6;
  bool json = false, simulate = false, quiet = false;
};

int64_t parse_count(const std::string& s, const std::string& flag) {
  try {
    size_t used = 0;
    const double v = std::stod(s, &used);
    if (used == s.size() && v >= 1 && v <= 1e15 && v == std::floor(v)) return int64_t(v);
  } catch (const std::exception&) {
  }
  throw InputError(flag + ": a whole number of parameters >= 1, e.g. 1000000 or 4e6 (got '" + s + "')");
}

// The steady iteration as a Chrome trace: each layer's forward from its (gated) start,
// backward as one span, the messages on a track per kind.
void write_trace(const std::string& path, const Model& m, const PipelineModel& pm, const ScheduleResult& res) {
  const PipelineResult& r = res.result;
  Timeline t;
  const auto& layers = pm.compute().layers();
  for (size_t l = 0; l < m.layers.size(); ++l)
    t.events.push_back({0, "compute", trace_name::forward(m.layers[l].name), "forward", r.forward_start_s[l],
                        layers[l].fwd_s, 0});
  t.events.push_back({0, "compute", "backward", "backward", r.backward_start_s, r.backward_end_s - r.backward_start_s, 0});
  for (const auto& msg : r.messages) {
    const std::string kind = message_kind_name(msg.kind);
    const bool gather = msg.kind == MessageTiming::Allgather || msg.kind == MessageTiming::Regather;
    t.events.push_back({0, gather ? "all-gather" : "reduce", "partition " +
                        std::to_string(msg.partition) + " " + kind, kind, msg.start_s, msg.end_s - msg.start_s,
                        msg.elems * bytes_per_element(res.schedule.transfer)});
  }
  t.write_chrome_trace(path);
}

std::string partition_summary(const PipelineSchedule& s) {
  return std::to_string(s.bounds.size());
}

void run_schedule(ScheduleFlags& f) {
  f.setup.replicated_memory = false;  // sharded schedules fit where replicated ones do not
  // The wait for the slowest GPU is the same for every schedule: they are compared without it.
  if (f.setup.variation_opt->count())
    throw InputError("--compute-variation: schedules are compared without the wait for the slowest GPU (the same "
                     "for every schedule); leave it out");
  auto r = f.setup.resolve();
  // The pipeline steps once per micro-batch with a fused optimizer: the rate is for that loop.
  f.setup.apply_measured_rate(r.model, r.cluster, r.batch, r.compute, Accumulation{}, OptimizerStep{});
  ScheduleOptions o;
  o.transfer = r.transfer;
  o.partition_elems = parse_count(f.partition, "--partition");
  o.credit_elems = parse_count(f.credit, "--credit");
  if (f.budget < 1 || f.budget > 1000000) throw InputError("--budget: must be in [1, 1000000] evaluations");
  if (f.sim_iterations < 3 || f.sim_iterations > sim::kMaxSimIterations)
    throw InputError("--sim-iterations: must be in [3, " + std::to_string(sim::kMaxSimIterations) +
                     "] (the steady period is the last one; got " + std::to_string(f.sim_iterations) + ")");
  o.search_evaluations = f.budget;
  o.memory_limit_bytes = r.cluster.device.mem_GiB * 1024.0 * 1024 * 1024;
  std::vector<ScheduleStrategy> which;
  if (f.strategies == "all") which.assign(std::begin(kAllScheduleStrategies), std::end(kAllScheduleStrategies));
  else
    for (const auto& s : split_list(f.strategies, "--strategy")) which.push_back(parse_schedule_strategy(s, "--strategy"));
  if (!f.out.empty() && which.size() != 1)
    throw InputError("--out: writes one schedule; give one --strategy (got " + std::to_string(which.size()) + ")");
  if (!f.trace.empty() && which.size() != 1)
    throw InputError("--trace: traces one schedule; give one --strategy (got " + std::to_string(which.size()) + ")");

  PipelineModel pm(r.model, r.cluster, r.gpus, r.batch, r.compute, f.setup.collective());
  const PipelineModel::Bound bound = pm.lower_bound(r.transfer);
  std::vector<ScheduleResult> results;
  for (ScheduleStrategy s : which) results.push_back(schedule_for(pm, s, o));
  std::vector<double> simulated;
  if (f.simulate) {
    sim::SimOptions so;
    so.iterations = f.sim_iterations;
    so.trace_ranks = 0;
    for (size_t i = 0; i < results.size(); ++i) {
      // A long replay (1024 ranks: minutes per schedule) is never silent: progress.hpp.
      const std::string which = " (schedule " + std::to_string(i + 1) + " of " + std::to_string(results.size()) + ")";
      ProgressBar bar("rank-rounds of " + results[i].schedule.strategy + which, f.quiet);
      so.progress = [&bar](int64_t done, int64_t total) { bar(done, total); };
      simulated.push_back(sim::simulate_schedule(pm, results[i].schedule, so).result.iteration_s);
    }
  }
  if (!f.out.empty())
    write_file_atomic(f.out, schedule_to_json(pm, results.front(), &bound).dump(1) + "\n");
  if (!f.trace.empty()) write_trace(f.trace, r.model, pm, results.front());
  if (f.json) {
    nlohmann::json j = nlohmann::json::array();
    for (size_t i = 0; i < results.size(); ++i) {
      j.push_back(schedule_to_json(pm, results[i], &bound));
      if (f.simulate) j.back()["prediction"]["simulated_iteration_ms"] = simulated[i] * 1e3;
    }
    out() << j.dump(2) << "\n";
    return;
  }
  out() << setup_line("schedule", r.model, r.cluster, r.gpus, r.batch, r.compute) << "\n";
  out() << "lower bound of any schedule: " << ms(bound.iteration_s) << " ms (compute " << ms(bound.compute_s)
        << ", first layer's round trip " << ms(bound.first_layer_s) << ", channel " << ms(bound.channel_s) << "; "
        << (bound.certified ? "certified" : "on sizes 2^k only: the costs per element are not monotone") << ")\n";
  if (const double late = slowest_gpu_factor(r.cluster, r.gpus) - 1; late > 0)  // the predictor's wait
    out() << "every schedule is priced without the wait for the slowest GPU (compute_variation "
          << formatted(r.cluster.compute_variation, "%g") << ": "
          << ms(late * (pm.compute().forward_s() + pm.compute().backward_s()))
          << " ms on each; fuseplan predict adds it)\n";
  out() << "\n";
  double fusion_s = 0;
  for (const auto& res : results)
    if (res.schedule.strategy == "fusion") fusion_s = res.result.iteration_s;
  std::vector<std::string> head{"<schedule", "partitions", "<exchange", "<order", "<gate", "<update", "credit",
                                "iteration ms", "exposed ms", "vs fusion", "gap to bound", "memory GiB", "fits",
                                "tuned ms"};
  if (f.simulate) head.insert(head.end(), {"simulated ms", "sim / model"});
  Table t(head);
  for (size_t i = 0; i < results.size(); ++i) {
    const auto& res = results[i];
    const auto& s = res.schedule;
    const auto& p = res.result;
    std::vector<std::string> cells{s.strategy, partition_summary(s), exchange_name(s.exchange), order_name(s.order), gate_name(s.gate),
           s.reshard ? "full shard" : s.shard_optimizer ? "shard" : s.step_update ? "step" : "per layer", std::to_string(s.credit),
           ms(p.iteration_s), ms(p.exposed_s), fusion_s > 0 ? fixed(fusion_s / p.iteration_s, 3) + "x" : "-",
           signed_percent(p.iteration_s / bound.iteration_s - 1), fixed(res.memory.total() / (1024.0 * 1024 * 1024), 2),
           res.fits ? "yes" : "no", fixed(res.seconds * 1e3, 2)};
    if (f.simulate) cells.insert(cells.end(), {ms(simulated[i]), fixed(simulated[i] / p.iteration_s, 4)});
    t.row(cells);
  }
  t.print(out(), "  ");
  if (r.cluster.device.mem_GiB > 0)
    out() << "\n  fits: the schedule's per-GPU memory (weights, gradients, buffers, optimizer state, activations;\n"
          << "  a lower bound of what a framework allocates) within the device's " << fixed(r.cluster.device.mem_GiB, 0)
          << " GiB; best searches only those that fit.\n";
  if (!f.out.empty()) out() << "\n  schedule written to " << f.out << "\n";
}
}  // namespace

void add_schedule_command(CLI::App& app) {
  auto f = std::make_shared<ScheduleFlags>();
  auto* cmd = app.add_subcommand(
      "schedule",
      "Schedules beyond fusion: tensor partitions, priority for the next forward pass, reduce-scatter +\n"
      "all-gather (ZeRO-style), on the steady pipeline; the schedules users know and the best found, with\n"
      "a lower bound of any schedule. With no flags: resnet50 on tencent-p40 at 1024 GPUs, every schedule.");
  f->setup.add(cmd);
  cmd->add_option("--strategy", f->strategies,
                  "all, or a comma list of: " + schedule_strategy_names())
      ->capture_default_str();
  cmd->add_option("--partition", f->partition,
                  "bytescheduler: partition size in parameters (BYTESCHEDULER_PARTITION)")
      ->capture_default_str();
  cmd->add_option("--credit", f->credit,
                  "bytescheduler: parameters in flight (BYTESCHEDULER_CREDIT); credit / partition messages at once")
      ->capture_default_str();
  cmd->add_option("--budget", f->budget, "best: evaluations of the local search (1 to 1000000)")->capture_default_str();
  cmd->add_option("--out", f->out, "write the schedule (schema fuseplan.schedule/1) to FILE; one --strategy");
  cmd->add_option("--trace", f->trace, "write a Chrome trace of the steady iteration to FILE (ui.perfetto.dev); one --strategy");
  cmd->add_flag("--simulate", f->simulate, "also replay each schedule rank by rank in SimGrid (simulated ms, sim / model)");
  cmd->add_option("--sim-iterations", f->sim_iterations, "with --simulate: iterations replayed (3 to 1000; the last period counts)")
      ->capture_default_str();
  cmd->add_flag("--json", f->json, "print the schedules with their predictions and messages as JSON");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr (--simulate)");
  cmd->callback([f] { run_schedule(*f); });
}

}  // namespace fuseplan::cli
