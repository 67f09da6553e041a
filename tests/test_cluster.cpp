// Cluster files: the shipped ones load; bad values are refused with file and JSON path.
#include <catch2/catch.hpp>

#include <limits>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/memory.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/zoo.hpp"

using namespace fuseplan;

namespace {
nlohmann::json p40() { return parse_json_file(config_dir() + "/clusters/tencent-p40.json"); }
void expect_error(const nlohmann::json& j, const std::string& text) {
  CHECK_THROWS_WITH(cluster_from_json(j, "c.json"), Catch::Contains(text));
}
}  // namespace

TEST_CASE("shipped clusters load and hold the paper's scale") {
  auto names = shipped_cluster_names();
  for (const char* n : {"tencent-p40", "dgx1-v100", "dgx-a100", "dgx-h100", "local-cpu"})
    CHECK(std::find(names.begin(), names.end(), n) != names.end());
  for (const auto& n : names) {
    INFO(n);
    Cluster c = load_cluster(n);
    CHECK(c.name == n);
    CHECK(c.capacity() >= 2);
  }
  Cluster c = load_cluster("tencent-p40");
  CHECK(c.capacity() >= 2048);
  CHECK(c.inter->gdr);
  CHECK(c.provenance.count("device.peak_TFLOPS.fp16"));
  // Round trip through JSON keeps the values.
  Cluster back = cluster_from_json(cluster_to_json(c), "mem");
  CHECK(back.intra.bw_GBps == c.intra.bw_GBps);
  CHECK(back.gamma_s_per_byte() == Approx(c.gamma_s_per_byte()));
}

TEST_CASE("cluster validation names the file and the JSON path") {
  auto j = p40();
  j["inter_node"]["nic_bw_Gbps"] = -100;
  expect_error(j, "c.json: $.inter_node.nic_bw_Gbps: must be in [0.008, 8e+06] Gb/s (got -100)");
  j = p40();
  j["nodes"] = 0;
  expect_error(j, "$.nodes: must be in [1,");
  j = p40();
  j["device"]["colour"] = "green";
  expect_error(j, "$.device.colour: unknown key");
  j = p40();
  j["device"]["compute_efficiency"] = 1.5;
  expect_error(j, "$.device.compute_efficiency: must be in [0.0001, 1] of peak");
  j = p40();
  j.erase("inter_node");
  expect_error(j, "$.inter_node: missing");
  j = p40();
  j["inter_node"]["topology"] = "hypercube";
  expect_error(j, "valid: fat-tree, torus, dragonfly, star");
  j = p40();
  j["inter_node"]["gdr"] = false;
  expect_error(j, "host_copy_bw_GBps: must be > 0 when gdr is false");
  j = p40();
  j["provenance"]["device.colour"] = "made up";
  expect_error(j, "names no value in this file");
  j = p40();
  j["intra_node"]["bw_GBps"] = "fast";
  expect_error(j, "$.intra_node.bw_GBps: expected a number, got string");
  j = p40();
  j["inter_node"]["torus_dims"] = {8, 8};
  expect_error(j, "torus_dims: only applies to topology torus");
  j["inter_node"]["topology"] = "torus";
  expect_error(j, "torus_dims: must multiply to the node count 256");
  j["inter_node"]["torus_dims"] = {8, 8, 4};
  CHECK(cluster_from_json(j, "c.json").inter->torus_dims == std::vector<int>{8, 8, 4});
  CHECK(cluster_from_json(cluster_to_json(cluster_from_json(j, "c.json")), "x").inter->torus_dims.size() == 3);
  j = p40();
  j["inter_node"]["topology"] = "dragonfly";
  j["inter_node"]["dragonfly"] = {{"groups", 8}, {"routers_per_group", 4}, {"nodes_per_router", 4}};
  expect_error(j, "must equal the node count 256");
  j["inter_node"]["dragonfly"]["groups"] = 16;
  CHECK(cluster_from_json(j, "c.json").inter->dragonfly->groups == 16);
  j["inter_node"]["fabric_link_bw_Gbps"] = -1;
  expect_error(j, "fabric_link_bw_Gbps: must be in [0.008, 8e+06] Gb/s (got -1)");
  CHECK_THROWS_WITH(parse_json_text("{\"schema\": ", "c.json"), Catch::Contains("c.json: malformed JSON"));
}

