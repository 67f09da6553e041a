// The CPU backend: convolutions through oneDNN where the build has it (dnnl_conv.cpp),
// else as im2col + OpenBLAS SGEMM over the whole batch (one large GEMM instead of one per
// sample); everything else as OpenMP loops. Loops that sum over the batch run one
// channel per thread, so results do not depend on the thread schedule.
#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fuseplan/exec/half.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/error.hpp"
#include "host_scratch.hpp"
#include "cpu_blocked.hpp"
#ifdef FUSEPLAN_HAVE_DNNL
#include "dnnl_conv.hpp"
#else
namespace fuseplan::exec {
inline std::string dnnl_kernels() { return ""; }
inline int dnnl_block() { return 0; }
class DnnlConv {  // without oneDNN: never constructed
 public:
  explicit DnnlConv(int) {}
  void forward(const ConvShape&, const float*, const float*, const float*, float*) {}
  void backward(const ConvShape&, const float*, const float*, const float*, float*, float*, float*, bool) {}
};
}  // namespace fuseplan::exec
#endif

namespace fuseplan::exec {

namespace {

// cols [c*r*r, n*p*q]: column (img, oy, ox) holds the receptive field of that output.
void im2col(const ConvShape& s, const float* x, float* cols) {
  const int64_t npq = int64_t(s.n) * s.p * s.q;
#pragma omp parallel for schedule(static)
  for (int row = 0; row < s.c * s.r * s.r; ++row) {
    const int ch = row / (s.r * s.r), ky = (row / s.r) % s.r, kx = row % s.r;
    float* out = cols + int64_t(row) * npq;
    for (int img = 0; img < s.n; ++img) {
      const float* plane = x + (int64_t(img) * s.c + ch) * s.h * s.w;
      for (int oy = 0; oy < s.p; ++oy) {
        const int iy = oy * s.stride - s.pad + ky;
        float* o = out + (int64_t(img) * s.p + oy) * s.q;
        if (iy < 0 || iy >= s.h) {
          std::fill(o, o + s.q, 0.0f);
          continue;
        }
        for (int ox = 0; ox < s.q; ++ox) {
          const int ix = ox * s.stride - s.pad + kx;
          o[ox] = (ix >= 0 && ix < s.w) ? plane[iy * s.w + ix] : 0.0f;
        }
      }
    }
  }
}

// dx += col2im(cols). Parallel over input channels: each channel's plane is written by
// one thread only.
void col2im_add(const ConvShape& s, const float* cols, float* dx) {
  const int64_t npq = int64_t(s.n) * s.p * s.q;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < s.c; ++ch) {
    for (int ky = 0; ky < s.r; ++ky)
      for (int kx = 0; kx < s.r; ++kx) {
        const float* in = cols + int64_t((ch * s.r + ky) * s.r + kx) * npq;
        for (int img = 0; img < s.n; ++img) {
          float* plane = dx + (int64_t(img) * s.c + ch) * s.h * s.w;
          for (int oy = 0; oy < s.p; ++oy) {
            const int iy = oy * s.stride - s.pad + ky;
            if (iy < 0 || iy >= s.h) continue;
            const float* c = in + (int64_t(img) * s.p + oy) * s.q;
            for (int ox = 0; ox < s.q; ++ox) {
              const int ix = ox * s.stride - s.pad + kx;
              if (ix >= 0 && ix < s.w) plane[iy * s.w + ix] += c[ox];
            }
          }
        }
      }
  }
}

// [k, n*pq] (GEMM layout) <-> [n, k, pq] (NCHW).
void knpq_to_nkpq(int n, int k, int pq, const float* a, float* b) {
#pragma omp parallel for schedule(static)
  for (int img = 0; img < n; ++img)
    for (int ch = 0; ch < k; ++ch)
      std::memcpy(b + (int64_t(img) * k + ch) * pq, a + (int64_t(ch) * n + img) * pq, sizeof(float) * size_t(pq));
}
void nkpq_to_knpq(int n, int k, int pq, const float* a, float* b) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < k; ++ch)
    for (int img = 0; img < n; ++img)
      std::memcpy(b + (int64_t(ch) * n + img) * pq, a + (int64_t(img) * k + ch) * pq, sizeof(float) * size_t(pq));
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuConv conv) {
#ifdef FUSEPLAN_HAVE_DNNL
    if (conv != CpuConv::Im2col) {
      block_ = dnnl_block();
      dnnl_ = std::make_unique<DnnlConv>(block_);
    }
#else
    if (conv == CpuConv::Dnnl) throw InputError("cpu backend: built without oneDNN (install libdnnl-dev and rebuild)");
#endif
  }
  // The kernels that run: oneDNN's release and ISA for convolutions, OpenBLAS's core for
  // the GEMMs (linear layers, and convolutions without oneDNN).
  std::string name() const override {
    const std::string blas = std::string("OpenBLAS ") + openblas_get_corename();
    return dnnl_ ? "cpu (convolutions: " + dnnl_kernels() + "; GEMM: " + blas + ")" : "cpu (im2col + " + blas + ")";
  }

  float* alloc(size_t n) override { return host_alloc(n); }

  // With oneDNN, activations whose channels fill whole blocks stay in its blocked layout
  // between layers (its convolutions' native one): no reorder per convolution.
  bool blocked(int c) const override { return block_ > 0 && c % block_ == 0; }
  void import_activation(int n, int c, int hw, const float* plain, float* dst) override {
    if (in_blocks(c, hw)) return blocked::import_nchw(block_, n, c, hw, plain, dst);
    std::memmove(dst, plain, sizeof(float) * size_t(n) * size_t(c) * size_t(hw));
  }
  void flatten_forward(int n, int c, int hw, const float* x, float* y) override {
    if (in_blocks(c, hw)) return blocked::flatten_forward(block_, n, c, hw, x, y);
    assign(size_t(n) * size_t(c) * size_t(hw), x, y);
  }
  void flatten_backward(int n, int c, int hw, const float* dy, float* dx, bool add) override {
    if (in_blocks(c, hw)) return blocked::flatten_backward(block_, n, c, hw, dy, dx, add);
    Backend::flatten_backward(n, c, hw, dy, dx, add);
  }
  void free(float* p) override { std::free(p); }
  void zero(float* p, size_t n) override { std::memset(p, 0, n * sizeof(float)); }
  void round(Precision p, float* x, size_t n) override { round_buffer(p, x, n); }
  bool reads_host_memory() const override { return true; }
  void copy_in(float* dst, const float* src, size_t n) override { std::memmove(dst, src, n * sizeof(float)); }
  bool nonfinite(const float* x, size_t n) override {
    // An infinity or NaN has every exponent bit set; OR-ing a flag per value (no early
    // exit) lets the loop vectorise.
    uint32_t bad = 0;
#pragma omp parallel for simd reduction(| : bad) schedule(static)
    for (size_t i = 0; i < n; ++i) bad |= uint32_t((std::bit_cast<uint32_t>(x[i]) & 0x7f800000u) == 0x7f800000u);
    return bad != 0;
  }
  void optimizer_step(const std::vector<OptimizerSlot>& slots, const OptimizerStep& o, float* masters, float* momenta,
                      const float* grads, float* params, double* local_rates) override {
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t k = 0; k < slots.size(); ++k) {
      const OptimizerSlot& s = slots[k];
      float* w = masters + s.offset;
      float* v = momenta + s.offset;
      const float* g = grads + s.offset;
      double rate = o.lr, decay = s.plain ? 0.0 : o.weight_decay;
      local_rates[k] = 1.0;
      if (o.lars && !s.plain) {
        // Local rate eta ||w|| / (||g|| + wd ||w||), on the unscaled gradient.
        double ww = s.ww, gg = s.gg;
        if (ww < 0) {
          ww = gg = 0;
          for (int64_t i = 0; i < s.numel; ++i) {
            ww += double(w[i]) * w[i];
            gg += double(g[i]) * g[i];
          }
        }
        const double wn = std::sqrt(ww), gn = std::sqrt(gg) * o.inv_scale;
        const double local = (wn > 0 && gn > 0) ? o.trust * wn / (gn + o.weight_decay * wn + o.eps) : 1.0;
        local_rates[k] = local;
        rate = o.lr * local;
      }
      float* p = params + s.offset;
#pragma omp simd
      for (int64_t i = 0; i < s.numel; ++i) {
        const double grad = double(g[i]) * o.inv_scale + decay * w[i];
        v[i] = float(o.momentum * v[i] + rate * grad);
        w[i] -= v[i];
        p[i] = w[i];
      }
      round_span(o.working, p, size_t(s.numel));  // the working copy in its precision
    }
  }

  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) override {
    if (dnnl_) return dnnl_->forward(s, x, w, b, y);
    const int K = s.c * s.r * s.r, pq = s.p * s.q;
    const int64_t npq = int64_t(s.n) * pq;
    float* cols = cols_.get(size_t(K) * size_t(npq));
    float* tmp = tmp_.get(size_t(s.k) * size_t(npq));
    im2col(s, x, cols);
    // tmp [k, npq] = w [k, K] x cols [K, npq]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, s.k, int(npq), K, 1.0f, w, K, cols, int(npq), 0.0f, tmp,
                int(npq));
    if (b) {
#pragma omp parallel for schedule(static)
      for (int ch = 0; ch < s.k; ++ch)
        for (int64_t i = 0; i < npq; ++i) tmp[ch * npq + i] += b[ch];
    }
    knpq_to_nkpq(s.n, s.k, pq, tmp, y);
  }

  void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    if (dnnl_) {
      dnnl_->backward(s, x, w, dy, dx, dw, db, true);  // the input gradient accumulates (residual branches)
      return;
    }
    im2col_backward(s, x, w, dy, dx, dw, db);
  }
  void conv2d_backward_set(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                           float* db) override {
    if (dnnl_) return dnnl_->backward(s, x, w, dy, dx, dw, db, false);
    if (dx) zero(dx, size_t(s.n) * s.c * s.h * s.w);
    im2col_backward(s, x, w, dy, dx, dw, db);
  }

  void im2col_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) {
    const int K = s.c * s.r * s.r, pq = s.p * s.q;
    const int64_t npq = int64_t(s.n) * pq;
    float* cols = cols_.get(size_t(K) * size_t(npq));
    float* tmp = tmp_.get(size_t(s.k) * size_t(npq));
    nkpq_to_knpq(s.n, s.k, pq, dy, tmp);  // dy as [k, npq]
    im2col(s, x, cols);
    // dw [k, K] = dy [k, npq] x cols^T [npq, K]
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s.k, K, int(npq), 1.0f, tmp, int(npq), cols, int(npq), 0.0f, dw,
                K);
    if (db) {
#pragma omp parallel for schedule(static)
      for (int ch = 0; ch < s.k; ++ch) {
        double sum = 0;
        for (int64_t i = 0; i < npq; ++i) sum += tmp[ch * npq + i];
        db[ch] = float(sum);
      }
    }
    if (dx) {
      // cols [K, npq] = w^T [K, k] x dy [k, npq], then scattered back onto dx.
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, K, int(npq), s.k, 1.0f, w, K, tmp, int(npq), 0.0f, cols,
                  int(npq));
      col2im_add(s, cols, dx);
    }
  }

  void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) override {
    if (b) {
      for (int i = 0; i < n; ++i) std::memcpy(y + int64_t(i) * out, b, sizeof(float) * size_t(out));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, b ? 1.0f : 0.0f, y, out);
  }

  void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    // dw [out, in] = dy^T [out, n] x x [n, in]
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 0.0f, dw, in);
    if (db) {
      for (int o = 0; o < out; ++o) {
        double sum = 0;
        for (int i = 0; i < n; ++i) sum += dy[int64_t(i) * out + o];
        db[o] = float(sum);
      }
    }
    // dx [n, in] += dy [n, out] x w [out, in]
    if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
  }

  void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                               float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                               float momentum, float eps) override {
    batchnorm_train_impl(n, c, hw, x, gamma, beta, y, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                         false);
  }
  // A BatchNorm or an add and the ReLU after it in one pass over the data each way
  // (ops.hpp).
  bool fuses_relu() const override { return true; }
  void batchnorm_relu_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                                    float* y, float* save_mean, float* save_invstd, float* running_mean,
                                    float* running_var, float momentum, float eps) override {
    batchnorm_train_impl(n, c, hw, x, gamma, beta, y, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                         true);
  }
  void batchnorm_relu_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                                   float* y, const float* running_mean, const float* running_var, float eps) override {
    batchnorm_eval_impl(n, c, hw, x, gamma, beta, y, running_mean, running_var, eps, true);
  }
  void batchnorm_relu_backward(int n, int c, int hw, const float* x, const float* gamma, const float* relu_y,
                               float* dy, const float* save_mean, const float* save_invstd, float* dx,
                               float* dgamma, float* dbeta, bool add) override {
    if (in_blocks(c, hw))
      return blocked::batchnorm_relu_backward(block_, n, c, hw, x, gamma, relu_y, dy, save_mean, save_invstd, dx,
                                              dgamma, dbeta, add);
    if (add)
      batchnorm_backward_plain<true, true>(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta, relu_y);
    else
      batchnorm_backward_plain<false, true>(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta, relu_y);
  }
  void batchnorm_train_impl(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                            float* save_mean, float* save_invstd, float* running_mean, float* running_var,
                            float momentum, float eps, bool relu) {
    if (in_blocks(c, hw))
      return blocked::batchnorm_forward_train(block_, n, c, hw, x, gamma, beta, y, save_mean, save_invstd,
                                              running_mean, running_var, momentum, eps, relu);
    const double count = double(n) * hw;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ++ch) {
      // Two passes (mean, then squared deviations: no cancellation), each a SIMD
      // reduction in double (several partial sums, not one serial chain).
      double sum = 0, sq = 0;
      for (int img = 0; img < n; ++img) {
        const float* p = x + (int64_t(img) * c + ch) * hw;
#pragma omp simd reduction(+ : sum)
        for (int i = 0; i < hw; ++i) sum += p[i];
      }
      const double mean = sum / count;
      for (int img = 0; img < n; ++img) {
        const float* p = x + (int64_t(img) * c + ch) * hw;
#pragma omp simd reduction(+ : sq)
        for (int i = 0; i < hw; ++i) sq += (p[i] - mean) * (p[i] - mean);
      }
      const double var = sq / count;
      const float invstd = float(1.0 / std::sqrt(var + eps));
      save_mean[ch] = float(mean);
      save_invstd[ch] = invstd;
      running_mean[ch] = float((1 - momentum) * running_mean[ch] + momentum * mean);
      running_var[ch] = float((1 - momentum) * running_var[ch] + momentum * (count > 1 ? var * count / (count - 1) : var));
      const float a = gamma[ch] * invstd, bshift = beta[ch] - float(mean) * a;
      scale_shift(n, c, hw, ch, x, a, bshift, y, relu);
    }
  }
  // y = x a + shift over one channel's planes, then max(0, y) with `relu` (the ReLU's
  // own select, so a fused BatchNorm and ReLU give the two ops' bits).
  static void scale_shift(int n, int c, int hw, int ch, const float* x, float a, float shift, float* y, bool relu) {
    for (int img = 0; img < n; ++img) {
      const float* p = x + (int64_t(img) * c + ch) * hw;
      float* q = y + (int64_t(img) * c + ch) * hw;
      if (relu)
        for (int i = 0; i < hw; ++i) {
          const float v = p[i] * a + shift;
          q[i] = v > 0 ? v : 0.0f;
        }
      else
        for (int i = 0; i < hw; ++i) q[i] = p[i] * a + shift;
    }
  }

  void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                              const float* running_mean, const float* running_var, float eps) override {
    batchnorm_eval_impl(n, c, hw, x, gamma, beta, y, running_mean, running_var, eps, false);
  }
  void batchnorm_eval_impl(int n, int c, int hw, const float* x, const float* gamma, const float* beta, float* y,
                           const float* running_mean, const float* running_var, float eps, bool relu) {
    if (in_blocks(c, hw))
      return blocked::batchnorm_forward_eval(block_, n, c, hw, x, gamma, beta, y, running_mean, running_var, eps,
                                             relu);
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ++ch) {
      const float a = gamma[ch] / std::sqrt(running_var[ch] + eps), bshift = beta[ch] - running_mean[ch] * a;
      scale_shift(n, c, hw, ch, x, a, bshift, y, relu);
    }
  }

  void batchnorm_backward(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                          const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                          float* dbeta) override {
    batchnorm_backward_impl<true>(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta);
  }
  void batchnorm_backward_set(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                              const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                              float* dbeta) override {
    batchnorm_backward_impl<false>(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta);
  }
  template <bool Add>
  void batchnorm_backward_impl(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                               const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                               float* dbeta) {
    if (in_blocks(c, hw))
      return blocked::batchnorm_backward(block_, n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta,
                                         Add);
    batchnorm_backward_plain<Add, false>(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta, nullptr);
  }
  // Masked: dy is a fused ReLU's gradient, masked by its output relu_y in the sums' pass
  // and written back masked (nothing reads it afterwards), so that the second pass reads
  // dy alone.
  template <bool Add, bool Masked>
  void batchnorm_backward_plain(int n, int c, int hw, const float* x, const float* gamma,
                                std::conditional_t<Masked, float*, const float*> dy, const float* save_mean,
                                const float* save_invstd, float* dx, float* dgamma, float* dbeta,
                                const float* relu_y) {
    const double count = double(n) * hw;
#pragma omp parallel for schedule(static)
    for (int ch = 0; ch < c; ++ch) {
      const float mean = save_mean[ch], invstd = save_invstd[ch];
      double sum_dy = 0, sum_dy_xhat = 0;
      for (int img = 0; img < n; ++img) {
        const float* p = x + (int64_t(img) * c + ch) * hw;
        auto* g = dy + (int64_t(img) * c + ch) * hw;
        const float* m = Masked ? relu_y + (int64_t(img) * c + ch) * hw : nullptr;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
        for (int i = 0; i < hw; ++i) {
          const float gi = Masked ? blocked::relu_masked(g[i], m[i]) : g[i];
          if constexpr (Masked) g[i] = gi;
          sum_dy += gi;
          sum_dy_xhat += gi * (p[i] - mean) * invstd;
        }
      }
      dgamma[ch] = float(sum_dy_xhat);
      dbeta[ch] = float(sum_dy);
      // dx = gamma invstd (dy - mean(dy) - xhat mean(dy xhat))
      const float k = gamma[ch] * invstd, mdy = float(sum_dy / count), mdyx = float(sum_dy_xhat / count);
      for (int img = 0; img < n; ++img) {
        const float* p = x + (int64_t(img) * c + ch) * hw;
        const float* g = dy + (int64_t(img) * c + ch) * hw;  // masked already
        float* d = dx + (int64_t(img) * c + ch) * hw;
        for (int i = 0; i < hw; ++i) {
          const float v = k * (g[i] - mdy - (p[i] - mean) * invstd * mdyx);
          if constexpr (Add) d[i] += v;
          else d[i] = v;
        }
      }
    }
  }

  void relu_forward(size_t n, const float* x, float* y) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = x[i] > 0 ? x[i] : 0.0f;
  }
  void relu_backward(size_t n, const float* y, const float* dy, float* dx) override {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float g = dy[i];  // read unconditionally, so the loop vectorises (a select, not a branch)
      dx[i] += y[i] > 0 ? g : 0.0f;
    }
  }
  void relu_backward_set(size_t n, const float* y, const float* dy, float* dx) override {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float g = dy[i];
      dx[i] = y[i] > 0 ? g : 0.0f;
    }
  }
  void assign(size_t n, const float* dy, float* dx) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) dx[i] = dy[i];
  }

  // Pooling: NCHW is the blocked layout with blocks of one channel.
  void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* argmax) override {
    blocked::maxpool_forward(pool_block(s), s, x, y, argmax);
  }
  void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) override {
    blocked::maxpool_backward(pool_block(s), s, dy, argmax, dx);
  }
  void avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    blocked::avgpool_forward(pool_block(s), s, x, y);
  }
  void avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    blocked::avgpool_backward(pool_block(s), s, dy, dx);
  }
  void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    blocked::adaptive_avgpool_forward(pool_block(s), s, x, y);
  }
  void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    blocked::adaptive_avgpool_backward(pool_block(s), s, dy, dx);
  }

  void add_forward(size_t n, const float* a, const float* b, float* y) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = a[i] + b[i];
  }
  void add_relu_forward(size_t n, const float* a, const float* b, float* y) override {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float v = a[i] + b[i];
      y[i] = v > 0 ? v : 0.0f;
    }
  }
  void add_relu_backward(size_t n, const float* relu_y, const float* dy, float* da, bool set_a, float* db) override {
    if (da && db) {
      if (set_a) add_relu_backward_impl<1, true>(n, relu_y, dy, da, db);
      else add_relu_backward_impl<2, true>(n, relu_y, dy, da, db);
    } else if (da) {
      if (set_a) add_relu_backward_impl<1, false>(n, relu_y, dy, da, db);
      else add_relu_backward_impl<2, false>(n, relu_y, dy, da, db);
    } else if (db) {
      add_relu_backward_impl<0, true>(n, relu_y, dy, da, db);
    }
  }
  // A: 0 no da, 1 da written, 2 da added to; B: db added to. da is done before db, as the
  // two ops do (da and db may be one buffer: a tensor added to itself).
  template <int A, bool B>
  static void add_relu_backward_impl(size_t n, const float* relu_y, const float* dy, float* da, float* db) {
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; ++i) {
      const float g = blocked::relu_masked(dy[i], relu_y[i]);
      if constexpr (A == 1) da[i] = g;
      if constexpr (A == 2) da[i] += g;
      if constexpr (B) db[i] += g;
    }
  }
  void accumulate(size_t n, const float* dy, float* dx) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) dx[i] += dy[i];
  }
  void dropout_forward(size_t n, const float* x, const float* mask, float* y) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) y[i] = x[i] * mask[i];
  }
  void dropout_backward(size_t n, const float* dy, const float* mask, float* dx) override {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; ++i) dx[i] += dy[i] * mask[i];
  }

  double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing, float scale,
                      float* dlogits, int* correct) override {
    double loss = 0;
    int right = 0;
    const double off = double(smoothing) / classes, on = 1.0 - smoothing + off;
    for (int i = 0; i < n; ++i) {
      const float* z = logits + int64_t(i) * classes;
      float* d = dlogits + int64_t(i) * classes;
      const int label = labels[i];
      int best = 0;
      for (int j = 1; j < classes; ++j)
        if (z[j] > z[best]) best = j;
      right += best == label;
      double sum = 0;
      for (int j = 0; j < classes; ++j) sum += std::exp(double(z[j]) - z[best]);
      const double log_sum = std::log(sum) + z[best];
      for (int j = 0; j < classes; ++j) {
        const double target = j == label ? on : off;
        const double logp = double(z[j]) - log_sum;
        loss -= target * logp;
        d[j] = float(scale * (std::exp(logp) - target) / n);
      }
    }
    if (correct) *correct = right;
    return loss / n;
  }

 private:
  // Whether an activation of c channels and hw positions each runs the blocked ops (at
  // hw = 1 the two layouts are the same, and the NCHW ops serve).
  bool in_blocks(int c, int hw) const { return blocked(c) && hw > 1; }
  // Channels per block of a pooling's activations: the blocked layout's where its input or
  // output is in blocks, else 1 (NCHW).
  int pool_block(const PoolShape& s) const {
    return in_blocks(s.c, s.h * s.w) || in_blocks(s.c, s.p * s.q) ? block_ : 1;
  }

  Scratch cols_, tmp_;  // im2col and GEMM scratch, reused across layers
  std::unique_ptr<DnnlConv> dnnl_;
  int block_ = 0;  // channels per block of the blocked layout (0: NCHW only)
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(CpuConv conv) { return std::make_unique<CpuBackend>(conv); }

