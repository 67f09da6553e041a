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
    ncclUniqueId id;
    if (world.rank() == 0) check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, world.comm()) != MPI_SUCCESS) throw RunError("MPI_Bcast of the NCCL id");
    check(ncclCommInitRank(&world_comm_, world.ranks(), id, world.rank()), "ncclCommInitRank");
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
    // The host waits (this is the exposed communication), with a deadline: a rank that
    // died leaves NCCL waiting forever.
    const auto t0 = std::chrono::steady_clock::now();
    for (size_t b = 0; b < buckets_.size(); ++b) {
      for (;;) {
        cudaError_t q = cudaEventQuery(events_[b].end);
        if (q == cudaSuccess) break;
        if (q != cudaErrorNotReady) check(q, "allreduce");
        ncclResult_t async = ncclSuccess;
        ncclCommGetAsyncError(streams_[size_t(buckets_[b].stream)].all, &async);
        if (async != ncclSuccess) {  // NCCL's rule: a communicator with an async error is aborted
          abort_all();
          check(async, "allreduce");
        }
        if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s_) {
          abort_all();
          throw RunError("rank " + std::to_string(rank()) + ": the NCCL allreduce of bucket " + std::to_string(b) +
                         " did not finish in " + std::to_string(int(timeout_s_)) + " s: a rank died or hangs");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
      }
    }
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

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld& world, Backend& backend, float* grads,
                                                  std::vector<ExchangeBucket> buckets, double timeout_s) {
  return std::make_unique<NcclExchange>(world, backend, grads, std::move(buckets), timeout_s);
}

}  // namespace fuseplan::exec
