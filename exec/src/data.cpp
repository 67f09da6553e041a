#include "fuseplan/exec/data.hpp"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

namespace {

std::vector<uint8_t> read_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f)
    throw InputError(path + ": cannot open (install the Debian package dataset-fashion-mnist, or pass " + field("train.data_dir") + ")");
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  const bool failed = n < 0;
  gzclose(f);
  if (failed) throw InputError(path + ": corrupt gzip data");
  return out;
}

uint32_t be32(const std::vector<uint8_t>& b, size_t at) {
  return uint32_t(b[at]) << 24 | uint32_t(b[at + 1]) << 16 | uint32_t(b[at + 2]) << 8 | uint32_t(b[at + 3]);
}

// SplitMix64: a per-sample random stream from (seed, epoch, index), independent of order.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

Dataset load_fashion_mnist(const std::string& dir, const std::string& split) {
  if (split != "train" && split != "test") throw InputError("fashion-mnist: unknown split '" + split + "'");
  const std::string prefix = dir + "/" + (split == "train" ? "train" : "t10k");
  const std::string ipath = prefix + "-images-idx3-ubyte.gz", lpath = prefix + "-labels-idx1-ubyte.gz";
  auto images = read_gz(ipath), labels = read_gz(lpath);
  if (images.size() < 16 || be32(images, 0) != 0x803) throw InputError(ipath + ": not an IDX image file");
  if (labels.size() < 8 || be32(labels, 0) != 0x801) throw InputError(lpath + ": not an IDX label file");
  const uint32_t n = be32(images, 4), h = be32(images, 8), w = be32(images, 12);
  if (be32(labels, 4) != n || images.size() != 16 + size_t(n) * h * w || labels.size() != 8 + size_t(n))
    throw InputError(ipath + ": image and label counts or sizes disagree");
  Dataset d;
  d.name = "fashion-mnist";
  d.channels = 1;
  d.height = int(h);
  d.width = int(w);
  d.classes = 10;
  d.pixels.assign(images.begin() + 16, images.end());
  d.labels.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    d.labels[i] = labels[8 + i];
    if (d.labels[i] > 9) throw InputError(lpath + ": label " + std::to_string(d.labels[i]) + " out of range");
  }
  d.mean = 0.2860f;  // of the training images / 255
  d.std = 0.3530f;
  return d;
}

Dataset make_synthetic(int64_t n, int channels, int h, int w, int classes, uint64_t seed) {
  if (n < 1 || channels < 1 || h < 1 || w < 1 || classes < 2) throw InputError("synthetic data: bad shape");
  Dataset d;
  d.name = "synthetic";
  d.channels = channels;
  d.height = h;
  d.width = w;
  d.classes = classes;
  const int64_t e = d.sample_elems();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> pix(0, 255), cls(0, classes - 1);
  std::normal_distribution<float> noise(0.0f, 40.0f);
  std::vector<uint8_t> proto(size_t(classes * e));
  for (auto& p : proto) p = uint8_t(pix(rng));
  d.pixels.resize(size_t(n * e));
  d.labels.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) {
    const int c = cls(rng);
    d.labels[size_t(i)] = c;
    for (int64_t j = 0; j < e; ++j)
      d.pixels[size_t(i * e + j)] = uint8_t(std::clamp(float(proto[size_t(c * e + j)]) + noise(rng), 0.0f, 255.0f));
  }
  return d;
}

std::pair<Dataset, Dataset> split(const Dataset& d, int64_t n) {
  if (n < 1 || n >= d.size()) throw InputError("data set split: bad size");
  Dataset a = d, b = d;
  const int64_t e = d.sample_elems();
  a.pixels.assign(d.pixels.begin(), d.pixels.begin() + n * e);
  a.labels.assign(d.labels.begin(), d.labels.begin() + n);
  b.pixels.assign(d.pixels.begin() + n * e, d.pixels.end());
  b.labels.assign(d.labels.begin() + n, d.labels.end());
  return {std::move(a), std::move(b)};
}

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;
  if (shuffle) {
    std::mt19937_64 rng(mix(seed ^ mix(uint64_t(epoch))));
    for (int64_t i = n - 1; i > 0; --i) {  // Fisher-Yates with our own draws: the same on every libstdc++
      const int64_t j = int64_t(rng() % uint64_t(i + 1));
      std::swap(order[size_t(i)], order[size_t(j)]);
    }
  }
  return order;
}

void resize_bilinear(const float* in, int c, int h, int w, float* out, int oh, int ow) {
  const float sy = float(h) / float(oh), sx = float(w) / float(ow);
  for (int ch = 0; ch < c; ++ch) {
    const float* p = in + int64_t(ch) * h * w;
    for (int y = 0; y < oh; ++y) {
      const float fy = std::max(0.0f, (float(y) + 0.5f) * sy - 0.5f);
      const int y0 = std::min(int(fy), h - 1), y1 = std::min(y0 + 1, h - 1);
      const float wy = fy - float(y0);
      for (int x = 0; x < ow; ++x) {
        const float fx = std::max(0.0f, (float(x) + 0.5f) * sx - 0.5f);
        const int x0 = std::min(int(fx), w - 1), x1 = std::min(x0 + 1, w - 1);
        const float wx = fx - float(x0);
        out[(int64_t(ch) * oh + y) * ow + x] = (1 - wy) * ((1 - wx) * p[y0 * w + x0] + wx * p[y0 * w + x1]) +
                                               wy * ((1 - wx) * p[y1 * w + x0] + wx * p[y1 * w + x1]);
      }
    }
  }
}

