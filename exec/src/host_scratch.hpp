// Host memory for the CPU backend: 64-byte-aligned float buffers, and a grow-only
// scratch buffer reused across layers (layers run one at a time).
#pragma once
#include <algorithm>
#include <cstdlib>
#include <string>

#include "fuseplan/models/error.hpp"

namespace fuseplan::exec {

// n floats, 64-byte aligned. (Transparent huge pages were tried for the large buffers:
// 8x fewer first-touch faults but more system time, the kernel compacting memory for
// them; not used.)
inline float* host_alloc(size_t n) {
  void* p = std::aligned_alloc(64, std::max<size_t>(64, (n * sizeof(float) + 63) / 64 * 64));
  if (!p) throw RunError("cpu backend: out of memory allocating " + std::to_string(n) + " floats");
  return static_cast<float*>(p);
}

// Grow-only scratch: unlike std::vector::resize, growing does not zero-fill (every
// user overwrites what it reads), and layers of different sizes never shrink it.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(data_); }
  float* get(size_t n) {
    if (n > size_) {
      std::free(data_);
      data_ = nullptr;  // a failed allocation leaves it empty, not dangling
      size_ = 0;
      data_ = host_alloc(n);
      size_ = n;
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace fuseplan::exec
