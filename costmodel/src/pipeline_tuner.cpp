// The schedules users know (ByteScheduler, US-Byte, DeAR, ZeRO-2, FSDP, and the fusion
// strategies) on the steady pipeline, and the search over all of them (pipeline.hpp).
#include <algorithm>
#include <chrono>
#include <filesystem>
#include <cmath>
#include <utility>

#include "fuseplan/costmodel/pipeline.hpp"
#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

namespace {
constexpr const char* kNames[] = {"best", "fusion", "ddp", "horovod", "bytescheduler", "usbyte", "dear", "zero2", "fsdp", "zero3"};
}  // namespace

const char* schedule_strategy_name(ScheduleStrategy s) { return kNames[static_cast<int>(s)]; }

std::string schedule_strategy_names() {
  std::string out;
  for (const char* n : kNames) out += (out.empty() ? "" : ", ") + std::string(n);
  return out;
}

ScheduleStrategy parse_schedule_strategy(const std::string& s, const std::string& flag) {
  for (ScheduleStrategy st : kAllScheduleStrategies)
    if (s == schedule_strategy_name(st)) return st;
  throw InputError(flag + ": unknown schedule '" + s + "' (valid: " + schedule_strategy_names() + ")");
}

namespace {

// Tensor-aligned partitions from one of the fusion tuner's strategies.
std::vector<int64_t> fusion_bounds(const PipelineModel& pm, Strategy st, const ScheduleOptions& o, bool* pack,
                                   PackOn* pack_on = nullptr) {
  if (pm.gpus() > 1) pm.collectives().cost(o.algorithm, 2, o.transfer);  // profiles computed once, then shared
  Tuner tuner(pm.model(), pm.cluster(), pm.batch(), pm.compute_precision(), pm.collectives());
  TuneOptions t;
  t.strategy = st;
  t.algorithm = o.algorithm;
  t.transfer = o.transfer;
  const Plan plan = tuner.run(t).plan;
  std::vector<int> starts;
  *pack = false;
  for (const auto& b : plan.buckets) {
    starts.push_back(b.begin);
    *pack = *pack || b.pack;
  }
  if (pack_on) *pack_on = plan.pack_on;
  return pm.bounds_from_starts(starts);
}

// Greedy tensor-aligned buckets in backward order, closed once they hold `cap` elements.
std::vector<int64_t> greedy_bounds(const PipelineModel& pm, int64_t cap) {
  const auto& off = pm.tensor_offsets();
  std::vector<int64_t> b;
  int64_t open = 0;
  for (size_t pos = 1; pos < off.size(); ++pos)
    if (off[pos] - open >= cap || pos + 1 == off.size()) {
      if (off[pos] > open) b.push_back(off[pos]);
      open = off[pos];
    }
  if (b.empty() || b.back() != pm.elements()) b.push_back(pm.elements());
  return b;
}

// The most partitions a ByteScheduler schedule may have: 100 times a 1-billion-parameter
// model cut at BYTESCHEDULER_PARTITION's default (1M parameters).
constexpr int64_t kMaxPartitions = 100000;
// The smallest partition that keeps `elements` in `tensors` tensors within kMaxPartitions
// (each tensor's last piece may be short: at most elements / piece + tensors pieces).
int64_t min_partition(int64_t elements, int64_t tensors) {
  const int64_t room = std::max<int64_t>(1, kMaxPartitions - tensors);
  return (elements + room - 1) / room;
}

// Every tensor cut into pieces of at most `piece` elements (ByteScheduler's partitions:
// tensors are not fused).
std::vector<int64_t> tensor_pieces(const PipelineModel& pm, int64_t piece) {
  const auto& off = pm.tensor_offsets();
  std::vector<int64_t> b;
  for (size_t pos = 1; pos < off.size(); ++pos) {
    for (int64_t e = off[pos - 1] + piece; e < off[pos]; e += piece) b.push_back(e);
    if (off[pos] > off[pos - 1]) b.push_back(off[pos]);
  }
  return b;
}

// Uniform partitions of `piece` elements over the whole vector, cut at any element.
std::vector<int64_t> uniform_bounds(int64_t total, int64_t piece) {
  std::vector<int64_t> b;
  for (int64_t e = piece; e < total; e += piece) b.push_back(e);
  b.push_back(total);
  return b;
}

// Partitions that grow by `factor` going backward from the first forward layer's end of
// the vector: `first` elements nearest the input (needed first by the next forward).
std::vector<int64_t> growing_bounds(int64_t total, int64_t first, double factor) {
  std::vector<int64_t> from_end;  // sizes, from the end of the backward-order vector
  int64_t covered = 0;
  double size = double(first);
  while (covered < total) {
    const int64_t s = std::min<int64_t>(total - covered, std::max<int64_t>(1, int64_t(size)));
    from_end.push_back(s);
    covered += s;
    size *= factor;
  }
  std::vector<int64_t> b;
  int64_t e = 0;
  for (auto it = from_end.rbegin(); it != from_end.rend(); ++it) b.push_back(e += *it);
  return b;
}

// FSDP's size-based auto wrap: consecutive layers in forward order form a unit once they
// hold `min_params`; the rest joins the last unit. Bounds in backward order.
std::vector<int64_t> wrap_units(const PipelineModel& pm, int64_t min_params) {
  const Model& m = pm.model();
  const int T = static_cast<int>(m.tensors.size());
  std::vector<int> unit_starts_fwd{0};  // forward tensor index starting each unit
  int64_t held = 0;
  for (int t = 0; t < T; ++t) {
    held += m.tensors[size_t(t)].numel;
    const bool layer_ends = t + 1 == T || m.tensors[size_t(t) + 1].layer != m.tensors[size_t(t)].layer;
    if (layer_ends && held >= min_params && t + 1 < T) {
      unit_starts_fwd.push_back(t + 1);
      held = 0;
    }
  }
  if (held < min_params && unit_starts_fwd.size() > 1) unit_starts_fwd.pop_back();
  // A unit starting at forward tensor f ends the backward-order range at position T - f.
  std::vector<int> starts{0};
  for (auto it = unit_starts_fwd.rbegin(); it != unit_starts_fwd.rend(); ++it)
    if (*it > 0) starts.push_back(T - *it);
  return pm.bounds_from_starts(starts);
}

PipelineSchedule base(const ScheduleOptions& o, ScheduleStrategy st) {
  PipelineSchedule s;
  s.strategy = schedule_strategy_name(st);
  s.transfer = o.transfer;
  s.algorithm = o.algorithm;
  return s;
}

// The schedule's per-GPU memory, and whether it is within `limit` bytes (> 0; else no limit).
MemoryEstimate memory_of(const PipelineModel& pm, const PipelineSchedule& s) {
  return schedule_memory(pm.model(), pm.gpus(), pm.batch(), pm.compute_precision(), s);
}
bool within(const MemoryEstimate& m, double limit) { return !(limit > 0) || m.total() <= limit; }

struct Search {
  explicit Search(const PipelineModel& m, double limit = 0) : pm(m), memory_limit(limit) {}
  const PipelineModel& pm;
  double memory_limit;
  int64_t evaluations = 0;
  PipelineSchedule best;
  double best_s = std::numeric_limits<double>::infinity();
  // Evaluates `s` (infinity when it does not fit); keeps it when it is the best so far.
  double value(const PipelineSchedule& s) {
    if (!within(memory_of(pm, s), memory_limit)) return std::numeric_limits<double>::infinity();
    ++evaluations;
    const double t = pm.evaluate(s, false).iteration_s;
    if (t < best_s * (1 - 1e-12)) {
      best_s = t;
      best = s;
    }
    return t;
  }
  bool consider(const PipelineSchedule& s) {
    const double before = best_s;
    return value(s) < before * (1 - 1e-12);
  }
};

// The kinds of schedule the search tries, each with the settings that make it valid
// and the gates, orders and credits that differ for it (with an optimizer step after
// every allreduce, a per-layer gate is the barrier).
struct Shape {
  Exchange exchange;
  bool step_update, shard;
  std::vector<Gate> gates;
  bool reshard = false;
};
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s{
      {Exchange::Allreduce, true, false, {Gate::Barrier}},                                 // fusion, DDP, Horovod
      {Exchange::Allreduce, false, false, {Gate::PerLayer}},                               // ByteScheduler
      {Exchange::ReduceScatterAllgather, false, false, {Gate::PerLayer}},                  // DeAR
      {Exchange::ReduceScatterAllgather, true, true, {Gate::Barrier, Gate::PerLayer}},     // ZeRO-2, FSDP
      {Exchange::ReduceScatterAllgather, true, true, {Gate::PerLayer}, true},              // ZeRO-3 (FULL_SHARD)
  };
  return s;
}

