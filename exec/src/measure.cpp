// Gathering every rank's measured steps into one Report.
#include "fuseplan/exec/measure.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan::exec {

StepSample step_sample(const StepRecord& s, const std::vector<BucketTiming>& buckets) {
  return {s.seconds, s.data_s, s.forward_s, s.backward_s, s.comm_wait_s, s.optimizer_s, buckets};
}

void trace_step(Timeline& t, int rank, const StepRecord& s, const Model& model, const Network& net,
                const std::vector<ExchangeBucket>& buckets, const StepBuckets& comm,
                std::chrono::steady_clock::time_point origin) {
  auto rel = [&](std::chrono::steady_clock::time_point p) { return std::chrono::duration<double>(p - origin).count(); };
  const auto& spans = net.last_spans();
  const auto& layers = model.layers;
  const int it = int(s.step);
  const double fwd0 = rel(spans.front().fwd_start);
  t.events.push_back({rank, "compute", trace_name::kDataWait, "data", fwd0 - s.data_s, s.data_s, 0, it});
  for (size_t l = 0; l < layers.size(); ++l)
    t.events.push_back({rank, "compute", trace_name::forward(layers[l].name), "forward", rel(spans[l].fwd_start),
                        spans[l].fwd_s, 0, it});
  for (size_t l = layers.size(); l-- > 0;)  // backward order, as predicted and simulated
    t.events.push_back({rank, "compute", trace_name::backward(layers[l].name), "backward", rel(spans[l].bwd_start),
                        spans[l].bwd_s, 0, it});
  const double comm0 = rel(comm.origin);
  for (size_t b = 0; b < buckets.size() && comm.timings; ++b) {
    const BucketTiming& x = (*comm.timings)[b];
    t.events.push_back({rank, "comm" + std::to_string(buckets[b].stream),
                        trace_name::bucket(int(b), buckets[b].spec.algorithm), "allreduce", comm0 + x.start_s,
                        x.end_s - x.start_s, buckets[b].count * bytes_per_element(buckets[b].spec.transfer),
                        int(comm.step)});
  }
  if (s.optimizer_start_s >= 0)  // one step (not per-layer updates)
    t.events.push_back({rank, "compute", trace_name::kOptimizer, "optimizer", fwd0 - s.data_s + s.optimizer_start_s,
                        s.optimizer_s, 0, it});
}

std::vector<ExchangeBucket> plan_buckets(const Plan& plan, const Model& model, const Network& net,
                                         const Cluster& cluster) {
  CollectiveModel cm(cluster, plan.gpus);
  std::vector<ExchangeBucket> out;
  const auto& slots = net.slots();
  for (const PlanBucket& b : plan.buckets) {
    ExchangeBucket x;
    x.begin = b.begin;
    x.end = b.end;
    x.offset = slots[size_t(b.begin)].offset;
    x.count = slots[size_t(b.end - 1)].offset + slots[size_t(b.end - 1)].numel - x.offset;
    if (x.count != bucket_elements(plan, model, b)) throw RunError("run: bucket layout differs from the plan's");
    x.stream = b.stream;
    x.spec.transfer = b.transfer;
    if (b.pack) x.pack = plan.pack_on == PackOn::Compute ? ExchangeBucket::Pack::Compute : ExchangeBucket::Pack::Comm;
    if (x.pack == ExchangeBucket::Pack::Compute)
      for (int pos = b.begin; pos < b.end; ++pos)
        x.position_ends.push_back(slots[size_t(pos)].offset + slots[size_t(pos)].numel);
    if (plan.gpus > 1) {
      const CollectiveChoice c = cm.cost(b.algorithm, x.count, b.transfer);
      x.spec.algorithm = std::string(c.algorithm->name);
      x.spec.variant = c.variant;
    }
    out.push_back(x);
  }
  return out;
}

