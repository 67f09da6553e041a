// The CUDA backend: convolutions and BatchNorm through cuDNN 9 (its convolution and
// batch-normalisation calls), linear layers through cuBLAS, everything else as small
// CUDA kernels. Same interface and semantics as the CPU backend (ops.hpp): backward adds
// into dx, parameter gradients are overwritten.
//
// What is still a first stage (docs/gpu.md):
// - buffers are CUDA managed memory, so checkpoints and the MPI exchange read them on the
//   host unchanged (after synchronize(), which the network calls once per layer for its
//   per-layer timers). The optimizer and the overflow check run on the device.
// - storage is FP32; FP16/BF16 storage is a cast-and-back on the device (round()), and
//   the arithmetic is FP32 (TF32 on tensor cores when CudaOptions::tf32).
// Convolution algorithms are deterministic ones: cuDNN's heuristics' first, or the fastest
// when timed (CudaOptions::conv_algos), recorded per shape in a file a later run reuses
// (conv_algos.hpp). Every reduction kernel has a fixed order, so with the same algorithms
// results do not change from run to run.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fuseplan/exec/conv_algos.hpp"
#include "fuseplan/exec/half.hpp"
#include "fuseplan/exec/ops.hpp"
#include "device_check.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {

void check(cudaError_t e, const char* what, std::source_location at = std::source_location::current()) {
  if (e == cudaSuccess) return;
  const bool oom = e == cudaErrorMemoryAllocation;
  const bool no_gpu = e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice;
  device_failure(std::string("CUDA: ") + what + ": " + cudaGetErrorString(e) +
                     (oom ? " (a smaller " + field("batch_per_gpu") + " or " + field("precision") + " fp16 may fit)" : "") +
                     (no_gpu ? " (" + field("backend") + " cpu runs without a GPU)" : ""),
                 oom || no_gpu, at);
}
void check(cudnnStatus_t e, const char* what, std::source_location at = std::source_location::current()) {
  if (e == CUDNN_STATUS_SUCCESS) return;
  const bool oom = e == CUDNN_STATUS_ALLOC_FAILED;
  device_failure(std::string("cuDNN: ") + what + ": " + cudnnGetErrorString(e) +
                     (oom ? " (a smaller " + field("batch_per_gpu") + " may fit)" : ""),
                 oom, at);
}
void check(cublasStatus_t e, const char* what, std::source_location at = std::source_location::current()) {
  if (e == CUBLAS_STATUS_SUCCESS) return;
  const bool oom = e == CUBLAS_STATUS_ALLOC_FAILED;
  device_failure(std::string("cuBLAS: ") + what + ": status " + std::to_string(int(e)), oom, at);
}

constexpr int kThreads = 256;
int blocks_for(size_t n) { return static_cast<int>(std::min<size_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

#define FUSEPLAN_GRID_LOOP(i, n) \
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < (n); i += size_t(gridDim.x) * blockDim.x)

__global__ void k_round_fp16(float* x, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) x[i] = __half2float(__float2half_rn(x[i]));
}
__global__ void k_round_bf16(float* x, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) x[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
}
__global__ void k_relu_fwd(const float* x, float* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = x[i] > 0 ? x[i] : 0.0f;
}
__global__ void k_relu_bwd(const float* y, const float* dy, float* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] += y[i] > 0 ? dy[i] : 0.0f;
}
__global__ void k_add(const float* a, const float* b, float* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = a[i] + b[i];
}
__global__ void k_accumulate(const float* dy, float* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] += dy[i];
}
__global__ void k_mul(const float* x, const float* m, float* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = x[i] * m[i];
}
__global__ void k_mul_acc(const float* dy, const float* m, float* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] += dy[i] * m[i];
}
// y[row, j] += b[j] over n rows of `out`.
__global__ void k_bias_rows(float* y, const float* b, int n, int out) {
  FUSEPLAN_GRID_LOOP(i, size_t(n) * out) y[i] += b[i % out];
}
// db[j] = sum over rows of dy[row, j], one thread per column, rows in order.
__global__ void k_col_sums(const float* dy, float* db, int n, int out) {
  FUSEPLAN_GRID_LOOP(j, size_t(out)) {
    float s = 0;
    for (int r = 0; r < n; ++r) s += dy[size_t(r) * out + j];
    db[j] = s;
  }
}

struct PoolArgs {
  int planes, h, w, kernel, stride, pad, p, q;
};
PoolArgs pool_args(const PoolShape& s) { return {s.n * s.c, s.h, s.w, s.kernel, s.stride, s.pad, s.p, s.q}; }

