// Parity of the CUDA backend with the CPU backend: every op on the same random inputs,
// compared by the normalised error max|gpu - cpu| / max|cpu| (strict FP32 tight; TF32
// tensor cores and half-precision inputs looser), and one LARS training step of a small
// ResNet. Prints one line per op (the closing note's table). Exits 77 (CTest: skipped)
// where no CUDA device is visible, so CI, which has no GPU, compiles it and skips it.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "fuseplan/exec/half.hpp"
#include "fuseplan/exec/network.hpp"
#include "fuseplan/exec/ops.hpp"
#include "random_data.hpp"
#include "fuseplan/exec/optimizer.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"

using namespace fuseplan;
using namespace fuseplan::exec;

namespace {

double norm_error(const float* gpu, const float* cpu, size_t n) {
  double diff = 0, ref = 1e-30;
  for (size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::abs(double(gpu[i]) - double(cpu[i])));
    ref = std::max(ref, std::abs(double(cpu[i])));
  }
  return diff / ref;
}

// The largest error seen per op and mode, printed at the end.
std::map<std::string, double>& table() {
  static std::map<std::string, double> t;
  return t;
}

// The same op on both backends: buffers made from host vectors, results compared.
struct Pair {
  Backend& cpu;
  Backend& gpu;
  std::string mode;
  double tol;
  std::vector<DeviceBuffer> keep;

  // A buffer on each backend holding `v`.
  std::pair<float*, float*> put(const std::vector<float>& v) {
    keep.emplace_back(cpu, v.size());
    float* c = keep.back().get();
    cpu.copy_in(c, v.data(), v.size());
    keep.emplace_back(gpu, v.size());
    float* g = keep.back().get();
    gpu.copy_in(g, v.data(), v.size());
    return {c, g};
  }
  std::pair<float*, float*> zeros(size_t n) { return put(std::vector<float>(n, 0.0f)); }
  // An op's error e, kept in the table (the largest per op and mode) and held to `bound`.
  void record(const std::string& op, double e, double bound) {
    double& worst = table()[op + " (" + mode + ")"];
    worst = std::max(worst, e);
    INFO(op << " " << mode << ": normalised error " << e);
    CHECK(e <= bound);
  }
  // Managed memory: the host reads the GPU buffer once the stream has finished.
  void expect(const std::string& op, std::pair<float*, float*> b, size_t n, double scale = 1) {
    gpu.synchronize();
    record(op, norm_error(b.second, b.first, n) * scale, tol);
  }
};

