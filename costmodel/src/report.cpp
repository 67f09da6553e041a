// Report JSON and the Chrome trace writer.
#include "fuseplan/costmodel/report.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {


nlohmann::json Timeline::to_chrome_trace() const {
  nlohmann::json ev = nlohmann::json::array();
  std::map<int, std::map<std::string, int>> tids;  // rank -> stream -> tid (order of appearance)
  for (const auto& e : events) {
    auto& streams = tids[e.rank];
    auto it = streams.find(e.stream);
    if (it == streams.end()) {
      int tid = static_cast<int>(streams.size());
      it = streams.emplace(e.stream, tid).first;
      ev.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", e.rank}, {"tid", tid}, {"args", {{"name", e.stream}}}});
      if (tid == 0)
        ev.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", e.rank}, {"tid", 0},
                      {"args", {{"name", "rank " + std::to_string(e.rank)}}}});
    }
    nlohmann::json x{{"ph", "X"}, {"name", e.name}, {"cat", e.category}, {"ts", e.start_s * 1e6},
                     {"dur", e.dur_s * 1e6}, {"pid", e.rank}, {"tid", it->second}};
    if (e.bytes) x["args"]["bytes"] = e.bytes;
    if (e.iteration >= 0) x["args"]["iteration"] = e.iteration;
    ev.push_back(std::move(x));
  }
  return {{"traceEvents", ev}, {"displayTimeUnit", "ms"}};
}

void Timeline::write_chrome_trace(const std::string& path) const { write_file_atomic(path, to_chrome_trace().dump() + "\n"); }

nlohmann::json report_to_json(const Report& r, bool with_timeline) {
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& b : r.buckets)
    buckets.push_back({{"index", b.index},
                       {"begin", b.begin},
                       {"end", b.end},
                       {"first_tensor", b.first_tensor},
                       {"last_tensor", b.last_tensor},
                       {"bytes", b.bytes},
                       {"algorithm", b.algorithm},
                       {"variant", b.variant},
                       {"auto", b.auto_chosen},
                       {"stream", b.stream},
                       {"transfer", precision_name(b.transfer)},
                       {"ready_s", b.ready_s},
                       {"start_s", b.start_s},
                       {"end_s", b.end_s},
                       {"latency_s", b.cost.latency_s},
                       {"bandwidth_s", b.cost.bandwidth_s},
                       {"reduce_s", b.cost.reduce_s},
                       {"launch_s", b.launch_s}});
  for (size_t i = 0; i < r.buckets.size(); ++i) {
    if (r.buckets[i].copy_in_s > 0) buckets[i]["copy_in_s"] = r.buckets[i].copy_in_s;
    if (r.buckets[i].copy_out_s > 0) buckets[i]["copy_out_s"] = r.buckets[i].copy_out_s;
  }
  nlohmann::json j{{"schema", kReportSchema},
                   {"source", r.source},
                   {"model", r.model},
                   {"cluster", r.cluster},
                   {"gpus", r.gpus},
                   {"batch_per_gpu", r.batch_per_gpu},
                   {"compute", precision_name(r.compute)},
                   {"iteration_s", r.iteration_s},
                   {"forward_s", r.forward_s},
                   {"backward_s", r.backward_s},
                   {"optimizer_s", r.optimizer_s},
                   {"data_wait_s", r.data_wait_s},
                   {"comm_busy_s", r.comm_busy_s},
                   {"comm_end_s", r.comm_end_s},
                   {"exposed_comm_s", r.exposed_comm_s},
                   {"throughput_samples_s", r.throughput_samples_s},
                   {"single_gpu_iteration_s", r.single_gpu_iteration_s},
                   {"scaling_efficiency", r.scaling_efficiency},
                   {"epochs", r.epochs},
                   {"dataset_size", r.dataset_size},
                   {"tokens", r.tokens},
                   {"goal", r.goal},
                   {"iterations_to_train", r.iterations_to_train},
                   {"time_to_train_s", r.time_to_train_s},
                   {"buckets", buckets}};
  if (r.step_overhead_s > 0) j["step_overhead_s"] = r.step_overhead_s;
  if (r.compute_scale != 1) j["compute_scale"] = r.compute_scale;
  if (r.cast) j["cast"] = pack_on_name(*r.cast);
  if (r.variation_wait_s > 0) j["variation_wait_s"] = r.variation_wait_s;
  if (r.copy_back_s > 0) j["copy_back_s"] = r.copy_back_s;
  if (r.backward_copies_s > 0) j["backward_copies_s"] = r.backward_copies_s;
  if (!r.compute_by_class.empty()) {
    auto& a = j["compute_by_class"] = nlohmann::json::array();
    for (const auto& k : r.compute_by_class)
      a.push_back({{"class", compute_class_name(k.k)}, {"layers", k.layers}, {"forward_s", k.forward_s},
                   {"backward_s", k.backward_s}, {"flops", k.flops}, {"memory_bound", k.memory_bound},
                   {"measured", k.measured}});
  }
  if (with_timeline) j["timeline"] = timeline_to_json(r.timeline);
  return j;
}

