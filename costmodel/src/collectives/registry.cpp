// The algorithm table, the round-cost evaluator, schedule replay and bandwidth helpers.
#include <algorithm>
#include <map>
#include <unordered_map>

#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan {

extern const Algorithm kRing, kRecursiveDoubling, kRabenseifner, kBinaryBlocks, kDoubleBinaryTree,
    kHierarchical, kHierarchicalHd, kHierarchicalRs, kTorus2d, kMpi, kNccl, kNcclRing, kNcclTree, kNcclNvls, kNcclNvlsTree,
    kNcclCollnetDirect, kNcclCollnetChain;

// The textbook algorithms (MPI clusters), the executor's MPI baseline, then NCCL's
// (NCCL clusters): `nccl` is NCCL's own choice among the rest.
const std::vector<Algorithm>& algorithms() {
  static const std::vector<Algorithm> table{
      kRing,      kRecursiveDoubling, kRabenseifner, kBinaryBlocks, kDoubleBinaryTree, kHierarchical,
      kHierarchicalHd, kHierarchicalRs, kTorus2d, kMpi, kNccl, kNcclRing, kNcclTree, kNcclNvls, kNcclNvlsTree,
      kNcclCollnetDirect, kNcclCollnetChain};
  return table;
}

std::string algorithm_names() {
  std::string out;
  for (const auto& a : algorithms()) out += (out.empty() ? "" : ", ") + std::string(a.name);
  return out;
}

const Algorithm& find_algorithm(std::string_view name, const std::string& flag) {
  for (const auto& a : algorithms())
    if (a.name == name) return a;
  throw InputError(flag + ": unknown algorithm '" + std::string(name) + "' (valid: auto, " + algorithm_names() + ")");
}

Net Net::uniform(double alpha, double beta, double gamma) {
  Net n;
  n.intra_alpha = n.inter_alpha = alpha;
  n.intra_beta = n.inter_beta = beta;
  n.gamma = gamma;
  return n;
}

// The closed form of args.variant: NCCL's direct formula when it applies, else the profile.
Cost variant_cost(const Algorithm& a, const CollectiveArgs& v) {
  if (a.direct && v.nccl) return a.direct(v);
  return evaluate(a.profile(v), v.net, v.bytes());
}

int best_variant(const Algorithm& a, const CollectiveArgs& args) {
  if (args.variant >= 0 || a.variants == 1) return std::max(args.variant, 0);
  if (a.choose && a.direct && args.nccl) return a.choose(args);
  CollectiveArgs v = args;
  int best = 0;
  double best_t = 0;
  for (v.variant = 0; v.variant < a.variants; ++v.variant) {
    double t = variant_cost(a, v).total();
    if (v.variant == 0 || t < best_t) {
      best = v.variant;
      best_t = t;
    }
  }
  return best;
}

Cost closed_form_cost(const Algorithm& a, const CollectiveArgs& args) {
  CollectiveArgs v = args;
  v.variant = best_variant(a, args);
  return variant_cost(a, v);
}

Schedule schedule_of(const Algorithm& a, const CollectiveArgs& args) {
  CollectiveArgs v = args;
  v.variant = best_variant(a, args);
  return a.schedule(v);
}

int CollectiveArgs::group_size() const { return group > 0 ? group : std::min(topo.per_node, topo.ranks); }

namespace {
struct LinkTime {
  double lat = 0, bw = 0;
  double total() const { return lat + bw; }
};
LinkTime intra_time(const Net& net, double load) { return {net.intra_alpha, net.intra_beta * load}; }
LinkTime inter_time(const Net& net, double load, double nic_load) {
  return {net.inter_alpha + net.stage_alpha, net.inter_beta * std::max(load, nic_load) + net.stage_beta * load};
}
}  // namespace

Cost evaluate(const Profile& p, const Net& net, double n) {
  Cost c;
  for (const auto& r : p) {
    LinkTime worst;
    if (r.intra) worst = intra_time(net, r.port * n);
    if (r.inter) {
      LinkTime g = inter_time(net, r.port * n, r.nic * n);
      if (!r.intra || g.total() > worst.total()) worst = g;
    }
    c.latency_s += r.repeat * worst.lat;
    c.bandwidth_s += r.repeat * worst.bw;
    c.reduce_s += r.repeat * net.gamma * r.reduce * n;
    c.rounds += r.repeat;
  }
  return c;
}

