// Recursive doubling allreduce: lg p exchanges of the whole vector.
// p = 2^k: T = lgp (alpha + n beta + n gamma). Otherwise MPICH folds the first 2r ranks
// (r = p - p', p' = 2^floor(lg p)) before and unfolds after: two more full-vector steps.
#include "common.hpp"

namespace fuseplan {
namespace {

Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  const int pof2 = 1 << coll::floor_log2(p);
  const auto all = coll::iota_members(0, p);
  auto members = coll::fold_members(all);
  Profile prof;
  auto fold = coll::fold_flows(all);
  if (!fold.empty()) prof.push_back(coll::round_class(a.topo, a.net, fold, 1, 1, 1));
  for (int mask = 1; mask < pof2; mask <<= 1) {
    prof.push_back(coll::round_class(a.topo, a.net, coll::xor_flows(members, mask), 1, 1, 1));
  }
  if (!fold.empty()) prof.push_back(coll::round_class(a.topo, a.net, coll::reversed(fold), 1, 1, 0));
  return prof;
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  const int p = a.topo.ranks;
  if (p == 1) return s;
  const int pof2 = 1 << coll::floor_log2(p);
  const auto all = coll::iota_members(0, p);
  auto members = coll::fold_members(all);
  coll::fold_in(s, all, a.count);
  for (int mask = 1; mask < pof2; mask <<= 1) {
    Round r;
    for (auto [src, dst] : coll::xor_flows(members, mask)) r.transfers.push_back({src, dst, 0, a.count, true});
    s.rounds.push_back(std::move(r));
  }
  coll::fold_out(s, all, a.count);
  return s;
}

}  // namespace

extern const Algorithm kRecursiveDoubling{
    "recursive_doubling", "exchange the whole vector with partners at distance 1, 2, 4, ... (latency-optimal)",
    coll::always_applicable, profile, schedule, 1};

}  // namespace fuseplan
