// The model zoo: torchvision CNNs and Hugging Face transformers built by code.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "fuseplan/models/model.hpp"

namespace fuseplan {

struct ModelOptions {
  std::optional<int> resolution;   // CNN input height = width
  std::optional<int> channels;     // CNN input channels
  std::optional<int> classes;      // CNN classifier outputs
  std::optional<int> seq_len;      // transformer sequence length
  // How every attention layer runs; unset: as built (the zoo's are fused) or as the model
  // file says. A model without attention layers refuses it.
  std::optional<AttentionKernels> attention;
};
// --attention's and plans' names: "eager", "fused-softmax", "fused"; InputError naming
// `where` for anything else.
AttentionKernels parse_attention(const std::string& name, const std::string& where);
const char* attention_name(AttentionKernels k);

struct ZooEntry {
  std::string name;
  std::string description;
  bool is_transformer = false;
  int default_resolution = 224;  // or default sequence length for transformers
  int default_batch_per_gpu = 32;
  Model (*build)(const ModelOptions&);
};

const std::vector<ZooEntry>& zoo();
const ZooEntry* find_zoo(const std::string& name);
std::string zoo_names();  // comma-separated, for error messages
// Builds a zoo model; unknown names and options that do not apply throw InputError.
Model build_zoo_model(const std::string& name, const ModelOptions& opt = {});
// The ranges build_zoo_model holds the options to, [1, max] (InputError naming the
// field): past any trained model's, so that no tensor or table grows without limit.
inline constexpr int kMaxResolution = 8192, kMaxChannels = 4096, kMaxClasses = 1 << 20, kMaxSeqLen = 1 << 17;
void check_model_options(const ModelOptions& opt);

// A zoo name, or a path to a model JSON file (anything with '/' or ending in .json).
Model load_model(const std::string& name_or_path, const ModelOptions& opt = {});
int default_batch_per_gpu(const std::string& name_or_path);

// The largest global batch a zoo model's literature reports at baseline accuracy, with
// its source; none for models without one (VGG-16, model files). For GPT-2 the limit is
// in tokens, so sequences = tokens / the model's sequence length.
struct PublishedBatch {
  int64_t samples = 0;
  std::string source;
};
std::optional<PublishedBatch> published_batch_limit(const Model& m);

// What "trained" means, for time to train: epochs over a data set (image models) or a
// token budget (language models). The default is ImageNet-1k's 90 epochs.
struct TrainingGoal {
  double epochs = 90;
  int64_t dataset_size = 1281167;  // samples per epoch (ImageNet-1k's training set)
  double tokens = 0;               // > 0: train on this many tokens instead of epochs
  std::string what;                // named in reports: "90 epochs of ImageNet-1k (1,281,167 images)"
  // Samples (sequences, for a token budget) the goal trains on; `seq_len` turns tokens
  // into sequences.
  double samples(int seq_len) const { return tokens > 0 ? tokens / double(seq_len) : epochs * double(dataset_size); }
};
// The goal of the model's family in its literature, with the source in `what`:
// ResNets, VGG and other ImageNet-shaped CNNs 90 epochs of ImageNet-1k; AlexNet 95
// (the 4-minute paper); a 28x28 single-channel 10-class CNN Fashion-MNIST's 60,000
// images x 6 epochs (this project's convergence runs); BERT its pre-training's 1M steps
// x 256 x 512 tokens; GPT-2 300B tokens (GPT-3's budget). Anything else: ImageNet-1k's
// 90 epochs, named as assumed.
TrainingGoal training_goal(const Model& m);
// A goal's values within what a training run can be (epochs in (0, 1e6], a data set of 1 to
// 1e15 samples, a token budget up to 1e18) and, for `global_batch` samples per iteration,
// at most 1e18 iterations of an epoch goal: InputError naming goal.epochs,
// goal.dataset_size or goal.tokens.
void check_goal(const TrainingGoal& g, double global_batch);
// "90 epochs x 1,281,167 samples": a goal in epochs, as reports name it.
std::string epochs_goal(double epochs, int64_t samples);
// The model's sequence length (transformers), else 0.
int sequence_length(const Model& m);

}  // namespace fuseplan
