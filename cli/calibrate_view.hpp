// What `fuseplan calibrate` prints: the machine it discovered, the communication fits,
// the overlap fit and the compute fit per layer class.
#pragma once
#include <ostream>
#include <string>
#include <vector>

#include "fuseplan/costmodel/calibrate.hpp"
#include "fuseplan/exec/discover.hpp"

namespace fuseplan::cli {

// 4K, 256M, 1G, or the bytes when not a whole number of KiB.
std::string bytes_label(double b);
void print_machine(std::ostream& os, const exec::MachineInfo& m);
// The fits per algorithm and size range; returns the degenerate ranges, one line each.
std::vector<std::string> print_comm_fits(std::ostream& os, const std::vector<CommCalibration>& fits, bool holdout);
// Where a sweep carries NCCL's own estimates (`fuseplan-exec sweep --comm nccl`), per size:
// the measured time, fuseplan's prediction with the cluster as `given` (before this fit)
// and with the fit, and NCCL's estimate, each with its error; `fits` are the sweeps' own.
void print_nccl_estimates(std::ostream& os, const Cluster& given, const std::vector<Sweep>& sweeps,
                          const std::vector<CommCalibration>& fits);
void print_overlap_fit(std::ostream& os, const OverlapFit& fit, const std::vector<OverlapRun>& runs,
                       const std::vector<std::string>& plans, OverlapTargets fitted, const std::string& profile);
void print_compute_fits(std::ostream& os, const std::vector<ClassFit>& fits, const std::string& precision);
// calibrate --throughput: per measurement its model, batch, precision, the measured rate,
// the rate predicted with the cluster as given and as fitted, and the value fitted.
void print_throughput_fits(std::ostream& os, const std::vector<ThroughputMeasurement>& ms, const ThroughputFit& fit);
// calibrate --throughput's scaling measurements: per plan its model and GPUs, the measured
// scaling efficiency, the one predicted with the cluster as given and as fitted, and the
// compute_variation and step overhead fitted.
void print_scaling_fit(std::ostream& os, const std::vector<ScalingMeasurement>& ms, const ScalingFit& fit);

}  // namespace fuseplan::cli
