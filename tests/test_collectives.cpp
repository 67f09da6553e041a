// Collective algorithms: closed forms against the textbook formulas (anchors.md), schedule
// replay against the closed forms, and schedules executed on data against a reference sum.
#include <catch2/catch.hpp>
#include <cmath>
#include <numeric>

#include "collectives/common.hpp"
#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/models/error.hpp"

using namespace fuseplan;

namespace {
const double kAlpha = 5e-6, kBeta = 1e-10, kGamma = 2e-11;  // 5 us, 10 GB/s, 50 GB/s

CollectiveArgs uniform(int p, int64_t count, int group = 0) {
  CollectiveArgs a;
  a.topo = {p, 1};
  a.net = Net::uniform(kAlpha, kBeta, kGamma);
  a.count = count;
  a.elem_bytes = 4;
  a.group = group;
  return a;
}

double cost(const char* algo, const CollectiveArgs& a) { return closed_form_cost(find_algorithm(algo), a).total(); }

int lg(int p) { return coll::floor_log2(p); }

// Textbook formulas (Thakur, Rabenseifner, Gropp 2005; anchors.md), n bytes.
double ring_tb(int p, double n) { return 2 * (p - 1) * kAlpha + 2 * n * (p - 1) / p * kBeta + n * (p - 1) / p * kGamma; }
double rd_tb(int p, double n) {
  int steps = lg(p) + (coll::is_pow2(p) ? 0 : 2);  // MPICH folds the extra ranks in and out
  int red = lg(p) + (coll::is_pow2(p) ? 0 : 1);
  return steps * kAlpha + n * steps * kBeta + n * red * kGamma;
}
double rab_tb(int p, double n) {
  if (coll::is_pow2(p)) return 2 * lg(p) * kAlpha + 2 * n * (p - 1) / p * kBeta + n * (p - 1) / p * kGamma;
  double q = 1 << lg(p);  // p' = 2^floor(lg p)
  return (2 * lg(p) + 2) * kAlpha + (2 * (q - 1) / q + 2) * n * kBeta + n * (1 + (q - 1) / q) * kGamma;
}
double bb_tb(int p, double n) {
  std::vector<int> s;
  for (int bit = 30; bit >= 0; --bit)
    if (p & (1 << bit)) s.push_back(1 << bit);
  double s0 = s[0];
  double t = 2 * lg(s[0]) * kAlpha + n * (1 - 1 / s0) * (2 * kBeta + kGamma);
  for (size_t i = 1; i < s.size(); ++i) t += kAlpha + n / s[i] * kBeta + n / s[i - 1] * kGamma;
  if (s.size() > 1) t += kAlpha + n * kBeta;
  return t;
}
double hier_tb(int p, int g, double n, double (*masters)(int, double) = ring_tb) {
  int lgg = coll::ceil_log2(g);
  return 2 * lgg * kAlpha + lgg * n * (2 * kBeta + kGamma) + (p / g > 1 ? masters(p / g, n) : 0);
}
double three_phase_tb(int p, int X, double n) {
  int Y = p / X;
  return 2 * (X - 1) * kAlpha + 2 * n * (X - 1) / X * kBeta + n * (X - 1) / X * kGamma + 2 * (Y - 1) * kAlpha +
         2 * (n / X) * (Y - 1) / Y * kBeta + (n / X) * (Y - 1) / Y * kGamma;
}

void check_sum(const Algorithm& algo, CollectiveArgs a) {
  const int p = a.topo.ranks;
  std::vector<std::vector<double>> buf(p, std::vector<double>(a.count));
  std::vector<double> expect(a.count, 0);
  for (int r = 0; r < p; ++r)
    for (int64_t i = 0; i < a.count; ++i) {
      buf[r][i] = (r + 1) * 1000.0 + i;  // distinct, exact in double
      expect[i] += buf[r][i];
    }
  apply_schedule(schedule_of(algo, a), buf);
  for (int r = 0; r < p; ++r) {
    INFO(algo.name << " p=" << p << " count=" << a.count << " rank " << r);
    REQUIRE(buf[r] == expect);
  }
}
}  // namespace

TEST_CASE("closed forms equal the textbook formulas on a uniform network") {
  const int64_t count = 3 * 5 * 7 * 1024;  // bytes n = 4 * count
  for (int p : {2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 64, 100, 128, 1024}) {
    INFO("p = " << p);
    double n = 4.0 * count;
    CHECK(cost("ring", uniform(p, count)) == Approx(ring_tb(p, n)).epsilon(1e-12));
    CHECK(cost("recursive_doubling", uniform(p, count)) == Approx(rd_tb(p, n)).epsilon(1e-12));
    CHECK(cost("rabenseifner", uniform(p, count)) == Approx(rab_tb(p, n)).epsilon(1e-12));
    CHECK(cost("binary_blocks", uniform(p, count)) == Approx(bb_tb(p, n)).epsilon(1e-12));
    if (p % 4 == 0) {
      CHECK(cost("hierarchical", uniform(p, count, 4)) == Approx(hier_tb(p, 4, n)).epsilon(1e-12));
      CHECK(cost("hierarchical_hd", uniform(p, count, 4)) == Approx(hier_tb(p, 4, n, rab_tb)).epsilon(1e-12));
      CHECK(cost("hierarchical_rs", uniform(p, count, 4)) == Approx(three_phase_tb(p, 4, n)).epsilon(1e-12));
    }
  }
  // Binary blocks on a power of two is Rabenseifner's algorithm.
  CHECK(cost("binary_blocks", uniform(64, 4096)) == Approx(cost("rabenseifner", uniform(64, 4096))));
  // The survey's example: 600 = 512 + 64 + 16 + 8.
  CHECK(cost("binary_blocks", uniform(600, 1 << 20)) == Approx(bb_tb(600, 4.0 * (1 << 20))).epsilon(1e-12));
  CHECK(cost("binary_blocks", uniform(600, 1 << 20)) < cost("rabenseifner", uniform(600, 1 << 20)));
}