// The maximum of output (oy, ox)'s pooling window by PyTorch's rule (the first of equal
// maxima, the last NaN): value(i) reads the input plane at i = iy w + ix, `at` is where the
// maximum was.
template <class Value>
__device__ float window_max(int oy, int ox, int h, int w, int kernel, int stride, int pad, Value value, int& at) {
  float best = -INFINITY;
  at = -1;
  for (int ky = 0; ky < kernel; ++ky)
    for (int kx = 0; kx < kernel; ++kx) {
      const int iy = oy * stride - pad + ky, ix = ox * stride - pad + kx;
      if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
      const float v = value(iy * w + ix);
      if (v > best || at < 0 || isnan(v)) {
        best = v;
        at = iy * w + ix;
      }
    }
  return best;
}
__global__ void k_maxpool_fwd(PoolArgs a, const float* x, float* y, int32_t* argmax) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.planes) * a.p * a.q) {
    const int ox = int(o % a.q), oy = int(o / a.q % a.p);
    const size_t plane = o / (size_t(a.p) * a.q);
    const float* in = x + plane * a.h * a.w;
    int at;
    y[o] = window_max(oy, ox, a.h, a.w, a.kernel, a.stride, a.pad, [&](int i) { return in[i]; }, at);
    argmax[o] = at;
  }
}
// Output rows oy whose window [oy s - pad, oy s - pad + k) holds input row i.
__device__ void window_range(int i, int stride, int pad, int k, int outs, int& lo, int& hi) {
  const int num = i + pad - k + 1;  // oy s >= num
  lo = num <= 0 ? 0 : (num + stride - 1) / stride;
  hi = min(outs - 1, (i + pad) / stride);
}
// Input element e of a pooling layer: its plane, row and column, and the outputs
// [y0, y1] x [x0, x1] whose windows hold it (the backward kernels gather from these).
struct InputWindows {
  size_t plane;
  int iy, ix, y0, y1, x0, x1;
};
__device__ InputWindows input_windows(const PoolArgs& a, size_t e) {
  InputWindows w;
  w.ix = int(e % a.w), w.iy = int(e / a.w % a.h);
  w.plane = e / (size_t(a.h) * a.w);
  window_range(w.iy, a.stride, a.pad, a.kernel, a.p, w.y0, w.y1);
  window_range(w.ix, a.stride, a.pad, a.kernel, a.q, w.x0, w.x1);
  return w;
}
// Gathered per input element (no atomics): dx[i] += dy of the outputs whose argmax is i.
__global__ void k_maxpool_bwd(PoolArgs a, const float* dy, const int32_t* argmax, float* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.planes) * a.h * a.w) {
    const InputWindows w = input_windows(a, e);
    const int self = w.iy * a.w + w.ix;
    float g = 0;
    for (int oy = w.y0; oy <= w.y1; ++oy)
      for (int ox = w.x0; ox <= w.x1; ++ox) {
        const size_t o = (w.plane * a.p + oy) * a.q + ox;
        if (argmax[o] == self) g += dy[o];
      }
    dx[e] += g;
  }
}
__global__ void k_avgpool_fwd(PoolArgs a, const float* x, float* y) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.planes) * a.p * a.q) {
    const int ox = int(o % a.q), oy = int(o / a.q % a.p);
    const float* in = x + o / (size_t(a.p) * a.q) * a.h * a.w;
    float sum = 0;
    for (int ky = 0; ky < a.kernel; ++ky)
      for (int kx = 0; kx < a.kernel; ++kx) {
        const int iy = oy * a.stride - a.pad + ky, ix = ox * a.stride - a.pad + kx;
        if (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) sum += in[iy * a.w + ix];
      }
    y[o] = sum / float(a.kernel * a.kernel);
  }
}
__global__ void k_avgpool_bwd(PoolArgs a, const float* dy, float* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.planes) * a.h * a.w) {
    const InputWindows w = input_windows(a, e);
    float g = 0;
    for (int oy = w.y0; oy <= w.y1; ++oy)
      for (int ox = w.x0; ox <= w.x1; ++ox) g += dy[(w.plane * a.p + oy) * a.q + ox];
    dx[e] += g / float(a.kernel * a.kernel);
  }
}
// PyTorch's adaptive bins: floor(i h / p) .. ceil((i + 1) h / p).
__device__ int bin_lo(int o, int in, int out) { return o * in / out; }
__device__ int bin_hi(int o, int in, int out) { return ((o + 1) * in + out - 1) / out; }
__global__ void k_adaptive_fwd(PoolArgs a, const float* x, float* y) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.planes) * a.p * a.q) {
    const int ox = int(o % a.q), oy = int(o / a.q % a.p);
    const float* in = x + o / (size_t(a.p) * a.q) * a.h * a.w;
    const int y0 = bin_lo(oy, a.h, a.p), y1 = bin_hi(oy, a.h, a.p);
    const int x0 = bin_lo(ox, a.w, a.q), x1 = bin_hi(ox, a.w, a.q);
    float sum = 0;
    for (int iy = y0; iy < y1; ++iy)
      for (int ix = x0; ix < x1; ++ix) sum += in[iy * a.w + ix];
    y[o] = sum / float((y1 - y0) * (x1 - x0));
  }
}
// The gradient of adaptive-pooling input (iy, ix) of an h x w plane pooled to p x q:
// grad(oy, ox) / the bin's size over the bins that hold it.
template <class Grad>
__device__ float adaptive_gather(int iy, int ix, int h, int w, int p, int q, Grad grad) {
  float g = 0;
  for (int oy = 0; oy < p; ++oy) {
    const int y0 = bin_lo(oy, h, p), y1 = bin_hi(oy, h, p);
    if (iy < y0 || iy >= y1) continue;
    for (int ox = 0; ox < q; ++ox) {
      const int x0 = bin_lo(ox, w, q), x1 = bin_hi(ox, w, q);
      if (ix >= x0 && ix < x1) g += grad(oy, ox) / float((y1 - y0) * (x1 - x0));
    }
  }
  return g;
}
__global__ void k_adaptive_bwd(PoolArgs a, const float* dy, float* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.planes) * a.h * a.w) {
    const int ix = int(e % a.w), iy = int(e / a.w % a.h);
    const size_t plane = e / (size_t(a.h) * a.w);
    dx[e] += adaptive_gather(iy, ix, a.h, a.w, a.p, a.q,
                             [&](int oy, int ox) { return dy[(plane * a.p + oy) * a.q + ox]; });
  }
}
// The optimizer, per slot: first the LARS norms, then the update over the slot's elements.
// The norms are summed in double in a fixed order, so that they do not depend on
// scheduling: each chunk of kNormChunk elements by one block (blockIdx.x the chunk,
// blockIdx.y the slot), then each slot's chunks in order by one thread. With one block per
// whole slot, a 2.4 M-element tensor is summed by 256 threads on one multiprocessor:
// ResNet-50's optimizer step measured 4.5 ms on an H200, about 20 times what its memory
// traffic needs (an estimate of where it went, not yet measured per kernel).
constexpr int64_t kNormChunk = int64_t(1) << 16;
struct DevSlot {
  int64_t offset, numel;
  int plain;
  int64_t chunk0;  // the slot's first chunk among all slots' (partial sums)
  bool operator==(const DevSlot&) const = default;
};
__global__ void k_lars_partials(const DevSlot* slots, const float* w, const float* g, int lars, double* partials) {
  const DevSlot s = slots[blockIdx.y];
  const int64_t begin = int64_t(blockIdx.x) * kNormChunk;
  if (begin >= s.numel) return;  // the whole block: past this slot's last chunk
  const int64_t end = begin + kNormChunk < s.numel ? begin + kNormChunk : s.numel;
  __shared__ double sw[kThreads], sg[kThreads];
  double ww = 0, gg = 0;
  if (lars && !s.plain)
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const double a = w[s.offset + i], b = g[s.offset + i];
      ww += a * a, gg += b * b;
    }
  sw[threadIdx.x] = ww, sg[threadIdx.x] = gg;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) sw[threadIdx.x] += sw[threadIdx.x + half], sg[threadIdx.x] += sg[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partials[2 * (s.chunk0 + blockIdx.x)] = sw[0];
    partials[2 * (s.chunk0 + blockIdx.x) + 1] = sg[0];
  }
}
__global__ void k_lars_rates(const DevSlot* slots, int k, const double* partials, double inv_scale, double trust,
                             double wd, double eps, int lars, double* rates) {
  const int j = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (j >= k) return;
  const DevSlot s = slots[j];
  double local = 1.0;
  if (lars && !s.plain) {
    double ww = 0, gg = 0;
    for (int64_t c = 0; c * kNormChunk < s.numel; ++c) {
      ww += partials[2 * (s.chunk0 + c)];
      gg += partials[2 * (s.chunk0 + c) + 1];
    }
    const double wn = sqrt(ww), gn = sqrt(gg) * inv_scale;
    if (wn > 0 && gn > 0) local = trust * wn / (gn + wd * wn + eps);
  }
  rates[j] = local;
}
__global__ void k_optimizer_update(const DevSlot* slots, const double* rates, float* w, float* v, const float* g,
                                   float* params, double lr, double m, double wd, double inv_scale, int working) {
  const DevSlot s = slots[blockIdx.y];
  const double rate = lr * rates[blockIdx.y], decay = s.plain ? 0.0 : wd;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < s.numel; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = s.offset + i;
    const double grad = double(g[k]) * inv_scale + decay * w[k];
    const float vk = float(m * v[k] + rate * grad);
    v[k] = vk;
    const float wk = w[k] - vk;
    w[k] = wk;
    params[k] = working == 1 ? __half2float(__float2half_rn(wk)) : working == 2 ? __bfloat162float(__float2bfloat16_rn(wk)) : wk;
  }
}
__global__ void k_nonfinite(const float* x, size_t n, int* flag) {
  FUSEPLAN_GRID_LOOP(i, n) if (!isfinite(x[i])) *flag = 1;
}