TEST_CASE("cluster values are held to physical ranges: tiny, denormal and huge numbers are refused") {
  struct Case {
    std::vector<std::string> path;
    double value;
    std::string says;
  };
  const std::vector<Case> cases = {
      {{"inter_node", "nic_bw_Gbps"}, 5e-324, "$.inter_node.nic_bw_Gbps: must be in [0.008, 8e+06] Gb/s"},
      {{"inter_node", "nic_bw_Gbps"}, 1e300, "$.inter_node.nic_bw_Gbps: must be in"},
      {{"inter_node", "lat_us"}, 1e-308, "$.inter_node.lat_us: must be in [1e-06, 1e+06] us, or 0"},
      {{"intra_node", "bw_GBps"}, 1e-300, "$.intra_node.bw_GBps: must be in [0.001, 1e+06] GB/s"},
      {{"intra_node", "lat_us"}, 1e7, "$.intra_node.lat_us: must be in"},
      {{"device", "peak_TFLOPS", "fp32"}, 5e-324, "$.device.peak_TFLOPS.fp32: must be in [0.0001, 100000] TFLOPS"},
      {{"device", "mem_bw_GBps"}, 1e-320, "$.device.mem_bw_GBps: must be in"},
      {{"device", "compute_efficiency"}, 1e-300, "$.device.compute_efficiency: must be in [0.0001, 1]"},
      {{"launch_overhead_us"}, 1e-310, "$.launch_overhead_us: must be in [1e-06, 1e+06] us, or 0"},
  };
  for (const auto& c : cases) {
    auto j = p40();
    nlohmann::json* at = &j;
    for (const auto& k : c.path) at = &(*at)[k];
    *at = c.value;
    INFO(c.says);
    expect_error(j, c.says);
  }
  // Exactly 0 stays a value where it means "none" (no latency, no overhead).
  auto j = p40();
  j["inter_node"]["lat_us"] = 0;
  j["launch_overhead_us"] = 0;
  CHECK(cluster_from_json(j, "c.json").inter->lat_us == 0);
  // Fitted constants multiply: a fit's tiny rounding reads back; a huge one does not.
  j["calibrated"]["ring"] = {{"alpha_us", 1e-13}, {"beta_us_per_MB", 2e-12}, {"gamma_us_per_MB", 0}};
  CHECK(cluster_from_json(j, "c.json").calibrated.at("ring").front().alpha_us == 1e-13);
  j["calibrated"]["ring"]["beta_us_per_MB"] = 1e300;
  expect_error(j, "$.calibrated.ring.beta_us_per_MB: must be in [0, 1e+12] us/MB");
}

TEST_CASE("GPU counts are checked against the cluster") {
  Cluster c = load_cluster("tencent-p40");
  CHECK_THROWS_WITH(check_gpu_count(c, 0, "--gpus"), Catch::Contains("--gpus: must be in [1, 1048576] (got 0)"));
  CHECK_THROWS_WITH(check_gpu_count(c, 4096, "--gpus"), Catch::Contains("do not fit cluster tencent-p40"));
  CHECK_NOTHROW(check_gpu_count(c, 2048, "--gpus"));
  CHECK_THROWS_WITH(load_cluster("tencent-p41"), Catch::Contains("shipped: aws-p4d, aws-p5, dgx-a100"));
}

TEST_CASE("calibrated constants replace the topology model for that algorithm") {
  auto j = p40();
  j["calibrated"]["ring"] = {{"alpha_us", 10.0}, {"beta_us_per_MB", 100.0}, {"gamma_us_per_MB", 0.0}};
  Cluster c = cluster_from_json(j, "c.json");
  CollectiveModel m(c, 64);
  auto ch = m.cost("ring", 1 << 20, Precision::FP32);
  CHECK(ch.calibrated);
  double n = 4.0 * (1 << 20);
  CHECK(ch.cost.total() == Approx(2 * 63 * 10e-6 + 2 * n * 63 / 64 * 100e-12));
  j["calibrated"]["warp"] = j["calibrated"]["ring"];
  CHECK_THROWS_WITH(CollectiveModel(cluster_from_json(j, "c.json"), 64), Catch::Contains("unknown algorithm 'warp'"));
}