nlohmann::json timeline_to_json(const Timeline& t) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& e : t.events)
    a.push_back({{"rank", e.rank}, {"stream", e.stream}, {"name", e.name}, {"category", e.category},
                 {"start_s", e.start_s}, {"dur_s", e.dur_s}, {"bytes", e.bytes}, {"iteration", e.iteration}});
  return a;
}

Timeline timeline_from_json(const nlohmann::json& events, const std::string& origin, const std::string& path) {
  if (!events.is_array()) throw InputError(origin + ": " + path + ": expected an array of events");
  Timeline t;
  for (size_t i = 0; i < events.size(); ++i) {
    JsonObject e = element_object(events[i], origin, path + "[" + std::to_string(i) + "]");
    TimelineEvent x;
    x.rank = int(e.integer("rank", 0, INT32_MAX));
    x.stream = e.string("stream");
    x.name = e.string("name");
    x.category = e.string("category");
    x.start_s = e.number("start_s");
    x.dur_s = e.non_negative("dur_s");
    x.bytes = e.integer("bytes", 0, INT64_MAX);
    x.iteration = int(e.integer("iteration", -1, INT32_MAX));
    e.finish();
    t.events.push_back(std::move(x));
  }
  return t;
}

Report report_from_json(const nlohmann::json& j, const std::string& origin) {
  Report r;
  if (!j.is_object()) throw InputError(origin + ": not a fuseplan report (expected a JSON object)");
  JsonObject o(j, origin);
  const std::string schema = o.string("schema");
  if (schema != kReportSchema)
    o.fail("schema", "'" + schema + "' is not " + kReportSchema + " (reports written before it: run them again)");
  r.source = o.string("source");
  if (r.source != "predicted" && r.source != "simulated" && r.source != "measured")
    o.fail("source", "unknown '" + r.source + "' (valid: predicted, simulated, measured)");
  r.model = o.string("model");
  r.cluster = o.string("cluster");
  r.gpus = int(o.integer("gpus", 1, 1 << 24));
  r.batch_per_gpu = int(o.integer("batch_per_gpu", 1, 1 << 30));
  r.compute = parse_precision(o.string("compute"), origin + ": $.compute");
  for (auto [key, field] : {std::pair{"iteration_s", &r.iteration_s}, {"forward_s", &r.forward_s},
                            {"backward_s", &r.backward_s}, {"optimizer_s", &r.optimizer_s},
                            {"data_wait_s", &r.data_wait_s}, {"comm_busy_s", &r.comm_busy_s},
                            {"comm_end_s", &r.comm_end_s}, {"exposed_comm_s", &r.exposed_comm_s},
                            {"throughput_samples_s", &r.throughput_samples_s},
                            {"single_gpu_iteration_s", &r.single_gpu_iteration_s},
                            {"scaling_efficiency", &r.scaling_efficiency}, {"epochs", &r.epochs},
                            {"tokens", &r.tokens}, {"time_to_train_s", &r.time_to_train_s}})
    *field = o.non_negative(key);
  if (auto v = o.opt_in_range("step_overhead_s", 0, kMaxStepOverheadMs * 1e-3, "s")) r.step_overhead_s = *v;
  if (auto v = o.opt_in_range("compute_scale", kMinComputeScale, kMaxComputeScale, "")) r.compute_scale = *v;
  if (auto c = o.opt_string("cast")) r.cast = parse_pack_on(*c, origin + ": $.cast");
  if (o.has("copy_back_s")) r.copy_back_s = o.non_negative("copy_back_s");
  if (o.has("backward_copies_s")) r.backward_copies_s = o.non_negative("backward_copies_s");
  if (o.has("variation_wait_s")) r.variation_wait_s = o.non_negative("variation_wait_s");
  r.dataset_size = o.integer("dataset_size", 0, INT64_MAX);
  r.iterations_to_train = o.integer("iterations_to_train", 0, INT64_MAX);
  r.goal = o.string("goal");
  const nlohmann::json& buckets = o.array("buckets");
  for (size_t i = 0; i < buckets.size(); ++i) {
    JsonObject b = element_object(buckets[i], origin, "$.buckets[" + std::to_string(i) + "]");
    BucketReport x;
    x.index = int(b.integer("index", 0, INT32_MAX));
    x.begin = int(b.integer("begin", 0, INT32_MAX));
    x.end = int(b.integer("end", x.begin + 1, INT32_MAX));
    x.first_tensor = b.string("first_tensor");
    x.last_tensor = b.string("last_tensor");
    x.bytes = b.integer("bytes", 0, INT64_MAX);
    x.algorithm = b.string("algorithm");
    x.variant = b.string("variant");
    x.auto_chosen = b.boolean("auto");
    x.stream = int(b.integer("stream", 0, INT32_MAX));
    x.transfer = parse_precision(b.string("transfer"), b.where("transfer"));
    x.ready_s = b.number("ready_s");
    x.start_s = b.number("start_s");
    x.end_s = b.number("end_s");
    x.cost.latency_s = b.non_negative("latency_s");
    x.cost.bandwidth_s = b.non_negative("bandwidth_s");
    x.cost.reduce_s = b.non_negative("reduce_s");
    x.launch_s = b.non_negative("launch_s");
    if (b.has("copy_in_s")) x.copy_in_s = b.non_negative("copy_in_s");
    if (b.has("copy_out_s")) x.copy_out_s = b.non_negative("copy_out_s");
    b.finish();
    r.buckets.push_back(std::move(x));
  }
  if (auto list = o.opt_array("compute_by_class")) {
    const nlohmann::json& classes = list->get();
    for (size_t i = 0; i < classes.size(); ++i) {
      JsonObject c = element_object(classes[i], origin, "$.compute_by_class[" + std::to_string(i) + "]");
      ClassCompute k;
      const std::string name = c.string("class");
      const auto parsed = parse_compute_class(name);
      if (!parsed) c.fail("class", "unknown '" + name + "' (valid: " + compute_class_list() + ")");
      k.k = *parsed;
      k.layers = int(c.integer("layers", 1, INT32_MAX));
      k.forward_s = c.non_negative("forward_s");
      k.backward_s = c.non_negative("backward_s");
      k.flops = c.non_negative("flops");
      k.memory_bound = int(c.integer("memory_bound", 0, k.layers));
      k.measured = int(c.integer("measured", 0, k.layers));
      c.finish();
      r.compute_by_class.push_back(k);
    }
  }
  if (o.has("timeline")) r.timeline = timeline_from_json(o.raw("timeline"), origin, "$.timeline");
  o.finish();
  return r;
}

