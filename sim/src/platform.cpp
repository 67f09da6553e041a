// Platform builder: split-duplex rank ports and node NICs, explicit routes.
#include "platform.hpp"

#include <algorithm>
#include <limits>

#include "fuseplan/models/error.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

Platform build_platform(const Cluster& c, const Topo& topo, const Net& net) {
  if (!c.calibrated.empty())
    throw InputError("simulate: cluster " + c.name + " has calibrated algorithms; the simulator uses its links");
  if (net.stage_alpha > 0 || net.stage_beta > 0)
    throw InputError("simulate: cluster " + c.name + " stages inter-node messages through host memory (gdr false), "
                     "which the simulator does not model yet");
  Platform p;
  auto* zone = sg4::create_full_zone("cluster");
  // One "flop" = one byte reduced.
  const double speed = net.gamma > 0 ? 1.0 / net.gamma : 1e18;
  std::vector<sg4::Link*> port_up, port_down, nic_up, nic_down;
  auto duplex = [&](const std::string& name, double beta, double alpha, std::vector<sg4::Link*>& up,
                    std::vector<sg4::Link*>& down) {
    double bw = beta > 0 ? 1.0 / beta : std::numeric_limits<double>::max() / 4;
    auto* l = zone->create_split_duplex_link(name, bw);
    l->set_latency(alpha / 2);
    l->seal();
    up.push_back(l->get_link_up());
    down.push_back(l->get_link_down());
  };
  for (int r = 0; r < topo.ranks; ++r) {
    p.hosts.push_back(zone->create_host(std::string("rank").append(std::to_string(r)), speed));
    duplex(std::string("port").append(std::to_string(r)), net.intra_beta, net.intra_alpha, port_up, port_down);
  }
  // Every NIC is its own link; a rank sends and receives through NIC (local rank mod
  // NICs per node), so one flow gets one NIC's bandwidth and a node's flows spread over
  // its NICs (the cost model's max(port, per-NIC load)).
  const int nics = std::max(1, net.nics_per_node);
  for (int n = 0; n < topo.nodes() * nics; ++n)
    duplex(std::string("nic").append(std::to_string(n)), net.inter_beta, net.inter_alpha, nic_up, nic_down);
  auto nic_of = [&](int r) { return topo.node(r) * nics + (r % topo.per_node) % nics; };
  // An oversubscribed fat-tree: the nodes under a leaf switch share its uplink to the
  // core, (nodes per leaf x NICs x NIC bandwidth) / oversubscription each way.
  int per_leaf = 0;
  std::vector<sg4::Link*> leaf_up, leaf_down;
  if (c.inter && c.inter->topology == "fat-tree" && c.inter->oversubscription > 1) {
    per_leaf = c.inter->nodes_per_leaf;
    if (per_leaf < 1)
      throw InputError("simulate: " + c.source + ": inter_node.oversubscription > 1 needs inter_node.nodes_per_leaf");
    for (int leaf = 0; leaf * per_leaf < topo.nodes(); ++leaf)
      duplex(std::string("leaf").append(std::to_string(leaf)),
             net.inter_beta * c.inter->oversubscription / (double(per_leaf) * nics), 0.0, leaf_up, leaf_down);
  }
  using Dir = sg4::LinkInRoute::Direction;
  for (int a = 0; a < topo.ranks; ++a)
    for (int b = 0; b < topo.ranks; ++b) {
      if (a == b) continue;
      std::vector<sg4::LinkInRoute> links;
      if (topo.node(a) == topo.node(b)) {
        links = {sg4::LinkInRoute(port_up[a], Dir::NONE), sg4::LinkInRoute(port_down[b], Dir::NONE)};
      } else {
        links = {sg4::LinkInRoute(nic_up[nic_of(a)], Dir::NONE)};
        int la = per_leaf ? topo.node(a) / per_leaf : 0, lb = per_leaf ? topo.node(b) / per_leaf : 0;
        if (la != lb) {
          links.emplace_back(leaf_up[la], Dir::NONE);
          links.emplace_back(leaf_down[lb], Dir::NONE);
        }
        links.emplace_back(nic_down[nic_of(b)], Dir::NONE);
      }
      zone->add_route(p.hosts[a]->get_netpoint(), p.hosts[b]->get_netpoint(), nullptr, nullptr, links, false);
    }
  zone->seal();
  return p;
}

}  // namespace fuseplan::sim
