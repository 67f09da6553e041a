// Building blocks shared by the algorithm files: round classes from communication
// patterns (closed forms) and the schedules of ring, halving-doubling and binomial phases.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "fuseplan/costmodel/collective.hpp"

namespace fuseplan::coll {

using Flows = std::vector<std::pair<int, int>>;

// A round class from its pattern: which flows cross nodes and how many leave or enter
// the busiest node. `flow` is the size of each flow, `port` the busiest rank's total.
RoundClass round_class(const Topo& t, const Net& net, const Flows& flows, double flow, double port,
                       double reduce, int repeat = 1);

inline int64_t seg_begin(int64_t count, int parts, int i) { return count * i / parts; }
inline int64_t seg_len(int64_t count, int parts, int i) {
  return seg_begin(count, parts, i + 1) - seg_begin(count, parts, i);
}

int floor_log2(int x);
inline bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }
int ceil_log2(int x);

// Appends `extra` round-by-round onto `s` starting at round `at` (parallel phases).
void merge_rounds(Schedule& s, const Schedule& extra, size_t at);

// Ring over `members` on elements [off, off+len): reduce-scatter then (optionally)
// allgather. After the reduce-scatter, members[i] holds chunk (i+1) % M.
void ring_reduce_scatter(Schedule& s, const std::vector<int>& members, int64_t off, int64_t len);
void ring_allgather(Schedule& s, const std::vector<int>& members, int64_t off, int64_t len);
Flows ring_flows(const std::vector<int>& members);

// Recursive halving (distance doubling) reduce-scatter over a power-of-two member list.
// Returns each member's final [lo, hi) range; allgather reverses it.
std::vector<std::pair<int64_t, int64_t>> halving_reduce_scatter(Schedule& s, const std::vector<int>& members,
                                                               int64_t off, int64_t len);
void doubling_allgather(Schedule& s, const std::vector<int>& members,
                        std::vector<std::pair<int64_t, int64_t>> ranges);

// MPICH's fold for a group whose size p is not a power of two: its first 2r members
// (r = p - p') pair up, even ones hand their data to the odd ones. Returns the
// p' = 2^floor(log2 p) members that continue. `m` lists the group's ranks.
std::vector<int> fold_members(const std::vector<int>& m);

std::vector<int> iota_members(int first, int n, int stride = 1);

// The fold's pairs (m[2i] -> m[2i+1], i < p - p') and its two rounds: in (reduce the
// whole vector into the odd member) and out (copy the result back to the even one).
Flows fold_flows(const std::vector<int>& m);
// members[i] -> members[i ^ mask] for every i (a recursive halving/doubling step).
Flows xor_flows(const std::vector<int>& members, int mask);
Flows reversed(const Flows& f);
void fold_in(Schedule& s, const std::vector<int>& m, int64_t count);
void fold_out(Schedule& s, const std::vector<int>& m, int64_t count);

// Rabenseifner's allreduce of `count` elements among the ranks `m` (the fold when their
// number is not a power of two, recursive-halving reduce-scatter, recursive-doubling
// allgather, the unfold): its round classes appended to `prof`, its rounds to `s`.
void rabenseifner_profile(Profile& prof, const Topo& t, const Net& net, const std::vector<int>& m);
void rabenseifner_schedule(Schedule& s, const std::vector<int>& m, int64_t count);

// For algorithms that apply to every layout.
std::string always_applicable(const CollectiveArgs&);
// For the hierarchical forms: the rank count must be a multiple of the group size.
std::string needs_whole_groups(const CollectiveArgs& a);

}  // namespace fuseplan::coll

namespace fuseplan::coll {
// The three-phase scheme on an X x Y grid (rows = X consecutive ranks): ring
// reduce-scatter along rows, ring allreduce down each column on n/X, ring allgather
// along rows. Used by hierarchical_rs (X = group) and torus2d (X = row length).
Profile rs_ar_ag_profile(const CollectiveArgs& a, int X);
Schedule rs_ar_ag_schedule(const CollectiveArgs& a, int X);
}  // namespace fuseplan::coll
