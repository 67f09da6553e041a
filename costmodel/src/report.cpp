// Report JSON and the Chrome trace writer.
#include "fuseplan/costmodel/report.hpp"

#include <map>

#include "fuseplan/costmodel/plan.hpp"

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

}  // namespace fuseplan
