// Convolutions through oneDNN (Debian's libdnnl-dev), when it is present at configure
// time: forward, backward data and backward weights primitives, built once per shape and
// cached, on plain NCHW / OIHW buffers (no layout reorders to pay on each call).
#pragma once
#include <memory>

#include "fuseplan/exec/ops.hpp"

namespace fuseplan::exec {

class DnnlConv {
 public:
  DnnlConv();
  ~DnnlConv();
  void forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y);
  // dx (if not null) receives the input gradient, overwritten; dw and db (if not null)
  // likewise.
  void backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw, float* db);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fuseplan::exec
