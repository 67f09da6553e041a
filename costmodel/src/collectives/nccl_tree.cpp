// NCCL's Tree allreduce: chains inside each node, a double binary tree across nodes,
// reduce up then broadcast down, pipelined; protocol LL, LL128 or Simple (the variants).
// Closed form (tuning.cc): lat = baseLat + 2((G - 1) intraLat + log2(nNodes) interLat);
// algBw = min(nChannels bw x .92, nChannels perChMaxTreeBw) x protocol factors x .5
// (x .85 on the TREE pattern); bw x treeCorrectionFactor[protocol][log2(bytes/64)].
#include "nccl_common.hpp"

namespace fuseplan {
namespace {

std::string not_applicable(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::Tree); }
int choose(const CollectiveArgs& a) { return coll::nccl_protocol_choice(a, NcclAlgo::Tree); }
Cost direct(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::Tree, NcclProto(a.variant < 0 ? 2 : a.variant)); }
double lower_bound(const CollectiveArgs& a) { return coll::nccl_lower_bound(a, NcclAlgo::Tree); }

}  // namespace

extern const Algorithm kNcclTree{.name = "nccl_tree",
                                 .description = "NCCL's Tree: chains in each node, double binary tree across nodes, "
                                                "protocol LL / LL128 / Simple, NCCL's tuning model; NCCL clusters",
                                 .not_applicable = not_applicable,
                                 .profile = coll::nccl_affine_profile,
                                 .schedule = coll::nccl_tree_schedule,
                                 .variants = kNcclProtos,
                                 .automatic = false,
                                 .library = "nccl",
                                 .direct = direct,
                                 .variant_name = coll::nccl_proto_variant_name,
                                 .monotone = false,
                                 .lower_bound = lower_bound,
                                 .choose = choose};

}  // namespace fuseplan
