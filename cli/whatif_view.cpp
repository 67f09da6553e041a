// `fuseplan whatif`'s table, CSV and JSON.
#include "whatif_view.hpp"

#include <iostream>
#include <set>
#include <sstream>

#include "format.hpp"

namespace fuseplan::cli {

namespace {
const char* kCsvHeader =
    "model,cluster,gpus,nodes,inter_bw_Gbps,batch_per_gpu,precision,algorithm,strategy,buckets,iteration_ms,"
    "forward_ms,backward_ms,exposed_comm_ms,optimizer_ms,data_wait_ms,comm_busy_ms,scaling_efficiency,"
    "throughput_samples_s,time_to_train_s";

std::string csv_row(const WhatIfRow& r, const Cluster& c) {
  const auto& p = r.point;
  const auto& e = r.report;
  std::ostringstream os;
  os.precision(10);
  os << p.model << "," << c.name << "," << p.gpus << "," << nodes_of(c, p.gpus) << "," << p.inter_bw_Gbps << ","
     << p.batch_per_gpu << "," << precision_name(p.precision) << "," << p.algorithm << "," << strategy_name(p.strategy)
     << "," << r.buckets << "," << e.iteration_s * 1e3 << "," << e.forward_s * 1e3 << "," << e.backward_s * 1e3 << ","
     << e.exposed_comm_s * 1e3 << "," << e.optimizer_s * 1e3 << "," << e.data_wait_s * 1e3 << ","
     << e.comm_busy_s * 1e3 << "," << e.scaling_efficiency << "," << e.throughput_samples_s << ","
     << e.time_to_train_s;
  return os.str();
}

}  // namespace

int nodes_of(const Cluster& c, int gpus) { return (gpus + c.gpus_per_node - 1) / c.gpus_per_node; }

nlohmann::json row_json(const WhatIfRow& r, const Cluster& c) {
  const auto& p = r.point;
  return {{"model", p.model},
          {"cluster", c.name},
          {"gpus", p.gpus},
          {"nodes", nodes_of(c, p.gpus)},
          {"inter_bw_Gbps", p.inter_bw_Gbps},
          {"batch_per_gpu", p.batch_per_gpu},
          {"precision", precision_name(p.precision)},
          {"algorithm", p.algorithm},
          {"strategy", strategy_name(p.strategy)},
          {"buckets", r.buckets},
          {"report", report_to_json(r.report)}};
}

void emit(const std::string& text, const std::string& out) {
  if (out.empty()) std::cout << text;
  else write_file_atomic(out, text);
}

void warn(const std::vector<WhatIfRow>& rows) {
  std::set<std::string> said;
  for (const auto& r : rows)
    for (const auto& w : r.warnings)
      if (said.insert(w).second) std::cerr << "fuseplan: " << with_flags(w) << "\n";
}

void print_rows(const std::vector<WhatIfRow>& rows, const Cluster& c, const WhatIfOutput& f) {
  warn(rows);
  if (f.csv) {
    std::string text = std::string(kCsvHeader) + "\n";
    for (const auto& r : rows) text += csv_row(r, c) + "\n";
    emit(text, f.out);
  } else if (f.json) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& r : rows) a.push_back(row_json(r, c));
    emit(a.dump(2) + "\n", f.out);
  } else {
    Table t({"<model", "GPUs", "inter Gbps", "batch", "<prec", "<algorithm", "<strategy", "buckets", "iteration ms",
             "exposed ms", "efficiency", "samples/s", "time to train"});
    for (const auto& r : rows) {
      const auto& p = r.point;
      t.row({p.model, std::to_string(p.gpus), p.inter_bw_Gbps > 0 ? fixed(p.inter_bw_Gbps, 1) : "-",
             std::to_string(p.batch_per_gpu), std::string(precision_name(p.precision)), p.algorithm,
             strategy_name(p.strategy), std::to_string(r.buckets), ms(r.report.iteration_s),
             ms(r.report.exposed_comm_s), percent(r.report.scaling_efficiency),
             grouped(static_cast<int64_t>(r.report.throughput_samples_s)), human_duration(r.report.time_to_train_s)});
    }
    std::ostringstream os;
    if (!f.note.empty()) os << f.note << "\n";
    t.print(os, "  ");
    emit(os.str(), f.out);
  }
}

}  // namespace fuseplan::cli
