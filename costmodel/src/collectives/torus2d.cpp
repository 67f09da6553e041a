// 2D-torus allreduce (Mikami et al., Sony 2018): ranks on an X x Y grid; ring
// reduce-scatter along X, ring allreduce along Y on n/X bytes, ring allgather along X.
// T = 2(X-1) alpha + 2n(X-1)/X beta + 2(Y-1) alpha + 2(n/X)(Y-1)/Y beta + gamma terms.
// X defaults to the smallest divisor of p that is >= sqrt(p) (a square-ish grid); with
// X = ranks per node it coincides with hierarchical_rs.
#include <cmath>

#include "common.hpp"

namespace fuseplan {
namespace {

int row_length(const CollectiveArgs& a) {
  const int p = a.topo.ranks;
  if (a.torus_x > 0) return a.torus_x;
  for (int x = static_cast<int>(std::ceil(std::sqrt(double(p)))); x < p; ++x)
    if (p % x == 0) return x;
  return p;
}

std::string not_applicable(const CollectiveArgs& a) {
  const int p = a.topo.ranks, X = row_length(a);
  if (p == 1) return {};
  if (p % X) return "row length " + std::to_string(X) + " does not divide the rank count " + std::to_string(p);
  if (X == p || X == 1) return "needs a grid with X > 1 and Y > 1 (rank count " + std::to_string(p) + " is prime or X is degenerate)";
  return {};
}

Profile profile(const CollectiveArgs& a) { return a.topo.ranks == 1 ? Profile{} : coll::rs_ar_ag_profile(a, row_length(a)); }
Schedule schedule(const CollectiveArgs& a) { return a.topo.ranks == 1 ? Schedule{} : coll::rs_ar_ag_schedule(a, row_length(a)); }

}  // namespace

extern const Algorithm kTorus2d{"torus2d", "2D torus: reduce-scatter along rows, allreduce down columns, allgather along rows",
                                not_applicable, profile, schedule, 1};

}  // namespace fuseplan
