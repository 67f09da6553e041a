// Transformer zoo: BERT (Hugging Face BertModel, with pooler, and BertForPreTraining) and
// GPT-2 (GPT2Model; the LM head is tied to wte: its FLOPs count, it adds no tensor). Names
// and order follow their state_dicts, but for BertForPreTraining's cls.predictions.bias:
// listed there before the head's transform, here after it, where the decoder uses it.
#include <string>

#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "zoo_internal.hpp"

namespace fuseplan::zoo_detail {

namespace {
constexpr double kHiddenDropout = 0.1;  // both BERT and GPT-2 use 0.1
constexpr int64_t kBertTokenTypes = 2;

struct BertOutputs {
  int sequence = 0, pooled = 0;  // layer indices: [S, H] and [H]
};

// BertModel with its pooler; `prefix` names its module ("" for BertModel, "bert." inside
// BertForPreTraining).
BertOutputs bert_body(ModelBuilder& b, const TransformerConfig& c, const std::string& prefix) {
  if (c.seq_len > c.max_positions)
    throw InputError("model " + c.name + ": sequence length " + std::to_string(c.seq_len) +
                     " exceeds the position table (" + std::to_string(c.max_positions) + ")");
  const std::string E = prefix + "embeddings.";
  int w = b.embedding(E + "word_embeddings", ModelBuilder::kInput, c.vocab, c.hidden);
  int p = b.embedding(E + "position_embeddings", ModelBuilder::kInput, c.max_positions, c.hidden);
  int t = b.embedding(E + "token_type_embeddings", ModelBuilder::kInput, kBertTokenTypes, c.hidden);
  int x = b.add(E + "add_1", w, p);
  x = b.add(E + "add_2", x, t);
  x = b.layernorm(E + "LayerNorm", x);
  x = b.dropout(E + "dropout", x, kHiddenDropout);
  for (int64_t i = 0; i < c.layers; ++i) {
    std::string L = prefix + "encoder.layer." + std::to_string(i);
    int q = b.linear(L + ".attention.self.query", x, c.hidden, true);
    int k = b.linear(L + ".attention.self.key", x, c.hidden, true);
    int v = b.linear(L + ".attention.self.value", x, c.hidden, true);
    int a = b.attention(L + ".attention.self.attn", {q, k, v}, static_cast<int>(c.heads), false);
    a = b.linear(L + ".attention.output.dense", a, c.hidden, true);
    a = b.dropout(L + ".attention.output.dropout", a, kHiddenDropout);
    a = b.add(L + ".attention.output.add", a, x);
    a = b.layernorm(L + ".attention.output.LayerNorm", a);
    int h = b.linear(L + ".intermediate.dense", a, c.intermediate, true);
    h = b.gelu(L + ".intermediate.gelu", h);
    h = b.linear(L + ".output.dense", h, c.hidden, true);
    h = b.dropout(L + ".output.dropout", h, kHiddenDropout);
    h = b.add(L + ".output.add", h, a);
    x = b.layernorm(L + ".output.LayerNorm", h);
  }
  int pooled = b.token_select(prefix + "pooler.first_token", x);
  pooled = b.linear(prefix + "pooler.dense", pooled, c.hidden, true);
  pooled = b.tanh(prefix + "pooler.activation", pooled);
  return {x, pooled};
}

// Masked positions per sequence the masked-LM head scores: 15 % of the tokens rounded up
// as Google's and NVIDIA's pre-training data allow them (max_predictions_per_seq 20 at 128
// tokens, 80 at 512): ceil(S x 5 / 32).
int64_t bert_masked_positions(int64_t seq_len) { return (seq_len * 5 + 31) / 32; }

}  // namespace

Model bert(const TransformerConfig& c) {
  ModelBuilder b(c.name, {c.seq_len});
  bert_body(b, c, "");
  return b.finish();
}

Model bert_pretraining(const TransformerConfig& c) {
  ModelBuilder b(c.name, {c.seq_len});
  const BertOutputs body = bert_body(b, c, "bert.");
  // Masked LM: the masked positions gathered out of the sequence (a copy of P rows), then
  // the prediction head's transform and the decoder tied to the word embeddings, whose
  // bias is the head's own tensor (named as BertForPreTraining's named_parameters name it).
  const int64_t P = bert_masked_positions(c.seq_len);
  Layer gather;
  gather.name = "cls.predictions.masked_positions";
  gather.inputs = {body.sequence};
  gather.in_shape = b.shape(body.sequence);
  gather.out_shape = {P, c.hidden};
  int m = b.custom(std::move(gather), {});
  m = b.linear("cls.predictions.transform.dense", m, c.hidden, true);
  m = b.gelu("cls.predictions.transform.gelu", m);
  m = b.layernorm("cls.predictions.transform.LayerNorm", m);
  const int decoder = b.linear_tied("cls.predictions.decoder", m, c.vocab, /*bias=*/true);
  const Layer& d = b.building().layers[size_t(decoder)];
  b.building().tensors[size_t(d.first_tensor)].name = "cls.predictions.bias";
  // Next-sentence prediction on the pooled first token.
  b.linear("cls.seq_relationship", body.pooled, 2, true);
  return b.finish();
}

Model gpt2(const TransformerConfig& c) {
  ModelBuilder b(c.name, {c.seq_len});
  if (c.seq_len > c.max_positions)
    throw InputError("model " + c.name + ": sequence length " + std::to_string(c.seq_len) +
                     " exceeds the position table (" + std::to_string(c.max_positions) + ")");
  int w = b.embedding("wte", ModelBuilder::kInput, c.vocab, c.hidden);
  int p = b.embedding("wpe", ModelBuilder::kInput, c.max_positions, c.hidden);
  int x = b.add("embed_add", w, p);
  x = b.dropout("drop", x, kHiddenDropout);
  for (int64_t i = 0; i < c.layers; ++i) {
    std::string L = "h." + std::to_string(i);
    int y = b.layernorm(L + ".ln_1", x);
    y = b.linear(L + ".attn.c_attn", y, 3 * c.hidden, true, /*transposed=*/true);
    y = b.attention(L + ".attn.attn", {y}, static_cast<int>(c.heads), true);
    y = b.linear(L + ".attn.c_proj", y, c.hidden, true, true);
    y = b.dropout(L + ".attn.resid_dropout", y, kHiddenDropout);
    x = b.add(L + ".add_1", y, x);
    y = b.layernorm(L + ".ln_2", x);
    y = b.linear(L + ".mlp.c_fc", y, c.intermediate, true, true);
    y = b.gelu(L + ".mlp.act", y);
    y = b.linear(L + ".mlp.c_proj", y, c.hidden, true, true);
    y = b.dropout(L + ".mlp.dropout", y, kHiddenDropout);
    x = b.add(L + ".add_2", y, x);
  }
  x = b.layernorm("ln_f", x);
  // Language-model head tied to wte: compute without a tensor of its own (its gradient
  // lands in wte, whose gradient is complete last in backward anyway).
  b.linear_tied("lm_head", x, c.vocab);
  return b.finish();
}

}  // namespace fuseplan::zoo_detail