// FP32 storage in memory the host reads once the backend has finished (the CPU's, and a
// GPU's managed memory).
void Backend::read_activation(float* host, const float* src, size_t n) {
  synchronize();
  std::memmove(host, src, n * sizeof(float));
}

CpuConv parse_cpu_conv(const std::string& s) {
  if (s == "auto") return CpuConv::Auto;
  if (s == "im2col") return CpuConv::Im2col;
  if (s == "onednn") return CpuConv::Dnnl;
  throw InputError(field("backend.conv") + ": unknown convolution '" + s + "' (valid: auto, im2col, onednn)");
}

BackendKind parse_backend(const std::string& s) {
  if (s == "cpu") return BackendKind::Cpu;
  if (s == "cuda") return BackendKind::Cuda;  // make_cuda_backend refuses a build without it
  throw InputError(field("backend") + ": unknown backend '" + s + "' (valid: cpu, cuda)");
}

bool cpu_has_dnnl() {
#ifdef FUSEPLAN_HAVE_DNNL
  return true;
#else
  return false;
#endif
}

void set_cpu_threads(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}
int cpu_threads() { return omp_get_max_threads(); }

namespace {

// FP16 rounding with the F16C instructions (vcvtps2ph with round to nearest even, then
// back), eight values at a time: the same values as round_fp16, which handles the rest.
// The conversion quiets a NaN but keeps its payload; round_fp16 gives the canonical
// quiet NaN, so NaNs are replaced by it (with their sign) to agree bit for bit.
// This kernel and the three below do the whole groups of eight and return how many
// values they did; the caller's scalar loop does the rest.
__attribute__((target("avx2,f16c"))) size_t round_fp16_f16c(float* x, size_t n) {
  const __m256 sign = _mm256_set1_ps(-0.0f), qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    const __m256 r = _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    const __m256 nan = _mm256_or_ps(_mm256_and_ps(v, sign), qnan);
    _mm256_storeu_ps(x + i, _mm256_blendv_ps(r, nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }
  return i;
}

bool has_f16c() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
  return yes;
}

// Eight FP32 values to FP16 bits, round to nearest even, a NaN as fp16_bits gives it:
// the canonical quiet NaN with its sign (vcvtps2ph would keep part of the payload).
__attribute__((target("avx2,f16c"))) __m128i fp16_bits_f16c(__m256 v) {
  const __m128i bits = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i wide = _mm256_castps_si256(v);
  const __m128i sign = _mm_and_si128(_mm_packs_epi32(_mm256_castsi256_si128(_mm256_srai_epi32(wide, 16)),
                                                     _mm256_extracti128_si256(_mm256_srai_epi32(wide, 16), 1)),
                                     _mm_set1_epi16(static_cast<int16_t>(0x8000)));
  const __m256 unordered = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  const __m128i nan = _mm_packs_epi32(_mm256_castsi256_si128(_mm256_castps_si256(unordered)),
                                      _mm256_extracti128_si256(_mm256_castps_si256(unordered), 1));
  return _mm_blendv_epi8(bits, _mm_or_si128(sign, _mm_set1_epi16(0x7e00)), nan);
}

// Eight FP16 bits to FP32 as fp16_to_float gives them: vcvtph2ps quiets a signalling NaN,
// fp16_to_float keeps its bits, so NaN lanes take those.
__attribute__((target("avx2,f16c"))) __m256 fp16_to_float_f16c(__m128i h) {
  const __m256 f = _mm256_cvtph_ps(h);
  const __m256i wide = _mm256_cvtepu16_epi32(h);
  const __m256i exact = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(wide, _mm256_set1_epi32(0x8000)), 16),
                                        _mm256_or_si256(_mm256_set1_epi32(0x7f800000),
                                                        _mm256_slli_epi32(_mm256_and_si256(wide,
                                                                                           _mm256_set1_epi32(0x3ff)),
                                                                          13)));
  return _mm256_blendv_ps(f, _mm256_castsi256_ps(exact), _mm256_cmp_ps(f, f, _CMP_UNORD_Q));
}

