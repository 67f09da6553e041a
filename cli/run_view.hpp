// What `fuseplan-exec run` prints and hands to `fuseplan verify`: the measurement's
// tables, and the files --verify reads.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "fuseplan/exec/measure.hpp"

namespace fuseplan::cli {

// The measured steps, phases, rank imbalance and buckets (times in ms).
void print_measurement(std::ostream& os, const exec::Measurement& m, int warmup, int ranks);

// What rank 0 keeps for --verify, which runs `fuseplan verify` after MPI is finalized
// (SimGrid, which the verify table simulates with, exports MPI symbols of its own, so
// fuseplan-exec does not link it): the files it reads, temporary unless asked for.
struct ForVerify {
  std::string report_path, profile_path;
  std::vector<std::string> temporary;
};

// A new empty file under the temporary directory, named after `what`.
std::string temporary_file(const std::string& what);

// `fuseplan verify` beside this binary on a run's plan, report and profile (and
// `cluster` unless empty); its exit code.
int run_verify(const std::string& plan_path, const std::string& cluster, const ForVerify& v);

}  // namespace fuseplan::cli
