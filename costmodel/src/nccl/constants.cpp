// NCCL's tuning constants for allreduce, one row per constant with a column per release
// and its source (STYLE: NCCL's tuning.cc tables, with provenance). The formulas that use
// them are in tuning.cpp and graph.cpp. A cluster file may override any scalar row by
// name (`nccl.constants`).
//
// Releases:
//   2.20  NVIDIA/nccl v2.20.3, src/graph/tuning.cc (commit b6475625), src/graph/topo.h,
//         src/graph/search.cc; the model of NCCL 2.19-2.22.
//   2.23  src/graph/tuning.cc as of NCCL 2.23-2.27 (the version with PAT and the
//         Blackwell rows; read from copies of 2.2x sources, the allreduce path is the same
//         across them); the project's anchors list the same latencies for 2.30. Default.
#include <cmath>
#include <stdexcept>

#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {

constexpr const char* kTuning = "tuning.cc";
constexpr const char* kTopo = "topo.h";
constexpr const char* kSearch = "search.cc";

std::vector<NcclConstantRow> build_rows() {
  std::vector<NcclConstantRow> r;
  auto row = [&](std::string name, double v220, double v223, std::string source) {
    r.push_back({std::move(name), {v220, v223}, std::move(source)});
  };
  // baseLat[algo][proto] (us): the kernel's fixed cost per collective.
  row("base_lat_us.tree.LL", 6.8, 6.8, std::string(kTuning) + " baseLat Tree LL");
  row("base_lat_us.tree.LL128", 14.0, 14.0, std::string(kTuning) + " baseLat Tree LL128");
  row("base_lat_us.tree.Simple", 0, 8.4, std::string(kTuning) + " baseLat Tree Simple (0 until 2.22)");
  row("base_lat_us.ring.LL", 6.6, 6.6, std::string(kTuning) + " baseLat Ring LL");
  row("base_lat_us.ring.LL128", 14.0, 14.0, std::string(kTuning) + " baseLat Ring LL128");
  row("base_lat_us.ring.Simple", 8.4, 8.4, std::string(kTuning) + " baseLat Ring Simple");
  for (const char* a : {"collnet_direct", "collnet_chain", "nvls", "nvls_tree"})
    row(std::string("base_lat_us.") + a + ".Simple", 0, 0, std::string(kTuning) + " baseLat " + a + " (0)");
  // hwLat[link][algo][proto] (us): per step (ring) or per hop (tree) on NVLink, PCI, network.
  const char* links[] = {"nvlink", "pci", "net"};
  const double tree220[3][3] = {{.6, 1.25, 28}, {1.0, 1.9, 28}, {5.0, 8.5, 28}};
  const double tree223[3][3] = {{.6, 1.25, 4.0}, {1.0, 1.9, 4.0}, {5.0, 8.5, 14}};
  const double ring[3][3] = {{.6, 1.9, 3.4}, {1.0, 2.5, 5.7}, {2.7, 4.0, 14.0}};
  const char* protos[] = {"LL", "LL128", "Simple"};
  for (int l = 0; l < 3; ++l)
    for (int p = 0; p < 3; ++p) {
      row(std::string("hw_lat_us.") + links[l] + ".tree." + protos[p], tree220[l][p], tree223[l][p],
          std::string(kTuning) + " hwLat " + links[l] + " Tree " + protos[p]);
      row(std::string("hw_lat_us.") + links[l] + ".ring." + protos[p], ring[l][p], ring[l][p],
          std::string(kTuning) + " hwLat " + links[l] + " Ring " + protos[p]);
    }
  // CollNet, NVLS and NVLS Tree run Simple only.
  const double cd[3] = {3.7, 3.7, 31}, cc[3] = {2.8, 2.8, 30}, nvls220[3] = {23, 0, 18}, nvls223[3] = {25, 0, 18},
               nt220[3] = {23, 0, 14}, nt223[3] = {25, 0, 14};
  for (int l = 0; l < 3; ++l) {
    row(std::string("hw_lat_us.") + links[l] + ".collnet_direct.Simple", cd[l], cd[l],
        std::string(kTuning) + " hwLat " + links[l] + " CollNetDirect Simple");
    row(std::string("hw_lat_us.") + links[l] + ".collnet_chain.Simple", cc[l], cc[l],
        std::string(kTuning) + " hwLat " + links[l] + " CollNetChain Simple");
    row(std::string("hw_lat_us.") + links[l] + ".nvls.Simple", nvls220[l], nvls223[l],
        std::string(kTuning) + " hwLat " + links[l] + " NVLS Simple (NVLink 23 until 2.22, then 25)");
    row(std::string("hw_lat_us.") + links[l] + ".nvls_tree.Simple", nt220[l], nt223[l],
        std::string(kTuning) + " hwLat " + links[l] + " NVLSTree Simple");
  }
  // Per-channel and LL bandwidth caps (GB/s), by architecture row and node count column
  // (n1: one node, n2: two, n4: more). LL: one node looks at the GPU, several at the CPU:
  // row volta_intel is Volta-N1 / Intel-N2,N4; ampere_amd is Ampere-N1 / AMD-N2,N4.
  const char* cols[] = {"n1", "n2", "n4"};
  struct Caps {
    const char* table;
    const char* arch;
    double v220[3], v223[3];
  };
  const Caps caps[] = {
      {"ll_max_bw_GBps", "volta_intel", {39.0, 39.0, 20.4}, {39.0, 39.0, 20.4}},
      {"ll_max_bw_GBps", "ampere_amd", {87.7, 22.5, 19.0}, {87.7, 22.5, 19.0}},
      {"ll_max_bw_GBps", "hopper", {87.7, 22.5, 19.0}, {141.0, 45.0, 35.0}},
      {"ll_max_bw_GBps", "blackwell", {87.7, 22.5, 19.0}, {282.0, 90.0, 70.0}},
      {"per_ch_max_ring_ll128_GBps", "volta", {20, 20, 20}, {20, 20, 20}},
      {"per_ch_max_ring_ll128_GBps", "ampere", {20, 20, 20}, {20, 20, 20}},
      {"per_ch_max_ring_ll128_GBps", "hopper", {36.7, 36.7, 36.7}, {36.7, 36.7, 36.7}},
      {"per_ch_max_ring_ll128_GBps", "blackwell", {36.7, 36.7, 36.7}, {73.4, 73.4, 73.4}},
      {"per_ch_max_tree_ll128_GBps", "volta", {20, 20, 20}, {20, 20, 20}},
      {"per_ch_max_tree_ll128_GBps", "ampere", {20, 20, 20}, {20, 20, 20}},
      {"per_ch_max_tree_ll128_GBps", "hopper", {36.7, 36.7, 29.0}, {36.7, 36.7, 29.0}},
      {"per_ch_max_tree_ll128_GBps", "blackwell", {36.7, 36.7, 29.0}, {73.4, 73.4, 58.0}},
      {"per_ch_max_tree_GBps", "volta", {26.5, 18.5, 10.0}, {26.5, 18.5, 10.0}},
      {"per_ch_max_tree_GBps", "ampere", {24.0, 23.6, 17.8}, {24.0, 23.6, 17.8}},
      {"per_ch_max_tree_GBps", "hopper", {38.7, 41.4, 36.0}, {38.7, 41.4, 36.0}},
      {"per_ch_max_tree_GBps", "blackwell", {38.7, 41.4, 36.0}, {77.4, 82.8, 72.0}},
  };
  for (const Caps& c : caps)
    for (int i = 0; i < 3; ++i)
      row(std::string(c.table) + "." + c.arch + "." + cols[i], c.v220[i], c.v223[i],
          std::string(kTuning) + " " + c.table + " " + c.arch + " " + cols[i] +
              (std::string(c.arch) == "blackwell" ? " (2.20 has no Blackwell row: Hopper's)" : ""));
  // The model's refinements (factors on the bus bandwidth, bus -> algorithm bandwidth).
  row("ring_ll_bw_factor", 0.25, 0.5, std::string(kTuning) + " Ring LL: busBw * 1/4 (allreduce) until 2.22, * .5 since");
  row("ring_ll128_bw_factor", 0.92, 0.92, std::string(kTuning) + " Ring LL128: busBw * 0.92 (120/128)");
  row("ring_ll128_bw_factor_ppn1", 0.7, 0.92, std::string(kTuning) + " Ring LL128 with ppn < 2: 0.7 until 2.22");
  row("tree_bw_factor", 0.92, 0.92, std::string(kTuning) + " Tree: busBw * .92");
  row("tree_ll_bw_factor", 1.0 / 3.8, 1.0 / 3.8, std::string(kTuning) + " Tree LL: busBw / 3.8");
  row("tree_ll128_bw_factor_1node", 7.0 / 9.0, 7.0 / 9.0, std::string(kTuning) + " Tree LL128 on one node: * 7/9");
  row("tree_ll128_bw_factor_nodes", 120.0 / 128.0, 120.0 / 128.0, std::string(kTuning) + " Tree LL128 across nodes: * 120/128");
  row("tree_pattern_bw_factor", 0.85, 0.85, std::string(kTuning) + " Tree on the TREE pattern: busBw * .85");
  row("collnet_direct_hopper_factor", 0.85, 0.85, std::string(kTuning) + " CollNet Direct on sm90+: * .85");
  row("tree_bus_to_alg", 0.5, 0.5, std::string(kTuning) + " Tree / CollNet: algBw = busBw * .5");
  row("nvls_bus_to_alg", 5.0 / 6.0, 5.0 / 6.0, std::string(kTuning) + " NVLS / NVLS Tree: algBw = busBw * 5/6");
  row("net_overhead_us.intel", 1.0, 1.0, std::string(kTuning) + " getNetOverhead: x86 Intel 1 us");
  row("net_overhead_us.amd", 2.0, 2.0, std::string(kTuning) + " getNetOverhead: x86 AMD 2 us");
  row("net_overhead_us.other", 1.0, 1.0, std::string(kTuning) + " getNetOverhead: other CPUs 1 us");
  row("net_overhead_simple_factor", 3.0, 3.0, std::string(kTuning) + " Simple: netOverhead * 3");
  row("ring_inter_steps_minus_one", 0, 1, std::string(kTuning) +
      " nInterSteps for allreduce: 2 * nNodes until 2.22, 2 * (nNodes - 1) since");
  row("ppn1_tree_net_latency", 0, 1, std::string(kTuning) + " ppn = 1: the network latency of Tree for every algorithm (since 2.23)");
  row("collnet_arity_us", 0.4, 0.4, std::string(kTuning) + " CollNet Direct: 0.4 us arity serialization per local rank");
  row("ring_plateau_factor", 1.4, 1.4, std::string(kTuning) + " Ring Simple across nodes, large messages: lat * 1.4 (sm80+)");
  row("ring_plateau_factor_volta", 1.9, 1.9, std::string(kTuning) + " the same below sm80: lat * 1.9");
  row("ring_plateau_bytes", 64, 64, std::string(kTuning) + " the plateau applies once nBytes / (nChannels * nRanks) >= 64");
  // The channel search (graph.cpp): link bandwidths as NCCL rates them.
  row("nvlink_GBps.sm60", 18.0, 18.0, std::string(kTopo) + " SM60_NVLINK_BW, per link");
  row("nvlink_GBps.sm70", 20.0, 20.0, std::string(kTopo) + " SM70_NVLINK_BW");
  row("nvlink_GBps.sm80", 20.0, 20.0, std::string(kTopo) + " SM80_NVLINK_BW");
  row("nvlink_GBps.sm86", 12.0, 12.0, std::string(kTopo) + " SM86_NVLINK_BW");
  row("nvlink_GBps.sm90", 20.6, 20.6, std::string(kTopo) + " SM90_NVLINK_BW");
  row("nvlink_GBps.sm100", 40.1, 40.1, std::string(kTopo) + " SM100_NVLINK_BW (2.20 has no sm100: 40.1 kept)");
  row("pci_gen3_x16_GBps", 12.0, 12.0, std::string(kTopo) + " PCI_BW: Gen3 x16; each generation doubles (x16 width * GT/s / 80)");
  row("dup_channels_min_bw", 25.0, 25.0, std::string(kSearch) + " ncclTopoDupChannels: no duplication below 25 GB/s per channel");
  row("dup_channels_sm90_bw", 50.0, 50.0, std::string(kSearch) + " ... nor on sm90+ below 50 GB/s with more than 4 channels");
  row("max_channels_ring", 16, 16, std::string(kSearch) + " MAXCHANNELS/2: the ring and tree searches' channel limit");
  row("max_nvls_channels", 16, 16, std::string(kSearch) + " NVLS heads: min(NCCL_MAX_NVLS_ARITY, GPUs per node)");
  row("speed_step_floor", 0.49, 0.49, std::string(kSearch) + " lower the speed while the next one is > .49 of the best found");
  // fuseplan's own refinement of the time (not NCCL's; NCCL's choice never sees it):
  // NCCL Tree over NVLS runs slower than NCCL's formula between 1 and 256 MiB. Fitted to
  // tests/data/nccl-tests/h100-ndr-2x8 and h200-roce-2x8 (sizes >= 1 MiB where NVLS Tree
  // runs), judged on the logs left out (bench/nccl_fidelity): crusoe-h100-2x8 30 -> 4 %,
  // h100-ndr-4x8 6.3 -> 5.7 %, a3mega-2x8 54 -> 41 % median error. Set the fill and the
  // extra latency to 0 and the efficiency to 1 for NCCL's formula alone.
  const std::string fitted = "fuseplan, measured (not NCCL's): fitted to the h100-ndr-2x8 and h200-roce-2x8 logs";
  row("fuseplan.nvls_tree_extra_lat_us", 20, 20, fitted + ": latency beyond NCCL's");
  row("fuseplan.nvls_tree_fill_us", 135, 135, fitted + ": pipeline fill, reached at fill_bytes, linear below");
  row("fuseplan.nvls_tree_fill_bytes", 64 << 20, 64 << 20, fitted + ": the size from which the fill is whole");
  row("fuseplan.nvls_tree_bw_efficiency", 0.94, 0.94, fitted + ": achieved fraction of NCCL's bandwidth");
  return r;
}