// Every op (forward and backward) once, inputs rounded to `in` precision.
void all_ops(Pair& t, Precision in) {
  auto data = [&](size_t n, uint64_t seed, float scale = 1.0f) {
    auto v = randn(n, seed, scale);
    if (in == Precision::FP16) for (auto& x : v) x = __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, x) & 0xffffe000u);
    if (in == Precision::BF16) for (auto& x : v) x = __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, x) & 0xffff0000u);
    return v;
  };
  {  // conv2d: 3x3 stride 2 padding 1 with bias, and 1x1
    for (auto [r, stride, pad] : {std::tuple{3, 2, 1}, std::tuple{1, 1, 0}, std::tuple{7, 2, 3}}) {
      ConvShape s{4, 8, 12, 12, 16, r, stride, pad, 0, 0};
      s.p = (s.h + 2 * pad - r) / stride + 1, s.q = s.p;
      const size_t nx = size_t(s.n) * s.c * s.h * s.w, nw = size_t(s.k) * s.c * r * r, ny = size_t(s.n) * s.k * s.p * s.q;
      auto x = t.put(data(nx, 1)), w = t.put(data(nw, 2, 0.2f)), b = t.put(data(size_t(s.k), 3)),
           y = t.zeros(ny), dy = t.put(data(ny, 4)), dx = t.put(data(nx, 5)), dw = t.zeros(nw), db = t.zeros(size_t(s.k));
      t.cpu.conv2d_forward(s, x.first, w.first, b.first, y.first);
      t.gpu.conv2d_forward(s, x.second, w.second, b.second, y.second);
      t.expect("conv2d forward", y, ny);
      t.cpu.conv2d_backward(s, x.first, w.first, dy.first, dx.first, dw.first, db.first);
      t.gpu.conv2d_backward(s, x.second, w.second, dy.second, dx.second, dw.second, db.second);
      t.expect("conv2d backward dx (accumulated)", dx, nx);
      t.expect("conv2d backward dw", dw, nw);
      t.expect("conv2d backward db", db, size_t(s.k));
    }
  }
  {  // linear
    const int n = 16, in_f = 96, out = 10;
    auto x = t.put(data(size_t(n) * in_f, 6)), w = t.put(data(size_t(out) * in_f, 7, 0.1f)),
         b = t.put(data(size_t(out), 8)), y = t.zeros(size_t(n) * out), dy = t.put(data(size_t(n) * out, 9)),
         dx = t.put(data(size_t(n) * in_f, 10)), dw = t.zeros(size_t(out) * in_f), db = t.zeros(size_t(out));
    t.cpu.linear_forward(n, in_f, out, x.first, w.first, b.first, y.first);
    t.gpu.linear_forward(n, in_f, out, x.second, w.second, b.second, y.second);
    t.expect("linear forward", y, size_t(n) * out);
    t.cpu.linear_backward(n, in_f, out, x.first, w.first, dy.first, dx.first, dw.first, db.first);
    t.gpu.linear_backward(n, in_f, out, x.second, w.second, dy.second, dx.second, dw.second, db.second);
    t.expect("linear backward dx (accumulated)", dx, size_t(n) * in_f);
    t.expect("linear backward dw", dw, size_t(out) * in_f);
    t.expect("linear backward db", db, size_t(out));
  }
  {  // batchnorm
    const int n = 8, c = 6, hw = 25;
    const size_t total = size_t(n) * c * hw;
    auto xv = data(total, 11);
    for (size_t i = 0; i < total; ++i) xv[i] = xv[i] * 2 + float(i / hw % c);  // per-channel offsets
    auto x = t.put(xv), g = t.put(data(size_t(c), 12)), be = t.put(data(size_t(c), 13)), y = t.zeros(total),
         mean = t.zeros(size_t(c)), invstd = t.zeros(size_t(c)), rm = t.put(std::vector<float>(size_t(c), 0.5f)),
         rv = t.put(std::vector<float>(size_t(c), 2.0f)), dy = t.put(data(total, 14)), dx = t.put(data(total, 15)),
         dg = t.zeros(size_t(c)), db = t.zeros(size_t(c));
    t.cpu.batchnorm_forward_train(n, c, hw, x.first, g.first, be.first, y.first, mean.first, invstd.first, rm.first,
                                  rv.first, 0.1f, 1e-5f);
    t.gpu.batchnorm_forward_train(n, c, hw, x.second, g.second, be.second, y.second, mean.second, invstd.second,
                                  rm.second, rv.second, 0.1f, 1e-5f);
    t.expect("batchnorm forward (train)", y, total);
    t.expect("batchnorm saved mean", mean, size_t(c));
    t.expect("batchnorm saved 1/std", invstd, size_t(c));
    t.expect("batchnorm running mean", rm, size_t(c));
    t.expect("batchnorm running variance", rv, size_t(c));
    t.cpu.batchnorm_backward(n, c, hw, x.first, g.first, dy.first, mean.first, invstd.first, dx.first, dg.first, db.first);
    t.gpu.batchnorm_backward(n, c, hw, x.second, g.second, dy.second, mean.second, invstd.second, dx.second, dg.second,
                             db.second);
    t.expect("batchnorm backward dx (accumulated)", dx, total);
    t.expect("batchnorm backward dgamma", dg, size_t(c));
    t.expect("batchnorm backward dbeta", db, size_t(c));
    auto ye = t.zeros(total);
    t.cpu.batchnorm_forward_eval(n, c, hw, x.first, g.first, be.first, ye.first, rm.first, rv.first, 1e-5f);
    t.gpu.batchnorm_forward_eval(n, c, hw, x.second, g.second, be.second, ye.second, rm.second, rv.second, 1e-5f);
    t.expect("batchnorm forward (eval)", ye, total);
  }
  {  // pooling: max 3x3/2 pad 1, avg 2x2/2, adaptive 7x7 -> 3x3 (uneven bins)
    for (int kind = 0; kind < 3; ++kind) {
      PoolShape s{2, 3, 7, 7, kind == 1 ? 2 : 3, 2, kind == 0 ? 1 : 0, 0, 0};
      if (kind == 2) s.p = s.q = 3;
      else s.p = s.q = (s.h + 2 * s.pad - s.kernel) / s.stride + 1;
      const size_t nx = size_t(s.n) * s.c * s.h * s.w, ny = size_t(s.n) * s.c * s.p * s.q;
      auto x = t.put(data(nx, 16)), y = t.zeros(ny), dy = t.put(data(ny, 17)), dx = t.put(data(nx, 18)),
           arg = t.zeros(ny);
      const char* name = kind == 0 ? "maxpool" : kind == 1 ? "avgpool" : "adaptive avgpool";
      auto* ac = reinterpret_cast<int32_t*>(arg.first);
      auto* ag = reinterpret_cast<int32_t*>(arg.second);
      if (kind == 0) t.cpu.maxpool_forward(s, x.first, y.first, ac), t.gpu.maxpool_forward(s, x.second, y.second, ag);
      if (kind == 1) t.cpu.avgpool_forward(s, x.first, y.first), t.gpu.avgpool_forward(s, x.second, y.second);
      if (kind == 2) t.cpu.adaptive_avgpool_forward(s, x.first, y.first), t.gpu.adaptive_avgpool_forward(s, x.second, y.second);
      t.expect(std::string(name) + " forward", y, ny);
      if (kind == 0) {
        CHECK(std::equal(ac, ac + ny, ag));
        t.cpu.maxpool_backward(s, dy.first, ac, dx.first), t.gpu.maxpool_backward(s, dy.second, ag, dx.second);
      }
      if (kind == 1) t.cpu.avgpool_backward(s, dy.first, dx.first), t.gpu.avgpool_backward(s, dy.second, dx.second);
      if (kind == 2)
        t.cpu.adaptive_avgpool_backward(s, dy.first, dx.first), t.gpu.adaptive_avgpool_backward(s, dy.second, dx.second);
      t.expect(std::string(name) + " backward (accumulated)", dx, nx);
    }
  }
  {  // elementwise
    const size_t n = 1000;
    auto a = t.put(data(n, 19)), b = t.put(data(n, 20)), y = t.zeros(n), d = t.put(data(n, 21));
    t.cpu.relu_forward(n, a.first, y.first), t.gpu.relu_forward(n, a.second, y.second);
    t.expect("relu forward", y, n);
    t.cpu.relu_backward(n, y.first, b.first, d.first), t.gpu.relu_backward(n, y.second, b.second, d.second);
    t.expect("relu backward (accumulated)", d, n);
    t.cpu.add_forward(n, a.first, b.first, y.first), t.gpu.add_forward(n, a.second, b.second, y.second);
    t.expect("add", y, n);
    t.cpu.accumulate(n, a.first, d.first), t.gpu.accumulate(n, a.second, d.second);
    t.expect("accumulate", d, n);
    std::vector<float> mask(n);
    for (size_t i = 0; i < n; ++i) mask[i] = i % 3 ? 2.0f : 0.0f;
    auto m = t.put(mask);
    t.cpu.dropout_forward(n, a.first, m.first, y.first), t.gpu.dropout_forward(n, a.second, m.second, y.second);
    t.expect("dropout forward", y, n);
    t.cpu.dropout_backward(n, b.first, m.first, d.first), t.gpu.dropout_backward(n, b.second, m.second, d.second);
    t.expect("dropout backward (accumulated)", d, n);
  }
  {  // softmax cross-entropy with label smoothing
    const int n = 32, classes = 10;
    std::vector<int32_t> labels(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) labels[size_t(i)] = (i * 7) % classes;
    auto z = t.put(data(size_t(n) * classes, 22, 3.0f)), d = t.zeros(size_t(n) * classes);
    int rc = 0, rg = 0;
    const double lc = t.cpu.softmax_xent(n, classes, z.first, labels.data(), 0.1f, 1024.0f, d.first, &rc);
    const double lg = t.gpu.softmax_xent(n, classes, z.second, labels.data(), 0.1f, 1024.0f, d.second, &rg);
    CHECK(rc == rg);
    t.record("softmax cross-entropy loss", std::abs(lg - lc) / std::abs(lc), t.tol);
    t.expect("softmax cross-entropy dlogits", d, size_t(n) * classes);
  }
}