AffineTail affine_tail(const Profile& p, const Net& net) {
  AffineTail t;
  for (const auto& r : p) {
    // Each link class as intercept + slope x n, as intra_time and inter_time compute them.
    double al = net.intra_alpha, sl = net.intra_beta * r.port;
    double ag = net.inter_alpha + net.stage_alpha, sg = net.inter_beta * std::max(r.port, r.nic) + net.stage_beta * r.port;
    double a = 0, s = 0;
    if (r.intra && r.inter) {
      const bool inter_wins = sg > sl || (sg == sl && ag > al);
      a = inter_wins ? ag : al;
      s = inter_wins ? sg : sl;
      double other_a = inter_wins ? al : ag, other_s = inter_wins ? sl : sg;
      if (other_a > a && s > other_s) t.from_bytes = std::max(t.from_bytes, (other_a - a) / (s - other_s));
    } else if (r.intra) {
      a = al;
      s = sl;
    } else if (r.inter) {
      a = ag;
      s = sg;
    }
    t.a += r.repeat * a;
    t.b += r.repeat * s + r.repeat * net.gamma * r.reduce;
  }
  return t;
}

Cost replay(const Schedule& s, const CollectiveArgs& a) {
  const Topo& t = a.topo;
  const Net& net = a.net;
  std::vector<double> out(t.ranks, 0), in(t.ranks, 0), red(t.ranks, 0);
  std::vector<double> node_out(t.nodes(), 0), node_in(t.nodes(), 0);
  Cost c;
  for (const auto& round : s.rounds) {
    if (round.transfers.empty()) continue;
    for (const auto& x : round.transfers) {
      double b = double(x.count) * a.elem_bytes;
      out[x.src] += b;
      in[x.dst] += b;
      if (x.reduce) red[x.dst] += b;
      if (t.node(x.src) != t.node(x.dst)) {
        node_out[t.node(x.src)] += b;
        node_in[t.node(x.dst)] += b;
      }
    }
    LinkTime worst;
    double worst_red = 0, worst_total = -1;
    for (const auto& x : round.transfers) {
      double load = std::max(out[x.src], in[x.dst]);
      LinkTime lt;
      if (t.node(x.src) == t.node(x.dst)) {
        lt = intra_time(net, load);
      } else {
        double nic = std::max(node_out[t.node(x.src)], node_in[t.node(x.dst)]) / net.nics_per_node;
        lt = inter_time(net, load, nic);
      }
      double r = net.gamma * red[x.dst];
      if (lt.total() + r > worst_total) {
        worst_total = lt.total() + r;
        worst = lt;
        worst_red = r;
      }
    }
    c.latency_s += worst.lat;
    c.bandwidth_s += worst.bw;
    c.reduce_s += worst_red;
    c.rounds += 1;
    for (const auto& x : round.transfers) {
      out[x.src] = in[x.dst] = red[x.dst] = 0;
      node_out[t.node(x.src)] = node_in[t.node(x.dst)] = 0;
    }
  }
  return c;
}

void apply_schedule(const Schedule& s, std::vector<std::vector<double>>& buf) {
  struct Pending {
    int dst;
    int64_t offset;
    bool reduce;
    std::vector<double> data;
  };
  for (const auto& round : s.rounds) {
    std::vector<Pending> pending;
    for (const auto& x : round.transfers) {
      const auto& src = buf.at(x.src);
      if (x.offset < 0 || x.offset + x.count > static_cast<int64_t>(src.size()))
        throw RunError("schedule transfer out of range");
      pending.push_back({x.dst, x.offset, x.reduce, {src.begin() + x.offset, src.begin() + x.offset + x.count}});
    }
    for (auto& p : pending) {
      auto& dst = buf.at(p.dst);
      for (size_t i = 0; i < p.data.size(); ++i) {
        if (p.reduce) dst[p.offset + i] += p.data[i];
        else dst[p.offset + i] = p.data[i];
      }
    }
  }
}

double algbw_GBps(double bytes, double seconds) { return bytes / 1e9 / seconds; }
double busbw_GBps(double bytes, double seconds, int ranks) {
  return algbw_GBps(bytes, seconds) * (ranks > 1 ? 2.0 * (ranks - 1) / ranks : 0.0);
}

}  // namespace fuseplan
