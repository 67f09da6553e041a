// Builds the SimGrid platform of a cluster file for `gpus` ranks (see simulator.hpp).
#pragma once
#include <simgrid/s4u.hpp>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective.hpp"

namespace fuseplan::sim {

struct Platform {
  std::vector<simgrid::s4u::Host*> hosts;  // one per rank, node-major
};

// Call after the Engine exists and before it runs. `net` is the cost model's network for
// this cluster and rank count (CollectiveModel::net()), so both see the same alpha-beta.
Platform build_platform(const Cluster& c, const Topo& topo, const Net& net);

}  // namespace fuseplan::sim
