// One comparison of modelled Reports (predicted, simulated) with a measured one, used by
// `fuseplan verify`, `fuseplan-exec run --verify` and calibrate's overlap fit: signed
// relative errors, (model - measured) / measured, and the rows of the verify table.
#pragma once
#include <cmath>
#include <string>
#include <vector>

#include "fuseplan/costmodel/report.hpp"

namespace fuseplan {

// NaN when the measurement is zero (nothing to be relative to).
inline double relative_error(double model, double measured) {
  return std::abs(measured) > 1e-12 ? (model - measured) / measured : NAN;
}

// The phases a model must get right, as signed relative errors against a measurement.
struct ReportErrors {
  double iteration = 0, forward = 0, backward = 0, exposed_comm = 0, comm_end = 0, optimizer = 0;
};
ReportErrors report_errors(const Report& model, const Report& measured);

// The verify table: iteration, phases, the last allreduce end and every bucket's start
// and end, in seconds (simulated NaN when there is no simulation). The reports must
// describe the same plan (same bucket count): InputError otherwise.
struct ComparisonRow {
  std::string metric;
  double predicted_s = NAN, simulated_s = NAN, measured_s = NAN;
};
std::vector<ComparisonRow> compare_reports(const Report& predicted, const Report* simulated, const Report& measured);

}  // namespace fuseplan
