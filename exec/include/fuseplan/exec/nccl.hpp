// The plan executor's gradient exchange on GPUs (docs/gpu.md): NCCL communicators
// bootstrapped over MPI, each bucket's allreduce issued on its plan stream's CUDA stream
// the moment its last gradient is produced, ordered after the compute stream by a CUDA
// event (no host synchronisation until finish()), timed by CUDA events.
#pragma once
#include <memory>
#include <vector>

#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/ops.hpp"

namespace fuseplan::exec {

// Whether this build has NCCL (found with the CUDA backend under /usr/local/cuda).
bool nccl_built();

// `backend` must be the CUDA backend and `grads` its flat gradient buffer. Per plan
// stream: a CUDA stream and a communicator split from the world's (ncclCommSplit);
// `hierarchical` buckets reduce inside the node, allreduce across nodes among the local
// roots and broadcast inside the node (`hierarchical_rs`: reduce-scatter, allreduce of
// the shards, allgather, where the count divides by the node's ranks); every other
// algorithm name is NCCL's own allreduce (NCCL_ALGO chooses ring or tree, per job).
// FP16/BF16 buckets are converted into a 16-bit buffer and back around the allreduce.
// Throws InputError where NCCL was not built.
std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld& world, Backend& backend, float* grads,
                                                  std::vector<ExchangeBucket> buckets, double timeout_s);

// One message size of an NCCL allreduce sweep (`fuseplan-exec sweep --comm nccl`).
struct NcclSweepPoint {
  SweepTiming timing;          // the slowest rank's mean over the timed allreduces (time_allreduces)
  double nccl_estimate_s = 0;  // NCCL's own estimate (ncclGroupSimulateEnd), 0 where it gives none
};

// The GPU this rank uses: `device`, or local rank modulo the node's GPUs when negative.
// InputError where the machine has no CUDA device, `device` is not one of its GPUs, or
// the build has no NCCL. Local: call it before any rank enters a collective.
int nccl_device(const MpiWorld& world, int device);

// NCCL's allreduce (sum, NCCL's choice of algorithm and protocol; NCCL_ALGO and
// NCCL_PROTO steer it per job) on one communicator of all ranks (collective: every rank
// calls it), each on its GPU `device` (from nccl_device), over a buffer of up to
// `max_count` elements of `precision`. A collective that does not end within `timeout_s`
// aborts the communicator and throws RunError.
class NcclAllreduceSweep {
 public:
  virtual ~NcclAllreduceSweep() = default;
  // `count` elements of ones: one allreduce whose sum is checked (RunError when it is
  // not the number of ranks), `warmup` untimed, then timed as time_allreduces does;
  // NCCL's estimate for the same call.
  virtual NcclSweepPoint measure(int64_t count, int warmup, int iterations, double seconds_per_size) = 0;
};
std::unique_ptr<NcclAllreduceSweep> make_nccl_sweep(MpiWorld& world, int device, Precision precision,
                                                    int64_t max_count, double timeout_s);

}  // namespace fuseplan::exec
