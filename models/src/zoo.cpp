// The zoo table (name -> description -> builder) and model loading by name or path.
#include "fuseplan/models/zoo.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/text.hpp"
#include "zoo_internal.hpp"

namespace fuseplan {

namespace {
using zoo_detail::CnnOptions;
using zoo_detail::TransformerConfig;

CnnOptions cnn(const ModelOptions& o, int default_res) {
  CnnOptions c;
  c.resolution = o.resolution.value_or(default_res);
  c.channels = o.channels.value_or(3);
  c.classes = o.classes.value_or(1000);
  return c;
}

//                     name            vocab  positions hidden layers heads  inter  default seq
const TransformerConfig kBertBase{"bert_base", 30522, 512, 768, 12, 12, 3072, 128};
const TransformerConfig kBertLarge{"bert_large", 30522, 512, 1024, 24, 16, 4096, 128};
const TransformerConfig kBertBasePre{"bert_base_pretraining", 30522, 512, 768, 12, 12, 3072, 128};
const TransformerConfig kBertLargePre{"bert_large_pretraining", 30522, 512, 1024, 24, 16, 4096, 128};
const TransformerConfig kGpt2{"gpt2", 50257, 1024, 768, 12, 12, 3072, 1024};
const TransformerConfig kGpt2Xl{"gpt2_xl", 50257, 1024, 1600, 48, 25, 6400, 1024};

TransformerConfig with_seq(TransformerConfig c, const ModelOptions& o) {
  if (o.seq_len) c.seq_len = *o.seq_len;
  return c;
}

Model resnet_by_depth(const std::string& name, const ModelOptions& o) {
  auto c = cnn(o, 224);
  if (name == "resnet18") return zoo_detail::resnet(name, {2, 2, 2, 2}, false, c);
  if (name == "resnet34") return zoo_detail::resnet(name, {3, 4, 6, 3}, false, c);
  if (name == "resnet50") return zoo_detail::resnet(name, {3, 4, 6, 3}, true, c);
  if (name == "resnet101") return zoo_detail::resnet(name, {3, 4, 23, 3}, true, c);
  return zoo_detail::resnet(name, {3, 8, 36, 3}, true, c);
}

const std::vector<ZooEntry> kZoo{
    {"alexnet", "AlexNet, torchvision layout (64-192-384-256-256)", false, 224, 64,
     [](const ModelOptions& o) { return zoo_detail::alexnet(cnn(o, 224)); }},
    {"alexnet_bn", "AlexNet-BN of the 4-minute paper: BN after conv1-5, pool5, fc6, fc7", false, 227, 64,
     [](const ModelOptions& o) { return zoo_detail::alexnet_bn(cnn(o, 227)); }},
    {"vgg16", "VGG-16 (configuration D), torchvision", false, 224, 32,
     [](const ModelOptions& o) { return zoo_detail::vgg16(cnn(o, 224)); }},
    {"resnet18", "ResNet-18, torchvision", false, 224, 32,
     [](const ModelOptions& o) { return resnet_by_depth("resnet18", o); }},
    {"resnet34", "ResNet-34, torchvision", false, 224, 32,
     [](const ModelOptions& o) { return resnet_by_depth("resnet34", o); }},
    {"resnet50", "ResNet-50 v1.5, torchvision", false, 224, 32,
     [](const ModelOptions& o) { return resnet_by_depth("resnet50", o); }},
    {"resnet101", "ResNet-101 v1.5, torchvision", false, 224, 32,
     [](const ModelOptions& o) { return resnet_by_depth("resnet101", o); }},
    {"resnet152", "ResNet-152 v1.5, torchvision", false, 224, 32,
     [](const ModelOptions& o) { return resnet_by_depth("resnet152", o); }},
    {"bert_base", "BERT-base (BertModel with pooler), Hugging Face", true, 128, 32,
     [](const ModelOptions& o) { return zoo_detail::bert(with_seq(kBertBase, o)); }},
    {"bert_large", "BERT-large (BertModel with pooler), Hugging Face", true, 128, 16,
     [](const ModelOptions& o) { return zoo_detail::bert(with_seq(kBertLarge, o)); }},
    {"bert_base_pretraining", "BERT-base with its pre-training heads (BertForPreTraining), Hugging Face", true, 128,
     32, [](const ModelOptions& o) { return zoo_detail::bert_pretraining(with_seq(kBertBasePre, o)); }},
    {"bert_large_pretraining", "BERT-large with its pre-training heads (BertForPreTraining), Hugging Face", true, 128,
     16, [](const ModelOptions& o) { return zoo_detail::bert_pretraining(with_seq(kBertLargePre, o)); }},
    {"gpt2", "GPT-2 124M (GPT2Model + tied LM head), Hugging Face", true, 1024, 8,
     [](const ModelOptions& o) { return zoo_detail::gpt2(with_seq(kGpt2, o)); }},
    {"gpt2_xl", "GPT-2 XL 1.5B (GPT2Model + tied LM head), Hugging Face", true, 1024, 2,
     [](const ModelOptions& o) { return zoo_detail::gpt2(with_seq(kGpt2Xl, o)); }},
};

}  // namespace


const std::vector<ZooEntry>& zoo() { return kZoo; }

const ZooEntry* find_zoo(const std::string& name) {
  for (const auto& e : kZoo)
    if (e.name == name) return &e;
  return nullptr;
}

std::string zoo_names() {
  std::string out;
  for (const auto& e : kZoo) out += (out.empty() ? "" : ", ") + e.name;
  return out;
}

namespace {
constexpr std::pair<AttentionKernels, const char*> kAttentionNames[] = {
    {AttentionKernels::Eager, "eager"}, {AttentionKernels::FusedSoftmax, "fused-softmax"},
    {AttentionKernels::Fused, "fused"}};
}  // namespace

AttentionKernels parse_attention(const std::string& name, const std::string& where) {
  for (const auto& [k, n] : kAttentionNames)
    if (name == n) return k;
  throw InputError(where + ": unknown attention '" + name + "' (eager, fused-softmax, fused)");
}

const char* attention_name(AttentionKernels k) {
  for (const auto& [kernels, n] : kAttentionNames)
    if (k == kernels) return n;
  return "fused";
}

namespace {
// --attention: every attention layer of `m` run as `opt` says.
Model with_attention(Model m, const ModelOptions& opt) {
  if (!opt.attention) return m;
  bool any = false;
  for (Layer& l : m.layers)
    if (l.kind == LayerKind::Attention) {
      l.attrs.attention = *opt.attention;
      any = true;
    }
  if (!any) throw InputError(field("model.attention") + ": " + m.name + " has no attention layer");
  return m;
}
}  // namespace

Model build_zoo_model(const std::string& name, const ModelOptions& opt) {
  const ZooEntry* e = find_zoo(name);
  if (!e) throw InputError(field("model") + ": unknown model '" + name + "' (zoo: " + zoo_names() + "; or a model .json path)");
  if (e->is_transformer && (opt.resolution || opt.channels || opt.classes))
    throw InputError(field("model.resolution") + "/" + field("model.channels") + "/" + field("model.classes") + " do not apply to " + name + " (a transformer; use " + field("model.seq_len") + ")");
  if (!e->is_transformer && opt.seq_len)
    throw InputError(field("model.seq_len") + " does not apply to " + name + " (a CNN; use " + field("model.resolution") + ")");
  check_model_options(opt);
  return with_attention(e->build(opt), opt);
}

void check_model_options(const ModelOptions& opt) {
  auto within = [&](const std::optional<int>& v, const std::string& flag, int hi) {
    if (v && (*v <= 0 || *v > hi))
      throw InputError(flag + ": must be in [1, " + std::to_string(hi) + "] (got " + std::to_string(*v) + ")");
  };
  within(opt.resolution, field("model.resolution"), kMaxResolution);
  within(opt.channels, field("model.channels"), kMaxChannels);
  within(opt.classes, field("model.classes"), kMaxClasses);
  within(opt.seq_len, field("model.seq_len"), kMaxSeqLen);
}

Model load_model(const std::string& name_or_path, const ModelOptions& opt) {
  if (!names_a_file(name_or_path)) return build_zoo_model(name_or_path, opt);
  if (opt.resolution || opt.channels || opt.classes || opt.seq_len)
    throw InputError(field("model.resolution") + "/" + field("model.channels") + "/" + field("model.classes") + "/" + field("model.seq_len") + " apply to zoo models, not to " + name_or_path);
  return with_attention(load_model_file(name_or_path), opt);
}

int default_batch_per_gpu(const std::string& name_or_path) {
  const ZooEntry* e = find_zoo(name_or_path);
  return e ? e->default_batch_per_gpu : 32;
}

std::optional<PublishedBatch> published_batch_limit(const Model& m) {
  const std::string& n = m.name;
  auto starts = [&](const char* prefix) { return n.rfind(prefix, 0) == 0; };
  if (starts("alexnet")) return PublishedBatch{65536, "AlexNet-BN at 64K, Jia et al. 2018 (the 4-minute paper)"};
  if (starts("resnet")) return PublishedBatch{65536, "ResNet-50 at 64K, Jia et al. 2018 (the 4-minute paper)"};
  if (starts("bert_")) return PublishedBatch{65536, "BERT at 64K sequences with LAMB, You et al. 2020 (arXiv:1904.00962)"};
  if (starts("gpt2") && !m.input_shape.empty() && m.input_shape[0] > 0)
    return PublishedBatch{std::max<int64_t>(1, int64_t(3.2e6) / m.input_shape[0]),
                          "3.2M tokens per batch for GPT-3 175B, Brown et al. 2020 (arXiv:2005.14165)"};
  return std::nullopt;
}

std::string epochs_goal(double epochs, int64_t samples) {
  char e[32];
  std::snprintf(e, sizeof e, "%g", epochs);
  return std::string(e) + (epochs == 1 ? " epoch" : " epochs") + " x " + grouped(samples) + " samples";
}

int sequence_length(const Model& m) {
  const ZooEntry* e = find_zoo(m.name);
  return e && e->is_transformer && m.input_shape.size() == 1 ? int(m.input_shape[0]) : 0;
}

void check_goal(const TrainingGoal& g, double global_batch) {
  auto in = [](double v, double lo, double hi) { return v >= lo && v <= hi; };
  if (!(g.epochs > 0 && g.epochs <= 1e6))
    throw InputError(field("goal.epochs") + ": must be in (0, 1e+06] (got " + formatted(g.epochs, "%g") + ")");
  if (!in(double(g.dataset_size), 1, 1e15))
    throw InputError(field("goal.dataset_size") + ": must be in [1, 1e+15] samples (got " +
                     std::to_string(g.dataset_size) + ")");
  if (!in(g.tokens, 0, 1e18))
    throw InputError(field("goal.tokens") + ": must be in (0, 1e+18] (got " + formatted(g.tokens, "%g") + ")");
  // A token budget is at most 1e18 sequences of one token; an epoch goal is checked here.
  if (g.tokens == 0 && !(g.epochs * double(g.dataset_size) / global_batch <= 1e18))
    throw InputError(field("goal.epochs") + ": the goal (" + epochs_goal(g.epochs, g.dataset_size) +
                     ") takes more than 1e+18 iterations of " + formatted(global_batch, "%.0f") + " samples");
}

TrainingGoal training_goal(const Model& m) {
  const std::string& n = m.name;
  auto starts = [&](const char* prefix) { return n.rfind(prefix, 0) == 0; };
  const ZooEntry* e = find_zoo(n);
  TrainingGoal g;  // ImageNet-1k, 90 epochs
  if (e && e->is_transformer) {
    if (starts("bert_")) {
      g.tokens = 1e6 * 256 * 512;
      g.what = "131B tokens: BERT's pre-training, 1M steps x 256 sequences x 512 tokens (Devlin et al. 2019, "
               "arXiv:1810.04805)";
    } else {
      g.tokens = 300e9;
      g.what = "300B tokens: the budget of every GPT-3 model (Brown et al. 2020, arXiv:2005.14165)";
    }
    return g;
  }
  const Shape& in = m.input_shape;
  const Shape out = m.layers.empty() ? Shape{} : m.layers.back().out_shape;
  const bool imagenet = e && in.size() == 3 && in[0] == 3 && in[1] >= 64 && out.size() == 1 && out[0] == 1000;
  const bool fashion = in.size() == 3 && in[0] == 1 && in[1] == 28 && in[2] == 28 && out.size() == 1 && out[0] == 10;
  if (imagenet && starts("alexnet")) {
    g.epochs = 95;
    g.what = "95 epochs of ImageNet-1k (1,281,167 images), AlexNet's in the 4-minute paper (Jia et al. 2018)";
  } else if (imagenet) {
    g.what = "90 epochs of ImageNet-1k (1,281,167 images), the standard ResNet schedule (Goyal et al. 2017)";
  } else if (fashion) {
    g.epochs = 6;
    g.dataset_size = 60000;
    g.what = "6 epochs of Fashion-MNIST (60,000 images), this project's convergence runs (scripts/convergence.sh)";
  } else {
    g.what = "90 epochs of 1,281,167 samples: ImageNet-1k's, assumed for " + n +
             " (no data set of its shape is known: give the training goal's epochs and data set size)";
  }
  return g;
}

}  // namespace fuseplan
