// Analytic predictor: gradient ready times, bucket scheduling on streams, the Report.
#include "fuseplan/costmodel/predictor.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

std::vector<int> gradient_ready_steps(const Model& model) { return model.ready_steps(); }

std::vector<double> backward_steps_s(const ComputeModel& compute) {
  std::vector<double> s;
  for (auto l = compute.layers().rbegin(); l != compute.layers().rend(); ++l) s.push_back(l->bwd_s);
  return s;
}

std::vector<double> backward_steps_s(const Model& model, const ComputeModel& compute, const Cluster& cluster,
                                     const std::vector<bool>& copied, const std::vector<bool>& cast) {
  std::vector<double> s = backward_steps_s(compute);
  const std::vector<int> step = gradient_ready_steps(model);
  for (size_t pos = 0; pos < copied.size(); ++pos) {
    const int64_t n = model.tensors[model.tensor_at_backward(int(pos))].numel;
    if (copied[pos]) s[size_t(step[pos])] += copy_in_backward_s(cluster, n);
    if (pos < cast.size() && cast[pos]) {
      s[size_t(step[pos])] += cast_time_s(cluster, n, Precision::FP16);
      if (copied[pos]) s[size_t(step[pos])] += hook_division_s(cluster, n);  // DDP's hook
    }
  }
  return s;
}

std::vector<double> backward_steps_s(const Model& model, const ComputeModel& compute, const Cluster& cluster,
                                     const Plan& plan) {
  std::vector<bool> copied(model.tensors.size(), false), cast(model.tensors.size(), false);
  for (const auto& b : plan.buckets)
    for (int pos = b.begin; pos < b.end; ++pos) {
      copied[size_t(pos)] = b.pack && plan.pack_on == PackOn::Compute;
      cast[size_t(pos)] = plan.cast == PackOn::Compute && b.transfer != Precision::FP32 && plan.gpus > 1;
    }
  return backward_steps_s(model, compute, cluster, copied, cast);
}

double slowest_gpu_factor(const Cluster& cluster, int gpus) {
  return gpus > 1 ? 1 + expected_max_normal(gpus) * cluster.compute_variation : 1;
}

std::vector<double> gradient_ready_times(const Model& model, std::vector<double> steps_s) {
  for (size_t k = 1; k < steps_s.size(); ++k) steps_s[k] += steps_s[k - 1];
  std::vector<double> ready;
  for (int step : gradient_ready_steps(model)) ready.push_back(steps_s[size_t(step)]);
  return ready;
}

std::vector<double> gradient_ready_times(const Model& model, const ComputeModel& compute) {
  return gradient_ready_times(model, backward_steps_s(compute));
}

namespace {

// Allreduces on FIFO streams (buckets of one stream in order). The latency part of an
// allreduce runs on its own; the bandwidth parts of concurrent allreduces share the links
// equally (processor sharing), as AIACC's streams share one NIC. `rate` scales every
// allreduce's progress (the processor they share with backward; 1 = all theirs).
class StreamSet {
 public:
  StreamSet(const std::vector<int>& stream, const std::vector<double>& lat, const std::vector<double>& bw,
            std::vector<BucketTiming>& out)
      : lat_(lat), bw_(bw), out_(out) {
    int streams = 0;
    for (int s : stream) streams = std::max(streams, s + 1);
    queue_.resize(streams);
    st_.resize(streams);
    for (size_t i = 0; i < stream.size(); ++i) queue_[stream[i]].push_back(i);
  }

  // Starts each idle stream's next bucket if it is ready by `now` (`ready`: infinity = not yet).
  void start(double now, const std::vector<double>& ready) {
    for (size_t s = 0; s < st_.size(); ++s) {
      auto& a = st_[s];
      if (a.bucket < 0 && a.next < queue_[s].size() && ready[queue_[s][a.next]] <= now) {
        size_t b = queue_[s][a.next++];
        a.bucket = static_cast<long>(b);
        a.in_bw = false;
        a.rem = lat_[b];
        out_[b] = {ready[b], now, now};
      }
    }
  }
  int active() const {
    int k = 0;
    for (const auto& a : st_) k += a.bucket >= 0;
    return k;
  }
  // Time to the next phase end at `rate`, or to the next queued bucket's ready time.
  double next_event(double now, double rate, const std::vector<double>& ready) const {
    const int sharing = in_bandwidth();
    double dt = std::numeric_limits<double>::infinity();
    for (size_t s = 0; s < st_.size(); ++s) {
      const auto& a = st_[s];
      if (a.bucket >= 0) dt = std::min(dt, (a.in_bw ? a.rem * sharing : a.rem) / rate);
      else if (a.next < queue_[s].size()) dt = std::min(dt, ready[queue_[s][a.next]] - now);
    }
    return dt;
  }
  // Advances by `dt` at `rate` to `now`; returns how many allreduces ended.
  size_t advance(double now, double dt, double rate) {
    const int sharing = in_bandwidth();
    size_t ended = 0;
    for (auto& a : st_) {
      if (a.bucket < 0) continue;
      a.rem -= dt * rate / (a.in_bw ? sharing : 1);
      // Relative tolerance: several streams can finish in the same instant.
      while (a.bucket >= 0 && a.rem <= 1e-12 * std::max(1.0, now)) {
        if (!a.in_bw) {
          a.in_bw = true;
          a.rem = bw_[a.bucket];
        } else {
          out_[a.bucket].end_s = now;
          ended_[size_t(a.bucket)] = true;
          a.bucket = -1;
          ++ended;
        }
      }
    }
    return ended;
  }
  bool ended(size_t bucket) const { return ended_[bucket]; }

