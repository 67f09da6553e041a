#include "cpu_blocked.hpp"

#include <omp.h>

#include <cmath>
#include <limits>
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

void batchnorm_forward_train(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                             float* y, float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                             float momentum, float eps) {
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
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const int64_t o = at(B, CB, hw, img, cb, i);
        for (int l = 0; l < B; ++l) y[o + l] = x[o + l] * a[l] + shift[l];
      }
  }
}

void batchnorm_forward_eval(int B, int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                            float* y, const float* running_mean, const float* running_var, float eps) {
  const int CB = c / B;
#pragma omp parallel for schedule(static)
  for (int cb = 0; cb < CB; ++cb) {
    float a[kMaxBlock], shift[kMaxBlock];
    for (int l = 0; l < B; ++l) {
      const int ch = cb * B + l;
      a[l] = gamma[ch] / std::sqrt(running_var[ch] + eps);
      shift[l] = beta[ch] - running_mean[ch] * a[l];
    }
    for (int img = 0; img < n; ++img)
      for (int i = 0; i < hw; ++i) {
        const int64_t o = at(B, CB, hw, img, cb, i);
        for (int l = 0; l < B; ++l) y[o + l] = x[o + l] * a[l] + shift[l];
      }
  }
}

void batchnorm_backward(int B, int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma, float* dbeta,
                        bool add) {
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
        for (int l = 0; l < B; ++l) {
          sum_dy[l] += dy[o + l];
          sum_dy_xhat[l] += dy[o + l] * (x[o + l] - mean[l]) * invstd[l];
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
          const float v = k[l] * (dy[o + l] - mdy[l] - (x[o + l] - mean[l]) * invstd[l] * mdyx[l]);
          dx[o + l] = add ? dx[o + l] + v : v;
        }
      }
  }
}

// Pooling: one plane per (image, channel block), B channels per position.
void maxpool_forward(int B, const PoolShape& s, const float* x, float* y, int32_t* argmax) {
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    const float* in = x + int64_t(plane) * s.h * s.w * B;
    for (int oy = 0; oy < s.p; ++oy)
      for (int ox = 0; ox < s.q; ++ox) {
        float best[kMaxBlock];
        int32_t where[kMaxBlock];
        for (int l = 0; l < B; ++l) best[l] = -std::numeric_limits<float>::infinity(), where[l] = -1;
        for (int ky = 0; ky < s.kernel; ++ky)
          for (int kx = 0; kx < s.kernel; ++kx) {
            const int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            const float* v = in + int64_t(iy * s.w + ix) * B;
            for (int l = 0; l < B; ++l)
              if (v[l] > best[l] || where[l] < 0 || std::isnan(v[l])) best[l] = v[l], where[l] = iy * s.w + ix;
          }
        const int64_t o = ((int64_t(plane) * s.p + oy) * s.q + ox) * B;
        for (int l = 0; l < B; ++l) y[o + l] = best[l], argmax[o + l] = where[l];
      }
  }
}

void maxpool_backward(int B, const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) {
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    float* d = dx + int64_t(plane) * s.h * s.w * B;
    const int64_t base = int64_t(plane) * s.p * s.q * B;
    for (int64_t i = 0; i < int64_t(s.p) * s.q; ++i)
      for (int l = 0; l < B; ++l) d[int64_t(argmax[base + i * B + l]) * B + l] += dy[base + i * B + l];
  }
}

void avgpool_forward(int B, const PoolShape& s, const float* x, float* y) {
  const float inv = 1.0f / float(s.kernel * s.kernel);
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    const float* in = x + int64_t(plane) * s.h * s.w * B;
    for (int oy = 0; oy < s.p; ++oy)
      for (int ox = 0; ox < s.q; ++ox) {
        float sum[kMaxBlock] = {};
        for (int ky = 0; ky < s.kernel; ++ky)
          for (int kx = 0; kx < s.kernel; ++kx) {
            const int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            const float* v = in + int64_t(iy * s.w + ix) * B;
            for (int l = 0; l < B; ++l) sum[l] += v[l];
          }
        const int64_t o = ((int64_t(plane) * s.p + oy) * s.q + ox) * B;
        for (int l = 0; l < B; ++l) y[o + l] = sum[l] * inv;
      }
  }
}

void avgpool_backward(int B, const PoolShape& s, const float* dy, float* dx) {
  const float inv = 1.0f / float(s.kernel * s.kernel);
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    float* d = dx + int64_t(plane) * s.h * s.w * B;
    for (int oy = 0; oy < s.p; ++oy)
      for (int ox = 0; ox < s.q; ++ox) {
        const float* g = dy + ((int64_t(plane) * s.p + oy) * s.q + ox) * B;
        for (int ky = 0; ky < s.kernel; ++ky)
          for (int kx = 0; kx < s.kernel; ++kx) {
            const int iy = oy * s.stride - s.pad + ky, ix = ox * s.stride - s.pad + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            float* v = d + int64_t(iy * s.w + ix) * B;
            for (int l = 0; l < B; ++l) v[l] += g[l] * inv;
          }
      }
  }
}

void adaptive_avgpool_forward(int B, const PoolShape& s, const float* x, float* y) {
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    const float* in = x + int64_t(plane) * s.h * s.w * B;
    for (int oy = 0; oy < s.p; ++oy) {
      const int y0 = oy * s.h / s.p, y1 = ((oy + 1) * s.h + s.p - 1) / s.p;
      for (int ox = 0; ox < s.q; ++ox) {
        const int x0 = ox * s.w / s.q, x1 = ((ox + 1) * s.w + s.q - 1) / s.q;
        float sum[kMaxBlock] = {};
        for (int iy = y0; iy < y1; ++iy)
          for (int ix = x0; ix < x1; ++ix) {
            const float* v = in + int64_t(iy * s.w + ix) * B;
            for (int l = 0; l < B; ++l) sum[l] += v[l];
          }
        const float area = float((y1 - y0) * (x1 - x0));
        const int64_t o = ((int64_t(plane) * s.p + oy) * s.q + ox) * B;
        for (int l = 0; l < B; ++l) y[o + l] = sum[l] / area;
      }
    }
  }
}

void adaptive_avgpool_backward(int B, const PoolShape& s, const float* dy, float* dx) {
  const int planes = s.n * (s.c / B);
#pragma omp parallel for schedule(static)
  for (int plane = 0; plane < planes; ++plane) {
    float* d = dx + int64_t(plane) * s.h * s.w * B;
    for (int oy = 0; oy < s.p; ++oy) {
      const int y0 = oy * s.h / s.p, y1 = ((oy + 1) * s.h + s.p - 1) / s.p;
      for (int ox = 0; ox < s.q; ++ox) {
        const int x0 = ox * s.w / s.q, x1 = ((ox + 1) * s.w + s.q - 1) / s.q;
        const float area = float((y1 - y0) * (x1 - x0));
        const float* g = dy + ((int64_t(plane) * s.p + oy) * s.q + ox) * B;
        for (int iy = y0; iy < y1; ++iy)
          for (int ix = x0; ix < x1; ++ix) {
            float* v = d + int64_t(iy * s.w + ix) * B;
            for (int l = 0; l < B; ++l) v[l] += g[l] / area;
          }
      }
    }
  }
}

}  // namespace fuseplan::exec::blocked
