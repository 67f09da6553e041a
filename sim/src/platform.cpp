// Platform builder: one zone per node (rank ports, PCIe switch uplinks, NICs, explicit
// routes to a gateway) under a root zone whose node-to-node routes cross the fabric
// (fat-tree leaf uplinks, torus rings, dragonfly local and global links). Routes are
// stored per node pair and per pair of ranks inside a node, never per pair of ranks.
#include "platform.hpp"

#include <algorithm>
#include <limits>

#include "fuseplan/models/error.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

namespace {

using Dir = sg4::LinkInRoute::Direction;
using Route = std::vector<sg4::LinkInRoute>;

// A split-duplex link: `up` carries the first direction, `down` the other.
struct Duplex {
  sg4::Link* up = nullptr;
  sg4::Link* down = nullptr;
};

Duplex make_duplex(sg4::NetZone* zone, const std::string& name, double beta, double alpha) {
  double bw = beta > 0 ? 1.0 / beta : std::numeric_limits<double>::max() / 4;
  auto* l = zone->create_split_duplex_link(name, bw);
  l->set_latency(alpha / 2);
  l->seal();
  return {l->get_link_up(), l->get_link_down()};
}

std::string numbered(const char* prefix, int i) { return std::string(prefix).append(std::to_string(i)); }
std::string numbered(const char* prefix, int i, int j) {
  return numbered(prefix, i).append("_").append(std::to_string(j));
}

// The links between node `a` and node `b` (a != b) on the inter-node fabric, beyond the
// two NICs. On a full-bisection fabric: the source's unlimited core link.
class Fabric {
 public:
  Fabric(const Cluster& c, const Net& net, sg4::NetZone* root) {
    // SimGrid forbids empty routes: at full bisection a node reaches the core through an
    // unshared, unlimited link of its own (one link for all would tie every flow of the
    // simulation into one constraint, which makes each flow event cost O(flows)).
    for (int node = 0; node < c.nodes; ++node)
      core_.push_back(root->create_link(numbered("core", node), std::numeric_limits<double>::max() / 4)
                          ->set_sharing_policy(sg4::Link::SharingPolicy::FATPIPE)
                          ->seal());
    if (!c.inter) return;
    const auto& n = *c.inter;
    const double link_beta = n.fabric_link_bw_Gbps > 0 ? net.inter_beta * n.nic_bw_Gbps / n.fabric_link_bw_Gbps
                                                        : net.inter_beta;
    const int nics = std::max(1, net.nics_per_node);
    if (n.topology == "fat-tree" && n.oversubscription > 1) {
      // The nodes under a leaf switch share its uplink to the core: (nodes per leaf x
      // NICs x NIC bandwidth) / oversubscription each way.
      per_leaf_ = n.nodes_per_leaf;
      if (per_leaf_ < 1)
        throw InputError("simulate: " + c.source + ": inter_node.oversubscription > 1 needs inter_node.nodes_per_leaf");
      for (int leaf = 0; leaf * per_leaf_ < c.nodes; ++leaf)
        leaf_.push_back(make_duplex(root, numbered("leaf", leaf),
                                    net.inter_beta * n.oversubscription / (double(per_leaf_) * nics), 0.0));
    } else if (n.topology == "torus") {
      if (n.torus_dims.empty())
        throw InputError("simulate: " + c.source + ": topology torus needs inter_node.torus_dims (e.g. [8, 8, 4])");
      dims_ = n.torus_dims;
      // ring_[d][node]: the link from `node` to its + neighbour in dimension d.
      for (size_t d = 0; d < dims_.size(); ++d) {
        ring_.emplace_back();
        if (dims_[d] == 1) continue;
        for (int node = 0; node < c.nodes; ++node)
          ring_.back().push_back(make_duplex(root, numbered("torus", int(d), node), link_beta, 0.0));
      }
    } else if (n.topology == "dragonfly") {
      if (!n.dragonfly)
        throw InputError("simulate: " + c.source +
                         ": topology dragonfly needs inter_node.dragonfly {groups, routers_per_group, nodes_per_router}");
      df_ = *n.dragonfly;
      const int R = df_.routers_per_group, G = df_.groups;
      // Local links: every pair of routers of a group; global links: every pair of groups.
      local_.resize(size_t(G) * R * R);
      for (int g = 0; g < G; ++g)
        for (int i = 0; i < R; ++i)
          for (int j = i + 1; j < R; ++j)
            local_[(size_t(g) * R + i) * R + j] = make_duplex(root, numbered("local", g * R + i, j), link_beta, 0.0);
      global_.resize(size_t(G) * G);
      for (int g = 0; g < G; ++g)
        for (int h = g + 1; h < G; ++h) global_[size_t(g) * G + h] = make_duplex(root, numbered("global", g, h), link_beta, 0.0);
    }
    // fat-tree at full bisection and star: the NICs are the only shared links.
  }

