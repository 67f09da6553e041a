// NCCL's Ring allreduce: reduce-scatter then allgather around a ring, 2(p-1) steps, over
// nChannels rail-aligned channels, with protocol LL, LL128 or Simple (the variants).
// Closed form (tuning.cc): lat = baseLat + (2(p-1) - nInter) max(intraLat, netOverhead)
// + nInter interLat, nInter = 2(nNodes - 1); algBw = nChannels bw x p / (2(p-1)) after
// the protocol's caps; time = lat (x1.4 for large Simple messages across nodes, the
// ring's plateau) + bytes / algBw.
#include "nccl_common.hpp"

namespace fuseplan {
namespace {

std::string not_applicable(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::Ring); }
int choose(const CollectiveArgs& a) { return coll::nccl_protocol_choice(a, NcclAlgo::Ring); }
Cost direct(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::Ring, NcclProto(a.variant < 0 ? 2 : a.variant)); }
Schedule schedule(const CollectiveArgs& a) {
  return coll::nccl_ring_schedule(a, a.nccl ? a.nccl->system.graphs[size_t(NcclAlgo::Ring)].channels : 1);
}

}  // namespace

extern const Algorithm kNcclRing{.name = "nccl_ring",
                                 .description = "NCCL's Ring over its channels (rail-aligned), protocol LL / LL128 / "
                                                "Simple, NCCL's tuning model; NCCL clusters",
                                 .not_applicable = not_applicable,
                                 .profile = coll::nccl_affine_profile,
                                 .schedule = schedule,
                                 .variants = kNcclProtos,
                                 .automatic = false,
                                 .library = "nccl",
                                 .direct = direct,
                                 .variant_name = coll::nccl_proto_variant_name,
                                 .choose = choose};

}  // namespace fuseplan
