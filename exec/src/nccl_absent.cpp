// A build without NCCL (no CUDA backend, or no nccl.h under /usr/local/cuda): the NCCL
// exchange is refused with a message that says why.
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

bool nccl_built() { return false; }

std::unique_ptr<TimedExchange> make_nccl_exchange(MpiWorld&, Backend&, float*, std::vector<ExchangeBucket>, double) {
  throw InputError(field("comm") + " nccl: this build has no NCCL (it needs the CUDA backend and nccl.h; use " + field("comm") + " mpi)");
}

}  // namespace fuseplan::exec
