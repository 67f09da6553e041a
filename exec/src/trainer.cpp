#include "fuseplan/exec/trainer.hpp"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <thread>

#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan::exec {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int64_t steps_per_epoch(const Dataset& d, int64_t global_batch) { return d.size() / global_batch; }

// Dropout masks depend on (seed, rank, step) only, so a resumed run draws the same ones.
uint64_t dropout_seed(uint64_t seed, int rank, int64_t step) {
  uint64_t x = seed ^ 0x5deece66dull ^ (uint64_t(rank) << 40) ^ (uint64_t(step) * 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

OptimizerOptions schedule(const TrainOptions& o, const Dataset& train) {
  if (o.batch < 1) throw InputError(field("batch_per_gpu") + ": must be >= 1");
  if (o.global_batch() > train.size())
    throw InputError(field("batch_per_gpu") + ": " + std::to_string(o.batch) +
                     (o.ranks() > 1 ? " x " + std::to_string(o.ranks()) + " ranks" : "") + " is larger than the data set (" +
                     std::to_string(train.size()) + " samples)");
  if (!(o.epochs > 0 && o.epochs <= 1e6))
    throw InputError(field("train.epochs") + ": must be in (0, 1e+06] (got " + formatted(o.epochs, "%g") + ")");
  if (o.warmup_epochs < 0 || o.warmup_epochs > o.epochs) throw InputError(field("train.warmup_epochs") + ": must be in [0, " + field("train.epochs") + "]");
  if (o.label_smoothing < 0 || o.label_smoothing >= 1) throw InputError(field("train.label_smoothing") + ": must be in [0, 1)");
  OptimizerOptions s = o.optimizer;
  const double per = double(steps_per_epoch(train, o.global_batch()));
  s.total_steps = std::max<int64_t>(1, int64_t(std::ceil(o.epochs * per)));
  s.warmup_steps = int64_t(std::round(o.warmup_epochs * per));
  return s;
}

NetworkOptions network_options(const TrainOptions& o) {
  NetworkOptions n;
  n.precision = o.precision;
  n.seed = o.seed;
  n.host_reads_gradients = o.exchange && !o.exchange_on_device;
  n.fuse_relu = o.fuse_relu;
  n.graphs = o.graphs;
  return n;
}

// Checkpoint layout (little-endian, this machine's): magic, version, then the fields in
// the order below, then a CRC-32 of everything before it.
constexpr char kMagic[8] = {'F', 'P', 'C', 'K', 'P', 'T', '0', '2'};

class Writer {
 public:
  template <class T>
  void put(const T& v) {
    bytes_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void put_floats(std::span<const float> v) {
    put(int64_t(v.size()));
    bytes_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  void put_string(const std::string& s) {
    put(int64_t(s.size()));
    bytes_ += s;
  }
  std::string finish() {
    const uint32_t crc = uint32_t(crc32(0, reinterpret_cast<const Bytef*>(bytes_.data()), uInt(bytes_.size())));
    put(crc);
    return bytes_;
  }
  std::string bytes_;
};

class Reader {
 public:
  Reader(std::string bytes, std::string path) : bytes_(std::move(bytes)), path_(std::move(path)) {
    if (bytes_.size() < sizeof kMagic + 4 || std::memcmp(bytes_.data(), kMagic, sizeof kMagic) != 0)
      fail("not a fuseplan checkpoint");
    uint32_t stored;
    std::memcpy(&stored, bytes_.data() + bytes_.size() - 4, 4);
    if (uint32_t(crc32(0, reinterpret_cast<const Bytef*>(bytes_.data()), uInt(bytes_.size() - 4))) != stored)
      fail("corrupt (checksum mismatch)");
    at_ = sizeof kMagic;
    end_ = bytes_.size() - 4;
  }
  template <class T>
  T get() {
    T v;
    need(sizeof v);
    std::memcpy(&v, bytes_.data() + at_, sizeof v);
    at_ += sizeof v;
    return v;
  }
  void get_floats(std::span<float> v, const char* what) {
    const int64_t n = get<int64_t>();
    if (n != int64_t(v.size()))
      fail(std::string(what) + " has " + std::to_string(n) + " values, the run has " + std::to_string(v.size()));
    need(size_t(n) * sizeof(float));
    std::memcpy(v.data(), bytes_.data() + at_, size_t(n) * sizeof(float));
    at_ += size_t(n) * sizeof(float);
  }
  std::string get_string() {
    const int64_t n = get<int64_t>();
    if (n < 0) fail("corrupt");
    need(size_t(n));
    std::string s = bytes_.substr(at_, size_t(n));
    at_ += size_t(n);
    return s;
  }
  [[noreturn]] void fail(const std::string& why) const { throw InputError(field("train.resume") + " " + path_ + ": " + why); }

 private:
  void need(size_t n) const {
    if (at_ + n > end_) fail("truncated");
  }
  std::string bytes_, path_;
  size_t at_ = 0, end_ = 0;
};

}  // namespace

Trainer::Trainer(const Model& model, const Dataset& train, const Dataset* test, Backend& backend,
                 const TrainOptions& opt)
    : model_(model),
      train_(train),
      test_(test),
      be_(backend),
      opt_(opt),
      net_(model, opt.batch, backend, network_options(opt)),
      optim_(net_, net_.params(), schedule(opt, train)),
      scaler_(opt.precision == Precision::FP16 ? 65536.0f : 1.0f, opt.loss_scale_window),
      dropout_rng_(dropout_seed(opt.seed, opt.exchange ? opt.exchange->rank() : 0, 0)) {
  // Images are resized (bilinear) to the model's resolution; channels must agree.
  if (model.input_shape.size() != 3 || model.input_shape[0] != train.channels)
    throw InputError(field("model") + ": " + model.name + " takes input " + shape_str(model.input_shape) + " but " + train.name +
                     " has " + shape_str(Shape{train.channels, train.height, train.width}) + " (set " + field("model.channels") + ")");
  if (net_.classes() != train.classes)
    throw InputError(field("model") + ": " + model.name + " has " + std::to_string(net_.classes()) + " classes but " +
                     train.name + " has " + std::to_string(train.classes) + " (set " + field("model.classes") + ")");
  if (opt.defers_exchange() && !opt.exchange)
    throw InputError(field("train.schedule") + ": " + opt.deferred_by() + " needs ranks to exchange with");
  if (opt.shard_optimizer) {
    if (!backend.reads_host_memory())
      throw InputError(field("train.schedule") + ": a sharded optimizer step runs on " + field("backend") + " cpu");
    if (opt.checkpoint_every > 0 || !opt.resume_path.empty())
      throw InputError(field(opt.resume_path.empty() ? "train.checkpoint_every" : "train.resume") +
                       ": a sharded optimizer step keeps 1/N of the optimizer state on each rank; it writes and reads no "
                       "checkpoints");
  }
  if (opt.defers_exchange()) {
    if (opt.per_layer && !opt.shard_optimizer && opt.precision == Precision::FP16)
      throw InputError(field("train.schedule") + ": per-layer gating needs " + field("precision") +
                       " fp32 or bf16 (fp16's dynamic loss scale checks every gradient for overflow before any update)");
    layer_positions_.assign(model.layers.size(), {0, 0});
    const auto& slots = net_.slots();
    for (int pos = int(slots.size()); pos-- > 0;) {  // a layer's tensors are consecutive positions
      auto& [first, end] = layer_positions_[size_t(slots[size_t(pos)].layer)];
      if (first == end) end = pos + 1;
      first = pos;
    }
  }
  if (!opt.resume_path.empty()) load_checkpoint(opt.resume_path);
}

void Trainer::take_parameters(int first, int end) {
  if (first == end) return;
  const auto& slots = net_.slots();
  const int64_t from = slots[size_t(first)].offset, to = slots[size_t(end - 1)].offset + slots[size_t(end - 1)].numel;
  std::copy(net_.grads() + from, net_.grads() + to, net_.params() + from);  // host memory (checked)
}

bool Trainer::sharded_step(float scale) {
  GradientExchange& ex = *opt_.exchange;
  if (shard_.empty()) shard_ = ex.owned_ranges();
  float* g = net_.grads();
  if (step_ == opt_.inject_overflow_at && !shard_.empty()) g[shard_.front().first] = std::numeric_limits<float>::infinity();
  // This rank's part of every tensor's LARS sums and of the overflow check, summed over
  // the ranks: every rank then agrees on overflow.
  std::vector<double> sums = optim_.shard_sums(shard_, g);
  bool bad = false;
  for (const auto& [first, end] : shard_) bad = bad || be_.nonfinite(g + first, size_t(end - first));
  sums.push_back(bad ? 1.0 : 0.0);
  ex.sum(sums.data(), int(sums.size()));
  const bool overflow = sums.back() > 0;
  bool apply = !overflow;
  if (opt_.precision == Precision::FP16) apply = scaler_.update(overflow);
  else if (overflow) scaler_.restore(scaler_.scale(), 0, scaler_.skipped() + 1);
  if (apply) optim_.step_shard(step_, shard_, sums, g, scale * float(opt_.ranks()), net_.params(), opt_.precision);
  // The all-gathers carry the shard's parameters (unchanged when the step is skipped).
  for (const auto& [first, end] : shard_) std::copy(net_.params() + first, net_.params() + end, g + first);
  ex.release_held();
  return apply;
}

void Trainer::gate_layer(int l) {
  auto [first, end] = layer_positions_[size_t(l)];
  if (opt_.shard_optimizer && !opt_.per_layer) {  // a barrier: everything before the first layer
    if (l != 0) return;
    first = 0;
    end = int(net_.slots().size());
  }
  const auto t0 = Clock::now();
  opt_.exchange->wait_positions(first, end);
  const auto t1 = Clock::now();
  pending_.wait_s += std::chrono::duration<double>(t1 - t0).count();
  if (opt_.shard_optimizer) {
    take_parameters(first, end);
    pending_.update_s += since(t1);
    return;
  }
  if (first == end) return;
  const auto& slots = net_.slots();
  const TensorSlot& last = slots[size_t(end - 1)];
  float* g = net_.grads();
  if (pending_.step == opt_.inject_overflow_at && first == 0) g[0] = std::numeric_limits<float>::infinity();
  // After the exchange every rank holds the same sums, so all of them agree.
  const int64_t from = slots[size_t(first)].offset;
  if (be_.nonfinite(g + from, size_t(last.offset + last.numel - from))) {
    pending_.nonfinite = true;
    return;
  }
  optim_.step(pending_.step, g, pending_.scale * float(opt_.ranks()), net_.params(), opt_.precision, first, end);
  be_.synchronize();
  pending_.update_s += since(t1);
}

void Trainer::close_pending() {
  if (pending_.nonfinite) scaler_.restore(scaler_.scale(), 0, scaler_.skipped() + 1);
  pending_.active = false;
}

void Trainer::drain() {
  if (!pending_.active) return;
  opt_.exchange->finish();
  for (int l = 0; l < int(layer_positions_.size()); ++l) gate_layer(l);
  close_pending();
}

TrainResult Trainer::run(const StepCallback& on_step, const EpochCallback& on_epoch) {
  TrainResult res;
  const int64_t global = opt_.global_batch(), per_epoch = steps_per_epoch(train_, global);
  GradientExchange* ex = opt_.exchange;
  const int rank = ex ? ex->rank() : 0;
  const int64_t total = total_steps();
  const bool dynamic_scale = opt_.precision == Precision::FP16;
  const int h = static_cast<int>(model_.input_shape[1]), w = static_cast<int>(model_.input_shape[2]);
  Loader loader(train_, {opt_.batch, opt_.seed, true, opt_.augment, 4, h, w, rank, opt_.ranks()}, epoch_, position_);
  auto t_run = Clock::now(), t_epoch = Clock::now();
  double wait_at_epoch = 0, loss_sum = 0;
  int64_t correct_sum = 0, epoch_steps = 0;
  Batch ahead;  // the next step's batch, being copied into the device during this step
  bool have_ahead = false;
  // Whatever ends the loop, a copy still reading `ahead` is waited for before it goes.
  struct AwaitCopy {
    Backend& be;
    const bool& pending;
    ~AwaitCopy() {
      try {
        if (pending) be.await_copy_in();
      } catch (...) {  // already ending with an error: the wait is what matters
      }
    }
  } await_copy{be_, have_ahead};
  while (step_ < total) {
    const auto t_step = Clock::now();
    Batch b = have_ahead ? std::move(ahead) : loader.next();
    have_ahead = false;
    if (b.epoch != epoch_ || b.position != position_) throw RunError("trainer: loader out of step");
    // The batch's copy into the device (and its layout and storage) counts as data wait,
    // not forward: no layer's time holds it, and a device's copy is waited for here. On
    // a device the next batch is copied while this step computes (Network::prefetch_input).
    net_.load_input(b.input.data());
    if (step_ + 1 < total && !be_.reads_host_memory()) {
      ahead = loader.next();
      have_ahead = true;
      net_.prefetch_input(ahead.input.data());
    }
    if (be_.timed_on_device()) be_.synchronize();
    const auto t_fwd = Clock::now();
    dropout_rng_.seed(dropout_seed(opt_.seed, rank, step_));
    const bool gated = pending_.active;  // the last step's sums arrive layer by layer
    pending_.wait_s = pending_.update_s = 0;
    net_.forward_loaded(true, dropout_rng_, gated ? [this](int l) { gate_layer(l); } : std::function<void(int)>());
    // Where the gated forward waited for sums and ran updates (none when not gated).
    const double forward_wait_s = pending_.wait_s, forward_update_s = pending_.update_s;
    double wait_s = forward_wait_s, update_s = forward_update_s;
    if (gated) close_pending();  // every layer's update ran before its forward
    const float scale = scaler_.scale();
    int correct = 0;
    const auto t_bwd = Clock::now();
    if (ex) ex->begin_step();
    const double loss = net_.backward(b.labels.data(), opt_.label_smoothing, scale, &correct,
                                      ex ? std::function<void(int)>([ex](int k) { ex->ready(k); }) : nullptr);
    const auto t_wait = Clock::now();
    bool apply = true;
    double optimizer_start_s = -1;
    if (opt_.shard_optimizer) {  // the shard's update now, its all-gathered parameters in the next forward
      ex->wait_reductions();
      const auto t_opt = Clock::now();
      apply = sharded_step(scale);
      wait_s += std::chrono::duration<double>(t_opt - t_wait).count();
      update_s += since(t_opt);
      optimizer_start_s = std::chrono::duration<double>(t_opt - t_step).count();
      pending_ = {true, false, step_, scale, 0, 0};
    } else if (opt_.per_layer) {  // the sums are waited for, and applied, in the next forward
      pending_ = {true, false, step_, scale, 0, 0};
    } else {
      if (ex) ex->finish();
      const auto t_opt = Clock::now();
      if (step_ == opt_.inject_overflow_at) net_.grads()[0] = std::numeric_limits<float>::infinity();
      // After the exchange every rank holds the same sums, so all of them agree on overflow.
      const bool overflow = be_.nonfinite(net_.grads(), size_t(net_.param_count()));
      apply = !overflow;
      if (dynamic_scale) apply = scaler_.update(overflow);
      else if (overflow) scaler_.restore(scaler_.scale(), 0, scaler_.skipped() + 1);
      // A skipped step changes nothing: no LARS, no momentum, no weight update. Dividing by
      // the loss scale times the ranks turns the summed gradients into the mean.
      if (apply) optim_.step(step_, net_.grads(), scale * float(opt_.ranks()), net_.params(), opt_.precision);
      be_.synchronize();
      wait_s = std::chrono::duration<double>(t_opt - t_wait).count();
      update_s = since(t_opt);
      optimizer_start_s = std::chrono::duration<double>(t_opt - t_step).count();
    }
    StepRecord rec{step_, epoch_, loss, optim_.lr_at(step_), scale, !apply, since(t_step)};
    auto span = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
    rec.data_s = span(t_step, t_fwd);
    rec.forward_s = span(t_fwd, t_bwd) - (gated ? forward_wait_s + forward_update_s : 0);
    rec.backward_s = span(t_bwd, t_wait);
    rec.comm_wait_s = wait_s;
    rec.optimizer_s = update_s;
    rec.optimizer_start_s = optimizer_start_s;
    res.steps.push_back(rec);
    loss_sum += loss;
    correct_sum += correct;
    ++epoch_steps;
    ++step_;
    res.samples += global;
    position_ += global;
    // The per-layer profile leaves out the warm-up step (first touch of every buffer,
    // oneDNN primitive creation) when there are others.
    if (res.steps.size() == 1 && step_ < total) net_.reset_timings();
    if (on_step) on_step(rec, total, double(res.samples) / std::max(1e-9, since(t_run)));
    const bool epoch_done = position_ + global > per_epoch * global;
    const bool checkpoint_due =
        opt_.checkpoint_every > 0 && step_ % opt_.checkpoint_every == 0 && !opt_.checkpoint_path.empty();
    if (step_ == total || checkpoint_due || (epoch_done && opt_.evaluate && test_)) drain();
    if (epoch_done || step_ == total) {
      EpochRecord e;
      e.epoch = epoch_;
      e.steps = epoch_steps;
      // Means over every rank's samples.
      double sums[2] = {loss_sum, double(correct_sum)};
      if (ex) ex->sum(sums, 2);
      e.train_loss = sums[0] / double(epoch_steps * opt_.ranks());
      e.train_accuracy = sums[1] / double(epoch_steps * global);
      e.seconds = since(t_epoch);
      e.samples_per_s = double(epoch_steps * global) / e.seconds;
      e.data_wait_s = loader.wait_s() - wait_at_epoch;
      e.loss_scale = scaler_.scale();
      e.skipped_steps = scaler_.skipped();
      if (opt_.evaluate && test_) e.test_accuracy = evaluate(*test_, &e.test_loss);
      res.epochs.push_back(e);
      if (on_epoch) on_epoch(e);
      wait_at_epoch = loader.wait_s();
      loss_sum = 0;
      correct_sum = epoch_steps = 0;
      t_epoch = Clock::now();
      if (epoch_done) {
        ++epoch_;
        position_ = 0;
      }
    }
    if (checkpoint_due) {
      // The ranks hold the same weights and optimizer state; rank 0's BatchNorm
      // statistics are the ones kept (and evaluated with).
      if (ex) ex->broadcast(net_.running_stats().data(), int64_t(net_.running_stats().size()));
      if (rank == 0) save_checkpoint(opt_.checkpoint_path);
    }
  }
  res.seconds = since(t_run);
  return res;
}

// Accuracy and mean loss over the whole set, in batches of the training batch size (the
// last one padded with repeats, which are not counted). BatchNorm uses running averages,
// rank 0's on every rank (as DDP broadcasts its buffers); the ranks share the batches.
double Trainer::evaluate(const Dataset& d, double* loss) {
  GradientExchange* ex = opt_.exchange;
  const int rank = ex ? ex->rank() : 0, ranks = opt_.ranks();
  if (ex) ex->broadcast(net_.running_stats().data(), int64_t(net_.running_stats().size()));
  const int B = opt_.batch, C = net_.classes();
  const int h = static_cast<int>(model_.input_shape[1]), w = static_cast<int>(model_.input_shape[2]);
  const int64_t e = int64_t(d.channels) * h * w;
  std::vector<float> input(size_t(B * e));
  std::vector<int32_t> labels(static_cast<size_t>(B));
  std::vector<float> logits;
  int64_t right = 0;
  double loss_sum = 0;
  std::mt19937_64 unused(0);
  for (int64_t first = int64_t(rank) * B; first < d.size(); first += int64_t(ranks) * B) {
    const int64_t count = std::min<int64_t>(B, d.size() - first);
    fill_plain(d, first, count, input.data(), labels.data(), h, w);
    for (int64_t i = count; i < B; ++i) {
      std::copy(input.begin(), input.begin() + e, input.begin() + i * e);
      labels[size_t(i)] = labels[0];
    }
    net_.forward(input.data(), false, unused);
    net_.read_logits(logits);
    const float* z = logits.data();
    for (int64_t i = 0; i < count; ++i) {
      const float* row = z + i * C;
      int best = 0;
      for (int j = 1; j < C; ++j)
        if (row[j] > row[best]) best = j;
      right += best == labels[size_t(i)];
      double sum = 0;
      for (int j = 0; j < C; ++j) sum += std::exp(double(row[j]) - row[best]);
      loss_sum += std::log(sum) + row[best] - row[labels[size_t(i)]];
    }
  }
  double sums[2] = {double(right), loss_sum};
  if (ex) ex->sum(sums, 2);
  if (loss) *loss = sums[1] / double(d.size());
  return sums[0] / double(d.size());
}

namespace {
// The checkpoint file: a temporary file beside it, written, synced and renamed into place.
// A target that is not a regular file (/dev/null, a FIFO: output_target) is written through.
void write_checkpoint_file(const std::string& path, const std::string& bytes) {
  const OutputTarget to = output_target(path);
  const std::string tmp = to.direct ? to.path : to.path + ".tmp";
  int fd = to.direct ? ::open(tmp.c_str(), O_WRONLY | O_APPEND)
                     : ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw InputError(field("train.checkpoint") + " " + path + ": cannot write: " + std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      ::close(fd);
      if (!to.direct) ::unlink(tmp.c_str());
      throw RunError("checkpoint " + path + ": write failed: " + std::strerror(errno));
    }
    done += size_t(n);
  }
  if (to.direct) {
    ::close(fd);
    return;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0 || std::rename(tmp.c_str(), to.path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    throw RunError("checkpoint " + path + ": could not be committed: " + std::strerror(errno));
  }
}
}  // namespace

void Trainer::save_checkpoint(const std::string& path) const {
  Writer w;
  w.bytes_.append(kMagic, sizeof kMagic);
  w.put(model_.fingerprint());
  w.put(int32_t(opt_.batch));
  w.put(int32_t(opt_.ranks()));
  w.put(opt_.seed);
  w.put(int32_t(opt_.precision));
  w.put_string(train_.name);
  w.put(step_);
  w.put(epoch_);
  w.put(position_);
  w.put(scaler_.scale());
  w.put(int32_t(scaler_.good_steps()));
  w.put(scaler_.skipped());
  be_.synchronize();
  w.put_floats(optim_.masters());
  w.put_floats(optim_.momenta());
  w.put_floats(net_.running_stats());
  std::string bytes = w.finish();
  const double limit = opt_.checkpoint_timeout_s;
  if (!(limit > 0)) return write_checkpoint_file(path, bytes);
  // The write runs in a thread of its own, so that a file system which does not answer
  // (a hung network mount) cannot hold the run past the limit. The thread is left behind
  // if it does not return: the error ends the process, and the old checkpoint stays, as
  // the new one is renamed into place only once complete.
  struct Pending {
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    std::exception_ptr error;
  };
  auto pending = std::make_shared<Pending>();
  std::thread([pending, path, bytes = std::move(bytes)] {
    std::exception_ptr error;
    try {
      write_checkpoint_file(path, bytes);
    } catch (...) {
      error = std::current_exception();
    }
    std::lock_guard<std::mutex> lock(pending->m);
    pending->error = error;
    pending->done = true;
    pending->cv.notify_one();
  }).detach();
  std::unique_lock<std::mutex> lock(pending->m);
  if (!pending->cv.wait_for(lock, std::chrono::duration<double>(limit), [&] { return pending->done; }))
    throw RunError("checkpoint " + path + ": not written within " + formatted(limit, "%g") +
                   " s: the file system does not answer; the previous checkpoint is kept");
  if (pending->error) std::rethrow_exception(pending->error);
}


void Trainer::load_checkpoint(const std::string& path) {
  be_.synchronize();  // the host writes into the backend's memory below
  // A checkpoint of this model is at most its header and its floats (zlib adds little).
  const uint64_t floats = optim_.masters().size() + optim_.momenta().size() + net_.running_stats().size();
  Reader r(read_input_file(path, field("train.resume") + " " + path, 8 * floats + (uint64_t(1) << 20)), path);
  if (r.get<uint64_t>() != model_.fingerprint()) r.fail("was written for another model (fingerprint differs)");
  if (r.get<int32_t>() != opt_.batch) r.fail("was written with another " + field("batch_per_gpu"));
  if (const int32_t n = r.get<int32_t>(); n != opt_.ranks())
    r.fail("was written by " + std::to_string(n) + " ranks, this run has " + std::to_string(opt_.ranks()));
  if (r.get<uint64_t>() != opt_.seed) r.fail("was written with another " + field("train.seed"));
  if (r.get<int32_t>() != int32_t(opt_.precision)) r.fail("was written with another " + field("precision"));
  if (r.get_string() != train_.name) r.fail("was written for another " + field("train.dataset"));
  step_ = r.get<int64_t>();
  epoch_ = r.get<int64_t>();
  position_ = r.get<int64_t>();
  const float scale = r.get<float>();
  const int32_t good = r.get<int32_t>();
  const int64_t skipped = r.get<int64_t>();
  scaler_.restore(scale, good, skipped);
  r.get_floats(optim_.masters(), "master weights");
  r.get_floats(optim_.momenta(), "momenta");
  r.get_floats(net_.running_stats(), "batchnorm statistics");
  if (step_ < 0 || epoch_ < 0 || position_ < 0) r.fail("corrupt position");
  float* p = net_.params();
  be_.copy_in(p, optim_.masters().data(), optim_.masters().size());
  be_.round(opt_.precision, p, optim_.masters().size());
  resumed_ = Resumed{path, step_, epoch_, std::max<int64_t>(0, total_steps() - step_), scale};
}

int64_t Trainer::total_steps() const {
  const int64_t schedule = optim_.options().total_steps;
  return opt_.max_steps > 0 ? std::min(schedule, opt_.max_steps) : schedule;
}

std::string Trainer::Resumed::line() const {
  char scale[32];
  std::snprintf(scale, sizeof scale, "%g", double(loss_scale));
  return "resumed " + path + " at step " + std::to_string(step) + " (epoch " + std::to_string(epoch) +
         "), loss scale " + scale + ": " + std::to_string(remaining) + (remaining == 1 ? " step remains" : " steps remain") +
         (remaining == 0 ? " (the run had already reached its steps)" : "");
}

}  // namespace fuseplan::exec