  Route path(int a, int b) const {
    Route r;
    if (!leaf_.empty()) {
      int la = a / per_leaf_, lb = b / per_leaf_;
      if (la != lb) r = {{leaf_[la].up, Dir::NONE}, {leaf_[lb].down, Dir::NONE}};
    } else if (!dims_.empty()) {
      torus_path(a, b, r);
    } else if (df_.groups > 0) {
      dragonfly_path(a, b, r);
    }
    if (r.empty()) r.emplace_back(core_[a], Dir::NONE);
    return r;
  }

 private:
  // Dimension-order routing, each dimension the shorter way round (ties go +).
  void torus_path(int a, int b, Route& r) const {
    std::vector<int> ca = coords(a), cb = coords(b);
    for (size_t d = 0; d < dims_.size(); ++d) {
      const int k = dims_[d];
      int fwd = ((cb[d] - ca[d]) % k + k) % k;
      bool plus = fwd <= k - fwd;
      int steps = plus ? fwd : k - fwd;
      for (int s = 0; s < steps; ++s) {
        if (plus) {
          r.emplace_back(ring_[d][index(ca)].up, Dir::NONE);
          ca[d] = (ca[d] + 1) % k;
        } else {
          ca[d] = (ca[d] - 1 + k) % k;
          r.emplace_back(ring_[d][index(ca)].down, Dir::NONE);
        }
      }
    }
  }
  std::vector<int> coords(int node) const {
    std::vector<int> c(dims_.size());
    for (size_t d = 0; d < dims_.size(); ++d) {
      c[d] = node % dims_[d];
      node /= dims_[d];
    }
    return c;
  }
  int index(const std::vector<int>& c) const {
    int node = 0;
    for (size_t d = dims_.size(); d-- > 0;) node = node * dims_[d] + c[d];
    return node;
  }

  // Minimal routing: local hop to the router holding the global link to the destination
  // group, the global link, a local hop to the destination router.
  void dragonfly_path(int a, int b, Route& r) const {
    const int R = df_.routers_per_group;
    int ra = a / df_.nodes_per_router, rb = b / df_.nodes_per_router;
    int ga = ra / R, gb = rb / R;
    if (ga == gb) {
      local_hop(ga, ra % R, rb % R, r);
      return;
    }
    local_hop(ga, ra % R, gateway_router(ga, gb), r);
    const Duplex& g = global_[size_t(std::min(ga, gb)) * df_.groups + std::max(ga, gb)];
    r.emplace_back(ga < gb ? g.up : g.down, Dir::NONE);
    local_hop(gb, gateway_router(gb, ga), rb % R, r);
  }
  // The router of group g that holds its global link to group h.
  int gateway_router(int g, int h) const { return (h < g ? h : h - 1) % df_.routers_per_group; }
  void local_hop(int g, int i, int j, Route& r) const {
    if (i == j) return;
    const int R = df_.routers_per_group;
    const Duplex& l = local_[(size_t(g) * R + std::min(i, j)) * R + std::max(i, j)];
    r.emplace_back(i < j ? l.up : l.down, Dir::NONE);
  }

  std::vector<sg4::Link*> core_;
  int per_leaf_ = 0;
  std::vector<Duplex> leaf_;
  std::vector<int> dims_;
  std::vector<std::vector<Duplex>> ring_;
  InterNodeNetwork::Dragonfly df_;
  std::vector<Duplex> local_, global_;
};

// The calibrated clusters' flat network: rank a reaches rank b through a's port up and
// b's port down, both latency-free (the wire adds each round's latency).
Platform flat_platform(const Topo& topo) {
  Platform p;
  auto* zone = sg4::create_full_zone("flat");
  std::vector<Duplex> ports;
  for (int r = 0; r < topo.ranks; ++r) {
    p.hosts.push_back(zone->create_host(numbered("rank", r), 1e18));
    ports.push_back(make_duplex(zone, numbered("port", r), 1 / kFlatBytesPerS, 0.0));
  }
  for (int a = 0; a < topo.ranks; ++a)
    for (int b = 0; b < topo.ranks; ++b)
      if (a != b)
        zone->add_route(p.hosts[a]->get_netpoint(), p.hosts[b]->get_netpoint(), nullptr, nullptr,
                        {{ports[a].up, Dir::NONE}, {ports[b].down, Dir::NONE}}, false);
  zone->seal();
  return p;
}

}  // namespace

