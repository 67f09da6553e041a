// The steady pipeline of partitioned, prioritised, reduce-scattered schedules
// (pipeline.hpp): message costs, the event loop over successive iterations, the lower
// bound and the memory per scheme.
#include "fuseplan/costmodel/pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <queue>
#include <tuple>

#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan {

const char* exchange_name(Exchange e) { return e == Exchange::Allreduce ? "allreduce" : "rs+ag"; }
const char* order_name(Order o) { return o == Order::Fifo ? "fifo" : "priority"; }
const char* gate_name(Gate g) { return g == Gate::Barrier ? "barrier" : "per-layer"; }
const char* message_kind_name(MessageTiming::Kind k) {
  switch (k) {
    case MessageTiming::Allreduce: return "allreduce";
    case MessageTiming::ReduceScatter: return "reduce-scatter";
    case MessageTiming::Allgather: return "all-gather";
    case MessageTiming::Regather: return "re-gather";
  }
  return "?";
}

MessageTiming::Kind message_kind(int slot, Exchange e) {
  if (slot == 2) return MessageTiming::Regather;
  if (slot == 1) return MessageTiming::Allgather;
  return e == Exchange::ReduceScatterAllgather ? MessageTiming::ReduceScatter : MessageTiming::Allreduce;
}

MemoryEstimate schedule_memory(const Model& m, int gpus, int batch_per_gpu, Precision compute, const PipelineSchedule& s) {
  MemoryEstimate e = estimate_memory(m, batch_per_gpu, compute, s.transfer);
  if (!s.shard_optimizer || gpus <= 1) return e;
  int64_t largest = 0, prev = 0;
  for (int64_t b : s.bounds) largest = std::max(largest, b - std::exchange(prev, b));
  const double params = double(m.param_count()), p = gpus;
  e.gradients = (params / p + double(largest)) * bytes_per_element(compute);
  e.fusion_buffers = double(largest) * bytes_per_element(s.transfer);
  e.optimizer = params * (4 + 4) / p;
  if (s.reshard) e.weights = (params / p + 2 * double(largest)) * bytes_per_element(compute);  // a unit, and the next prefetched
  return e;
}

PipelineModel::PipelineModel(const Model& m, const Cluster& c, int gpus, int batch_per_gpu, Precision compute,
                             CollectiveOptions coll)
    : model_(m), cluster_(c), gpus_(gpus), batch_(batch_per_gpu), precision_(compute), coll_options_(coll), coll_(c, gpus, coll),
      compute_(m, c, batch_per_gpu, compute) {
  const int T = static_cast<int>(m.tensors.size());
  offsets_.assign(1, 0);
  for (int b = 0; b < T; ++b) {
    const auto& t = m.tensors[m.tensor_at_backward(b)];
    offsets_.push_back(offsets_.back() + t.numel);
    pos_layer_.push_back(t.layer);
  }
  pos_step_ = m.ready_steps();
  const double total = double(m.param_count());
  update_s_.assign(m.layers.size(), 0);
  for (const auto& t : m.tensors)
    if (total > 0) update_s_[size_t(t.layer)] += compute_.optimizer_s() * double(t.numel) / total;
  rsag_algorithm_ = coll_.library() == "nccl" ? "nccl_ring" : "ring";
}

std::vector<int64_t> PipelineModel::bounds_from_starts(const std::vector<int>& starts) const {
  std::vector<int64_t> b;
  for (size_t i = 1; i < starts.size(); ++i) b.push_back(offsets_[size_t(starts[i])]);
  b.push_back(offsets_.back());
  return b;
}

namespace {
// The size at which an algorithm's bandwidth part per element is read: large enough that
// every round's slowest link is the one with the steeper slope (AffineTail).
constexpr int64_t kLinkDemandElems = int64_t(1) << 28;
}  // namespace