 private:
  int in_bandwidth() const {
    int k = 0;
    for (const auto& a : st_) k += a.bucket >= 0 && a.in_bw;
    return k;
  }
  struct Active {
    long bucket = -1;  // -1 = idle
    bool in_bw = false;
    double rem = 0;
    size_t next = 0;
  };
  const std::vector<double>& lat_;
  const std::vector<double>& bw_;
  std::vector<BucketTiming>& out_;
  std::vector<std::vector<size_t>> queue_;
  std::vector<Active> st_;
  std::vector<bool> ended_ = std::vector<bool>(out_.size(), false);
};

}  // namespace

SharedTiming schedule_shared(const std::vector<double>& step_s, const std::vector<SharedBucket>& bs,
                             ProcessorSharing sigma, double cycle_s, const std::vector<double>& copy_back_s) {
  const size_t n = bs.size(), L = step_s.size();
  constexpr double kInf = std::numeric_limits<double>::infinity();
  SharedTiming out;
  out.buckets.resize(n);
  out.step_end_s.assign(L, 0);
  std::vector<int> stream;
  std::vector<double> lat, bw, ready(n, kInf);
  std::vector<std::vector<size_t>> made_ready(L);  // buckets that become ready after each step
  for (size_t i = 0; i < n; ++i) {
    stream.push_back(bs[i].stream);
    lat.push_back(bs[i].latency_s);
    bw.push_back(bs[i].bandwidth_s);
    made_ready.at(bs[i].after_step).push_back(i);
  }
  // The compute stream's work: the backward steps, then (with copies back) one copy per
  // bucket in bucket order, each waiting for its bucket's end.
  const size_t copies = copy_back_s.empty() ? 0 : n;
  out.copy_end_s.assign(copies, 0);
  StreamSet streams(stream, lat, bw, out.buckets);
  size_t step = 0, done = 0, copy = 0;
  double now = 0, comp_rem = L ? step_s[0] : 0;
  bool copying = false;
  while (step < L || done < n || copy < copies) {
    while (step < L && comp_rem <= 1e-12 * std::max(1.0, now)) {  // steps that end now
      out.step_end_s[step] = now;
      for (size_t b : made_ready[step]) ready[b] = next_tick(now, cycle_s);
      if (++step < L) comp_rem = step_s[step];
    }
    if (step == L)
      for (;;) {  // copies back that end now, and the next one that can start
        if (copying && comp_rem <= 1e-12 * std::max(1.0, now)) {
          out.copy_end_s[copy++] = now;
          copying = false;
        }
        if (copying || copy == copies || !streams.ended(copy)) break;
        copying = true;
        comp_rem = copy_back_s[copy];
      }
    streams.start(now, ready);
    const bool computing = step < L || copying;
    const double comp_rate = 1 / (1 + sigma.compute * streams.active());
    const double comm_rate = computing ? 1 / (1 + sigma.comm) : 1.0;
    double dt = std::min(computing ? comp_rem / comp_rate : kInf, streams.next_event(now, comm_rate, ready));
    if (!(dt < kInf)) break;  // unreachable: every bucket follows some step
    dt = std::max(dt, 0.0);
    now += dt;
    if (computing) comp_rem -= dt * comp_rate;
    done += streams.advance(now, dt, comm_rate);
  }
  for (const auto& b : out.buckets) out.comm_end_s = std::max(out.comm_end_s, b.end_s);
  out.backward_end_s = L ? out.step_end_s.back() : 0;
  out.copies_end_s = std::max({out.backward_end_s, out.comm_end_s, copies ? out.copy_end_s.back() : 0.0});
  return out;
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
  StreamSet streams(stream, lat, bw, out);
  double now = 0;
  size_t done = 0;
  while (done < n) {
    streams.start(now, ready);
    const double dt = std::max(streams.next_event(now, 1.0, ready), 0.0);
    now += dt;
    done += streams.advance(now, dt, 1.0);
  }
  return out;
}