namespace {

// The time a schedule's messages take on the links NCCL's bandwidth figure assumes: per
// round, the busiest link's bytes over its bandwidth, inside a node through the sender's
// port up and the receiver's port down (as build_platform routes them), between nodes
// through a rail of its own per GPU (NCCL's channels spread over the rails). The platform
// itself may have fewer NICs than GPUs: the sharing then shows in the simulation only.
double busiest_link_s(const Schedule& s, const Topo& t, const Net& net, int elem_bytes) {
  const int nics = std::max(1, t.per_node);
  std::vector<double> port_up(t.ranks), port_down(t.ranks), nic_up(size_t(t.nodes()) * nics),
      nic_down(size_t(t.nodes()) * nics);
  double total = 0;
  for (const auto& round : s.rounds) {
    if (round.transfers.empty()) continue;
    double worst = 0;
    for (const auto& x : round.transfers) {
      const double b = double(x.count) * elem_bytes;
      if (t.node(x.src) == t.node(x.dst)) {
        worst = std::max({worst, (port_up[x.src] += b) * net.intra_beta, (port_down[x.dst] += b) * net.intra_beta});
      } else {
        const size_t up = size_t(t.node(x.src)) * nics + (x.src % t.per_node) % nics;
        const size_t down = size_t(t.node(x.dst)) * nics + (x.dst % t.per_node) % nics;
        worst = std::max({worst, (nic_up[up] += b) * net.inter_beta, (nic_down[down] += b) * net.inter_beta});
      }
    }
    total += worst;
    for (const auto& x : round.transfers) {
      port_up[x.src] = port_down[x.dst] = 0;
      nic_up[size_t(t.node(x.src)) * nics + (x.src % t.per_node) % nics] = 0;
      nic_down[size_t(t.node(x.dst)) * nics + (x.dst % t.per_node) % nics] = 0;
    }
  }
  return total;
}

}  // namespace

Net platform_net(const Cluster& c, const CollectiveModel& coll) {
  Net n = coll.net();
  if (coll.nccl() && c.calibrated.empty()) n.intra_alpha = n.inter_alpha = n.stage_alpha = 0;
  return n;
}

static Wire wire_as_swept(const Cluster& c, const CollectiveModel& coll, const CollectiveChoice& choice,
                          int64_t count, Precision transfer, const Schedule& schedule) {
  const double bytes = double(count) * bytes_per_element(transfer);
  if (coll.nccl() && c.calibrated.empty()) {
    int rounds = 0;
    for (const auto& r : schedule.rounds) rounds += !r.transfers.empty();
    if (rounds == 0) return {1, 0, 0};
    Wire w{1, choice.cost.latency_s / rounds, coll.net().gamma};
    if (choice.algorithm->library == "nccl") {
      const double replayed = busiest_link_s(schedule, coll.topo(), coll.net(), bytes_per_element(transfer));
      if (replayed > 0) w.scale = choice.cost.bandwidth_s / coll.bandwidth_factor() / replayed;  // as swept
      w.gamma = 0;  // NCCL's bandwidth term includes the (pipelined) reduction
    }
    return w;
  }
  if (c.calibrated.empty()) return {1, 0, coll.net().gamma};
  if (const auto k = coll.calibration(choice.algorithm->name, bytes))
    return {k->beta_us_per_MB * 1e-12 * kFlatBytesPerS, k->alpha_us * 1e-6, k->gamma_us_per_MB * 1e-12};
  if (coll.topo().nodes() > 1) {
    std::string names;
    for (const auto& [name, k] : c.calibrated) names += (names.empty() ? "" : ", ") + name;
    throw InputError("simulate: " + c.source + " is calibrated for " + names + " only; " +
                     std::string(choice.algorithm->name) +
                     " across nodes cannot run on the calibration's flat network (calibrate it too, or give an "
                     "uncalibrated cluster file)");
  }
  const Net& n = coll.net();
  return {n.intra_beta * kFlatBytesPerS, n.intra_alpha, n.gamma};
}

// A training step's wire: its bytes take Cluster::job_bandwidth_factor times as long, as
// the cost model's bandwidth terms do.
Wire wire_for(const Cluster& c, const CollectiveModel& coll, const CollectiveChoice& choice, int64_t count,
              Precision transfer, const Schedule& schedule) {
  Wire w = wire_as_swept(c, coll, choice, count, transfer, schedule);
  w.scale *= coll.bandwidth_factor();
  return w;
}