void fill_plain(const Dataset& d, int64_t first, int64_t count, float* out, int32_t* labels, int height, int width) {
  const int64_t e = d.sample_elems();
  const int oh = height > 0 ? height : d.height, ow = width > 0 ? width : d.width;
  const bool resize = oh != d.height || ow != d.width;
  const int64_t oe = int64_t(d.channels) * oh * ow;
  const float scale = 1.0f / (255.0f * d.std), shift = d.mean / d.std;
  std::vector<float> plain(size_t(resize ? e : 0));
  for (int64_t i = 0; i < count; ++i) {
    const uint8_t* src = d.pixels.data() + (first + i) * e;
    float* dst = resize ? plain.data() : out + i * oe;
    for (int64_t j = 0; j < e; ++j) dst[j] = float(src[j]) * scale - shift;
    if (resize) resize_bilinear(plain.data(), d.channels, d.height, d.width, out + i * oe, oh, ow);
    labels[i] = d.labels[size_t(first + i)];
  }
}

Loader::Loader(const Dataset& data, const LoaderOptions& opt, int64_t epoch, int64_t position)
    : data_(data), opt_(opt) {
  if (opt.ranks < 1 || opt.rank < 0 || opt.rank >= opt.ranks)
    throw InputError("loader: rank " + std::to_string(opt.rank) + " of " + std::to_string(opt.ranks));
  if (opt.batch < 1 || opt.global_batch() > data.size())
    throw InputError(field("batch_per_gpu") + ": " + std::to_string(opt.batch) + (opt.ranks > 1 ? " x " + std::to_string(opt.ranks) + " ranks" : "") +
                     " must be between 1 and the data set size " + std::to_string(data.size()));
  thread_ = std::thread([this, epoch, position] { run(epoch, position); });
}

Loader::~Loader() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Batch Loader::next() {
  auto t0 = std::chrono::steady_clock::now();
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [this] { return !queue_.empty(); });
  Batch b = std::move(queue_.front());
  queue_.pop_front();
  cv_.notify_all();
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return b;
}

void Loader::run(int64_t epoch, int64_t position) {
  const int64_t global = opt_.global_batch(), per_epoch = batches_per_epoch() * global;
  for (;; ++epoch, position = 0) {
    const auto order = epoch_order(data_.size(), opt_.seed, epoch, opt_.shuffle);
    for (; position + global <= per_epoch; position += global) {
      Batch b = make(epoch, position, order);
      std::unique_lock lock(mutex_);
      cv_.wait(lock, [this] { return stop_ || int(queue_.size()) < opt_.prefetch; });
      if (stop_) return;
      queue_.push_back(std::move(b));
      cv_.notify_all();
    }
  }
}

Batch Loader::make(int64_t epoch, int64_t position, const std::vector<int64_t>& order) const {
  const int c = data_.channels, h = data_.height, w = data_.width;
  const int64_t e = data_.sample_elems();
  const int oh = opt_.height > 0 ? opt_.height : h, ow = opt_.width > 0 ? opt_.width : w;
  const bool resize = oh != h || ow != w;
  const int64_t oe = int64_t(c) * oh * ow;
  std::vector<float> plain(size_t(resize ? e : 0));
  Batch b;
  b.epoch = epoch;
  b.position = position;
  b.input.resize(size_t(opt_.batch * oe));
  b.labels.resize(size_t(opt_.batch));
  const float scale = 1.0f / (255.0f * data_.std), shift = data_.mean / data_.std;
  for (int i = 0; i < opt_.batch; ++i) {
    const int64_t idx = order[size_t(position + int64_t(opt_.rank) * opt_.batch + i)];
    const uint8_t* src = data_.pixels.data() + idx * e;
    float* dst = resize ? plain.data() : b.input.data() + i * oe;
    b.labels[size_t(i)] = data_.labels[size_t(idx)];
    int dy = 0, dx = 0;
    bool flip = false;
    if (opt_.augment) {
      const uint64_t r = mix(opt_.seed ^ mix(uint64_t(epoch) * 0x100000001b3ull + uint64_t(idx)));
      dy = int(r % 5) - 2;
      dx = int((r >> 8) % 5) - 2;
      flip = (r >> 16) & 1;
    }
    for (int ch = 0; ch < c; ++ch)
      for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
          const int sy = y + dy, sx0 = flip ? w - 1 - x : x, sx = sx0 + dx;
          const bool inside = sy >= 0 && sy < h && sx >= 0 && sx < w;
          // Padding is black (pixel 0), normalised like any pixel.
          const float v = inside ? float(src[(ch * h + sy) * w + sx]) : 0.0f;
          dst[(ch * h + y) * w + x] = v * scale - shift;
        }
    if (resize) resize_bilinear(plain.data(), c, h, w, b.input.data() + i * oe, oh, ow);
  }
  return b;
}

}  // namespace fuseplan::exec
