// The CPU backend's ops on channel-blocked activations ([n, c / B, h, w, B], oneDNN's
// nChw16c / nChw8c), which its oneDNN convolutions read and write: BatchNorm, pooling,
// the input's import and flattening. Same arithmetic as the NCHW ops in cpu_backend.cpp,
// the B channels of a block side by side in the innermost (vectorised) loop. With B = 1
// the layout is NCHW: the backend's pooling is these functions for either layout.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>

#include "fuseplan/exec/ops.hpp"

namespace fuseplan::exec::blocked {

// g where a ReLU's output y is positive, else +0: the ReLU's backward select, as a bit
// mask (no branch, which on activations where half the values are masked mispredicts
// every other element, and loops vectorise). For both layouts' fused ReLUs.
inline float relu_masked(float g, float y) {
  return std::bit_cast<float>(std::bit_cast<uint32_t>(g) & -uint32_t(y > 0));
}

void import_nchw(int B, int n, int c, int hw, const float* plain, float* dst);
void flatten_forward(int B, int n, int c, int hw, const float* x, float* y);                  // to NCHW order
void flatten_backward(int B, int n, int c, int hw, const float* dy, float* dx, bool add);     // from NCHW order

// With `relu`, the forward writes max(0, y) (a BatchNorm fused with the ReLU after it);
// batchnorm_relu_backward takes that ReLU's output relu_y and its gradient dy, which it
// masks (0 where relu_y <= 0) in place.
void batchnorm_forward_train(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                             float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                             float momentum, float eps, bool relu = false);
void batchnorm_forward_eval(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                            float* y, const float* running_mean, const float* running_var, float eps,
                            bool relu = false);
void batchnorm_backward(int B, int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta,
                        bool add);
void batchnorm_relu_backward(int B, int n, int c, int hw, const float* x, const float* gamma, const float* relu_y,
                             float* dy, const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                             float* dbeta, bool add);

void maxpool_forward(int B, const PoolShape& s, const float* x, float* y, int32_t* argmax);
void maxpool_backward(int B, const PoolShape& s, const float* dy, const int32_t* argmax, float* dx);
void avgpool_forward(int B, const PoolShape& s, const float* x, float* y);
void avgpool_backward(int B, const PoolShape& s, const float* dy, float* dx);
void adaptive_avgpool_forward(int B, const PoolShape& s, const float* x, float* y);
void adaptive_avgpool_backward(int B, const PoolShape& s, const float* dy, float* dx);

}  // namespace fuseplan::exec::blocked
