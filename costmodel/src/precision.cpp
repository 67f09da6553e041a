// Precision names.
#include "fuseplan/costmodel/precision.hpp"

#include "fuseplan/models/error.hpp"

namespace fuseplan {

std::string_view precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::FP16: return "fp16";
    case Precision::BF16: return "bf16";
  }
  return "fp32";
}

Precision parse_precision(std::string_view s, const std::string& flag) {
  if (s == "fp32") return Precision::FP32;
  if (s == "fp16") return Precision::FP16;
  if (s == "bf16") return Precision::BF16;
  throw InputError(flag + ": unknown precision '" + std::string(s) + "' (valid: fp32, fp16, bf16)");
}

}  // namespace fuseplan
