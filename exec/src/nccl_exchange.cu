// NCCL gradient exchange (exec/nccl.hpp): communicators bootstrapped over MPI, one CUDA
// stream and one split communicator per plan stream, a bucket's collectives ordered after
// the compute stream by an event recorded when its last gradient is produced, CUDA events
// for its ready/start/end times.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <thread>

#include "device_check.hpp"
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {

void check(cudaError_t e, const char* what, std::source_location at = std::source_location::current()) {
  if (e != cudaSuccess)
    device_failure(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e), e == cudaErrorMemoryAllocation, at);
}
void check(ncclResult_t r, const char* what, std::source_location at = std::source_location::current()) {
  // ncclInvalidUsage and ncclInvalidArgument are fuseplan's mistakes, not the user's;
  // ncclSystemError and ncclRemoteError are the machine's (a network, a peer died).
  if (r != ncclSuccess) device_failure(std::string("NCCL: ") + what + ": " + ncclGetErrorString(r), false, at);
}

constexpr int kThreads = 256;
int blocks_for(int64_t n) { return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

#define FUSEPLAN_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < (n); i += int64_t(gridDim.x) * blockDim.x)

__global__ void k_to_fp16(const float* x, __half* y, int64_t n) { FUSEPLAN_GRID_LOOP(i, n) y[i] = __float2half_rn(x[i]); }
__global__ void k_to_bf16(const float* x, __nv_bfloat16* y, int64_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = __float2bfloat16_rn(x[i]);
}
__global__ void k_from_fp16(const __half* y, float* x, int64_t n) { FUSEPLAN_GRID_LOOP(i, n) x[i] = __half2float(y[i]); }
__global__ void k_from_bf16(const __nv_bfloat16* y, float* x, int64_t n) {
  FUSEPLAN_GRID_LOOP(i, n) x[i] = __bfloat162float(y[i]);
}

ncclDataType_t nccl_type(Precision p) {
  switch (p) {
    case Precision::FP16: return ncclFloat16;
    case Precision::BF16: return ncclBfloat16;
    default: return ncclFloat32;
  }
}

// A communicator per use, split from the world's; NCCL_SPLIT_NOCOLOR leaves a rank out.
ncclComm_t split(ncclComm_t parent, int color, int key) {
  ncclComm_t c = nullptr;
  check(ncclCommSplit(parent, color, key, &c, nullptr), "ncclCommSplit");
  return c;
}

// The world's communicator: NCCL's id made on rank 0 and broadcast over MPI.
ncclComm_t world_communicator(MpiWorld& world) {
  ncclUniqueId id;
  if (world.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
  if (MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, world.comm()) != MPI_SUCCESS) throw RunError("MPI_Bcast of the NCCL id");
  ncclComm_t c = nullptr;
  check(ncclCommInitRank(&c, world.ranks(), id, world.rank()), "ncclCommInitRank");
  return c;
}

// Polls `query` (cudaEventQuery or cudaStreamQuery of what NCCL enqueued on `comm`) until
// it succeeds, with a deadline `timeout_s` after `since`: a rank that died leaves NCCL
// waiting forever. On NCCL's asynchronous error (NCCL's rule: that communicator is
// aborted) or past the deadline, `abort` runs first, then the throw, naming `what`.
template <class Query, class Abort>
void wait_polling(Query query, ncclComm_t comm, std::chrono::steady_clock::time_point since, double timeout_s, int rank,
                  Abort abort, const std::string& what) {
  for (;;) {
    const cudaError_t q = query();
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) check(q, what.c_str());
    ncclResult_t async = ncclSuccess;
    ncclCommGetAsyncError(comm, &async);
    if (async != ncclSuccess) {
      abort();
      check(async, what.c_str());
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count() > timeout_s) {
      abort();
      throw RunError("rank " + std::to_string(rank) + ": " + what + " did not finish in " +
                     std::to_string(int(timeout_s)) + " s: a rank died or hangs");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}

class NcclExchange final : public TimedExchange {
 public:
  NcclExchange(MpiWorld& world, Backend& backend, float* grads, std::vector<ExchangeBucket> buckets, double timeout_s)
      : world_(world),
        compute_(static_cast<cudaStream_t>(backend.native_stream())),
        grads_(grads),
        buckets_(std::move(buckets)),
        timeout_s_(timeout_s),
        timings_(buckets_.size()) {
    if (!compute_) throw InputError(field("comm") + " nccl: needs " + field("backend") + " cuda");
    const RankLayout& l = world.layout();
    world_comm_ = world_communicator(world);
    int streams = 1;
    bool hierarchical = false;
    int64_t widest = 0;
    for (const auto& b : buckets_) {
      streams = std::max(streams, b.stream + 1);
      hierarchical = hierarchical || b.spec.algorithm.rfind("hierarchical", 0) == 0;
      if (b.spec.transfer != Precision::FP32) widest = std::max(widest, b.count);
    }
    int lowest = 0, highest = 0;
    check(cudaDeviceGetStreamPriorityRange(&lowest, &highest), "stream priorities");
    streams_.resize(streams);
    for (auto& s : streams_) {
      check(cudaStreamCreateWithPriority(&s.stream, cudaStreamNonBlocking, highest), "communication stream");
      s.all = split(world_comm_, 0, world.rank());
      if (hierarchical) {
        s.node = split(world_comm_, l.node, l.local_rank);
        s.roots = split(world_comm_, l.local_rank == 0 ? 0 : NCCL_SPLIT_NOCOLOR, l.node);
        s.same_local = split(world_comm_, l.local_rank, l.node);
      }
      if (widest > 0) check(cudaMalloc(&s.half, size_t(widest) * 2), "16-bit transfer buffer");
    }
    events_.resize(buckets_.size());
    for (auto& e : events_)
      for (cudaEvent_t* ev : {&e.ready, &e.start, &e.end}) check(cudaEventCreate(ev), "event");
    check(cudaEventCreate(&origin_ev_), "event");
  }

  ~NcclExchange() override {
    for (auto& e : events_)
      for (cudaEvent_t ev : {e.ready, e.start, e.end}) cudaEventDestroy(ev);
    cudaEventDestroy(origin_ev_);
    for (auto& s : streams_) {
      if (!aborted_) cudaStreamSynchronize(s.stream);  // after an abort it may never end
      for (ncclComm_t c : {s.all, s.node, s.roots, s.same_local})
        if (c) ncclCommDestroy(c);
      cudaFree(s.half);
      cudaStreamDestroy(s.stream);
    }
    if (world_comm_) ncclCommDestroy(world_comm_);
  }

  int rank() const override { return world_.rank(); }
  int ranks() const override { return world_.ranks(); }
  void sum(double* v, int n) override { world_.sum(v, n); }
  void broadcast(float* v, int64_t n) override { world_.broadcast(v, n); }

  void begin_step() override {
    origin_ = std::chrono::steady_clock::now();
    check(cudaEventRecord(origin_ev_, compute_), "record");
    next_ = 0;
  }

  // The gradients of positions [0, positions) are computed (or queued) on the compute
  // stream: each bucket they complete waits for this point of it on its own stream.
  void ready(int positions) override {
    for (; next_ < buckets_.size() && buckets_[next_].end <= positions; ++next_) {
      const ExchangeBucket& b = buckets_[next_];
      Stream& s = streams_[size_t(b.stream)];
      Events& e = events_[next_];
      check(cudaEventRecord(e.ready, compute_), "record");
      check(cudaStreamWaitEvent(s.stream, e.ready, 0), "wait");
      check(cudaEventRecord(e.start, s.stream), "record");
      allreduce(b, s);
      check(cudaEventRecord(e.end, s.stream), "record");
    }
  }

  void finish() override {
    if (next_ != buckets_.size()) ready(buckets_.back().end);
    // The host waits (this is the exposed communication), with a deadline.
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t b = 0; b < buckets_.size(); ++b)
      wait_polling([&] { return cudaEventQuery(events_[b].end); }, streams_[size_t(buckets_[b].stream)].all, t0,
                   timeout_s_, rank(), [&] { abort_all(); }, "the NCCL allreduce of bucket " + std::to_string(b));
    // The optimizer (on the compute stream) reads the sums.
    for (size_t b = 0; b < buckets_.size(); ++b) check(cudaStreamWaitEvent(compute_, events_[b].end, 0), "wait");
    for (size_t b = 0; b < buckets_.size(); ++b) {
      timings_[b].ready_s = elapsed(events_[b].ready);
      timings_[b].start_s = elapsed(events_[b].start);
      timings_[b].end_s = elapsed(events_[b].end);
    }
  }

  const std::vector<BucketTiming>& timings() const override { return timings_; }
  std::chrono::steady_clock::time_point step_origin() const override { return origin_; }

 private:
  struct Stream {
    cudaStream_t stream = nullptr;
    ncclComm_t all = nullptr, node = nullptr, roots = nullptr, same_local = nullptr;
    void* half = nullptr;
  };
  struct Events {
    cudaEvent_t ready = nullptr, start = nullptr, end = nullptr;
  };

  // Every communicator aborted (its kernels give up), so that nothing waits on a dead rank.
  void abort_all() {
    for (auto& s : streams_)
      for (ncclComm_t* c : {&s.all, &s.node, &s.roots, &s.same_local}) {
        if (*c) ncclCommAbort(*c);
        *c = nullptr;
      }
    if (world_comm_) ncclCommAbort(world_comm_);
    world_comm_ = nullptr;
    aborted_ = true;
  }

  double elapsed(cudaEvent_t e) const {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, origin_ev_, e), "event time");
    return double(ms) * 1e-3;
  }

  void allreduce(const ExchangeBucket& b, Stream& s) {
    float* data = grads_ + b.offset;
    const int64_t n = b.count;
    void* buf = data;
    const Precision p = b.spec.transfer;
    if (p == Precision::FP16)
      k_to_fp16<<<blocks_for(n), kThreads, 0, s.stream>>>(data, static_cast<__half*>(s.half), n), buf = s.half;
    if (p == Precision::BF16)
      k_to_bf16<<<blocks_for(n), kThreads, 0, s.stream>>>(data, static_cast<__nv_bfloat16*>(s.half), n), buf = s.half;
    const ncclDataType_t t = nccl_type(p);
    const size_t elem = p == Precision::FP32 ? 4 : 2;
    const RankLayout& l = world_.layout();
    if (b.spec.algorithm == "hierarchical_rs" && s.node && n % l.local_ranks == 0) {
      // Reduce-scatter in the node, allreduce of each shard across nodes (among the ranks
      // with the same local rank), allgather in the node.
      const size_t shard = size_t(n / l.local_ranks);
      char* mine = static_cast<char*>(buf) + size_t(l.local_rank) * shard * elem;
      check(ncclReduceScatter(buf, mine, shard, t, ncclSum, s.node, s.stream), "ncclReduceScatter");
      check(ncclAllReduce(mine, mine, shard, t, ncclSum, s.same_local, s.stream), "ncclAllReduce");
      check(ncclAllGather(mine, buf, shard, t, s.node, s.stream), "ncclAllGather");
    } else if (b.spec.algorithm.rfind("hierarchical", 0) == 0 && s.node) {
      check(ncclReduce(buf, buf, size_t(n), t, ncclSum, 0, s.node, s.stream), "ncclReduce");
      if (s.roots) check(ncclAllReduce(buf, buf, size_t(n), t, ncclSum, s.roots, s.stream), "ncclAllReduce");
      check(ncclBroadcast(buf, buf, size_t(n), t, 0, s.node, s.stream), "ncclBroadcast");
    } else {
      check(ncclAllReduce(buf, buf, size_t(n), t, ncclSum, s.all, s.stream), "ncclAllReduce");
    }
    if (p == Precision::FP16)
      k_from_fp16<<<blocks_for(n), kThreads, 0, s.stream>>>(static_cast<const __half*>(s.half), data, n);
    if (p == Precision::BF16)
      k_from_bf16<<<blocks_for(n), kThreads, 0, s.stream>>>(static_cast<const __nv_bfloat16*>(s.half), data, n);
    check(cudaGetLastError(), "conversion kernel");
  }

  MpiWorld& world_;
  cudaStream_t compute_;
  float* grads_;
  std::vector<ExchangeBucket> buckets_;
  double timeout_s_;
  std::vector<BucketTiming> timings_;
  ncclComm_t world_comm_ = nullptr;
  std::vector<Stream> streams_;
  std::vector<Events> events_;
  cudaEvent_t origin_ev_ = nullptr;
  std::chrono::steady_clock::time_point origin_;
  size_t next_ = 0;
  bool aborted_ = false;
};