PipelineModel::Cost PipelineModel::message_cost(MessageTiming::Kind k, int64_t elems, const std::string& algorithm,
                                                Precision transfer) const {
  if (gpus_ <= 1) return {};
  auto& cache = costs_[algorithm];
  const int64_t key = elems * 16 + int64_t(k) * 4 + int64_t(transfer);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  // The closed form's total, and its split into what the links carry (shared by messages
  // in flight) and the rest. In the closed form a round costs its slowest link, alpha
  // included: for small chunks that is a high-alpha link while the NIC still carries the
  // chunk. So the shared part is at least the algorithm's bandwidth per element at a
  // large size (the busiest link's demand) times the elements, the rest latency.
  auto raw = [&](int64_t n, std::string_view* chosen) {
    Cost c;
    if (k == MessageTiming::Allreduce) {
      const BucketTerms t = bucket_terms(cluster_, coll_, 0, n, algorithm, transfer, false);
      if (chosen) *chosen = t.choice.algorithm->name;
      c = {t.latency_s, t.bandwidth_s};
    } else {
      // A ring-family allreduce is a reduce-scatter then an all-gather of equal halves.
      const CollectiveChoice ar = coll_.cost(rsag_algorithm_, n, transfer);
      c = {ar.launch_s + ar.cost.latency_s / 2, ar.cost.bandwidth_s / 2};
      if (k == MessageTiming::ReduceScatter) c.latency_s += ar.cost.reduce_s;
    }
    return c;
  };
  std::string_view chosen = rsag_algorithm_;
  Cost c = raw(elems, &chosen);
  const double total = c.latency_s + c.bandwidth_s;
  auto per_elem_at = [&](int64_t big) {
    if (k == MessageTiming::Allreduce) return bucket_terms(cluster_, coll_, 0, big, chosen, transfer, false).bandwidth_s / double(big);
    return raw(big, nullptr).bandwidth_s / double(big);
  };
  double per_elem = 0;
  if (elems > kLinkDemandElems) {
    per_elem = per_elem_at(elems);
  } else {  // the same for every message of this algorithm, kind and precision
    auto& known = demand_[std::string(chosen)];
    const int64_t dkey = int64_t(k) * 4 + int64_t(transfer);
    auto it = known.find(dkey);
    per_elem = it != known.end() ? it->second : (known[dkey] = per_elem_at(kLinkDemandElems));
  }
  c.bandwidth_s = std::min(total, std::max(c.bandwidth_s, per_elem * double(elems)));
  c.latency_s = total - c.bandwidth_s;
  return cache[key] = c;
}

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr int kMaxIterations = 40;
constexpr int kMeanOver = 8;  // periods averaged when the pipeline does not settle

bool at_or_before(double t, double now) { return t <= now + 1e-12 * std::max(1.0, now); }
bool same_period(double a, double b) { return std::abs(a - b) <= 1e-9 * std::max({1e-9, std::abs(a), std::abs(b)}); }

struct Partition : PipelineModel::PartitionInfo {
  PipelineModel::Cost first, second;  // allreduce or reduce-scatter; all-gather
};

// Successive iterations of one schedule: a compute stream and a channel of `credit` slots.
class Pipeline {
 public:
  Pipeline(const PipelineModel& pm, const PipelineSchedule& s, std::vector<Partition> parts,
           std::vector<std::vector<int>> layer_parts, const std::vector<double>& update_s)
      : pm_(pm), s_(s), parts_(std::move(parts)), layer_parts_(std::move(layer_parts)), update_s_(update_s),
        bwd_s_(pm.backward_steps(s)) {
    L_ = pm.compute().layers().size();
    P_ = parts_.size();
    sigma_ = pm.cluster().sharing(pm.gpus());
    rsag_ = s.exchange == Exchange::ReduceScatterAllgather;
    step_parts_.resize(L_);
    for (size_t i = 0; i < P_; ++i) step_parts_.at(size_t(parts_[i].ready_step)).push_back(i);
    forward_last_.resize(L_);
    if (s.reshard)
      for (size_t i = 0; i < P_; ++i) forward_last_.at(size_t(parts_[i].last_layer)).push_back(i);
    for (double u : update_s) total_update_s_ += u;
    for (const auto& p : parts_) copies_back_ = copies_back_ || p.copy_back_s > 0;
    grow(8);  // most schedules settle within a few iterations; grown as needed
  }

