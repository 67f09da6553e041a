// Rabenseifner allreduce: recursive-halving reduce-scatter + recursive-doubling allgather.
// p = 2^k: T = 2 lgp alpha + 2n(p-1)/p beta + n(p-1)/p gamma. Otherwise MPICH's fold:
// T = (2 lg p' + 2) alpha + (2(p'-1)/p' + 2) n beta + (1 + (p'-1)/p') n gamma.
// Distance doubles while the vector halves, so the big early steps stay inside a node.
#include "common.hpp"

namespace fuseplan {
namespace {

Profile profile(const CollectiveArgs& a) {
  Profile prof;
  coll::rabenseifner_profile(prof, a.topo, a.net, coll::iota_members(0, a.topo.ranks));
  return prof;
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  coll::rabenseifner_schedule(s, coll::iota_members(0, a.topo.ranks), a.count);
  return s;
}

}  // namespace

extern const Algorithm kRabenseifner{
    "rabenseifner", "recursive-halving reduce-scatter + recursive-doubling allgather (MPICH fold if p != 2^k)",
    coll::always_applicable, profile, schedule, 1};

}  // namespace fuseplan
