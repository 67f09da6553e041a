// MPI for the plan executor: the world and its rank layout across nodes, one allreduce
// in flight on a buffer (the library's MPI_Iallreduce, or a costmodel schedule replayed
// as point-to-point messages), and the GradientExchange that runs a plan's buckets while
// backward goes on.
#pragma once
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/costmodel/report.hpp"
#include "fuseplan/exec/trainer.hpp"

namespace fuseplan::exec {

struct RankLayout {
  int rank = 0, ranks = 1;
  int local_rank = 0, local_ranks = 1;  // on this node (MPI_COMM_TYPE_SHARED)
  int node = 0, nodes = 1;
  std::vector<int> node_of_rank;        // nodes numbered in order of their first rank
  // Ranks numbered node by node with the same count on every node but the last, as
  // fuseplan's schedules place them (mpirun's default --map-by slot does).
  bool node_major = true;
  int per_node = 1;                     // ranks on the first node
  Topo topo() const { return {ranks, per_node}; }
};

// MPI_Init_thread (asking for MPI_THREAD_MULTIPLE, which a communication thread needs)
// and MPI_Finalize. One per process.
class MpiWorld {
 public:
  MpiWorld(int* argc, char*** argv);
  ~MpiWorld();
  MpiWorld(const MpiWorld&) = delete;
  MpiWorld& operator=(const MpiWorld&) = delete;

  const RankLayout& layout() const { return layout_; }
  int rank() const { return layout_.rank; }
  int ranks() const { return layout_.ranks; }
  bool thread_multiple() const { return thread_multiple_; }
  MPI_Comm comm() const { return MPI_COMM_WORLD; }
  // Bounds every collective below (barrier, sums, broadcast, gathers): past `seconds`
  // without the other ranks, RunError naming this rank and the call, instead of a hang
  // (a stopped or dead rank). On rank 0 it also names the silent ranks: the ranks still
  // there report to rank 0 once their own wait has timed out, and those that do not
  // within another `seconds` are named. 0, the default, waits as long as MPI does.
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  void barrier();
  void sum(double* v, int n);
  double max(double v);
  void broadcast(float* v, int64_t n, int root = 0);
  // Each rank's `v`, gathered on every rank (rank order).
  std::vector<double> allgather(const std::vector<double>& v);
  // Every rank's text on rank 0 (rank order); empty on the others.
  std::vector<std::string> gather_text(const std::string& text);
  // The ranks agree whether any failed (set-up): each rank's `failed` gathered on rank 0,
  // the lowest failing rank sent back to all; returns it, or -1 when none failed. Every
  // wait is bounded by the timeout (set_timeout): a rank that does not answer (stopped,
  // dead, or stuck in its own set-up) makes the others throw RunError naming it, instead
  // of hanging.
  int agree(bool failed);
  // Ends every rank of the job (after a one-line message on this rank's stderr).
  [[noreturn]] void abort(int code);
  // Whether this process was started by mpirun/srun (else it is a singleton).
  static bool launched();

 private:
  // Waits for `r` within the timeout (polling), or as MPI_Wait does without one.
  void wait(MPI_Request& r, const char* what) const;
  // After a collective timed out: on rank 0, "rank 1, 3" for the ranks that do not report
  // within the timeout; on the others (which report to rank 0), "the other ranks".
  std::string roll_call() const;

