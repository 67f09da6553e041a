// CUDA, cuDNN, cuBLAS, NCCL and MPI failures as typed errors that name the call site
// (file:line): InputError (exit 2) where the user can act on it (no usable GPU, out of
// memory at this batch), RunError (exit 1) otherwise. `fuseplan-exec run` prefixes the
// rank and aborts the MPI job.
#pragma once
#include <source_location>
#include <string>

#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

// "exec/src/cuda_backend.cu:123"
inline std::string call_site(const std::source_location& at) {
  std::string file = at.file_name();
  const size_t p = file.rfind("/exec/");
  if (p != std::string::npos) file = file.substr(p + 1);
  return file + ":" + std::to_string(at.line());
}

[[noreturn]] inline void device_failure(const std::string& what, bool user_can_fix, const std::source_location& at) {
  const std::string message = what + " (" + call_site(at) + ")";
  if (user_can_fix) throw InputError(message);
  throw RunError(message);
}

}  // namespace fuseplan::exec
