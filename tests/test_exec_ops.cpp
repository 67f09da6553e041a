// The CPU backend's ops: every backward against central finite differences of its
// forward (small shapes, a random linear functional of the output as the loss), and
// half-precision rounding against the IEEE definitions.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "device_check.hpp"
#include "fuseplan/exec/half.hpp"
#include "fuseplan/exec/ops.hpp"
#include "random_data.hpp"

using namespace fuseplan;
using namespace fuseplan::exec;

namespace {

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double(a[i]) * b[i];
  return s;
}

// Compares `analytic` (d loss / d x) with central differences of `loss` over x, at up to
// 60 evenly spread positions.
void check_grad(const char* what, std::vector<float>& x, const std::vector<float>& analytic,
                const std::function<double()>& loss, double eps = 1e-2) {
  REQUIRE(analytic.size() == x.size());
  const size_t step = std::max<size_t>(1, x.size() / 60);
  for (size_t i = 0; i < x.size(); i += step) {
    const float saved = x[i];
    x[i] = saved + float(eps);
    double up = loss();
    x[i] = saved - float(eps);
    double down = loss();
    x[i] = saved;
    double numeric = (up - down) / (2 * eps);
    INFO(what << "[" << i << "] analytic " << analytic[i] << " numeric " << numeric);
    CHECK(std::abs(analytic[i] - numeric) <= 2e-2 * std::abs(numeric) + 2e-3);
  }
}

}  // namespace

TEST_CASE("conv2d backward matches finite differences (stride 2, padding 1, bias), every implementation") {
  std::vector<CpuConv> kinds{CpuConv::Im2col};
  if (cpu_has_dnnl()) kinds.push_back(CpuConv::Dnnl);
  for (CpuConv kind : kinds) {
    auto be = make_cpu_backend(kind);
    INFO(be->name());
    for (bool bias : {true, false}) {
      ConvShape s{2, 3, 7, 6, 4, 3, 2, 1, 4, 3};
      auto x = randn(size_t(s.n * s.c * s.h * s.w), 1), w = randn(size_t(s.k * s.c * s.r * s.r), 2, 0.3f),
           b = randn(size_t(s.k), 3);
      const size_t ny = size_t(s.n * s.k * s.p * s.q);
      auto g = randn(ny, 4);  // loss = sum(g * y)
      std::vector<float> y(ny);
      auto loss = [&] {
        be->conv2d_forward(s, x.data(), w.data(), bias ? b.data() : nullptr, y.data());
        return dot(g, y);
      };
      std::vector<float> dx(x.size(), 0.0f), dw(w.size()), db(b.size(), 0.0f);
      be->conv2d_backward(s, x.data(), w.data(), g.data(), dx.data(), dw.data(), bias ? db.data() : nullptr);
      check_grad("dx", x, dx, loss);
      check_grad("dw", w, dw, loss);
      if (bias) check_grad("db", b, db, loss);
      // dx accumulates: a second backward adds the same again.
      std::vector<float> dx2 = dx;
      be->conv2d_backward(s, x.data(), w.data(), g.data(), dx2.data(), dw.data(), bias ? db.data() : nullptr);
      CHECK(dx2[5] == Approx(2 * dx[5]));
    }
  }
}

TEST_CASE("oneDNN convolutions agree with im2col + SGEMM (the reference) on a ResNet-like layer") {
  if (!cpu_has_dnnl()) {
    WARN("built without oneDNN; skipped");
    return;
  }
  auto ref = make_cpu_backend(CpuConv::Im2col), dn = make_cpu_backend(CpuConv::Dnnl);
  ConvShape s{4, 16, 14, 14, 32, 3, 2, 1, 7, 7};
  auto x = randn(size_t(s.n * s.c * s.h * s.w), 1), w = randn(size_t(s.k * s.c * 9), 2, 0.1f),
       dy = randn(size_t(s.n * s.k * s.p * s.q), 3);
  std::vector<float> y1(dy.size()), y2(dy.size()), dx1(x.size(), 0.0f), dx2(x.size(), 0.0f), dw1(w.size()),
      dw2(w.size());
  ref->conv2d_forward(s, x.data(), w.data(), nullptr, y1.data());
  ref->conv2d_backward(s, x.data(), w.data(), dy.data(), dx1.data(), dw1.data(), nullptr);
  // oneDNN's backend keeps 16- and 32-channel activations in its blocked layout: in through
  // import_activation, out (to NCHW order) through flatten_forward.
  REQUIRE(dn->blocked(16) == dn->blocked(32));
  std::vector<float> xb(x.size()), dyb(dy.size()), yb(y2.size()), dxb(x.size(), 0.0f);
  dn->import_activation(s.n, s.c, s.h * s.w, x.data(), xb.data());
  dn->import_activation(s.n, s.k, s.p * s.q, dy.data(), dyb.data());
  dn->conv2d_forward(s, xb.data(), w.data(), nullptr, yb.data());
  dn->conv2d_backward(s, xb.data(), w.data(), dyb.data(), dxb.data(), dw2.data(), nullptr);
  dn->flatten_forward(s.n, s.k, s.p * s.q, yb.data(), y2.data());
  dn->flatten_forward(s.n, s.c, s.h * s.w, dxb.data(), dx2.data());
  for (size_t i = 0; i < y1.size(); i += 7) REQUIRE(y2[i] == Approx(y1[i]).margin(1e-4));
  for (size_t i = 0; i < dx1.size(); i += 7) REQUIRE(dx2[i] == Approx(dx1[i]).margin(1e-4));
  for (size_t i = 0; i < dw1.size(); i += 3) REQUIRE(dw2[i] == Approx(dw1[i]).margin(1e-3));
}

TEST_CASE("linear backward matches finite differences") {
  auto be = make_cpu_backend();
  const int n = 3, in = 5, out = 4;
  auto x = randn(n * in, 1), w = randn(out * in, 2), b = randn(out, 3), g = randn(n * out, 4);
  std::vector<float> y(n * out);
  auto loss = [&] {
    be->linear_forward(n, in, out, x.data(), w.data(), b.data(), y.data());
    return dot(g, y);
  };
  std::vector<float> dx(x.size(), 0.0f), dw(w.size()), db(b.size());
  be->linear_backward(n, in, out, x.data(), w.data(), g.data(), dx.data(), dw.data(), db.data());
  check_grad("dx", x, dx, loss);
  check_grad("dw", w, dw, loss);
  check_grad("db", b, db, loss);
}

TEST_CASE("batchnorm backward (batch statistics) matches finite differences") {
  auto be = make_cpu_backend();
  const int n = 4, c = 3, hw = 5;
  auto x = randn(n * c * hw, 1, 2.0f), gamma = randn(c, 2), beta = randn(c, 3), g = randn(n * c * hw, 4);
  std::vector<float> y(x.size()), mean(c), invstd(c), rm(c, 0.0f), rv(c, 1.0f);
  auto loss = [&] {
    be->batchnorm_forward_train(n, c, hw, x.data(), gamma.data(), beta.data(), y.data(), mean.data(), invstd.data(),
                                rm.data(), rv.data(), 0.1f, 1e-5f);
    return dot(g, y);
  };
  loss();
  std::vector<float> dx(x.size(), 0.0f), dgamma(c), dbeta(c);
  be->batchnorm_backward(n, c, hw, x.data(), gamma.data(), g.data(), mean.data(), invstd.data(), dx.data(),
                         dgamma.data(), dbeta.data());
  check_grad("dx", x, dx, loss);
  check_grad("dgamma", gamma, dgamma, loss);
  check_grad("dbeta", beta, dbeta, loss);
  // Evaluation uses the running averages: with mean 0 and variance 1 it is gamma x + beta.
  std::vector<float> zeros(c, 0.0f), ones(c, 1.0f);
  be->batchnorm_forward_eval(n, c, hw, x.data(), gamma.data(), beta.data(), y.data(), zeros.data(), ones.data(), 0.0f);
  CHECK(y[7] == Approx(gamma[(7 / hw) % c] * x[7] + beta[(7 / hw) % c]));
}

