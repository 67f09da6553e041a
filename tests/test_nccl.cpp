// NCCL's tuning model: the formulas against hand-worked cases (one node on NVLink, two
// nodes over eight rails, four PCIe nodes on the older release), NCCL's choice against
// the argmin of those formulas, the emulated channel search on shipped clusters, cluster
// validation, `auto` on NCCL clusters, and the NCCL algorithms' schedules on real data.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <set>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/models/error.hpp"

using namespace fuseplan;

namespace {

NcclGraph graph(int channels, double intra, double inter, bool tree_pattern = false) {
  NcclGraph g;
  g.channels = channels;
  g.bw_intra_GBps = intra;
  g.bw_inter_GBps = inter;
  g.tree_pattern = tree_pattern;
  return g;
}

NcclSystem system_of(const std::string& release, int ranks, int nodes, int cc, bool nvlink, const std::string& cpu) {
  NcclSystem s;
  s.k = nccl_constants(release, {}, "test");
  s.release = s.k.release;
  s.ranks = ranks;
  s.nodes = nodes;
  s.compute_capability = cc;
  s.nvlink = nvlink;
  s.nvswitch = nvlink;
  s.cpu = cpu;
  return s;
}

constexpr auto kRing = NcclAlgo::Ring, kTree = NcclAlgo::Tree;

// H100 nodes of 8 over 8 rails, as the shipped dgx-h100 derives them: ring and tree 8 x
// 45 GB/s (the TREE pattern), NVLS 8 x 40 inside / 48 across.
NcclSystem h100_nodes(int nodes) {
  NcclSystem s = system_of("2.23", 8 * nodes, nodes, 90, true, "intel");
  s.nvls = true;
  s.graphs[size_t(kRing)] = graph(8, 45, 45);
  s.graphs[size_t(kTree)] = graph(8, 45, 45, true);
  s.graphs[size_t(NcclAlgo::Nvls)] = s.graphs[size_t(NcclAlgo::NvlsTree)] = graph(8, 40, 48);
  s.comm_channels = 16;
  return s;
}

double lat(const NcclTuning& t, NcclAlgo a, NcclProto p) { return t.latency_us[size_t(a)][size_t(p)]; }
double bw(const NcclTuning& t, NcclAlgo a, NcclProto p) { return t.bandwidth_GBps[size_t(a)][size_t(p)]; }

constexpr auto Tree = NcclAlgo::Tree, Ring = NcclAlgo::Ring, NvlsTree = NcclAlgo::NvlsTree;
constexpr auto LL = NcclProto::LL, LL128 = NcclProto::LL128, Simple = NcclProto::Simple;

}  // namespace

TEST_CASE("nccl tuning: one node, 8 GPUs on NVLink (sm80, 12 channels x 20 GB/s), by hand") {
  NcclSystem s = system_of("2.23", 8, 1, 80, true, "intel");
  s.graphs[size_t(Ring)] = graph(12, 20, 20);
  s.graphs[size_t(Tree)] = graph(12, 20, 20);
  s.comm_channels = 24;
  const NcclTuning t = nccl_tune(s);
  // Ring: busBw = 12 x 20 = 240, algBw = busBw x 8 / 14; lat = base + 14 steps x NVLink.
  CHECK(bw(t, Ring, Simple) == Approx(240.0 * 8 / 14));
  CHECK(lat(t, Ring, Simple) == Approx(8.4 + 14 * 3.4));
  CHECK(bw(t, Ring, LL) == Approx(87.7 * 8 / 14));  // min(llMaxBw Ampere-N1, 240 x .5)
  CHECK(lat(t, Ring, LL) == Approx(6.6 + 14 * 0.6));
  CHECK(bw(t, Ring, LL128) == Approx(240 * 0.92 * 8 / 14));  // under 12 x 20 per channel
  CHECK(lat(t, Ring, LL128) == Approx(14 + 14 * 1.9));
  // Tree: min(240 x .92, 12 x 24) x .5; lat = base + 2 (7 x NVLink).
  CHECK(bw(t, Tree, Simple) == Approx(220.8 * 0.5));
  CHECK(lat(t, Tree, Simple) == Approx(8.4 + 2 * 7 * 4.0));
  CHECK(bw(t, Tree, LL) == Approx(220.8 / 3.8 * 0.5));
  CHECK(lat(t, Tree, LL) == Approx(6.8 + 2 * 7 * 0.6));
  CHECK(bw(t, Tree, LL128) == Approx(220.8 * 7 / 9 * 0.5));
  CHECK(lat(t, Tree, LL128) == Approx(14 + 2 * 7 * 1.25));
  // No NVLS, CollNet or NVLS Tree here.
  for (auto a : {NcclAlgo::Nvls, NvlsTree, NcclAlgo::CollNetDirect, NcclAlgo::CollNetChain})
    for (int p = 0; p < kNcclProtos; ++p) CHECK(!t.enabled(a, NcclProto(p)));
  // Times: 1 MiB on the ring, and the tree's correction factor (log2(1 MiB / 64) = 14).
  const double MiB = 1 << 20;
  CHECK(nccl_time(s, t, Ring, Simple, MiB).total_us() == Approx(56.0 + MiB / (1000 * 240.0 * 8 / 14)));
  CHECK(nccl_time(s, t, Tree, Simple, MiB).total_us() == Approx(64.4 + MiB / (1000 * 110.4 * 0.5)));
  CHECK(nccl_time(s, t, Tree, LL128, MiB).total_us() == Approx(31.5 + MiB / (1000 * 220.8 * 7 / 9 * 0.5 * 0.6)));
  // NCCL's choice: ring LL at 1 MiB (35.9 us beats LL128's 48.9), ring Simple at 64 MiB.
  NcclPick p = nccl_choose(s, t, MiB);
  CHECK(p.algo == Ring);
  CHECK(p.proto == LL);
  p = nccl_choose(s, t, 64 * MiB);
  CHECK(p.algo == Ring);
  CHECK(p.proto == Simple);
}

