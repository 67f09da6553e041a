// `fuseplan collective`: the table NVIDIA nccl-tests' all_reduce_perf would print
// (size, count, type, time, algbw, busbw), predicted by the cost model.
#include <cmath>
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.hpp"
#include "format.hpp"
#include "progress.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

namespace fuseplan::cli {

namespace {
// Every row of the sweep must move the size on: at most this many sizes between MIN and MAX.
constexpr int kMaxRows = 10000;

struct CollectiveFlags {
  std::string algorithm = "auto", cluster = "tencent-p40", sizes = "4K:256M", precision = "fp32", nccl_version;
  int gpus = 8, group = 0, torus_x = 0;
  double step = 2;
  bool json = false, simulate = false, quiet = false, nccl_table = false, nccl_constants = false;
};

// NCCL's tuning constants, one row each: name, value per release, source.
void print_nccl_constants(std::ostream& os) {
  std::vector<std::string> head{"<constant"};
  for (const auto& r : nccl_releases()) head.push_back(r);
  head.push_back("<source");
  Table t(head);
  for (const auto& row : nccl_constant_rows()) {
    std::vector<std::string> cells{row.name};
    for (double v : row.values) {
      std::ostringstream x;
      x << v;  // shortest form: 6.8, 14, 0.263158
      cells.push_back(x.str());
    }
    cells.push_back(row.source);
    t.row(cells);
  }
  os << "# NCCL tuning constants (allreduce), per release; override any in a cluster file's nccl.constants\n";
  t.print(os, "");
}

// NCCL's view of the job as NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=GRAPH,TUNING prints it: the
// channel graphs and the latency / bandwidth table of allreduce.
void print_nccl_table(const NcclContext& ctx, std::ostream& os) {
  const NcclSystem& s = ctx.system;
  os << "# NCCL " << s.release << " tuning model: " << s.ranks << " ranks on " << s.nodes << " node"
     << (s.nodes == 1 ? "" : "s") << ", sm" << s.compute_capability << ", " << (s.nvlink ? "NVLink" : "PCI")
     << " inside nodes, CPU " << s.cpu << (s.nvls ? ", NVLink SHARP" : "") << (s.collnet ? ", CollNet (SHARP)" : "")
     << "\n#\n";
  Table g({"<graph", "channels", "bw intra GB/s", "bw inter GB/s", "<pattern", "<from"});
  for (int a = 0; a < kNcclAlgos; ++a) {
    const NcclGraph& x = s.graphs[size_t(a)];
    if (x.channels == 0) continue;
    g.row({std::string(nccl_algo_name(NcclAlgo(a))), std::to_string(x.channels), fixed(x.bw_intra_GBps, 1),
           fixed(x.bw_inter_GBps, 1), NcclAlgo(a) == NcclAlgo::Tree ? (x.tree_pattern ? "tree" : "balanced tree") : "",
           x.origin});
  }
  g.print(os, "#  ");
  os << "#\n";
  Table t({"<allreduce", "LL lat us", "LL algbw", "LL128 lat us", "LL128 algbw", "Simple lat us", "Simple algbw"});
  for (int a = 0; a < kNcclAlgos; ++a) {
    std::vector<std::string> row{std::string(nccl_algo_name(NcclAlgo(a)))};
    for (int p = 0; p < kNcclProtos; ++p) {
      const bool on = ctx.tuning.enabled(NcclAlgo(a), NcclProto(p));
      row.push_back(on ? fixed(ctx.tuning.latency_us[size_t(a)][size_t(p)], 1) : "-");
      row.push_back(on ? fixed(ctx.tuning.bandwidth_GBps[size_t(a)][size_t(p)], 1) : "-");
    }
    t.row(row);
  }
  t.print(os, "#  ");
  os << "#  (algbw in GB/s; - = disabled here)\n#\n";
}

std::string algorithms_help() {
  std::string h = "allreduce algorithm: auto (cheapest per size) or one of:";
  for (const auto& a : algorithms()) h += "\n  " + std::string(a.name) + ": " + std::string(a.description);
  return h;
}
}  // namespace

void add_collective_command(CLI::App& app) {
  auto f = std::make_shared<CollectiveFlags>();
  auto* cmd = app.add_subcommand("collective", "Predict an allreduce sweep in the format of nccl-tests' all_reduce_perf");
  cmd->add_option("--algorithm", f->algorithm, algorithms_help())->capture_default_str();
  cmd->add_option("--gpus", f->gpus, "number of ranks")->capture_default_str();
  cmd->add_option("--cluster", f->cluster, "shipped cluster name or a .json path")->capture_default_str();
  cmd->add_option("--sizes", f->sizes, "MIN:MAX message bytes per rank, like nccl-tests -b/-e (K, M, G = 1024^n)")
      ->capture_default_str();
  cmd->add_option("--step-factor", f->step,
                  "multiply the size by this each row, like nccl-tests -f (> 1, at most " + std::to_string(kMaxRows) + " sizes)")
      ->capture_default_str();
  cmd->add_option("--precision", f->precision, "element type: fp32 (nccl-tests float) | fp16 | bf16")->capture_default_str();
  cmd->add_option("--group", f->group, "hierarchical group size in GPUs (default: GPUs per node)");
  cmd->add_option("--torus-x", f->torus_x, "torus2d row length in GPUs (default: square-ish grid)");
  cmd->add_flag("--simulate", f->simulate, "also replay each allreduce's schedule message by message in SimGrid "
                                           "(one rank per host; adds the sim time and sim/model columns)");
  add_nccl_version_option(cmd, f->nccl_version);
  cmd->add_flag("--nccl-table", f->nccl_table,
                "on an NCCL cluster, also print NCCL's channel graphs and latency/bandwidth table (as "
                "NCCL_DEBUG_SUBSYS=TUNING does)");
  cmd->add_flag("--nccl-constants", f->nccl_constants,
                "print NCCL's tuning constants (name, value per release, source) and exit");
  cmd->add_flag("--json", f->json, "print JSON rows instead of the table");
  cmd->add_flag("--quiet", f->quiet, "with --simulate: no progress on stderr");
  cmd->callback([f] {
    if (f->nccl_constants) return print_nccl_constants(out());
    Cluster c = load_cluster(f->cluster);
    Precision p = parse_precision(f->precision, "--precision");
    auto colon = f->sizes.find(':');
    std::string lo_s = f->sizes.substr(0, colon), hi_s = colon == std::string::npos ? lo_s : f->sizes.substr(colon + 1);
    int64_t lo = parse_bytes(lo_s, "--sizes"), hi = parse_bytes(hi_s, "--sizes");
    if (hi < lo) throw InputError("--sizes: MAX must be >= MIN");
    if (!(f->step > 1) || !std::isfinite(f->step))
      throw InputError("--step-factor: must be > 1 (got " + fixed(f->step, 3) + ")");
    if (std::log(double(hi) / double(lo)) / std::log(f->step) + 1 > double(kMaxRows))
      throw InputError("--step-factor: " + fixed(f->step, 6) + " makes more than " + std::to_string(kMaxRows) + " sizes from " +
                       lo_s + " to " + hi_s + " (a larger factor, or a narrower --sizes)");
    if (f->algorithm != "auto") find_algorithm(f->algorithm);
    CollectiveModel model(c, f->gpus, {f->group, f->torus_x, f->nccl_version});
    if (f->nccl_table && !model.nccl())
      throw InputError("--nccl-table: cluster " + c.name + " runs " + c.library + ", not NCCL");
    const int eb = bytes_per_element(p);
    const char* type = p == Precision::FP32 ? "float" : (p == Precision::FP16 ? "half" : "bfloat16");
    nlohmann::json rows = nlohmann::json::array();
    std::vector<std::string> head{"size", "count", "<type", "<redop", "time", "algbw", "busbw", "<algorithm"};
    if (f->simulate) head.insert(head.end(), {"sim time", "sim/model"});
    Table t(head);
    int64_t sizes = 0, simulated = 0;
    for (double size = double(lo); size <= double(hi) * (1 + 1e-9); size *= f->step) ++sizes;
    ProgressBar bar("sizes simulated", f->quiet || !f->simulate);
    for (double size = double(lo); size <= double(hi) * (1 + 1e-9); size *= f->step) {
      int64_t count = std::max<int64_t>(1, static_cast<int64_t>(size) / eb);
      int64_t bytes = count * eb;
      auto ch = model.cost(f->algorithm, count, p);
      double s = ch.total_s();
      double alg = algbw_GBps(double(bytes), s), bus = busbw_GBps(double(bytes), s, f->gpus);
      const std::string variant = CollectiveModel::variant_name(ch);
      std::vector<std::string> cells{std::to_string(bytes), std::to_string(count), type, "sum", fixed(s * 1e6, 2),
                                     fixed(alg, 2), fixed(bus, 2),
                                     std::string(ch.algorithm->name) + (variant.empty() ? "" : " " + variant) +
                                         (ch.calibrated ? " (calibrated)" : "")};
      nlohmann::json row{{"size_bytes", bytes}, {"count", count}, {"type", type}, {"time_us", s * 1e6}, {"algbw_GBps", alg},
                         {"busbw_GBps", bus}, {"algorithm", ch.algorithm->name}, {"variant", variant},
                         {"latency_us", ch.cost.latency_s * 1e6},
                         {"bandwidth_us", ch.cost.bandwidth_s * 1e6}, {"reduce_us", ch.cost.reduce_s * 1e6},
                         {"launch_us", ch.launch_s * 1e6}, {"rounds", ch.cost.rounds}};
      if (f->simulate) {
        // The simulator replays the messages; the launch overhead is added as in the model.
        auto sim = sim::simulate_allreduce(c, f->gpus, std::string(ch.algorithm->name), count, p,
                                           {f->group, f->torus_x, f->nccl_version});
        double st = sim.simulated_s + ch.launch_s;
        cells.push_back(fixed(st * 1e6, 2));
        cells.push_back(fixed(st / s, 3));
        row["sim_time_us"] = st * 1e6;
        row["sim_over_model"] = st / s;
        bar(++simulated, sizes);
      }
      t.row(cells);
      rows.push_back(row);
    }
    if (f->json) {
      out() << nlohmann::json{{"cluster", c.name}, {"gpus", f->gpus}, {"algorithm", f->algorithm}, {"rows", rows}}.dump(2)
                << "\n";
      return;
    }
    int nodes = (f->gpus + c.gpus_per_node - 1) / c.gpus_per_node;
    out() << "# fuseplan collective: allreduce, " << f->gpus << " ranks on " << c.name << " (" << nodes
              << " node" << (nodes == 1 ? "" : "s") << "), algorithm " << f->algorithm << ", predicted\n"
              << "# time in us, algbw = bytes / time, busbw = algbw * 2(n-1)/n (nccl-tests definitions)\n#\n";
    if (f->nccl_table) print_nccl_table(*model.nccl(), out());
    t.print(out(), "  ");
  });
}

}  // namespace fuseplan::cli
