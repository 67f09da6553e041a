// The backend interface: every layer operation the trainer needs, forward and backward,
// on NCHW float buffers the backend owns. The CPU backend implements it with OpenBLAS
// (im2col + GEMM) and OpenMP; a CUDA backend (cuDNN, cuBLAS) implements the same calls.
// Backward calls ADD into input gradients (dx), because an activation feeding several
// layers (a residual branch) receives the sum of their gradients; parameter gradients
// (dw, db) are overwritten.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/exec/conv_algos.hpp"

namespace fuseplan::exec {

struct ConvShape {
  int n = 0, c = 0, h = 0, w = 0;  // input
  int k = 0, r = 0;                // output channels, square kernel size
  int stride = 1, pad = 0;
  int p = 0, q = 0;                // output height, width
};

struct PoolShape {
  int n = 0, c = 0, h = 0, w = 0;
  int kernel = 0, stride = 1, pad = 0;
  int p = 0, q = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // The device stream the backend computes on (a cudaStream_t), null on the CPU.
  virtual void* native_stream() { return nullptr; }

  // Buffers of floats owned by the backend (host memory on CPU, device memory on GPU).
  virtual float* alloc(size_t n) = 0;
  virtual void free(float* p) = 0;
  virtual void zero(float* p, size_t n) = 0;
  // Activation storage. A backend may store the network's activations and their
  // gradients in half precision for real (16-bit elements) instead of as FP32 values
  // rounded to it: activation_storage() is then FP16 or BF16 (and the network's precision
  // must be the same). In that mode every activation argument of the layer calls below
  // (x, y, dy, dx, a, b, da, db of the element-wise calls, the logits and dlogits) points
  // to 16-bit values, allocated with alloc_activation (n elements), zeroed with
  // zero_activation and read on the host only through read_activation; parameters, their
  // gradients, BatchNorm statistics, dropout masks and argmax stay FP32 (int32), and
  // round(), zero() and copy_in() are for FP32 buffers alone. The defaults are FP32
  // storage, where the activation calls are the plain ones.
  virtual Precision activation_storage() const { return Precision::FP32; }
  virtual float* alloc_activation(size_t n) { return alloc(n); }
  virtual void zero_activation(float* p, size_t n) { zero(p, n); }
  // n activation values into host memory as FP32 (waits for the backend first).
  virtual void read_activation(float* host, const float* src, size_t n);
  // Rounds to the nearest value of precision p where half precision is stored (nothing
  // for FP32): the CPU's emulation of half-precision storage, a cast on a GPU.
  virtual void round(Precision p, float* x, size_t n) = 0;
  // Copies n floats from host memory or from this backend's memory into a buffer of this
  // backend.
  virtual void copy_in(float* dst, const float* src, size_t n) = 0;
  // true where the backend's calls read host memory as is (the CPU): the network then
  // hands its input over without a copy.
  virtual bool reads_host_memory() const { return false; }
  // A copy of n floats from host memory into this backend's memory that the caller does
  // not wait for (the next step's batch, copied while this step computes): `src` stays
  // valid and unchanged until await_copy_in(), after which calls see the data. One copy
  // at a time. The defaults copy at once.
  virtual void copy_in_ahead(float* dst, const float* src, size_t n) { copy_in(dst, src, n); }
  virtual void await_copy_in() {}
  // Waits until every call made so far has finished (nothing on the CPU; the stream on a
  // GPU), before host code reads the backend's memory or a clock.
  virtual void synchronize() {}
  // Timing on the device without stalling it (GPU backends): mark() records a point in
  // the backend's stream and returns its number since reset_marks(); once synchronize()
  // has returned, mark_seconds(i) is the time from mark 0 to mark i. Where calls finish
  // before they return (the CPU), timed_on_device() is false and the host clock times.
  virtual bool timed_on_device() const { return false; }
  virtual void reset_marks() {}
  virtual int mark() { return 0; }
  virtual double mark_seconds(int) { return 0; }
  // Step graphs (CUDA graphs): the calls made between begin_graph() and end_graph() are
  // recorded, not run; launch_graph(g) runs graph g's calls as recorded (the same buffers,
  // shapes and scalars; the buffers' contents as they are then), as often as asked. Only a
  // backend with supports_graphs() is asked, never with a host read or a copy from host
  // memory in between.
  virtual bool supports_graphs() const { return false; }
  virtual void begin_graph() { throw std::logic_error(name() + ": no step graphs"); }
  virtual int end_graph() { throw std::logic_error(name() + ": no step graphs"); }
  virtual void launch_graph(int g) {
    (void)g;
    throw std::logic_error(name() + ": no step graphs");
  }
  // true if any of the n values is infinite or NaN (the loss scaler's overflow check).
  virtual bool nonfinite(const float* x, size_t n) = 0;
  // The optimizer's update (optimizer.hpp), on FP32 masters and momenta in this backend's
  // memory, per parameter tensor (slot). Writes the masters rounded to `working` into
  // params and each slot's LARS local rate (1 where LARS does not apply) into
  // local_rates (host memory, one per slot).
  struct OptimizerSlot {
    int64_t offset = 0, numel = 0;
    bool plain = false;  // BatchNorm parameter or bias: no LARS, no weight decay
    // A shard of a tensor (a sharded step): the whole tensor's sums of squares of the
    // masters and of the (scaled) gradients, for LARS; < 0: the slot is the whole tensor
    // and they are summed over it. Host-memory backends only.
    double ww = -1, gg = -1;
  };
  struct OptimizerStep {
    double lr = 0, momentum = 0, weight_decay = 0, trust = 0, eps = 0, inv_scale = 1;
    bool lars = false;
    Precision working = Precision::FP32;
  };
  virtual void optimizer_step(const std::vector<OptimizerSlot>& slots, const OptimizerStep& o, float* masters,
                              float* momenta, const float* grads, float* params, double* local_rates) = 0;