TEST_CASE("relu, pooling, add and dropout backward match finite differences") {
  auto be = make_cpu_backend();
  // Inputs spread out so that no element sits on a kink (relu at 0, pooling ties).
  auto spread = [](size_t n, uint64_t seed) {
    auto v = randn(n, seed);
    for (size_t i = 0; i < n; ++i) v[i] = v[i] + (v[i] >= 0 ? 0.1f : -0.1f) + 0.013f * float(i % 7);
    return v;
  };
  SECTION("relu") {
    auto x = spread(40, 1), g = randn(40, 2);
    std::vector<float> y(40);
    auto loss = [&] {
      be->relu_forward(40, x.data(), y.data());
      return dot(g, y);
    };
    loss();
    std::vector<float> dx(40, 0.0f);
    be->relu_backward(40, y.data(), g.data(), dx.data());
    check_grad("relu", x, dx, loss, 1e-3);
  }
  SECTION("maxpool 3x3 stride 2 padding 1") {
    PoolShape s{2, 2, 7, 7, 3, 2, 1, 4, 4};
    auto x = spread(2 * 2 * 49, 3), g = randn(2 * 2 * 16, 4);
    std::vector<float> y(g.size());
    std::vector<int32_t> arg(g.size());
    auto loss = [&] {
      be->maxpool_forward(s, x.data(), y.data(), arg.data());
      return dot(g, y);
    };
    loss();
    std::vector<float> dx(x.size(), 0.0f);
    be->maxpool_backward(s, g.data(), arg.data(), dx.data());
    check_grad("maxpool", x, dx, loss, 1e-3);
  }
  SECTION("avgpool and adaptive avgpool") {
    PoolShape s{2, 2, 7, 7, 3, 2, 1, 4, 4};
    auto x = randn(2 * 2 * 49, 5), g = randn(2 * 2 * 16, 6);
    std::vector<float> y(g.size());
    auto loss = [&] {
      be->avgpool_forward(s, x.data(), y.data());
      return dot(g, y);
    };
    std::vector<float> dx(x.size(), 0.0f);
    be->avgpool_backward(s, g.data(), dx.data());
    check_grad("avgpool", x, dx, loss);
    PoolShape a{2, 2, 7, 5, 0, 1, 0, 3, 2};  // uneven bins, as PyTorch forms them
    auto xa = randn(2 * 2 * 35, 8);
    std::vector<float> ya(2 * 2 * 6), ga = randn(ya.size(), 7);
    auto aloss = [&] {
      be->adaptive_avgpool_forward(a, xa.data(), ya.data());
      return dot(ga, ya);
    };
    std::vector<float> dxa(xa.size(), 0.0f);
    be->adaptive_avgpool_backward(a, ga.data(), dxa.data());
    check_grad("adaptive", xa, dxa, aloss);
  }
  SECTION("add and dropout") {
    auto a = randn(30, 1), b = randn(30, 2), g = randn(30, 3), mask(std::vector<float>(30));
    for (size_t i = 0; i < 30; ++i) mask[i] = i % 3 ? 1.0f / 0.7f : 0.0f;
    std::vector<float> y(30), t(30);
    auto loss = [&] {
      be->add_forward(30, a.data(), b.data(), t.data());
      be->dropout_forward(30, t.data(), mask.data(), y.data());
      return dot(g, y);
    };
    std::vector<float> dt(30, 0.0f), da(30, 0.0f), dbb(30, 0.0f);
    be->dropout_backward(30, g.data(), mask.data(), dt.data());
    be->accumulate(30, dt.data(), da.data());
    be->accumulate(30, dt.data(), dbb.data());
    check_grad("add a", a, da, loss);
    check_grad("add b", b, dbb, loss);
  }
}

TEST_CASE("softmax cross-entropy with label smoothing: loss, accuracy and gradient") {
  auto be = make_cpu_backend();
  const int n = 3, classes = 5;
  auto z = randn(n * classes, 1, 2.0f);
  std::vector<int32_t> labels{1, 4, 0};
  std::vector<float> d(z.size());
  auto loss = [&] { return be->softmax_xent(n, classes, z.data(), labels.data(), 0.1f, 1.0f, d.data(), nullptr); };
  int correct = -1;
  be->softmax_xent(n, classes, z.data(), labels.data(), 0.1f, 1.0f, d.data(), &correct);
  std::vector<float> grad = d;
  check_grad("dlogits", z, grad, loss, 1e-3);
  CHECK(correct >= 0);
  // Uniform logits: the loss is log(classes) whatever the smoothing.
  std::vector<float> flat(z.size(), 0.0f);
  CHECK(be->softmax_xent(n, classes, flat.data(), labels.data(), 0.1f, 1.0f, d.data(), nullptr) ==
        Approx(std::log(5.0)));
  // The loss scale multiplies the gradient only.
  be->softmax_xent(n, classes, z.data(), labels.data(), 0.1f, 1024.0f, d.data(), nullptr);
  CHECK(d[2] == Approx(1024.0f * grad[2]));
}

TEST_CASE("half-precision rounding follows IEEE FP16 and BF16 (round to nearest even)") {
  CHECK(round_fp16(1.0f) == 1.0f);
  CHECK(round_fp16(65504.0f) == 65504.0f);                  // largest FP16
  CHECK(std::isinf(round_fp16(65520.0f)));                  // rounds up past it
  CHECK(round_fp16(65519.0f) == 65504.0f);
  CHECK(round_fp16(1.0f + 1.0f / 2048) == 1.0f);            // halfway: to even
  CHECK(round_fp16(1.0f + 3.0f / 2048) == 1.0f + 2.0f / 1024);
  CHECK(round_fp16(std::ldexp(1.0f, -24)) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(round_fp16(std::ldexp(1.0f, -26)) == 0.0f);
  CHECK(round_fp16(-std::ldexp(3.0f, -25)) == -std::ldexp(1.0f, -23));  // 1.5 ulp -> 2 ulp (even)
  CHECK(std::isnan(round_fp16(std::nanf(""))));
  CHECK(round_bf16(1.0f + 1.0f / 256) == 1.0f);             // halfway: to even
  CHECK(round_bf16(1.0f + 3.0f / 256) == 1.0f + 2.0f / 128);
  CHECK(round_bf16(-2.0f - 1.0f / 64) == -2.0f - 1.0f / 64);  // exactly representable
  // Every FP16 value survives a round trip.
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    float f = fp16_to_float(static_cast<uint16_t>(h));
    REQUIRE(fp16_bits(f) == h);
  }
}

TEST_CASE("buffer rounding (F16C where the CPU has it, threads) equals the scalar rounding bit for bit") {
  // Float bit patterns across the whole range (both signs, subnormals, the FP16 overflow
  // edge, infinities, NaNs with payloads), in a buffer whose length is not a multiple of
  // the vector width or the thread chunk.
  std::vector<uint32_t> bits;
  for (uint64_t b = 0; b <= 0xffffffffu; b += 65521) bits.push_back(uint32_t(b));
  for (uint32_t b : {0x477fefffu, 0x477ff000u, 0x477ff001u, 0x33000000u, 0x33000001u, 0x7f800000u, 0xff800000u,
                     0x7f800001u, 0xffc12345u, 0x00000001u, 0x80000001u})
    bits.push_back(b);
  std::vector<float> x(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) x[i] = std::bit_cast<float>(bits[i]);
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    std::vector<float> a = x, b = x;
    round_buffer(p, a.data(), a.size());
    for (float& v : b) v = round_to(p, v);
    INFO(precision_name(p));
    size_t differ = 0;
    for (size_t i = 0; i < a.size(); ++i) differ += std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]);
    CHECK(differ == 0);
  }
}

TEST_CASE("the exchanges' 16-bit conversions and sums (F16C where there is one) equal the scalar ones bit for bit") {
  // Every FP16/BF16 bit pattern one way; float bit patterns across the range the other;
  // sums of pattern pairs. Lengths are not multiples of the vector width.
  std::vector<uint16_t> all(65536);
  for (uint32_t h = 0; h < 65536; ++h) all[h] = uint16_t(h);
  std::vector<float> x;
  for (uint64_t b = 0; b <= 0xffffffffu; b += 65521) x.push_back(std::bit_cast<float>(uint32_t(b)));
  for (uint32_t b : {0x477fefffu, 0x477ff000u, 0x477ff001u, 0x33000000u, 0x33000001u, 0x7f800000u, 0xff800000u,
                     0x7f800001u, 0xffc12345u, 0x00000001u, 0x80000001u})
    x.push_back(std::bit_cast<float>(b));
  auto bits_of = [](float f) { return std::bit_cast<uint32_t>(f); };
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    INFO(precision_name(p));
    const bool fp16 = p == Precision::FP16;
    std::vector<uint16_t> to(x.size());
    to_half_bits(p, x.data(), to.data(), x.size());
    size_t differ = 0;
    for (size_t i = 0; i < x.size(); ++i) differ += to[i] != (fp16 ? fp16_bits(x[i]) : bf16_bits(x[i]));
    CHECK(differ == 0);
    std::vector<float> back(all.size() - 3);  // not a multiple of 8
    from_half_bits(p, all.data(), back.data(), back.size());
    differ = 0;
    for (size_t i = 0; i < back.size(); ++i)
      differ += bits_of(back[i]) != bits_of(fp16 ? fp16_to_float(all[i]) : bf16_to_float(all[i]));
    CHECK(differ == 0);
    // a: every pattern; b: the patterns in another order. Where both are NaN the sum's
    // sign is either operand's, as x86 picks the first, and is left out.
    std::vector<uint16_t> a(all.begin(), all.end() - 5), b(a.size());
    for (size_t i = 0; i < b.size(); ++i) b[i] = uint16_t((i * 40503u + 7u) & 0xffffu);
    std::vector<uint16_t> sum = b;
    add_half_bits(p, a.data(), sum.data(), a.size());
    differ = 0;
    size_t compared = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const float fa = fp16 ? fp16_to_float(a[i]) : bf16_to_float(a[i]);
      const float fb = fp16 ? fp16_to_float(b[i]) : bf16_to_float(b[i]);
      if (std::isnan(fa) && std::isnan(fb)) continue;
      ++compared;
      differ += sum[i] != (fp16 ? fp16_bits(fa + fb) : bf16_bits(fa + fb));
    }
    CHECK(compared > 60000);
    CHECK(differ == 0);
  }
}