TEST_CASE("nccl tuning: two nodes x 8 H100 over 8 rails (ring 8 x 45, NVLS 8 x 40/48), by hand") {
  NcclSystem s = h100_nodes(2);
  const NcclTuning t = nccl_tune(s);
  // Ring: nInter = 2 (nNodes - 1) = 2 steps at the network latency, 28 at max(NVLink, 3 x 1 us).
  CHECK(bw(t, Ring, Simple) == Approx(360.0 * 16 / 30));
  CHECK(lat(t, Ring, Simple) == Approx(8.4 + 28 * 3.4 + 2 * 14.0));
  CHECK(lat(t, Ring, LL) == Approx(6.6 + 28 * 1.0 + 2 * 2.7));
  CHECK(bw(t, Ring, LL) == Approx(39.0 * 16 / 30));  // llMaxBw Intel-N2
  CHECK(bw(t, Ring, LL128) == Approx(8 * 36.7 * 16 / 30));
  CHECK(lat(t, Ring, LL128) == Approx(14 + 28 * 1.9 + 2 * 4.0));
  // Tree on the TREE pattern: min(360 x .92, 8 x 41.4) x .85 x .5.
  CHECK(bw(t, Tree, Simple) == Approx(331.2 * 0.85 * 0.5));
  CHECK(lat(t, Tree, Simple) == Approx(8.4 + 2 * (7 * 4.0 + 1 * 14)));
  // NVLS Tree: 8 x min(40, 48) x 5/6; lat = NVLink NVLS + 2 log2(2) x network.
  CHECK(bw(t, NvlsTree, Simple) == Approx(320.0 * 5 / 6));
  CHECK(lat(t, NvlsTree, Simple) == Approx(25 + 2 * 14));
  CHECK(!t.enabled(NcclAlgo::Nvls, Simple));  // NVLS across nodes needs CollNet
  // The ring's plateau: Simple across nodes costs 1.4x its latency from 64 B per channel and rank.
  const double plateau = 64.0 * 16 * 16;
  CHECK(nccl_time(s, t, Ring, Simple, plateau - 64).latency_us == Approx(131.6));
  CHECK(nccl_time(s, t, Ring, Simple, plateau).latency_us == Approx(131.6 * 1.4));
  // Above a few hundred KiB NVLS Tree wins.
  CHECK(nccl_choose(s, t, 64 << 20).algo == NvlsTree);
  CHECK(nccl_choose(s, t, 1024).proto == LL);
}