  // y = conv(x, w) + b; w is [k, c, r, r], b may be null.
  virtual void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) = 0;
  // dx += conv^T(dy, w) (dx may be null: the model input), dw = ..., db = ... (db may be null).
  virtual void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx,
                               float* dw, float* db) = 0;
  // y = x w^T + b; x [n, in], w [out, in], b may be null.
  virtual void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) = 0;
  virtual void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx,
                               float* dw, float* db) = 0;
  // Training: batch statistics (saved as mean and 1/sqrt(var + eps)), running averages
  // updated with `momentum` (PyTorch's convention: running = (1 - m) running + m batch,
  // unbiased variance). Evaluation: the running averages.
  virtual void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                                       float* y, float* save_mean, float* save_invstd, float* running_mean,
                                       float* running_var, float momentum, float eps) = 0;
  virtual void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                                      float* y, const float* running_mean, const float* running_var, float eps) = 0;
  virtual void batchnorm_backward(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                                  const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                                  float* dbeta) = 0;
  // A BatchNorm or an add whose only consumer is a ReLU, run as one op where the backend
  // says fuses_relu() (the network asks). BatchNorm: the forward writes max(0, batchnorm(x))
  // into y, the ReLU's output (the BatchNorm's own output is not written); the backward
  // takes that output relu_y and its gradient dy and runs the BatchNorm's backward on dy
  // where relu_y > 0 (0 elsewhere), writing dx or, with `add`, adding to it; it may leave
  // dy masked (nothing reads the ReLU's gradient after). Add: the forward writes
  // max(0, a + b) into y, the ReLU's output; the backward passes dy where relu_y > 0 (0
  // elsewhere) to both inputs: written into da (`set_a`) or added to it, added to db
  // (either may be null). The results are the two ops' bit for bit. A backend without
  // them is never asked.
  virtual bool fuses_relu() const { return false; }
  virtual void batchnorm_relu_forward_train(int n, int c, int hw, const float* x, const float* gamma,
                                            const float* beta, float* y, float* save_mean, float* save_invstd,
                                            float* running_mean, float* running_var, float momentum, float eps) {
    (void)n, (void)c, (void)hw, (void)x, (void)gamma, (void)beta, (void)y, (void)save_mean, (void)save_invstd;
    (void)running_mean, (void)running_var, (void)momentum, (void)eps;
    throw std::logic_error(name() + ": no fused BatchNorm + ReLU");
  }
  virtual void batchnorm_relu_forward_eval(int n, int c, int hw, const float* x, const float* gamma, const float* beta,
                                           float* y, const float* running_mean, const float* running_var, float eps) {
    (void)n, (void)c, (void)hw, (void)x, (void)gamma, (void)beta, (void)y, (void)running_mean, (void)running_var;
    (void)eps;
    throw std::logic_error(name() + ": no fused BatchNorm + ReLU");
  }
  virtual void batchnorm_relu_backward(int n, int c, int hw, const float* x, const float* gamma, const float* relu_y,
                                       float* dy, const float* save_mean, const float* save_invstd, float* dx,
                                       float* dgamma, float* dbeta, bool add) {
    (void)n, (void)c, (void)hw, (void)x, (void)gamma, (void)relu_y, (void)dy, (void)save_mean, (void)save_invstd;
    (void)dx, (void)dgamma, (void)dbeta, (void)add;
    throw std::logic_error(name() + ": no fused BatchNorm + ReLU");
  }
  virtual void add_relu_forward(size_t n, const float* a, const float* b, float* y) {
    (void)n, (void)a, (void)b, (void)y;
    throw std::logic_error(name() + ": no fused add + ReLU");
  }
  virtual void add_relu_backward(size_t n, const float* relu_y, const float* dy, float* da, bool set_a, float* db) {
    (void)n, (void)relu_y, (void)dy, (void)da, (void)set_a, (void)db;
    throw std::logic_error(name() + ": no fused add + ReLU");
  }
  virtual void relu_forward(size_t n, const float* x, float* y) = 0;
  virtual void relu_backward(size_t n, const float* y, const float* dy, float* dx) = 0;
  // argmax: one int per output element (the flat input index of the maximum).
  virtual void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* argmax) = 0;
  virtual void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* argmax, float* dx) = 0;
  // Average pooling with padding counted (PyTorch's count_include_pad=True).
  virtual void avgpool_forward(const PoolShape& s, const float* x, float* y) = 0;
  virtual void avgpool_backward(const PoolShape& s, const float* dy, float* dx) = 0;
  // Adaptive average pooling to p x q (PyTorch's bins: floor(i h / p) .. ceil((i+1) h / p)).
  virtual void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) = 0;
  virtual void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) = 0;
  virtual void add_forward(size_t n, const float* a, const float* b, float* y) = 0;
  virtual void accumulate(size_t n, const float* dy, float* dx) = 0;  // dx += dy
  // Activation layout. A backend may keep an activation [n, c, h, w] whose channel count
  // c is a multiple of its block in a channel-blocked layout ([n, c / B, h, w, B], oneDNN's
  // nChw16c), which its convolutions read and write without reordering: blocked(c) says
  // so (a block of all c channels is NHWC, the CUDA backend's layout in half-precision
  // storage). Element-wise ops do not care; the ops that are given shapes (convolution,
  // BatchNorm, pooling) follow it; the network brings the model input (FP32, NCHW, host
  // memory) into it, and into the backend's activation storage, with import_activation
  // and flattens out of it through the calls below. With hw = 1 both layouts coincide.
  virtual bool blocked(int c) const {
    (void)c;
    return false;
  }
  virtual void import_activation(int n, int c, int hw, const float* plain, float* dst) {
    (void)c, (void)hw;
    copy_in(dst, plain, size_t(n) * size_t(c) * size_t(hw));
  }
  // y [n, c * hw] in NCHW order from x; backward: dx from dy, added when `add`.
  virtual void flatten_forward(int n, int c, int hw, const float* x, float* y) {
    assign(size_t(n) * size_t(c) * size_t(hw), x, y);
  }
  virtual void flatten_backward(int n, int c, int hw, const float* dy, float* dx, bool add) {
    if (add) accumulate(size_t(n) * size_t(c) * size_t(hw), dy, dx);
    else assign(size_t(n) * size_t(c) * size_t(hw), dy, dx);
  }

  // The same with the input gradient written instead of added to (dx holds anything
  // before): for the first consumer of a tensor in backward, which saves zeroing dx and
  // reading it back. The defaults zero dx and add; a backend overrides them where that
  // traffic matters (the CPU's, whose layers are memory-bound).
  virtual void conv2d_backward_set(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx,
                                   float* dw, float* db) {
    if (dx) zero_activation(dx, size_t(s.n) * size_t(s.c) * size_t(s.h) * size_t(s.w));
    conv2d_backward(s, x, w, dy, dx, dw, db);
  }
  virtual void batchnorm_backward_set(int n, int c, int hw, const float* x, const float* gamma, const float* dy,
                                      const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                                      float* dbeta) {
    zero_activation(dx, size_t(n) * size_t(c) * size_t(hw));
    batchnorm_backward(n, c, hw, x, gamma, dy, save_mean, save_invstd, dx, dgamma, dbeta);
  }
  virtual void relu_backward_set(size_t n, const float* y, const float* dy, float* dx) {
    zero_activation(dx, n);
    relu_backward(n, y, dy, dx);
  }
  virtual void assign(size_t n, const float* dy, float* dx) {  // dx = dy
    zero_activation(dx, n);
    accumulate(n, dy, dx);
  }
  // y = x * mask where mask holds 0 or 1 / (1 - p), drawn by the caller.
  virtual void dropout_forward(size_t n, const float* x, const float* mask, float* y) = 0;
  virtual void dropout_backward(size_t n, const float* dy, const float* mask, float* dx) = 0;
  // Mean softmax cross-entropy over n rows of `classes` logits against integer labels,
  // with label smoothing eps (target 1 - eps + eps / classes on the label, eps / classes
  // elsewhere). Writes dlogits = scale x d(loss)/d(logits); returns the loss and counts
  // the rows whose largest logit is the label.
  virtual double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing,
                              float scale, float* dlogits, int* correct) = 0;
};