// ncclTopoGetAlgoTime's treeCorrectionFactor[proto][log2(bytes / 64)], 64 B to 256 MiB;
// the same in 2.20 and 2.23.
constexpr std::array<std::array<double, 23>, kNcclProtos> kTreeCorrection{{
    {1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0, 1.0, 1.0, 1.0},
    {1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9, .9, .9, 1.0, 1.0},
    {.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7, .8, .9, .9},
}};

}  // namespace

std::vector<std::string> nccl_releases() { return {"2.20", "2.23"}; }

const std::vector<NcclConstantRow>& nccl_constant_rows() {
  static const std::vector<NcclConstantRow> rows = build_rows();
  return rows;
}

double NcclConstants::operator()(std::string_view name) const {
  auto it = value.find(name);
  if (it == value.end()) throw std::logic_error("NCCL constant '" + std::string(name) + "' is not in the table");
  return it->second;
}

NcclConstants nccl_constants(const std::string& release, const std::map<std::string, double>& overrides,
                             const std::string& flag) {
  const auto releases = nccl_releases();
  const std::string want = release.empty() ? releases.back() : release;
  size_t col = releases.size();
  for (size_t i = 0; i < releases.size(); ++i)
    if (releases[i] == want) col = i;
  if (col == releases.size()) {
    std::string valid;
    for (const auto& r : releases) valid += (valid.empty() ? "" : ", ") + r;
    throw InputError(flag + ": unknown NCCL release '" + want + "' (valid: " + valid +
                     "; 2.20 stands for 2.19-2.22, 2.23 for 2.23 and later)");
  }
  NcclConstants k;
  k.release = want;
  for (const auto& row : nccl_constant_rows()) k.value[row.name] = row.values[col];
  k.tree_correction = kTreeCorrection;
  for (const auto& [name, v] : overrides) {
    auto it = k.value.find(name);
    if (it == k.value.end())
      throw InputError(flag + ": $.nccl.constants." + name +
                       ": no such NCCL constant (the table is in docs/nccl.md; e.g. hw_lat_us.net.ring.Simple)");
    if (!(v >= 0) || !std::isfinite(v)) throw InputError(flag + ": $.nccl.constants." + name + ": must be a number >= 0");
    const bool fraction = name.ends_with("_efficiency") || name.ends_with("_factor") || name == "speed_step_floor";
    if (fraction && !(v > 0 && (v <= 1 || name.starts_with("ring_plateau") || name == "net_overhead_simple_factor")))
      throw InputError(flag + ": $.nccl.constants." + name + ": must be a fraction in (0, 1]");
    it->second = v;
  }
  return k;
}

}  // namespace fuseplan