__global__ void k_fill_f32(float* x, int64_t n, float v) { FUSEPLAN_GRID_LOOP(i, n) x[i] = v; }
__global__ void k_fill_u16(uint16_t* x, int64_t n, uint16_t v) { FUSEPLAN_GRID_LOOP(i, n) x[i] = v; }

class NcclSweep final : public NcclAllreduceSweep {
 public:
  NcclSweep(MpiWorld& world, int device, Precision p, int64_t max_count, double timeout_s)
      : world_(world), precision_(p), timeout_s_(timeout_s), device_(device) {
    check(cudaSetDevice(device_), "set device");
    comm_ = world_communicator(world);
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    check(cudaMalloc(&buf_, size_t(std::max<int64_t>(max_count, 1)) * elem()), "the sweep's buffer");
  }

  ~NcclSweep() override {
    if (comm_) cudaStreamSynchronize(stream_);  // after an abort it may never end
    if (comm_) ncclCommDestroy(comm_);
    cudaFree(buf_);
    cudaStreamDestroy(stream_);
  }

  NcclSweepPoint measure(int64_t count, int warmup, int iterations, double seconds_per_size) override {
    const int64_t n = std::max<int64_t>(count, 1);
    const std::string at = "the NCCL allreduce of " + std::to_string(n * int64_t(elem())) + " B";
    if (precision_ == Precision::FP32)
      k_fill_f32<<<blocks_for(n), kThreads, 0, stream_>>>(static_cast<float*>(buf_), n, 1.0f);
    else
      k_fill_u16<<<blocks_for(n), kThreads, 0, stream_>>>(static_cast<uint16_t*>(buf_), n, one_bits());
    check(cudaGetLastError(), "fill kernel");
    run(n, 1, at);
    check_sum(n, at);
    run(n, warmup, at);
    NcclSweepPoint pt;
    pt.timing = time_allreduces(world_, [&](int times) { run(n, times, at); }, iterations, seconds_per_size);
    // NCCL's own estimate of the same call: its tuning model, nothing launched.
    ncclSimInfo_t sim = NCCL_SIM_INFO_INITIALIZER;
    check(ncclGroupStart(), "ncclGroupStart");
    check(ncclAllReduce(buf_, buf_, size_t(n), nccl_type(precision_), ncclSum, comm_, stream_), "ncclAllReduce");
    check(ncclGroupSimulateEnd(&sim), "ncclGroupSimulateEnd");
    pt.nccl_estimate_s = sim.estimatedTime > 0 ? double(sim.estimatedTime) * 1e-6 : 0;  // NCCL's microseconds
    return pt;
  }