namespace {
// A packing copy reads and writes each byte once.
constexpr double kPackPasses = 2.0;

// Moving `bytes` (reads and writes together) at the device's effective memory bandwidth.
double memory_time_s(const Cluster& cluster, double bytes) {
  return bytes / cluster.device.memory_Bps();
}
}  // namespace

double pack_time_s(const Cluster& cluster, int64_t bytes) {
  return memory_time_s(cluster, kPackPasses * double(bytes));
}

double copy_in_backward_s(const Cluster& cluster, int64_t elems) {
  return pack_time_s(cluster, elems * bytes_per_element(Precision::FP32));
}

double cast_time_s(const Cluster& cluster, int64_t elems, Precision transfer) {
  if (transfer == Precision::FP32) return 0;
  return memory_time_s(cluster, double(elems) * (bytes_per_element(Precision::FP32) + bytes_per_element(transfer)));
}

double hook_division_s(const Cluster& cluster, int64_t elems) {
  return memory_time_s(cluster, double(elems) * 2 * bytes_per_element(Precision::FP16));
}

CommCopies comm_copies_s(const Cluster& cluster, int64_t elems, Precision transfer, bool pack,
                         std::optional<PackOn> cast, int gpus) {
  CommCopies c;
  if (gpus < 2) return c;  // no allreduce: nothing to fill, empty or cast
  const double copy_s = pack ? pack_time_s(cluster, elems * bytes_per_element(transfer)) : 0;
  const double cast_s = cast ? cast_time_s(cluster, elems, transfer) : 0;
  c.before_s = copy_s + (cast == PackOn::Comm ? cast_s : 0);  // on compute the cast is in backward
  c.after_s = copy_s + cast_s;
  return c;
}

std::vector<double> copy_back_s(const Model& model, const Cluster& cluster, const Plan& plan) {
  std::vector<double> s;
  for (const auto& b : plan.buckets)
    s.push_back(b.pack && plan.pack_on == PackOn::Compute && plan.gpus > 1
                    ? copy_in_backward_s(cluster, bucket_elements(plan, model, b)) : 0.0);
  return s;
}

std::vector<double> copies_back(double backward_end_s, const std::vector<BucketTiming>& buckets,
                                const std::vector<double>& copy_s) {
  std::vector<double> end;
  double at = backward_end_s;
  for (size_t k = 0; k < buckets.size(); ++k) end.push_back(at = std::max(at, buckets[k].end_s) + copy_s[k]);
  return end;
}

double next_tick(double t, double cycle_s) {
  if (!(cycle_s > 0)) return t;
  // A bucket ready within a rounding error of a tick goes at that tick.
  return std::ceil(t / cycle_s * (1 - 1e-12)) * cycle_s;
}

BucketTerms bucket_terms(const Cluster& cluster, const CollectiveModel& coll, double last_ready_s, int64_t elems,
                         std::string_view algorithm, Precision transfer, bool pack, std::optional<PackOn> cast) {
  BucketTerms t;
  t.bytes = elems * bytes_per_element(transfer);
  const CommCopies copies = comm_copies_s(cluster, elems, transfer, pack, cast, coll.gpus());
  t.ready_s = last_ready_s;
  if (coll.gpus() > 1) {
    t.choice = coll.cost(algorithm, elems, transfer);
    t.latency_s = t.choice.launch_s + t.choice.cost.latency_s + t.choice.cost.reduce_s + copies.before_s +
                  copies.after_s;
    t.bandwidth_s = t.choice.cost.bandwidth_s;
    t.copy_in_s = copies.before_s;
    t.copy_out_s = copies.after_s;
  }
  return t;
}