  PipelineResult run(bool with_messages);

 private:
  // Room for iterations [0, iters): the per-iteration arrays are iteration-major, so
  // growing keeps what is there.
  void grow(size_t iters) {
    if (iters <= iterations_held_) return;
    ready_.resize(iters * P_ * kSlots, kInf);
    start_.resize(iters * P_ * kSlots, kInf);
    end_.resize(iters * P_ * kSlots, kInf);
    done_.resize(iters, 0);
    reduced_.resize(iters, 0);
    last_end_.resize(iters, 0);
    last_reduced_.resize(iters, 0);
    fwd_start_.resize(iters * L_, 0);
    // Per iteration and layer: deliveries still to come, and the last one's end.
    owed_.resize(iters * L_, 0);
    for (size_t k = iterations_held_; k < iters; ++k)
      for (size_t l = 0; l < L_; ++l) owed_[k * L_ + l] = int(layer_parts_[l].size());
    delivered_.resize(iters * L_, 0);
    regather_owed_.resize(iters * L_, 0);
    for (size_t k = iterations_held_; k < iters; ++k)
      for (size_t l = 0; l < L_; ++l) regather_owed_[k * L_ + l] = s_.reshard ? int(layer_parts_[l].size()) : 0;
    regathered_.resize(iters * L_, 0);
    bwd_start_.resize(iters, 0);
    bwd_end_.resize(iters, 0);
    iterations_held_ = iters;
  }
  size_t iterations_held_ = 0;

  enum class Op { Forward, Backward, CopyBack, Step };
  // A message's slot: its partition's reduction, all-gather, or re-gather (reshard), as
  // message_kind numbers them.
  enum Slot : size_t { kReduce = 0, kGather = 1, kRegather = 2, kSlots = 3 };
  size_t id(int k, size_t part, Slot slot) const { return (size_t(k) * P_ + part) * kSlots + slot; }
  int iteration_of(size_t msg) const { return int(msg / kSlots / P_); }
  size_t part_of(size_t msg) const { return (msg / kSlots) % P_; }
  static Slot slot_of(size_t msg) { return Slot(msg % kSlots); }
  int messages_per_iteration() const { return int(P_) * (rsag_ ? (s_.reshard ? 3 : 2) : 1); }
  const PipelineModel::Cost& cost_of(size_t msg) const {
    return slot_of(msg) == kReduce ? parts_[part_of(msg)].first : parts_[part_of(msg)].second;
  }
  // Update placement: the step is the whole optimizer, or each GPU's shard of it.
  double step_s() const { return s_.shard_optimizer ? total_update_s_ / pm_.gpus() : total_update_s_; }

  double gate() const;
  double duration() const;
  void finish_op(double now);
  void release(size_t msg, double at) {
    ready_[msg] = at;
    future_.push({at, msg});
  }
  void start_messages(double now);
  void message_ended(size_t msg, double now);
  PipelineModel::MessageKey key(size_t msg) const {
    return PipelineModel::message_key(s_.order, ready_[msg], iteration_of(msg), message_kind(int(slot_of(msg)), s_.exchange),
                                      parts_[part_of(msg)], part_of(msg));
  }

  const PipelineModel& pm_;
  const PipelineSchedule& s_;
  std::vector<Partition> parts_;
  std::vector<std::vector<int>> layer_parts_;
  const std::vector<double>& update_s_;
  std::vector<double> bwd_s_;  // backward order, with the copies made in backward
  double total_update_s_ = 0;
  size_t L_ = 0, P_ = 0;
  bool rsag_ = false;
  bool copies_back_ = false;  // some partition is copied back after backward (Op::CopyBack)
  std::vector<std::vector<size_t>> step_parts_;
  std::vector<double> ready_, start_, end_;
  std::vector<int> done_, reduced_;            // per iteration: messages ended, reductions ended
  std::vector<double> last_end_, last_reduced_;
  std::vector<double> fwd_start_, bwd_start_, bwd_end_, iteration_start_;
  std::vector<int> owed_, regather_owed_;
  std::vector<double> delivered_, regathered_;
  std::vector<std::vector<size_t>> forward_last_;  // per layer: resharded partitions whose forward it ends