 private:
  size_t elem() const { return precision_ == Precision::FP32 ? 4 : 2; }
  uint16_t one_bits() const { return precision_ == Precision::FP16 ? 0x3C00 : 0x3F80; }  // 1.0 in fp16, bf16

  void run(int64_t n, int times, const std::string& at) {
    for (int i = 0; i < times; ++i)
      check(ncclAllReduce(buf_, buf_, size_t(n), nccl_type(precision_), ncclSum, comm_, stream_), "ncclAllReduce");
    wait_polling([&] { return cudaStreamQuery(stream_); }, comm_, std::chrono::steady_clock::now(), timeout_s_,
                 world_.rank(), [&] { abort(); }, at);
  }

  // Ones summed on every rank: the first and last element hold the number of ranks.
  void check_sum(int64_t n, const std::string& at) {
    double first = 0, last = 0;
    if (precision_ == Precision::FP32) {
      float v[2];
      check(cudaMemcpy(&v[0], buf_, 4, cudaMemcpyDeviceToHost), "read the sum");
      check(cudaMemcpy(&v[1], static_cast<float*>(buf_) + (n - 1), 4, cudaMemcpyDeviceToHost), "read the sum");
      first = v[0], last = v[1];
    } else {
      uint16_t v[2];
      check(cudaMemcpy(&v[0], buf_, 2, cudaMemcpyDeviceToHost), "read the sum");
      check(cudaMemcpy(&v[1], static_cast<uint16_t*>(buf_) + (n - 1), 2, cudaMemcpyDeviceToHost), "read the sum");
      auto value = [&](uint16_t bits) {
        if (precision_ == Precision::FP16) return double(__half2float(__ushort_as_half(bits)));
        return double(__bfloat162float(__ushort_as_bfloat16(bits)));
      };
      first = value(v[0]), last = value(v[1]);
    }
    if (first != double(world_.ranks()) || last != double(world_.ranks()))
      throw RunError("sweep: " + at + " gave a wrong sum (" + std::to_string(first) + " and " +
                     std::to_string(last) + ", expected " + std::to_string(world_.ranks()) + ")");
  }

  void abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  MpiWorld& world_;
  Precision precision_;
  double timeout_s_;
  int device_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  void* buf_ = nullptr;
};

}  // namespace

bool nccl_built() { return true; }

int nccl_device(const MpiWorld& world, int device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    throw InputError(field("comm") + " nccl: no CUDA device on this machine (" +
                     std::string(e != cudaSuccess ? cudaGetErrorString(e) : "none found") + ")");
  const int d = cuda_device_for(device, world.layout().local_rank);
  if (d >= count)
    throw InputError(field("device") + ": " + std::to_string(d) + " is not one of this machine's " +
                     std::to_string(count) + " GPU(s) (0 to " + std::to_string(count - 1) + ")");
  return d;
}

std::unique_ptr<NcclAllreduceSweep> make_nccl_sweep(MpiWorld& world, int device, Precision precision,
                                                    int64_t max_count, double timeout_s) {
  return std::make_unique<NcclSweep>(world, device, precision, max_count, timeout_s);
}

std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld& world, Backend& backend, float* grads,
                                                  std::vector<ExchangeBucket> buckets, double timeout_s) {
  return std::make_unique<NcclExchange>(world, backend, grads, std::move(buckets), timeout_s);
}

}  // namespace fuseplan::exec