Platform build_platform(const Cluster& c, const Topo& topo, const Net& net) {
  if (!c.calibrated.empty()) return flat_platform(topo);
  if (net.stage_alpha > 0 || net.stage_beta > 0)
    throw InputError("simulate: cluster " + c.name + " stages inter-node messages through host memory (gdr false), "
                     "which the simulator does not model yet");
  Platform p;
  auto* root = sg4::create_full_zone("cluster");
  Fabric fabric(c, net, root);
  // One "flop" = one byte reduced.
  const double speed = net.gamma > 0 ? 1.0 / net.gamma : 1e18;
  const int nics = std::max(1, net.nics_per_node);
  // PCIe: the GPUs behind one switch share its uplink to the root complex (and the NICs).
  const int per_switch = c.intra.kind == "pcie" && c.intra.uplink_bw_GBps > 0 && c.intra.gpus_per_switch > 0 &&
                                 c.intra.gpus_per_switch < topo.per_node
                             ? c.intra.gpus_per_switch
                             : 0;
  std::vector<sg4::NetZone*> zones;
  std::vector<simgrid::kernel::routing::NetPoint*> gateways;
  for (int node = 0; node < topo.nodes(); ++node) {
    auto* zone = sg4::create_full_zone(numbered("node", node));
    zone->set_parent(root);
    const int first = node * topo.per_node, count = std::min(topo.per_node, topo.ranks - first);
    std::vector<Duplex> ports, nic, uplink;
    std::vector<sg4::Host*> hosts;
    for (int i = 0; i < count; ++i) {
      hosts.push_back(zone->create_host(numbered("rank", first + i), speed));
      ports.push_back(make_duplex(zone, numbered("port", first + i), net.intra_beta, net.intra_alpha));
    }
    // Every NIC is its own link; local rank i uses NIC i mod NICs, so one flow gets one
    // NIC's bandwidth and a node's flows spread over its NICs (the cost model's
    // max(port, per-NIC load)). Inter-node messages do not cross the rank's port.
    for (int k = 0; k < nics; ++k)
      nic.push_back(make_duplex(zone, numbered("nic", node * nics + k), net.inter_beta, net.inter_alpha));
    if (per_switch)
      for (int s = 0; s * per_switch < count; ++s)
        uplink.push_back(make_duplex(zone, numbered("pcie_uplink", node, s), 1e-9 / c.intra.uplink_bw_GBps, 0.0));
    auto* gw = zone->create_router(numbered("gw", node));
    for (int a = 0; a < count; ++a) {
      for (int b = 0; b < count; ++b) {
        if (a == b) continue;
        Route r{{ports[a].up, Dir::NONE}};
        if (per_switch && a / per_switch != b / per_switch) {
          r.emplace_back(uplink[a / per_switch].up, Dir::NONE);
          r.emplace_back(uplink[b / per_switch].down, Dir::NONE);
        }
        r.emplace_back(ports[b].down, Dir::NONE);
        zone->add_route(hosts[a]->get_netpoint(), hosts[b]->get_netpoint(), nullptr, nullptr, r, false);
      }
      Route out, in;
      if (per_switch) {
        out.emplace_back(uplink[a / per_switch].up, Dir::NONE);
        in.emplace_back(nic[a % nics].down, Dir::NONE);
        in.emplace_back(uplink[a / per_switch].down, Dir::NONE);
        out.emplace_back(nic[a % nics].up, Dir::NONE);
      } else {
        out.emplace_back(nic[a % nics].up, Dir::NONE);
        in.emplace_back(nic[a % nics].down, Dir::NONE);
      }
      zone->add_route(hosts[a]->get_netpoint(), gw, nullptr, nullptr, out, false);
      zone->add_route(gw, hosts[a]->get_netpoint(), nullptr, nullptr, in, false);
      p.hosts.push_back(hosts[a]);
    }
    zone->seal();
    zones.push_back(zone);
    gateways.push_back(gw);
  }
  for (int a = 0; a < topo.nodes(); ++a)
    for (int b = 0; b < topo.nodes(); ++b)
      if (a != b)
        root->add_route(zones[a]->get_netpoint(), zones[b]->get_netpoint(), gateways[a], gateways[b],
                        fabric.path(a, b), false);
  root->seal();
  return p;
}

}  // namespace fuseplan::sim
