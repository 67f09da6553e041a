// Recursive doubling allreduce: lg p exchanges of the whole vector.
// p = 2^k: T = lgp (alpha + n beta + n gamma). Otherwise MPICH folds the first 2r ranks
// (r = p - p', p' = 2^floor(lg p)) before and unfolds after: two more full-vector steps.
#include "common.hpp"

namespace fuseplan {
namespace {

std::string not_applicable(const CollectiveArgs&) { return {}; }

// The p' ranks that take part in the doubling phase, as real rank numbers.
Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  const int pof2 = 1 << coll::floor_log2(p), rem = p - pof2;
  auto members = coll::fold_members(p);
  Profile prof;
  coll::Flows fold;
  for (int i = 0; i < rem; ++i) fold.emplace_back(2 * i, 2 * i + 1);
  if (rem) prof.push_back(coll::round_class(a.topo, a.net, fold, 1, 1, 1));
  for (int mask = 1; mask < pof2; mask <<= 1) {
    coll::Flows f;
    for (int i = 0; i < pof2; ++i) f.emplace_back(members[i], members[i ^ mask]);
    prof.push_back(coll::round_class(a.topo, a.net, f, 1, 1, 1));
  }
  if (rem) {
    coll::Flows unfold;
    for (auto [x, y] : fold) unfold.emplace_back(y, x);
    prof.push_back(coll::round_class(a.topo, a.net, unfold, 1, 1, 0));
  }
  return prof;
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  const int p = a.topo.ranks;
  if (p == 1) return s;
  const int pof2 = 1 << coll::floor_log2(p), rem = p - pof2;
  auto members = coll::fold_members(p);
  if (rem) {
    Round r;
    for (int i = 0; i < rem; ++i) r.transfers.push_back({2 * i, 2 * i + 1, 0, a.count, true});
    s.rounds.push_back(std::move(r));
  }
  for (int mask = 1; mask < pof2; mask <<= 1) {
    Round r;
    for (int i = 0; i < pof2; ++i) r.transfers.push_back({members[i], members[i ^ mask], 0, a.count, true});
    s.rounds.push_back(std::move(r));
  }
  if (rem) {
    Round r;
    for (int i = 0; i < rem; ++i) r.transfers.push_back({2 * i + 1, 2 * i, 0, a.count, false});
    s.rounds.push_back(std::move(r));
  }
  return s;
}

}  // namespace

extern const Algorithm kRecursiveDoubling{
    "recursive_doubling", "exchange the whole vector with partners at distance 1, 2, 4, ... (latency-optimal)",
    not_applicable, profile, schedule, nullptr};

}  // namespace fuseplan
