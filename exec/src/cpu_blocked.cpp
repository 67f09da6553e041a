#include "cpu_blocked.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace fuseplan::exec::blocked {

namespace {
constexpr int kMaxBlock = 16;
// Offset of (img, channel block cb, position i) in a blocked [n, c, hw] activation.
inline int64_t at(int B, int cb_count, int hw, int img, int cb, int64_t i) {
  return ((int64_t(img) * cb_count + cb) * hw + i) * B;
}
}  // namespace

// Calls f(plain, blocked) with the offsets of every element of an [n, c, hw] activation
// in NCHW and in the blocked layout (threads over images and channel blocks).
template <typename F>
void each_element(int B, int n, int c, int hw, F f) {
  const int CB = c / B;
#pragma omp parallel for collapse(2) schedule(static)
  for (int img = 0; img < n; ++img)
    for (int cb = 0; cb < CB; ++cb)
      for (int i = 0; i < hw; ++i)
        for (int l = 0; l < B; ++l) f((int64_t(img) * c + cb * B + l) * hw + i, at(B, CB, hw, img, cb, i) + l);
}

void import_nchw(int B, int n, int c, int hw, const float* plain, float* dst) {
  each_element(B, n, c, hw, [&](int64_t p, int64_t b) { dst[b] = plain[p]; });
}

void flatten_forward(int B, int n, int c, int hw, const float* x, float* y) {
  each_element(B, n, c, hw, [&](int64_t p, int64_t b) { y[p] = x[b]; });
}

void flatten_backward(int B, int n, int c, int hw, const float* dy, float* dx, bool add) {
  each_element(B, n, c, hw, [&](int64_t p, int64_t b) { dx[b] = add ? dx[b] + dy[p] : dy[p]; });
}

namespace {
// y = x a + shift for one channel block, then max(0, y) with `relu` (the ReLU's own
// select, so the fused op's values are the two ops' bits).
template <bool Relu>
void scale_shift_impl(int B, int CB, int n, int hw, int cb, const float* x, const float* a, const float* shift,
                      float* y) {
  for (int img = 0; img < n; ++img)
    for (int i = 0; i < hw; ++i) {
      const int64_t o = at(B, CB, hw, img, cb, i);
      for (int l = 0; l < B; ++l) {
        const float v = x[o + l] * a[l] + shift[l];
        if constexpr (Relu) y[o + l] = v > 0 ? v : 0.0f;
        else y[o + l] = v;
      }
    }
}
void scale_shift(int B, int CB, int n, int hw, int cb, const float* x, const float* a, const float* shift, float* y,
                 bool relu) {
  if (relu) scale_shift_impl<true>(B, CB, n, hw, cb, x, a, shift, y);
  else scale_shift_impl<false>(B, CB, n, hw, cb, x, a, shift, y);
}

// Masked: dy is the fused ReLU's gradient, masked by relu_y in the sums' pass and written
// back masked (nothing reads it afterwards), so the second pass reads dy alone: the
// ReLU's output, written long before in the forward pass, is read from memory once.
template <bool Masked>
void batchnorm_backward_impl(int B, int n, int c, int hw, const float* x, const float* gamma,
                             std::conditional_t<Masked, float*, const float*> dy, const float* save_mean,
                             const float* save_invstd, float* dx, float* dgamma, float* dbeta, bool add,
                             const float* relu_y) {
  const int CB = c / B;
  const double count = double(n) * hw;
#pragma omp parallel for schedule(static)
  for (int cb = 0; cb < CB; ++cb) {
    double sum_dy[kMaxBlock] = {}, sum_dy_xhat[kMaxBlock] = {};
    float mean[kMaxBlock], invstd[kMaxBlock];
    for (int l = 0; l < B; ++l) mean[l] = save_mean[cb * B + l], invstd[l] = save_invstd[cb * B + l];
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const int64_t o = at(B, CB, hw, img, cb, i);
#pragma omp simd  // lanes are channels: each keeps its own sums in order
        for (int l = 0; l < B; ++l) {
          const float g = Masked ? relu_masked(dy[o + l], relu_y[o + l]) : dy[o + l];
          if constexpr (Masked) dy[o + l] = g;
          sum_dy[l] += g;
          sum_dy_xhat[l] += g * (x[o + l] - mean[l]) * invstd[l];
        }
      }
    float k[kMaxBlock], mdy[kMaxBlock], mdyx[kMaxBlock];
    for (int l = 0; l < B; ++l) {
      const int ch = cb * B + l;
      dgamma[ch] = float(sum_dy_xhat[l]);
      dbeta[ch] = float(sum_dy[l]);
      k[l] = gamma[ch] * invstd[l];
      mdy[l] = float(sum_dy[l] / count);
      mdyx[l] = float(sum_dy_xhat[l] / count);
    }
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const int64_t o = at(B, CB, hw, img, cb, i);
        for (int l = 0; l < B; ++l) {
          const float v =
              k[l] * (dy[o + l] - mdy[l] - (x[o + l] - mean[l]) * invstd[l] * mdyx[l]);
          dx[o + l] = add ? dx[o + l] + v : v;
        }
      }
  }
}
}  // namespace