  // The compute stream: iteration k_, op_, its index_ (layer, or backward step).
  int k_ = 0;
  Op op_ = Op::Forward;
  size_t index_ = 0;
  bool busy_ = false;
  double launched_ = 0;   // the latest ready time of a partition released so far
  double work_left_ = 0;  // the running op's work, in seconds at full speed
  // Processor sharing (Cluster::sharing): while k messages are in flight the compute stream
  // runs at 1 / (1 + sigma.compute k), and messages at 1 / (1 + sigma.comm) while it runs.
  ProcessorSharing sigma_;

  // The channel.
  struct InFlight {
    size_t msg;
    bool in_bw;
    double rem;
  };
  std::vector<InFlight> flight_;
  using Future = std::pair<double, size_t>;
  std::priority_queue<Future, std::vector<Future>, std::greater<>> future_;  // released, by ready time
  std::vector<size_t> ready_heap_;  // ready, not started
};

double Pipeline::gate() const {
  const size_t k = size_t(k_);
  if (op_ == Op::Step) {
    // Sharded: every reduce-scatter ended (the all-gathers follow the step). Else every
    // delivery: the update needs the reduced gradients.
    if (s_.shard_optimizer) return reduced_[k] == int(P_) ? last_reduced_[k] : kInf;
    return done_[k] == messages_per_iteration() ? last_end_[k] : kInf;
  }
  if (op_ == Op::CopyBack) return end_[id(k_, index_, kReduce)];  // infinity until its allreduce ends
  if (op_ == Op::Backward) {
    if (!s_.reshard) return 0;  // a resharded unit's layer waits for its re-gather
    const size_t at = k * L_ + (L_ - 1 - index_);
    return regather_owed_[at] == 0 ? regathered_[at] : kInf;
  }
  if (op_ != Op::Forward || k_ == 0) return 0;
  const int prev = k_ - 1;
  if (s_.gate == Gate::Barrier) {
    if (index_ != 0) return 0;
    return done_[size_t(prev)] == messages_per_iteration() ? last_end_[size_t(prev)] : kInf;
  }
  const size_t at = size_t(prev) * L_ + index_;
  return owed_[at] == 0 ? delivered_[at] : kInf;
}

double Pipeline::duration() const {
  const auto& layers = pm_.compute().layers();
  switch (op_) {
    case Op::Forward: return layers[index_].fwd_s + (s_.step_update ? 0 : update_s_[index_]);
    case Op::Backward: return bwd_s_[index_];
    case Op::CopyBack: return parts_[index_].copy_back_s;
    case Op::Step: return step_s();
  }
  return 0;
}

void Pipeline::finish_op(double now) {
  const size_t k = size_t(k_);
  switch (op_) {
    case Op::Forward:
      for (size_t i : forward_last_[index_]) release(id(k_, i, kRegather), now);  // the unit's forward is done
      if (++index_ == L_) {
        op_ = Op::Backward;
        index_ = 0;
        bwd_start_[k] = now;
      }
      return;
    case Op::Backward:
      // Partitions are launched in backward order (DDP's and Horovod's rule).
      for (size_t i : step_parts_[index_]) {
        launched_ = std::max(launched_, now);
        release(id(k_, i, kReduce), launched_);
      }
      if (++index_ < L_) return;
      bwd_end_[k] = now;
      index_ = 0;
      if (copies_back_) {
        op_ = Op::CopyBack;
        return;
      }
      if (s_.step_update) {
        op_ = Op::Step;
        return;
      }
      break;
    case Op::CopyBack:
      if (++index_ < P_) return;
      index_ = 0;
      if (s_.step_update) {
        op_ = Op::Step;
        return;
      }
      break;
    case Op::Step:
      if (s_.shard_optimizer)
        for (size_t i = 0; i < P_; ++i) release(id(k_, i, kGather), now);
      break;
  }
  op_ = Op::Forward;
  ++k_;
  if (size_t(k_) >= iterations_held_) grow(2 * iterations_held_);
}

