// Numbers in messages, the same in every library and the CLI.
#pragma once
#include <cstdint>
#include <string>

namespace fuseplan {

std::string grouped(int64_t v);                            // 25,557,032
std::string count_of(int64_t n, const std::string& noun);  // "1 GPU", "16 GPUs" (plural adds s)

}  // namespace fuseplan
