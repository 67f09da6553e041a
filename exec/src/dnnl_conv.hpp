// Convolutions through oneDNN (Debian's libdnnl-dev), when it is present at configure
// time: forward, backward data and backward weights primitives, built once per shape and
// cached. The executor's buffers are plain NCHW / OIHW; each call reorders its operands
// into the blocked layouts oneDNN chose for the shape (and the results back), since its
// direct JIT kernels on blocked layouts beat im2col + GEMM by more than the reorders cost.
#pragma once
#include <memory>
#include <string>

#include "fuseplan/exec/ops.hpp"

namespace fuseplan::exec {

// oneDNN's release and the instruction set its kernels use here ("oneDNN 2.6.3 avx512_core").
std::string dnnl_kernels();

class DnnlConv {
 public:
  DnnlConv();
  ~DnnlConv();
  void forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y);
  // dx (if not null) receives the input gradient, added to it when accumulate_dx, else
  // overwritten; dw and db (if not null) are overwritten.
  void backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw, float* db,
                bool accumulate_dx);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fuseplan::exec