std::unique_ptr<Backend> gpu(bool tf32, Precision storage = Precision::FP32) {
  CudaOptions o;
  o.tf32 = tf32;
  o.storage = storage;
  return make_cuda_backend(o);
}

// A backend storing activations in 16-bit precision p (TF32 on), or none where this GPU
// cannot (BF16 before compute capability 8.0), with the reason as a warning.
std::unique_ptr<Backend> gpu_storing(Precision p) {
  try {
    return gpu(true, p);
  } catch (const InputError& e) {
    WARN(e.what());
    return nullptr;
  }
}

}  // namespace

// The ops compare plain NCHW buffers: the CPU reference is the im2col backend, whose
// convolutions read and write NCHW (oneDNN's keeps activations in channel blocks, which
// only the network's import and flatten translate).
TEST_CASE("every CUDA op matches the CPU op: strict FP32") {
  auto c = make_cpu_backend(CpuConv::Im2col);
  auto g = gpu(false);
  Pair t{*c, *g, "fp32 strict", 1e-5, {}};
  all_ops(t, Precision::FP32);
}

TEST_CASE("every CUDA op matches the CPU op: TF32 tensor cores, half-precision inputs") {
  auto c = make_cpu_backend(CpuConv::Im2col);
  auto g = gpu(true);
  Pair a{*c, *g, "tf32", 5e-3, {}};
  all_ops(a, Precision::FP32);
  Pair h{*c, *g, "fp16 inputs, tf32", 5e-3, {}};
  all_ops(h, Precision::FP16);
  Pair b{*c, *g, "bf16 inputs, tf32", 5e-3, {}};
  all_ops(b, Precision::BF16);
}