#include <map>
#include <mutex>
#include <thread>

#include "fuseplan/exec/data.hpp"
#include "fuseplan/exec/network.hpp"
#include "fuseplan/exec/trainer.hpp"
#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"

namespace {
// conv+bias -> bn -> relu -> maxpool -> conv -> bn -> add (residual) -> relu ->
// adaptive avgpool (or a 2 x 2 average pooling, which leaves a 2 x 2 plane) -> flatten
// -> linear: every wiring case of the zoo CNNs.
Model residual_cnn(const std::string& name, int in_channels, int channels, int classes, bool global_pool) {
  ModelBuilder b(name, {in_channels, 8, 8});
  int x = b.conv("conv1", ModelBuilder::kInput, channels, 3, 1, 1, true);
  x = b.batchnorm("bn1", x);
  x = b.relu("relu1", x);
  int p = global_pool ? b.maxpool("pool", x, 2, 2) : b.maxpool("pool", x, 3, 2, 1);
  int y = b.conv("conv2", p, channels, 3, 1, 1, false);
  y = b.batchnorm("bn2", y);
  y = b.add("add", y, p);
  y = b.relu("relu2", y);
  y = global_pool ? b.adaptive_avgpool("gap", y, 1, 1) : b.avgpool("avg", y, 2, 2);
  y = b.flatten("flat", y);
  b.linear("fc", y, classes, true);
  return b.finish();
}
Model tiny_cnn() { return residual_cnn("tiny", 2, 4, 3, true); }
}  // namespace

TEST_CASE("a whole network's parameter gradients match finite differences - buffers are in backward order") {
  auto be = make_cpu_backend();
  Model m = tiny_cnn();
  const int batch = 4;
  Network net(m, batch, *be, {});
  // Backward order: the last forward tensor (fc.bias) first, at offset 0.
  REQUIRE(net.slots().front().name == "fc.bias");
  CHECK(net.slots().front().offset == 0);
  CHECK(net.slots().back().name == "conv1.weight");
  CHECK(net.slots().back().offset + net.slots().back().numel == net.param_count());
  auto input = randn(size_t(batch) * 2 * 8 * 8, 11);
  std::vector<int32_t> labels{0, 2, 1, 2};
  std::mt19937_64 rng(1);
  std::vector<int> ready;
  net.forward(input.data(), true, rng);
  net.backward(labels.data(), 0.0f, 1.0f, nullptr, [&](int r) { ready.push_back(r); });
  CHECK(ready.back() == static_cast<int>(m.tensors.size()));
  CHECK(std::is_sorted(ready.begin(), ready.end()));
  std::vector<float> params(net.params(), net.params() + net.param_count());
  std::vector<float> grads(net.grads(), net.grads() + net.param_count());
  auto loss = [&] {
    std::copy(params.begin(), params.end(), net.params());
    net.forward(input.data(), true, rng);
    return net.loss(labels.data(), 0.0f, nullptr);
  };
  check_grad("params", params, grads, loss, 1e-3);
}

TEST_CASE("a network on oneDNN's blocked layout equals the same network on NCHW im2col, logits and gradients") {
  if (!cpu_has_dnnl()) {
    WARN("built without oneDNN; skipped");
    return;
  }
  // 16- and 32-channel activations (blocked on AVX-512 and AVX2 machines): the input
  // imported, convolutions with and without bias, BatchNorm, ReLU, overlapping max
  // pooling, a residual add, average pooling, flatten of a 2 x 2 plane (reordered to NCHW
  // for the linear layer).
  const Model m = residual_cnn("blocked", 16, 32, 5, false);
  auto dn = make_cpu_backend(CpuConv::Dnnl), ref = make_cpu_backend(CpuConv::Im2col);
  INFO(dn->name());
  if (!dn->blocked(16)) WARN("oneDNN has no blocked layout on this CPU: both networks run NCHW");
  const int batch = 3;
  Network a(m, batch, *dn, {}), r(m, batch, *ref, {});
  auto input = randn(size_t(batch) * 16 * 8 * 8, 21);
  std::vector<int32_t> labels{0, 4, 2};
  std::mt19937_64 rng1(1), rng2(1);
  a.forward(input.data(), true, rng1);
  r.forward(input.data(), true, rng2);
  for (int i = 0; i < batch * 5; ++i) REQUIRE(a.logits()[i] == Approx(r.logits()[i]).margin(1e-4));
  a.backward(labels.data(), 0.0f, 1.0f, nullptr, {});
  r.backward(labels.data(), 0.0f, 1.0f, nullptr, {});
  for (int64_t i = 0; i < a.param_count(); ++i) REQUIRE(a.grads()[i] == Approx(r.grads()[i]).margin(1e-4));
  // Evaluation (running statistics) too.
  a.forward(input.data(), false, rng1);
  r.forward(input.data(), false, rng2);
  for (int i = 0; i < batch * 5; ++i) REQUIRE(a.logits()[i] == Approx(r.logits()[i]).margin(1e-4));
}

TEST_CASE("half-precision storage: every output and gradient of a step lies on the FP16 / BF16 grid") {
  // tiny_cnn has relu and max pooling after rounded layers (their rounding is skipped),
  // a relu after an add, and a gradient summed over two consumers (the residual).
  auto be = make_cpu_backend();
  Model m = tiny_cnn();
  for (Precision p : {Precision::FP16, Precision::BF16}) {
    INFO(precision_name(p));
    NetworkOptions o;
    o.precision = p;
    Network net(m, 4, *be, o);
    auto input = randn(size_t(4) * 2 * 8 * 8, 11);
    std::vector<int32_t> labels{0, 2, 1, 2};
    std::mt19937_64 rng(1);
    net.forward(input.data(), true, rng);
    net.backward(labels.data(), 0.0f, 1024.0f, nullptr, {});
    CHECK(net.stored_in_precision());
  }
}

TEST_CASE("a BatchNorm or an add fused with the ReLU after it gives the two ops' bits - forward, backward, evaluation") {
  // Both CPU layouts (NCHW through im2col, oneDNN's blocked one), every storage precision;
  // a BatchNorm feeding a residual add stays unfused, one on the model input is fused with
  // its gradient discarded, and an add of a tensor to itself sends both gradients to one
  // buffer.
  struct Case {
    const char* what;
    Model model;
    int channels, side, fused;
  };
  ModelOptions o;
  o.resolution = 16, o.channels = 3, o.classes = 10;
  std::vector<Case> cases{{"residual", residual_cnn("fuse", 16, 32, 5, false), 16, 8, 2},
                          {"resnet18", build_zoo_model("resnet18", o), 3, 16, 17}};
  {
    ModelBuilder b("bn_on_input", {16, 4, 4});
    int x = b.batchnorm("bn0", ModelBuilder::kInput);
    x = b.relu("relu0", x);
    int y = b.conv("conv", x, 16, 3, 1, 1, true);
    y = b.add("twice", y, y);
    y = b.relu("relu1", y);
    y = b.flatten("flat", y);
    b.linear("fc", y, 3, true);
    cases.push_back({"batchnorm on the input, a tensor added to itself", b.finish(), 16, 4, 2});
  }
  std::vector<std::pair<std::string, std::unique_ptr<Backend>>> backends;
  backends.emplace_back("im2col", make_cpu_backend(CpuConv::Im2col));
  if (cpu_has_dnnl()) backends.emplace_back("onednn", make_cpu_backend(CpuConv::Dnnl));
  auto same_bits = [](const float* a, const float* b, size_t n) {
    for (size_t i = 0; i < n; ++i)
      if (std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i])) return false;
    return true;
  };
  for (auto& [be_name, be] : backends)
    for (const Case& c : cases)
      for (Precision p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
        INFO(be_name << ", " << c.what << ", " << precision_name(p));
        NetworkOptions fused_opt, plain_opt;
        fused_opt.precision = plain_opt.precision = p;
        plain_opt.fuse_relu = false;
        const int batch = 3;
        Network fused(c.model, batch, *be, fused_opt), plain(c.model, batch, *be, plain_opt);
        CHECK(fused.fused_relus() == c.fused);
        CHECK(plain.fused_relus() == 0);
        auto input = randn(size_t(batch) * c.channels * c.side * c.side, 5);
        std::vector<int32_t> labels{0, 2, 1};
        std::mt19937_64 rng1(1), rng2(1);
        for (int step = 0; step < 2; ++step) {  // the second from the first's running statistics
          fused.forward(input.data(), true, rng1);
          plain.forward(input.data(), true, rng2);
          const size_t logits = size_t(batch) * size_t(fused.classes());
          REQUIRE(same_bits(fused.logits(), plain.logits(), logits));
          const double lf = fused.backward(labels.data(), 0.1f, 256.0f, nullptr, {});
          const double lp = plain.backward(labels.data(), 0.1f, 256.0f, nullptr, {});
          CHECK(std::bit_cast<uint64_t>(lf) == std::bit_cast<uint64_t>(lp));
          REQUIRE(same_bits(fused.grads(), plain.grads(), size_t(fused.param_count())));
          REQUIRE(same_bits(fused.running_stats().data(), plain.running_stats().data(), fused.running_stats().size()));
          if (p != Precision::FP32) CHECK(fused.stored_in_precision());
        }
        fused.forward(input.data(), false, rng1);
        plain.forward(input.data(), false, rng2);
        CHECK(same_bits(fused.logits(), plain.logits(), size_t(batch) * size_t(fused.classes())));
      }
}

