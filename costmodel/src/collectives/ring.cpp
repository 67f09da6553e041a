// Ring allreduce (reduce-scatter then allgather, p-1 steps each):
// T = 2(p-1) alpha + 2n(p-1)/p beta + n(p-1)/p gamma (Thakur et al. 2005).
#include "common.hpp"

namespace fuseplan {
namespace {

Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  auto flows = coll::ring_flows(coll::iota_members(0, p));
  double chunk = 1.0 / p;
  return {coll::round_class(a.topo, a.net, flows, chunk, chunk, chunk, p - 1),
          coll::round_class(a.topo, a.net, flows, chunk, chunk, 0, p - 1)};
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  if (a.topo.ranks == 1) return s;
  auto m = coll::iota_members(0, a.topo.ranks);
  coll::ring_reduce_scatter(s, m, 0, a.count);
  coll::ring_allgather(s, m, 0, a.count);
  return s;
}

}  // namespace

extern const Algorithm kRing{"ring", "ring reduce-scatter + ring allgather over all ranks (node-major order)",
                             coll::always_applicable, profile, schedule, 1};
// The executor's baseline: the MPI library's own MPI_Iallreduce. Open MPI's tuned
// component runs a (segmented) ring for the large messages that gradients are, so the
// model and the simulator use the ring until a calibration says otherwise.
extern const Algorithm kMpi{"mpi",
                            "the MPI library's MPI_Iallreduce (executor); modelled as the ring unless calibrated; "
                            "never picked by auto",
                            coll::always_applicable, profile, schedule, 1, false};

}  // namespace fuseplan