TEST_CASE("nccl tuning: four nodes x 8 H100 over 8 rails (beyond two nodes: bwInter, N4 caps), by hand") {
  NcclSystem s = h100_nodes(4);
  const NcclTuning t = nccl_tune(s);
  CHECK(bw(t, Ring, Simple) == Approx(360.0 * 32 / 62));
  CHECK(lat(t, Ring, Simple) == Approx(8.4 + (62 - 6) * 3.4 + 6 * 14.0));
  CHECK(bw(t, Ring, LL) == Approx(20.4 * 32 / 62));  // llMaxBw Intel-N4
  CHECK(lat(t, Ring, LL) == Approx(6.6 + 56 * 1.0 + 6 * 2.7));
  CHECK(bw(t, Ring, LL128) == Approx(8 * 36.7 * 32 / 62));
  CHECK(lat(t, Ring, LL128) == Approx(14 + 56 * 1.9 + 6 * 4.0));
  CHECK(bw(t, Tree, Simple) == Approx(8 * 36.0 * 0.85 * 0.5));  // perChMaxTreeBw Hopper-N4
  CHECK(lat(t, Tree, Simple) == Approx(8.4 + 2 * (7 * 4.0 + 2 * 14)));
  CHECK(bw(t, Tree, LL128) == Approx(8 * 29.0 * 0.85 * 0.5));   // perChMaxTreeLL128Bw Hopper-N4
  CHECK(lat(t, Tree, LL128) == Approx(14 + 2 * (7 * 1.25 + 2 * 8.5)));
  CHECK(bw(t, NvlsTree, Simple) == Approx(8 * 24.0 * 5 / 6));   // min(40, 48 / 2) beyond 2 nodes
  CHECK(lat(t, NvlsTree, Simple) == Approx(25 + 2 * 2 * 14));
  // At 1 GiB the ring (185.8 GB/s) beats NVLS Tree (160): NCCL runs Ring on 4 nodes.
  CHECK(nccl_choose(s, t, double(1 << 30)).algo == Ring);
}

TEST_CASE("nccl tuning: four PCIe nodes x 4 (sm86, AMD) on release 2.20, by hand") {
  NcclSystem s = system_of("2.20", 16, 4, 86, false, "amd");
  s.graphs[size_t(Ring)] = graph(2, 12, 12);
  s.graphs[size_t(Tree)] = graph(2, 12, 12);
  s.comm_channels = 4;
  const NcclTuning t = nccl_tune(s);
  // 2.20: nInter = 2 nNodes, Ring LL at 1/4, Tree Simple 28 us per hop and no base latency.
  CHECK(bw(t, Ring, Simple) == Approx(24.0 * 16 / 30));
  CHECK(lat(t, Ring, Simple) == Approx(8.4 + (30 - 8) * 6.0 + 8 * 14.0));  // netOverhead AMD 2 us x 3
  CHECK(bw(t, Ring, LL) == Approx(6.0 * 16 / 30));                         // min(19.0 AMD-N4, 24 / 4)
  CHECK(lat(t, Ring, LL) == Approx(6.6 + 22 * 2.0 + 8 * 2.7));
  CHECK(bw(t, Tree, Simple) == Approx(24 * 0.92 * 0.5));
  CHECK(lat(t, Tree, Simple) == Approx(0 + 2 * (3 * 28 + 2 * 28)));
  CHECK(bw(t, Tree, LL) == Approx(24 * 0.92 / 3.8 * 0.5));
  CHECK(lat(t, Tree, LL) == Approx(6.8 + 2 * (3 * 1.0 + 2 * 5.0)));
  for (auto a : {Ring, Tree}) CHECK(!t.enabled(a, LL128));  // PCIe: LL128 off
  // The same system on 2.23 differs where the table says so.
  NcclSystem n = s;
  n.k = nccl_constants("2.23", {}, "test");
  n.release = "2.23";
  const NcclTuning u = nccl_tune(n);
  CHECK(lat(u, Ring, Simple) == Approx(8.4 + (30 - 6) * 6.0 + 6 * 14.0));
  CHECK(bw(u, Ring, LL) == Approx(12.0 * 16 / 30));
  CHECK(lat(u, Tree, Simple) == Approx(8.4 + 2 * (3 * 4.0 + 2 * 14.0)));
}

