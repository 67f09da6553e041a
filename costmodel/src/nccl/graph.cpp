// How NCCL sees a cluster: the channel graphs its topology search (src/graph/search.cc,
// ncclTopoCompute) would find, emulated on the cluster file's links. NCCL tries per-channel
// speeds from a fixed table, highest first, keeps the graph with the most bandwidth
// (channels x speed), duplicates fast channels, then raises the speed the channels allow.
// Here a channel at speed s costs s on every GPU's NVLink or PCIe port (a ring or chain
// passes every GPU of a node) and s on the NIC rail it enters and leaves a node by; an
// NVLS channel costs twice s on its head GPU and s on every other (ncclTopoSearchTryNvls).
// This is an emulation of the search's outcome, not the search: pin the graphs NCCL
// prints (NCCL_DEBUG=INFO, "Pattern 4, ... nChannels 12, bw 20/20") in the cluster file's
// nccl.graphs to use NCCL's own.
#include <algorithm>
#include <cmath>
#include <limits>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan {

namespace {

// search.cc's speed tables (GB/s per channel): inside one node, or with a network.
const std::vector<double> kIntra{40.0, 30.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0, 7.0, 6.0, 5.0, 4.0, 3.0};
const std::vector<double> kInter{48.0, 30.0, 28.0, 24.0, 20.0, 18.0, 15.0, 12.0, 10.0, 9.0,
                                 7.0,  6.0,  5.0,  4.0,  3.0,  2.4,  1.2,  0.24, 0.12};
const std::vector<double> kIntraSm90{60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 15.0, 12.0, 11.0, 6.0, 3.0};
const std::vector<double> kInterSm90{48.0, 45.0, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0, 17.5,
                                     15.0, 12.0, 6.0,  3.0,  2.4,  1.2,  0.24, 0.12};
const std::vector<double> kIntraSm100{90.0, 80.0, 70.0, 60.0, 50.0, 40.0, 30.0, 24.0, 20.0, 19.0, 18.0};
const std::vector<double> kInterSm100{96.0, 48.0, 45.1, 42.0, 40.0, 30.0, 24.0, 22.0, 20.0,
                                      17.5, 15.0, 12.0, 6.0,  3.0,  2.4,  1.2,  0.24, 0.12};

const std::vector<double>& speeds(int cc, bool network) {
  if (cc >= 100) return network ? kInterSm100 : kIntraSm100;
  if (cc >= 90) return network ? kInterSm90 : kIntraSm90;
  return network ? kInter : kIntra;
}

constexpr double kInf = std::numeric_limits<double>::infinity();

// The node as the search sees it: per-GPU capacity on its intra-node port, the GPU-NIC
// path and NIC bandwidth, rails per node.
struct Node {
  int gpus = 1, nodes = 1, nics = 0;
  double gpu_port = kInf;   // GB/s a GPU's NVLinks (or PCIe port) carry per direction
  double nic_path = kInf;   // GB/s from a GPU to its NIC: min(PCIe path, NIC)
  double total = kInf;      // system->totalBw: the most a GPU can move (the "perfect" bound)
  double max_bw = kInf;     // system->maxBw: the fastest single path
};

// Channels a ring / tree search fits at speed s (each channel: s on every GPU port, s on
// one NIC rail per direction).
int ring_channels(const Node& n, double s, int max_channels) {
  double c = max_channels;
  if (n.gpus > 1) c = std::min(c, std::floor(n.gpu_port / s + 1e-9));
  if (n.nodes > 1) c = std::min(c, n.nics * std::floor(n.nic_path / s + 1e-9));
  return int(std::max(0.0, c));
}

struct Found {
  int channels = 0;
  double speed = 0;
};

// Pass 1 (decrease the speed until a solution, keep the best channels x speed) and the
// channel duplication; pass 2 is done by the caller where it differs per pattern.
Found pass1(const Node& n, const std::vector<double>& sp, double total, int max_channels, int cc,
            const NcclConstants& k) {
  size_t i = 0;
  while (i + 1 < sp.size() && (sp[i] > n.max_bw || sp[i] > total)) ++i;
  Found best;
  for (;; ++i) {
    const int c = ring_channels(n, sp[i], max_channels);
    if (c > 0 && c * sp[i] > best.channels * best.speed) best = {c, sp[i]};
    if (best.channels > 0 && best.channels * best.speed >= total) break;  // "perfect"
    if (i + 1 >= sp.size()) break;
    if (best.channels > 0 && !(sp[i + 1] / best.speed > k("speed_step_floor"))) break;
  }
  if (best.channels == 0) return {1, 0.1};  // NCCL's fallback: one slow channel
  // ncclTopoDupChannels: fast channels are split in two.
  const bool dup = best.speed >= k("dup_channels_min_bw") &&
                   !(cc > 80 && best.speed < k("dup_channels_sm90_bw") && best.channels > 4);
  if (dup) {
    const int doubled = std::min(best.channels * 2, max_channels);
    if (doubled > best.channels) {
      best.speed /= 2;
      best.channels = doubled;
    }
  }
  return best;
}

// The next faster speed in the table than `s`, 0 if none.
double faster(const std::vector<double>& sp, double s) {
  double f = 0;
  for (double x : sp)
    if (x > s * (1 + 1e-9)) f = x;
  return f;
}

double pci_GBps(int gen, const NcclConstants& k) { return k("pci_gen3_x16_GBps") * std::pow(2.0, gen - 3); }

int default_pcie_gen(int cc) {
  if (cc >= 100) return 6;
  if (cc >= 90) return 5;
  if (cc >= 80) return 4;  // A100, A30/A40 (86), RTX 40 (89)
  return 3;
}

double nvlink_GBps(int cc, const NcclConstants& k) {
  if (cc >= 100) return k("nvlink_GBps.sm100");
  if (cc >= 90) return k("nvlink_GBps.sm90");
  if (cc == 86 || cc == 89) return k("nvlink_GBps.sm86");
  if (cc >= 80) return k("nvlink_GBps.sm80");
  if (cc >= 70) return k("nvlink_GBps.sm70");
  return k("nvlink_GBps.sm60");
}

NcclGraph graph_of(const Found& f, double intra, double inter, bool tree_pattern, const std::string& origin) {
  NcclGraph g;
  g.channels = f.channels;
  g.bw_intra_GBps = intra;
  g.bw_inter_GBps = inter;
  g.tree_pattern = tree_pattern;
  g.origin = origin;
  return g;
}

}  // namespace

