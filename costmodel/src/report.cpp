// Report JSON and the Chrome trace writer.
#include "fuseplan/costmodel/report.hpp"

#include <fstream>
#include <map>

#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/error.hpp"

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
    if (e.bytes) x["args"] = {{"bytes", e.bytes}};
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
  nlohmann::json j{{"source", r.source},
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
                   {"iterations_to_train", r.iterations_to_train},
                   {"time_to_train_s", r.time_to_train_s},
                   {"buckets", buckets}};
  if (with_timeline) j["timeline"] = r.timeline.to_chrome_trace();
  return j;
}

Timeline timeline_from_chrome_trace(const nlohmann::json& trace) {
  Timeline t;
  std::map<std::pair<int, int>, std::string> streams;
  for (const auto& e : trace.at("traceEvents"))
    if (e.value("ph", "") == "M" && e.value("name", "") == "thread_name")
      streams[{e.at("pid").get<int>(), e.at("tid").get<int>()}] = e.at("args").at("name").get<std::string>();
  for (const auto& e : trace.at("traceEvents")) {
    if (e.value("ph", "") != "X") continue;
    TimelineEvent x;
    x.rank = e.at("pid").get<int>();
    x.stream = streams[{x.rank, e.at("tid").get<int>()}];
    x.name = e.at("name").get<std::string>();
    x.category = e.value("cat", "");
    x.start_s = e.at("ts").get<double>() * 1e-6;
    x.dur_s = e.at("dur").get<double>() * 1e-6;
    if (e.contains("args")) x.bytes = e["args"].value("bytes", int64_t(0));
    t.events.push_back(std::move(x));
  }
  return t;
}

Report report_from_json(const nlohmann::json& j, const std::string& origin) {
  Report r;
  try {
    r.source = j.at("source").get<std::string>();
    r.model = j.at("model").get<std::string>();
    r.cluster = j.at("cluster").get<std::string>();
    r.gpus = j.at("gpus").get<int>();
    r.batch_per_gpu = j.at("batch_per_gpu").get<int>();
    r.compute = parse_precision(j.at("compute").get<std::string>(), origin + ": $.compute");
    for (auto [key, field] : {std::pair{"iteration_s", &r.iteration_s}, {"forward_s", &r.forward_s},
                              {"backward_s", &r.backward_s}, {"optimizer_s", &r.optimizer_s},
                              {"data_wait_s", &r.data_wait_s}, {"comm_busy_s", &r.comm_busy_s},
                              {"comm_end_s", &r.comm_end_s}, {"exposed_comm_s", &r.exposed_comm_s},
                              {"throughput_samples_s", &r.throughput_samples_s}})
      *field = j.at(key).get<double>();
    for (const auto& b : j.at("buckets")) {
      BucketReport x;
      x.index = b.at("index").get<int>();
      x.begin = b.at("begin").get<int>();
      x.end = b.at("end").get<int>();
      x.first_tensor = b.value("first_tensor", "");
      x.last_tensor = b.value("last_tensor", "");
      x.bytes = b.at("bytes").get<int64_t>();
      x.algorithm = b.at("algorithm").get<std::string>();
      x.variant = b.value("variant", "");
      x.auto_chosen = b.value("auto", false);
      x.stream = b.value("stream", 0);
      x.transfer = parse_precision(b.at("transfer").get<std::string>(), origin + ": $.buckets[].transfer");
      x.ready_s = b.at("ready_s").get<double>();
      x.start_s = b.at("start_s").get<double>();
      x.end_s = b.at("end_s").get<double>();
      r.buckets.push_back(std::move(x));
    }
    if (j.contains("timeline")) r.timeline = timeline_from_chrome_trace(j.at("timeline"));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(origin + ": not a fuseplan report (" + std::string(e.what()) + ")");
  }
  return r;
}

Report load_report(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw InputError(path + ": cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    throw InputError(path + ": not JSON (" + std::string(e.what()) + ")");
  }
  return report_from_json(j, path);
}

}  // namespace fuseplan
