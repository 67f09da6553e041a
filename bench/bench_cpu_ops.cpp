// The CPU backend's BatchNorm + ReLU, as two ops and fused (Backend::batchnorm_relu_*),
// on ResNet-50's shapes at batch 16: median time of each, forward (training) and
// backward, on both activation layouts. Prints figures; not a test.
//
//   bench_cpu_ops [repetitions, default 20]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <random>
#include <vector>

#include "fuseplan/exec/ops.hpp"

using namespace fuseplan::exec;

namespace {
double median_ms(int reps, const std::function<void()>& f) {
  f();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    t.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 20;
  struct Shape {
    int n, c, side;
  };
  std::printf("BatchNorm + ReLU on the CPU backend: two ops against one fused op (median of %d, ms)\n", reps);
  std::printf("%-8s %-22s %9s %9s %9s %9s %9s %9s\n", "layout", "shape (n, c, h x w)", "fwd 2 ops", "fwd fused", "ratio",
              "bwd 2 ops", "bwd fused", "ratio");
  for (CpuConv conv : {CpuConv::Auto, CpuConv::Im2col}) {
    auto be = make_cpu_backend(conv);
    for (Shape s : {Shape{16, 64, 112}, Shape{16, 64, 56}, Shape{16, 128, 28}, Shape{16, 256, 14}, Shape{16, 512, 7}}) {
      const int hw = s.side * s.side;
      const size_t n = size_t(s.n) * s.c * hw;
      std::vector<float> x(n), y(n), yr(n), dy(n), dmid(n), dx(n), gamma(s.c, 1.0f), beta(s.c, 0.1f);
      std::vector<float> mean(s.c), invstd(s.c), rmean(s.c, 0.0f), rvar(s.c, 1.0f), dg(s.c), db(s.c);
      std::mt19937 rng(1);
      std::normal_distribution<float> normal;
      for (float& v : x) v = normal(rng);
      for (float& v : dy) v = normal(rng);
      const char* layout = be->blocked(s.c) ? "blocked" : "nchw";
      const double f2 = median_ms(reps, [&] {
        be->batchnorm_forward_train(s.n, s.c, hw, x.data(), gamma.data(), beta.data(), y.data(), mean.data(),
                                    invstd.data(), rmean.data(), rvar.data(), 0.1f, 1e-5f);
        be->relu_forward(n, y.data(), yr.data());
      });
      const double f1 = median_ms(reps, [&] {
        be->batchnorm_relu_forward_train(s.n, s.c, hw, x.data(), gamma.data(), beta.data(), yr.data(), mean.data(),
                                         invstd.data(), rmean.data(), rvar.data(), 0.1f, 1e-5f);
      });
      const double b2 = median_ms(reps, [&] {
        be->relu_backward_set(n, yr.data(), dy.data(), dmid.data());
        be->batchnorm_backward_set(s.n, s.c, hw, x.data(), gamma.data(), dmid.data(), mean.data(), invstd.data(),
                                   dx.data(), dg.data(), db.data());
      });
      const double b1 = median_ms(reps, [&] {
        be->batchnorm_relu_backward(s.n, s.c, hw, x.data(), gamma.data(), yr.data(), dy.data(), mean.data(),
                                    invstd.data(), dx.data(), dg.data(), db.data(), false);
      });
      char shape[64];
      std::snprintf(shape, sizeof shape, "%d, %d, %dx%d", s.n, s.c, s.side, s.side);
      std::printf("%-8s %-22s %9.3f %9.3f %8.2fx %9.3f %9.3f %8.2fx\n", layout, shape, f2, f1, f1 / f2, b2, b1,
                  b1 / b2);
    }
  }
  std::printf("(%s)\n", make_cpu_backend()->name().c_str());
  return 0;
}