TEST_CASE("half-precision rounding on the GPU is the CPU's, bit for bit") {
  auto c = make_cpu_backend();
  auto g = gpu(false);
  std::vector<float> v = randn(4096, 30, 100.0f);
  v.insert(v.end(), {0.0f, -0.0f, 65504.0f, 65520.0f, 1e5f, 6e-8f, 1e-8f, 3.0e38f, INFINITY, -INFINITY});
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    Pair t{*c, *g, std::string(precision_name(p)), 0, {}};
    auto b = t.put(v);
    c->round(p, b.first, v.size());
    g->round(p, b.second, v.size());
    g->synchronize();  // managed memory: the host compares once the kernel has finished
    CHECK(std::memcmp(b.first, b.second, v.size() * sizeof(float)) == 0);
    t.expect("round to " + std::string(precision_name(p)), b, v.size());
  }
}

// One forward, backward and LARS update of ResNet-18 (32x32, batch 8) from the same
// weights and inputs. In FP32 the GPU step must match the CPU step tightly. In FP16/BF16
// storage every activation is rounded, so a last-bit difference in one layer's sum can
// flip later roundings: there the GPU may differ from the CPU by no more than the CPU's
// own half-precision step differs from its FP32 step (twice that, as margin). The loss
// is one number from half-precision logits, where that difference can cancel by chance:
// it may also be off by 4 units of the precision's relative spacing (2^-10 FP16, 2^-7 BF16).
struct StepResult {
  double loss;
  std::vector<float> grads, params, logits;  // logits: evaluation after the update
};
StepResult lars_step(Backend& be, Precision p) {
  ModelOptions mo;
  mo.resolution = 32, mo.channels = 3, mo.classes = 10;
  const Model m = build_zoo_model("resnet18", mo);
  NetworkOptions no;
  no.precision = p;
  Network net(m, 8, be, no);
  OptimizerOptions oo;
  oo.lr = 2.0;
  oo.total_steps = 10;
  Optimizer opt(net, net.params(), oo);
  const auto input = randn(size_t(8) * 3 * 32 * 32, 40);
  std::vector<int32_t> labels{0, 1, 2, 3, 4, 5, 6, 7};
  std::mt19937_64 rng(1);
  net.forward(input.data(), true, rng);
  int hits = 0;
  const float scale = p == Precision::FP16 ? 1024.0f : 1.0f;
  StepResult r;
  r.loss = net.backward(labels.data(), 0.1f, scale, &hits);
  const size_t n = size_t(net.param_count());
  r.grads.assign(net.grads(), net.grads() + n);
  for (auto& g : r.grads) g /= scale;
  opt.step(3, net.grads(), scale, net.params(), p);
  r.params.assign(net.params(), net.params() + n);
  net.forward(input.data(), false, rng);
  net.read_logits(r.logits);
  return r;
}