// Moves, drops and adds boundaries of the best schedule while that improves it, first
// improvement, sweeping the boundaries in turn until a sweep changes nothing or the
// budget is spent.
void local_search(Search& search, int64_t budget) {
  const int64_t stop = search.evaluations + budget;
  bool improved = true;
  while (improved && search.evaluations < stop) {
    improved = false;
    for (size_t i = 0; i < search.best.bounds.size() && search.evaluations < stop; ++i) {
      const std::vector<int64_t> b = search.best.bounds;
      const int64_t lo = i ? b[i - 1] : 0, hi = b[i];
      std::vector<std::vector<int64_t>> tries;
      if (hi - lo >= 2) {  // split in two
        auto t = b;
        t.insert(t.begin() + long(i), lo + (hi - lo) / 2);
        tries.push_back(t);
      }
      if (i + 1 < b.size()) {
        auto t = b;  // merge with the next
        t.erase(t.begin() + long(i));
        tries.push_back(t);
        const int64_t next = b[i + 1];
        for (int64_t moved : {lo + (hi - lo) / 2, hi + (next - hi) / 2})
          if (moved > lo && moved < next && moved != hi) {
            auto m = b;
            m[i] = moved;
            tries.push_back(m);
          }
      }
      for (auto& t : tries) {
        if (search.evaluations >= stop) break;
        PipelineSchedule s = search.best;
        s.bounds = std::move(t);
        if (search.consider(s)) {
          improved = true;
          break;
        }
      }
    }
  }
}

