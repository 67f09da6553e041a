// Predicted and simulated Reports against a measured one.
#include "fuseplan/costmodel/compare.hpp"

#include "fuseplan/models/error.hpp"

namespace fuseplan {

ReportErrors report_errors(const Report& m, const Report& x) {
  return {relative_error(m.iteration_s, x.iteration_s), relative_error(m.forward_s, x.forward_s),
          relative_error(m.backward_s, x.backward_s),   relative_error(m.exposed_comm_s, x.exposed_comm_s),
          relative_error(m.comm_end_s, x.comm_end_s),   relative_error(m.optimizer_s, x.optimizer_s)};
}

std::vector<ComparisonRow> compare_reports(const Report& p, const Report* s, const Report& m) {
  if (p.buckets.size() != m.buckets.size() || (s && s->buckets.size() != m.buckets.size()))
    throw InputError("verify: the reports describe different plans (" + std::to_string(p.buckets.size()) + " vs " +
                     std::to_string(m.buckets.size()) + " buckets)");
  auto row = [&](std::string name, double Report::*field) {
    return ComparisonRow{std::move(name), p.*field, s ? s->*field : NAN, m.*field};
  };
  std::vector<ComparisonRow> rows = {row("iteration", &Report::iteration_s),
                                     row("forward", &Report::forward_s),
                                     row("backward", &Report::backward_s),
                                     row("exposed communication", &Report::exposed_comm_s)};
  // Part of the exposed time, where either side has copies back (a plan packed on compute).
  if (p.copy_back_s > 0 || m.copy_back_s > 0) rows.push_back(row("of which copies back", &Report::copy_back_s));
  rows.push_back(row("last allreduce end", &Report::comm_end_s));
  rows.push_back(row("optimizer", &Report::optimizer_s));
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    const std::string name = "bucket " + std::to_string(b);
    rows.push_back({name + " start", p.buckets[b].start_s, s ? s->buckets[b].start_s : NAN, m.buckets[b].start_s});
    rows.push_back({name + " end", p.buckets[b].end_s, s ? s->buckets[b].end_s : NAN, m.buckets[b].end_s});
  }
  return rows;
}

}  // namespace fuseplan