TEST_CASE("max pooling takes the first of equal maxima and the last NaN, as PyTorch, on both layouts") {
  // Four 2 x 2 windows of a 4 x 4 plane: a tie, NaNs, all -inf, a later tie. The gradient
  // lands where the maximum was taken.
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  // Row-major 4 x 4: window (0,0) = {1, 3 | 3, 2}, (0,1) = {nan, 5 | nan, 1},
  // (1,0) = {-inf, -inf | -inf, -inf}, (1,1) = {2, 7 | 7, 7}.
  const std::vector<float> plane{1, 3, nan, 5, 3, 2, nan, 1, -inf, -inf, 2, 7, -inf, -inf, 7, 7};
  const int c = 16, hw = 16;
  std::vector<std::pair<std::string, std::unique_ptr<Backend>>> backends;
  backends.emplace_back("im2col", make_cpu_backend(CpuConv::Im2col));
  if (cpu_has_dnnl()) backends.emplace_back("onednn", make_cpu_backend(CpuConv::Dnnl));
  for (auto& [name, be] : backends) {
    INFO(name << (be->blocked(c) ? " (blocked)" : " (nchw)"));
    std::vector<float> x_plain;
    for (int ch = 0; ch < c; ++ch) x_plain.insert(x_plain.end(), plane.begin(), plane.end());
    const PoolShape s{1, c, 4, 4, 2, 2, 0, 2, 2};
    std::vector<float> x(size_t(c) * hw), y(size_t(c) * 4), dy(size_t(c) * 4, 0.0f), dx(size_t(c) * hw, 0.0f);
    std::vector<float> y_plain(y.size()), dx_plain(dx.size());
    std::vector<int32_t> argmax(y.size());
    be->import_activation(1, c, hw, x_plain.data(), x.data());
    be->maxpool_forward(s, x.data(), y.data(), argmax.data());
    std::vector<float> ones(y.size(), 1.0f), dy_blocked(y.size());
    be->import_activation(1, c, 4, ones.data(), dy_blocked.data());
    be->maxpool_backward(s, dy_blocked.data(), argmax.data(), dx.data());
    be->flatten_forward(1, c, 4, y.data(), y_plain.data());
    be->flatten_forward(1, c, hw, dx.data(), dx_plain.data());
    for (int ch = 0; ch < c; ++ch) {
      const float* yo = y_plain.data() + ch * 4;
      const float* d = dx_plain.data() + ch * hw;
      CHECK(yo[0] == 3.0f);
      CHECK(std::isnan(yo[1]));
      CHECK(yo[2] == -inf);
      CHECK(yo[3] == 7.0f);
      // Where each window's gradient went: its first 3, its last NaN (row 1), its first
      // -inf, its first 7.
      std::vector<float> want(hw, 0.0f);
      want[1] = 1, want[6] = 1, want[8] = 1, want[11] = 1;
      for (int i = 0; i < hw; ++i) CHECK(d[i] == want[size_t(i)]);
    }
  }
}

TEST_CASE("the network refuses layers it cannot run and models that differ") {
  auto be = make_cpu_backend();
  CHECK_THROWS_WITH(Network(build_zoo_model("bert_base"), 2, *be), Catch::Contains("not supported by the trainer"));
  ModelBuilder rect("rect", {8, 9, 9});
  rect.conv("b7", ModelBuilder::kInput, 8, {1, 7}, {1, 1}, {0, 3}, false);
  CHECK_THROWS_WITH(Network(rect.finish(), 2, *be),
                    Catch::Contains("layer b7 (conv2d): rectangular kernels, strides or paddings are not supported"));
  ModelBuilder atrous("atrous", {8, 9, 9});
  atrous.conv("aspp", ModelBuilder::kInput, 8, {3, 3}, {1, 1}, {2, 2}, false, 1, {2, 2});
  CHECK_THROWS_WITH(Network(atrous.finish(), 2, *be),
                    Catch::Contains("layer aspp (conv2d): dilated convolutions are not supported"));
  Network net(tiny_cnn(), 2, *be);
  net.check_same_tensors(tiny_cnn(), "--plan");
  Model other = tiny_cnn();
  other.tensors[3].name = "renamed";
  CHECK_THROWS_WITH(net.check_same_tensors(other, "--plan"), Catch::Contains("tensor 3 is renamed"));
  other = tiny_cnn();
  other.tensors.pop_back();
  CHECK_THROWS_AS(net.check_same_tensors(other, "--plan"), InputError);
}

TEST_CASE("the zoo CNNs run forward and backward at a chosen resolution, channels and classes") {
  auto be = make_cpu_backend();
  struct Case {
    const char* name;
    int resolution;
  };
  for (Case c : {Case{"alexnet_bn", 64}, Case{"vgg16", 32}, Case{"resnet18", 28}, Case{"resnet50", 32}}) {
    INFO(c.name);
    ModelOptions o;
    o.resolution = c.resolution;
    o.channels = 1;
    o.classes = 10;
    Model m = build_zoo_model(c.name, o);
    Network net(m, 2, *be, {});
    net.check_same_tensors(build_zoo_model(c.name, o), "--model");
    auto input = randn(size_t(2 * c.resolution * c.resolution), 3);
    std::vector<int32_t> labels{3, 7};
    std::mt19937_64 rng(1);
    net.forward(input.data(), true, rng);
    int ready = 0;
    double loss = net.backward(labels.data(), 0.1f, 1.0f, nullptr, [&](int r) { ready = r; });
    CHECK(std::isfinite(loss));
    CHECK(ready == static_cast<int>(m.tensors.size()));
    double norm = 0;
    for (int64_t i = 0; i < net.param_count(); ++i) norm += double(net.grads()[i]) * net.grads()[i];
    CHECK(std::isfinite(norm));
    CHECK(norm > 0);
  }
}

TEST_CASE("device errors: typed, with the call site - the user's (no GPU, out of memory) exit 2, the rest 1") {
  const int line = __LINE__ + 1;
  auto fail = [](bool user) { fuseplan::exec::device_failure("CUDA: cudaMalloc: out of memory", user, std::source_location::current()); };
  CHECK_THROWS_AS(fail(true), fuseplan::InputError);
  CHECK_THROWS_AS(fail(false), fuseplan::RunError);
  CHECK_THROWS_WITH(fail(true), Catch::Contains("CUDA: cudaMalloc: out of memory (") &&
                                    Catch::Contains("test_exec_ops.cpp:" + std::to_string(line) + ")"));
}