  RankLayout layout_;
  bool thread_multiple_ = false;
  double timeout_s_ = 0;
};

// The timing of one message size in an allreduce sweep (`fuseplan-exec sweep`, MPI or
// NCCL): `run(n)` runs n allreduces back to back and returns when they are done; each
// timing is after a barrier, the slowest rank's. `iterations` timed ones, or (0) enough
// for about `seconds_per_size`, from the fastest of three single ones (agreed by every
// rank, since each timing is; this machine is shared and noisy).
struct SweepTiming {
  double seconds = 0;  // per allreduce
  int iterations = 0;
};
template <class Run>
SweepTiming time_allreduces(MpiWorld& world, Run run, int iterations, double seconds_per_size) {
  auto timed = [&](int n) {
    world.barrier();
    const auto t0 = std::chrono::steady_clock::now();
    run(n);
    return world.max(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  };
  SweepTiming t;
  t.iterations = iterations;
  if (t.iterations == 0) {
    double fastest = 1e9;
    for (int k = 0; k < 3; ++k) fastest = std::min(fastest, timed(1));
    t.iterations = int(std::clamp(seconds_per_size / std::max(fastest, 1e-7), 5.0, 2000.0));
  }
  t.seconds = timed(t.iterations) / t.iterations;
  return t;
}

// How one allreduce runs: "mpi" (MPI_Iallreduce) or another costmodel algorithm with the
// variant the cost model chose; `transfer` below FP32 sends 16-bit values.
struct AllreduceSpec {
  std::string algorithm = "ring";
  int variant = 0;
  Precision transfer = Precision::FP32;
  int group = 0, torus_x = 0;  // hierarchical group size, torus row (0 = automatic)
  // The whole allreduce, or one half of a ring-family schedule (`ring`, `nccl_ring`: a
  // reduce-scatter's rounds, then an all-gather's): run on the same buffer, the two
  // halves one after the other are the allreduce.
  enum class Half { Whole, ReduceScatter, Allgather } half = Half::Whole;
};

// One allreduce (sum) of `count` floats in place, non-blocking: start() posts, test()
// moves it on (the next round of a schedule) without blocking. An FP32 transfer works
// straight on the caller's buffer; FP16/BF16 transfers go through a 16-bit copy (on a
// GPU the gradients would already be 16-bit) and every addition is rounded to it.
class Allreduce {
 public:
  Allreduce(MPI_Comm comm, const Topo& topo, int64_t count, const AllreduceSpec& spec, int tag);
  ~Allreduce();
  Allreduce(const Allreduce&) = delete;
  Allreduce& operator=(const Allreduce&) = delete;

  void start(float* data);
  bool test();  // true once the sums are in the buffer
  void wait();  // blocks until done
  bool done() const { return done_; }
  // Ranks whose messages the current round still waits for (for a dead-rank message).
  std::vector<int> waiting_on() const;
  int64_t count() const { return count_; }
  const std::string& algorithm() const { return spec_.algorithm; }
  // A half of a ring-family schedule: the element ranges [first, end) of the vector that
  // this rank holds fully reduced after the reduce-scatter half (what it sends first in
  // the all-gather half). The ranks' ranges partition the vector. Whole: empty.
  const std::vector<std::pair<int64_t, int64_t>>& owned() const { return owned_; }
  int rounds() const { return int(rounds_.size()); }

 private:
  struct Piece {
    int peer = 0;
    int64_t offset = 0, count = 0;
    bool reduce = false, in_place = false;
    int64_t scratch = 0;  // element offset in scratch_ (receives not in place)
  };
  struct MyRound {
    std::vector<Piece> sends, recvs;
  };
  void post_round();
  void finish_round();
  void complete();
  void* elem(void* base, int64_t i) const;

  MPI_Comm comm_;
  int me_ = 0, tag_ = 0;
  int64_t count_ = 0;
  AllreduceSpec spec_;
  bool mpi_ = false, half_ = false;
  std::vector<MyRound> rounds_;
  size_t round_ = 0;
  std::vector<MPI_Request> requests_;
  std::vector<uint16_t> staging_, scratch16_;
  std::vector<float> scratch32_;
  float* data_ = nullptr;
  bool active_ = false, done_ = false;
  std::vector<std::pair<int64_t, int64_t>> owned_;
};

struct ExchangeBucket {
  int begin = 0, end = 0;        // backward positions [begin, end)
  int64_t offset = 0, count = 0; // in the flat gradient buffer
  int stream = 0;                // buckets of one stream run one after another
  // Where it runs in its stream: buckets of a stream run by increasing `order` (ties in
  // index order), each once it is ready and those before it have run; -1 = its index.
  int order = -1;
  // Held until the step releases it (GradientExchange::release_held): the all-gather of
  // a sharded optimizer step, which carries the updated parameters.
  bool after_step = false;
  AllreduceSpec spec;
  // A plan's packed bucket (PlanBucket::pack) is allreduced in a buffer of its own, not in
  // place in the flat gradient buffer:
  // - Comm (Horovod's fusion buffer): copied into it once the bucket is ready, by whoever
  //   starts its allreduce (the communication thread, or the training thread polling),
  //   and out of it when the allreduce has ended;
  // - Compute (DDP's bucket buffers): each position's gradient copied in on the training
  //   thread as backward makes it final (ready()), and the bucket copied back by finish():
  //   in bucket order, each once its allreduce has ended.
  enum class Pack { None, Comm, Compute } pack = Pack::None;
  // Pack::Compute: where each of positions [begin, end) ends in the flat gradient buffer.
  std::vector<int64_t> position_ends;
};

struct ExchangeOptions {
  // Progress: a communication thread (needs MPI_THREAD_MULTIPLE) or polling from the
  // training thread after every layer's backward.
  bool thread = false;
  double poll_us = 50;      // communication thread: sleep between polls that found nothing
  double timeout_s = 60;    // a bucket not done after this long: a rank died or hangs
};

// InputError when `opt` asks for a communication thread and MPI cannot run one
// (MPI_THREAD_MULTIPLE): checked by PlanExchange, and by run_plan before the ranks agree.
void check_progress_mode(const MpiWorld& world, const ExchangeOptions& opt);

// A GradientExchange that reports when each bucket's allreduce ran in the last step.
class TimedExchange : public GradientExchange {
 public:
  // Each bucket's allreduce in the last step, from the start of that step's backward.
  virtual const std::vector<BucketTiming>& timings() const = 0;
  virtual std::chrono::steady_clock::time_point step_origin() const = 0;  // its backward start
};

// Runs a plan's buckets over MPI: each bucket's allreduce is posted the moment its last
// gradient is written (on_ready), straight from the flat gradient buffer.
class PlanExchange final : public TimedExchange {
 public:
  PlanExchange(MpiWorld& world, float* grads, std::vector<ExchangeBucket> buckets, const ExchangeOptions& opt);
  ~PlanExchange() override;

  int rank() const override { return world_.rank(); }
  int ranks() const override { return world_.ranks(); }
  void begin_step() override;
  void ready(int positions) override;
  void finish() override;
  void wait_positions(int begin, int end) override;
  void wait_reductions() override;
  void release_held() override;
  std::vector<std::pair<int64_t, int64_t>> owned_ranges() const override;
  void sum(double* v, int n) override { world_.sum(v, n); }
  void broadcast(float* v, int64_t n) override { world_.broadcast(v, n); }

  void set_timeout(double s) { opt_.timeout_s = s; }
  const std::vector<ExchangeBucket>& buckets() const { return buckets_; }
  const std::vector<BucketTiming>& timings() const override { return timings_; }
  std::chrono::steady_clock::time_point step_origin() const override { return origin_; }

 private:
  using Clock = std::chrono::steady_clock;
  double now() const { return std::chrono::duration<double>(Clock::now() - origin_).count(); }
  bool pump();  // starts what may start, tests what runs; true if all buckets are done
  bool buckets_done(int begin, int end) const;  // every bucket writing positions [begin, end) has run
  bool reductions_done() const;                 // every bucket not held has run
  void copy_in_backward(int positions);         // Pack::Compute: positions [copied_, positions) into their buffers
  float* start_data(size_t b);                  // where bucket b's allreduce runs (its buffer filled, if Comm)
  void ended(size_t b);                         // bucket b's allreduce has ended (its buffer copied out, if Comm)
  template <class Done>
  void wait_until(const Done& done);            // pumps (or waits for the thread) until done()
  void check_timeouts();
  void thread_main();

  MpiWorld& world_;
  float* grads_;
  std::vector<ExchangeBucket> buckets_;
  ExchangeOptions opt_;
  std::vector<MPI_Comm> stream_comms_;
  std::vector<std::unique_ptr<Allreduce>> ops_;
  std::vector<BucketTiming> timings_;
  std::vector<std::vector<int>> stream_order_;  // bucket indices per stream, in order
  std::vector<size_t> stream_next_;             // next bucket of each stream to start
  std::vector<int> stream_running_;             // bucket running on each stream, or -1
  Clock::time_point origin_;
  std::atomic<int> ready_count_{0};  // buckets [0, ready_count_) are ready (set by the training thread)
  std::atomic<bool> released_{false};  // this step's held buckets may start
  int done_count_ = 0;
  std::unique_ptr<std::atomic<bool>[]> done_;  // per bucket, this step (set by whoever pumps)
  std::vector<std::vector<float>> packed_;     // per bucket: its own buffer where it is packed, else empty
  int copied_ = 0;  // Pack::Compute: positions [0, copied_) are in their buffers this step (training thread)
  bool in_step_ = false;  // guarded by mutex_ with a communication thread
  // Communication thread.
  std::mutex mutex_;
  std::condition_variable cv_;
  std::thread thread_;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace fuseplan::exec