std::vector<ExchangeBucket> schedule_exchange_buckets(const PipelineModel& pm, const PipelineSchedule& s, int64_t base) {
  if (s.reshard)
    throw InputError(field("schedule.reshard") + ": resharded parameters (zero3, FSDP FULL_SHARD) are not executed");
  const auto parts = pm.partitions(s);
  const PipelineResult predicted = pm.evaluate(s, true);
  const bool rsag = s.exchange == Exchange::ReduceScatterAllgather;
  // The predicted start order of the steady iteration's messages.
  std::vector<const MessageTiming*> by_start;
  for (const auto& m : predicted.messages) by_start.push_back(&m);
  std::stable_sort(by_start.begin(), by_start.end(),
                   [](const MessageTiming* a, const MessageTiming* b) { return a->start_s < b->start_s; });
  std::vector<int> rank_of(parts.size() * 2, 0);
  for (size_t k = 0; k < by_start.size(); ++k)
    rank_of[size_t(by_start[k]->partition) * 2 + (by_start[k]->kind == MessageTiming::Allgather)] = int(k);
  const auto& off = pm.tensor_offsets();
  std::vector<ExchangeBucket> out;
  for (size_t i = 0; i < parts.size(); ++i) {
    const auto& p = parts[i];
    ExchangeBucket x;
    // Backward positions: from the tensor holding its first element to the one holding its last.
    x.begin = int(std::upper_bound(off.begin(), off.end(), p.begin) - off.begin()) - 1;
    x.end = int(std::upper_bound(off.begin(), off.end(), p.begin + p.elems - 1) - off.begin());
    x.offset = base + p.begin;
    x.count = p.elems;
    x.stream = int(i) % s.credit;
    x.spec.transfer = s.transfer;
    if (pm.gpus() > 1) {
      const CollectiveChoice c = pm.collectives().cost(rsag ? pm.rsag_algorithm() : s.algorithm, p.elems, s.transfer);
      x.spec.algorithm = rsag ? pm.rsag_algorithm() : std::string(c.algorithm->name);
      x.spec.variant = c.variant;
    }
    if (!rsag) {
      x.order = rank_of[i * 2];
      out.push_back(x);
      continue;
    }
    x.spec.half = AllreduceSpec::Half::ReduceScatter;
    x.order = rank_of[i * 2];
    out.push_back(x);
    x.spec.half = AllreduceSpec::Half::Allgather;
    x.after_step = s.shard_optimizer;  // it carries the parameters the step updates
    x.order = std::max(rank_of[i * 2 + 1], rank_of[i * 2] + 1);  // after its reduce-scatter in any case
    out.push_back(x);
  }
  return out;
}

MeasuredSetup measured_setup(const Plan& plan, const Model& model, const Network& net,
                             const std::vector<ExchangeBucket>& buckets, const RankLayout& layout) {
  MeasuredSetup m;
  m.model = model.name;
  m.cluster = "this machine (" + count_of(layout.nodes, "node") + ", " + count_of(layout.ranks, "rank") + ")";
  m.batch_per_gpu = plan.batch_per_gpu;
  m.compute = plan.compute;
  m.goal = training_goal(model);
  m.seq_len = sequence_length(model);
  for (size_t k = 0; k < buckets.size(); ++k) {
    BucketReport br;
    br.index = int(k);
    br.begin = buckets[k].begin;
    br.end = buckets[k].end;
    br.first_tensor = net.slots()[size_t(br.begin)].name;
    br.last_tensor = net.slots()[size_t(br.end - 1)].name;
    br.bytes = buckets[k].count * bytes_per_element(buckets[k].spec.transfer);
    br.algorithm = buckets[k].spec.algorithm;
    br.auto_chosen = buckets.size() == plan.buckets.size() && plan.buckets[k].algorithm == "auto";
    br.stream = buckets[k].stream;
    br.transfer = buckets[k].spec.transfer;
    m.copies_back = m.copies_back || buckets[k].pack == ExchangeBucket::Pack::Compute;
    if (br.transfer != Precision::FP32) m.cast = PackOn::Comm;
    m.buckets.push_back(br);
  }
  return m;
}

