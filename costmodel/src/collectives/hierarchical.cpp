// Hierarchical allreduce: binomial reduce to a master inside each group of g ranks (a
// node by default, groups in parallel), an allreduce of the whole n among the p/g
// masters, binomial broadcast inside each group.
// T = 2 ceil(lg g) alpha_l + ceil(lg g) n (2 beta_l + gamma) + allreduce(p/g masters, n).
// The masters run a ring (the 4-minute paper's form) or Rabenseifner's recursive halving
// and doubling (Goyal et al. 2017, section 4: Gloo's inter-server allreduce).
#include "common.hpp"

namespace fuseplan {
namespace {

// Binomial tree step with distance d: local ranks l with l % 2d == d send to l - d
// (reduce), or for the broadcast l % 2d == 0 send to l + d.
coll::Flows binomial_flows(int p, int g, int d, bool reduce) {
  coll::Flows f;
  for (int base = 0; base < p; base += g)
    for (int l = 0; l < g; ++l) {
      if (reduce && l % (2 * d) == d) f.emplace_back(base + l, base + l - d);
      if (!reduce && l % (2 * d) == 0 && l + d < g) f.emplace_back(base + l, base + l + d);
    }
  return f;
}

// The broadcast starts at the largest power of two below g (0 when g = 1: no rounds).
int top_distance(int g) { return g > 1 ? 1 << (coll::ceil_log2(g) - 1) : 0; }

enum class Masters { Ring, HalvingDoubling };

template <Masters kind>
Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks, g = a.group_size(), M = p / g;
  Profile prof;
  for (int d = 1; d < g; d <<= 1) prof.push_back(coll::round_class(a.topo, a.net, binomial_flows(p, g, d, true), 1, 1, 1));
  const auto masters = coll::iota_members(0, M, g);
  if constexpr (kind == Masters::HalvingDoubling) {
    coll::rabenseifner_profile(prof, a.topo, a.net, masters);
  } else if (M > 1) {
    auto ring = coll::ring_flows(masters);
    prof.push_back(coll::round_class(a.topo, a.net, ring, 1.0 / M, 1.0 / M, 1.0 / M, M - 1));
    prof.push_back(coll::round_class(a.topo, a.net, ring, 1.0 / M, 1.0 / M, 0, M - 1));
  }
  for (int d = top_distance(g); d >= 1; d >>= 1)
    prof.push_back(coll::round_class(a.topo, a.net, binomial_flows(p, g, d, false), 1, 1, 0));
  return prof;
}

template <Masters kind>
Schedule schedule(const CollectiveArgs& a) {
  const int p = a.topo.ranks, g = a.group_size(), M = p / g;
  Schedule s;
  for (int d = 1; d < g; d <<= 1) {
    Round r;
    for (auto [src, dst] : binomial_flows(p, g, d, true)) r.transfers.push_back({src, dst, 0, a.count, true});
    s.rounds.push_back(std::move(r));
  }
  const auto masters = coll::iota_members(0, M, g);
  if constexpr (kind == Masters::HalvingDoubling) {
    coll::rabenseifner_schedule(s, masters, a.count);
  } else if (M > 1) {
    coll::ring_reduce_scatter(s, masters, 0, a.count);
    coll::ring_allgather(s, masters, 0, a.count);
  }
  for (int d = top_distance(g); d >= 1; d >>= 1) {
    Round r;
    for (auto [src, dst] : binomial_flows(p, g, d, false)) r.transfers.push_back({src, dst, 0, a.count, false});
    s.rounds.push_back(std::move(r));
  }
  return s;
}

}  // namespace

extern const Algorithm kHierarchical{
    "hierarchical", "4-minute paper: reduce to a group master -> ring among masters -> broadcast in the group",
    coll::needs_whole_groups, profile<Masters::Ring>, schedule<Masters::Ring>, 1};

extern const Algorithm kHierarchicalHd{
    "hierarchical_hd",
    "Goyal et al.: reduce to a group master -> recursive halving/doubling among masters -> broadcast in the group",
    coll::needs_whole_groups, profile<Masters::HalvingDoubling>, schedule<Masters::HalvingDoubling>, 1};

}  // namespace fuseplan
