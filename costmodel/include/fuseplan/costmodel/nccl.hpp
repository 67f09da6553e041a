// NCCL's own cost model for allreduce, as NCCL computes it (src/graph/tuning.cc and the
// channel search of src/graph/search.cc): the channel graphs NCCL would find on a
// cluster, the latency and bandwidth tables ncclTopoTuneModel fills, and
// ncclTopoGetAlgoTime, whose argmin over algorithm x protocol is NCCL's choice. The
// constants live in one table per NCCL release (nccl/constants.cpp), apart from the
// formulas (nccl/tuning.cpp) and the graph derivation (nccl/graph.cpp).
#pragma once
#include <array>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace fuseplan {

struct Cluster;

// NCCL's algorithm and protocol order (NCCL_ALGO_*, NCCL_PROTO_*); the tables index by it.
enum class NcclAlgo { Tree, Ring, CollNetDirect, CollNetChain, Nvls, NvlsTree };
enum class NcclProto { LL, LL128, Simple };
inline constexpr int kNcclAlgos = 6, kNcclProtos = 3;
std::string_view nccl_algo_name(NcclAlgo a);    // tree, ring, collnet_direct, collnet_chain, nvls, nvls_tree
std::string_view nccl_proto_name(NcclProto p);  // LL, LL128, Simple

// One channel graph, as NCCL's INFO log prints it ("Pattern 4, crossNic 0, nChannels 12,
// bw 20.000000/20.000000, type NVL/PIX"): the channel count and each channel's bandwidth
// inside a node and across nodes. channels 0: NCCL has no such graph here.
struct NcclGraph {
  int channels = 0;
  double bw_intra_GBps = 0, bw_inter_GBps = 0;
  double latency_inter_us = 0;  // the net plugin's extra latency (graph->latencyInter)
  bool tree_pattern = false;    // NCCL_TOPO_PATTERN_TREE: the search's fallback; trees lose 15 %
  std::string origin;           // "derived (...)" or "cluster file"
};

// The constants of one NCCL release: named scalars (one row each, with its source) and
// the tree correction factors. `release` is the table's column.
struct NcclConstants {
  std::string release;
  std::map<std::string, double, std::less<>> value;
  std::array<std::array<double, 23>, kNcclProtos> tree_correction{};
  double operator()(std::string_view name) const;  // std::logic_error on an unknown name
};

// One row of the constant table as documented: name, value per release, source.
struct NcclConstantRow {
  std::string name;
  std::vector<double> values;  // one per release, in nccl_releases() order
  std::string source;
};
std::vector<std::string> nccl_releases();  // oldest first; the last is the default
const std::vector<NcclConstantRow>& nccl_constant_rows();
// A release's constants with the cluster file's overrides (nccl.constants) applied.
// InputError naming `flag` for an unknown release or constant name.
NcclConstants nccl_constants(const std::string& release, const std::map<std::string, double>& overrides,
                             const std::string& flag);

// How NCCL sees `ranks` ranks of a cluster.
struct NcclSystem {
  std::string release;
  int ranks = 1, nodes = 1;     // ranks per node = ranks / nodes (the last node may be partial)
  int compute_capability = 0;   // minCompCap = maxCompCap
  std::string cpu = "intel";    // intel, amd, arm, power
  bool nvlink = false;          // the intra-node graphs run over NVLink (else PCI)
  bool nvswitch = false;        // NVSwitch present (CollNet Direct needs it)
  bool nvls = false;            // NVLink SHARP usable (NVLS / NVLS Tree)
  bool collnet = false;         // the network reduces (SHARP, CollNet)
  bool inter_ll128 = true;      // the GPU-NIC path allows LL128 (GPUDirect RDMA through PCIe)
  std::array<NcclGraph, kNcclAlgos> graphs;
  int comm_channels = 1;        // comm->nChannels: the ring plateau's threshold
  NcclConstants k;
};

// The system for `ranks` ranks of `c` (which must say library "nccl"), graphs derived
// from its links unless the cluster file pins them. `release` "" = the cluster's, else
// the newest. InputError naming `flag` for an unknown release.
NcclSystem nccl_system(const Cluster& c, int ranks, const std::string& release, const std::string& flag);

// ncclTopoTuneModel for allreduce: latency (us) and algorithm bandwidth (GB/s) per
// algorithm and protocol; bandwidth 0 = disabled (NCCL would not run it here).
struct NcclTuning {
  std::array<std::array<double, kNcclProtos>, kNcclAlgos> latency_us{}, bandwidth_GBps{};
  std::array<std::array<std::string, kNcclProtos>, kNcclAlgos> why_disabled;
  bool enabled(NcclAlgo a, NcclProto p) const { return bandwidth_GBps[size_t(a)][size_t(p)] > 0; }
};
NcclTuning nccl_tune(const NcclSystem& s);

// ncclTopoGetAlgoTime for one allreduce of `bytes` (one operation, not aggregated):
// microseconds, split into latency and bandwidth parts; -1 when disabled.
struct NcclTime {
  double latency_us = -1, bandwidth_us = 0;
  double total_us() const { return latency_us < 0 ? -1 : latency_us + bandwidth_us; }
};
NcclTime nccl_time(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, NcclProto p, double bytes);

// The time the job takes when NCCL runs (a, p): NCCL's formula plus fuseplan's measured
// refinements (the `fuseplan.*` constants: NVLS Tree's pipeline fill, extra latency and
// achieved bandwidth, fitted to public logs). NCCL chooses by nccl_time; this predicts.
NcclTime nccl_refined_time(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, NcclProto p, double bytes);

// NCCL's choice: the fastest enabled algorithm and protocol by NCCL's own formula, ties to
// NCCL's loop order.
struct NcclPick {
  NcclAlgo algo = NcclAlgo::Ring;
  NcclProto proto = NcclProto::Simple;
  NcclTime time;
};
NcclPick nccl_choose(const NcclSystem& s, const NcclTuning& t, double bytes);
// The same among the protocols of one algorithm (-1 when none is enabled).
int nccl_choose_protocol(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, double bytes);

// What the collective algorithms need: the system and its tables, built once per
// CollectiveModel.
struct NcclContext {
  NcclSystem system;
  NcclTuning tuning;
};

}  // namespace fuseplan
