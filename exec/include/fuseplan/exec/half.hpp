// Half-precision storage emulated on the CPU: values are kept as float but rounded to
// the nearest FP16 or BF16 value (round to nearest even, FP16 overflow to infinity)
// exactly where a GPU would store them in half precision. Arithmetic stays FP32, as on
// tensor cores, which accumulate in FP32.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>

#include "fuseplan/costmodel/precision.hpp"

namespace fuseplan::exec {

// FP16 bits of `f`, round to nearest even; overflow gives infinity, NaN stays NaN.
inline uint16_t fp16_bits(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= (143u << 23)) return static_cast<uint16_t>(sign | (x > (255u << 23) ? 0x7e00u : 0x7c00u));  // >= 65536, inf, NaN
  if (x < (113u << 23)) {  // subnormal or zero in FP16: let the FPU round the shifted value
    const float magic = std::bit_cast<float>(126u << 23);  // 0.5: aligns bit 0 of the result with 2^-24
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(std::bit_cast<float>(x) + magic) - (126u << 23)));
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m x 2^-24
    float v = float(m) * std::bit_cast<float>(103u << 23);
    return std::bit_cast<float>(std::bit_cast<uint32_t>(v) | sign);
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

inline float round_fp16(float f) { return fp16_to_float(fp16_bits(f)); }

inline float round_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return f;  // NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return std::bit_cast<float>(x & 0xffff0000u);
}

// BF16 bits of `f` (round to nearest even) and back.
inline uint16_t bf16_bits(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(round_bf16(f)) >> 16); }
inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

inline float round_to(Precision p, float f) {
  switch (p) {
    case Precision::FP16: return round_fp16(f);
    case Precision::BF16: return round_bf16(f);
    default: return f;
  }
}

// Rounds n values in place to precision p (nothing for FP32): round_buffer across the
// CPU threads, round_span in the calling thread. FP16 uses the F16C instructions where
// the CPU has them (the same values as round_fp16).
void round_buffer(Precision p, float* x, size_t n);
void round_span(Precision p, float* x, size_t n);

// What the exchanges do with a 16-bit bucket (p FP16 or BF16), n values at a time in the
// calling thread: its FP32 values to 16-bit bits (fp16_bits, bf16_bits) and back
// (fp16_to_float, bf16_to_float), and the sum of two 16-bit vectors rounded after the
// addition, b[i] = bits(value(a[i]) + value(b[i])). FP16 uses the F16C instructions where
// the CPU has them: the same bits as the scalar functions, NaNs as the canonical quiet
// NaN with the value's sign.
void to_half_bits(Precision p, const float* x, uint16_t* out, size_t n);
void from_half_bits(Precision p, const uint16_t* h, float* out, size_t n);
void add_half_bits(Precision p, const uint16_t* a, uint16_t* b, size_t n);

}  // namespace fuseplan::exec
