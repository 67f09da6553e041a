// NCCL's NVLS (NVLink SHARP: the NVSwitch reduces, one node, or across nodes with CollNet)
// and NVLS Tree (NVLS inside each node, a tree across nodes); Simple protocol only.
// Closed forms (tuning.cc): NVLS lat = intraLat (+ interLat across nodes), NVLS Tree lat =
// intraLat + 2 log2(nNodes) interLat; algBw = nChannels min(bwIntra, bwInter [/ 2 beyond
// two nodes for the tree]) x 5/6.
#include "nccl_common.hpp"

namespace fuseplan {
namespace {

std::string nvls_na(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::Nvls); }
std::string tree_na(const CollectiveArgs& a) { return coll::nccl_not_applicable(a, NcclAlgo::NvlsTree); }
Cost nvls(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::Nvls, NcclProto::Simple); }
Cost nvls_tree(const CollectiveArgs& a) { return coll::nccl_cost(a, NcclAlgo::NvlsTree, NcclProto::Simple); }
std::string simple(int) { return "Simple"; }

}  // namespace

extern const Algorithm kNcclNvls{.name = "nccl_nvls",
                                 .description = "NCCL's NVLS: NVLink SHARP reduction in the NVSwitch (Simple), NCCL's "
                                                "tuning model; NCCL clusters with intra_node.nvlink_sharp",
                                 .not_applicable = nvls_na,
                                 .profile = coll::nccl_affine_profile,
                                 .schedule = coll::nccl_hierarchical_schedule,
                                 .variants = 1,
                                 .automatic = false,
                                 .library = "nccl",
                                 .direct = nvls,
                                 .variant_name = simple};
extern const Algorithm kNcclNvlsTree{.name = "nccl_nvls_tree",
                                     .description = "NCCL's NVLS Tree: NVLS inside nodes, a tree across nodes (Simple), "
                                                    "NCCL's tuning model; NCCL clusters with intra_node.nvlink_sharp",
                                     .not_applicable = tree_na,
                                     .profile = coll::nccl_affine_profile,
                                     .schedule = coll::nccl_nvls_tree_schedule,
                                     .variants = 1,
                                     .automatic = false,
                                     .library = "nccl",
                                     .direct = nvls_tree,
                                     .variant_name = simple};

}  // namespace fuseplan
