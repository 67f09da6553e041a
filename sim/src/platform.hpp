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

// How `choice`'s messages cost on the platform build_platform makes for `c`, for an
// allreduce of `bytes` (a calibration's constants depend on the size). On a
// calibrated cluster an uncalibrated algorithm has the intra-node link's constants when
// the ranks share one node; across nodes it is refused (InputError): the flat network
// has no nodes.
Wire wire_for(const Cluster& c, const CollectiveModel& coll, const CollectiveChoice& choice, double bytes);

}  // namespace fuseplan::sim
