// A build without NCCL (no CUDA backend, or no nccl.h under /usr/local/cuda): the NCCL
// exchange and the NCCL sweep are refused with a message that says why.
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {
[[noreturn]] void no_nccl() {
  throw InputError(field("comm") + " nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use " +
                   field("comm") + " mpi)");
}
}  // namespace

bool nccl_built() { return false; }

std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld&, Backend&, float*, std::vector<ExchangeBucket>, double) {
  no_nccl();
}

int nccl_device(const MpiWorld&, int) { no_nccl(); }

std::unique_ptr<NcclAllreduceSweep> make_nccl_sweep(MpiWorld&, int, Precision, int64_t, double) { no_nccl(); }

}  // namespace fuseplan::exec