// Half-precision storage (CudaOptions::storage): activations are 16-bit values T
// (__half or __nv_bfloat16) in NHWC, every kernel computes in FP32 and rounds what it
// stores to nearest even, as the CPU's emulation rounds.
__device__ inline float ld(float x) { return x; }
__device__ inline float ld(__half x) { return __half2float(x); }
__device__ inline float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T> __device__ inline T st(float x);
template <> __device__ inline float st<float>(float x) { return x; }
template <> __device__ inline __half st<__half>(float x) { return __float2half_rn(x); }
template <> __device__ inline __nv_bfloat16 st<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class T> __global__ void h_relu_fwd(const T* x, T* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) {
    const float v = ld(x[i]);
    y[i] = st<T>(v > 0 ? v : 0.0f);
  }
}
template <class T> __global__ void h_relu_bwd(const T* y, const T* dy, T* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] = st<T>(ld(dx[i]) + (ld(y[i]) > 0 ? ld(dy[i]) : 0.0f));
}
template <class T> __global__ void h_add(const T* a, const T* b, T* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = st<T>(ld(a[i]) + ld(b[i]));
}
template <class T> __global__ void h_accumulate(const T* dy, T* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] = st<T>(ld(dx[i]) + ld(dy[i]));
}
template <class T> __global__ void h_mul(const T* x, const float* m, T* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = st<T>(ld(x[i]) * m[i]);
}
template <class T> __global__ void h_mul_acc(const T* dy, const float* m, T* dx, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) dx[i] = st<T>(ld(dx[i]) + ld(dy[i]) * m[i]);
}
template <class T> __global__ void h_from_float(const float* x, T* y, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) y[i] = st<T>(x[i]);
}
// y[row, j] += b[j] over `rows` rows of `out` (a linear layer's [n, out], an NHWC
// convolution's [n p q, k]).
template <class T> __global__ void h_bias_rows(T* y, const float* b, size_t rows, int out) {
  FUSEPLAN_GRID_LOOP(i, rows * out) y[i] = st<T>(ld(y[i]) + b[i % out]);
}
// db[j] = sum over rows of dy[row, j]: one block per column, each thread summing its rows
// in order, then a tree in a fixed order (deterministic).
template <class T> __global__ void h_col_sums(const T* dy, float* db, size_t rows, int out) {
  __shared__ float part[kThreads];
  const int j = blockIdx.x;
  float s = 0;
  for (size_t r = threadIdx.x; r < rows; r += blockDim.x) s += ld(dy[r * out + j]);
  part[threadIdx.x] = s;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (int(threadIdx.x) < half) part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) db[j] = part[0];
}
// [b, c, hw] (NCHW; convolution weights [k, c, r r]) into [b, hw, c] (NHWC; cuDNN's NHWC
// filter layout [k, r r, c]) and back, converting the type: the model input and the
// weights into 16-bit storage, a flatten of NHWC into the NCHW feature order, a 16-bit
// weight gradient back into the FP32 one.
template <class In, class Out> __global__ void h_nchw_to_nhwc(const In* x, Out* y, int c, int hw, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) {
    const size_t ch = i % c, s = i / c % hw, b = i / (size_t(c) * hw);
    y[i] = st<Out>(ld(x[(b * c + ch) * hw + s]));
  }
}
template <class In, class Out> __global__ void h_nhwc_to_nchw(const In* x, Out* y, int c, int hw, size_t n) {
  FUSEPLAN_GRID_LOOP(j, n) {
    const size_t s = j % hw, ch = j / hw % c, b = j / (size_t(c) * hw);
    y[j] = st<Out>(ld(x[(b * hw + s) * c + ch]));
  }
}
// Flatten's gradient: NCHW-ordered features back into NHWC (added when `add`).
template <class T> __global__ void h_flatten_bwd(const T* dy, T* dx, int c, int hw, int add, size_t n) {
  FUSEPLAN_GRID_LOOP(i, n) {
    const size_t ch = i % c, s = i / c % hw, b = i / (size_t(c) * hw);
    const T g = dy[(b * c + ch) * hw + s];
    dx[i] = add ? st<T>(ld(dx[i]) + ld(g)) : g;
  }
}
// Pooling on NHWC: the same windows, ties and NaN rule as the NCHW kernels above; argmax
// is the input's position in its plane (iy w + ix).
struct NhwcPool {
  int n, c, h, w, kernel, stride, pad, p, q;
};
NhwcPool nhwc_pool(const PoolShape& s) { return {s.n, s.c, s.h, s.w, s.kernel, s.stride, s.pad, s.p, s.q}; }
template <class T> __global__ void h_maxpool_fwd(NhwcPool a, const T* x, T* y, int32_t* argmax) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.n) * a.p * a.q * a.c) {
    const int ch = int(o % a.c), ox = int(o / a.c % a.q), oy = int(o / a.c / a.q % a.p);
    const size_t b = o / (size_t(a.c) * a.q * a.p);
    const T* in = x + b * a.h * a.w * a.c + ch;  // the sample's channel, a.c apart
    int at;
    const float best =
        window_max(oy, ox, a.h, a.w, a.kernel, a.stride, a.pad, [&](int i) { return ld(in[size_t(i) * a.c]); }, at);
    y[o] = st<T>(best);
    argmax[o] = at;
  }
}
// Input element e of an NHWC pooling layer: its sample, channel, row and column, and the
// outputs [y0, y1] x [x0, x1] whose windows hold it.
struct NhwcInput {
  size_t b;
  int ch, iy, ix, y0, y1, x0, x1;
};
__device__ NhwcInput nhwc_input(const NhwcPool& a, size_t e) {
  NhwcInput w;
  w.ch = int(e % a.c), w.ix = int(e / a.c % a.w), w.iy = int(e / a.c / a.w % a.h);
  w.b = e / (size_t(a.c) * a.w * a.h);
  window_range(w.iy, a.stride, a.pad, a.kernel, a.p, w.y0, w.y1);
  window_range(w.ix, a.stride, a.pad, a.kernel, a.q, w.x0, w.x1);
  return w;
}
__device__ size_t nhwc_out(const NhwcPool& a, size_t b, int oy, int ox, int ch) {
  return ((b * a.p + oy) * a.q + ox) * a.c + ch;
}
template <class T> __global__ void h_maxpool_bwd(NhwcPool a, const T* dy, const int32_t* argmax, T* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.n) * a.h * a.w * a.c) {
    const NhwcInput w = nhwc_input(a, e);
    const int self = w.iy * a.w + w.ix;
    float g = 0;
    for (int oy = w.y0; oy <= w.y1; ++oy)
      for (int ox = w.x0; ox <= w.x1; ++ox) {
        const size_t o = nhwc_out(a, w.b, oy, ox, w.ch);
        if (argmax[o] == self) g += ld(dy[o]);
      }
    dx[e] = st<T>(ld(dx[e]) + g);
  }
}
template <class T> __global__ void h_avgpool_fwd(NhwcPool a, const T* x, T* y) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.n) * a.p * a.q * a.c) {
    const int ch = int(o % a.c), ox = int(o / a.c % a.q), oy = int(o / a.c / a.q % a.p);
    const size_t b = o / (size_t(a.c) * a.q * a.p);
    float sum = 0;
    for (int ky = 0; ky < a.kernel; ++ky)
      for (int kx = 0; kx < a.kernel; ++kx) {
        const int iy = oy * a.stride - a.pad + ky, ix = ox * a.stride - a.pad + kx;
        if (iy >= 0 && iy < a.h && ix >= 0 && ix < a.w) sum += ld(x[((b * a.h + iy) * a.w + ix) * a.c + ch]);
      }
    y[o] = st<T>(sum / float(a.kernel * a.kernel));
  }
}
template <class T> __global__ void h_avgpool_bwd(NhwcPool a, const T* dy, T* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.n) * a.h * a.w * a.c) {
    const NhwcInput w = nhwc_input(a, e);
    float g = 0;
    for (int oy = w.y0; oy <= w.y1; ++oy)
      for (int ox = w.x0; ox <= w.x1; ++ox) g += ld(dy[nhwc_out(a, w.b, oy, ox, w.ch)]);
    dx[e] = st<T>(ld(dx[e]) + g / float(a.kernel * a.kernel));
  }
}
template <class T> __global__ void h_adaptive_fwd(NhwcPool a, const T* x, T* y) {
  FUSEPLAN_GRID_LOOP(o, size_t(a.n) * a.p * a.q * a.c) {
    const int ch = int(o % a.c), ox = int(o / a.c % a.q), oy = int(o / a.c / a.q % a.p);
    const size_t b = o / (size_t(a.c) * a.q * a.p);
    const int y0 = bin_lo(oy, a.h, a.p), y1 = bin_hi(oy, a.h, a.p);
    const int x0 = bin_lo(ox, a.w, a.q), x1 = bin_hi(ox, a.w, a.q);
    float sum = 0;
    for (int iy = y0; iy < y1; ++iy)
      for (int ix = x0; ix < x1; ++ix) sum += ld(x[((b * a.h + iy) * a.w + ix) * a.c + ch]);
    y[o] = st<T>(sum / float((y1 - y0) * (x1 - x0)));
  }
}
template <class T> __global__ void h_adaptive_bwd(NhwcPool a, const T* dy, T* dx) {
  FUSEPLAN_GRID_LOOP(e, size_t(a.n) * a.h * a.w * a.c) {
    const int ch = int(e % a.c), ix = int(e / a.c % a.w), iy = int(e / a.c / a.w % a.h);
    const size_t b = e / (size_t(a.c) * a.w * a.h);
    const float g = adaptive_gather(iy, ix, a.h, a.w, a.p, a.q,
                                    [&](int oy, int ox) { return ld(dy[nhwc_out(a, b, oy, ox, ch)]); });
    dx[e] = st<T>(ld(dx[e]) + g);
  }
}
// One thread per row: loss (smoothed targets), dlogits = scale (softmax - target) / n,
// and whether the largest logit is the label; the host sums the rows in order. Logits
// FP32 or 16-bit (read in FP32, the gradient rounded as it is stored).
template <class T>
__global__ void k_softmax_xent(int n, int classes, const T* logits, const int32_t* labels, float smoothing, float scale,
                               T* dlogits, double* row_loss, int* row_right) {
  FUSEPLAN_GRID_LOOP(i, size_t(n)) {
    const T* z = logits + i * classes;
    T* d = dlogits + i * classes;
    const int label = labels[i];
    int best = 0;
    for (int j = 1; j < classes; ++j)
      if (ld(z[j]) > ld(z[best])) best = j;
    row_right[i] = best == label;
    const double off = double(smoothing) / classes, on = 1.0 - smoothing + off;
    const double top = ld(z[best]);
    double sum = 0;
    for (int j = 0; j < classes; ++j) sum += exp(double(ld(z[j])) - top);
    const double log_sum = log(sum) + top;
    double loss = 0;
    for (int j = 0; j < classes; ++j) {
      const double target = j == label ? on : off;
      const double logp = double(ld(z[j])) - log_sum;
      loss -= target * logp;
      d[j] = st<T>(float(scale * (exp(logp) - target) / n));
    }
    row_loss[i] = loss;
  }
}

class CudnnTensor {
 public:
  CudnnTensor(int n, int c, int h, int w, cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW,
              cudnnDataType_t type = CUDNN_DATA_FLOAT) {
    check(cudnnCreateTensorDescriptor(&d_), "tensor descriptor");
    check(cudnnSetTensor4dDescriptor(d_, format, type, n, c, h, w), "tensor shape");
  }
  ~CudnnTensor() { cudnnDestroyTensorDescriptor(d_); }
  CudnnTensor(const CudnnTensor&) = delete;
  CudnnTensor& operator=(const CudnnTensor&) = delete;
  cudnnTensorDescriptor_t get() const { return d_; }

 private:
  cudnnTensorDescriptor_t d_ = nullptr;
};

// How activations are stored: FP32 NCHW, or 16-bit NHWC (half-precision storage).
struct Storage {
  cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
  cudnnDataType_t type = CUDNN_DATA_FLOAT;
  bool half() const { return type != CUDNN_DATA_FLOAT; }
};

// A BatchNorm shape [n, c, hw]: its tensor and parameter descriptors, the persistent
// kernel's workspace and reserve sizes (16-bit storage; `sizes` is cuDNN's answer), and
// whether that kernel's first launch for the shape was checked and ran.
struct BnPlan {
  BnPlan(int n, int c, int hw, const Storage& s)
      : n(n), c(c), hw(hw), t(n, c, hw, 1, s.format, s.type), p(1, c, 1, 1) {}
  int n, c, hw;
  CudnnTensor t, p;
  size_t fwd_ws = 0, bwd_ws = 0, reserve = 0;
  cudnnStatus_t sizes = CUDNN_STATUS_SUCCESS;
  bool launch_checked = false, persistent_runs = true;
};

// Descriptors and chosen algorithms of one convolution shape (made once, reused). In
// half-precision storage the filter is 16-bit [k, r, r, c] (a converted copy of the FP32
// parameters), sums are FP32 on tensor cores.
struct ConvPlan {
  ConvPlan(const ConvShape& s, bool tf32, Storage st)
      : x(s.n, s.c, s.h, s.w, st.format, st.type), y(s.n, s.k, s.p, s.q, st.format, st.type), bias(1, s.k, 1, 1) {
    check(cudnnCreateFilterDescriptor(&w), "filter descriptor");
    check(cudnnSetFilter4dDescriptor(w, st.type, st.format, s.k, s.c, s.r, s.r), "filter shape");
    check(cudnnCreateConvolutionDescriptor(&conv), "convolution descriptor");
    check(cudnnSetConvolution2dDescriptor(conv, s.pad, s.pad, s.stride, s.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                          CUDNN_DATA_FLOAT),
          "convolution shape");
    const cudnnMathType_t math = st.half() ? CUDNN_TENSOR_OP_MATH : tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    check(cudnnSetConvolutionMathType(conv, math), "math type");
  }
  ~ConvPlan() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
  }
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;
  CudnnTensor x, y, bias;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  size_t fwd_ws = 0, data_ws = 0, filter_ws = 0;
};