namespace {
// The CPU backend seen as a device timed by its own marks (as the CUDA backend is): every
// call forwards to it; synchronize() is counted; a mark is the host clock when recorded
// (the CPU has finished every earlier call by then). A copy into it from host memory
// takes `copy_s` longer, as a copy over PCIe does (one from its own memory does not); a
// copy ahead runs on a thread of its own. Each convolution's
// backward takes `backward_s` longer.
class DeviceTimed final : public Backend {
 public:
  explicit DeviceTimed(Backend& cpu) : cpu_(cpu) {}
  ~DeviceTimed() override {
    if (ahead_.joinable()) ahead_.join();
  }
  int syncs = 0;
  double copy_s = 0, backward_s = 0;
  void copy_in_ahead(float* dst, const float* src, size_t n) override {
    await_copy_in();
    ahead_ = std::thread([=, this] { copy_in(dst, src, n); });
  }
  void await_copy_in() override {
    if (ahead_.joinable()) ahead_.join();
  }
  std::string name() const override { return "device-timed " + cpu_.name(); }
  void zero(float* p, size_t n) override { cpu_.zero(p, n); }
  void round(Precision p, float* x, size_t n) override { cpu_.round(p, x, n); }
  float* alloc(size_t n) override {
    float* p = cpu_.alloc(n);
    std::lock_guard<std::mutex> lock(mutex_);
    mine_[p] = n;
    return p;
  }
  void free(float* p) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      mine_.erase(p);
    }
    cpu_.free(p);
  }
  void copy_in(float* dst, const float* src, size_t n) override {
    if (copy_s > 0 && !owns(src)) std::this_thread::sleep_for(std::chrono::duration<double>(copy_s));
    cpu_.copy_in(dst, src, n);
  }
  void synchronize() override { ++syncs; }
  bool timed_on_device() const override { return true; }
  void reset_marks() override { marks_.clear(); }
  int mark() override {
    marks_.push_back(std::chrono::steady_clock::now());
    return int(marks_.size()) - 1;
  }
  double mark_seconds(int i) override { return std::chrono::duration<double>(marks_.at(size_t(i)) - marks_.at(0)).count(); }
  bool nonfinite(const float* x, size_t n) override { return cpu_.nonfinite(x, n); }
  void optimizer_step(const std::vector<OptimizerSlot>& s, const OptimizerStep& o, float* m, float* v, const float* g,
                      float* p, double* r) override {
    cpu_.optimizer_step(s, o, m, v, g, p, r);
  }
  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) override {
    cpu_.conv2d_forward(s, x, w, b, y);
  }
  void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    if (backward_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(backward_s));
    cpu_.conv2d_backward(s, x, w, dy, dx, dw, db);
  }
  void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) override {
    cpu_.linear_forward(n, in, out, x, w, b, y);
  }
  void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    cpu_.linear_backward(n, in, out, x, w, dy, dx, dw, db);
  }
  void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                               float* sm, float* si, float* rm, float* rv, float mom, float eps) override {
    cpu_.batchnorm_forward_train(n, c, hw, x, g, b, y, sm, si, rm, rv, mom, eps);
  }
  void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                              const float* rm, const float* rv, float eps) override {
    cpu_.batchnorm_forward_eval(n, c, hw, x, g, b, y, rm, rv, eps);
  }
  void batchnorm_backward(int n, int c, int hw, const float* x, const float* g, const float* dy, const float* sm,
                          const float* si, float* dx, float* dg, float* db) override {
    cpu_.batchnorm_backward(n, c, hw, x, g, dy, sm, si, dx, dg, db);
  }
  void relu_forward(size_t n, const float* x, float* y) override { cpu_.relu_forward(n, x, y); }
  void relu_backward(size_t n, const float* y, const float* dy, float* dx) override { cpu_.relu_backward(n, y, dy, dx); }
  void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* a) override { cpu_.maxpool_forward(s, x, y, a); }
  void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* a, float* dx) override {
    cpu_.maxpool_backward(s, dy, a, dx);
  }
  void avgpool_forward(const PoolShape& s, const float* x, float* y) override { cpu_.avgpool_forward(s, x, y); }
  void avgpool_backward(const PoolShape& s, const float* dy, float* dx) override { cpu_.avgpool_backward(s, dy, dx); }
  void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    cpu_.adaptive_avgpool_forward(s, x, y);
  }
  void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    cpu_.adaptive_avgpool_backward(s, dy, dx);
  }
  void add_forward(size_t n, const float* a, const float* b, float* y) override { cpu_.add_forward(n, a, b, y); }
  void accumulate(size_t n, const float* dy, float* dx) override { cpu_.accumulate(n, dy, dx); }
  void dropout_forward(size_t n, const float* x, const float* m, float* y) override { cpu_.dropout_forward(n, x, m, y); }
  void dropout_backward(size_t n, const float* dy, const float* m, float* dx) override {
    cpu_.dropout_backward(n, dy, m, dx);
  }
  double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing, float scale,
                      float* dlogits, int* correct) override {
    return cpu_.softmax_xent(n, classes, logits, labels, smoothing, scale, dlogits, correct);
  }

 private:
  bool owns(const float* p) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = mine_.upper_bound(const_cast<float*>(p));
    return it != mine_.begin() && p < std::prev(it)->first + std::prev(it)->second;
  }
  Backend& cpu_;
  std::vector<std::chrono::steady_clock::time_point> marks_;
  std::thread ahead_;
  std::mutex mutex_;
  std::map<float*, size_t> mine_;  // its allocations: start, floats
};
}  // namespace

TEST_CASE("a backend timed on its device is waited for once per forward and once per backward, not per layer") {
  auto cpu = make_cpu_backend(CpuConv::Im2col);
  DeviceTimed dev(*cpu);
  Model m = tiny_cnn();
  const int layers = int(m.layers.size());
  auto input = randn(size_t(4) * 2 * 8 * 8, 11);
  std::vector<int32_t> labels{0, 2, 1, 2};
  // The same step on the CPU backend itself (timed by the host clock) gives the gradients.
  Network ref(m, 4, *cpu, {});
  std::mt19937_64 rng_ref(1);
  ref.forward(input.data(), true, rng_ref);
  ref.backward(labels.data(), 0.0f, 1.0f, nullptr, {});
  for (bool host_reads : {false, true}) {
    INFO("host reads gradients: " << host_reads);
    NetworkOptions o;
    o.host_reads_gradients = host_reads;
    Network net(m, 4, dev, o);
    std::mt19937_64 rng(1);
    dev.syncs = 0;
    const auto t0 = std::chrono::steady_clock::now();
    net.forward(input.data(), true, rng);
    int ready = 0;
    net.backward(labels.data(), 0.0f, 1.0f, nullptr, [&](int) { ++ready; });
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // One wait before the forward, one after the backward; each backward layer besides
    // when the host reads its gradients.
    CHECK(dev.syncs == 2 + (host_reads ? layers : 0));
    CHECK(ready == layers);
    CHECK(std::equal(net.grads(), net.grads() + net.param_count(), ref.grads()));
    // Every layer's time is the span between its marks: all of them add up to the step,
    // less what ran between forward and backward (the loss), within the wall time.
    double sum = 0;
    const auto& spans = net.last_spans();
    for (int l = 0; l < layers; ++l) {
      CHECK(net.timings()[l].fwd_s >= 0);
      CHECK(net.timings()[l].bwd_s >= 0);
      CHECK(spans[l].fwd_s == net.timings()[l].fwd_s);
      CHECK(spans[l].bwd_s == net.timings()[l].bwd_s);
      sum += spans[l].fwd_s + spans[l].bwd_s;
      if (l > 0) CHECK(spans[l].fwd_start >= spans[l - 1].fwd_start);
      if (l > 0) CHECK(spans[l].bwd_start <= spans[l - 1].bwd_start);  // backward runs the layers in reverse
      CHECK(spans[l].bwd_start >= spans[layers - 1].fwd_start);
    }
    CHECK(sum > 0);
    CHECK(sum <= wall);
  }
}

// A batch's copy into a device is data wait, not forward; the next batch is copied while
// a step computes, so that from the second step on the copy costs what the step did not
// hide of it. The same steps, with the same losses, as on the CPU backend itself.
TEST_CASE("the trainer copies the next batch into a device during a step and counts what is left as data wait") {
  auto cpu = make_cpu_backend(CpuConv::Im2col);
  const Dataset data = make_synthetic(32, 2, 8, 8, 3, 1);
  TrainOptions o;
  o.batch = 8;
  o.epochs = 1;
  o.max_steps = 3;
  o.evaluate = false;
  const TrainResult ref = Trainer(tiny_cnn(), data, nullptr, *cpu, o).run();
  // Margins of a quarter second: the tiny steps themselves take milliseconds, but CI runs
  // other tests beside this one.
  const double copy_s = 0.5;
  for (double backward_s : {0.0, 0.4}) {
    INFO("each convolution's backward takes " << backward_s << " s longer");
    DeviceTimed dev(*cpu);
    Trainer t(tiny_cnn(), data, nullptr, dev, o);
    dev.copy_s = copy_s, dev.backward_s = backward_s;  // from here on only the batches are copied in
    const TrainResult r = t.run();
    REQUIRE(r.steps.size() == 3);
    CHECK(r.steps[0].data_s >= copy_s);  // the first batch is copied when it is needed
    for (size_t i = 0; i < r.steps.size(); ++i) {
      CHECK(r.steps[i].forward_s < copy_s);
      CHECK(r.steps[i].loss == ref.steps[i].loss);
      // Later batches were copied during the previous step: behind a backward longer than
      // the copy (two convolutions of 0.4 s) it is hidden, otherwise mostly waited for.
      if (i > 0 && backward_s > 0) CHECK(r.steps[i].data_s < copy_s / 2);
      if (i > 0 && backward_s == 0) CHECK(r.steps[i].data_s >= copy_s / 2);
    }
  }
}

#include <map>