TEST_CASE("nccl: the choice is the argmin of NCCL's formulas, and `auto` on an NCCL cluster is that choice") {
  for (const char* cname : {"dgx-a100", "dgx-h100", "dgx1-v100"}) {
    Cluster c = load_cluster(cname);
    for (int gpus : {2, 8, 16, 64, 1024}) {
      if (gpus > c.capacity()) continue;
      CollectiveModel m(c, gpus);
      REQUIRE(m.nccl() != nullptr);
      const NcclSystem& sys = m.nccl()->system;
      const NcclTuning& tun = m.nccl()->tuning;
      for (int64_t count = 1; count < (int64_t(1) << 31); count *= 7) {
        const double bytes = double(count) * 2;
        int best_a = -1, best_p = -1;
        double best = -1;
        for (int a = 0; a < kNcclAlgos; ++a)
          for (int p = 0; p < kNcclProtos; ++p) {
            const double x = nccl_time(sys, tun, NcclAlgo(a), NcclProto(p), bytes).total_us();
            if (x >= 0 && (best < 0 || x < best)) {
              best = x;
              best_a = a;
              best_p = p;
            }
          }
        const CollectiveChoice ch = m.cost("auto", count, Precision::FP16);
        INFO(cname << " x " << gpus << " bytes " << bytes);
        CHECK(std::string(ch.algorithm->name) == "nccl");
        // NCCL's argmin is what runs; its time with fuseplan's refinements is the prediction.
        CHECK(ch.variant == best_a * kNcclProtos + best_p);
        const NcclPick pick = nccl_choose(sys, tun, bytes);
        CHECK(int(pick.algo) == best_a);
        CHECK(int(pick.proto) == best_p);
        CHECK(ch.cost.total() * 1e6 ==
              Approx(nccl_refined_time(sys, tun, pick.algo, pick.proto, bytes).total_us()).epsilon(1e-12));
        if (pick.algo != NvlsTree) CHECK(ch.cost.total() * 1e6 == Approx(best).epsilon(1e-12));
        // A named NCCL algorithm runs the protocol NCCL would pick for it.
        for (const char* name : {"nccl_ring", "nccl_tree"}) {
          const CollectiveChoice one = m.cost(name, count, Precision::FP16);
          const NcclAlgo a = std::string(name) == "nccl_ring" ? Ring : Tree;
          CHECK(one.variant == nccl_choose_protocol(sys, tun, a, bytes));
        }
      }
    }
  }
}

TEST_CASE("nccl: fuseplan's refinement of NVLS Tree adds to NCCL's time, never chooses, and can be turned off") {
  Cluster c = load_cluster("dgx-h100");
  CollectiveModel m(c, 16);
  const NcclSystem& sys = m.nccl()->system;
  const NcclTuning& tun = m.nccl()->tuning;
  const double MiB = 1 << 20;
  for (double b : {1 * MiB, 16 * MiB, 64 * MiB, 1024 * MiB}) {
    const NcclTime pure = nccl_time(sys, tun, NvlsTree, Simple, b), refined = nccl_refined_time(sys, tun, NvlsTree, Simple, b);
    CHECK(refined.latency_us == Approx(pure.latency_us + 20 + 135 * std::min(1.0, b / (64 * MiB))));
    CHECK(refined.bandwidth_us == Approx(pure.bandwidth_us / 0.94));
  }
  CHECK(nccl_refined_time(sys, tun, Ring, Simple, 64 * MiB).total_us() == nccl_time(sys, tun, Ring, Simple, 64 * MiB).total_us());
  for (const char* k : {"fuseplan.nvls_tree_extra_lat_us", "fuseplan.nvls_tree_fill_us"}) c.nccl.constants[k] = 0;
  c.nccl.constants["fuseplan.nvls_tree_bw_efficiency"] = 1;
  CollectiveModel plain(c, 16);
  const CollectiveChoice ch = plain.cost("auto", int64_t(64 * MiB) / 4, Precision::FP32);
  CHECK(ch.cost.total() * 1e6 == Approx(nccl_time(sys, tun, NvlsTree, Simple, 64 * MiB).total_us()));
}

TEST_CASE("nccl: the emulated channel search on shipped clusters") {
  auto ring = [](const char* cname, int gpus) {
    CollectiveModel m(load_cluster(cname), gpus);
    return m.nccl()->system.graphs[size_t(Ring)];
  };
  // DGX A100, one node: 6 channels at 40 GB/s cover the 240 GB/s of 12 NVLinks, duplicated to 12 x 20.
  NcclGraph g = ring("dgx-a100", 8);
  CHECK(g.channels == 12);
  CHECK(g.bw_intra_GBps == 20);
  // Two nodes: the GPU-NIC path (PCIe Gen4, 24 GB/s) sets 8 channels x 24 over 8 rails.
  g = ring("dgx-a100", 16);
  CHECK(g.channels == 8);
  CHECK(g.bw_inter_GBps == 24);
  // DGX H100, two nodes: 8 x 45 (48 would need 8 x 48 > 18 x 20.6 on NVLink); NVLS 8 x 40 / 48.
  g = ring("dgx-h100", 16);
  CHECK(g.channels == 8);
  CHECK(g.bw_inter_GBps == 45);
  CollectiveModel h(load_cluster("dgx-h100"), 16);
  const NcclGraph& nv = h.nccl()->system.graphs[size_t(NcclAlgo::Nvls)];
  CHECK(nv.channels == 8);
  CHECK(nv.bw_intra_GBps == 40);
  CHECK(nv.bw_inter_GBps == 48);
  // One H100 node: 6 x 60 duplicated to 12 x 30.
  g = ring("dgx-h100", 8);
  CHECK(g.channels == 12);
  CHECK(g.bw_intra_GBps == 30);
}