TEST_CASE("the overflow check finds an infinity or a NaN anywhere, as the CPU's") {
  auto c = make_cpu_backend();
  auto g = gpu(false);
  const size_t n = 3'000'001;
  for (float bad : {INFINITY, -INFINITY, NAN})
    for (size_t at : {size_t(0), n / 2, n - 1}) {
      std::vector<float> v = randn(n, 50);
      Pair t{*c, *g, "", 0, {}};
      auto b = t.put(v);
      CHECK_FALSE(g->nonfinite(b.second, n));
      v[at] = bad;
      auto b2 = t.put(v);
      CHECK(c->nonfinite(b2.first, n));
      CHECK(g->nonfinite(b2.second, n));
    }
}

// A half-precision GPU step against the CPU's (`cpu`, the same precision emulated): each
// error recorded in the table under `mode` and held to `factor` times the CPU's own error
// against its FP32 step (`cpu32`), with the floors above; the evaluation logits too when
// `logits`.
void check_half_step(const StepResult& dev, const StepResult& cpu, const StepResult& cpu32, Precision p,
                     const std::string& mode, double factor, bool logits) {
  const size_t n = cpu.grads.size();
  const double loss_err = std::abs(dev.loss - cpu.loss) / cpu.loss;
  const double grad_err = norm_error(dev.grads.data(), cpu.grads.data(), n);
  const double param_err = norm_error(dev.params.data(), cpu.params.data(), n);
  table()["resnet18 step: loss (" + mode + ")"] = loss_err;
  table()["resnet18 step: gradients (" + mode + ")"] = grad_err;
  table()["resnet18 step: weights after LARS (" + mode + ")"] = param_err;
  const double ref_loss = std::abs(cpu.loss - cpu32.loss) / cpu32.loss,
               ref_grad = norm_error(cpu.grads.data(), cpu32.grads.data(), n),
               ref_param = norm_error(cpu.params.data(), cpu32.params.data(), n);
  const std::string ref = "resnet18 step, CPU " + std::string(precision_name(p)) + " vs CPU fp32 (the bound): ";
  table()[ref + "loss"] = ref_loss;
  table()[ref + "gradients"] = ref_grad;
  table()[ref + "weights"] = ref_param;
  const double spacing = p == Precision::FP16 ? 0x1p-10 : 0x1p-7;
  CHECK(loss_err <= std::max(factor * ref_loss, 4 * spacing));
  CHECK(grad_err <= std::max(factor * ref_grad, 1e-3));
  CHECK(param_err <= std::max(factor * ref_param, 1e-4));
  if (!logits) return;
  const double logit_err = norm_error(dev.logits.data(), cpu.logits.data(), cpu.logits.size());
  const double ref_logit = norm_error(cpu.logits.data(), cpu32.logits.data(), cpu.logits.size());
  table()["resnet18 step: evaluation logits (" + mode + ")"] = logit_err;
  CHECK(logit_err <= std::max(factor * ref_logit, 4 * spacing));
}