namespace {
// The CPU backend dressed as a backend that stores activations in half precision (as the
// CUDA backend does in FP16/BF16): activations come from alloc_activation, and every
// layer call rounds the activations it writes to the precision, as 16-bit storage holds
// them. Each call checks that it is handed activations where the interface says
// activations, and FP32 buffers (parameters, gradients, statistics, masks) elsewhere;
// the violations are collected. A real 16-bit backend would read or write past a buffer
// or misread its values where either is confused.
class HalfStorage final : public Backend {
 public:
  HalfStorage(Backend& cpu, Precision p) : cpu_(cpu), p_(p) {}
  std::vector<std::string> violations;
  int logits_reads = 0;
  std::string name() const override { return "half-storage " + cpu_.name(); }
  Precision activation_storage() const override { return p_; }
  float* alloc(size_t n) override { return cpu_.alloc(n); }
  float* alloc_activation(size_t n) override {
    float* p = cpu_.alloc(n);
    acts_[p] = n;
    return p;
  }
  void free(float* p) override {
    acts_.erase(p);
    cpu_.free(p);
  }
  void zero(float* p, size_t n) override { fp32(p, "zero"), cpu_.zero(p, n); }
  void zero_activation(float* p, size_t n) override { act(p, n, "zero_activation"), cpu_.zero(p, n); }
  void read_activation(float* host, const float* src, size_t n) override {
    act(src, n, "read_activation");
    ++logits_reads;
    cpu_.read_activation(host, src, n);
  }
  void round(Precision p, float* x, size_t n) override { fp32(x, "round"), cpu_.round(p, x, n); }
  void copy_in(float* dst, const float* src, size_t n) override { fp32(dst, "copy_in"), cpu_.copy_in(dst, src, n); }
  bool nonfinite(const float* x, size_t n) override { return fp32(x, "nonfinite"), cpu_.nonfinite(x, n); }
  void optimizer_step(const std::vector<OptimizerSlot>& s, const OptimizerStep& o, float* m, float* v, const float* g,
                      float* p, double* r) override {
    cpu_.optimizer_step(s, o, m, v, g, p, r);
  }
  void import_activation(int n, int c, int hw, const float* plain, float* dst) override {
    const size_t e = size_t(n) * size_t(c) * size_t(hw);
    act(dst, e, "import_activation");
    cpu_.copy_in(dst, plain, e);
    out(dst, e);
  }
  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) override {
    act(x, xs(s), "conv x"), fp32(w, "conv w"), fp32(b, "conv b"), act(y, ys(s), "conv y");
    cpu_.conv2d_forward(s, x, w, b, y);
    out(y, ys(s));
  }
  void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    act(x, xs(s), "conv x"), fp32(w, "conv w"), act(dy, ys(s), "conv dy"), act(dx, xs(s), "conv dx");
    fp32(dw, "conv dw"), fp32(db, "conv db");
    cpu_.conv2d_backward(s, x, w, dy, dx, dw, db);
    out(dx, xs(s));
  }
  void linear_forward(int n, int in, int o, const float* x, const float* w, const float* b, float* y) override {
    act(x, size_t(n) * in, "linear x"), fp32(w, "linear w"), fp32(b, "linear b"), act(y, size_t(n) * o, "linear y");
    cpu_.linear_forward(n, in, o, x, w, b, y);
    out(y, size_t(n) * o);
  }
  void linear_backward(int n, int in, int o, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    act(x, size_t(n) * in, "linear x"), fp32(w, "linear w"), act(dy, size_t(n) * o, "linear dy");
    act(dx, size_t(n) * in, "linear dx"), fp32(dw, "linear dw"), fp32(db, "linear db");
    cpu_.linear_backward(n, in, o, x, w, dy, dx, dw, db);
    out(dx, size_t(n) * in);
  }
  void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                               float* sm, float* si, float* rm, float* rv, float mom, float eps) override {
    const size_t e = size_t(n) * c * hw;
    act(x, e, "bn x"), act(y, e, "bn y"), fp32(g, "bn gamma"), fp32(b, "bn beta"), fp32(sm, "bn mean");
    fp32(rm, "bn running");
    cpu_.batchnorm_forward_train(n, c, hw, x, g, b, y, sm, si, rm, rv, mom, eps);
    out(y, e);
  }
  void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                              const float* rm, const float* rv, float eps) override {
    const size_t e = size_t(n) * c * hw;
    act(x, e, "bn x"), act(y, e, "bn y"), fp32(g, "bn gamma"), fp32(rm, "bn running");
    cpu_.batchnorm_forward_eval(n, c, hw, x, g, b, y, rm, rv, eps);
    out(y, e);
  }
  void batchnorm_backward(int n, int c, int hw, const float* x, const float* g, const float* dy, const float* sm,
                          const float* si, float* dx, float* dg, float* db) override {
    const size_t e = size_t(n) * c * hw;
    act(x, e, "bn x"), act(dy, e, "bn dy"), act(dx, e, "bn dx"), fp32(g, "bn gamma"), fp32(dg, "bn dgamma");
    fp32(sm, "bn mean");
    cpu_.batchnorm_backward(n, c, hw, x, g, dy, sm, si, dx, dg, db);
    out(dx, e);
  }
  void relu_forward(size_t n, const float* x, float* y) override {
    act(x, n, "relu x"), act(y, n, "relu y"), cpu_.relu_forward(n, x, y), out(y, n);
  }
  void relu_backward(size_t n, const float* y, const float* dy, float* dx) override {
    act(y, n, "relu y"), act(dy, n, "relu dy"), act(dx, n, "relu dx"), cpu_.relu_backward(n, y, dy, dx), out(dx, n);
  }
  void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* a) override {
    act(x, ins(s), "maxpool x"), act(y, outs(s), "maxpool y"), fp32(reinterpret_cast<float*>(a), "argmax");
    cpu_.maxpool_forward(s, x, y, a), out(y, outs(s));
  }
  void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* a, float* dx) override {
    act(dy, outs(s), "maxpool dy"), act(dx, ins(s), "maxpool dx");
    cpu_.maxpool_backward(s, dy, a, dx), out(dx, ins(s));
  }
  void avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    act(x, ins(s), "avgpool x"), act(y, outs(s), "avgpool y"), cpu_.avgpool_forward(s, x, y), out(y, outs(s));
  }
  void avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    act(dy, outs(s), "avgpool dy"), act(dx, ins(s), "avgpool dx"), cpu_.avgpool_backward(s, dy, dx), out(dx, ins(s));
  }
  void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    act(x, ins(s), "adaptive x"), act(y, outs(s), "adaptive y");
    cpu_.adaptive_avgpool_forward(s, x, y), out(y, outs(s));
  }
  void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    act(dy, outs(s), "adaptive dy"), act(dx, ins(s), "adaptive dx");
    cpu_.adaptive_avgpool_backward(s, dy, dx), out(dx, ins(s));
  }
  void add_forward(size_t n, const float* a, const float* b, float* y) override {
    act(a, n, "add a"), act(b, n, "add b"), act(y, n, "add y"), cpu_.add_forward(n, a, b, y), out(y, n);
  }
  void accumulate(size_t n, const float* dy, float* dx) override {
    act(dy, n, "accumulate dy"), act(dx, n, "accumulate dx"), cpu_.accumulate(n, dy, dx), out(dx, n);
  }
  void dropout_forward(size_t n, const float* x, const float* m, float* y) override {
    act(x, n, "dropout x"), fp32(m, "dropout mask"), act(y, n, "dropout y");
    cpu_.dropout_forward(n, x, m, y), out(y, n);
  }
  void dropout_backward(size_t n, const float* dy, const float* m, float* dx) override {
    act(dy, n, "dropout dy"), fp32(m, "dropout mask"), act(dx, n, "dropout dx");
    cpu_.dropout_backward(n, dy, m, dx), out(dx, n);
  }
  double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing, float scale,
                      float* dlogits, int* correct) override {
    const size_t e = size_t(n) * size_t(classes);
    act(logits, e, "logits"), act(dlogits, e, "dlogits");
    const double loss = cpu_.softmax_xent(n, classes, logits, labels, smoothing, scale, dlogits, correct);
    out(dlogits, e);
    return loss;
  }
  // Every activation buffer holds values of the precision.
  bool all_on_grid() const {
    for (const auto& [p, n] : acts_)
      for (size_t i = 0; i < n; ++i)
        if (std::bit_cast<uint32_t>(round_to(p_, p[i])) != std::bit_cast<uint32_t>(p[i])) return false;
    return true;
  }

 private:
  static size_t xs(const ConvShape& s) { return size_t(s.n) * s.c * s.h * s.w; }
  static size_t ys(const ConvShape& s) { return size_t(s.n) * s.k * s.p * s.q; }
  static size_t ins(const PoolShape& s) { return size_t(s.n) * s.c * s.h * s.w; }
  static size_t outs(const PoolShape& s) { return size_t(s.n) * s.c * s.p * s.q; }
  // An activation argument: a whole activation buffer of at least n elements (null is
  // allowed: the model input's gradient).
  void act(const float* p, size_t n, const char* what) {
    if (!p) return;
    auto it = acts_.find(p);
    if (it == acts_.end()) violations.push_back(std::string(what) + ": not an activation buffer");
    else if (it->second < n) violations.push_back(std::string(what) + ": an activation buffer too small");
  }
  void fp32(const float* p, const char* what) {
    if (p && acts_.count(p)) violations.push_back(std::string(what) + ": an activation buffer where FP32 is expected");
  }
  void out(float* p, size_t n) {
    if (p) cpu_.round(p_, p, n);
  }
  Backend& cpu_;
  Precision p_;
  std::map<const float*, size_t> acts_;
};
}  // namespace