TEST_CASE("nccl: graphs pinned in the cluster file replace the derived ones") {
  Cluster c = load_cluster("dgx-a100");
  NcclGraph pinned = graph(4, 10, 10);
  c.nccl.graphs["ring"] = pinned;
  CollectiveModel m(c, 16);
  const NcclGraph& g = m.nccl()->system.graphs[size_t(Ring)];
  CHECK(g.channels == 4);
  CHECK(g.bw_inter_GBps == 10);
  CHECK(g.origin.find("cluster file") != std::string::npos);
  // A constant override reaches the table.
  c.nccl.constants["hw_lat_us.net.ring.Simple"] = 100;
  CollectiveModel o(c, 16);
  CHECK(lat(o.nccl()->tuning, Ring, Simple) > lat(m.nccl()->tuning, Ring, Simple) + 100);
}

TEST_CASE("nccl: MPI clusters never run NCCL's algorithms - releases and constants are validated") {
  Cluster p40 = load_cluster("tencent-p40");
  CollectiveModel m(p40, 16);
  CHECK(m.nccl() == nullptr);
  CHECK(std::string(m.cost("auto", 1 << 20, Precision::FP16).algorithm->library) == "mpi");
  CHECK_THROWS_WITH(m.cost("nccl", 1 << 20, Precision::FP16), Catch::Contains("does not run NCCL"));
  CHECK_THROWS_WITH(CollectiveModel(p40, 16, {0, 0, "2.23"}), Catch::Contains("collective.nccl_version"));
  Cluster a100 = load_cluster("dgx-a100");
  CHECK_THROWS_WITH(CollectiveModel(a100, 16, {0, 0, "2.99"}), Catch::Contains("unknown NCCL release '2.99'"));
  CHECK_NOTHROW(CollectiveModel(a100, 16, {0, 0, "2.20"}));
  // The textbook algorithms stay available by name for what-if comparisons.
  CollectiveModel n(a100, 16);
  CHECK(std::string(n.cost("ring", 1 << 20, Precision::FP16).algorithm->name) == "ring");
  CHECK(!n.cost("ring", 1 << 20, Precision::FP16).calibrated);
}

TEST_CASE("nccl: cluster files say their library - the NCCL keys are checked") {
  nlohmann::json j = cluster_to_json(load_cluster("dgx-h100"));
  CHECK(j["library"] == "nccl");
  CHECK_NOTHROW(cluster_from_json(j, "c.json"));
  auto bad = j;
  bad["library"] = "gloo";
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("$.library") && Catch::Contains("valid: mpi, nccl"));
  bad = j;
  bad["device"].erase("compute_capability");
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("compute_capability"));
  bad = j;
  bad["nccl"]["constants"]["hw_lat_us.net.ring.Fast"] = 1;
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("$.nccl.constants.hw_lat_us.net.ring.Fast"));
  bad = j;
  bad["nccl"]["constants"]["fuseplan.nvls_tree_bw_efficiency"] = 0;
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("must be a fraction in (0, 1]"));
  bad = j;
  bad["nccl"]["graphs"]["rings"] = {{"channels", 1}, {"bw_intra_GBps", 1}, {"bw_inter_GBps", 1}};
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("unknown NCCL graph"));
  bad = j;
  bad["nccl"]["release"] = "1.0";
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("unknown NCCL release"));
  nlohmann::json mpi = cluster_to_json(load_cluster("tencent-p40"));
  mpi["nccl"] = {{"release", "2.23"}};
  CHECK_THROWS_WITH(cluster_from_json(mpi, "c.json"), Catch::Contains("library"));
  // Round trip of pinned graphs and overrides.
  j["nccl"]["graphs"]["ring"] = {{"channels", 12}, {"bw_intra_GBps", 20}, {"bw_inter_GBps", 20}};
  j["nccl"]["constants"]["hw_lat_us.net.ring.Simple"] = 9.5;
  Cluster c = cluster_from_json(j, "c.json");
  CHECK(c.nccl.graphs.at("ring").channels == 12);
  CHECK(cluster_to_json(c)["nccl"] == j["nccl"]);
}