void batchnorm_forward_train(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                             float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                             float momentum, float eps, bool relu) {
  const int CB = c / B;
  const double count = double(n) * hw;
#pragma omp parallel for schedule(static)
  for (int cb = 0; cb < CB; ++cb) {
    // Two passes (mean, then squared deviations), each lane of the block a channel.
    double sum[kMaxBlock] = {}, sq[kMaxBlock] = {}, mean[kMaxBlock];
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const float* p = x + at(B, CB, hw, img, cb, i);
        for (int l = 0; l < B; ++l) sum[l] += p[l];
      }
    for (int l = 0; l < B; ++l) mean[l] = sum[l] / count;
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const float* p = x + at(B, CB, hw, img, cb, i);
        for (int l = 0; l < B; ++l) sq[l] += (p[l] - mean[l]) * (p[l] - mean[l]);
      }
    float a[kMaxBlock], shift[kMaxBlock];
    for (int l = 0; l < B; ++l) {
      const int ch = cb * B + l;
      const double var = sq[l] / count;
      const float invstd = float(1.0 / std::sqrt(var + eps));
      save_mean[ch] = float(mean[l]);
      save_invstd[ch] = invstd;
      running_mean[ch] = float((1 - momentum) * running_mean[ch] + momentum * mean[l]);
      running_var[ch] =
          float((1 - momentum) * running_var[ch] + momentum * (count > 1 ? var * count / (count - 1) : var));
      a[l] = gamma[ch] * invstd;
      shift[l] = beta[ch] - float(mean[l]) * a[l];
    }
    scale_shift(B, CB, n, hw, cb, x, a, shift, y, relu);
  }
}

void batchnorm_forward_eval(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                            float* y, const float* running_mean, const float* running_var, float eps, bool relu) {
  const int CB = c / B;
#pragma omp parallel for schedule(static)
  for (int cb = 0; cb < CB; ++cb) {
    float a[kMaxBlock], shift[kMaxBlock];
    for (int l = 0; l < B; ++l) {
      const int ch = cb * B + l;
      a[l] = gamma[ch] / std::sqrt(running_var[ch] + eps);
      shift[l] = beta[ch] - running_mean[ch] * a[l];
    }
    scale_shift(B, CB, n, hw, cb, x, a, shift, y, relu);
  }
}

void batchnorm_backward(int B, int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta,
                        bool add) {
  batchnorm_backward_impl<false>(B, n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta, add, nullptr);
}

void batchnorm_relu_backward(int B, int n, int c, int hw, const float* x, const float* gamma, const float* relu_y,
                             float* dy, const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                             float* dbeta, bool add) {
  batchnorm_backward_impl<true>(B, n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta, add, relu_y);
}

// Pooling: one plane per (image, channel block), B channels per position.
namespace {
// An output position's window: input rows [y0, y1) and columns [x0, x1) of its plane.
struct Window {
  int y0, y1, x0, x1, w;
  // g(pos) for each input position pos = iy * w + ix, row by row.
  template <typename G>
  void each(G g) const {
    for (int iy = y0; iy < y1; ++iy)
      for (int ix = x0; ix < x1; ++ix) g(iy * w + ix);
  }
  float area() const { return float((y1 - y0) * (x1 - x0)); }
};

// A kernel x kernel window at the stride, clipped to the plane (padding holds nothing).
Window kernel_window(const PoolShape& s, int oy, int ox) {
  const int y = oy * s.stride - s.pad, x = ox * s.stride - s.pad;
  return {std::max(y, 0), std::min(y + s.kernel, s.h), std::max(x, 0), std::min(x + s.kernel, s.w), s.w};
}

// Adaptive pooling's window: rows [floor(oy h / p), ceil((oy + 1) h / p)), columns alike.
Window adaptive_window(const PoolShape& s, int oy, int ox) {
  return {oy * s.h / s.p, ((oy + 1) * s.h + s.p - 1) / s.p, ox * s.w / s.q, ((ox + 1) * s.w + s.q - 1) / s.q, s.w};
}

// f(in, out, window) for every output position of every plane (threads over planes): `in`
// is the offset of the plane's first input element, `out` of the position's first output
// element; positions hold B channels side by side.
template <typename Block, typename WindowOf, typename F>
void each_output(Block B, const PoolShape& s, WindowOf window_of, F f) {
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane)
    for (int oy = 0; oy < s.p; ++oy)
      for (int ox = 0; ox < s.q; ++ox)
        f(int64_t(plane) * s.h * s.w * B, ((int64_t(plane) * s.p + oy) * s.q + ox) * B, window_of(s, oy, ox));
}
// f(B) with B a compile-time 1 for NCHW (B = 1), so that its lane loops compile to scalar
// code, else f(B) as given.
template <typename F>
void with_block(int B, F f) {
  if (B == 1) f(std::integral_constant<int, 1>{});
  else f(B);
}
}  // namespace

