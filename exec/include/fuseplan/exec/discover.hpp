// What this machine has, for a draft cluster file: sockets, cores and GPUs from hwloc
// (libhwloc-dev), each RDMA port's link layer, speed and width from rdma-core
// (libibverbs-dev).
#pragma once
#include <string>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"

namespace fuseplan::exec {

struct RdmaPort {
  std::string device;      // mlx5_0
  int port = 1;
  std::string link_layer;  // infiniband | ethernet (RoCE)
  bool active = false;
  double gbps = 0;         // lanes x per-lane rate
  std::string width, speed;
};

struct MachineInfo {
  std::string cpu_model;
  int packages = 0, cores = 0, pus = 0;
  std::vector<std::string> gpus;     // hwloc OS devices (GPU / CoProcessor)
  std::vector<std::string> nics;     // network OS devices
  std::vector<RdmaPort> rdma_ports;  // empty: no RDMA devices (TCP / shared memory)
  std::string rdma_note;             // why there are none, when there are none
  std::string topology_note;         // what is unseen, when built without hwloc
};

MachineInfo discover_machine();

// A draft cluster file of this machine: `template_cluster` (named `template_name`) with
// what discovery saw (GPUs, or one rank per core; the fastest active RDMA port as the
// inter-node network); every value says in `provenance` whether it was discovered,
// assumed or kept from the template.
Cluster draft_cluster(const MachineInfo& m, Cluster template_cluster, const std::string& template_name);

}  // namespace fuseplan::exec
