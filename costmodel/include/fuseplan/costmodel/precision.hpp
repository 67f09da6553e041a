// Numeric precisions of compute and of gradient transfer.
#pragma once
#include <string>
#include <string_view>

namespace fuseplan {

enum class Precision { FP32, FP16, BF16 };

std::string_view precision_name(Precision p);
// Throws InputError naming `flag` and the valid choices.
Precision parse_precision(std::string_view s, const std::string& flag);
inline int bytes_per_element(Precision p) { return p == Precision::FP32 ? 4 : 2; }

}  // namespace fuseplan