// The first deterministic algorithm in cuDNN's heuristic order that runs.
template <class Perf>
const Perf& first_deterministic(const Perf* perf, int found, const char* what) {
  for (int i = 0; i < found; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC) return perf[i];
  device_failure(std::string("cuDNN: no deterministic algorithm for the ") + what, false,
                 std::source_location::current());
}

// Device memory that grows to the largest size asked for (cudaFree waits for the work
// that still uses the old block).
class GrowingBuffer {
 public:
  GrowingBuffer() = default;
  ~GrowingBuffer() { cudaFree(p_); }
  GrowingBuffer(const GrowingBuffer&) = delete;
  GrowingBuffer& operator=(const GrowingBuffer&) = delete;
  void* get() const { return p_; }
  size_t size() const { return bytes_; }
  void* at_least(size_t bytes, const char* what) {
    if (bytes > bytes_) {
      check(cudaFree(p_), what);
      p_ = nullptr, bytes_ = 0;
      check(cudaMalloc(&p_, bytes), what);
      bytes_ = bytes;
    }
    return p_;
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaOptions& opt) : opt_(opt) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0)
      throw InputError(field("backend") + " cuda: no CUDA device is visible on this machine");
    if (opt.device < 0 || opt.device >= count)
      throw InputError(field("backend.device") + " " + std::to_string(opt.device) + ": this machine has " + std::to_string(count) +
                       " CUDA device(s), 0.." + std::to_string(count - 1));
    check(cudaSetDevice(opt.device), "set device");
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, opt.device), "device properties");
    if (opt.storage == Precision::BF16 && prop.major < 8)  // refused before anything is made
      throw InputError(field("precision") + " bf16: " + prop.name + " (compute capability " +
                       std::to_string(prop.major) + "." + std::to_string(prop.minor) +
                       ") has no BF16 tensor cores; they need 8.0 or newer (fp16 runs here)");
    check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
    check(cudnnCreate(&dnn_), "create handle");
    check(cudnnSetStream(dnn_, stream_), "set stream");
    check(cublasCreate(&blas_), "create handle");
    check(cublasSetStream(blas_, stream_), "set stream");
    half_ = opt.storage != Precision::FP32;
    persistent_bn_ = half_;
    if (half_) {
      storage_ = {CUDNN_TENSOR_NHWC, opt.storage == Precision::FP16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16};
      blas_type_ = opt.storage == Precision::FP16 ? CUDA_R_16F : CUDA_R_16BF;
    }
    // 16-bit GEMMs sum in FP32 on tensor cores either way.
    check(cublasSetMathMode(blas_, half_ ? CUBLAS_DEFAULT_MATH
                                         : opt.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH),
          "math mode");
    name_ = std::string("cuda (") + prop.name + ", cuDNN " + std::to_string(cudnnGetVersion()) +
            (half_ ? std::string(", ") + std::string(precision_name(opt.storage)) + " NHWC storage"
                   : opt.tf32 ? ", TF32" : ", strict FP32") +
            ")";
    algos_ = opt.conv_algos_recorded;
    algos_.device = prop.name;
    algos_.library = "cuDNN " + std::to_string(cudnnGetVersion());
  }
  ~CudaBackend() override {
    if (ahead_thread_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(ahead_mutex_);
        ahead_stop_ = true;
      }
      ahead_cv_.notify_all();
      ahead_thread_.join();
    }
    if (copied_) cudaEventSynchronize(copied_), cudaEventDestroy(copied_);
    if (copy_stream_) cudaStreamDestroy(copy_stream_);
    if (pinned_) cudaFreeHost(pinned_);
    for (cudaGraphExec_t g : graphs_) cudaGraphExecDestroy(g);
    for (cudaEvent_t e : marks_) cudaEventDestroy(e);
    plans_.clear();
    cublasDestroy(blas_);
    cudnnDestroy(dnn_);
    cudaStreamDestroy(stream_);
  }
  std::string name() const override { return name_; }
  void* native_stream() override { return stream_; }

  float* alloc(size_t n) override { return managed(n * sizeof(float)); }
  Precision activation_storage() const override { return opt_.storage; }
  float* alloc_activation(size_t n) override { return managed(n * elem()); }
  void zero_activation(float* p, size_t n) override {
    check(cudaMemsetAsync(p, 0, n * elem(), stream_), "memset");
    done();
  }
  void read_activation(float* host, const float* src, size_t n) override {
    if (!half_) return Backend::read_activation(host, src, n);  // managed memory, FP32
    synchronize();  // managed memory: the host reads it once the stream is done
    const auto* bits = reinterpret_cast<const uint16_t*>(src);
    for (size_t i = 0; i < n; ++i)
      host[i] = opt_.storage == Precision::FP16 ? fp16_to_float(bits[i]) : bf16_to_float(bits[i]);
  }
  // Half-precision storage keeps every activation NHWC (a block of all its channels).
  bool blocked(int c) const override {
    (void)c;
    return half_;
  }
  void import_activation(int n, int c, int hw, const float* plain, float* dst) override {
    const size_t e = size_t(n) * size_t(c) * size_t(hw);
    if (!half_) return Backend::import_activation(n, c, hw, plain, dst);
    auto* staged = static_cast<float*>(scratch(e * sizeof(float)));
    check(cudaMemcpyAsync(staged, plain, e * sizeof(float), cudaMemcpyDefault, stream_), "input");
    typed([&](auto t) { launch(h_nchw_to_nhwc<float, decltype(t)>, e, staged, as(t, dst), c, hw, e); });
  }
  void flatten_forward(int n, int c, int hw, const float* x, float* y) override {
    if (!half_) return Backend::flatten_forward(n, c, hw, x, y);
    const size_t e = size_t(n) * size_t(c) * size_t(hw);
    typed([&](auto t) {
      using T = decltype(t);
      launch(h_nhwc_to_nchw<T, T>, e, as(t, x), as(t, y), c, hw, e);
    });
  }
  void flatten_backward(int n, int c, int hw, const float* dy, float* dx, bool add) override {
    if (!half_) return Backend::flatten_backward(n, c, hw, dy, dx, add);
    const size_t e = size_t(n) * size_t(c) * size_t(hw);
    typed([&](auto t) { launch(h_flatten_bwd<decltype(t)>, e, as(t, dy), as(t, dx), c, hw, add ? 1 : 0, e); });
  }
  void free(float* p) override { cudaFree(p); }
  void zero(float* p, size_t n) override {
    check(cudaMemsetAsync(p, 0, n * sizeof(float), stream_), "memset");
    done();
  }
  void round(Precision p, float* x, size_t n) override {
    if (p == Precision::FP16) launch(k_round_fp16, n, x, n);
    if (p == Precision::BF16) launch(k_round_bf16, n, x, n);
  }
  void copy_in(float* dst, const float* src, size_t n) override {
    check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDefault, stream_), "copy in");
    done();
  }

  // The next batch, copied while a step computes: a thread of the backend copies it from
  // the caller's (pageable) memory into pinned memory, and from there into the device on
  // a stream of its own, recording an event that await_copy_in() makes the compute stream
  // wait for. The pinned buffer is refilled only once the device has read it.
  void copy_in_ahead(float* dst, const float* src, size_t n) override {
    await_ahead_host();
    if (!ahead_thread_.joinable()) {
      check(cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking), "copy stream");
      check(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming), "copy event");
      ahead_thread_ = std::thread([this] { copy_ahead_loop(); });
    }
    {
      std::lock_guard<std::mutex> lock(ahead_mutex_);
      ahead_job_ = {dst, src, n};
      ahead_posted_ = true;
      ahead_done_ = false;
    }
    ahead_cv_.notify_all();
  }
  void await_copy_in() override {
    if (!ahead_thread_.joinable()) return;
    await_ahead_host();
    check(cudaStreamWaitEvent(stream_, copied_, 0), "wait for the copy ahead");
  }
  void synchronize() override { check(cudaStreamSynchronize(stream_), "synchronise"); }
  // CUDA graphs captured from the stream. cuBLAS gets a workspace of its own first, so
  // that it allocates nothing while the stream is captured.
  bool supports_graphs() const override { return true; }
  void begin_graph() override {
    if (!blas_workspace_) {
      void* p = nullptr;
      constexpr size_t kBlasWorkspace = size_t(32) << 20;
      check(cudaMalloc(&p, kBlasWorkspace), "cuBLAS workspace");
      blas_workspace_.reset(p);
      check(cublasSetWorkspace(blas_, p, kBlasWorkspace), "cuBLAS workspace");
    }
    check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal), "begin graph capture");
  }
  int end_graph() override {
    cudaGraph_t graph = nullptr;
    check(cudaStreamEndCapture(stream_, &graph), "end graph capture");
    cudaGraphExec_t exec = nullptr;
    const cudaError_t made = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    check(made, "instantiate graph");
    graphs_.push_back(exec);
    return int(graphs_.size()) - 1;
  }
  void launch_graph(int g) override { check(cudaGraphLaunch(graphs_.at(size_t(g)), stream_), "launch graph"); }
  bool timed_on_device() const override { return true; }
  void reset_marks() override { marks_used_ = 0; }
  int mark() override {
    if (marks_used_ == marks_.size()) {
      cudaEvent_t e = nullptr;
      check(cudaEventCreate(&e), "event");
      marks_.push_back(e);
    }
    check(cudaEventRecord(marks_[marks_used_], stream_), "record event");
    return static_cast<int>(marks_used_++);
  }
  double mark_seconds(int i) override {
    float ms = 0;
    check(cudaEventElapsedTime(&ms, marks_.at(0), marks_.at(size_t(i))), "event time");
    return ms * 1e-3;
  }
  bool nonfinite(const float* x, size_t n) override {
    int* flag = static_cast<int*>(scratch(sizeof(int)));
    check(cudaMemsetAsync(flag, 0, sizeof(int), stream_), "memset");
    launch(k_nonfinite, n, x, n, flag);
    int host = 0;
    check(cudaMemcpyAsync(&host, flag, sizeof(int), cudaMemcpyDeviceToHost, stream_), "overflow flag");
    synchronize();
    return host != 0;
  }
  void optimizer_step(const std::vector<OptimizerSlot>& slots, const OptimizerStep& o, float* masters, float* momenta,
                      const float* grads, float* params, double* local_rates) override {
    if (slots.empty()) return;
    const size_t k = slots.size();
    std::vector<DevSlot> table;
    int64_t largest = 0, chunks = 0;
    for (const auto& s : slots) {
      if (s.ww >= 0) throw RunError("cuda backend: a sharded optimizer step (given LARS sums) runs on host memory only");
      table.push_back({s.offset, s.numel, s.plain ? 1 : 0, chunks});
      largest = std::max(largest, s.numel);
      chunks += std::max<int64_t>(1, (s.numel + kNormChunk - 1) / kNormChunk);
    }
    // Slot tables on the device, each uploaded once: the whole optimizer's, or each
    // layer's when updates run per layer (per-layer gating), keyed by their first slot.
    DeviceSlots* found = nullptr;
    auto range = dev_slots_.equal_range(table.front().offset);
    for (auto it = range.first; it != range.second && !found; ++it)
      if (it->second.table == table) found = &it->second;
    if (!found) {
      void* p = nullptr;
      check(cudaMalloc(&p, k * (sizeof(DevSlot) + sizeof(double)) + size_t(2 * chunks) * sizeof(double)),
            "optimizer slots");
      DeviceSlots fresh{table, std::unique_ptr<void, CudaFree>(p)};
      check(cudaMemcpy(p, table.data(), k * sizeof(DevSlot), cudaMemcpyHostToDevice), "optimizer slots");
      found = &dev_slots_.emplace(table.front().offset, std::move(fresh))->second;
    }
    auto* dev_table = static_cast<DevSlot*>(found->buffer.get());
    auto* rates = reinterpret_cast<double*>(dev_table + k);
    double* partials = rates + k;  // two per chunk: the weights' and the gradients' sums of squares
    const int64_t most_chunks = std::max<int64_t>(1, (largest + kNormChunk - 1) / kNormChunk);
    k_lars_partials<<<dim3(unsigned(most_chunks), unsigned(k)), kThreads, 0, stream_>>>(dev_table, masters, grads,
                                                                                        o.lars ? 1 : 0, partials);
    k_lars_rates<<<blocks_for(k), kThreads, 0, stream_>>>(dev_table, int(k), partials, o.inv_scale, o.trust,
                                                         o.weight_decay, o.eps, o.lars ? 1 : 0, rates);
    const int working = o.working == Precision::FP16 ? 1 : o.working == Precision::BF16 ? 2 : 0;
    const dim3 grid(unsigned(std::min<int64_t>((largest + kThreads - 1) / kThreads, 1024)), unsigned(k));
    k_optimizer_update<<<grid, kThreads, 0, stream_>>>(dev_table, rates, masters, momenta, grads, params, o.lr,
                                                      o.momentum, o.weight_decay, o.inv_scale, working);
    check(cudaMemcpyAsync(local_rates, rates, k * sizeof(double), cudaMemcpyDeviceToHost, stream_), "local rates");
    synchronize();  // local_rates is host memory the caller reads
  }

  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) override {
    ConvPlan& c = plan(s);
    const float one = 1, zero = 0;
    const int rr = s.r * s.r;
    const void* filter = half_ ? weights_in_storage(w, size_t(s.k) * s.c * rr, s.c, rr, true) : w;
    check(cudnnConvolutionForward(dnn_, &one, c.x.get(), x, c.w, filter, c.conv, c.fwd, workspace(c.fwd_ws), c.fwd_ws,
                                  &zero, c.y.get(), y),
          "convolution forward");
    if (b && half_) {  // NHWC: the output is [n p q, k] rows
      const size_t rows = size_t(s.n) * s.p * s.q;
      typed([&](auto t) { launch(h_bias_rows<decltype(t)>, rows * s.k, as(t, y), b, rows, s.k); });
    } else if (b) {
      check(cudnnAddTensor(dnn_, &one, c.bias.get(), b, &one, c.y.get(), y), "convolution bias");
    }
    done();
  }
  void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    ConvPlan& c = plan(s);
    const float one = 1, zero = 0;
    const int rr = s.r * s.r;
    const size_t nw = size_t(s.k) * s.c * rr;
    // Half-precision storage: the weight gradient comes out 16-bit [k, r, r, c] and is
    // widened into the FP32 gradient; the filter is the forward's copy.
    void* filter_grad = half_ ? wgrad_.at_least(nw * elem(), "weight gradient") : static_cast<void*>(dw);
    check(cudnnConvolutionBackwardFilter(dnn_, &one, c.x.get(), x, c.y.get(), dy, c.conv, c.bwd_filter,
                                         workspace(c.filter_ws), c.filter_ws, &zero, c.w, filter_grad),
          "convolution backward filter");
    if (half_)
      typed([&](auto t) { launch(h_nhwc_to_nchw<decltype(t), float>, nw, as(t, filter_grad), dw, s.c, rr, nw); });
    if (db && half_) col_sums(dy, db, size_t(s.n) * s.p * s.q, s.k);
    else if (db)
      check(cudnnConvolutionBackwardBias(dnn_, &one, c.y.get(), dy, &zero, c.bias.get(), db), "backward bias");
    const void* filter = half_ ? weights_in_storage(w, nw, s.c, rr, false) : w;
    if (dx)
      check(cudnnConvolutionBackwardData(dnn_, &one, c.w, filter, c.y.get(), dy, c.conv, c.bwd_data,
                                         workspace(c.data_ws), c.data_ws, &one, c.x.get(), dx),
            "convolution backward data");
    done();
  }

  // Row-major [n, in] x [out, in]^T through column-major cuBLAS: y^T = w x^T.
  void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) override {
    const float one = 1, zero = 0;
    if (half_) {  // 16-bit operands (the weight a converted copy), FP32 sums
      const void* wh = weights_in_storage(w, size_t(out) * in, in, 1, true);
      check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, wh, blas_type_, in, x, blas_type_, in,
                         &zero, y, blas_type_, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "linear");
      if (b) typed([&](auto t) { launch(h_bias_rows<decltype(t)>, size_t(n) * out, as(t, y), b, size_t(n), out); });
      return;
    }
    check(cublasSgemm(blas_, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, in, x, in, &zero, y, out), "linear");
    if (b) launch(k_bias_rows, size_t(n) * out, y, b, n, out);
  }
  void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    const float one = 1, zero = 0;
    // dw^T [in, out] = x^T dy; dx^T [in, n] += w^T dy^T.
    if (half_) {  // dw straight into the FP32 gradient
      check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x, blas_type_, in, dy, blas_type_, out,
                         &zero, dw, CUDA_R_32F, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "linear dw");
      if (dx)
        check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one,
                           weights_in_storage(w, size_t(out) * in, in, 1, false), blas_type_, in, dy, blas_type_, out,
                           &one, dx, blas_type_, in, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              "linear dx");
      if (db) col_sums(dy, db, size_t(n), out);
      return;
    }
    check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x, in, dy, out, &zero, dw, in), "linear dw");
    if (dx) check(cublasSgemm(blas_, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, w, in, dy, out, &one, dx, in), "linear dx");
    if (db) launch(k_col_sums, size_t(out), dy, db, n, out);
  }

  void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                               float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                               float momentum, float eps) override {
    BnPlan& b = bn_plan(n, c, hw);
    const cudnnTensorDescriptor_t t = b.t.get(), p = b.p.get();
    const float one = 1, zero = 0;
    const double e = bn_eps(eps);
    // 16-bit NHWC: cuDNN's persistent kernel (its generic one is slow on NHWC).
    if (ran_persistent_bn(b, [&] {
          void* r = b.reserve ? bn_reserve_[x].at_least(b.reserve, "batchnorm reserve") : nullptr;
          return cudnnBatchNormalizationForwardTrainingEx(dnn_, kPersistentBn, CUDNN_BATCHNORM_OPS_BN, &one, &zero, t,
                                                          x, nullptr, nullptr, t, y, p, gamma, beta, momentum,
                                                          running_mean, running_var, e, save_mean, save_invstd, nullptr,
                                                          workspace(b.fwd_ws), b.fwd_ws, r, b.reserve);
        }))
      return done();
    check(cudnnBatchNormalizationForwardTraining(dnn_, CUDNN_BATCHNORM_SPATIAL, &one, &zero, t, x, t, y, p, gamma,
                                                 beta, momentum, running_mean, running_var, e, save_mean,
                                                 save_invstd),
          "batchnorm forward");
    done();
  }
  void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                              const float* running_mean, const float* running_var, float eps) override {
    const BnPlan& b = bn_plan(n, c, hw);
    const float one = 1, zero = 0;
    check(cudnnBatchNormalizationForwardInference(dnn_, CUDNN_BATCHNORM_SPATIAL, &one, &zero, b.t.get(), x, b.t.get(),
                                                  y, b.p.get(), gamma, beta, running_mean, running_var, bn_eps(eps)),
          "batchnorm inference");
    done();
  }
  void batchnorm_backward(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                          const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                          float* dbeta) override {
    BnPlan& b = bn_plan(n, c, hw);
    const cudnnTensorDescriptor_t t = b.t.get(), p = b.p.get();
    const float one = 1, zero = 0;
    // The forward's mode, with the reserve it filled for this input.
    if (ran_persistent_bn(b, [&] {
          auto r = bn_reserve_.find(x);
          void* reserve = r == bn_reserve_.end() ? nullptr : r->second.get();
          const size_t reserve_bytes = r == bn_reserve_.end() ? 0 : r->second.size();
          return cudnnBatchNormalizationBackwardEx(dnn_, kPersistentBn, CUDNN_BATCHNORM_OPS_BN, &one, &one, &one, &zero,
                                                   t, x, nullptr, nullptr, t, dy, nullptr, nullptr, t, dx, p, gamma,
                                                   nullptr, dgamma, dbeta, saved_eps_, save_mean, save_invstd, nullptr,
                                                   workspace(b.bwd_ws), b.bwd_ws, reserve, reserve_bytes);
        }))
      return done();
    check(cudnnBatchNormalizationBackward(dnn_, CUDNN_BATCHNORM_SPATIAL, &one, &one, &one, &zero, t, x, t, dy, t, dx,
                                          p, gamma, dgamma, dbeta, saved_eps_, save_mean, save_invstd),
          "batchnorm backward");
    done();
  }

  // Element-wise ops and pooling: FP32 NCHW kernels, or their 16-bit NHWC twins.
  void relu_forward(size_t n, const float* x, float* y) override {
    if (half_) return typed([&](auto t) { launch(h_relu_fwd<decltype(t)>, n, as(t, x), as(t, y), n); });
    launch(k_relu_fwd, n, x, y, n);
  }
  void relu_backward(size_t n, const float* y, const float* dy, float* dx) override {
    if (half_) return typed([&](auto t) { launch(h_relu_bwd<decltype(t)>, n, as(t, y), as(t, dy), as(t, dx), n); });
    launch(k_relu_bwd, n, y, dy, dx, n);
  }
  void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* argmax) override {
    const size_t outs = size_t(s.n) * s.c * s.p * s.q;
    if (half_)
      return typed([&](auto t) { launch(h_maxpool_fwd<decltype(t)>, outs, nhwc_pool(s), as(t, x), as(t, y), argmax); });
    launch(k_maxpool_fwd, outs, pool_args(s), x, y, argmax);
  }
  void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) override {
    const size_t ins = size_t(s.n) * s.c * s.h * s.w;
    if (half_)
      return typed(
          [&](auto t) { launch(h_maxpool_bwd<decltype(t)>, ins, nhwc_pool(s), as(t, dy), argmax, as(t, dx)); });
    launch(k_maxpool_bwd, ins, pool_args(s), dy, argmax, dx);
  }
  void avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    const size_t outs = size_t(s.n) * s.c * s.p * s.q;
    if (half_)
      return typed([&](auto t) { launch(h_avgpool_fwd<decltype(t)>, outs, nhwc_pool(s), as(t, x), as(t, y)); });
    launch(k_avgpool_fwd, outs, pool_args(s), x, y);
  }
  void avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    const size_t ins = size_t(s.n) * s.c * s.h * s.w;
    if (half_)
      return typed([&](auto t) { launch(h_avgpool_bwd<decltype(t)>, ins, nhwc_pool(s), as(t, dy), as(t, dx)); });
    launch(k_avgpool_bwd, ins, pool_args(s), dy, dx);
  }
  void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    const size_t outs = size_t(s.n) * s.c * s.p * s.q;
    if (half_)
      return typed([&](auto t) { launch(h_adaptive_fwd<decltype(t)>, outs, nhwc_pool(s), as(t, x), as(t, y)); });
    launch(k_adaptive_fwd, outs, pool_args(s), x, y);
  }
  void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    const size_t ins = size_t(s.n) * s.c * s.h * s.w;
    if (half_)
      return typed([&](auto t) { launch(h_adaptive_bwd<decltype(t)>, ins, nhwc_pool(s), as(t, dy), as(t, dx)); });
    launch(k_adaptive_bwd, ins, pool_args(s), dy, dx);
  }
  void add_forward(size_t n, const float* a, const float* b, float* y) override {
    if (half_) return typed([&](auto t) { launch(h_add<decltype(t)>, n, as(t, a), as(t, b), as(t, y), n); });
    launch(k_add, n, a, b, y, n);
  }
  void accumulate(size_t n, const float* dy, float* dx) override {
    if (half_) return typed([&](auto t) { launch(h_accumulate<decltype(t)>, n, as(t, dy), as(t, dx), n); });
    launch(k_accumulate, n, dy, dx, n);
  }
  void dropout_forward(size_t n, const float* x, const float* mask, float* y) override {
    if (half_) return typed([&](auto t) { launch(h_mul<decltype(t)>, n, as(t, x), mask, as(t, y), n); });
    launch(k_mul, n, x, mask, y, n);
  }
  void dropout_backward(size_t n, const float* dy, const float* mask, float* dx) override {
    if (half_) return typed([&](auto t) { launch(h_mul_acc<decltype(t)>, n, as(t, dy), mask, as(t, dx), n); });
    launch(k_mul_acc, n, dy, mask, dx, n);
  }
  double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing, float scale,
                      float* dlogits, int* correct) override {
    // Scratch: labels in, per-row loss and hit out (the labels may be host memory).
    const size_t bytes = size_t(n) * (sizeof(double) + 2 * sizeof(int32_t));
    char* s = static_cast<char*>(scratch(bytes));
    auto* row_loss = reinterpret_cast<double*>(s);
    auto* dev_labels = reinterpret_cast<int32_t*>(s + size_t(n) * sizeof(double));
    int32_t* row_right = dev_labels + n;
    check(cudaMemcpyAsync(dev_labels, labels, size_t(n) * sizeof(int32_t), cudaMemcpyDefault, stream_), "labels");
    auto loss_kernel = [&](auto* z, auto* dz) {
      k_softmax_xent<<<blocks_for(size_t(n)), kThreads, 0, stream_>>>(n, classes, z, dev_labels, smoothing, scale, dz,
                                                                       row_loss, row_right);
    };
    if (half_) typed([&](auto t) { loss_kernel(as(t, logits), as(t, dlogits)); });
    else loss_kernel(logits, dlogits);
    std::vector<double> loss(static_cast<size_t>(n));
    std::vector<int32_t> right(static_cast<size_t>(n));
    check(cudaMemcpyAsync(loss.data(), row_loss, loss.size() * sizeof(double), cudaMemcpyDefault, stream_), "loss");
    check(cudaMemcpyAsync(right.data(), row_right, right.size() * sizeof(int32_t), cudaMemcpyDefault, stream_), "hits");
    done();
    synchronize();  // the host reads loss and right
    double sum = 0;
    int hits = 0;
    for (int i = 0; i < n; ++i) sum += loss[size_t(i)], hits += right[size_t(i)];
    if (correct) *correct = hits;
    return sum / n;
  }

 private:
  // Calls are asynchronous on the backend's stream; launch errors surface here.
  void done() { check(cudaGetLastError(), "kernel launch"); }
  // A grid-stride kernel over n elements on the stream (nothing for n = 0).
  template <class... Params, class... Args>
  void launch(void (*kernel)(Params...), size_t n, Args... args) {
    if (n == 0) return;
    kernel<<<blocks_for(n), kThreads, 0, stream_>>>(args...);
    done();
  }
  struct CudaFree {
    void operator()(void* p) const { cudaFree(p); }
  };
  float* managed(size_t bytes) {
    void* p = nullptr;
    check(cudaMallocManaged(&p, std::max<size_t>(bytes, sizeof(float))), "managed allocation");
    return static_cast<float*>(p);
  }
  size_t elem() const { return half_ ? 2 : sizeof(float); }
  // f(T{}) with T the 16-bit storage type, and activation pointers seen as T.
  template <class F>
  void typed(F&& f) {
    if (opt_.storage == Precision::FP16) f(__half{});
    else f(__nv_bfloat16{});
  }
  template <class T>
  static T* as(T, float* p) {
    return reinterpret_cast<T*>(p);
  }
  template <class T>
  static const T* as(T, const float* p) {
    return reinterpret_cast<const T*>(p);
  }
  template <class T>
  static T* as(T, void* p) {
    return static_cast<T*>(p);
  }
  // The 16-bit copy of FP32 weights w (numel values, [k, c, r r] to [k, r r, c]; a linear
  // layer's [out, in] is c = in, rr = 1): converted when `convert` (the forward pass, after
  // which the weights do not change until the backward has used the copy).
  const void* weights_in_storage(const float* w, size_t numel, int c, int rr, bool convert) {
    auto& copy = weights_[w];
    if (!copy) {
      void* p = nullptr;
      check(cudaMalloc(&p, numel * elem()), "16-bit weights");
      copy.reset(p);
      convert = true;
    }
    if (convert)
      typed([&](auto t) { launch(h_nchw_to_nhwc<float, decltype(t)>, numel, w, as(t, copy.get()), c, rr, numel); });
    return copy.get();
  }
  // db[j] = the sum over `rows` rows of 16-bit dy[row, j], FP32.
  void col_sums(const float* dy, float* db, size_t rows, int out) {
    typed([&](auto t) { h_col_sums<<<unsigned(out), kThreads, 0, stream_>>>(as(t, dy), db, rows, out); });
    done();
  }
  // The copy thread: each job's host part (into pinned memory, then enqueued), reporting
  // the first CUDA error to the caller's next wait.
  void copy_ahead_loop() {
    cudaSetDevice(opt_.device);
    for (;;) {
      AheadJob job;
      {
        std::unique_lock<std::mutex> lock(ahead_mutex_);
        ahead_cv_.wait(lock, [this] { return ahead_posted_ || ahead_stop_; });
        if (ahead_stop_) return;
        job = ahead_job_;
        ahead_posted_ = false;
      }
      const size_t bytes = job.n * sizeof(float);
      cudaError_t e = cudaEventSynchronize(copied_);  // the device has read the pinned buffer
      if (e == cudaSuccess && bytes > pinned_bytes_) {
        if (pinned_) cudaFreeHost(pinned_);
        pinned_ = nullptr, pinned_bytes_ = 0;
        e = cudaHostAlloc(&pinned_, bytes, cudaHostAllocDefault);
        if (e == cudaSuccess) pinned_bytes_ = bytes;
      }
      if (e == cudaSuccess) {
        std::memcpy(pinned_, job.src, bytes);
        e = cudaMemcpyAsync(job.dst, pinned_, bytes, cudaMemcpyHostToDevice, copy_stream_);
      }
      if (e == cudaSuccess) e = cudaEventRecord(copied_, copy_stream_);
      {
        std::lock_guard<std::mutex> lock(ahead_mutex_);
        if (e != cudaSuccess && ahead_error_ == cudaSuccess) ahead_error_ = e;
        ahead_done_ = true;
      }
      ahead_cv_.notify_all();
    }
  }
  // Waits until the last job's host part is done (its copy enqueued), and raises its error.
  void await_ahead_host() {
    cudaError_t e = cudaSuccess;
    {
      std::unique_lock<std::mutex> lock(ahead_mutex_);
      ahead_cv_.wait(lock, [this] { return ahead_done_; });
      std::swap(e, ahead_error_);
    }
    check(e, "copy ahead");
  }
  // A BatchNorm shape's descriptors and, in 16-bit storage, the persistent kernel's
  // workspace and reserve sizes: made at its first call, as a convolution's plan is.
  BnPlan& bn_plan(int n, int c, int hw) {
    std::unique_ptr<BnPlan>& slot = bn_plans_[{n, c, hw}];
    if (slot) return *slot;
    slot = std::make_unique<BnPlan>(n, c, hw, storage_);
    BnPlan& b = *slot;
    if (!half_) return b;
    const cudnnTensorDescriptor_t t = b.t.get(), p = b.p.get();
    b.sizes = cudnnGetBatchNormalizationForwardTrainingExWorkspaceSize(dnn_, kPersistentBn, CUDNN_BATCHNORM_OPS_BN, t,
                                                                       nullptr, t, p, nullptr, &b.fwd_ws);
    if (b.sizes == CUDNN_STATUS_SUCCESS)
      b.sizes = cudnnGetBatchNormalizationTrainingExReserveSpaceSize(dnn_, kPersistentBn, CUDNN_BATCHNORM_OPS_BN,
                                                                     nullptr, t, &b.reserve);
    if (b.sizes == CUDNN_STATUS_SUCCESS)
      b.sizes = cudnnGetBatchNormalizationBackwardExWorkspaceSize(dnn_, kPersistentBn, CUDNN_BATCHNORM_OPS_BN, t,
                                                                  nullptr, t, nullptr, t, p, nullptr, &b.bwd_ws);
    return b;
  }
  // Whether a BatchNorm of this shape runs the persistent kernel: not after a refusal, nor
  // below kPersistentBnMinRows rows, nor for a shape whose first launch failed.
  bool persistent_bn(const BnPlan& b) const {
    return persistent_bn_ && int64_t(b.n) * b.hw >= kPersistentBnMinRows && b.persistent_runs;
  }
  // Runs `call` (the persistent kernel's cuDNN call for plan b) where the shape may run it;
  // true when it ran, false when the caller is to run the generic kernel: the shape may
  // not, cuDNN declined (refuse_persistent_bn: every shape from then on), or the launch
  // failed (checked_launch).
  template <class Call>
  bool ran_persistent_bn(BnPlan& b, Call call) {
    if (!persistent_bn(b)) return false;
    const cudnnStatus_t st = b.sizes == CUDNN_STATUS_SUCCESS ? call() : b.sizes;
    if (st != CUDNN_STATUS_SUCCESS) {
      refuse_persistent_bn(st);
      return false;
    }
    return checked_launch(b);
  }
  // After a persistent BatchNorm call: the first of each shape waits for the stream and
  // looks for a launch error; a shape whose kernel did not launch runs the generic kernel
  // from then on, this call included. A fault in the kernel loses the CUDA context, and is
  // raised naming the shape.
  bool checked_launch(BnPlan& b) {
    if (b.launch_checked) return b.persistent_runs;
    b.launch_checked = true;
    const cudaError_t e = cudaStreamSynchronize(stream_);
    const cudaError_t launch = e == cudaSuccess ? cudaGetLastError() : e;
    if (launch == cudaSuccess) return true;
    if (e != cudaSuccess) {  // the stream itself failed: the context is lost
      const std::string what = "batchnorm (persistent kernel) on [" + std::to_string(b.n) + ", " + std::to_string(b.c) +
                               ", " + std::to_string(b.hw) + "]";
      check(e, what.c_str());
    }
    b.persistent_runs = false;
    std::fprintf(stderr, "cuda backend: cuDNN's persistent NHWC BatchNorm failed to launch on [%d, %d, %d] (%s); "
                 "that shape uses its generic kernel\n", b.n, b.c, b.hw, cudaGetErrorString(launch));
    return false;
  }
  // cuDNN's persistent BatchNorm declined a shape (or failed): from then on every BatchNorm
  // runs cuDNN's generic kernel, which is correct on NHWC but slow; said once.
  void refuse_persistent_bn(cudnnStatus_t st) {
    persistent_bn_ = false;
    std::fprintf(stderr, "cuda backend: cuDNN's persistent NHWC BatchNorm is unavailable (%s); using its generic "
                 "kernel\n", cudnnGetErrorString(st));
  }
  double bn_eps(float eps) {
    if (double(eps) < CUDNN_BN_MIN_EPSILON)
      throw InputError("batchnorm epsilon " + std::to_string(eps) + " is below cuDNN's minimum " +
                       std::to_string(CUDNN_BN_MIN_EPSILON));
    saved_eps_ = eps;
    return eps;
  }
  // A convolution shape's descriptors and algorithms, made at its first call: the
  // algorithms recorded in the table (the file of --conv-algo-file) where it has the shape,
  // else chosen (heuristics or timed, CudaOptions::conv_algos) and recorded.
  ConvPlan& plan(const ConvShape& s) {
    const char* type = !half_ ? "float" : opt_.storage == Precision::FP16 ? "half" : "bfloat16";
    const ConvAlgoKey key{s.n, s.c, s.h, s.w, s.k, s.r, s.stride, s.pad, type, half_ || opt_.tf32};
    auto it = plans_.find(key);
    if (it != plans_.end()) return *it->second;
    auto c = std::make_unique<ConvPlan>(s, opt_.tf32, storage_);
    if (const ConvAlgoChoice* recorded = algos_.find(key)) {
      const Candidates cand(dnn_, *c);
      c->fwd = cudnnConvolutionFwdAlgo_t(recorded->fwd);
      c->fwd_ws = recorded_memory(cand.fwd, cand.fwd_found, c->fwd, "forward", key);
      c->bwd_data = cudnnConvolutionBwdDataAlgo_t(recorded->bwd_data);
      c->data_ws = recorded_memory(cand.data, cand.data_found, c->bwd_data, "backward data", key);
      c->bwd_filter = cudnnConvolutionBwdFilterAlgo_t(recorded->bwd_filter);
      c->filter_ws = recorded_memory(cand.filt, cand.filt_found, c->bwd_filter, "backward filter", key);
    } else {
      ConvAlgoChoice chosen;
      if (opt_.conv_algos == ConvAlgoSearch::Find) {
        chosen = find_algorithms(s, *c);
      } else {
        const Candidates cand(dnn_, *c);
        const auto& f = first_deterministic(cand.fwd, cand.fwd_found, "convolution forward");
        const auto& d = first_deterministic(cand.data, cand.data_found, "convolution backward data");
        const auto& w = first_deterministic(cand.filt, cand.filt_found, "convolution backward filter");
        c->fwd = f.algo, c->fwd_ws = f.memory;
        c->bwd_data = d.algo, c->data_ws = d.memory;
        c->bwd_filter = w.algo, c->filter_ws = w.memory;
        chosen.fwd = int(f.algo), chosen.bwd_data = int(d.algo), chosen.bwd_filter = int(w.algo);
      }
      algos_.put(key, chosen);
      if (!opt_.conv_algo_file.empty()) algos_.save(opt_.conv_algo_file);
    }
    return *plans_.emplace(key, std::move(c)).first->second;
  }
  // Every algorithm cuDNN has for a shape, in its heuristic order, with each one's status,
  // determinism and workspace.
  struct Candidates {
    static constexpr int kMax = 16;
    Candidates(cudnnHandle_t dnn, const ConvPlan& c) {
      check(cudnnGetConvolutionForwardAlgorithm_v7(dnn, c.x.get(), c.w, c.conv, c.y.get(), kMax, &fwd_found, fwd),
            "forward algorithms");
      check(cudnnGetConvolutionBackwardDataAlgorithm_v7(dnn, c.w, c.y.get(), c.conv, c.x.get(), kMax, &data_found,
                                                        data),
            "backward data algorithms");
      check(cudnnGetConvolutionBackwardFilterAlgorithm_v7(dnn, c.x.get(), c.y.get(), c.conv, c.w, kMax, &filt_found,
                                                          filt),
            "backward filter algorithms");
    }
    cudnnConvolutionFwdAlgoPerf_t fwd[kMax];
    cudnnConvolutionBwdDataAlgoPerf_t data[kMax];
    cudnnConvolutionBwdFilterAlgoPerf_t filt[kMax];
    int fwd_found = 0, data_found = 0, filt_found = 0;
  };
  // The workspace of a recorded algorithm; InputError naming the file where cuDNN does not
  // run it for this shape here, or not deterministically.
  template <class Perf, class Algo>
  size_t recorded_memory(const Perf* perf, int found, Algo algo, const char* what, const ConvAlgoKey& k) const {
    for (int i = 0; i < found; ++i)
      if (perf[i].algo == algo && perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].determinism == CUDNN_DETERMINISTIC)
        return perf[i].memory;
    throw InputError(field("backend.conv_algo_file") + " " + opt_.conv_algo_file + ": the " + what + " algorithm " +
                     std::to_string(int(algo)) + " recorded for the convolution n " + std::to_string(k.n) + ", c " +
                     std::to_string(k.c) + ", " + std::to_string(k.h) + "x" + std::to_string(k.w) + ", k " +
                     std::to_string(k.k) + ", r " + std::to_string(k.r) + ", stride " + std::to_string(k.stride) +
                     ", pad " + std::to_string(k.pad) + " does not run deterministically with " + name_ +
                     " (remove that entry, or the file, to choose again)");
  }
  // Times every algorithm of the shape once (cudnnFind*Ex, on zero-filled buffers of its
  // size and a workspace of up to 1 GiB, all freed afterwards) and takes the fastest
  // deterministic one of each direction.
  ConvAlgoChoice find_algorithms(const ConvShape& s, ConvPlan& c) {
    const size_t nx = size_t(s.n) * s.c * s.h * s.w, ny = size_t(s.n) * s.k * s.p * s.q;
    const size_t nw = size_t(s.k) * s.c * s.r * s.r;
    void* raw = nullptr;
    const size_t e = elem(), bytes = (2 * nx + ny + 2 * nw) * e;
    check(cudaMalloc(&raw, bytes), "cuDNN algorithm search buffers");
    std::unique_ptr<void, CudaFree> buffers(raw);
    char* x = static_cast<char*>(raw);
    char *dx = x + nx * e, *y = dx + nx * e, *w = y + ny * e, *dw = w + nw * e;
    check(cudaMemsetAsync(raw, 0, bytes, stream_), "memset");
    size_t free_bytes = 0, total_bytes = 0;
    check(cudaMemGetInfo(&free_bytes, &total_bytes), "free memory");
    size_t ws_bytes = std::min<size_t>(size_t(1) << 30, free_bytes / 4);
    void* ws_raw = nullptr;
    check(cudaMalloc(&ws_raw, std::max<size_t>(ws_bytes, 1)), "cuDNN algorithm search workspace");
    std::unique_ptr<void, CudaFree> ws(ws_raw);
    constexpr int kMax = Candidates::kMax;
    int found = 0;
    ConvAlgoChoice chosen;
    chosen.how = "find";
    cudnnConvolutionFwdAlgoPerf_t fwd[kMax];
    check(cudnnFindConvolutionForwardAlgorithmEx(dnn_, c.x.get(), x, c.w, w, c.conv, c.y.get(), y, kMax, &found, fwd,
                                                 ws_raw, ws_bytes),
          "timing forward algorithms");
    const auto& f = first_deterministic(fwd, found, "convolution forward");  // Find sorts by time
    c.fwd = f.algo, c.fwd_ws = f.memory, chosen.fwd = int(f.algo), chosen.fwd_ms = f.time;
    cudnnConvolutionBwdDataAlgoPerf_t data[kMax];
    check(cudnnFindConvolutionBackwardDataAlgorithmEx(dnn_, c.w, w, c.y.get(), y, c.conv, c.x.get(), dx, kMax, &found,
                                                      data, ws_raw, ws_bytes),
          "timing backward data algorithms");
    const auto& d = first_deterministic(data, found, "convolution backward data");
    c.bwd_data = d.algo, c.data_ws = d.memory, chosen.bwd_data = int(d.algo), chosen.bwd_data_ms = d.time;
    cudnnConvolutionBwdFilterAlgoPerf_t filt[kMax];
    check(cudnnFindConvolutionBackwardFilterAlgorithmEx(dnn_, c.x.get(), x, c.y.get(), y, c.conv, c.w, dw, kMax,
                                                        &found, filt, ws_raw, ws_bytes),
          "timing backward filter algorithms");
    const auto& g = first_deterministic(filt, found, "convolution backward filter");
    c.bwd_filter = g.algo, c.filter_ws = g.memory, chosen.bwd_filter = int(g.algo), chosen.bwd_filter_ms = g.time;
    return chosen;
  }
  void* workspace(size_t bytes) { return workspace_.at_least(bytes, "cuDNN workspace"); }
  void* scratch(size_t bytes) { return scratch_.at_least(bytes, "scratch"); }

  CudaOptions opt_;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cudnnHandle_t dnn_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  std::map<ConvAlgoKey, std::unique_ptr<ConvPlan>> plans_;
  ConvAlgoTable algos_;  // every shape's algorithms: the recorded ones, then those chosen here
  GrowingBuffer workspace_, scratch_;
  struct DeviceSlots {
    std::vector<DevSlot> table;
    std::unique_ptr<void, CudaFree> buffer;  // the table, then one local rate per slot
  };
  std::multimap<int64_t, DeviceSlots> dev_slots_;  // by the first slot's offset
  double saved_eps_ = 1e-5;  // cuDNN wants the forward's epsilon in the backward
  bool half_ = false;  // 16-bit NHWC activations (CudaOptions::storage)
  // The copy ahead (copy_in_ahead): its thread, job, stream, event and pinned buffer.
  struct AheadJob {
    float* dst = nullptr;
    const float* src = nullptr;
    size_t n = 0;
  };
  std::thread ahead_thread_;
  std::mutex ahead_mutex_;
  std::condition_variable ahead_cv_;
  AheadJob ahead_job_;
  bool ahead_posted_ = false, ahead_done_ = true, ahead_stop_ = false;
  cudaError_t ahead_error_ = cudaSuccess;
  cudaStream_t copy_stream_ = nullptr;
  cudaEvent_t copied_ = nullptr;
  void* pinned_ = nullptr;
  size_t pinned_bytes_ = 0;
  // BatchNorm on 16-bit NHWC through cuDNN's persistent kernel (what PyTorch uses for
  // channels-last training), with each input's reserve space kept for its backward.
  static constexpr cudnnBatchNormMode_t kPersistentBn = CUDNN_BATCHNORM_SPATIAL_PERSISTENT;
  // The fewest rows (n x hw) a BatchNorm needs to run the persistent kernel. On an H200
  // with cuDNN 9.19 it ran every BatchNorm of ResNet-50 at 224x224, batch 64 (3,136 to
  // 802,816 rows), and faulted with a misaligned address, which loses the CUDA context,
  // inside a ResNet-18 at 32x32, batch 8 (8 to 2,048 rows). Smaller shapes, where the
  // generic kernel's cost matters least, keep the generic kernel.
  static constexpr int64_t kPersistentBnMinRows = 3136;
  bool persistent_bn_ = false;
  std::map<std::tuple<int, int, int>, std::unique_ptr<BnPlan>> bn_plans_;  // [n, c, hw]
  std::map<const float*, GrowingBuffer> bn_reserve_;
  Storage storage_;
  cudaDataType_t blas_type_ = CUDA_R_32F;
  std::map<const float*, std::unique_ptr<void, CudaFree>> weights_;  // 16-bit copies, by the FP32 weights
  GrowingBuffer wgrad_;  // a convolution's 16-bit weight gradient
  std::vector<cudaGraphExec_t> graphs_;  // step graphs, by number
  std::unique_ptr<void, CudaFree> blas_workspace_;
  std::vector<cudaEvent_t> marks_;  // reused step after step
  size_t marks_used_ = 0;
};

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) return 0;
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& opt) { return std::make_unique<CudaBackend>(opt); }

}  // namespace fuseplan::exec
