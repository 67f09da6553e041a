// What large transfers reach of a NIC's line rate over each transport, from public
// measurements: the table behind inter_node.transport (cluster.hpp).
#include <string>
#include <string_view>

#include "fuseplan/costmodel/cluster.hpp"

namespace fuseplan {
namespace {

struct TransportFigure {
  const char* name;
  double fraction;  // of nic_bw_Gbps, for messages large enough to reach the bandwidth
};

constexpr TransportFigure kTransports[] = {
    // NCCL's maintainers expect 12 GB/s per 100 Gb/s NIC and 24 GB/s per 200 Gb/s
    // (NVIDIA/nccl-tests#119); 48-49 GB/s per 400 Gb/s ConnectX-7 (NVIDIA/nccl-tests#267).
    {"infiniband", 0.96},
    // 600 of 800 Gb/s between two A100 servers with 8 x 100 Gb/s RoCE, "roughly matching
    // our expectation" for the NCCL team (NVIDIA/nccl#495); about 65 % over 4 x 200 Gb/s
    // RoCEv2 (NVIDIA/nccl#700).
    {"roce", 0.75},
    // NCCL's socket transport: 1.7 GB/s bus bandwidth on a 25 Gb/s Azure network (0.54;
    // NVIDIA/nccl-tests#83), "not more than 60 % of wire speed" on 32 Gb/s (NVIDIA/nccl#209).
    {"tcp", 0.55},
    // 10 GB/s on 2 nodes but 6-8 GB/s on 8-32 nodes of 100 Gb/s EFA (NVIDIA/nccl#235);
    // 29.6 GB/s bus bandwidth on 4 p4d nodes of 4 x 100 Gb/s (NVIDIA/nccl#527).
    {"efa", 0.6},
};

}  // namespace

std::optional<double> transport_fraction(std::string_view transport) {
  for (const auto& t : kTransports)
    if (transport == t.name) return t.fraction;
  return std::nullopt;
}

std::string transport_names() {
  std::string out;
  for (const auto& t : kTransports) out += (out.empty() ? "" : ", ") + std::string(t.name);
  return out;
}

}  // namespace fuseplan
