// `nccl`: NCCL's own choice. The variants are every (algorithm, protocol) of NCCL's
// tuning model, v = algorithm * 3 + protocol in NCCL's order; the variant run is NCCL's
// argmin of ncclTopoGetAlgoTime (ties to NCCL's loop order), and its time with fuseplan's
// measured refinements (nccl_refined_time) is the prediction. The schedule is the chosen
// algorithm's. On an NCCL cluster `auto` is this.
#include "nccl_common.hpp"

namespace fuseplan {
namespace {

constexpr int kVariants = kNcclAlgos * kNcclProtos;

NcclAlgo algo_of(int v) { return NcclAlgo(std::max(0, v) / kNcclProtos); }
NcclProto proto_of(int v) { return NcclProto(std::max(0, v) % kNcclProtos); }

std::string not_applicable(const CollectiveArgs& a) {
  if (!a.nccl) return coll::nccl_not_applicable(a, NcclAlgo::Ring);
  return "";
}
// NCCL's argmin by its own formula (the refined time predicts, it does not choose).
int choose(const CollectiveArgs& a) {
  if (!a.nccl) return 0;
  const NcclPick p = nccl_choose(a.nccl->system, a.nccl->tuning, a.bytes());
  return int(p.algo) * kNcclProtos + int(p.proto);
}
Cost direct(const CollectiveArgs& a) {
  const int v = a.variant < 0 ? choose(a) : a.variant;
  return coll::nccl_cost(a, algo_of(v), proto_of(v));
}
Schedule schedule(const CollectiveArgs& a) {
  switch (algo_of(a.variant)) {
    case NcclAlgo::Ring:
      return coll::nccl_ring_schedule(a, a.nccl ? a.nccl->system.graphs[size_t(NcclAlgo::Ring)].channels : 1);
    case NcclAlgo::Tree: return coll::nccl_tree_schedule(a);
    case NcclAlgo::NvlsTree: return coll::nccl_nvls_tree_schedule(a);
    default: return coll::nccl_hierarchical_schedule(a);
  }
}
double lower_bound(const CollectiveArgs& a) { return coll::nccl_lower_bound(a, NcclAlgo::Ring, true); }
std::string variant_name(int v) {
  return std::string(nccl_algo_name(algo_of(v))) + "/" + std::string(nccl_proto_name(proto_of(v)));
}

}  // namespace

extern const Algorithm kNccl{.name = "nccl",
                             .description = "NCCL's own choice: the fastest algorithm x protocol of NCCL's tuning "
                                            "model (ring, tree, nvls, nvls_tree, collnet x LL, LL128, Simple); auto on "
                                            "NCCL clusters",
                             .not_applicable = not_applicable,
                             .profile = coll::nccl_affine_profile,
                             .schedule = schedule,
                             .variants = kVariants,
                             .automatic = true,
                             .library = "nccl",
                             .direct = direct,
                             .variant_name = variant_name,
                             .monotone = false,
                             .lower_bound = lower_bound,
                             .choose = choose};

}  // namespace fuseplan
