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

}  // namespace fuseplan::exec