TEST_CASE("nccl: every NCCL algorithm's schedule computes the sum on every rank") {
  for (const char* cname : {"dgx-a100", "dgx-h100"}) {
    Cluster c = load_cluster(cname);
    for (int gpus : {2, 3, 8, 12, 16, 24, 32}) {
      CollectiveModel m(c, gpus);
      for (const char* name : {"nccl", "nccl_ring", "nccl_tree", "nccl_nvls", "nccl_nvls_tree"}) {
        for (int64_t count : {int64_t(1), int64_t(7), int64_t(1000), int64_t(4099)}) {
          const Algorithm& a = find_algorithm(name);
          CollectiveArgs args = m.args(count, Precision::FP32);
          if (!a.not_applicable(args).empty()) continue;
          for (int v = 0; v < a.variants; ++v) {
            args.variant = v;
            Schedule s = a.schedule(args);
            std::vector<std::vector<double>> buf(gpus, std::vector<double>(size_t(count)));
            std::vector<double> want(size_t(count), 0);
            for (int r = 0; r < gpus; ++r)
              for (int64_t i = 0; i < count; ++i) {
                buf[r][size_t(i)] = double((r * 31 + i * 7) % 13);
                want[size_t(i)] += buf[r][size_t(i)];
              }
            apply_schedule(s, buf);
            INFO(cname << " " << name << " v" << v << " gpus=" << gpus << " count=" << count);
            for (int r = 0; r < gpus; ++r) REQUIRE(buf[r] == want);
          }
        }
      }
    }
  }
}

TEST_CASE("nccl: the ring's channels cross nodes on different rails") {
  CollectiveModel m(load_cluster("dgx-a100"), 16);
  CollectiveArgs a = m.args(1 << 16, Precision::FP16);
  a.variant = 2;
  Schedule s = find_algorithm("nccl_ring").schedule(a);
  std::set<int> senders;  // local ranks that send across nodes
  for (const auto& r : s.rounds)
    for (const auto& x : r.transfers)
      if (x.src / 8 != x.dst / 8) senders.insert(x.src % 8);
  CHECK(senders.size() == 8);  // 8 channels, one rail each
}

// ---------------------------------------------------------------------------- nccl-tests logs

#include <filesystem>
#include <fstream>

#include "fuseplan/costmodel/calibrate.hpp"
#include "fuseplan/costmodel/nccl_tests.hpp"

namespace {
std::string write_tmp(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / "fuseplan-test-nccl";
  std::filesystem::create_directories(dir);
  const std::string path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}
const char* kHead =
    "# nThread 1 nGpus 1 minBytes 8 maxBytes 64 step: 2(factor) warmup iters: 5 iters: 20 agg iters: 1\n"
    "#  Rank  0 Group  0 Pid   1 on      nodeA device  0 [0000:04:00] NVIDIA H100 80GB HBM3\n"
    "#  Rank  1 Group  0 Pid   2 on      nodeA device  1 [0000:05:00] NVIDIA H100 80GB HBM3\n"
    "#  Rank  2 Group  0 Pid   3 on      nodeB device  0 [0000:04:00] NVIDIA H100 80GB HBM3\n"
    "#  Rank  3 Group  0 Pid   4 on      nodeB device  1 [0000:05:00] NVIDIA H100 80GB HBM3\n"
    "NCCL version 2.21.5+cuda12.4\n"
    "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n";
}  // namespace

TEST_CASE("nccl-tests logs: every shipped log parses, with its layout and header") {
  int logs = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(FUSEPLAN_TEST_DATA) + "/nccl-tests")) {
    const NcclTestsLog log = read_nccl_tests(e.path().string());
    INFO(e.path());
    CHECK(!log.points.empty());
    CHECK(log.ranks >= 8);
    CHECK(log.per_node >= 4);
    CHECK(log.ranks % log.per_node == 0);
    CHECK(!log.header.at("source").empty());
    CHECK(!log.header.at("hardware").empty());
    CHECK(!log.header.at("nccl").empty());
    CHECK_NOTHROW(load_cluster(log.header.at("cluster")));
    ++logs;
  }
  CHECK(logs >= 8);
  const NcclTestsLog h = read_nccl_tests(std::string(FUSEPLAN_TEST_DATA) + "/nccl-tests/h100-ndr-4x8.txt");
  CHECK(h.ranks == 32);
  CHECK(h.per_node == 8);  // from the host names
  CHECK(h.hosts.size() == 4);
  CHECK(h.nccl_version == "2.26.2");
  CHECK(h.points.size() == 32);
}