PipelineSchedule best_schedule(const PipelineModel& pm, const ScheduleOptions& o, int64_t* evaluations,
                               double memory_limit) {
  Search search(pm, memory_limit);
  bool pack = false;
  PipelineSchedule fusion = base(o, ScheduleStrategy::Best);
  fusion.bounds = fusion_bounds(pm, Strategy::Optimal, o, &pack);
  search.consider(fusion);  // the fusion-only optimum: the search never ends above it
  const int64_t total = pm.elements();
  // Partition families: the fusion optimum's, uniform pieces over the vector, tensors cut
  // into pieces, tensor-aligned greedy buckets, blocks growing away from the input.
  std::vector<std::vector<int64_t>> families{fusion.bounds};
  for (int64_t piece = int64_t(1) << 18; piece < total; piece *= 4) {
    families.push_back(uniform_bounds(total, piece));
    families.push_back(tensor_pieces(pm, piece));
    families.push_back(greedy_bounds(pm, piece));
  }
  for (int64_t first = int64_t(1) << 16; first < total; first *= 4) families.push_back(growing_bounds(total, first, 2.0));
  auto schedule = [&](const Shape& sh, Gate gate, Order order, int credit, const std::vector<int64_t>& b) {
    PipelineSchedule s = base(o, ScheduleStrategy::Best);
    s.exchange = sh.exchange;
    s.step_update = sh.step_update;
    s.shard_optimizer = sh.shard;
    s.reshard = sh.reshard;
    s.gate = gate;
    s.order = order;
    s.credit = credit;
    s.bounds = b;
    return s;
  };
  // Stage 1: every shape, gate, order and credit on three families (the fusion
  // optimum's, uniform 1M-element pieces, blocks growing from 64K); the three best
  // settings then on every family.
  struct Setting {
    double s;
    size_t shape;
    Gate gate;
    Order order;
    int credit;
  };
  std::vector<Setting> settings;
  const std::vector<int64_t> probe_uniform = uniform_bounds(total, std::min<int64_t>(total, 1 << 20));
  const std::vector<int64_t> probe_growing = growing_bounds(total, std::min<int64_t>(total, 1 << 16), 2.0);
  // Resharding adds messages and gates to the same compute: it only pays in memory, so it
  // is tried when nothing else has fitted.
  for (size_t k = 0; k < shapes().size(); ++k) {
    if (shapes()[k].reshard && std::isfinite(search.best_s)) continue;
    for (Gate gate : shapes()[k].gates)
      for (Order order : {Order::Fifo, Order::Priority})
        for (int credit : {1, 4}) {
          double best = std::numeric_limits<double>::infinity();
          for (const std::vector<int64_t>* b : {&std::as_const(fusion.bounds), &probe_uniform, &probe_growing}) {
            const PipelineSchedule s = schedule(shapes()[k], gate, order, credit, *b);
            best = std::min(best, search.value(s));
          }
          settings.push_back({best, k, gate, order, credit});
        }
  }
  std::stable_sort(settings.begin(), settings.end(), [](const Setting& a, const Setting& b) { return a.s < b.s; });
  for (size_t i = 0; i < std::min<size_t>(3, settings.size()); ++i)
    for (const auto& b : families)
      search.consider(schedule(shapes()[settings[i].shape], settings[i].gate, settings[i].order, settings[i].credit, b));
  // Stage 2: the boundaries of the best, locally.
  if (search.best.bounds.empty()) {  // nothing fits the memory: the fastest regardless
    int64_t unlimited = 0;
    PipelineSchedule fastest = best_schedule(pm, o, &unlimited, 0);
    *evaluations = search.evaluations + unlimited;
    return fastest;
  }
  local_search(search, o.search_evaluations);
  *evaluations = search.evaluations;
  return search.best;
}

}  // namespace

