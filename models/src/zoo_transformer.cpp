// Transformer zoo: BERT (Hugging Face BertModel, with pooler) and GPT-2 (GPT2Model; the
// LM head is tied to wte: its FLOPs count, it adds no tensor). Names and order follow their state_dicts.
#include <string>

#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "zoo_internal.hpp"

namespace fuseplan::zoo_detail {

namespace {
constexpr double kHiddenDropout = 0.1;  // both BERT and GPT-2 use 0.1
constexpr int64_t kBertTokenTypes = 2;
}  // namespace

Model bert(const TransformerConfig& c) {
  ModelBuilder b(c.name, {c.seq_len});
  if (c.seq_len > c.max_positions)
    throw InputError("model " + c.name + ": sequence length " + std::to_string(c.seq_len) +
                     " exceeds the position table (" + std::to_string(c.max_positions) + ")");
  int w = b.embedding("embeddings.word_embeddings", ModelBuilder::kInput, c.vocab, c.hidden);
  int p = b.embedding("embeddings.position_embeddings", ModelBuilder::kInput, c.max_positions, c.hidden);
  int t = b.embedding("embeddings.token_type_embeddings", ModelBuilder::kInput, kBertTokenTypes, c.hidden);
  int x = b.add("embeddings.add_1", w, p);
  x = b.add("embeddings.add_2", x, t);
  x = b.layernorm("embeddings.LayerNorm", x);
  x = b.dropout("embeddings.dropout", x, kHiddenDropout);
  for (int64_t i = 0; i < c.layers; ++i) {
    std::string L = "encoder.layer." + std::to_string(i);
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
  x = b.token_select("pooler.first_token", x);
  x = b.linear("pooler.dense", x, c.hidden, true);
  b.tanh("pooler.activation", x);
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