void Pipeline::message_ended(size_t msg, double now) {
  end_[msg] = now;
  const size_t k = size_t(iteration_of(msg));
  const Slot slot = slot_of(msg);
  const auto& layers = parts_[part_of(msg)].layers;
  if (slot == (rsag_ ? kGather : kReduce))  // the delivery of its partition's layers
    for (int layer : layers) {
      --owed_[k * L_ + size_t(layer)];
      delivered_[k * L_ + size_t(layer)] = std::max(delivered_[k * L_ + size_t(layer)], now);
    }
  if (slot == kRegather)
    for (int layer : layers) {
      --regather_owed_[k * L_ + size_t(layer)];
      regathered_[k * L_ + size_t(layer)] = std::max(regathered_[k * L_ + size_t(layer)], now);
    }
  ++done_[k];
  last_end_[k] = std::max(last_end_[k], now);
  if (slot == kReduce) {
    ++reduced_[k];
    last_reduced_[k] = std::max(last_reduced_[k], now);
    if (rsag_ && !s_.shard_optimizer) release(msg + kGather, now);
  }
}

void Pipeline::start_messages(double now) {
  auto later = [this](size_t a, size_t b) { return key(a) > key(b); };
  while (!future_.empty() && at_or_before(future_.top().first, now)) {
    ready_heap_.push_back(future_.top().second);
    std::push_heap(ready_heap_.begin(), ready_heap_.end(), later);
    future_.pop();
  }
  while (int(flight_.size()) < s_.credit && !ready_heap_.empty()) {
    std::pop_heap(ready_heap_.begin(), ready_heap_.end(), later);
    const size_t msg = ready_heap_.back();
    ready_heap_.pop_back();
    start_[msg] = now;
    flight_.push_back({msg, false, cost_of(msg).latency_s});
  }
}

