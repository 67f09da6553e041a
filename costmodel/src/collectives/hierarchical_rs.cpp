// Hierarchical allreduce, reduce-scatter form (Horovod's HOROVOD_HIERARCHICAL_ALLREDUCE):
// ring reduce-scatter inside each group of g ranks (a node by default), ring allreduce of
// n/g bytes among the p/g groups (g of them in parallel, sharing the NICs), ring
// allgather inside the group.
// T = 2(g-1) a_l + 2n(g-1)/g b_l + 2(N-1) a_g + 2(n/g)(N-1)/N b_g' + gamma terms,
// with b_g' the per-flow inter-node beta when g flows share a node's NICs.
#include "common.hpp"

namespace fuseplan {
namespace {

Profile profile(const CollectiveArgs& a) { return coll::rs_ar_ag_profile(a, a.group_size()); }
Schedule schedule(const CollectiveArgs& a) { return coll::rs_ar_ag_schedule(a, a.group_size()); }

}  // namespace

extern const Algorithm kHierarchicalRs{
    "hierarchical_rs", "intra-group ring reduce-scatter -> inter-group ring allreduce of n/g -> intra-group allgather",
    coll::needs_whole_groups, profile, schedule, 1};

}  // namespace fuseplan
