// Builds without nvcc: the CUDA backend's entry points say so (CMake compiles this file
// instead of cuda_backend.cu).
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

int cuda_device_count() { return 0; }
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions&) {
  throw InputError(field("backend") + " cuda: this build has no CUDA backend (CMake found no nvcc; valid here: cpu)");
}

}  // namespace fuseplan::exec
