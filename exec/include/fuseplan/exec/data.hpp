// Training data: Fashion-MNIST from Debian's dataset-fashion-mnist package (gzipped IDX
// files) or a seeded synthetic set with learnable labels, and a loader thread with a
// bounded prefetch queue that prepares batches (normalise, augment) while the trainer
// computes. Sample order and augmentation depend only on (seed, epoch, position), so a
// resumed run sees exactly the batches an uninterrupted one would.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace fuseplan::exec {

struct Dataset {
  std::string name;
  int channels = 1, height = 28, width = 28, classes = 10;
  std::vector<uint8_t> pixels;  // [n, c, h, w], raw 0..255
  std::vector<int32_t> labels;  // [n]
  float mean = 0.5f, std = 0.5f;  // normalisation of pixel / 255
  int64_t size() const { return static_cast<int64_t>(labels.size()); }
  int64_t sample_elems() const { return int64_t(channels) * height * width; }
};

inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// split: "train" (60,000) or "test" (10,000). InputError naming the file if it is
// missing or malformed (install the Debian package dataset-fashion-mnist).
Dataset load_fashion_mnist(const std::string& dir, const std::string& split);
// `n` images of size channels x h x w in `classes` classes: each class has a random
// prototype image and samples are prototype + noise, so labels are learnable.
Dataset make_synthetic(int64_t n, int channels, int h, int w, int classes, uint64_t seed);

// The first `n` samples and the rest, as two data sets.
std::pair<Dataset, Dataset> split(const Dataset& d, int64_t n);

struct Batch {
  int64_t epoch = 0, position = 0;  // position of the batch's first sample in the epoch
  std::vector<float> input;         // [batch, c, h, w], normalised (and augmented)
  std::vector<int32_t> labels;
};

struct LoaderOptions {
  int batch = 32;
  uint64_t seed = 1;
  bool shuffle = true, augment = false;  // augment: random crop (pad 2) and horizontal flip
  int prefetch = 4;                       // batches prepared ahead
  int height = 0, width = 0;              // resize to this (bilinear) when the model wants it; 0 = as stored
  // Data parallelism: a global batch is `ranks` x `batch` consecutive samples of the
  // epoch order; this loader yields the `rank`-th slice of each.
  int rank = 0, ranks = 1;
  int64_t global_batch() const { return int64_t(batch) * ranks; }
};

// Produces the batches of epochs [epoch, ...) from `position` (the first sample of a
// global batch in the epoch order) on, in a background thread; a partial last batch of an epoch is dropped (its samples come first in the
// next epoch's shuffle with another order).
class Loader {
 public:
  Loader(const Dataset& data, const LoaderOptions& opt, int64_t epoch, int64_t position);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;
  Batch next();                 // blocks while the queue is empty
  double wait_s() const { return wait_s_; }  // time next() spent blocked, in total
  int64_t batches_per_epoch() const { return data_.size() / opt_.global_batch(); }

 private:
  void run(int64_t epoch, int64_t position);
  Batch make(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const;

  const Dataset& data_;
  LoaderOptions opt_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Batch> queue_;
  bool stop_ = false;
  double wait_s_ = 0;
  std::thread thread_;
};

// The sample order of an epoch: a seeded permutation (identity without shuffle).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);
// Normalised samples [first, first + count) in dataset order, no augmentation
// (evaluation), resized to height x width if those are given (0 = as stored).
void fill_plain(const Dataset& d, int64_t first, int64_t count, float* out, int32_t* labels, int height = 0,
                int width = 0);
// Bilinear resize of c planes h x w to oh x ow (PyTorch's interpolate, align_corners=False).
void resize_bilinear(const float* in, int c, int h, int w, float* out, int oh, int ow);

}  // namespace fuseplan::exec
