// Convolutions through oneDNN (Debian's libdnnl-dev), when it is present at configure
// time: forward, backward data and backward weights primitives, built once per shape and
// cached. Activations with a multiple of the block's channels stay in oneDNN's blocked
// layout between layers (the CPU backend's convention, ops.hpp Backend::blocked), the
// others are NCHW and reordered into the layout the primitive picks; weights are OIHW in
// the parameter buffers and reordered on each call.
#pragma once
#include <memory>
#include <string>

#include "fuseplan/exec/ops.hpp"

namespace fuseplan::exec {

// oneDNN's release and the instruction set its kernels use here ("oneDNN 2.6.3 avx512_core").
std::string dnnl_kernels();

// Channels per block of the layout oneDNN's direct kernels use here: 16 with AVX-512
// (nChw16c), 8 with AVX2 (nChw8c), else 0 (no blocked layout).
int dnnl_block();

class DnnlConv {
 public:
  // Activations whose channel count is a multiple of `block` (not 0) are channel-blocked
  // in the caller's buffers; the others NCHW.
  explicit DnnlConv(int block);
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
