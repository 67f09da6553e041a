// Analytic predictor: gradient ready times, bucket scheduling on streams, the Report.
#include "fuseplan/costmodel/predictor.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

std::vector<double> gradient_ready_times(const Model& model, const ComputeModel& compute) {
  std::vector<double> ready(model.tensors.size(), 0);
  double t = 0;
  for (int l = static_cast<int>(model.layers.size()) - 1; l >= 0; --l) {
    t += compute.layers()[l].bwd_s;
    const Layer& layer = model.layers[l];
    for (int i = 0; i < layer.tensor_count; ++i)
      ready[model.tensor_at_backward(layer.first_tensor + i)] = t;
  }
  return ready;
}

std::vector<BucketTiming> schedule_buckets(const std::vector<double>& ready, const std::vector<double>& lat,
                                           const std::vector<double>& bw, const std::vector<int>& stream) {
  const size_t n = ready.size();
  std::vector<BucketTiming> out(n);
  bool one_stream = std::all_of(stream.begin(), stream.end(), [&](int s) { return s == stream[0]; });
  if (one_stream) {
    double free_at = 0;
    for (size_t i = 0; i < n; ++i) {
      double start = std::max(ready[i], free_at);
      out[i] = {ready[i], start, start + lat[i] + bw[i]};
      free_at = out[i].end_s;
    }
    return out;
  }
  // Several streams: each is FIFO in bucket order; the latency part of an allreduce runs
  // on its own, the bandwidth parts of concurrent allreduces share the links equally
  // (processor sharing), as AIACC's streams share one NIC.
  int streams = *std::max_element(stream.begin(), stream.end()) + 1;
  std::vector<std::vector<size_t>> queue(streams);
  for (size_t i = 0; i < n; ++i) queue[stream[i]].push_back(i);
  struct Active {
    long bucket = -1;  // -1 = idle
    bool in_bw = false;
    double rem = 0;
    size_t next = 0;
  };
  std::vector<Active> st(streams);
  double now = 0;
  size_t done = 0;
  while (done < n) {
    for (int s = 0; s < streams; ++s) {
      auto& a = st[s];
      if (a.bucket < 0 && a.next < queue[s].size() && ready[queue[s][a.next]] <= now) {
        size_t b = queue[s][a.next++];
        a.bucket = static_cast<long>(b);
        a.in_bw = false;
        a.rem = lat[b];
        out[b] = {ready[b], now, now};
      }
    }
    int sharing = 0;
    for (const auto& a : st) sharing += (a.bucket >= 0 && a.in_bw);
    double dt = std::numeric_limits<double>::infinity();
    for (int s = 0; s < streams; ++s) {
      const auto& a = st[s];
      if (a.bucket >= 0) dt = std::min(dt, a.in_bw ? a.rem * sharing : a.rem);
      else if (a.next < queue[s].size()) dt = std::min(dt, ready[queue[s][a.next]] - now);
    }
    dt = std::max(dt, 0.0);
    now += dt;
    for (auto& a : st) {
      if (a.bucket < 0) continue;
      a.rem -= a.in_bw ? dt / sharing : dt;
      // Relative tolerance: several streams can finish in the same instant.
      while (a.bucket >= 0 && a.rem <= 1e-12 * std::max(1.0, now)) {
        if (!a.in_bw) {
          a.in_bw = true;
          a.rem = bw[a.bucket];
        } else {
          out[a.bucket].end_s = now;
          a.bucket = -1;
          ++done;
        }
      }
    }
  }
  return out;
}

namespace {
// A packing copy reads and writes each byte once.
constexpr double kPackPasses = 2.0;
}  // namespace

double pack_time_s(const Cluster& cluster, int64_t bytes) {
  return kPackPasses * double(bytes) / (cluster.device.mem_bw_GBps * 1e9 * cluster.device.memory_efficiency);
}

BucketTerms bucket_terms(const Cluster& cluster, const CollectiveModel& coll, double last_ready_s, int64_t elems,
                         std::string_view algorithm, Precision transfer, bool pack) {
  BucketTerms t;
  t.bytes = elems * bytes_per_element(transfer);
  t.ready_s = last_ready_s;
  if (pack) t.ready_s += pack_time_s(cluster, t.bytes);
  if (coll.gpus() > 1) {
    t.choice = coll.cost(algorithm, elems, transfer);
    t.latency_s = t.choice.launch_s + t.choice.cost.latency_s + t.choice.cost.reduce_s;
    t.bandwidth_s = t.choice.cost.bandwidth_s;
  }
  return t;
}