void maxpool_forward(int block, const PoolShape& s, const float* x, float* y, int32_t* argmax) {
  with_block(block, [&](auto B) {
    each_output(B, s, kernel_window, [&](int64_t in, int64_t o, const Window& win) {
      float best[kMaxBlock];
      int32_t where[kMaxBlock];
      for (int l = 0; l < B; ++l) best[l] = -std::numeric_limits<float>::infinity(), where[l] = -1;
      win.each([&](int pos) {
        const float* v = x + in + int64_t(pos) * B;
        // Selects, not a branch (on data in random order, a branch mispredicts often):
        // the first value, a larger one or a NaN (PyTorch's rule: the last NaN) is taken.
        for (int l = 0; l < B; ++l) {
          const bool take = v[l] > best[l] || where[l] < 0 || v[l] != v[l];
          best[l] = take ? v[l] : best[l];
          where[l] = take ? pos : where[l];
        }
      });
      for (int l = 0; l < B; ++l) y[o + l] = best[l], argmax[o + l] = where[l];
    });
  });
}

void maxpool_backward(int block, const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) {
  with_block(block, [&](auto B) {
    const int planes = s.n * (s.c / B);
    #pragma omp parallel for schedule(static)
    for (int plane = 0; plane < planes; ++plane) {
      float* d = dx + int64_t(plane) * s.h * s.w * B;
      const int64_t base = int64_t(plane) * s.p * s.q * B;
      for (int64_t i = 0; i < int64_t(s.p) * s.q; ++i)
        for (int l = 0; l < B; ++l) d[int64_t(argmax[base + i * B + l]) * B + l] += dy[base + i * B + l];
    }
  });
}

// Average pooling divides by the whole kernel (padding counts as zeros); adaptive pooling
// by its window's area.
void avgpool_forward(int block, const PoolShape& s, const float* x, float* y) {
  with_block(block, [&](auto B) {
    const float inv = 1.0f / float(s.kernel * s.kernel);
    each_output(B, s, kernel_window, [&](int64_t in, int64_t o, const Window& win) {
      float sum[kMaxBlock] = {};
      win.each([&](int pos) {
        const float* v = x + in + int64_t(pos) * B;
        for (int l = 0; l < B; ++l) sum[l] += v[l];
      });
      for (int l = 0; l < B; ++l) y[o + l] = sum[l] * inv;
    });
  });
}

void avgpool_backward(int block, const PoolShape& s, const float* dy, float* dx) {
  with_block(block, [&](auto B) {
    const float inv = 1.0f / float(s.kernel * s.kernel);
    each_output(B, s, kernel_window, [&](int64_t in, int64_t o, const Window& win) {
      win.each([&](int pos) {
        float* v = dx + in + int64_t(pos) * B;
        for (int l = 0; l < B; ++l) v[l] += dy[o + l] * inv;
      });
    });
  });
}

void adaptive_avgpool_forward(int block, const PoolShape& s, const float* x, float* y) {
  with_block(block, [&](auto B) {
    each_output(B, s, adaptive_window, [&](int64_t in, int64_t o, const Window& win) {
      float sum[kMaxBlock] = {};
      win.each([&](int pos) {
        const float* v = x + in + int64_t(pos) * B;
        for (int l = 0; l < B; ++l) sum[l] += v[l];
      });
      for (int l = 0; l < B; ++l) y[o + l] = sum[l] / win.area();
    });
  });
}

void adaptive_avgpool_backward(int block, const PoolShape& s, const float* dy, float* dx) {
  with_block(block, [&](auto B) {
    each_output(B, s, adaptive_window, [&](int64_t in, int64_t o, const Window& win) {
      win.each([&](int pos) {
        float* v = dx + in + int64_t(pos) * B;
        for (int l = 0; l < B; ++l) v[l] += dy[o + l] / win.area();
      });
    });
  });
}

}  // namespace fuseplan::exec::blocked