TEST_CASE("torus2d follows the three-phase formula on its grid") {
  auto a = uniform(12, 12 * 1024);
  // Automatic X: smallest divisor of 12 that is >= sqrt(12) = 4.
  CHECK(cost("torus2d", a) == Approx(three_phase_tb(12, 4, 4.0 * 12 * 1024)).epsilon(1e-12));
  a.torus_x = 6;
  CHECK(cost("torus2d", a) == Approx(three_phase_tb(12, 6, 4.0 * 12 * 1024)).epsilon(1e-12));
  CHECK_FALSE(find_algorithm("torus2d").not_applicable(uniform(7, 64)).empty());  // prime
}

TEST_CASE("double binary tree: pipelined cost tends to 2n beta + n gamma (NCCL's busbw/2)") {
  auto a = uniform(64, 64 << 20);
  double n = a.bytes();
  double t = cost("double_binary_tree", a);
  CHECK(t > 2 * n * kBeta + n * kGamma);
  CHECK(t < 1.1 * (2 * n * kBeta + n * kGamma));
  // Small messages: about 2 * height rounds of latency.
  auto s = uniform(64, 2);
  CHECK(cost("double_binary_tree", s) < 2 * 8 * kAlpha * 1.05);
}

namespace {
// Two-level network: 4 ranks per node, fast intra links, NICs shared by the node.
CollectiveArgs two_level(int p, int per_node, int64_t count, int nics) {
  CollectiveArgs a;
  a.topo = {p, per_node};
  a.net.intra_alpha = 2e-6;
  a.net.intra_beta = 1.0 / 100e9;
  a.net.inter_alpha = 6e-6;
  a.net.inter_beta = 1.0 / 12.5e9;
  a.net.nics_per_node = nics;
  a.net.gamma = 1.0 / 300e9;
  a.count = count;
  a.elem_bytes = 2;
  return a;
}
}  // namespace

TEST_CASE("replaying each schedule reproduces its closed form") {
  for (const auto& algo : algorithms()) {
    for (int p : {2, 3, 4, 7, 8, 12, 16, 32}) {
      for (int per_node : {1, 4}) {
        for (int nics : {1, 4}) {
          // Divisible by every chunking the algorithms use at these p.
          const int64_t count = 2 * 3 * 5 * 7 * 4096;
          CollectiveArgs a = per_node == 1 ? uniform(p, count) : two_level(p, per_node, count, nics);
          if (per_node == 1 && nics == 4) continue;
          if (!algo.not_applicable(a).empty()) continue;
          INFO(algo.name << " p=" << p << " per_node=" << per_node << " nics=" << nics);
          Cost closed = closed_form_cost(algo, a);
          Cost rep = replay(schedule_of(algo, a), a);
          CHECK(rep.rounds == closed.rounds);
          if (algo.name == "double_binary_tree") {
            // The closed form charges the ramp-up and drain rounds the steady-state load.
            CHECK(rep.total() <= closed.total() * (1 + 1e-12));
            CHECK(rep.total() >= 0.8 * closed.total());
          } else {
            CHECK(rep.total() == Approx(closed.total()).epsilon(1e-9));
            CHECK(rep.latency_s == Approx(closed.latency_s).epsilon(1e-9));
          }
        }
      }
    }
  }
}

TEST_CASE("every schedule computes the sum on every rank") {
  for (const auto& algo : algorithms())
    for (int p = 1; p <= 17; ++p)
      for (int64_t count : {1, 2, 5, 64, 1000}) {
        CollectiveArgs a = uniform(p, count);
        a.topo.per_node = p >= 8 ? 4 : 1;
        a.group = p % 4 == 0 ? 4 : 0;
        if (algo.name.substr(0, 12) == "hierarchical") a.group = p % 4 == 0 ? 4 : (p % 2 == 0 ? 2 : 1);
        if (!algo.not_applicable(a).empty()) continue;
        check_sum(algo, a);
      }
  // Larger and odd layouts.
  for (const auto& algo : algorithms()) {
    CollectiveArgs a = uniform(24, 777, 8);
    if (algo.not_applicable(a).empty()) check_sum(algo, a);
    CollectiveArgs b = uniform(100, 3000, 4);
    if (algo.not_applicable(b).empty()) check_sum(algo, b);
  }
}