TEST_CASE("a backend storing half-precision activations gets activations and FP32 buffers where each belongs") {
  // A chain (every tensor has one consumer: real 16-bit storage and the FP32 emulation
  // round at the same points) gives the emulation's bits when the input is on the grid;
  // a residual CNN and ResNet-18 (gradients summed over two consumers, which 16-bit
  // storage rounds at each sum) keep every activation on the grid. Each checks the
  // buffers handed to every call, two training steps and an evaluation.
  ModelBuilder b("chain", {3, 8, 8});
  int x = b.conv("conv1", ModelBuilder::kInput, 8, 3, 1, 1, true);
  x = b.batchnorm("bn1", x);
  x = b.relu("relu1", x);
  x = b.maxpool("pool1", x, 2, 2);
  x = b.conv("conv2", x, 8, 3, 1, 1, false);
  x = b.relu("relu2", x);
  x = b.avgpool("pool2", x, 2, 2);
  x = b.flatten("flat", x);
  x = b.linear("fc1", x, 16, true);
  x = b.batchnorm("bn2", x);
  x = b.relu("relu3", x);
  x = b.dropout("drop", x, 0.25);
  b.linear("fc2", x, 5, true);
  const Model chain = b.finish();
  ModelOptions zo;
  zo.resolution = 16, zo.channels = 3, zo.classes = 5;
  struct Case {
    const char* what;
    Model model;
    bool equals_emulation;
  };
  const std::vector<Case> cases{{"chain", chain, true},
                                {"residual", residual_cnn("residual", 3, 8, 5, false), false},
                                {"resnet18", build_zoo_model("resnet18", zo), false}};
  auto cpu = make_cpu_backend(CpuConv::Im2col);
  for (const Case& c : cases)
    for (Precision p : {Precision::FP16, Precision::BF16}) {
      INFO(c.what << ", " << precision_name(p));
      HalfStorage half(*cpu, p);
      NetworkOptions o;
      o.precision = p;
      const int batch = 3;
      const int side = int(c.model.input_shape[1]);
      auto input = randn(size_t(batch) * 3 * size_t(side) * size_t(side), 17);
      cpu->round(p, input.data(), input.size());  // on the grid: the emulation does not round its input
      std::vector<int32_t> labels{0, 4, 2};
      Network real(c.model, batch, half, o), emulated(c.model, batch, *cpu, o);
      std::mt19937_64 rng1(3), rng2(3);
      std::vector<float> logits;
      for (int step = 0; step < 2; ++step) {
        real.forward(input.data(), true, rng1);
        emulated.forward(input.data(), true, rng2);
        const double lr = real.backward(labels.data(), 0.1f, 512.0f, nullptr, {});
        const double le = emulated.backward(labels.data(), 0.1f, 512.0f, nullptr, {});
        if (c.equals_emulation) {
          CHECK(lr == le);
          CHECK(std::equal(real.grads(), real.grads() + real.param_count(), emulated.grads()));
        }
        CHECK(half.all_on_grid());
      }
      real.forward(input.data(), false, rng1);
      emulated.forward(input.data(), false, rng2);
      real.read_logits(logits);
      CHECK(half.logits_reads == 1);
      if (c.equals_emulation) CHECK(std::equal(logits.begin(), logits.end(), emulated.logits()));
      CHECK(half.violations.empty());
      for (const std::string& v : half.violations) UNSCOPED_INFO(v);
    }
  // A network whose precision is not the backend's storage is refused.
  auto cpu2 = make_cpu_backend(CpuConv::Im2col);
  HalfStorage half(*cpu2, Precision::FP16);
  NetworkOptions o;
  o.precision = Precision::BF16;
  CHECK_THROWS_WITH(Network(chain, 2, half, o), Catch::Contains("stores activations in fp16"));
}

#include "fuseplan/exec/optimizer.hpp"

namespace {
// The CPU backend with step graphs as CUDA records them: between begin_graph() and
// end_graph() every call is recorded with its arguments and nothing runs; launch_graph()
// runs the recorded calls. A call that reads results on the host, copies from host memory
// or waits while recording is a violation (a captured CUDA stream refuses them, or
// records a copy from memory that will hold something else by the replay).
class GraphRecorder final : public Backend {
 public:
  explicit GraphRecorder(Backend& cpu) : cpu_(cpu) {}
  std::vector<std::string> violations;
  int launches = 0;
  std::string name() const override { return "graph-recording " + cpu_.name(); }
  bool supports_graphs() const override { return true; }
  void begin_graph() override {
    if (recording_) violations.push_back("begin_graph while recording");
    recording_ = true;
    graphs_.emplace_back();
  }
  int end_graph() override {
    recording_ = false;
    return int(graphs_.size()) - 1;
  }
  void launch_graph(int g) override {
    ++launches;
    for (const auto& call : graphs_.at(size_t(g))) call();
  }
  size_t graphs() const { return graphs_.size(); }
  float* alloc(size_t n) override { return host_only("alloc"), cpu_.alloc(n); }
  void free(float* p) override { cpu_.free(p); }
  void zero(float* p, size_t n) override { call([=, this] { cpu_.zero(p, n); }); }
  void round(Precision p, float* x, size_t n) override { call([=, this] { cpu_.round(p, x, n); }); }
  void copy_in(float* dst, const float* src, size_t n) override { host_only("copy_in"), cpu_.copy_in(dst, src, n); }
  bool reads_host_memory() const override { return cpu_.reads_host_memory(); }
  void synchronize() override { host_only("synchronize"); }
  bool nonfinite(const float* x, size_t n) override { return host_only("nonfinite"), cpu_.nonfinite(x, n); }
  void optimizer_step(const std::vector<OptimizerSlot>& s, const OptimizerStep& o, float* m, float* v, const float* g,
                      float* p, double* r) override {
    host_only("optimizer_step");
    cpu_.optimizer_step(s, o, m, v, g, p, r);
  }
  double softmax_xent(int n, int classes, const float* logits, const int32_t* labels, float smoothing, float scale,
                      float* dlogits, int* correct) override {
    host_only("softmax_xent");
    return cpu_.softmax_xent(n, classes, logits, labels, smoothing, scale, dlogits, correct);
  }
  void conv2d_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y) override {
    call([=, this] { cpu_.conv2d_forward(s, x, w, b, y); });
  }
  void conv2d_backward(const ConvShape& s, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    call([=, this] { cpu_.conv2d_backward(s, x, w, dy, dx, dw, db); });
  }
  void linear_forward(int n, int in, int out, const float* x, const float* w, const float* b, float* y) override {
    call([=, this] { cpu_.linear_forward(n, in, out, x, w, b, y); });
  }
  void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy, float* dx, float* dw,
                       float* db) override {
    call([=, this] { cpu_.linear_backward(n, in, out, x, w, dy, dx, dw, db); });
  }
  void batchnorm_forward_train(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                               float* sm, float* si, float* rm, float* rv, float mom, float eps) override {
    call([=, this] { cpu_.batchnorm_forward_train(n, c, hw, x, g, b, y, sm, si, rm, rv, mom, eps); });
  }
  void batchnorm_forward_eval(int n, int c, int hw, const float* x, const float* g, const float* b, float* y,
                              const float* rm, const float* rv, float eps) override {
    call([=, this] { cpu_.batchnorm_forward_eval(n, c, hw, x, g, b, y, rm, rv, eps); });
  }
  void batchnorm_backward(int n, int c, int hw, const float* x, const float* g, const float* dy, const float* sm,
                          const float* si, float* dx, float* dg, float* db) override {
    call([=, this] { cpu_.batchnorm_backward(n, c, hw, x, g, dy, sm, si, dx, dg, db); });
  }
  void relu_forward(size_t n, const float* x, float* y) override { call([=, this] { cpu_.relu_forward(n, x, y); }); }
  void relu_backward(size_t n, const float* y, const float* dy, float* dx) override {
    call([=, this] { cpu_.relu_backward(n, y, dy, dx); });
  }
  void maxpool_forward(const PoolShape& s, const float* x, float* y, int32_t* a) override {
    call([=, this] { cpu_.maxpool_forward(s, x, y, a); });
  }
  void maxpool_backward(const PoolShape& s, const float* dy, const int32_t* a, float* dx) override {
    call([=, this] { cpu_.maxpool_backward(s, dy, a, dx); });
  }
  void avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    call([=, this] { cpu_.avgpool_forward(s, x, y); });
  }
  void avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    call([=, this] { cpu_.avgpool_backward(s, dy, dx); });
  }
  void adaptive_avgpool_forward(const PoolShape& s, const float* x, float* y) override {
    call([=, this] { cpu_.adaptive_avgpool_forward(s, x, y); });
  }
  void adaptive_avgpool_backward(const PoolShape& s, const float* dy, float* dx) override {
    call([=, this] { cpu_.adaptive_avgpool_backward(s, dy, dx); });
  }
  void add_forward(size_t n, const float* a, const float* b, float* y) override {
    call([=, this] { cpu_.add_forward(n, a, b, y); });
  }
  void accumulate(size_t n, const float* dy, float* dx) override { call([=, this] { cpu_.accumulate(n, dy, dx); }); }
  void dropout_forward(size_t n, const float* x, const float* m, float* y) override {
    call([=, this] { cpu_.dropout_forward(n, x, m, y); });
  }
  void dropout_backward(size_t n, const float* dy, const float* m, float* dx) override {
    call([=, this] { cpu_.dropout_backward(n, dy, m, dx); });
  }

 private:
  void call(std::function<void()> f) {
    if (recording_) graphs_.back().push_back(std::move(f));
    else f();
  }
  void host_only(const char* what) {
    if (recording_) violations.push_back(std::string(what) + " while recording");
  }
  Backend& cpu_;
  bool recording_ = false;
  std::vector<std::vector<std::function<void()>>> graphs_;
};
}  // namespace

