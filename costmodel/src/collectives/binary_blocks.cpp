// Binary-blocks allreduce (Rabenseifner & Traff; recommended by the survey for p != 2^k):
// split p into power-of-two blocks s0 > s1 > ... > sm (600 = 512 + 64 + 16 + 8) so no
// rank idles. Derived here (no closed form was published in our sources):
//  1. each block reduce-scatters by recursive halving, in parallel:   k0 rounds
//  2. the partial results cascade from the smallest block up: block i sends each of its
//     segments, split to match block i-1's finer segments, to block i-1, which reduces:
//     sum_i (alpha + n/s_i beta + n/s_(i-1) gamma)
//  3. block 0 allgathers by recursive doubling:                        k0 rounds
//  4. each rank of the smaller blocks receives the whole result from one rank of block 0
//     (sum of the smaller blocks < s0, so no block-0 rank sends twice): alpha + n beta
// T = 2 k0 alpha + n(1-1/s0)(2 beta + gamma) + sum_i (alpha + n/s_i beta + n/s_(i-1) gamma)
//     + [m > 0](alpha + n beta);  for p = 2^k it is Rabenseifner's algorithm.
#include <algorithm>

#include "common.hpp"

namespace fuseplan {
namespace {

struct Block {
  int first, size;
};

std::vector<Block> blocks_of(int p) {
  std::vector<Block> b;
  int first = 0;
  for (int bit = 30; bit >= 0; --bit)
    if (p & (1 << bit)) {
      b.push_back({first, 1 << bit});
      first += 1 << bit;
    }
  return b;
}

Profile profile(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (p == 1) return {};
  auto blocks = blocks_of(p);
  const int s0 = blocks[0].size;
  Profile prof;
  std::vector<RoundClass> rs;
  double frac = 0.5;
  for (int mask = 1; mask < s0; mask <<= 1, frac /= 2) {
    coll::Flows f;
    for (const auto& b : blocks)
      if (mask < b.size)
        for (int i = 0; i < b.size; ++i) f.emplace_back(b.first + i, b.first + (i ^ mask));
    rs.push_back(coll::round_class(a.topo, a.net, f, frac, frac, frac));
  }
  prof.insert(prof.end(), rs.begin(), rs.end());
  for (size_t i = blocks.size() - 1; i >= 1; --i) {
    const Block &small = blocks[i], &big = blocks[i - 1];
    // Halving leaves rank j with segment bitreverse(j), so big rank j's finer segment lies
    // inside the segment of small rank j mod s_i: each small rank sends s_(i-1)/s_i messages.
    coll::Flows g;
    for (int j = 0; j < big.size; ++j) g.emplace_back(small.first + (j % small.size), big.first + j);
    prof.push_back(coll::round_class(a.topo, a.net, g, 1.0 / big.size, 1.0 / small.size, 1.0 / big.size));
  }
  // Allgather in block 0 only: its rounds mirror the block-0 part of the reduce-scatter.
  frac = 1.0 / s0;
  for (int mask = s0 / 2; mask >= 1; mask >>= 1, frac *= 2) {
    coll::Flows f;
    for (int i = 0; i < s0; ++i) f.emplace_back(i, i ^ mask);
    prof.push_back(coll::round_class(a.topo, a.net, f, frac, frac, 0));
  }
  if (blocks.size() > 1) {
    coll::Flows f;
    for (int q = s0; q < p; ++q) f.emplace_back(q - s0, q);
    prof.push_back(coll::round_class(a.topo, a.net, f, 1, 1, 0));
  }
  return prof;
}

Schedule schedule(const CollectiveArgs& a) {
  Schedule s;
  const int p = a.topo.ranks;
  if (p == 1) return s;
  auto blocks = blocks_of(p);
  std::vector<std::vector<std::pair<int64_t, int64_t>>> ranges(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    Schedule part;
    ranges[i] = coll::halving_reduce_scatter(part, coll::iota_members(blocks[i].first, blocks[i].size), 0, a.count);
    coll::merge_rounds(s, part, 0);
  }
  for (size_t i = blocks.size() - 1; i >= 1; --i) {
    Round r;
    const Block &small = blocks[i], &big = blocks[i - 1];
    for (int j = 0; j < big.size; ++j) {
      auto [lo, hi] = ranges[i - 1][j];
      for (int k = 0; k < small.size; ++k) {
        auto [slo, shi] = ranges[i][k];
        if (slo <= lo && hi <= shi && (hi > lo || slo == lo)) {
          r.transfers.push_back({small.first + k, big.first + j, lo, hi - lo, true});
          break;
        }
      }
    }
    s.rounds.push_back(std::move(r));
  }
  coll::doubling_allgather(s, coll::iota_members(0, blocks[0].size), ranges[0]);
  if (blocks.size() > 1) {
    Round r;
    for (int q = blocks[0].size; q < p; ++q) r.transfers.push_back({q - blocks[0].size, q, 0, a.count, false});
    s.rounds.push_back(std::move(r));
  }
  return s;
}

}  // namespace

extern const Algorithm kBinaryBlocks{
    "binary_blocks", "power-of-two blocks reduce-scatter, cascade up, allgather (no idle ranks for p != 2^k)",
    coll::always_applicable, profile, schedule, 1};

}  // namespace fuseplan