std::optional<Measurement> measure(MpiWorld& world, const std::vector<StepSample>& samples, const Timeline& local,
                                   const MeasuredSetup& setup) {
  // Per rank, every step's phases and bucket times, flattened: step k's value j is at
  // k * per_step + j (j: 0 step, 1 data, 2 forward, 3 backward, 4 wait, 5 optimizer,
  // 6 + 3b.. bucket b's ready, start, end).
  const size_t B = setup.buckets.size(), per_step = 6 + 3 * B;
  std::vector<double> mine;
  for (const auto& s : samples) {
    mine.insert(mine.end(), {s.seconds, s.data_s, s.forward_s, s.backward_s, s.wait_s, s.optimizer_s});
    for (const auto& t : s.buckets) mine.insert(mine.end(), {t.ready_s, t.start_s, t.end_s});
  }
  const size_t width = mine.size();
  const std::vector<double> all = world.allgather(mine);
  const std::vector<std::string> traces = world.gather_text(timeline_to_json(local).dump());
  if (world.rank() != 0) return std::nullopt;

  const int P = world.ranks();
  const size_t S = samples.size();
  auto at = [&](int r, size_t k, size_t j) { return all[size_t(r) * width + k * per_step + j]; };
  Measurement out;
  std::vector<int> critical(S, 0);
  out.critical_steps.assign(size_t(P), 0);
  out.step_s.assign(S, 0);
  for (size_t k = 0; k < S; ++k) {
    double lo = 1e300, hi = -1;
    for (int r = 0; r < P; ++r) {
      const double c = at(r, k, 2) + at(r, k, 3);
      if (c > hi) {
        hi = c;
        critical[k] = r;
      }
      lo = std::min(lo, c);
      out.step_s[k] = std::max(out.step_s[k], at(r, k, 0));
    }
    out.spread_s += (hi - lo) / double(S);
    ++out.critical_steps[size_t(critical[k])];
  }
  auto avg = [&](size_t j) {
    double s = 0;
    for (size_t k = 0; k < S; ++k) s += at(critical[k], k, j);
    return s / double(S);
  };
  Report& rep = out.report;
  rep.source = "measured";
  rep.model = setup.model;
  rep.cluster = setup.cluster;
  rep.gpus = P;
  rep.batch_per_gpu = setup.batch_per_gpu;
  rep.compute = setup.compute;
  rep.cast = setup.cast;
  for (int r = 0; r < P; ++r) {  // the slowest rank's mean step
    double sum = 0;
    for (size_t k = 0; k < S; ++k) sum += at(r, k, 0);
    rep.iteration_s = std::max(rep.iteration_s, sum / double(S));
  }
  rep.data_wait_s = avg(1);
  rep.forward_s = avg(2);
  rep.backward_s = avg(3);
  rep.exposed_comm_s = avg(4);
  rep.optimizer_s = avg(5);
  if (setup.copies_back) {
    for (size_t k = 0; k < S; ++k) {
      const int r = critical[k];
      double last_end = at(r, k, 3);  // backward's end
      for (size_t b = 0; b < B; ++b) last_end = std::max(last_end, at(r, k, 8 + 3 * b));
      rep.copy_back_s += std::max(0.0, at(r, k, 3) + at(r, k, 4) - last_end) / double(S);
    }
  }
  rep.buckets = setup.buckets;
  for (size_t b = 0; b < B; ++b) {
    rep.buckets[b].ready_s = avg(6 + 3 * b);
    rep.buckets[b].start_s = avg(7 + 3 * b);
    rep.buckets[b].end_s = avg(8 + 3 * b);
  }
  sum_buckets(rep);
  for (size_t r = 0; r < traces.size(); ++r) {
    const Timeline t = timeline_from_json(nlohmann::json::parse(traces[r]), "rank " + std::to_string(r), "$");
    rep.timeline.events.insert(rep.timeline.events.end(), t.events.begin(), t.events.end());
  }
  finish_report(rep, setup.goal, setup.seq_len);
  return out;
}

}  // namespace fuseplan::exec
