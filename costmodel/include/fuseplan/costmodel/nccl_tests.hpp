// NVIDIA nccl-tests all_reduce_perf output (the text table or -J JSON) as a measurement:
// the out-of-place time per size, the rank layout from the "#  Rank" lines (host names
// give the ranks per node), the NCCL release the log printed, NCCL's own choices where
// NCCL_DEBUG_SUBSYS=TUNING printed them, and the "# key: value" header the project's
// shipped logs carry (source, hardware, layout, cluster).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

struct NcclTestsChoice {
  double bytes = 0;
  std::string algo, proto;  // as NCCL printed them, lower case: "ring", "nvls_tree", "ll128", "simple"
};

struct NcclTestsLog {
  std::string path;
  int elem_bytes = 4;
  std::vector<std::pair<double, double>> points;  // bytes, out-of-place seconds, in file order
  int ranks = 0;                // from the "#  Rank" lines or -J devices; 0 = not printed
  int per_node = 0;             // ranks per host when every host has the same count; 0 = unknown
  std::vector<std::string> hosts;  // distinct host names, in rank order
  std::string nccl_version;     // "2.26.2" when the log says; "" otherwise
  std::vector<NcclTestsChoice> choices;
  std::map<std::string, std::string> header;  // "# key: value" lines before the table
};

// Reads a log. Rows are the lines whose first field is a size: each must have the
// columns of all_reduce_perf (size count type redop [root] time algbw busbw #wrong ...);
// a row that does not is refused with its line number. MPI output prefixes
// ("[1,0]<stdout>:") are stripped; other lines (NCCL INFO, warnings) are skipped. A
// "# layout: N nodes x G ranks" header line stands in for missing "#  Rank" lines.
// Throws InputError naming `flag`, the file and the line.
NcclTestsLog read_nccl_tests(const std::string& path, const std::string& flag = field("nccl_tests"));

}  // namespace fuseplan