__attribute__((target("avx2,f16c"))) size_t to_fp16_f16c(const float* x, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), fp16_bits_f16c(_mm256_loadu_ps(x + i)));
  return i;
}

__attribute__((target("avx2,f16c"))) size_t from_fp16_f16c(const uint16_t* h, float* out, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, fp16_to_float_f16c(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i))));
  return i;
}

__attribute__((target("avx2,f16c"))) size_t add_fp16_f16c(const uint16_t* a, uint16_t* b, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = fp16_to_float_f16c(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m256 y = fp16_to_float_f16c(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(b + i), fp16_bits_f16c(_mm256_add_ps(x, y)));
  }
  return i;
}

}  // namespace

void to_half_bits(Precision p, const float* x, uint16_t* out, size_t n) {
  if (p == Precision::FP16) {
    for (size_t i = has_f16c() ? to_fp16_f16c(x, out, n) : 0; i < n; ++i) out[i] = fp16_bits(x[i]);
  } else {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) out[i] = bf16_bits(x[i]);
  }
}

void from_half_bits(Precision p, const uint16_t* h, float* out, size_t n) {
  if (p == Precision::FP16) {
    for (size_t i = has_f16c() ? from_fp16_f16c(h, out, n) : 0; i < n; ++i) out[i] = fp16_to_float(h[i]);
  } else {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) out[i] = bf16_to_float(h[i]);
  }
}