TEST_CASE("one LARS step of a small ResNet on the GPU matches the CPU step") {
  auto c = make_cpu_backend();
  const StepResult cpu32 = lars_step(*c, Precision::FP32);
  {
    auto g = gpu(false);
    const StepResult dev = lars_step(*g, Precision::FP32);
    const size_t n = cpu32.grads.size();
    const double loss_err = std::abs(dev.loss - cpu32.loss) / cpu32.loss;
    const double grad_err = norm_error(dev.grads.data(), cpu32.grads.data(), n);
    const double param_err = norm_error(dev.params.data(), cpu32.params.data(), n);
    table()["resnet18 step: loss (fp32 strict)"] = loss_err;
    table()["resnet18 step: gradients (fp32 strict)"] = grad_err;
    table()["resnet18 step: weights after LARS (fp32 strict)"] = param_err;
    CHECK(loss_err <= 1e-4);
    CHECK(grad_err <= 1e-3);
    CHECK(param_err <= 1e-4);
  }
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    auto g = gpu(true);
    check_half_step(lars_step(*g, p), lars_step(*c, p), cpu32, p, std::string(precision_name(p)) + " storage, tf32", 2,
                    false);
  }
}

// BatchNorm on 16-bit NHWC activations at a size that runs cuDNN's persistent kernel (a
// ResNet-50 layer4 shape at batch 64), against the CPU's on the same rounded inputs:
// outputs and the input gradient within two units of the precision's spacing (each is
// rounded once to 16 bits), statistics and parameter gradients (FP32 sums) tightly.
TEST_CASE("BatchNorm on 16-bit NHWC activations at the persistent kernel's sizes matches the CPU's") {
  const int n = 64, c = 512, hw = 49;
  const size_t total = size_t(n) * c * hw;
  auto cpu = make_cpu_backend(CpuConv::Im2col);
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    const std::unique_ptr<Backend> g = gpu_storing(p);
    if (!g) continue;
    const std::string mode = std::string(precision_name(p)) + " NHWC storage";
    auto rounded = [&](std::vector<float> v) {
      for (auto& x : v) x = round_to(p, x);
      return v;
    };
    std::vector<float> xv = randn(total, 60), dyv = randn(total, 61);
    for (size_t i = 0; i < total; ++i) xv[i] = xv[i] * 2 + float(i / hw % 7);  // per-channel offsets
    xv = rounded(xv), dyv = rounded(dyv);
    const std::vector<float> gamma = randn(size_t(c), 62), beta = randn(size_t(c), 63);
    // The CPU reference on NCHW FP32 buffers; outputs rounded as 16-bit storage rounds them.
    // FP32 buffers on both backends (first: the CPU's, second: the GPU's); the activations
    // are the CPU's alone here, the GPU's come in 16-bit below.
    Pair t{*cpu, *g, mode, 0, {}};
    const auto stat = t.zeros(2 * size_t(c)), run = t.put(std::vector<float>(2 * size_t(c), 1.0f)),
               gm = t.put(gamma), bt = t.put(beta), dg = t.zeros(size_t(c)), db = t.zeros(size_t(c));
    auto put_cpu = [&](const std::vector<float>& v) {
      t.keep.emplace_back(*cpu, v.size());
      cpu->copy_in(t.keep.back().get(), v.data(), v.size());
      return t.keep.back().get();
    };
    float *cx = put_cpu(xv), *cdy = put_cpu(dyv), *cy = put_cpu(std::vector<float>(total)),
          *cdx = put_cpu(std::vector<float>(total));
    cpu->batchnorm_forward_train(n, c, hw, cx, gm.first, bt.first, cy, stat.first, stat.first + c, run.first,
                                 run.first + c, 0.1f, 1e-5f);
    cpu->batchnorm_backward(n, c, hw, cx, gm.first, cdy, stat.first, stat.first + c, cdx, dg.first, db.first);
    const std::vector<float> ry = rounded({cy, cy + total}), rdx = rounded({cdx, cdx + total});
    // The GPU: activations imported into 16-bit NHWC, read back through flatten (NCHW).
    auto act = [&](const std::vector<float>* v) {
      t.keep.emplace_back(*g, total, DeviceBuffer::Activation{});
      float* b = t.keep.back().get();
      if (v) g->import_activation(n, c, hw, v->data(), b);
      else g->zero_activation(b, total);
      return b;
    };
    auto read = [&](const float* nhwc) {
      float* flat = act(nullptr);
      g->flatten_forward(n, c, hw, nhwc, flat);
      std::vector<float> host(total);
      g->read_activation(host.data(), flat, total);
      return host;
    };
    float *gx = act(&xv), *gdy = act(&dyv), *gy = act(nullptr), *gdx = act(nullptr);
    g->batchnorm_forward_train(n, c, hw, gx, gm.second, bt.second, gy, stat.second, stat.second + c, run.second,
                               run.second + c, 0.1f, 1e-5f);
    g->batchnorm_backward(n, c, hw, gx, gm.second, gdy, stat.second, stat.second + c, gdx, dg.second, db.second);
    const std::vector<float> y = read(gy), dx = read(gdx);
    const double spacing = p == Precision::FP16 ? 0x1p-10 : 0x1p-7;
    t.record("batchnorm forward 64x512x7x7", norm_error(y.data(), ry.data(), total), 2 * spacing);
    t.record("batchnorm backward dx 64x512x7x7", norm_error(dx.data(), rdx.data(), total), 2 * spacing);
    g->synchronize();  // managed memory: the host reads the FP32 buffers below
    t.record("batchnorm saved mean, 1/std", norm_error(stat.second, stat.first, 2 * size_t(c)), 1e-4);
    t.record("batchnorm running mean, variance", norm_error(run.second, run.first, 2 * size_t(c)), 1e-4);
    t.record("batchnorm backward dgamma", norm_error(dg.second, dg.first, size_t(c)), 1e-3);
    t.record("batchnorm backward dbeta", norm_error(db.second, db.first, size_t(c)), 1e-3);
  }
}

