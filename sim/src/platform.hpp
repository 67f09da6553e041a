// Builds the SimGrid platform of a cluster file for `gpus` ranks (see simulator.hpp).
#pragma once
#include <simgrid/s4u.hpp>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "replay_rounds.hpp"

namespace fuseplan::sim {

struct Platform {
  std::vector<simgrid::s4u::Host*> hosts;  // one per rank, node-major
};

// Call after the Engine exists and before it runs. `net` is the cost model's network for
// this cluster and rank count (CollectiveModel::net()), so both see the same alpha-beta.
// A cluster with calibrated algorithms is costed on the flat textbook network of its fits
// (CollectiveModel), so it is simulated on one: every rank has a latency-free port of
// kFlatBytesPerS each way, and each collective's Wire carries its own constants.
Platform build_platform(const Cluster& c, const Topo& topo, const Net& net);

inline constexpr double kFlatBytesPerS = 1e9;

// The network the platform's links carry: the cost model's, except on NCCL clusters, whose
// links are latency-free (each collective's latency is NCCL's, carried by its Wire).
Net platform_net(const Cluster& c, const CollectiveModel& coll);

// How `choice`'s messages cost on the platform build_platform makes for `c`, for an
// allreduce of `count` elements replaying `schedule` (a calibration's constants depend on
// the size). On a calibrated cluster an uncalibrated algorithm has the intra-node link's
// constants when the ranks share one node; across nodes it is refused (InputError): the
// flat network has no nodes. On an NCCL cluster NCCL's algorithms keep the cluster's
// links (ports, NIC rails, fabric), so contention shows, with messages scaled so that
// without contention the replay takes NCCL's bandwidth time and each round adds its share
// of NCCL's latency; the textbook algorithms spread their own latency over their rounds.
// In every case the bytes take Cluster::job_bandwidth_factor times as long, as the cost
// model's bandwidth terms do.
Wire wire_for(const Cluster& c, const CollectiveModel& coll, const CollectiveChoice& choice, int64_t count,
              Precision transfer, const Schedule& schedule);

}  // namespace fuseplan::sim
