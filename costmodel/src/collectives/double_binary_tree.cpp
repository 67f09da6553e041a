// Double binary tree allreduce (NCCL): two complementary binary trees (a rank interior in
// one is a leaf in the other), each reducing then broadcasting half of the vector in k
// pipelined chunks. Tree A is NCCL's in-order btree over ranks; tree B mirrors it (p even)
// or shifts it by one (p odd). Synchronous rounds: reduce phase H + k - 1 rounds (a node
// of height h sends chunk c up in round h + c), then broadcast phase H + k - 1 rounds.
// In steady state a rank moves 2 chunks of n/(2k) through each port per round (1 when
// p = 2), so
// T = 2(H + k - 1)(alpha + (n/k) beta) + (H + k - 1)(n/k) gamma. The chunk count is a
// variant, k = 2^v for v = 0..8 (1..256 chunks), and callers take the cheapest: the
// continuous optimum k* = sqrt((H-1) n (2 beta + gamma) / (2 alpha)) is within a factor
// sqrt(2) of a power of two, and a fixed set of variants keeps T nondecreasing in n.
// As k grows T -> 2n beta + n gamma: NCCL's "tree algbw = busbw / 2". The closed form
// charges every round the steady-state load; replaying the schedule is slightly faster
// in the pipeline's ramp-up and drain (tests bound the gap).
#include <algorithm>

#include "common.hpp"

