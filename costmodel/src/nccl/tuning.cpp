// NCCL's tuning model for allreduce (src/graph/tuning.cc: ncclTopoTuneModel and
// ncclTopoGetAlgoTime), formula by formula, on the constants of one release
// (constants.cpp). Where releases differ the constant table says so; the formulas here
// are the newest release's with those constants as switches.
#include <algorithm>
#include <cmath>

#include "fuseplan/costmodel/nccl.hpp"

namespace fuseplan {

std::string_view nccl_algo_name(NcclAlgo a) {
  static constexpr std::string_view names[] = {"tree", "ring", "collnet_direct", "collnet_chain", "nvls", "nvls_tree"};
  static_assert(std::size(names) == kNcclAlgos);
  return names[size_t(a)];
}

std::string_view nccl_proto_name(NcclProto p) {
  static constexpr std::string_view names[] = {"LL", "LL128", "Simple"};
  static_assert(std::size(names) == kNcclProtos);
  return names[size_t(p)];
}

namespace {

// NCCL's log2i: floor(log2 n), 0 for n <= 1.
int log2i(long long n) {
  int l = 0;
  while (n >>= 1) ++l;
  return l;
}

std::string arch_row(int cc) {
  if (cc >= 100) return "blackwell";
  if (cc >= 90) return "hopper";
  if (cc >= 80) return "ampere";
  return "volta";
}

// LL128 is enabled by default only over NVLink inside the node, a GPUDirect path to the
// NIC, and on the architectures NCCL tested (tuning.cc: "may cause silent data corruption").
std::string ll128_disabled(const NcclSystem& s) {
  if (!s.nvlink) return "LL128 needs NVLink inside the node";
  if (!s.inter_ll128) return "LL128 needs a GPUDirect path to the NIC";
  const int cc = s.compute_capability;
  const bool known = cc == 70 || cc == 80 || cc == 90 || (s.release != "2.20" && (cc == 100 || cc == 120));
  if (!known) return "LL128 is not enabled on sm" + std::to_string(cc);
  return "";
}

}  // namespace

NcclTuning nccl_tune(const NcclSystem& s) {
  NcclTuning t;
  if (s.ranks <= 1) return t;
  const NcclConstants& k = s.k;
  const int nNodes = s.nodes, nRanks = s.ranks, cc = s.compute_capability;
  const std::string arch = arch_row(cc);
  const char* col = nNodes == 1 ? "n1" : (nNodes == 2 ? "n2" : "n4");
  // LL: one node looks at the GPU, several at the CPU (AMD's row is the Ampere one).
  const std::string ll_row = nNodes == 1 ? (arch == "volta" ? "volta_intel" : arch == "ampere" ? "ampere_amd" : arch)
                                         : (s.cpu == "amd" ? "ampere_amd" : "volta_intel");
  const double llMaxBw = k("ll_max_bw_GBps." + ll_row + "." + col);
  const double perChMaxTreeBw = k("per_ch_max_tree_GBps." + arch + "." + col);
  const double perChMaxRingLL128Bw = k("per_ch_max_ring_ll128_GBps." + arch + "." + col);
  const double perChMaxTreeLL128Bw = k("per_ch_max_tree_ll128_GBps." + arch + "." + col);
  const double ppn = double(nRanks) / nNodes;
  const int nsteps = 2 * (nRanks - 1);
  const std::string ll128_why = ll128_disabled(s);

  for (int ai = 0; ai < kNcclAlgos; ++ai) {
    const NcclAlgo a = NcclAlgo(ai);
    const NcclGraph& g = s.graphs[size_t(ai)];
    const std::string an(nccl_algo_name(a));
    const bool collnet = a == NcclAlgo::CollNetDirect || a == NcclAlgo::CollNetChain;
    const bool nvls = a == NcclAlgo::Nvls || a == NcclAlgo::NvlsTree;
    // Which link's hardware latency applies inside a node: NVLink or PCI.
    const std::string intra_hw = s.nvlink ? "nvlink" : "pci";
    for (int pi = 0; pi < kNcclProtos; ++pi) {
      const NcclProto p = NcclProto(pi);
      const std::string pn(nccl_proto_name(p));
      auto disable = [&](const std::string& why) {
        t.bandwidth_GBps[size_t(ai)][size_t(pi)] = 0;
        t.why_disabled[size_t(ai)][size_t(pi)] = why;
      };
      if ((nvls || collnet) && p != NcclProto::Simple) {
        disable(an + " runs Simple only");
        continue;
      }
      // Bus bandwidth: channels x per-channel speed (inside the node up to 2 nodes).
      double bw = nNodes <= 2 || collnet ? g.bw_intra_GBps : g.bw_inter_GBps;
      if (a == NcclAlgo::Nvls) bw = std::min(g.bw_intra_GBps, g.bw_inter_GBps);
      if (a == NcclAlgo::NvlsTree) bw = std::min(g.bw_intra_GBps, nNodes <= 2 ? g.bw_inter_GBps : g.bw_inter_GBps / 2);
      double busBw = g.channels * bw;
      if (a == NcclAlgo::Ring && p == NcclProto::LL) busBw = std::min(llMaxBw, busBw * k("ring_ll_bw_factor"));
      if (a == NcclAlgo::Ring && p == NcclProto::LL128)
        busBw = std::min(busBw * (ppn < 2 ? k("ring_ll128_bw_factor_ppn1") : k("ring_ll128_bw_factor")),
                         g.channels * perChMaxRingLL128Bw);
      if (a == NcclAlgo::Tree) busBw = std::min(busBw * k("tree_bw_factor"), g.channels * perChMaxTreeBw);
      if (a == NcclAlgo::Tree && p == NcclProto::LL) busBw = std::min(busBw * k("tree_ll_bw_factor"), llMaxBw);
      if (a == NcclAlgo::Tree && p == NcclProto::LL128)
        busBw = std::min(busBw * (nNodes == 1 ? k("tree_ll128_bw_factor_1node") : k("tree_ll128_bw_factor_nodes")),
                         g.channels * perChMaxTreeLL128Bw);
      if (a == NcclAlgo::Tree && g.tree_pattern) busBw *= k("tree_pattern_bw_factor");
      if (a == NcclAlgo::CollNetDirect) {
        // Full speed needs a NIC per GPU: divide by the (softened) GPU/NIC ratio.
        double factor = ppn / std::max(1, g.channels);
        factor -= (factor - 1) / 2;
        busBw /= factor;
        if (cc >= 90) busBw *= k("collnet_direct_hopper_factor");
      }
      // Bus bandwidth -> algorithm bandwidth.
      if (a == NcclAlgo::Ring) busBw *= double(nRanks) / nsteps;
      else if (nvls) busBw *= k("nvls_bus_to_alg");
      else busBw *= k("tree_bus_to_alg");
      t.bandwidth_GBps[size_t(ai)][size_t(pi)] = busBw;

      // Latency.
      double lat = k("base_lat_us." + an + "." + pn);
      double intraLat = k("hw_lat_us." + intra_hw + "." + an + "." + pn);
      double interLat = ppn == 1 && k("ppn1_tree_net_latency") > 0 ? k("hw_lat_us.net.tree." + pn)
                                                                    : k("hw_lat_us.net." + an + "." + pn);
      interLat += g.latency_inter_us;
      if (p == NcclProto::Simple) interLat += g.latency_inter_us;  // the flush
      const int local = nRanks / nNodes;
      switch (a) {
        case NcclAlgo::Ring: {
          double netOverhead = 0;
          if (nNodes > 1) {
            netOverhead = s.cpu == "intel" ? k("net_overhead_us.intel")
                          : s.cpu == "amd" ? k("net_overhead_us.amd")
                                           : k("net_overhead_us.other");
            if (p == NcclProto::Simple) netOverhead *= k("net_overhead_simple_factor");
          }
          intraLat = std::max(intraLat, netOverhead);
          const int nInter = nNodes == 1 ? 0 : 2 * (nNodes - int(k("ring_inter_steps_minus_one")));
          lat += (nsteps - nInter) * intraLat + nInter * interLat;
          break;
        }
        case NcclAlgo::Tree: lat += 2 * ((local - 1) * intraLat + log2i(nNodes) * interLat); break;
        case NcclAlgo::CollNetDirect:
          lat += 2 * (std::min(1, local - 1) * intraLat + (local - 1) * k("collnet_arity_us")) + interLat;
          break;
        case NcclAlgo::CollNetChain: lat += 2 * (local - 1) * intraLat + interLat; break;
        case NcclAlgo::Nvls:
          lat = intraLat;
          if (nNodes > 1) lat += interLat;
          break;
        case NcclAlgo::NvlsTree: lat += intraLat + 2 * log2i(nNodes) * interLat; break;
      }
      t.latency_us[size_t(ai)][size_t(pi)] = lat;

      // Enables: protocols (LL128 by default only where tested), algorithms (support).
      if (p == NcclProto::LL128 && !ll128_why.empty()) disable(ll128_why);
      if (g.channels == 0 || !(g.bw_intra_GBps > 0)) disable(an + ": no channel graph here");
      if (a == NcclAlgo::NvlsTree && nNodes == 1) disable("NVLS Tree needs several nodes");
      if (nvls && !s.nvls) disable("NVLS needs NVSwitch with NVLink SHARP (intra_node.nvlink_sharp) and sm90+");
      if (collnet && !s.collnet) disable("CollNet needs a network that reduces (inter_node.sharp) across nodes");
      if (a == NcclAlgo::Nvls && nNodes > 1 && !s.collnet) disable("NVLS across nodes needs CollNet (SHARP)");
      if (a == NcclAlgo::CollNetDirect && !s.nvswitch) disable("CollNet Direct needs NVSwitch");
    }
  }
  return t;
}

NcclTime nccl_time(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, NcclProto p, double bytes) {
  NcclTime r;
  double bw = t.bandwidth_GBps[size_t(a)][size_t(p)];
  double lat = t.latency_us[size_t(a)][size_t(p)];
  if (!(bw > 0)) return r;
  const long long n = static_cast<long long>(bytes);
  const int logSize = log2i(n >> 6);
  if (a == NcclAlgo::Tree && logSize >= 0 && logSize < 23) bw *= s.k.tree_correction[size_t(p)][size_t(logSize)];
  if (a == NcclAlgo::Ring && p == NcclProto::Simple && s.nodes > 1 &&
      double(n) >= s.k("ring_plateau_bytes") * s.comm_channels * s.ranks)
    lat *= s.compute_capability < 80 ? s.k("ring_plateau_factor_volta") : s.k("ring_plateau_factor");
  r.latency_us = lat;
  r.bandwidth_us = bytes / (1000 * bw);
  return r;
}

NcclTime nccl_refined_time(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, NcclProto p, double bytes) {
  NcclTime r = nccl_time(s, t, a, p, bytes);
  if (r.latency_us < 0 || a != NcclAlgo::NvlsTree) return r;
  const NcclConstants& k = s.k;
  r.latency_us += k("fuseplan.nvls_tree_extra_lat_us") +
                  k("fuseplan.nvls_tree_fill_us") * std::min(1.0, bytes / std::max(1.0, k("fuseplan.nvls_tree_fill_bytes")));
  r.bandwidth_us /= std::max(1e-6, k("fuseplan.nvls_tree_bw_efficiency"));
  return r;
}

int nccl_choose_protocol(const NcclSystem& s, const NcclTuning& t, NcclAlgo a, double bytes) {
  int best = -1;
  double best_us = 0;
  for (int p = 0; p < kNcclProtos; ++p) {
    const NcclTime x = nccl_time(s, t, a, NcclProto(p), bytes);
    if (x.latency_us >= 0 && (best < 0 || x.total_us() < best_us)) {
      best = p;
      best_us = x.total_us();
    }
  }
  return best;
}

NcclPick nccl_choose(const NcclSystem& s, const NcclTuning& t, double bytes) {
  NcclPick best;
  for (int a = 0; a < kNcclAlgos; ++a)
    for (int p = 0; p < kNcclProtos; ++p) {
      const NcclTime x = nccl_time(s, t, NcclAlgo(a), NcclProto(p), bytes);
      if (x.latency_us < 0) continue;
      if (best.time.latency_us < 0 || x.total_us() < best.time.total_us()) best = {NcclAlgo(a), NcclProto(p), x};
    }
  return best;
}

}  // namespace fuseplan
