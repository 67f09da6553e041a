// The NCCL algorithm files' shared pieces (nccl_common.hpp).
#include "nccl_common.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace fuseplan {
extern const Algorithm kDoubleBinaryTree;
}

namespace fuseplan::coll {

Cost nccl_cost(const CollectiveArgs& args, NcclAlgo a, NcclProto p) {
  Cost c;
  if (args.topo.ranks < 2) return c;  // nothing to reduce
  const NcclContext& ctx = *args.nccl;
  const NcclTime t = nccl_refined_time(ctx.system, ctx.tuning, a, p, args.bytes());
  if (t.latency_us < 0) {
    c.latency_s = std::numeric_limits<double>::infinity();
    return c;
  }
  c.latency_s = t.latency_us * 1e-6;
  c.bandwidth_s = t.bandwidth_us * 1e-6;
  const int p_ranks = args.topo.ranks, nodes = args.topo.nodes(), local = args.topo.per_node;
  c.rounds = a == NcclAlgo::Ring ? 2 * (p_ranks - 1)
                                 : 2 * (std::max(0, local - 1) + (nodes > 1 ? ceil_log2(nodes) : 0));
  return c;
}

std::string nccl_not_applicable(const CollectiveArgs& args, NcclAlgo a) {
  if (!args.nccl) return "the cluster does not run NCCL (its file's \"library\" is not \"nccl\")";
  if (args.topo.ranks < 2) return "";
  const NcclTuning& t = args.nccl->tuning;
  for (int p = 0; p < kNcclProtos; ++p)
    if (t.enabled(a, NcclProto(p))) return "";
  return t.why_disabled[size_t(a)][size_t(NcclProto::Simple)];
}

Profile nccl_affine_profile(const CollectiveArgs& a) {
  if (a.topo.ranks == 1) return {};
  RoundClass r;
  r.port = 1;
  r.intra = true;
  return {r};
}

std::string nccl_proto_variant_name(int v) { return std::string(nccl_proto_name(NcclProto(v))); }

int nccl_protocol_choice(const CollectiveArgs& args, NcclAlgo a) {
  if (!args.nccl) return 0;
  return std::max(0, nccl_choose_protocol(args.nccl->system, args.nccl->tuning, a, args.bytes()));
}

double nccl_lower_bound(const CollectiveArgs& args, NcclAlgo a, bool any) {
  if (!args.nccl || args.topo.ranks < 2) return 0;
  const NcclTuning& t = args.nccl->tuning;
  double best = std::numeric_limits<double>::infinity();
  for (int ai = 0; ai < kNcclAlgos; ++ai) {
    if (!any && NcclAlgo(ai) != a) continue;
    for (int p = 0; p < kNcclProtos; ++p)
      if (t.enabled(NcclAlgo(ai), NcclProto(p)))
        best = std::min(best, t.latency_us[size_t(ai)][size_t(p)] + args.bytes() / (1000 * t.bandwidth_GBps[size_t(ai)][size_t(p)]));
  }
  return std::isfinite(best) ? best * 1e-6 : 0;
}

Schedule nccl_ring_schedule(const CollectiveArgs& a, int channels) {
  Schedule s;
  const Topo& t = a.topo;
  if (t.ranks == 1) return s;
  channels = std::max(1, std::min<int>(channels, int(std::min<int64_t>(a.count, 64))));
  for (int c = 0; c < channels; ++c) {
    std::vector<int> members;
    for (int node = 0; node < t.nodes(); ++node) {
      const int first = node * t.per_node, size = std::min(t.per_node, t.ranks - first);
      for (int i = 0; i < size; ++i) members.push_back(first + (c + i) % size);
    }
    Schedule one;
    const int64_t off = seg_begin(a.count, channels, c), len = seg_len(a.count, channels, c);
    ring_reduce_scatter(one, members, off, len);
    ring_allgather(one, members, off, len);
    merge_rounds(s, one, 0);
  }
  return s;
}

namespace {

// Chain inside [first, first + size): reduce towards `first` in `chunks` pipelined pieces
// (round r: local i sends chunk r - (size - 1 - i) to local i - 1), or the reverse copy.
Schedule chain(int first, int size, int64_t count, int chunks, bool reduce) {
  Schedule s;
  if (size < 2) return s;
  const int rounds = size - 1 + chunks - 1;
  s.rounds.resize(rounds);
  for (int r = 0; r < rounds; ++r)
    for (int i = 1; i < size; ++i) {
      // reduce: the chunk starts at the chain's end (local size-1) and moves one hop a round.
      const int hop = reduce ? size - 1 - i : i - 1;
      const int chunk = r - hop;
      if (chunk < 0 || chunk >= chunks) continue;
      const int64_t off = seg_begin(count, chunks, chunk), len = seg_len(count, chunks, chunk);
      if (len == 0) continue;
      if (reduce) s.rounds[r].transfers.push_back({first + i, first + i - 1, off, len, true});
      else s.rounds[r].transfers.push_back({first + i - 1, first + i, off, len, false});
    }
  return s;
}

}  // namespace

namespace {

// The double binary tree over `nodes` members (member k = rank k * stride + local) on
// elements [off, off + len).
Schedule tree_across(const CollectiveArgs& a, int stride, int local, int64_t off, int64_t len) {
  CollectiveArgs heads = a;
  heads.topo = {a.topo.nodes(), 1};
  heads.count = len;
  heads.nccl = nullptr;
  heads.variant = -1;
  heads.net = Net::uniform(1e-6, 1e-10, 1e-11);
  Schedule tree = schedule_of(kDoubleBinaryTree, heads);
  for (auto& round : tree.rounds)
    for (auto& x : round.transfers) {
      x.src = x.src * stride + local;
      x.dst = x.dst * stride + local;
      x.offset += off;
    }
  return tree;
}

}  // namespace

Schedule nccl_tree_schedule(const CollectiveArgs& a) {
  Schedule s;
  const Topo& t = a.topo;
  if (t.ranks == 1) return s;
  const int chunks = int(std::max<int64_t>(1, std::min<int64_t>(8, a.count)));
  Schedule up, down;
  for (int node = 0; node < t.nodes(); ++node) {
    const int first = node * t.per_node, size = std::min(t.per_node, t.ranks - first);
    merge_rounds(up, chain(first, size, a.count, chunks, true), 0);
    merge_rounds(down, chain(first, size, a.count, chunks, false), 0);
  }
  s = up;
  // The double binary tree over the nodes' first GPUs (node k's head is rank k * G).
  if (t.nodes() > 1) merge_rounds(s, tree_across(a, t.per_node, 0, 0, a.count), s.rounds.size());
  merge_rounds(s, down, s.rounds.size());
  return s;
}

Schedule nccl_hierarchical_schedule(const CollectiveArgs& a) {
  const Topo& t = a.topo;
  if (t.ranks == 1) return {};
  if (t.ranks % t.per_node != 0 || t.per_node == 1) return nccl_ring_schedule(a, 1);
  return rs_ar_ag_schedule(a, t.per_node);
}

Schedule nccl_nvls_tree_schedule(const CollectiveArgs& a) {
  const Topo& t = a.topo;
  const int G = t.per_node;
  if (t.ranks == 1 || t.nodes() == 1 || t.ranks % G != 0 || G == 1 || a.count < G) return nccl_hierarchical_schedule(a);
  Schedule s, across, gather;
  for (int node = 0; node < t.nodes(); ++node) {
    const std::vector<int> m = iota_members(node * G, G);
    Schedule rs, ag;
    ring_reduce_scatter(rs, m, 0, a.count);
    ring_allgather(ag, m, 0, a.count);
    merge_rounds(s, rs, 0);
    merge_rounds(gather, ag, 0);
  }
  // After the ring reduce-scatter local rank i holds share (i + 1) % G.
  for (int i = 0; i < G; ++i) {
    const int share = (i + 1) % G;
    merge_rounds(across, tree_across(a, G, i, seg_begin(a.count, G, share), seg_len(a.count, G, share)), 0);
  }
  merge_rounds(s, across, s.rounds.size());
  merge_rounds(s, gather, s.rounds.size());
  return s;
}

}  // namespace fuseplan::coll
