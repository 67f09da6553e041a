// NCCL's CollNet algorithms, where the network's switches reduce (SHARP): Direct (every
// GPU of a node talks to its NIC head through NVSwitch) and Chain (a chain in the node to
// one head); Simple protocol only. Closed forms (tuning.cc): Direct lat = 2(min(1, G-1)
// intraLat + 0.4 (G-1)) + interLat, Chain lat = 2(G-1) intraLat + interLat; algBw =
// nChannels bwIntra x .5 (Direct divided by the softened GPU/NIC ratio, x .85 on sm90+).
#include "nccl_common.hpp"

namespace fuseplan {
namespace {

std::string direct_na(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::CollNetDirect); }
std::string chain_na(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::CollNetChain); }
Cost direct_cost(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::CollNetDirect, NcclProto::Simple); }
Cost chain_cost(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::CollNetChain, NcclProto::Simple); }
std::string simple(int) { return "Simple"; }

}  // namespace

extern const Algorithm kNcclCollnetDirect{.name = "nccl_collnet_direct",
                                          .description = "NCCL's CollNet Direct: the switches reduce (SHARP), every GPU "
                                                         "to its NIC head; NCCL clusters with inter_node.sharp",
                                          .not_applicable = direct_na,
                                          .profile = coll::nccl_affine_profile,
                                          .schedule = coll::nccl_hierarchical_schedule,
                                          .variants = 1,
                                          .automatic = false,
                                          .library = "nccl",
                                          .direct = direct_cost,
                                          .variant_name = simple};
extern const Algorithm kNcclCollnetChain{.name = "nccl_collnet_chain",
                                         .description = "NCCL's CollNet Chain: a chain in each node to one NIC head, the "
                                                        "switches reduce (SHARP); NCCL clusters with inter_node.sharp",
                                         .not_applicable = chain_na,
                                         .profile = coll::nccl_affine_profile,
                                         .schedule = coll::nccl_hierarchical_schedule,
                                         .variants = 1,
                                         .automatic = false,
                                         .library = "nccl",
                                         .direct = chain_cost,
                                         .variant_name = simple};

}  // namespace fuseplan