PipelineResult Pipeline::run(bool with_messages) {
  double now = 0;
  int settled_at = -1;  // the iteration whose start closes the third equal period
  for (;;) {
    if (!busy_) {
      const double g = gate();
      if (at_or_before(g, now)) {
        if (op_ == Op::Forward) {
          fwd_start_[size_t(k_) * L_ + index_] = now;
          if (index_ == 0) {
            iteration_start_.push_back(now);
            const auto& s = iteration_start_;
            const size_t n = s.size();
            if (n >= 4 && same_period(s[n - 1] - s[n - 2], s[n - 2] - s[n - 3]) &&
                same_period(s[n - 2] - s[n - 3], s[n - 3] - s[n - 4])) {
              settled_at = k_;
              break;
            }
            // Behind a barrier every iteration starts as the first did (no message in
            // flight or waiting, the compute stream idle), so it repeats the first one's
            // period: without the messages asked for, one iteration tells it.
            if (n == 2 && !with_messages && s_.gate == Gate::Barrier) {
              settled_at = k_;
              break;
            }
            if (k_ == kMaxIterations) break;
          }
        }
        busy_ = true;
        work_left_ = duration();
      }
    }
    start_messages(now);
    int in_bw = 0;
    for (const auto& f : flight_) in_bw += f.in_bw;
    const double compute_rate = 1 / (1 + sigma_.compute * double(flight_.size()));
    const double comm_rate = busy_ ? 1 / (1 + sigma_.comm) : 1.0;
    double dt = kInf;
    if (busy_) dt = work_left_ / compute_rate;
    else if (const double g = gate(); g < kInf) dt = g - now;
    if (!future_.empty()) dt = std::min(dt, future_.top().first - now);
    for (const auto& f : flight_) dt = std::min(dt, (f.in_bw ? f.rem * in_bw : f.rem) / comm_rate);
    if (!(dt < kInf)) throw std::logic_error("pipeline: nothing can progress (a gate waits for no message)");
    dt = std::max(dt, 0.0);
    now += dt;
    if (busy_) work_left_ -= dt * compute_rate;
    for (auto f = flight_.begin(); f != flight_.end();) {
      f->rem -= (f->in_bw ? dt / in_bw : dt) * comm_rate;
      if (!f->in_bw && f->rem <= 1e-12 * std::max(1.0, now)) {
        f->in_bw = true;
        f->rem = cost_of(f->msg).bandwidth_s;
      }
      if (f->in_bw && f->rem <= 1e-12 * std::max(1.0, now)) {
        message_ended(f->msg, now);
        f = flight_.erase(f);
      } else {
        ++f;
      }
    }
    if (busy_ && work_left_ <= 1e-12 * std::max(1.0, now)) {
      busy_ = false;
      finish_op(now);
    }
  }

  PipelineResult r;
  const auto& s = iteration_start_;
  const size_t n = s.size();
  r.converged = settled_at >= 0;
  r.iterations_run = int(n);
  const double period = r.converged ? s[n - 1] - s[n - 2] : (s[n - 1] - s[n - 1 - kMeanOver]) / kMeanOver;
  const int j = std::max(0, int(n) - 3);  // the steady iteration: every message of it has ended by s[n - 1]
  const double t0 = s[size_t(j)];
  const auto& layers = pm_.compute().layers();
  for (const auto& l : layers) r.compute_s += l.fwd_s + l.bwd_s;
  r.compute_s += s_.step_update ? step_s() : total_update_s_;
  const int gathers = rsag_ ? (s_.reshard ? 2 : 1) : 0;
  for (const auto& p : parts_)
    r.comm_busy_s += p.first.latency_s + p.first.bandwidth_s + gathers * (p.second.latency_s + p.second.bandwidth_s);
  r.exposed_s = std::max(0.0, period - r.compute_s);
  r.data_wait_s = pm_.compute().data_wait_s(period);
  r.iteration_s = period + r.data_wait_s;
  r.backward_start_s = bwd_start_[size_t(j)] - t0;
  r.backward_end_s = bwd_end_[size_t(j)] - t0;
  if (with_messages) {
    for (size_t l = 0; l < L_; ++l) r.forward_start_s.push_back(fwd_start_[size_t(j) * L_ + l] - t0);
    for (size_t i = 0; i < P_; ++i)
      for (Slot slot : {kReduce, kGather, kRegather}) {
        if ((slot == kGather && !rsag_) || (slot == kRegather && !s_.reshard)) continue;
        const size_t m = id(j, i, slot);
        MessageTiming t;
        t.partition = int(i);
        t.kind = message_kind(int(slot), s_.exchange);
        t.elems = parts_[i].elems;
        t.ready_s = ready_[m] - t0;
        t.start_s = start_[m] - t0;
        t.end_s = end_[m] - t0;
        r.messages.push_back(t);
      }
  }
  return r;
}

}  // namespace

PipelineModel::MessageKey PipelineModel::message_key(Order order, double ready_s, int iteration, MessageTiming::Kind kind,
                                                     const PartitionInfo& p, size_t partition) {
  const int rank = kind == MessageTiming::Regather ? 0 : kind == MessageTiming::Allgather ? 1 : 2;
  if (order == Order::Fifo) return {ready_s, double(iteration), rank, partition};
  const double urgency = kind == MessageTiming::Regather ? -1e9 - double(p.last_layer) : double(p.first_layer);
  return {double(iteration), urgency, rank, partition};
}