TEST_CASE("step graphs replay the recorded forward and backward with each step's input and weights") {
  // The same network stepped with and without graphs on the same backend (so the same op
  // sequence): a fresh input and labels each step and an optimizer update between steps,
  // which a replay must see through the buffers it recorded, and an evaluation between
  // steps, which must not replay the training graph. BatchNorm on the model input (its
  // discarded gradient), a residual add and a classifier cover the network's branches.
  ModelBuilder b("graphs", {3, 8, 8});
  int x = b.batchnorm("bn0", ModelBuilder::kInput);
  x = b.conv("conv1", x, 8, 3, 1, 1, true);
  x = b.batchnorm("bn1", x);
  x = b.relu("relu1", x);
  int y = b.conv("conv2", x, 8, 3, 1, 1, false);
  y = b.add("add", y, x);
  y = b.relu("relu2", y);
  y = b.adaptive_avgpool("gap", y, 1, 1);
  y = b.flatten("flat", y);
  b.linear("fc", y, 5, true);
  const Model m = b.finish();
  auto cpu = make_cpu_backend(CpuConv::Im2col);
  GraphRecorder rec(*cpu), plain(*cpu);
  NetworkOptions with, without;
  with.graphs = true;
  const int batch = 4, steps = 4;
  Network g(m, batch, rec, with), p(m, batch, plain, without);
  OptimizerOptions oo;
  oo.lr = 0.5, oo.total_steps = steps;
  Optimizer og(g, g.params(), oo), op(p, p.params(), oo);
  std::vector<float> lg, lp;
  std::vector<std::vector<float>> inputs;  // each step's at its own address
  for (int step = 0; step < steps; ++step) inputs.push_back(randn(size_t(batch) * 3 * 8 * 8, uint64_t(60 + step)));
  for (int step = 0; step < steps; ++step) {
    INFO("step " << step);
    const auto& input = inputs[size_t(step)];
    std::vector<int32_t> labels{step % 5, (step + 1) % 5, (step + 2) % 5, (step + 3) % 5};
    std::mt19937_64 r1(1), r2(1);
    g.forward(input.data(), true, r1);
    p.forward(input.data(), true, r2);
    const double a = g.backward(labels.data(), 0.1f, 1.0f, nullptr, {});
    const double c = p.backward(labels.data(), 0.1f, 1.0f, nullptr, {});
    CHECK(a == c);
    REQUIRE(std::equal(g.grads(), g.grads() + g.param_count(), p.grads()));
    og.step(step, g.grads(), 1.0f, g.params(), Precision::FP32);
    op.step(step, p.grads(), 1.0f, p.params(), Precision::FP32);
    g.forward(input.data(), false, r1);  // evaluation: never the training graph
    p.forward(input.data(), false, r2);
    g.read_logits(lg), p.read_logits(lp);
    CHECK(lg == lp);
  }
  CHECK(rec.graphs() == 2);  // forward and backward, recorded on the second step
  CHECK(rec.launches == 2 * (steps - 1));
  CHECK(rec.violations.empty());
  for (const std::string& v : rec.violations) UNSCOPED_INFO(v);
  // Refused: a backend without graphs, a model with dropout.
  CHECK_THROWS_WITH(Network(m, batch, *cpu, with), Catch::Contains("has no step graphs"));
  ModelBuilder d("dropped", {3, 8, 8});
  int z = d.conv("conv", ModelBuilder::kInput, 4, 3, 1, 1, true);
  z = d.flatten("flat", z);
  z = d.dropout("drop", z, 0.5);
  d.linear("fc", z, 2, true);
  CHECK_THROWS_WITH(Network(d.finish(), batch, rec, with), Catch::Contains("has dropout (drop)"));
}

#include <filesystem>
#include <fstream>

#include "fuseplan/exec/conv_algos.hpp"

namespace {
std::string algo_tmp(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "fuseplan-test-conv-algos";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}
}  // namespace

TEST_CASE("a convolution algorithm file reads back what was written, and keeps entries apart by shape and type") {
  ConvAlgoTable t;
  t.device = "NVIDIA H200", t.library = "cuDNN 91900";
  ConvAlgoKey a{64, 3, 224, 224, 64, 7, 2, 3, "float", true};
  ConvAlgoKey b = a;
  b.tensor_math = false;  // strict FP32 qualifies other algorithms: its own entry
  ConvAlgoKey h = a;
  h.data_type = "half";
  ConvAlgoChoice found{1, 1, 3, "find", 0.52, 0.61, 0.93};
  ConvAlgoChoice heur{0, 0, 1};
  t.put(a, found), t.put(b, heur), t.put(h, heur);
  const std::string path = algo_tmp("round-trip.json");
  t.save(path);
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));
  ConvAlgoTable back = ConvAlgoTable::load(path);
  CHECK(back.size() == 3);
  CHECK(back.device == "NVIDIA H200");
  CHECK(back.library == "cuDNN 91900");
  REQUIRE(back.find(a));
  CHECK(*back.find(a) == found);
  REQUIRE(back.find(b));
  CHECK(*back.find(b) == heur);
  CHECK(*back.find(h) == heur);
  ConvAlgoKey other = a;
  other.n = 32;  // another batch is another shape
  CHECK(back.find(other) == nullptr);
  CHECK(back.to_json() == t.to_json());
}

TEST_CASE("a convolution algorithm file saved onto a FIFO is written through it and the FIFO stays") {
  ConvAlgoTable t;
  t.device = "NVIDIA H200", t.library = "cuDNN 91900";
  t.put(ConvAlgoKey{8, 3, 32, 32, 16, 3, 1, 1, "float", true}, ConvAlgoChoice{1, 1, 3, "find", 0.5, 0.6, 0.9});
  const std::string fifo = algo_tmp("algos.fifo");
  std::filesystem::remove(fifo);
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Opened for reading first without waiting for a writer, so nothing can block: the
  // table (well under the pipe's buffer) is read once saved.
  const int rfd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(rfd >= 0);
  t.save(fifo);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(rfd, buf, sizeof buf)) > 0;) got.append(buf, size_t(n));
  ::close(rfd);
  CHECK(got == t.to_json());
  CHECK(std::filesystem::is_fifo(fifo));
  std::filesystem::remove(fifo);
}

TEST_CASE("a malformed convolution algorithm file is refused naming the file and the JSON path") {
  const std::string path = algo_tmp("bad.json");
  auto refused = [&](const std::string& text, const std::string& what) {
    std::ofstream(path) << text;
    INFO(text);
    try {
      (void)ConvAlgoTable::load(path);
      FAIL("accepted");
    } catch (const InputError& e) {
      CHECK_THAT(e.what(), Catch::Contains(path));
      CHECK_THAT(e.what(), Catch::Contains(what));
    }
  };
  const std::string shape = R"("shape": {"n": 8, "c": 3, "h": 32, "w": 32, "k": 16, "r": 3, "stride": 1, "pad": 1})";
  const std::string entry = "{" + shape + R"(, "data_type": "float", "tensor_math": true, "how": "heuristic", )";
  refused(R"({"schema": "fuseplan.plan/1", "convolutions": []})", "$.schema");
  refused(R"({"schema": "fuseplan.conv-algos/1"})", "$.convolutions");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [)" + entry +
              R"("fwd": 64, "bwd_data": 0, "bwd_filter": 0}]})",
          "$.convolutions[0].fwd");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [)" + entry +
              R"("fwd": 0, "bwd_data": -1, "bwd_filter": 0}]})",
          "$.convolutions[0].bwd_data");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [{"shape": {"n": 0, "c": 3, "h": 32, "w": 32, "k": 16, "r": 3, "stride": 1, "pad": 1}, "data_type": "float", "tensor_math": true, "how": "heuristic", "fwd": 0, "bwd_data": 0, "bwd_filter": 0}]})",
          "$.convolutions[0].shape.n");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [)" + entry +
              R"("fwd": 0, "bwd_data": 0, "bwd_filter": 0, "speed": 1}]})",
          "speed");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [{)" + shape +
              R"(, "data_type": "fp8", "tensor_math": true, "how": "heuristic", "fwd": 0, "bwd_data": 0, "bwd_filter": 0}]})",
          "$.convolutions[0].data_type");
  refused(R"({"schema": "fuseplan.conv-algos/1", "convolutions": [)" + entry +
              R"("fwd": 0, "bwd_data": 0, "bwd_filter": 0}, )" + entry + R"("fwd": 1, "bwd_data": 0, "bwd_filter": 0}]})",
          "$.convolutions[1]: a second entry for the same shape");
  refused("{not json", "");
}

TEST_CASE("each rank of a multi-rank run has its own convolution algorithm file") {
  CHECK(conv_algo_path_for_rank("algos.json", 0, 1) == "algos.json");
  CHECK(conv_algo_path_for_rank("run/algos.json", 1, 4) == "run/algos.rank1.json");
  CHECK(conv_algo_path_for_rank("algos", 3, 4) == "algos.rank3");
  CHECK(conv_algo_path_for_rank("", 1, 4).empty());
  CHECK(parse_conv_algo_search("find") == ConvAlgoSearch::Find);
  CHECK(parse_conv_algo_search("heuristic") == ConvAlgoSearch::Heuristic);
  CHECK_THROWS_AS(parse_conv_algo_search("fastest"), InputError);
}
