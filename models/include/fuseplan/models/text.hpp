// Numbers in messages, the same in every library and the CLI.
#pragma once
#include <cstdint>
#include <string>

namespace fuseplan {

std::string grouped(int64_t v);                            // 25,557,032
std::string count_of(int64_t n, const std::string& noun);  // "1 GPU", "16 GPUs" (plural adds s)
std::string formatted(double v, const char* printf_format);  // formatted(0.25, "%.3f") = "0.250"
// Whether a `--model` or `--cluster` value names a file (it has a '/' or ends in .json)
// rather than a zoo model or a shipped cluster.
bool names_a_file(const std::string& name_or_path);

}  // namespace fuseplan
