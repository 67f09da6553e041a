// A random model for the tuner's and the pipeline's brute-force checks.
#pragma once
#include <cmath>
#include <random>
#include <string>

#include "fuseplan/models/model.hpp"

// A model of `n` tensors (one or two per layer) with random sizes and measured times.
// `no_params` > 0: the first layer (backward's last step) and that share of the others
// have no parameters (activations, pooling), so backward runs on after a gradient is ready.
inline fuseplan::Model random_model(std::mt19937_64& rng, int n, double no_params = 0) {
  using namespace fuseplan;
  Model m;
  m.name = "random" + std::to_string(n);
  m.input_shape = {1};
  std::uniform_real_distribution<double> log_size(1, 7.5), time_us(5, 3000), coin(0, 1);
  int l = 0;
  for (int t = 0; t < n; ++l) {
    Layer layer;
    layer.name = "layer" + std::to_string(l);
    layer.inputs = {l - 1};
    layer.in_shape = layer.out_shape = {1};
    layer.first_tensor = t;
    layer.tensor_count = (t + 1 < n && coin(rng) < 0.3) ? 2 : 1;
    if (no_params > 0 && (l == 0 || coin(rng) < no_params)) layer.tensor_count = 0;
    layer.measured = MeasuredTime{time_us(rng) / 2, time_us(rng), 32};
    for (int k = 0; k < layer.tensor_count; ++k, ++t) {
      ParamTensor p;
      p.name = layer.name + (k == 0 ? ".weight" : ".bias");
      p.numel = static_cast<int64_t>(std::pow(10.0, log_size(rng)));
      p.shape = {p.numel};
      p.layer = l;
      p.role = k == 0 ? (coin(rng) < 0.2 ? TensorRole::NormScale : TensorRole::Weight) : TensorRole::Bias;
      m.tensors.push_back(p);
    }
    m.layers.push_back(layer);
  }
  return m;
}