Report predict(const Model& model, const Cluster& cluster, const Plan& plan, const CollectiveModel& coll,
               const ComputeModel& compute, const TrainingGoal& goal, bool with_timeline) {
  if (coll.gpus() != plan.gpus)
    throw InputError("plan is for " + std::to_string(plan.gpus) + " GPUs, the prediction asks for " +
                     std::to_string(coll.gpus()));
  check_goal(goal, double(plan.gpus) * plan.batch_per_gpu);
  check_accumulation(plan.accumulate);
  check_step_overhead(plan.step_overhead_s);
  Report r;
  r.source = "predicted";
  r.model = model.name;
  r.cluster = cluster.name;
  r.gpus = plan.gpus;
  r.batch_per_gpu = plan.batch_per_gpu;
  r.compute = plan.compute;
  r.cast = plan.cast;
  // The step on the slowest GPU's clock (compute_variation): its forward and backward take
  // `slowest` times the mean GPU's, and the allreduces wait for its gradients. The report
  // takes that stretch apart below as the wait for the slowest GPU.
  const double slowest = slowest_gpu_factor(cluster, plan.gpus);
  r.forward_s = compute.forward_s();
  r.backward_s = compute.backward_s() * slowest;
  // Figures per micro-batch: the optimizer step is shared by the plan's accumulation.
  const int steps = plan.accumulate.steps;
  const double optimizer_step_s = compute.optimizer_s(plan.optimizer);
  r.optimizer_s = optimizer_step_s / steps;

  // The backward steps, with the copies into the buckets where backward makes them.
  std::vector<double> steps_s = backward_steps_s(model, compute, cluster, plan);
  if (plan.pack_on == PackOn::Compute || plan.cast == PackOn::Compute) {
    const std::vector<double> layers_s = backward_steps_s(compute);
    r.backward_copies_s = std::max(0.0, std::accumulate(steps_s.begin(), steps_s.end(), 0.0) -
                                            std::accumulate(layers_s.begin(), layers_s.end(), 0.0));
  }
  for (double& x : steps_s) x *= slowest;
  const auto ready_pos = gradient_ready_times(model, steps_s);
  const auto ready_step = gradient_ready_steps(model);
  const ProcessorSharing sharing = cluster.sharing(plan.gpus);
  const bool shared = sharing.any();
  std::vector<double> ready, lat, bw;
  std::vector<int> stream;
  std::vector<SharedBucket> shared_buckets;
  for (size_t i = 0; i < plan.buckets.size(); ++i) {
    const auto& b = plan.buckets[i];
    double last_ready = 0;
    int after_step = 0;
    for (int pos = b.begin; pos < b.end; ++pos) {
      last_ready = std::max(last_ready, ready_pos[pos]);
      after_step = std::max(after_step, ready_step[pos]);
    }
    BucketTerms t = bucket_terms(cluster, coll, last_ready, bucket_elements(plan, model, b), b.algorithm, b.transfer,
                                 b.pack && plan.pack_on == PackOn::Comm, plan.cast);
    t.ready_s = next_tick(t.ready_s, plan.cycle_s);
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
    br.variant = CollectiveModel::variant_name(t.choice);
    br.cost = t.choice.cost;
    br.launch_s = t.choice.launch_s;
    br.copy_in_s = t.copy_in_s;
    br.copy_out_s = t.copy_out_s;
    ready.push_back(t.ready_s);
    lat.push_back(t.latency_s);
    bw.push_back(t.bandwidth_s);
    stream.push_back(b.stream);
    // Under sharing the steps stretch: the tick is taken on the stretched ready time.
    shared_buckets.push_back({after_step, t.latency_s, t.bandwidth_s, b.stream});
    r.buckets.push_back(br);
  }
  // Backward steps' end times (backward order): stretched when communication shares the
  // processor, the compute model's otherwise.
  std::vector<double> step_end = steps_s;
  std::vector<BucketTiming> timing;
  // The copies back after backward (PackOn::Compute), on more than one GPU.
  const std::vector<double> copy_s = copy_back_s(model, cluster, plan);
  const bool copies = std::any_of(copy_s.begin(), copy_s.end(), [](double s) { return s > 0; });
  std::vector<double> copy_end;
  if (shared) {
    SharedTiming st = schedule_shared(step_end, shared_buckets, sharing, plan.cycle_s,
                                      copies ? copy_s : std::vector<double>{});
    timing = std::move(st.buckets);
    step_end = std::move(st.step_end_s);
    copy_end = std::move(st.copy_end_s);
    r.backward_s = st.backward_end_s;
  } else {
    timing = schedule_buckets(ready, lat, bw, stream);
    for (size_t k = 1; k < step_end.size(); ++k) step_end[k] += step_end[k - 1];
    // With the copies and casts made in backward.
    if ((plan.pack_on == PackOn::Compute || plan.cast == PackOn::Compute) && !step_end.empty())
      r.backward_s = step_end.back();
    if (copies) copy_end = copies_back(r.backward_s, timing, copy_s);
  }
  for (size_t i = 0; i < timing.size(); ++i) {
    r.buckets[i].ready_s = timing[i].ready_s;
    r.buckets[i].start_s = timing[i].start_s;
    r.buckets[i].end_s = timing[i].end_s;
  }
  sum_buckets(r);
  // The buckets' times are the allreducing micro-batch's. Under no_sync the other
  // steps - 1 micro-batches run backward alone and expose nothing.
  const double synced_end_s = std::max(r.backward_s, r.comm_end_s);
  // What the copies back add after the last allreduce and backward: exposed, as the
  // wait for the allreduces is (the optimizer needs the gradients in place).
  const double synced_copy_back_s = copy_end.empty() ? 0 : std::max(0.0, copy_end.back() - synced_end_s);
  r.copy_back_s = synced_copy_back_s;
  r.exposed_comm_s = std::max(0.0, r.comm_end_s - r.backward_s) + r.copy_back_s;
  if (plan.accumulate.no_sync) {
    r.backward_s = ((steps - 1) * compute.backward_s() * slowest + r.backward_s) / steps;
    r.exposed_comm_s /= steps;
    r.copy_back_s /= steps;
    r.backward_copies_s /= steps;
    r.comm_busy_s /= steps;
  }
  // The plan's fixed cost per step, paid on more than one GPU only, after the optimizer.
  r.step_overhead_s = plan.gpus > 1 ? plan.step_overhead_s : 0;
  r.compute_scale = cluster.compute_scale;
  // The wait for the slowest GPU: what its forward and backward take beyond the mean GPU's.
  // The allreduces were timed on its clock, so where they queue, its late gradients join
  // the queue and part of the wait hides in the exposed communication's place. Per
  // micro-batch: under no_sync the whole accumulation is on that clock.
  r.variation_wait_s = (slowest - 1) * (compute.forward_s() + compute.backward_s());
  const double late_backward_s = (slowest - 1) * compute.backward_s();
  r.backward_s -= late_backward_s;  // the mean GPU's
  double busy = r.forward_s + (plan.accumulate.no_sync ? r.backward_s + r.exposed_comm_s
                                                       : synced_end_s - late_backward_s + r.copy_back_s) +
                r.optimizer_s + r.step_overhead_s + r.variation_wait_s;
  r.data_wait_s = compute.data_wait_s(busy);
  r.iteration_s = busy + r.data_wait_s;
  const double single_busy = compute.single_gpu_busy_s(plan.optimizer, steps);
  r.single_gpu_iteration_s = single_busy + compute.data_wait_s(single_busy);
  finish_report(r, goal, sequence_length(model));

  if (with_timeline) {
    auto& ev = r.timeline.events;
    double t = r.data_wait_s;
    if (r.data_wait_s > 0) ev.push_back({0, "compute", trace_name::kDataWait, "data", 0, r.data_wait_s, 0});
    // The slowest GPU's step (its clock: `slowest`).
    for (size_t l = 0; l < model.layers.size(); ++l) {
      double d = compute.layers()[l].fwd_s * slowest;
      ev.push_back({0, "compute", trace_name::forward(model.layers[l].name), "forward", t, d, 0});
      t += d;
    }
    const double bwd_start = t;
    for (size_t k = 0; k < step_end.size(); ++k) {
      double begin = k ? step_end[k - 1] : 0;
      ev.push_back({0, "compute", trace_name::backward(model.layers[model.layers.size() - 1 - k].name), "backward",
                    bwd_start + begin, step_end[k] - begin, 0});
    }
    for (const auto& b : r.buckets)
      ev.push_back({0, "comm" + std::to_string(b.stream), trace_name::bucket(b.index, b.algorithm), "allreduce",
                    bwd_start + b.start_s, b.end_s - b.start_s, b.bytes});
    for (size_t k = 0; k < copy_end.size(); ++k)
      if (copy_s[k] > 0)
        ev.push_back({0, "compute", trace_name::copy_back(r.buckets[k].index), "copy",
                      bwd_start + copy_end[k] - copy_s[k], copy_s[k], 0});
    // The timeline is the micro-batch that ends an accumulation: its allreduces and copies
    // back, then the whole optimizer step.
    const double optimizer_start = bwd_start + synced_end_s + synced_copy_back_s;
    ev.push_back({0, "compute", trace_name::kOptimizer, "optimizer", optimizer_start, optimizer_step_s, 0});
    if (r.step_overhead_s > 0)
      ev.push_back({0, "compute", trace_name::kStepOverhead, "overhead", optimizer_start + optimizer_step_s,
                    r.step_overhead_s, 0});
  }
  return r;
}

}  // namespace fuseplan
