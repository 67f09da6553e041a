// What NCCL's algorithm files share: the cost of one (algorithm, protocol) from NCCL's
// tuning model, applicability, protocol variants, the affine form calibration fits, and
// the point-to-point schedules the simulator and the CPU executor replay.
#pragma once
#include <string>

#include "common.hpp"
#include "fuseplan/costmodel/nccl.hpp"

namespace fuseplan::coll {

// The time of `a` with protocol `p` as a Cost (NCCL's formula with fuseplan's measured
// refinements, nccl_refined_time; the reduction is pipelined into the bandwidth term);
// infinite latency when NCCL would not run it.
Cost nccl_cost(const CollectiveArgs& args, NcclAlgo a, NcclProto p);
// Why `a` does not apply: no NCCL context (the cluster runs MPI), or every protocol of
// `a` is disabled here (NCCL's reason).
std::string nccl_not_applicable(const CollectiveArgs& args, NcclAlgo a);
// The form calibration fits for NCCL algorithms: alpha + beta n (one round moving the
// whole message, nothing reduced apart).
Profile nccl_affine_profile(const CollectiveArgs&);
std::string nccl_proto_variant_name(int v);  // "LL", "LL128", "Simple"
// The protocol NCCL picks for `a` by its own formula (the variant of a one-algorithm file).
int nccl_protocol_choice(const CollectiveArgs& args, NcclAlgo a);
// A bound of NCCL's time for `a` (or every algorithm when `any`) at this and every larger
// size: lat + bytes / algBw without the tree's correction factors (all <= 1) and the
// ring's plateau (>= 1), the minimum over enabled protocols. Nondecreasing in the size.
double nccl_lower_bound(const CollectiveArgs& args, NcclAlgo a, bool any = false);

// Schedules (point-to-point equivalents; NVLS and CollNet reduce in switches, which a
// schedule of messages between ranks cannot express).
// Ring over `channels` channels, each a ring over every rank with the ranks of a node
// rotated by the channel number, so that channel c enters a node at local GPU c and the
// channels cross nodes on different NIC rails (NCCL's rings are rail-aligned).
Schedule nccl_ring_schedule(const CollectiveArgs& a, int channels);
// NCCL's tree: chains inside each node (reduce towards local rank 0, pipelined in chunks),
// the double binary tree over the nodes' first GPUs, chains back down.
Schedule nccl_tree_schedule(const CollectiveArgs& a);
// NVLS / CollNet equivalents: reduce-scatter inside the node, allreduce of a 1/G share
// across nodes, allgather inside the node (the ring when the last node is partial).
Schedule nccl_hierarchical_schedule(const CollectiveArgs& a);
// NVLS Tree's equivalent: reduce-scatter inside each node, one double binary tree across
// the nodes per share (local rank g of every node reduces share g), allgather inside.
Schedule nccl_nvls_tree_schedule(const CollectiveArgs& a);

}  // namespace fuseplan::coll