std::vector<PipelineModel::PartitionInfo> PipelineModel::partitions(const PipelineSchedule& s) const {
  const int64_t total = elements();
  if (s.bounds.empty() || s.bounds.back() != total)
    throw InputError(field("schedule.bounds") + ": the last partition must end at " + std::to_string(total) +
                     " elements (every gradient once)");
  for (size_t i = 0; i < s.bounds.size(); ++i)
    if (s.bounds[i] <= (i ? s.bounds[i - 1] : 0))
      throw InputError(field("schedule.bounds") + "[" + std::to_string(i) + "]: partitions must be nonempty and in order");
  if (s.credit < 1) throw InputError(field("schedule.credit") + ": must be >= 1 message in flight");
  if (s.shard_optimizer && (s.exchange != Exchange::ReduceScatterAllgather || !s.step_update))
    throw InputError(field("schedule.shard_optimizer") +
                     ": needs the reduce-scatter + all-gather exchange and an optimizer step (step_update)");
  if (s.reshard && !s.shard_optimizer)
    throw InputError(field("schedule.reshard") + ": needs shard_optimizer (parameters sharded with their optimizer state)");
  std::vector<PartitionInfo> parts;
  int64_t begin = 0;
  for (int64_t end : s.bounds) {
    PartitionInfo p;
    p.begin = begin;
    p.elems = end - begin;
    const int first = int(std::upper_bound(offsets_.begin(), offsets_.end(), begin) - offsets_.begin()) - 1;
    const int last = int(std::upper_bound(offsets_.begin(), offsets_.end(), end - 1) - offsets_.begin()) - 1;
    p.first_layer = std::numeric_limits<int>::max();
    for (int pos = first; pos <= last; ++pos) {
      if (offsets_[size_t(pos) + 1] == offsets_[size_t(pos)]) continue;  // an empty tensor
      p.ready_step = std::max(p.ready_step, pos_step_[size_t(pos)]);
      const int layer = pos_layer_[size_t(pos)];
      p.first_layer = std::min(p.first_layer, layer);
      p.last_layer = std::max(p.last_layer, layer);
      if (std::find(p.layers.begin(), p.layers.end(), layer) == p.layers.end()) p.layers.push_back(layer);
    }
    // A fusion buffer's copies, as the predictor's (schedules do not cast), on the stream of
    // the partition's messages; the copy out after an allreduce only.
    const CommCopies copies =
        comm_copies_s(cluster_, p.elems, s.transfer, s.pack && s.pack_on == PackOn::Comm, std::nullopt, gpus_);
    p.copy_in_s = copies.before_s;
    if (s.exchange == Exchange::Allreduce) p.copy_out_s = copies.after_s;
    if (s.pack && s.pack_on == PackOn::Compute && s.exchange == Exchange::Allreduce && gpus_ > 1)
      p.copy_back_s = copy_in_backward_s(cluster_, p.elems);
    parts.push_back(std::move(p));
    begin = end;
  }
  return parts;
}

std::vector<double> PipelineModel::backward_steps(const PipelineSchedule& s) const {
  // Partitions tile every element, so a schedule that copies in backward copies every gradient.
  const bool in_backward = s.pack && s.pack_on == PackOn::Compute;
  return backward_steps_s(model_, compute_, cluster_, std::vector<bool>(model_.tensors.size(), in_backward));
}

PipelineResult PipelineModel::evaluate(const PipelineSchedule& s, bool with_messages) const {
  std::vector<Partition> parts;
  std::vector<std::vector<int>> layer_parts(model_.layers.size());
  const auto kind = s.exchange == Exchange::Allreduce ? MessageTiming::Allreduce : MessageTiming::ReduceScatter;
  for (auto& info : partitions(s)) {
    Partition p;
    static_cast<PartitionInfo&>(p) = std::move(info);
    for (int layer : p.layers) layer_parts[size_t(layer)].push_back(int(parts.size()));
    p.first = message_cost(kind, p.elems, s.algorithm, s.transfer);
    p.first.latency_s += p.copy_in_s + p.copy_out_s;
    if (kind == MessageTiming::ReduceScatter) p.second = message_cost(MessageTiming::Allgather, p.elems, s.algorithm, s.transfer);
    parts.push_back(std::move(p));
  }
  Pipeline pipe(*this, s, std::move(parts), std::move(layer_parts), update_s_);
  return pipe.run(with_messages);
}