ScheduleResult schedule_for(const PipelineModel& pm, ScheduleStrategy st, const ScheduleOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  ScheduleResult r;
  PipelineSchedule s = base(o, st);
  bool pack = false;
  switch (st) {
    case ScheduleStrategy::Best: s = best_schedule(pm, o, &r.evaluations, o.memory_limit_bytes); break;
    case ScheduleStrategy::Fusion: s.bounds = fusion_bounds(pm, Strategy::Optimal, o, &pack); break;
    case ScheduleStrategy::Ddp:
      s.bounds = fusion_bounds(pm, Strategy::Ddp, o, &pack, &s.pack_on);
      s.pack = pack;
      break;
    case ScheduleStrategy::Horovod:
      s.bounds = fusion_bounds(pm, Strategy::Horovod, o, &pack, &s.pack_on);
      s.pack = pack;
      break;
    case ScheduleStrategy::ByteScheduler: {
      // A partition per handful of parameters would be millions of messages (hours, and
      // the bounds alone gigabytes): counted before they are made.
      const auto& off = pm.tensor_offsets();
      int64_t pieces = 0;
      for (size_t pos = 1; pos < off.size(); ++pos)
        pieces += (off[pos] - off[pos - 1] + o.partition_elems - 1) / o.partition_elems;
      if (pieces > kMaxPartitions)
        throw InputError(field("schedule.partition") + ": " + grouped(o.partition_elems) +
                         " parameters per partition make " + grouped(pieces) + " partitions, more than " +
                         grouped(kMaxPartitions) + "; give at least " +
                         grouped(min_partition(pm.elements(), int64_t(off.size()) - 1)));
      s.bounds = tensor_pieces(pm, o.partition_elems);
      s.order = Order::Priority;
      s.gate = Gate::PerLayer;
      s.step_update = false;
      s.credit = int(std::clamp<int64_t>(o.credit_elems / std::max<int64_t>(1, o.partition_elems), 1, 64));
      break;
    }
    case ScheduleStrategy::UsByte: {
      // ByteScheduler's order and gating with unequal blocks growing away from the
      // input and a credit of 1-4, the start size and credit chosen by prediction.
      Search search(pm);
      for (int credit : {1, 2, 4})
        for (int64_t first = int64_t(1) << 14; first < pm.elements(); first *= 2) {
          PipelineSchedule u = base(o, st);
          u.order = Order::Priority;
          u.gate = Gate::PerLayer;
          u.step_update = false;
          u.credit = credit;
          u.bounds = growing_bounds(pm.elements(), first, 2.0);
          search.consider(u);
        }
      s = search.best;
      r.evaluations = search.evaluations;
      break;
    }
    case ScheduleStrategy::Dear:
      s.bounds = greedy_bounds(pm, std::max<int64_t>(1, o.dear_threshold_bytes / bytes_per_element(o.transfer)));
      s.exchange = Exchange::ReduceScatterAllgather;
      s.order = Order::Priority;
      s.gate = Gate::PerLayer;
      s.step_update = false;
      break;
    case ScheduleStrategy::Zero2:
      s.bounds = greedy_bounds(pm, o.zero_bucket_elems);
      s.exchange = Exchange::ReduceScatterAllgather;
      s.shard_optimizer = true;
      break;
    case ScheduleStrategy::Fsdp:
    case ScheduleStrategy::Zero3:
      s.bounds = wrap_units(pm, o.fsdp_min_params);
      s.exchange = Exchange::ReduceScatterAllgather;
      s.shard_optimizer = true;
      s.reshard = st == ScheduleStrategy::Zero3;  // FULL_SHARD: parameters gathered again for backward
      s.order = Order::Priority;
      s.gate = Gate::PerLayer;
      break;
  }
  r.schedule = s;
  r.result = pm.evaluate(s, true);
  r.evaluations += 1;
  r.memory = memory_of(pm, s);
  r.fits = within(r.memory, o.memory_limit_bytes);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace fuseplan

namespace fuseplan {

nlohmann::json schedule_to_json(const PipelineModel& pm, const ScheduleResult& r, const PipelineModel::Bound* bound) {
  const PipelineSchedule& s = r.schedule;
  nlohmann::json j;
  j["schema"] = kScheduleSchema;
  j["model"] = pm.model().name;
  j["fingerprint"] = pm.model().fingerprint_hex();
  j["cluster"] = pm.cluster().name;
  j["gpus"] = pm.gpus();
  j["batch_per_gpu"] = pm.batch();
  j["compute"] = precision_name(pm.compute_precision());
  j["strategy"] = s.strategy;
  j["exchange"] = exchange_name(s.exchange);
  j["order"] = order_name(s.order);
  j["gate"] = gate_name(s.gate);
  j["step_update"] = s.step_update;
  j["shard_optimizer"] = s.shard_optimizer;
  j["reshard"] = s.reshard;
  j["credit"] = s.credit;
  j["pack"] = s.pack;
  if (s.pack_on != PackOn::Comm) j["pack_on"] = pack_on_name(s.pack_on);
  j["algorithm"] = s.algorithm;
  j["transfer"] = precision_name(s.transfer);
  j["bounds"] = s.bounds;
  PlanBucket all;
  all.end = static_cast<int>(pm.model().tensors.size());
  all.transfer = s.transfer;
  Plan setup = make_plan(pm.model(), cluster_reference(pm.cluster()), pm.gpus(), pm.batch(), pm.compute_precision(),
                         {all}, "schedule " + s.strategy);
  setup.compute_scale = pm.cluster().compute_scale;
  j["setup"] = plan_to_json(setup);
  const PipelineResult& p = r.result;
  nlohmann::json pred{{"iteration_ms", p.iteration_s * 1e3}, {"compute_ms", p.compute_s * 1e3},
                      {"exposed_ms", p.exposed_s * 1e3},     {"comm_busy_ms", p.comm_busy_s * 1e3},
                      {"data_wait_ms", p.data_wait_s * 1e3}, {"converged", p.converged},
                      {"iterations_run", p.iterations_run},  {"memory_GiB", r.memory.total() / (1024.0 * 1024 * 1024)}, {"fits", r.fits},
                      {"evaluations", r.evaluations},        {"tuning_ms", r.seconds * 1e3}};
  if (bound) {
    pred["lower_bound_ms"] = bound->iteration_s * 1e3;
    pred["bound_certified"] = bound->certified;
  }
  j["prediction"] = pred;
  nlohmann::json msgs = nlohmann::json::array();
  for (const auto& m : p.messages)
    msgs.push_back({{"partition", m.partition}, {"kind", message_kind_name(m.kind)}, {"elems", m.elems},
                    {"ready_ms", m.ready_s * 1e3}, {"start_ms", m.start_s * 1e3}, {"end_ms", m.end_s * 1e3}});
  j["messages"] = msgs;
  j["forward_start_ms"] = nlohmann::json::array();
  for (double t : p.forward_start_s) j["forward_start_ms"].push_back(t * 1e3);
  return j;
}

}  // namespace fuseplan

namespace fuseplan {

ScheduleFile load_schedule(const std::string& path) {
  const nlohmann::json j = parse_json_file(path);
  JsonObject r(j, path);
  const std::string schema = r.string("schema");
  if (schema != kScheduleSchema)
    r.fail("schema", "unsupported schema '" + schema + "' (this build reads " + kScheduleSchema + ")");
  ScheduleFile f;
  f.setup = plan_from_json(r.raw("setup"), path + " ($.setup)");
  if (!f.setup.model_file.empty() && !std::filesystem::path(f.setup.model_file).is_absolute())
    f.setup.model_file = (std::filesystem::path(path).parent_path() / f.setup.model_file).lexically_normal().string();
  PipelineSchedule& s = f.schedule;
  s.strategy = r.string("strategy");
  s.bounds = r.int_list("bounds", 1);
  auto choice = [&](const char* key, std::initializer_list<const char*> valid) {
    const std::string v = r.string(key);
    int k = 0;
    std::string list;
    for (const char* name : valid) {
      if (v == name) return k;
      list += (k++ ? ", " : "") + std::string(name);
    }
    r.fail(key, "unknown value '" + v + "' (valid: " + list + ")");
    return 0;
  };
  s.exchange = choice("exchange", {"allreduce", "rs+ag"}) ? Exchange::ReduceScatterAllgather : Exchange::Allreduce;
  s.order = choice("order", {"fifo", "priority"}) ? Order::Priority : Order::Fifo;
  s.gate = choice("gate", {"barrier", "per-layer"}) ? Gate::PerLayer : Gate::Barrier;
  s.step_update = r.boolean("step_update");
  s.shard_optimizer = r.boolean("shard_optimizer");
  s.reshard = r.opt_boolean("reshard").value_or(false);
  s.credit = static_cast<int>(r.integer("credit", 1, 64));
  s.pack = r.boolean("pack");
  if (auto po = r.opt_string("pack_on")) s.pack_on = parse_pack_on(*po, path + ": $.pack_on");
  s.algorithm = r.string("algorithm");
  if (s.algorithm != "auto") find_algorithm(s.algorithm, path + ": $.algorithm");
  s.transfer = parse_precision(r.string("transfer"), path + ": $.transfer");
  for (const char* informational : {"model", "fingerprint", "cluster", "gpus", "batch_per_gpu", "compute", "prediction",
                                    "messages", "forward_start_ms"})
    if (r.has(informational)) r.raw(informational);
  r.finish();
  return f;
}

}  // namespace fuseplan
