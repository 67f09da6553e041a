// Round classes from patterns, and the schedules of the shared phases.
#include "common.hpp"

#include <algorithm>
#include <numeric>

namespace fuseplan::coll {

RoundClass round_class(const Topo& t, const Net& net, const Flows& flows, double flow, double port,
                       double reduce, int repeat) {
  RoundClass c;
  c.repeat = repeat;
  c.port = port;
  c.reduce = reduce;
  std::vector<int> out(t.nodes(), 0), in(t.nodes(), 0);
  for (auto [s, d] : flows) {
    if (t.node(s) == t.node(d)) {
      c.intra = true;
    } else {
      c.inter = true;
      ++out[t.node(s)];
      ++in[t.node(d)];
    }
  }
  int busiest = std::max(*std::max_element(out.begin(), out.end()), *std::max_element(in.begin(), in.end()));
  c.nic = busiest * flow / net.nics_per_node;
  return c;
}

int floor_log2(int x) {
  int l = 0;
  while ((2 << l) <= x) ++l;
  return l;
}

int ceil_log2(int x) {
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

void merge_rounds(Schedule& s, const Schedule& extra, size_t at) {
  if (s.rounds.size() < at + extra.rounds.size()) s.rounds.resize(at + extra.rounds.size());
  for (size_t i = 0; i < extra.rounds.size(); ++i) {
    auto& dst = s.rounds[at + i].transfers;
    const auto& src = extra.rounds[i].transfers;
    dst.insert(dst.end(), src.begin(), src.end());
  }
}

std::vector<int> iota_members(int first, int n, int stride) {
  std::vector<int> m(n);
  for (int i = 0; i < n; ++i) m[i] = first + i * stride;
  return m;
}

void ring_reduce_scatter(Schedule& s, const std::vector<int>& m, int64_t off, int64_t len) {
  const int M = static_cast<int>(m.size());
  for (int step = 0; step < M - 1; ++step) {
    Round r;
    for (int i = 0; i < M; ++i) {
      int chunk = ((i - step) % M + M) % M;
      r.transfers.push_back({m[i], m[(i + 1) % M], off + seg_begin(len, M, chunk), seg_len(len, M, chunk), true});
    }
    s.rounds.push_back(std::move(r));
  }
}

void ring_allgather(Schedule& s, const std::vector<int>& m, int64_t off, int64_t len) {
  const int M = static_cast<int>(m.size());
  for (int step = 0; step < M - 1; ++step) {
    Round r;
    for (int i = 0; i < M; ++i) {
      int chunk = ((i + 1 - step) % M + M) % M;
      r.transfers.push_back({m[i], m[(i + 1) % M], off + seg_begin(len, M, chunk), seg_len(len, M, chunk), false});
    }
    s.rounds.push_back(std::move(r));
  }
}

Flows ring_flows(const std::vector<int>& m) {
  Flows f;
  for (size_t i = 0; i < m.size(); ++i) f.emplace_back(m[i], m[(i + 1) % m.size()]);
  return f;
}

std::vector<std::pair<int64_t, int64_t>> halving_reduce_scatter(Schedule& s, const std::vector<int>& m,
                                                               int64_t off, int64_t len) {
  const int P = static_cast<int>(m.size());
  std::vector<std::pair<int64_t, int64_t>> range(P, {off, off + len});
  for (int mask = 1; mask < P; mask <<= 1) {
    Round r;
    auto next = range;
    for (int i = 0; i < P; ++i) {
      int partner = i ^ mask;
      auto [lo, hi] = range[i];
      int64_t mid = lo + (hi - lo) / 2;
      // The lower-numbered rank keeps the lower half and sends the upper half.
      if (i < partner) {
        r.transfers.push_back({m[i], m[partner], mid, hi - mid, true});
        next[i] = {lo, mid};
      } else {
        r.transfers.push_back({m[i], m[partner], lo, mid - lo, true});
        next[i] = {mid, hi};
      }
    }
    range = next;
    s.rounds.push_back(std::move(r));
  }
  return range;
}

void doubling_allgather(Schedule& s, const std::vector<int>& m, std::vector<std::pair<int64_t, int64_t>> range) {
  const int P = static_cast<int>(m.size());
  for (int mask = P / 2; mask >= 1; mask >>= 1) {
    Round r;
    auto next = range;
    for (int i = 0; i < P; ++i) {
      int partner = i ^ mask;
      r.transfers.push_back({m[i], m[partner], range[i].first, range[i].second - range[i].first, false});
      next[i] = {std::min(range[i].first, range[partner].first), std::max(range[i].second, range[partner].second)};
    }
    range = next;
    s.rounds.push_back(std::move(r));
  }
}

std::vector<int> fold_members(const std::vector<int>& m) {
  const int p = static_cast<int>(m.size());
  const int rem = p - (1 << floor_log2(p));
  std::vector<int> out;
  for (int i = 0; i < p; ++i)
    if (i >= 2 * rem || i % 2 == 1) out.push_back(m[i]);
  return out;
}

Flows fold_flows(const std::vector<int>& m) {
  const int p = static_cast<int>(m.size());
  Flows f;
  for (int i = 0; i < p - (1 << floor_log2(p)); ++i) f.emplace_back(m[2 * i], m[2 * i + 1]);
  return f;
}

Flows xor_flows(const std::vector<int>& m, int mask) {
  Flows f;
  for (size_t i = 0; i < m.size(); ++i) f.emplace_back(m[i], m[i ^ static_cast<size_t>(mask)]);
  return f;
}

Flows reversed(const Flows& f) {
  Flows out;
  for (auto [x, y] : f) out.emplace_back(y, x);
  return out;
}

void fold_in(Schedule& s, const std::vector<int>& m, int64_t count) {
  auto f = fold_flows(m);
  if (f.empty()) return;
  Round r;
  for (auto [src, dst] : f) r.transfers.push_back({src, dst, 0, count, true});
  s.rounds.push_back(std::move(r));
}

void fold_out(Schedule& s, const std::vector<int>& m, int64_t count) {
  auto f = fold_flows(m);
  if (f.empty()) return;
  Round r;
  for (auto [src, dst] : reversed(f)) r.transfers.push_back({src, dst, 0, count, false});
  s.rounds.push_back(std::move(r));
}

void rabenseifner_profile(Profile& prof, const Topo& t, const Net& net, const std::vector<int>& m) {
  if (m.size() < 2) return;
  const auto members = fold_members(m);
  const auto fold = fold_flows(m);
  if (!fold.empty()) prof.push_back(round_class(t, net, fold, 1, 1, 1));
  std::vector<RoundClass> rs;
  double frac = 0.5;
  for (size_t mask = 1; mask < members.size(); mask <<= 1, frac /= 2)
    rs.push_back(round_class(t, net, xor_flows(members, static_cast<int>(mask)), frac, frac, frac));
  prof.insert(prof.end(), rs.begin(), rs.end());
  for (auto it = rs.rbegin(); it != rs.rend(); ++it) {  // allgather: same pairs, reversed
    RoundClass ag = *it;
    ag.reduce = 0;
    prof.push_back(ag);
  }
  if (!fold.empty()) prof.push_back(round_class(t, net, reversed(fold), 1, 1, 0));
}

void rabenseifner_schedule(Schedule& s, const std::vector<int>& m, int64_t count) {
  if (m.size() < 2) return;
  const auto members = fold_members(m);
  fold_in(s, m, count);
  auto ranges = halving_reduce_scatter(s, members, 0, count);
  doubling_allgather(s, members, ranges);
  fold_out(s, m, count);
}

std::string always_applicable(const CollectiveArgs&) { return {}; }

std::string needs_whole_groups(const CollectiveArgs& a) {
  int g = a.group_size();
  if (a.topo.ranks % g)
    return "needs the rank count (" + std::to_string(a.topo.ranks) + ") to be a multiple of the group size (" +
           std::to_string(g) + ")";
  return {};
}

}  // namespace fuseplan::coll

namespace fuseplan::coll {

namespace {
Flows grid_flows(int X, int Y, bool rows) {
  Flows f;
  if (rows) {
    for (int y = 0; y < Y; ++y)
      if (X > 1)
        for (auto e : ring_flows(iota_members(y * X, X))) f.push_back(e);
  } else {
    for (int x = 0; x < X; ++x)
      if (Y > 1)
        for (auto e : ring_flows(iota_members(x, Y, X))) f.push_back(e);
  }
  return f;
}
}  // namespace

Profile rs_ar_ag_profile(const CollectiveArgs& a, int X) {
  const int p = a.topo.ranks, Y = p / X;
  Profile prof;
  if (X > 1) prof.push_back(round_class(a.topo, a.net, grid_flows(X, Y, true), 1.0 / X, 1.0 / X, 1.0 / X, X - 1));
  if (Y > 1) {
    double c = 1.0 / (double(X) * Y);
    auto cols = grid_flows(X, Y, false);
    prof.push_back(round_class(a.topo, a.net, cols, c, c, c, Y - 1));
    prof.push_back(round_class(a.topo, a.net, cols, c, c, 0, Y - 1));
  }
  if (X > 1) prof.push_back(round_class(a.topo, a.net, grid_flows(X, Y, true), 1.0 / X, 1.0 / X, 0, X - 1));
  return prof;
}

Schedule rs_ar_ag_schedule(const CollectiveArgs& a, int X) {
  const int p = a.topo.ranks, Y = p / X;
  Schedule s;
  size_t at = 0;
  for (int y = 0; y < Y; ++y) {
    Schedule part;
    ring_reduce_scatter(part, iota_members(y * X, X), 0, a.count);
    merge_rounds(s, part, at);
  }
  at = s.rounds.size();
  // Row member i now holds chunk (i + 1) % X; column i allreduces exactly that chunk.
  for (int x = 0; x < X; ++x) {
    int chunk = (x + 1) % X;
    int64_t off = seg_begin(a.count, X, chunk), len = seg_len(a.count, X, chunk);
    Schedule part;
    auto col = iota_members(x, Y, X);
    ring_reduce_scatter(part, col, off, len);
    ring_allgather(part, col, off, len);
    merge_rounds(s, part, at);
  }
  at = s.rounds.size();
  for (int y = 0; y < Y; ++y) {
    Schedule part;
    ring_allgather(part, iota_members(y * X, X), 0, a.count);
    merge_rounds(s, part, at);
  }
  return s;
}

}  // namespace fuseplan::coll