PipelineModel::Bound PipelineModel::lower_bound(Precision transfer, const std::string& algorithm) const {
  Bound b;
  const auto& layers = compute_.layers();
  const size_t L = layers.size();
  double update = 0;
  for (double u : update_s_) update += u;
  double fwd = 0, bwd = 0;
  for (const auto& l : layers) fwd += l.fwd_s, bwd += l.bwd_s;
  // (a) Compute: a sharded optimizer leaves 1/p of the update on each GPU.
  b.compute_s = fwd + bwd + update / std::max(1, gpus_);
  // Per kind of message, its smallest latency part and bandwidth part per element over
  // sizes 2^(k/4) and every element; certified when, for every algorithm a message may
  // use, the latency part never falls and the bandwidth part per element never rises with
  // the size there (single-variant alpha-beta costs), so that the minima lie at the ends.
  const int64_t total = elements();
  std::vector<int64_t> sizes;  // 2^(k/4), then every element
  for (double x = 1; x < double(total); x *= std::pow(2.0, 0.25))
    if (sizes.empty() || int64_t(x) > sizes.back()) sizes.push_back(int64_t(x));
  sizes.push_back(total);
  struct Rate {
    double lat = kInf, per_elem = kInf;
  };
  // Over the algorithm a message uses: `auto` is the cheapest at each size, so its own
  // costs (certified where each automatic algorithm's cost is monotone and the grid shows
  // no dip between switches).
  auto rate_of = [&](MessageTiming::Kind k) {
    const std::string& name = k == MessageTiming::Allreduce ? algorithm : rsag_algorithm_;
    if (name == "auto") {
      for (const auto& a : algorithms())
        if (a.automatic && a.library == coll_.library() && !coll_.monotone(a.name)) b.certified = false;
    } else if (!coll_.monotone(name)) {
      b.certified = false;
    }
    Rate r;
    double prev_lat = -kInf, prev_per = kInf;
    for (int64_t n : sizes) {
      Cost c;
      try {
        c = message_cost(k, n, name, transfer);
      } catch (const InputError&) {
        break;  // not applicable to this rank layout
      }
      const double per = c.bandwidth_s / double(n);
      if (c.latency_s < prev_lat * (1 - 1e-12) || per > prev_per * (1 + 1e-12)) b.certified = false;
      prev_lat = c.latency_s;
      prev_per = per;
      r.lat = std::min(r.lat, c.latency_s);
      r.per_elem = std::min(r.per_elem, per);
    }
    return r;
  };
  const Rate ar = rate_of(MessageTiming::Allreduce), rs = rate_of(MessageTiming::ReduceScatter),
             ag = rate_of(MessageTiming::Allgather);
  // Delivering n elements: at least one latency and every element's bandwidth part
  // (shared links conserve the bandwidth work).
  auto deliver = [&](int64_t n) {
    return std::min(ar.lat + double(n) * ar.per_elem, rs.lat + ag.lat + double(n) * (rs.per_elem + ag.per_elem));
  };
  // (b) The first forward layer with parameters: its gradients are written by backward
  // step `step`; its next forward waits for all of them.
  for (size_t l = 0; l < L; ++l) {
    const Layer& layer = model_.layers[l];
    int64_t n = 0;
    for (int t = layer.first_tensor; t < layer.first_tensor + layer.tensor_count; ++t) n += model_.tensors[size_t(t)].numel;
    if (n == 0) continue;
    double fwd_from = 0, bwd_to = 0;
    for (size_t i = l; i < L; ++i) fwd_from += layers[i].fwd_s, bwd_to += layers[i].bwd_s;
    b.first_layer_s = fwd_from + bwd_to + (gpus_ > 1 ? deliver(n) : 0);
    break;
  }
  // (c) The channel carries every element once per iteration.
  if (gpus_ > 1) b.channel_s = double(total) * std::min(ar.per_elem, rs.per_elem + ag.per_elem);
  const double busy = std::max({b.compute_s, b.first_layer_s, b.channel_s});
  b.iteration_s = busy + compute_.data_wait_s(busy);
  return b;
}

}  // namespace fuseplan