// Convolutions on the CPU: oneDNN's primitives when the build found libdnnl-dev (Auto
// picks them then; activations whose channels fill whole blocks are then kept in its
// blocked layout, Backend::blocked), or im2col + one OpenBLAS SGEMM over the batch on
// NCHW (always available, the reference; Auto without oneDNN).
enum class CpuConv { Auto, Im2col, Dnnl };
CpuConv parse_cpu_conv(const std::string& s);  // InputError naming --conv
std::unique_ptr<Backend> make_cpu_backend(CpuConv conv = CpuConv::Auto);

// A buffer a backend owns, freed when this goes (so a constructor that throws halfway
// leaks nothing).
class DeviceBuffer {
 public:
  struct Activation {};  // the tag of an activation buffer (Backend::alloc_activation)
  DeviceBuffer() = default;
  DeviceBuffer(Backend& be, size_t n) : be_(&be), p_(be.alloc(n)) {}
  DeviceBuffer(Backend& be, size_t n, Activation) : be_(&be), p_(be.alloc_activation(n)) {}
  ~DeviceBuffer() { reset(); }
  DeviceBuffer(DeviceBuffer&& o) noexcept : be_(o.be_), p_(o.p_) { o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_;
      p_ = o.p_;
      o.p_ = nullptr;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  float* get() const { return p_; }

 private:
  void reset() {
    if (p_) be_->free(p_);
    p_ = nullptr;
  }
  Backend* be_ = nullptr;
  float* p_ = nullptr;
};
bool cpu_has_dnnl();

// The CUDA backend (exec/src/cuda_backend.cu, docs/gpu.md): cuDNN, cuBLAS and CUDA
// kernels, built whenever CMake finds nvcc. `tf32`: FP32 convolutions and GEMMs may use
// TF32 tensor cores (PyTorch's default); off = strict FP32 (the parity tests).
struct CudaOptions {
  int device = 0;
  bool tf32 = true;
  // How convolution algorithms are chosen; the choices recorded earlier (their shapes
  // reuse their algorithms; the caller reads them from conv_algo_file, so that a bad file
  // is refused before a device is used); the file (fuseplan.conv-algos/1) rewritten as
  // new shapes are chosen, "" = none.
  ConvAlgoSearch conv_algos = ConvAlgoSearch::Heuristic;
  ConvAlgoTable conv_algos_recorded;
  std::string conv_algo_file;
  // Activations stored as 16-bit values in NHWC on tensor cores (FP16 or BF16, the
  // network's precision), or FP32 NCHW (FP32 networks, and half precision emulated by
  // rounding as on the CPU). Backend::activation_storage.
  Precision storage = Precision::FP32;
};
int cuda_device_count();  // 0 without a driver or a device (or without the CUDA build)
// The GPU a rank uses: `device` when given (>= 0), else its local rank modulo the node's
// GPUs (0 where none is visible; the backend or NCCL then says so).
inline int cuda_device_for(int device, int local_rank) {
  if (device >= 0) return device;
  const int count = cuda_device_count();
  return count > 0 ? local_rank % count : 0;
}
// InputError when the build has no CUDA backend, no device is visible or `device` is out
// of range.
std::unique_ptr<Backend> make_cuda_backend(const CudaOptions& opt = {});

// --backend: cpu | cuda.
enum class BackendKind { Cpu, Cuda };
BackendKind parse_backend(const std::string& s);  // InputError naming --backend
// Threads of the CPU backend (OpenMP loops and OpenBLAS); default: all cores.
void set_cpu_threads(int n);
int cpu_threads();

}  // namespace fuseplan::exec