TEST_CASE("two-level network: the NICs are shared, big early steps of halving stay intra-node") {
  // 64 ranks, 8 per node: recursive doubling's last three steps cross nodes with 8 flows
  // per NIC; with one NIC per GPU (rails) they do not share.
  auto shared = two_level(64, 8, 1 << 20, 1);
  auto rails = two_level(64, 8, 1 << 20, 8);
  CHECK(cost("recursive_doubling", shared) > cost("recursive_doubling", rails));
  // Ring is bounded by the slowest link on every step, one inter-node flow per node.
  double n = shared.bytes(), p = 64;
  double step = std::max(2e-6 + n / p / 100e9, 6e-6 + n / p / 12.5e9);
  CHECK(cost("ring", shared) == Approx(2 * (p - 1) * step + (p - 1) * n / p / 300e9));
  // Hierarchical RS moves 2n(G-1)/G inside nodes and only n/G per rank across them.
  CHECK(cost("hierarchical_rs", rails) < cost("ring", rails));
}

TEST_CASE("host staging without GPUDirect RDMA slows inter-node steps only") {
  auto a = two_level(16, 4, 1 << 20, 1);
  auto staged = a;
  staged.net.stage_alpha = 10e-6;
  staged.net.stage_beta = 2.0 / 10e9;
  CHECK(cost("ring", staged) > cost("ring", a));
  auto one_node = two_level(4, 4, 1 << 20, 1);
  auto one_node_staged = one_node;
  one_node_staged.net.stage_beta = 1;
  CHECK(cost("ring", one_node_staged) == Approx(cost("ring", one_node)));
}

TEST_CASE("algbw and busbw follow nccl-tests") {
  CHECK(algbw_GBps(1e9, 1.0) == Approx(1.0));
  CHECK(busbw_GBps(1e9, 1.0, 8) == Approx(2.0 * 7 / 8));
  CHECK(busbw_GBps(1e9, 1.0, 1) == 0);
  // A ring that achieves the link bandwidth shows busbw = link bandwidth at large sizes.
  auto a = uniform(8, 1 << 28);
  a.net.intra_alpha = a.net.inter_alpha = 0;
  a.net.gamma = 0;
  double t = cost("ring", a);
  CHECK(busbw_GBps(a.bytes(), t, 8) == Approx(1.0 / kBeta / 1e9));
}

TEST_CASE("registry: unknown names list the valid ones") {
  CHECK_THROWS_WITH(find_algorithm("butterfly"), Catch::Contains("valid: auto, ring, recursive_doubling"));
  CHECK(algorithms().size() == 17);  // 9 textbook, mpi, nccl and NCCL's six algorithms
  CHECK(!algorithm_names().empty());
}

TEST_CASE("registry: the executor's mpi baseline costs the ring and auto never picks it") {
  for (int64_t n : {int64_t(16), int64_t(1) << 20, int64_t(1) << 26}) {
    auto a = uniform(8, n);
    CHECK(cost("mpi", a) == cost("ring", a));
  }
  CHECK(!find_algorithm("mpi").automatic);
  int automatic = 0, nccl = 0;
  for (const auto& a : algorithms()) {
    automatic += a.automatic && a.library == "mpi";
    nccl += a.automatic && a.library == "nccl";
  }
  CHECK(automatic == 9);
  CHECK(nccl == 1);  // on NCCL clusters auto is NCCL's own choice
  CHECK(find_algorithm("nccl").automatic);
}

namespace fuseplan {
int double_binary_tree_height(int ranks);
}

TEST_CASE("double binary tree height is ceil(lg p), as its formula says") {
  for (int p = 2; p <= 2100; ++p) {
    INFO("p = " << p);
    REQUIRE(double_binary_tree_height(p) == coll::ceil_log2(p));
  }
}

TEST_CASE("double binary tree follows its pipelined formula with the best power-of-two chunk count") {
  for (int p : {3, 8, 64, 100, 1024})
    for (int64_t count : {int64_t(256), int64_t(1) << 16, int64_t(1) << 24}) {
      INFO("p=" << p << " count=" << count);
      auto a = uniform(p, count);
      double n = a.bytes(), H = coll::ceil_log2(p), L = 2;
      double t = cost("double_binary_tree", a), best = 1e300;
      bool matches_some_k = false;
      double best_any_k = 1e300;
      for (int k = 1; k <= 256; ++k) {
        double f = 2 * (H + k - 1) * (kAlpha + L * n / (2 * k) * kBeta) + (H + k - 1) * L * n / (2 * k) * kGamma;
        best_any_k = std::min(best_any_k, f);
        if ((k & (k - 1)) != 0) continue;  // the variants are powers of two
        best = std::min(best, f);
        matches_some_k = matches_some_k || std::abs(f - t) <= 1e-12 * t;
      }
      CHECK(matches_some_k);
      CHECK(t <= best * (1 + 1e-12));
      // A power of two is within sqrt(2) of the continuous optimum: a few % at most.
      CHECK(t <= best_any_k * 1.06);
    }
}