// The same step with 16-bit NHWC activations on tensor cores (CudaOptions::storage, the
// default of `--precision fp16/bf16` on the GPU). Real 16-bit storage also rounds the
// model input and each partial sum of a gradient with two consumers (the residual
// branches), which the CPU's emulation keeps in FP32 until the sum is complete: the bound
// is three times the CPU's own half-precision error instead of two. Evaluation logits
// read back through the backend (16-bit to FP32 on the host) are held to the same bound.
TEST_CASE("one LARS step of a small ResNet with 16-bit NHWC activations matches the CPU step") {
  auto c = make_cpu_backend();
  const StepResult cpu32 = lars_step(*c, Precision::FP32);
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    const std::unique_ptr<Backend> g = gpu_storing(p);
    if (!g) continue;
    check_half_step(lars_step(*g, p), lars_step(*c, p), cpu32, p, std::string(precision_name(p)) + " NHWC storage", 3,
                    true);
  }
}

int main(int argc, char** argv) {
  Catch::Session session;
  if (int rc = session.applyCommandLine(argc, argv)) return rc;
  const auto& cfg = session.configData();
  const bool listing = cfg.listTests || cfg.listTestNamesOnly || cfg.listTags || cfg.listReporters;
  if (!listing && cuda_device_count() == 0) {
    std::printf("no CUDA device visible: skipped\n");
    return 77;
  }
  const int failed = session.run();
  if (!listing) {
    std::printf("\n%-62s %s\n", "op (mode)", "max normalised error");
    for (const auto& [op, e] : table()) std::printf("%-62s %.3g\n", op.c_str(), e);
  }
  return failed ? 1 : 0;
}