void add_half_bits(Precision p, const uint16_t* a, uint16_t* b, size_t n) {
  if (p == Precision::FP16) {
    for (size_t i = has_f16c() ? add_fp16_f16c(a, b, n) : 0; i < n; ++i)
      b[i] = fp16_bits(fp16_to_float(a[i]) + fp16_to_float(b[i]));
  } else {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) b[i] = bf16_bits(bf16_to_float(a[i]) + bf16_to_float(b[i]));
  }
}

void round_span(Precision p, float* x, size_t n) {
  if (p == Precision::FP16) {
    for (size_t i = has_f16c() ? round_fp16_f16c(x, n) : 0; i < n; ++i) x[i] = round_fp16(x[i]);
  } else if (p == Precision::BF16) {
#pragma omp simd
    for (size_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
  }
}

void round_buffer(Precision p, float* x, size_t n) {
  if (p == Precision::FP32) return;
  // Chunks of 64 KiB per task: large buffers split across threads, small ones not at all.
  constexpr size_t chunk = 16384;
  const int64_t chunks = int64_t((n + chunk - 1) / chunk);
  if (chunks <= 1) return round_span(p, x, n);
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) {
    const size_t lo = size_t(c) * chunk;
    round_span(p, x + lo, std::min(chunk, n - lo));
  }
}

}  // namespace fuseplan::exec