TEST_CASE("nccl-tests logs: ranks per node from host names, MPI prefixes, NCCL's printed choices") {
  const std::string path = write_tmp(
      "ok.txt", std::string(kHead) + "[1,0]<stdout>:           8             2     float     sum      -1    20.00    0.00    0.00      0    20.00    0.00    0.00      0\n"
                "node:1:2 [0] NCCL INFO AllReduce: 8 Bytes -> Algo RING proto LL channel{Lo..Hi}={0..1}\n"
                "          64            16     float     sum      -1    21.00    0.00    0.00      0    21.00    0.00    0.00      0\n"
                "# Avg bus bandwidth    : 0.00\n");
  const NcclTestsLog log = read_nccl_tests(path);
  CHECK(log.ranks == 4);
  CHECK(log.per_node == 2);
  CHECK(log.points.size() == 2);
  CHECK(log.points[1].second == Approx(21e-6));
  CHECK(log.nccl_version == "2.21.5");
  REQUIRE(log.choices.size() == 1);
  CHECK(log.choices[0].algo == "ring");
  CHECK(log.choices[0].proto == "ll");
  // calibrate reads the layout: 4 ranks, 2 per node (not all on one node).
  const Sweep s = load_nccl_tests(path, "nccl", 0, 0);
  CHECK(s.ranks == 4);
  CHECK(s.per_node == 2);
}

TEST_CASE("nccl-tests logs: garbage rows and missing columns are refused with the line number") {
  const std::string garbage = write_tmp(
      "garbage.txt", std::string(kHead) + "           8             2     float     sum      -1    20.00    0.00    0.00      0    20.00    0.00    0.00      0\n"
                     "          64            16     float     sum      -1    abc    0.00    0.00      0    21.00    0.00    0.00      0\n");
  CHECK_THROWS_WITH(read_nccl_tests(garbage), Catch::Contains("line 9") && Catch::Contains("cannot read the row"));
  const std::string short_row = write_tmp("short.txt", std::string(kHead) + "          64            16     float     sum\n");
  CHECK_THROWS_WITH(read_nccl_tests(short_row), Catch::Contains("line 8") && Catch::Contains("at least 8 columns"));
  const std::string type = write_tmp(
      "type.txt", std::string(kHead) + "          64            16     float128     sum      -1    20.00    0.00    0.00      0    20.00    0.00    0.00      0\n");
  CHECK_THROWS_WITH(read_nccl_tests(type), Catch::Contains("line 8") && Catch::Contains("unknown data type"));
  const std::string count = write_tmp(
      "count.txt", std::string(kHead) + "          64            15     float     sum      -1    20.00    0.00    0.00      0    20.00    0.00    0.00      0\n");
  CHECK_THROWS_WITH(read_nccl_tests(count), Catch::Contains("is not the size"));
  const std::string empty = write_tmp("empty.txt", kHead);
  CHECK_THROWS_WITH(read_nccl_tests(empty), Catch::Contains("no all_reduce_perf result rows"));
  CHECK_THROWS_WITH(read_nccl_tests("/nonexistent/log.txt"), Catch::Contains("cannot open"));
}

TEST_CASE("nccl calibration: NCCL's form per size range, fitted on a log, recovers its own prediction") {
  // A log made by the model itself is fitted back within rounding.
  Cluster c = load_cluster("dgx-h100");
  CollectiveModel m(c, 16);
  Sweep s{"nccl", 16, 8, 4, {}};
  for (double b = 1 << 20; b <= double(1 << 30); b *= 2)
    s.points.push_back({b, m.cost("auto", int64_t(b) / 4, Precision::FP32).cost.total()});
  const SegmentedFit fit = fit_segments(find_algorithm("nccl"), s, 0, 4, 0.01);
  CHECK(fit.max_rel_err < 0.01);
  // Written into the cluster, the calibrated `nccl` follows the fit.
  c.calibrated["nccl"] = fit.constants();
  CollectiveModel k(c, 16);
  const CollectiveChoice ch = k.cost("auto", (64 << 20) / 4, Precision::FP32);
  CHECK(ch.calibrated);
  CHECK(ch.cost.total() == Approx(m.cost("auto", (64 << 20) / 4, Precision::FP32).cost.total()).epsilon(0.01));
}

TEST_CASE("calibration remembers the tree's pipeline depth it was fitted with") {
  // Measurements made by the double binary tree at one depth: the fit finds that depth
  // and prediction uses it, whatever depth another network would choose.
  Sweep s{"double_binary_tree", 16, 1, 4, {}};
  CollectiveArgs a;
  a.topo = {16, 1};
  a.net = Net::uniform(20e-6, 1.0 / 10e9, 0);
  a.variant = 2;
  for (double b = 1 << 16; b <= double(1 << 28); b *= 2) {
    a.count = int64_t(b) / 4;
    s.points.push_back({b, closed_form_cost(find_algorithm("double_binary_tree"), a).total()});
  }
  const CalibrationFit f = fit_calibration(find_algorithm("double_binary_tree"), s, 0);
  CHECK(f.k.variant == 2);
  CHECK(f.max_rel_err < 1e-6);
  CHECK(f.k.alpha_us == Approx(20).epsilon(1e-6));
}