namespace fuseplan {
namespace {

constexpr int kVariants = 9;  // k = 1, 2, 4, ..., 256 chunks

struct Tree {
  std::vector<int> up;                  // parent, -1 at the root
  std::vector<std::vector<int>> down;   // children
  std::vector<int> height, depth;       // height: leaves 0; depth: root 0
  int root = 0, max_depth = 0;
};

// NCCL's btree (src/graph/trees.cc): the parent of r clears r's lowest set bit and sets
// the next one up, falling back to clearing only when that leaves the range.
int btree_parent(int n, int r) {
  if (r == 0) return -1;
  int bit = 1;
  while (!(bit & r)) bit <<= 1;
  int up = (r ^ bit) | (bit << 1);
  return up >= n ? (r ^ bit) : up;
}

Tree make_tree(int n, bool second) {
  Tree t;
  t.up.assign(n, -1);
  t.down.assign(n, {});
  // Tree B relabels: mirror (n even) or shift by one (n odd); virtual v -> real map(v).
  auto map = [&](int v) { return !second ? v : (n % 2 == 0 ? n - 1 - v : (v + 1) % n); };
  for (int v = 0; v < n; ++v) {
    int pv = btree_parent(n, v);
    if (pv >= 0) {
      t.up[map(v)] = map(pv);
      t.down[map(pv)].push_back(map(v));
    } else {
      t.root = map(v);
    }
  }
  t.height.assign(n, 0);
  t.depth.assign(n, 0);
  // Breadth-first order from the root gives depths; reverse order gives heights.
  std::vector<int> order{t.root};
  for (size_t i = 0; i < order.size(); ++i)
    for (int c : t.down[order[i]]) {
      t.depth[c] = t.depth[order[i]] + 1;
      order.push_back(c);
    }
  for (auto it = order.rbegin(); it != order.rend(); ++it)
    if (t.up[*it] >= 0) t.height[t.up[*it]] = std::max(t.height[t.up[*it]], t.height[*it] + 1);
  t.max_depth = t.height[t.root];
  return t;
}

int tree_height(int n) { return std::max(make_tree(n, false).max_depth, make_tree(n, true).max_depth); }

// The variant's chunk count; the schedule cannot cut fewer than one element per chunk.
int chunks(const CollectiveArgs& a) { return 1 << std::clamp(a.variant, 0, kVariants - 1); }
int schedule_chunks(const CollectiveArgs& a) {
  return static_cast<int>(std::min<int64_t>(chunks(a), std::max<int64_t>(1, a.count / 2)));
}

std::string not_applicable(const CollectiveArgs& a) {
  if (a.count < 2 && a.topo.ranks > 1) return "needs at least 2 elements (one per tree)";
  return {};
}

// What the profile of every variant shares: the trees' height, the busiest port's
// steady-state chunks, and the up and down rounds' classes for flows of size 1.
struct TreeRounds {
  int p = 0, per_node = 0, nics = 0;
  int H = 0, load = 0;
  RoundClass up, down;
};

// The collective model asks for every variant of one layout in a row: the trees of the
// last layout are kept (per thread), so 9 variants build them once.
const TreeRounds& tree_rounds(const CollectiveArgs& a) {
  thread_local TreeRounds last;
  const int p = a.topo.ranks;
  if (last.p == p && last.per_node == a.topo.per_node && last.nics == a.net.nics_per_node) return last;
  Tree A = make_tree(p, false), B = make_tree(p, true);
  TreeRounds t;
  t.p = p, t.per_node = a.topo.per_node, t.nics = a.net.nics_per_node;
  t.H = std::max(A.max_depth, B.max_depth);
  coll::Flows upf, downf;
  for (const Tree* tree : {&A, &B})
    for (int r = 0; r < p; ++r)
      if (tree->up[r] >= 0) {
        upf.emplace_back(r, tree->up[r]);
        downf.emplace_back(tree->up[r], r);
      }
  // Steady-state chunks through the busiest port: children of both trees (reduce in,
  // broadcast out) or parents of both trees; 2 for p > 2, 1 for p = 2.
  for (int r = 0; r < p; ++r) {
    int children = static_cast<int>(A.down[r].size() + B.down[r].size());
    int parents = (A.up[r] >= 0) + (B.up[r] >= 0);
    t.load = std::max({t.load, children, parents});
  }
  t.up = coll::round_class(a.topo, a.net, upf, 1, 1, 1);
  t.down = coll::round_class(a.topo, a.net, downf, 1, 1, 0);
  return last = std::move(t);
}

Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  const TreeRounds& t = tree_rounds(a);
  const int k = chunks(a);
  const double chunk = 1.0 / (2 * k);
  // round_class is linear in the flow, port and reduce sizes.
  auto scaled = [&](RoundClass c) {
    c.repeat = t.H + k - 1;
    c.port *= t.load * chunk;
    c.reduce *= t.load * chunk;
    c.nic *= chunk;
    return c;
  };
  return {scaled(t.up), scaled(t.down)};
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  const int p = a.topo.ranks;
  if (p == 1) return s;
  Tree trees[2] = {make_tree(p, false), make_tree(p, true)};
  int H = std::max(trees[0].max_depth, trees[1].max_depth);
  int k = schedule_chunks(a);
  int64_t half = a.count / 2;
  auto chunk_of = [&](int t, int c) -> std::pair<int64_t, int64_t> {
    int64_t off = t == 0 ? 0 : half, len = t == 0 ? half : a.count - half;
    return {off + coll::seg_begin(len, k, c), coll::seg_len(len, k, c)};
  };
  const int phase = H + k - 1;
  for (int round = 0; round < phase; ++round) {
    Round r;
    for (int t = 0; t < 2; ++t)
      for (int v = 0; v < p; ++v) {
        int c = round - trees[t].height[v];
        if (trees[t].up[v] < 0 || c < 0 || c >= k) continue;
        auto [off, len] = chunk_of(t, c);
        r.transfers.push_back({v, trees[t].up[v], off, len, true});
      }
    s.rounds.push_back(std::move(r));
  }
  for (int round = 0; round < phase; ++round) {
    Round r;
    for (int t = 0; t < 2; ++t)
      for (int v = 0; v < p; ++v) {
        int c = round - trees[t].depth[v];
        if (c < 0 || c >= k) continue;
        auto [off, len] = chunk_of(t, c);
        for (int child : trees[t].down[v]) r.transfers.push_back({v, child, off, len, false});
      }
    s.rounds.push_back(std::move(r));
  }
  return s;
}

}  // namespace

// Exposed for tests and the docs: the height of the taller of the two trees.
int double_binary_tree_height(int ranks) { return tree_height(ranks); }

extern const Algorithm kDoubleBinaryTree{
    "double_binary_tree", "NCCL's two complementary pipelined binary trees, half the vector each",
    not_applicable, profile, schedule, kVariants};

}  // namespace fuseplan