TEST_CASE("the transport's achieved fraction of line rate slows inter-node bandwidth on MPI clusters") {
  // tencent-p40 (MPI library) states no transport: line rate. Stated RoCE: large
  // inter-node messages reach 0.75 of its 100 Gb/s.
  auto j = p40();
  Cluster wire = cluster_from_json(j, "c.json");
  CHECK(wire.inter->fraction(wire.library) == 1);
  j["inter_node"]["transport"] = "roce";
  Cluster roce = cluster_from_json(j, "c.json");
  CHECK(roce.inter->fraction(roce.library) == Approx(0.75));
  j["inter_node"].erase("transport");
  // Rabenseifner among 32 single-GPU nodes: every step crosses the network, so its
  // bandwidth term grows by exactly 1 / 0.75 and nothing else changes.
  j["gpus_per_node"] = 1;
  j["nodes"] = 64;
  Cluster wire1 = cluster_from_json(j, "c.json");
  j["inter_node"]["transport"] = "roce";
  Cluster roce1 = cluster_from_json(j, "c.json");
  const int64_t count = int64_t(1) << 24;
  auto a = CollectiveModel(wire1, 32).cost("rabenseifner", count, Precision::FP32).cost;
  auto b = CollectiveModel(roce1, 32).cost("rabenseifner", count, Precision::FP32).cost;
  CHECK(b.bandwidth_s == Approx(a.bandwidth_s / 0.75));
  CHECK(b.latency_s == Approx(a.latency_s));
  CHECK(b.reduce_s == Approx(a.reduce_s));
  // The file's own figure wins over the transport's, and is written back.
  j["inter_node"]["achieved_fraction"] = 0.9;
  Cluster own = cluster_from_json(j, "c.json");
  CHECK(own.inter->fraction(own.library) == Approx(0.9));
  CHECK(cluster_to_json(own)["inter_node"]["achieved_fraction"] == 0.9);
  CHECK(cluster_to_json(own)["inter_node"]["transport"] == "roce");
  // Every named transport has a published figure in (0, 1].
  for (const char* t : {"infiniband", "roce", "tcp", "efa"}) {
    INFO(t);
    REQUIRE(transport_fraction(t));
    CHECK(*transport_fraction(t) > 0);
    CHECK(*transport_fraction(t) <= 1);
  }
  CHECK(!transport_fraction("pigeon"));
  // NCCL clusters keep NCCL's own model unless the file states a figure.
  auto n = parse_json_file(config_dir() + "/clusters/dgx-h100.json");
  n["inter_node"]["transport"] = "roce";
  Cluster nccl = cluster_from_json(n, "n.json");
  CHECK(nccl.inter->fraction(nccl.library) == 1);
  n["inter_node"]["achieved_fraction"] = 0.5;
  Cluster halved = cluster_from_json(n, "n.json");
  CHECK(CollectiveModel(halved, 32).cost("auto", count, Precision::FP32).total_s() >
        CollectiveModel(nccl, 32).cost("auto", count, Precision::FP32).total_s());
  // Bad values name the path and the valid choices or range.
  j = p40();
  j["inter_node"]["transport"] = "carrier-pigeon";
  expect_error(j, "$.inter_node.transport: unknown transport 'carrier-pigeon' (valid: infiniband, roce, tcp, efa)");
  j = p40();
  j["inter_node"]["achieved_fraction"] = 1.5;
  expect_error(j, "$.inter_node.achieved_fraction: must be in [0.01, 1]");
}