Report load_report(const std::string& path) { return report_from_json(parse_json_file(path), path); }

void sum_buckets(Report& r) {
  r.comm_busy_s = r.comm_end_s = 0;
  for (const auto& b : r.buckets) {
    r.comm_busy_s += b.end_s - b.start_s;
    r.comm_end_s = std::max(r.comm_end_s, b.end_s);
  }
}

void finish_report(Report& r, const TrainingGoal& goal, int seq_len) {
  const double global = double(r.gpus) * r.batch_per_gpu;
  check_goal(goal, global);
  r.throughput_samples_s = global / r.iteration_s;
  r.scaling_efficiency = r.single_gpu_iteration_s > 0 ? r.single_gpu_iteration_s / r.iteration_s : 0;
  if (goal.tokens > 0 && seq_len < 1)
    throw InputError(field("goal.tokens") + ": model " + r.model + " has no sequence length (not a zoo transformer); use " + field("goal.epochs") + " "
                     "and " + field("goal.dataset_size"));
  r.epochs = goal.tokens > 0 ? 0 : goal.epochs;
  r.dataset_size = goal.tokens > 0 ? 0 : goal.dataset_size;
  r.tokens = goal.tokens;
  r.goal = !goal.what.empty() ? goal.what
           : goal.tokens > 0  ? grouped(int64_t(goal.tokens)) + " tokens"
                              : epochs_goal(goal.epochs, goal.dataset_size);
  r.iterations_to_train = static_cast<int64_t>(std::ceil(goal.samples(seq_len) / global));
  r.time_to_train_s = double(r.iterations_to_train) * r.iteration_s;
}

}  // namespace fuseplan