Report predict(const Model& model, const Cluster& cluster, const Plan& plan, const CollectiveModel& coll,
               const ComputeModel& compute, const TrainingGoal& goal, bool with_timeline) {
  if (coll.gpus() != plan.gpus)
    throw InputError("plan is for " + std::to_string(plan.gpus) + " GPUs, the prediction asks for " +
                     std::to_string(coll.gpus()));
  if (goal.epochs <= 0) throw InputError("--epochs: must be > 0");
  if (goal.dataset_size <= 0) throw InputError("--dataset-size: must be > 0");
  Report r;
  r.source = "predicted";
  r.model = model.name;
  r.cluster = cluster.name;
  r.gpus = plan.gpus;
  r.batch_per_gpu = plan.batch_per_gpu;
  r.compute = plan.compute;
  r.forward_s = compute.forward_s();
  r.backward_s = compute.backward_s();
  r.optimizer_s = compute.optimizer_s();

  const auto ready_pos = gradient_ready_times(model, compute);
  std::vector<double> ready, lat, bw;
  std::vector<int> stream;
  for (size_t i = 0; i < plan.buckets.size(); ++i) {
    const auto& b = plan.buckets[i];
    double last_ready = 0;
    for (int pos = b.begin; pos < b.end; ++pos) last_ready = std::max(last_ready, ready_pos[pos]);
    BucketTerms t = bucket_terms(cluster, coll, last_ready, bucket_elements(plan, model, b), b.algorithm, b.transfer, b.pack);
    BucketReport br;
    br.index = static_cast<int>(i);
    br.begin = b.begin;
    br.end = b.end;
    br.first_tensor = model.tensors[model.tensor_at_backward(b.begin)].name;
    br.last_tensor = model.tensors[model.tensor_at_backward(b.end - 1)].name;
    br.bytes = t.bytes;
    br.stream = b.stream;
    br.transfer = b.transfer;
    br.algorithm = t.choice.algorithm ? std::string(t.choice.algorithm->name) : "none";
    br.auto_chosen = t.choice.algorithm && b.algorithm == "auto";
    br.cost = t.choice.cost;
    br.launch_s = t.choice.launch_s;
    ready.push_back(t.ready_s);
    lat.push_back(t.latency_s);
    bw.push_back(t.bandwidth_s);
    stream.push_back(b.stream);
    r.buckets.push_back(br);
  }
  auto timing = schedule_buckets(ready, lat, bw, stream);
  for (size_t i = 0; i < timing.size(); ++i) {
    r.buckets[i].ready_s = timing[i].ready_s;
    r.buckets[i].start_s = timing[i].start_s;
    r.buckets[i].end_s = timing[i].end_s;
    r.comm_busy_s += timing[i].end_s - timing[i].start_s;
    r.comm_end_s = std::max(r.comm_end_s, timing[i].end_s);
  }
  r.exposed_comm_s = std::max(0.0, r.comm_end_s - r.backward_s);
  double busy = r.forward_s + std::max(r.backward_s, r.comm_end_s) + r.optimizer_s;
  r.data_wait_s = compute.data_wait_s(busy);
  r.iteration_s = busy + r.data_wait_s;
  double single_busy = r.forward_s + r.backward_s + r.optimizer_s;
  r.single_gpu_iteration_s = single_busy + compute.data_wait_s(single_busy);
  r.scaling_efficiency = r.single_gpu_iteration_s / r.iteration_s;
  r.throughput_samples_s = double(plan.gpus) * plan.batch_per_gpu / r.iteration_s;
  r.epochs = goal.epochs;
  r.dataset_size = goal.dataset_size;
  r.iterations_to_train = static_cast<int64_t>(std::ceil(goal.epochs * double(goal.dataset_size) /
                                                         (double(plan.gpus) * plan.batch_per_gpu)));
  r.time_to_train_s = double(r.iterations_to_train) * r.iteration_s;

  if (with_timeline) {
    auto& ev = r.timeline.events;
    double t = r.data_wait_s;
    if (r.data_wait_s > 0) ev.push_back({0, "compute", "data wait", "data", 0, r.data_wait_s, 0});
    for (size_t l = 0; l < model.layers.size(); ++l) {
      double d = compute.layers()[l].fwd_s;
      ev.push_back({0, "compute", model.layers[l].name, "forward", t, d, 0});
      t += d;
    }
    const double bwd_start = t;
    for (int l = static_cast<int>(model.layers.size()) - 1; l >= 0; --l) {
      double d = compute.layers()[l].bwd_s;
      ev.push_back({0, "compute", model.layers[l].name + " (bwd)", "backward", t, d, 0});
      t += d;
    }
    for (const auto& b : r.buckets)
      ev.push_back({0, "comm" + std::to_string(b.stream),
                    "bucket " + std::to_string(b.index) + " " + b.algorithm, "allreduce", bwd_start + b.start_s,
                    b.end_s - b.start_s, b.bytes});
    ev.push_back({0, "compute", "optimizer", "optimizer", bwd_start + std::max(r.backward_s, r.comm_end_s),
                  r.optimizer_s, 0});
  }
  return r;
}

}  // namespace fuseplan