TEST_CASE("staging once per allreduce adds two copies of the vector to every textbook algorithm across nodes") {
  auto j = p40();
  const Cluster direct = cluster_from_json(j, "c.json");
  j["inter_node"]["gdr"] = false;
  j["inter_node"]["host_copy_bw_GBps"] = 12;
  j["inter_node"]["host_copy_lat_us"] = 10;
  const Cluster per_message = cluster_from_json(j, "c.json");
  CHECK(per_message.inter->staging == "message");
  j["inter_node"]["staging"] = "collective";
  const Cluster per_collective = cluster_from_json(j, "c.json");
  CHECK(cluster_to_json(per_collective)["inter_node"]["staging"] == "collective");
  const int64_t count = int64_t(1) << 22;
  const double n = 4.0 * double(count);
  for (const char* algo : {"ring", "rabenseifner", "hierarchical", "hierarchical_hd", "torus2d"}) {
    INFO(algo);
    const Cost a = CollectiveModel(direct, 64).cost(algo, count, Precision::FP32).cost;
    const Cost b = CollectiveModel(per_collective, 64).cost(algo, count, Precision::FP32).cost;
    CHECK(b.latency_s == Approx(a.latency_s + 2 * 10e-6));
    CHECK(b.bandwidth_s == Approx(a.bandwidth_s + 2 * n / 12e9));
    CHECK(b.reduce_s == a.reduce_s);
    // Staging every message pays the copies in every inter-node step instead: more than
    // twice the vector for the ring, whose 2(p - 1) steps all cross nodes.
    if (std::string(algo) == "ring")
      CHECK(CollectiveModel(per_message, 64).cost(algo, count, Precision::FP32).cost.total() > b.total());
    // Inside one node nothing goes through the host.
    CHECK(CollectiveModel(per_collective, 8).cost(algo, count, Precision::FP32).cost.total() ==
          Approx(CollectiveModel(direct, 8).cost(algo, count, Precision::FP32).cost.total()));
  }
  j["inter_node"]["staging"] = "pigeon";
  expect_error(j, "$.inter_node.staging: unknown staging 'pigeon' (valid: message, collective, pipelined)");
  j = p40();
  j["inter_node"]["staging"] = "collective";
  expect_error(j, "$.inter_node.staging: only applies when gdr is false");
}

TEST_CASE("pipelined staging runs the inter-node path at the slower of the NIC and the host copy") {
  auto j = p40();
  const Cluster direct = cluster_from_json(j, "c.json");
  j["inter_node"]["gdr"] = false;
  j["inter_node"]["host_copy_bw_GBps"] = 1000;  // far faster than the NIC
  j["inter_node"]["host_copy_lat_us"] = 0;
  j["inter_node"]["staging"] = "pipelined";
  const Cluster free_copy = cluster_from_json(j, "c.json");
  CHECK(cluster_to_json(free_copy)["inter_node"]["staging"] == "pipelined");
  const int64_t count = int64_t(1) << 22;
  auto ring = [&](const Cluster& c, int gpus) { return CollectiveModel(c, gpus).cost("ring", count, Precision::FP32); };
  // Copies that keep pace with the NIC and cost no latency change nothing.
  CHECK(ring(free_copy, 64).cost.total() == Approx(ring(direct, 64).cost.total()));
  j["inter_node"]["host_copy_lat_us"] = 10;
  const Cluster fast_copy = cluster_from_json(j, "c.json");
  const CollectiveModel d(direct, 64), f(fast_copy, 64);
  CHECK(f.net().inter_beta == Approx(d.net().inter_beta));
  CHECK(f.net().inter_alpha == Approx(d.net().inter_alpha + 2 * 10e-6));
  CHECK(ring(fast_copy, 64).cost.total() > ring(direct, 64).cost.total());
  // Store-and-forward pays the copies in every step on top of the wire; the pipeline hides them.
  j["inter_node"]["staging"] = "message";
  CHECK(ring(cluster_from_json(j, "c.json"), 64).cost.total() > ring(fast_copy, 64).cost.total());
  j["inter_node"]["staging"] = "pipelined";
  j["inter_node"]["host_copy_bw_GBps"] = 0.5;  // slower than the NIC: the copy sets the pace
  const Cluster slow_copy = cluster_from_json(j, "c.json");
  CHECK(CollectiveModel(slow_copy, 64).net().inter_beta == Approx(1 / 0.5e9));
  CHECK(ring(slow_copy, 64).cost.total() > 2 * ring(fast_copy, 64).cost.total());
  // Inside one node nothing goes through the host.
  CHECK(ring(slow_copy, 8).cost.total() == Approx(ring(direct, 8).cost.total()));
}