NcclSystem nccl_system(const Cluster& c, int ranks, const std::string& release, const std::string& flag) {
  if (c.library != "nccl")
    throw InputError("cluster " + c.name + " runs " + c.library +
                     ", not NCCL (its file's \"library\"): NCCL's algorithms do not apply");
  NcclSystem s;
  s.k = nccl_constants(release.empty() ? c.nccl.release : release, c.nccl.constants,
                       release.empty() ? c.source : flag);
  s.release = s.k.release;
  const NcclConstants& k = s.k;
  s.ranks = ranks;
  const int per_node = std::max(1, std::min(ranks, c.gpus_per_node));
  s.nodes = (ranks + per_node - 1) / per_node;
  s.compute_capability = c.device.compute_capability;
  s.cpu = c.nccl.cpu;
  s.nvlink = c.intra.kind == "nvlink" || c.intra.kind == "nvswitch";
  s.nvswitch = c.intra.kind == "nvswitch";
  s.nvls = s.nvswitch && c.intra.nvlink_sharp && s.compute_capability >= 90;
  s.collnet = c.inter && c.inter->sharp && s.nodes > 1;
  s.inter_ll128 = !c.inter || c.inter->gdr;

  const int cc = s.compute_capability;
  Node n;
  n.gpus = per_node;
  n.nodes = s.nodes;
  const int gen = c.device.pcie_gen > 0 ? c.device.pcie_gen : default_pcie_gen(cc);
  const double pci = pci_GBps(gen, k);
  if (per_node > 1) {
    if (s.nvlink) n.gpu_port = c.intra.nvlink_links > 0 ? c.intra.nvlink_links * nvlink_GBps(cc, k) : c.intra.bw_GBps;
    else n.gpu_port = std::min(pci, c.intra.bw_GBps);
  }
  if (s.nodes > 1 && c.inter) {
    n.nics = c.inter->nics_per_node;
    n.nic_path = std::min(pci, c.inter->nic_bw_Gbps / 8.0 * c.inter->fraction(c.library));
    if (!c.inter->gdr) n.nic_path = std::min(n.nic_path, c.inter->host_copy_bw_GBps);
  }
  n.max_bw = std::min(s.nodes > 1 ? n.nic_path : kInf, per_node > 1 ? n.gpu_port : kInf);
  n.total = per_node > 1 ? n.gpu_port : n.nic_path;
  if (!std::isfinite(n.max_bw)) n.max_bw = n.total = pci;
  const bool network = s.nodes > 1;
  const std::vector<double>& sp = speeds(cc, network);
  const int max_channels = int(k("max_channels_ring"));
  const std::string derived = "derived from the cluster's links (an emulation of NCCL's search)";

  // Ring: pass 2 raises the speed of both ends while the channels still fit.
  {
    Found f = pass1(n, sp, n.total, max_channels, cc, k);
    for (double up = faster(sp, f.speed); up > 0 && ring_channels(n, up, max_channels) >= f.channels;
         up = faster(sp, f.speed))
      f.speed = up;
    s.graphs[size_t(NcclAlgo::Ring)] = graph_of(f, f.speed, f.speed, false, derived);
  }
  // Tree (balanced tree; the plain TREE pattern on sm90+): the "perfect" bound is the
  // GPU total times G / (G - 1); pass 2 raises the intra-node speed up to twice the
  // inter-node one.
  {
    const double total = per_node > 1 ? n.total * per_node / (per_node - 1.0) : n.total;
    Found f = pass1(n, sp, total, max_channels, cc, k);
    double intra = f.speed;
    auto fits = [&](double s_intra) { return per_node == 1 || std::floor(n.gpu_port / s_intra + 1e-9) >= f.channels; };
    for (double up = faster(sp, intra); up > 0 && intra < 2 * f.speed && fits(up); up = faster(sp, intra)) intra = up;
    s.graphs[size_t(NcclAlgo::Tree)] = graph_of(f, intra, f.speed, cc >= 90, derived);
  }
  // NVLS: one channel per GPU of the node (its head), each costing 2s on the head's
  // NVLinks and s on the others': (G + 1) s per GPU. Across nodes each head uses its NIC;
  // pass 2 raises the inter-node speed up to twice the intra-node one.
  if (s.nvls && per_node > 1) {
    Found f;
    f.channels = std::min(per_node, int(k("max_nvls_channels")));
    for (double x : sp)
      if ((per_node + 1) * x <= n.gpu_port * (1 + 1e-9) && x <= n.gpu_port) {
        f.speed = x;
        break;
      }
    if (f.speed > 0) {
      double inter = f.speed;
      if (network) {
        inter = 0;
        for (double x : sp)
          if (x <= n.nic_path && x <= 2 * f.speed) {
            inter = x;
            break;
          }
      }
      NcclGraph g = graph_of(f, f.speed, inter, false, derived);
      s.graphs[size_t(NcclAlgo::Nvls)] = g;
      s.graphs[size_t(NcclAlgo::NvlsTree)] = g;
    }
  }
  // CollNet: the ring's channels and speeds, one head per NIC (Direct). An approximation.
  if (s.collnet) {
    NcclGraph g = s.graphs[size_t(NcclAlgo::Ring)];
    g.origin = "derived: the ring's graph (CollNet's own search is not emulated)";
    s.graphs[size_t(NcclAlgo::CollNetChain)] = g;
    g.channels = std::max(1, std::min(per_node, n.nics));
    s.graphs[size_t(NcclAlgo::CollNetDirect)] = g;
  }
  // Graphs the cluster file pins, as NCCL printed them.
  for (const auto& [name, g] : c.nccl.graphs) {
    NcclGraph pinned = g;
    pinned.origin = "cluster file (nccl.graphs." + name + ")";
    for (int a = 0; a < kNcclAlgos; ++a)
      if (nccl_algo_name(NcclAlgo(a)) == name || (name == "nvls" && NcclAlgo(a) == NcclAlgo::NvlsTree))
        s.graphs[size_t(a)] = pinned;
  }
  // comm->nChannels after NCCL doubles the ring and tree channels (ncclTopoPostset).
  s.comm_channels = std::min(32, 2 * std::min(s.graphs[size_t(NcclAlgo::Ring)].channels,
                                              std::max(1, s.graphs[size_t(NcclAlgo::Tree)].channels)));
  return s;
}

}  // namespace fuseplan