TEST_CASE("nccl: the choice NCCL printed on a real HGX H100 node (NCCL 2.26.2) is the model's, size by size") {
  const auto j = nlohmann::json::parse(std::ifstream(std::string(FUSEPLAN_TEST_DATA) + "/nccl-choices/hgx-h100-1x8.json"));
  CollectiveModel m(load_cluster(j.at("cluster").get<std::string>()), j.at("gpus").get<int>());
  int checked = 0;
  for (const auto& range : j.at("choices"))
    for (double b = range.at("from_bytes").get<double>(); b <= range.at("to_bytes").get<double>(); b *= 2) {
      const CollectiveChoice ch = m.cost("auto", std::max<int64_t>(1, int64_t(b) / 4), Precision::FP32);
      INFO(b << " bytes");
      CHECK(CollectiveModel::variant_name(ch) ==
            range.at("algorithm").get<std::string>() + "/" + range.at("protocol").get<std::string>());
      ++checked;
    }
  CHECK(checked == 32);
}

TEST_CASE("nccl calibration: between two size ranges the cheaper line, as NCCL switches protocols") {
  // A latency-bound range and a bandwidth-bound range: between them NCCL runs whichever is
  // cheaper, so the calibrated time is the lower of the two lines, not a blend.
  std::vector<Calibration> k(2);
  k[0] = {30, 80, 0, 512, 512 << 10, -1};     // 30 us + 80 us/MB, up to 512 KiB
  k[1] = {66, 6, 0, 2 << 20, 32 << 20, -1};   // 66 us + 6 us/MB, from 2 MiB
  const double mib = 1 << 20;
  auto time = [&](const Calibration& c, double b) { return c.alpha_us + c.beta_us_per_MB * b * 1e-6; };
  const Calibration at1 = calibration_at(k, mib, true);
  CHECK(time(at1, mib) == Approx(std::min(30 + 80 * mib * 1e-6, 66 + 6 * mib * 1e-6)));
  CHECK(time(calibration_at(k, mib, false), mib) > time(at1, mib) + 10);  // the blend is far above
  // Inside a range its own constants, whatever the mode.
  CHECK(calibration_at(k, 4096, true).alpha_us == 30);
  CHECK(calibration_at(k, 8 * mib, true).alpha_us == 66);
  // A cluster calibrated for nccl uses the cheaper line.
  Cluster c = load_cluster("dgx-h100");
  c.calibrated["nccl"] = k;
  CollectiveModel m(c, 16);
  CHECK(m.cost("auto", int64_t(mib) / 4, Precision::FP32).cost.total() * 1e6 == Approx(time(at1, mib)));
}

TEST_CASE("nccl: the times NCCL itself printed on H100 systems equal the model's, on the shipped dgx-h100") {
  // NCCL_DEBUG_SUBSYS=TUNING prints "<bytes> Bytes -> Algo <a> proto <p> time <us>": its
  // own ncclTopoGetAlgoTime for the pick, which nccl_time reproduces from the shipped
  // cluster alone (graphs from the emulated search, constants of the default release).
  // The 8-byte time is all latency (base + 2 x (7 NVLink hops + 1 network hop) of LL);
  // the 768 MiB one is all bandwidth (8 channels of NVLink on one node).
  struct Printed {
    const char* source;
    int ranks;
    double bytes;
    NcclAlgo algo;
    NcclProto proto;
    double time_us;
  };
  const Printed printed[] = {
      // NVIDIA/nccl issue #1595: one 8 x H100 NVLink node, "805306368 Bytes -> Algo 1 proto 2 time 3970.683594"
      {"NVIDIA/nccl#1595", 8, 805306368, Ring, Simple, 3970.683594},
      // NVIDIA/nccl issue #1453: two 8 x H100 nodes, "8 Bytes -> Algo 0 proto 0 time 25.200924"
      {"NVIDIA/nccl#1453", 16, 8, Tree, LL, 25.200924},
  };
  const Cluster c = load_cluster("dgx-h100");
  for (const Printed& p : printed) {
    const NcclSystem s = nccl_system(c, p.ranks, "", "test");
    const NcclTuning t = nccl_tune(s);
    INFO(p.source);
    CHECK(nccl_time(s, t, p.algo, p.proto, p.bytes).total_us() == Approx(p.time_us).epsilon(1e-4));
  }
}