TEST_CASE("calibrated size segments: the segment of the size, blended between, validated, written back") {
  auto j = p40();
  j["calibrated"]["ring"] = {{"segments",
                              {{{"from_bytes", 0}, {"to_bytes", 1 << 20}, {"alpha_us", 2.0}, {"beta_us_per_MB", 80.0},
                                {"gamma_us_per_MB", 0.0}},
                               {{"from_bytes", 4 << 20}, {"to_bytes", 64 << 20}, {"alpha_us", 50.0},
                                {"beta_us_per_MB", 200.0}, {"gamma_us_per_MB", 0.0}}}}};
  const Cluster c = cluster_from_json(j, "c.json");
  REQUIRE(c.calibrated.at("ring").size() == 2);
  CollectiveModel m(c, 2);
  auto ring = [&](double bytes) { return m.cost("ring", int64_t(bytes / 4), Precision::FP32).cost.total(); };
  // Two ranks: the ring is 2 alpha + n beta.
  CHECK(ring(1 << 19) == Approx(2 * 2e-6 + 524288 * 80e-12));
  CHECK(ring(16 << 20) == Approx(2 * 50e-6 + 16777216 * 200e-12));
  CHECK(ring(1024.0 * (1 << 20)) == Approx(2 * 50e-6 + 1073741824 * 200e-12));  // beyond: the last segment
  // Halfway between 1 and 4 MiB: the constants (and so the time) blend half and half.
  const double mid = 2.5 * (1 << 20);
  CHECK(ring(mid) == Approx(0.5 * (2 * 2e-6 + mid * 80e-12) + 0.5 * (2 * 50e-6 + mid * 200e-12)));
  // The time is continuous at the segments' ends.
  CHECK(ring((1 << 20) + 4) == Approx(ring(1 << 20)).epsilon(1e-5));
  CHECK(ring((4 << 20) - 4) == Approx(ring(4 << 20)).epsilon(1e-5));
  const Cluster back = cluster_from_json(cluster_to_json(c), "back");
  REQUIRE(back.calibrated.at("ring").size() == 2);
  CHECK(back.calibrated.at("ring")[1].from_bytes == 4 << 20);
  CHECK(back.calibrated.at("ring")[1].beta_us_per_MB == 200.0);
  auto bad = j;
  bad["calibrated"]["ring"]["segments"][1]["from_bytes"] = 1 << 19;
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("previous segment"));
  bad = j;
  bad["calibrated"]["ring"]["segments"][0]["to_bytes"] = -1;
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("to_bytes"));
  bad = j;
  bad["calibrated"]["ring"]["segments"] = nlohmann::json::array();
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("at least one segment"));
  bad = j;
  bad["calibrated"]["ring"]["segments"][0]["colour"] = 1;
  CHECK_THROWS_WITH(cluster_from_json(bad, "c.json"), Catch::Contains("colour"));
}

TEST_CASE("auto picks the cheapest applicable algorithm") {
  Cluster c = load_cluster("dgx-a100");
  CollectiveModel m(c, 64);
  for (int64_t count : {256, 1 << 16, 1 << 22, 1 << 26}) {
    auto best = m.cost("auto", count, Precision::FP16);
    for (const auto& a : algorithms()) {
      // auto chooses among the cluster's library (NCCL here), and that choice is NCCL's.
      if (a.library != m.library() || !a.not_applicable(m.args(count, Precision::FP16)).empty()) continue;
      CHECK(best.total_s() <= m.cost(a.name, count, Precision::FP16).total_s() * (1 + 1e-12));
    }
  }
  CollectiveModel odd(c, 12);  // 12 GPUs = 1.5 nodes: hierarchical does not apply
  CHECK_THROWS_WITH(odd.cost("hierarchical", 1024, Precision::FP16), Catch::Contains("multiple of the group size"));
  CHECK(odd.cost("auto", 1024, Precision::FP16).algorithm != nullptr);
  // FP16 transfer halves the bytes.
  CHECK(m.cost("ring", 1 << 24, Precision::FP16).total_s() < m.cost("ring", 1 << 24, Precision::FP32).total_s());
}

