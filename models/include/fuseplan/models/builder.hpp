// Builds a Model layer by layer from the architecture: shapes are propagated, parameter
// tensors and FLOPs derived, nothing typed in by hand. Invalid shapes throw InputError.
#pragma once
#include <string>
#include <vector>

#include "fuseplan/models/model.hpp"

namespace fuseplan {

class ModelBuilder {
 public:
  static constexpr int kInput = -1;  // "from" value meaning the model input

  ModelBuilder(std::string model_name, Shape input_shape);
  // Another model input (an attention mask): the "from" value layers read it by (-2, -3, ...).
  int add_input(std::string name, Shape shape);

  // CNN layers on [C, H, W]; `name` is the module path, parameters get ".weight"/".bias".
  int conv(const std::string& name, int from, int64_t out_ch, int kernel, int stride, int padding,
           bool bias, int groups = 1);
  // A conv2d with a rectangular kernel, stride, padding or dilation.
  int conv(const std::string& name, int from, int64_t out_ch, Hw kernel, Hw stride, Hw padding, bool bias,
           int groups = 1, Hw dilation = {1, 1});
  int batchnorm(const std::string& name, int from);
  int maxpool(const std::string& name, int from, int kernel, int stride, int padding = 0);
  int avgpool(const std::string& name, int from, int kernel, int stride, int padding = 0);
  int adaptive_avgpool(const std::string& name, int from, int64_t out_h, int64_t out_w);
  int flatten(const std::string& name, int from);
  // Linear on the last dimension; `transposed` stores the weight [in, out] (HF GPT-2 Conv1D).
  int linear(const std::string& name, int from, int64_t out_features, bool bias, bool transposed = false);
  // Linear whose weight is another layer's tensor (tied embeddings): FLOPs, and a tensor
  // only for its own bias, if it has one (BERT's masked-LM decoder).
  int linear_tied(const std::string& name, int from, int64_t out_features, bool bias = false);
  int relu(const std::string& name, int from);
  int gelu(const std::string& name, int from);
  int tanh(const std::string& name, int from);
  int dropout(const std::string& name, int from, double p);
  int add(const std::string& name, int a, int b);
  // Token ids [S] -> [S, dim]; `positions` embeds positions 0..S-1 instead of the ids.
  int embedding(const std::string& name, int from, int64_t vocab, int64_t dim);
  int layernorm(const std::string& name, int from);
  // Scaled dot-product attention: inputs q, k, v ([S, H] each), or one fused [S, 3H].
  int attention(const std::string& name, const std::vector<int>& from, int heads, bool causal,
                AttentionKernels kernels = AttentionKernels::Fused);
  int token_select(const std::string& name, int from);  // [S, H] -> [H] (first token)
  // A layer of a kind the builder does not know, taken as given (shapes, FLOPs, tensors).
  int custom(Layer l, std::vector<ParamTensor> params);

  const Shape& shape(int layer) const;
  // The model so far, for a caller that adjusts what the builder derived (the file reader
  // keeps a file's tensor names and measured times).
  Model& building() { return m_; }
  Model finish();

 private:
  int push(Layer l, std::vector<ParamTensor> params);
  const Shape& in(int from) const;
  [[noreturn]] void bad(const std::string& layer, const std::string& what) const;
  Model m_;
};

}  // namespace fuseplan
