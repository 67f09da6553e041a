// Rabenseifner allreduce: recursive-halving reduce-scatter + recursive-doubling allgather.
// p = 2^k: T = 2 lgp alpha + 2n(p-1)/p beta + n(p-1)/p gamma. Otherwise MPICH's fold:
// T = (2 lg p' + 2) alpha + (2(p'-1)/p' + 2) n beta + (1 + (p'-1)/p') n gamma.
// Distance doubles while the vector halves, so the big early steps stay inside a node.
#include "common.hpp"

namespace fuseplan {
namespace {

Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  const int pof2 = 1 << coll::floor_log2(p);
  auto members = coll::fold_members(p);
  auto fold = coll::fold_flows(p);
  Profile prof;
  if (!fold.empty()) prof.push_back(coll::round_class(a.topo, a.net, fold, 1, 1, 1));
  std::vector<RoundClass> rs;
  double frac = 0.5;
  for (int mask = 1; mask < pof2; mask <<= 1, frac /= 2) {
    rs.push_back(coll::round_class(a.topo, a.net, coll::xor_flows(members, mask), frac, frac, frac));
  }
  prof.insert(prof.end(), rs.begin(), rs.end());
  for (auto it = rs.rbegin(); it != rs.rend(); ++it) {  // allgather: same pairs, reversed
    RoundClass ag = *it;
    ag.reduce = 0;
    prof.push_back(ag);
  }
  if (!fold.empty()) prof.push_back(coll::round_class(a.topo, a.net, coll::reversed(fold), 1, 1, 0));
  return prof;
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  const int p = a.topo.ranks;
  if (p == 1) return s;
  auto members = coll::fold_members(p);
  coll::fold_in(s, p, a.count);
  auto ranges = coll::halving_reduce_scatter(s, members, 0, a.count);
  coll::doubling_allgather(s, members, ranges);
  coll::fold_out(s, p, a.count);
  return s;
}

}  // namespace

extern const Algorithm kRabenseifner{
    "rabenseifner", "recursive-halving reduce-scatter + recursive-doubling allgather (MPICH fold if p != 2^k)",
    coll::always_applicable, profile, schedule, 1};

}  // namespace fuseplan