TEST_CASE("memory per GPU: the replicated states and the activations, held against the cluster's GPU") {
  const Model resnet = load_model("resnet50", {});
  const double params = double(resnet.param_count());
  MemoryEstimate e = estimate_memory(resnet, 32, Precision::FP16, Precision::FP32);
  CHECK(e.weights == params * 2);
  CHECK(e.gradients == params * 2);
  CHECK(e.fusion_buffers == params * 4);
  CHECK(e.optimizer == params * 8);  // FP32 masters and momenta
  CHECK(e.activations == double(resnet.activation_elems()) * 32 * 2);
  CHECK(estimate_memory(resnet, 64, Precision::FP16, Precision::FP32).activations == Approx(2 * e.activations));
  // ResNet-50 at 32 per GPU fits a P40 (24 GiB): no warning.
  Cluster c = load_cluster("tencent-p40");
  CHECK(check_memory(resnet, c, 32, Precision::FP16, Precision::FP16, "--model").empty());
  // GPT-2 XL at 64 per GPU on 80 GB: the states fit, the activations do not; the warning
  // names the figures and the largest batch that fits, and that batch does fit.
  const Model gpt = load_model("gpt2_xl", {});
  Cluster h = load_cluster("dgx-h100");
  const std::string w = check_memory(gpt, h, 64, Precision::FP16, Precision::FP16, "--model");
  CHECK_THAT(w, Catch::Contains("needs about") && Catch::Contains("has 80 GiB") && Catch::Contains("per GPU fits"));
  const auto at = w.find("Batch ");
  REQUIRE(at != std::string::npos);
  const int fits = std::stoi(w.substr(at + 6));
  CHECK(fits >= 1);
  CHECK(fits < 64);
  CHECK(check_memory(gpt, h, fits, Precision::FP16, Precision::FP16, "--model").empty());
  CHECK(!check_memory(gpt, h, fits + 1, Precision::FP16, Precision::FP16, "--model").empty());
  // A GPU smaller than the replicated states: refused, whatever the batch.
  h.device.mem_GiB = 16;
  CHECK_THROWS_WITH(check_memory(gpt, h, 1, Precision::FP16, Precision::FP16, "--model gpt2_xl"),
                    Catch::Contains("--model gpt2_xl: gpt2_xl does not fit one GPU") && Catch::Contains("has 16 GiB"));
  // Unknown device memory (0): no check.
  h.device.mem_GiB = 0;
  CHECK(check_memory(gpt, h, 4096, Precision::FP32, Precision::FP32, "--model").empty());
}

TEST_CASE("a what-if compute slowdown sets backward's side of processor sharing and keeps the allreduces' side") {
  Cluster gpu = load_cluster("dgx-a100");
  REQUIRE(gpu.comm_compute_sharing == 0);
  REQUIRE_FALSE(gpu.allreduce_sharing);
  set_compute_slowdown(gpu, 0.189, "--x");
  CHECK(gpu.sharing(8).compute == 0.189);
  CHECK(gpu.sharing(8).comm == 0);  // the allreduces kept their full rate
  CHECK_FALSE(gpu.sharing(1).any());  // one rank shares nothing

  // A cluster whose allreduces follow comm_compute_sharing keeps that rate for them.
  Cluster cpu = load_cluster("dgx-a100");
  cpu.comm_compute_sharing = 0.5;
  set_compute_slowdown(cpu, 0.1, "--x");
  CHECK(cpu.sharing(2).compute == 0.1);
  CHECK(cpu.sharing(2).comm == 0.5);
  cpu.allreduce_sharing = 3;
  set_compute_slowdown(cpu, 0.2, "--x");
  CHECK(cpu.sharing(2).comm == 3);

  for (double bad : {-0.1, 1.5, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    CHECK_THROWS_WITH(set_compute_slowdown(gpu, bad, "--x"), Catch::StartsWith("--x: must be in [0, 1]"));
}
