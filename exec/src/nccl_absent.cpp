// A build without NCCL (no CUDA backend, or no nccl.h under /usr/local/cuda): the NCCL
// exchange is refused with a message that says why.
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

bool nccl_built() { return false; }

std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld&, Backend&, float*, std::vector<ExchangeBucket>, double) {
  throw InputError(field("comm") + " nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use " + field("comm") + " mpi)");
}

int nccl_device(const MpiWorld&, int) {
  throw InputError("--comm nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use --comm mpi)");
}

std::unique_ptr<NcclAllreduceSweep> make_nccl_sweep(MpiWorld& world, int device, Precision, int64_t, double) {
  nccl_device(world, device);
  return nullptr;
}

}  // namespace fuseplan::exec
