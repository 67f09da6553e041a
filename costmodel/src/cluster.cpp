// Cluster files: strict loading, validation and lookup of shipped clusters.
#include "fuseplan/costmodel/cluster.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <stdexcept>
#include <unordered_map>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"

#ifndef FUSEPLAN_CONFIG_DIR
#define FUSEPLAN_CONFIG_DIR "configs"
#endif

namespace fuseplan {

namespace {
// Reduction reads two operands and writes one result: three bytes of memory traffic per
// byte reduced.
constexpr double kReduceMemoryPasses = 3.0;

// Physical ranges of a cluster file's values (docs/formats.md): wide enough for any real
// machine, narrow enough that no time becomes infinite and no simulated link degenerate
// (SimGrid aborts on bandwidths and latencies near the double's limits).
constexpr double kMinTFLOPS = 1e-4, kMinGBps = 1e-3, kMaxGBps = 1e6;  // 1 MB/s .. 1 PB/s
constexpr double kMinUs = 1e-6, kMaxUs = 1e6;                        // 1 ps .. 1 s, or exactly 0
constexpr double kMinFraction = 1e-4;

// A value that may be exactly 0 (none) or within [lo, hi]; `required` makes it present.
std::optional<double> zero_or(JsonObject& o, const std::string& key, double lo, double hi, const std::string& unit,
                              bool required = false) {
  if (!required && !o.has(key)) return o.opt_number(key);
  const double v = o.number(key);
  if (v == 0) return 0.0;
  return o.in_range(key, lo, hi, unit + ", or 0");
}

const char* const kTopologies[] = {"fat-tree", "torus", "dragonfly", "star"};
const char* const kIntraKinds[] = {"nvlink", "nvswitch", "pcie", "shm"};
const char* const kLibraries[] = {"mpi", "nccl"};
const char* const kCpus[] = {"intel", "amd", "arm", "power"};
const char* const kNcclGraphs[] = {"ring", "tree", "collnet_direct", "collnet_chain", "nvls"};

template <size_t N>
bool one_of(const std::string& s, const char* const (&set)[N]) {
  return std::find(std::begin(set), std::end(set), s) != std::end(set);
}
template <size_t N>
std::string list(const char* const (&set)[N]) {
  std::string out;
  for (auto s : set) out += (out.empty() ? "" : ", ") + std::string(s);
  return out;
}

bool path_exists(const nlohmann::json& root, const std::string& dotted) {
  const nlohmann::json* cur = &root;
  size_t start = 0;
  while (start <= dotted.size()) {
    size_t dot = dotted.find('.', start);
    std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_object() || !cur->contains(part)) return false;
    cur = &(*cur)[part];
    if (dot == std::string::npos) return true;
    start = dot + 1;
  }
  return false;
}

// An efficiency per precision the device has: one number for all, or an object keyed like
// peak_TFLOPS. `required`: the key, and in an object every precision, must be there; else
// what is absent is left out (the caller's default applies).
std::map<Precision, double> efficiency_per_precision(JsonObject& o, const std::string& key, const DeviceSpec& d,
                                                     double hi, bool required) {
  std::map<Precision, double> out;
  if (o.has(key) && o.raw(key).is_object()) {
    auto eff = o.object(key);
    for (auto [p, peak] : d.peak_TFLOPS) {
      const std::string name(precision_name(p));
      if (required) out[p] = eff.in_range(name, kMinFraction, hi, "of peak");
      else if (auto v = eff.opt_in_range(name, kMinFraction, hi, "of peak")) out[p] = *v;
    }
    eff.finish();
  } else if (const std::optional<double> v = required ? o.in_range(key, kMinFraction, hi, "of peak")
                                                      : o.opt_in_range(key, kMinFraction, hi, "of peak")) {
    for (auto [p, peak] : d.peak_TFLOPS) out[p] = *v;
  }
  return out;
}
}  // namespace

std::string config_dir() {
  if (const char* env = std::getenv("FUSEPLAN_CONFIG_DIR")) return env;
  // An installed binary: PREFIX/bin/fuseplan reads PREFIX/share/fuseplan/configs.
  std::error_code ec;
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const std::filesystem::path installed = exe.parent_path().parent_path() / "share" / "fuseplan" / "configs";
    if (std::filesystem::is_directory(installed / "clusters", ec)) return installed.string();
  }
  return FUSEPLAN_CONFIG_DIR;  // the source tree's, for binaries run from the build tree
}

double DeviceSpec::compute_efficiency_of(ComputeClass k, Precision p) const {
  if (auto it = by_kind.find(k); it != by_kind.end())
    if (auto e = it->second.compute.find(p); e != it->second.compute.end()) return e->second;
  if (k == ComputeClass::ConvKxKs1) return compute_efficiency_of(ComputeClass::ConvKxK, p);
  return compute_efficiency.at(p);
}

double DeviceSpec::memory_efficiency_of(ComputeClass k, Precision p) const {
  if (auto it = by_kind.find(k); it != by_kind.end())
    if (auto e = it->second.memory.find(p); e != it->second.memory.end()) return e->second;
  if (k == ComputeClass::ConvKxKs1) return memory_efficiency_of(ComputeClass::ConvKxK, p);
  return memory_efficiency;
}

double Cluster::peak_flops(Precision p) const {
  auto it = device.peak_TFLOPS.find(p);
  if (it == device.peak_TFLOPS.end())
    throw InputError(source + ": device " + device.name + " has no " + std::string(precision_name(p)) +
                     " peak (device.peak_TFLOPS); choose another " + field("precision"));
  return it->second * 1e12;
}

double Cluster::gamma_s_per_byte() const {
  if (reduce_bw_GBps) return 1.0 / (*reduce_bw_GBps * 1e9);
  return kReduceMemoryPasses / device.memory_Bps();
}

double InterNodeNetwork::fraction(std::string_view library) const {
  if (achieved_fraction) return *achieved_fraction;
  if (library == "nccl") return 1;
  return transport_fraction(transport).value_or(1);
}

Cluster cluster_from_json(const nlohmann::json& j, const std::string& origin) {
  JsonObject r(j, origin);
  std::string schema = r.string("schema");
  if (schema != kClusterSchema)
    r.fail("schema", "unsupported schema '" + schema + "' (this build reads " + kClusterSchema + ")");
  Cluster c;
  c.source = origin;
  c.name = r.string("name");
  if (c.name.empty()) r.fail("name", "must not be empty");
  c.description = r.opt_string("description").value_or("");
  c.nodes = static_cast<int>(r.integer("nodes", 1, 1 << 20));
  c.gpus_per_node = static_cast<int>(r.integer("gpus_per_node", 1, 1024));

  auto d = r.object("device");
  c.device.name = d.string("name");
  auto peaks = d.object("peak_TFLOPS");
  for (auto p : {Precision::FP32, Precision::FP16, Precision::BF16}) {
    std::string key(precision_name(p));
    if (peaks.has(key)) c.device.peak_TFLOPS[p] = peaks.in_range(key, kMinTFLOPS, 1e5, "TFLOPS");
    else peaks.opt_number(key);  // mark the key as known for the error message
  }
  peaks.finish();
  if (c.device.peak_TFLOPS.empty()) d.fail("peak_TFLOPS", "needs at least one of fp32, fp16, bf16");
  c.device.mem_bw_GBps = d.in_range("mem_bw_GBps", kMinGBps, kMaxGBps, "GB/s");
  c.device.mem_GiB = d.opt_in_range("mem_GiB", 0, 1e5, "GiB").value_or(0);
  c.device.compute_efficiency = efficiency_per_precision(d, "compute_efficiency", c.device, 1, true);
  c.device.memory_efficiency = d.in_range("memory_efficiency", kMinFraction, 1, "of peak");
  // A class's compute efficiency may pass 1 (kMaxClassEfficiency says why).
  if (d.has("by_kind")) {
    auto kinds = d.object("by_kind");
    for (const std::string& key : kinds.keys()) {
      const std::optional<ComputeClass> k = parse_compute_class(key);
      if (!k) kinds.fail(key, "unknown layer class (valid: " + compute_class_list() + ")");
      auto one = kinds.object(key);
      ClassEfficiency& e = c.device.by_kind[*k];
      e.compute = efficiency_per_precision(one, "compute_efficiency", c.device, kMaxClassEfficiency, false);
      e.memory = efficiency_per_precision(one, "memory_efficiency", c.device, 1, false);
      if (e.compute.empty() && e.memory.empty())
        one.fail("compute_efficiency", "missing: give compute_efficiency, memory_efficiency or both");
      one.finish();
    }
    kinds.finish();
  }
  c.device.kernel_overhead_us = zero_or(d, "kernel_overhead_us", kMinUs, kMaxUs, "us").value_or(0);
  c.device.compute_capability = static_cast<int>(d.opt_integer("compute_capability", 30, 200).value_or(0));
  c.device.pcie_gen = static_cast<int>(d.opt_integer("pcie_gen", 1, 7).value_or(0));
  d.finish();

  auto in = r.object("intra_node");
  c.intra.kind = in.string("kind");
  if (!one_of(c.intra.kind, kIntraKinds))
    in.fail("kind", "unknown link kind '" + c.intra.kind + "' (valid: " + list(kIntraKinds) + ")");
  c.intra.bw_GBps = in.in_range("bw_GBps", kMinGBps, kMaxGBps, "GB/s");
  c.intra.lat_us = zero_or(in, "lat_us", kMinUs, kMaxUs, "us", true).value();
  c.intra.gpus_per_switch = static_cast<int>(in.opt_integer("gpus_per_switch", 1, 1024).value_or(0));
  c.intra.uplink_bw_GBps = zero_or(in, "uplink_bw_GBps", kMinGBps, kMaxGBps, "GB/s").value_or(0);
  c.intra.nvlink_links = static_cast<int>(in.opt_integer("nvlink_links", 1, 64).value_or(0));
  c.intra.nvlink_sharp = in.opt_boolean("nvlink_sharp").value_or(false);
  c.intra.p2p = in.opt_boolean("p2p").value_or(true);
  const bool nvlink = c.intra.kind == "nvlink" || c.intra.kind == "nvswitch";
  if (c.intra.nvlink_links > 0 && !nvlink) in.fail("nvlink_links", "only applies to kind nvlink or nvswitch");
  if (c.intra.nvlink_sharp && c.intra.kind != "nvswitch") in.fail("nvlink_sharp", "needs kind nvswitch");
  in.finish();

  if (auto net = r.opt_object("inter_node")) {
    InterNodeNetwork n;
    n.nic_bw_Gbps = net->in_range("nic_bw_Gbps", kMinNicGbps, kMaxNicGbps, "Gb/s");
    n.nics_per_node = static_cast<int>(net->integer("nics_per_node", 1, 64));
    n.lat_us = zero_or(*net, "lat_us", kMinUs, kMaxUs, "us", true).value();
    n.topology = net->string("topology");
    if (!one_of(n.topology, kTopologies))
      net->fail("topology", "unknown topology '" + n.topology + "' (valid: " + list(kTopologies) + ")");
    n.oversubscription = net->opt_in_range("oversubscription", 1, 1e4, "(1 = full bisection)").value_or(1.0);
    n.nodes_per_leaf = static_cast<int>(net->opt_integer("nodes_per_leaf", 1, 1 << 20).value_or(0));
    if (net->has("torus_dims")) {
      if (n.topology != "torus") net->fail("torus_dims", "only applies to topology torus");
      int64_t product = 1;
      for (int64_t d : net->int_list("torus_dims", 1)) {
        if (d > (1 << 20)) net->fail("torus_dims", "dimension too large");
        n.torus_dims.push_back(static_cast<int>(d));
        product *= d;
        if (product > (1 << 24)) net->fail("torus_dims", "too many nodes");
      }
      if (n.torus_dims.empty() || product != c.nodes)
        net->fail("torus_dims", "must multiply to the node count " + std::to_string(c.nodes));
    }
    if (auto df = net->opt_object("dragonfly")) {
      if (n.topology != "dragonfly") net->fail("dragonfly", "only applies to topology dragonfly");
      InterNodeNetwork::Dragonfly d;
      d.groups = static_cast<int>(df->integer("groups", 1, 1 << 16));
      d.routers_per_group = static_cast<int>(df->integer("routers_per_group", 1, 1 << 12));
      d.nodes_per_router = static_cast<int>(df->integer("nodes_per_router", 1, 1 << 12));
      if (int64_t(d.groups) * d.routers_per_group * d.nodes_per_router != c.nodes)
        df->fail("groups", "groups x routers_per_group x nodes_per_router must equal the node count " +
                               std::to_string(c.nodes));
      df->finish();
      n.dragonfly = d;
    }
    n.fabric_link_bw_Gbps = net->opt_in_range("fabric_link_bw_Gbps", kMinNicGbps, kMaxNicGbps, "Gb/s").value_or(0);
    n.gdr = net->boolean("gdr");
    n.host_copy_bw_GBps = net->opt_in_range("host_copy_bw_GBps", kMinGBps, kMaxGBps, "GB/s").value_or(0);
    n.host_copy_lat_us = zero_or(*net, "host_copy_lat_us", kMinUs, kMaxUs, "us").value_or(0);
    if (!n.gdr && !(n.host_copy_bw_GBps > 0))
      net->fail("host_copy_bw_GBps", "must be > 0 when gdr is false (copies are staged through the host)");
    if (auto staging = net->opt_string("staging")) {
      if (n.gdr) net->fail("staging", "only applies when gdr is false");
      if (*staging != "message" && *staging != "collective" && *staging != "pipelined")
        net->fail("staging", "unknown staging '" + *staging + "' (valid: message, collective, pipelined)");
      n.staging = *staging;
    }
    n.sharp = net->opt_boolean("sharp").value_or(false);
    n.transport = net->opt_string("transport").value_or("");
    if (!n.transport.empty() && !transport_fraction(n.transport))
      net->fail("transport", "unknown transport '" + n.transport + "' (valid: " + transport_names() + ")");
    n.achieved_fraction = net->opt_in_range("achieved_fraction", 0.01, 1, "(fraction of nic_bw_Gbps)");
    net->finish();
    c.inter = n;
  } else if (c.nodes > 1) {
    r.fail("inter_node", "missing: a cluster with more than one node needs an inter-node network");
  }

  c.library = r.opt_string("library").value_or("mpi");
  if (!one_of(c.library, kLibraries))
    r.fail("library", "unknown communication library '" + c.library + "' (valid: " + list(kLibraries) + ")");
  if (auto nc = r.opt_object("nccl")) {
    if (c.library != "nccl") nc->fail("release", "the nccl section needs \"library\": \"nccl\"");
    c.nccl.release = nc->opt_string("release").value_or("");
    c.nccl.cpu = nc->opt_string("cpu").value_or("intel");
    if (!one_of(c.nccl.cpu, kCpus)) nc->fail("cpu", "unknown CPU '" + c.nccl.cpu + "' (valid: " + list(kCpus) + ")");
    if (auto graphs = nc->opt_object("graphs")) {
      for (const auto& name : graphs->keys()) {
        if (!one_of(name, kNcclGraphs))
          graphs->fail(name, "unknown NCCL graph (valid: " + list(kNcclGraphs) + "; nvls covers NVLS and NVLS Tree)");
        auto g = graphs->object(name);
        NcclGraph x;
        x.channels = static_cast<int>(g.integer("channels", 1, 64));
        x.bw_intra_GBps = g.in_range("bw_intra_GBps", kMinGBps, kMaxGBps, "GB/s");
        x.bw_inter_GBps = g.in_range("bw_inter_GBps", kMinGBps, kMaxGBps, "GB/s");
        x.latency_inter_us = zero_or(g, "latency_inter_us", kMinUs, kMaxUs, "us").value_or(0);
        x.tree_pattern = g.opt_boolean("tree_pattern").value_or(false);
        g.finish();
        c.nccl.graphs[name] = x;
      }
      graphs->finish();
    }
    if (auto k = nc->opt_object("constants")) {
      for (const auto& name : k->keys()) c.nccl.constants[name] = k->in_range(name, 0, 1e9, "");
      k->finish();
    }
    nc->finish();
  }
  if (c.library == "nccl") {
    if (c.device.compute_capability < 60)
      r.fail("device", "needs compute_capability (the CUDA sm, e.g. 80 or 90) when library is nccl");
    nccl_constants(c.nccl.release, c.nccl.constants, origin);  // the release and constant names exist
  }

  c.launch_overhead_us = zero_or(r, "launch_overhead_us", kMinUs, kMaxUs, "us", true).value();
  c.dispatch_overhead_us = zero_or(r, "dispatch_overhead_us", kMinUs, kMaxUs, "us").value_or(0);
  c.comm_compute_sharing = r.opt_number("comm_compute_sharing").value_or(0);
  if (!(c.comm_compute_sharing >= 0 && c.comm_compute_sharing <= 1))
    r.fail("comm_compute_sharing", "must be between 0 (free overlap) and 1 (one shared processor)");
  c.allreduce_sharing = r.opt_number("allreduce_sharing");
  if (c.allreduce_sharing && !(*c.allreduce_sharing >= 0 && *c.allreduce_sharing <= kMaxAllreduceSharing))
    r.fail("allreduce_sharing", "must be between 0 (backward does not slow an allreduce) and " +
                                    std::to_string(int(kMaxAllreduceSharing)) + " (an allreduce at 1/" +
                                    std::to_string(int(kMaxAllreduceSharing) + 1) + " speed while backward runs)");
  c.job_bandwidth_factor =
      r.opt_in_range("job_bandwidth_factor", kMinJobBandwidthFactor, kMaxJobBandwidthFactor, "").value_or(1);
  c.reduce_bw_GBps = r.opt_in_range("reduce_bw_GBps", kMinGBps, kMaxGBps, "GB/s");
  c.compute_variation = r.opt_in_range("compute_variation", 0, kMaxComputeVariation, "").value_or(0);
  if (auto ip = r.opt_object("input_pipeline")) {
    c.input_samples_per_s_per_gpu = ip->in_range("samples_per_s_per_gpu", 1e-3, 1e9, "samples/s");
    ip->finish();
  }
  if (auto cal = r.opt_object("calibrated")) {
    auto constants = [](JsonObject& o, Calibration& k) {
      // Fitted constants multiply (a tiny one is a fit's rounding, harmless): only bounded above.
      k.alpha_us = o.in_range("alpha_us", 0, kMaxUs, "us");
      k.beta_us_per_MB = o.in_range("beta_us_per_MB", 0, 1e12, "us/MB");
      k.gamma_us_per_MB = o.in_range("gamma_us_per_MB", 0, 1e12, "us/MB");
      k.variant = static_cast<int>(o.opt_integer("variant", 0, 1 << 10).value_or(-1));
    };
    for (const auto& algo : cal->keys()) {
      auto a = cal->object(algo);
      std::vector<Calibration> segments;
      if (auto list = a.opt_array("segments")) {
        const nlohmann::json& items = *list;
        if (items.empty()) a.fail("segments", "needs at least one segment");
        for (size_t i = 0; i < items.size(); ++i) {
          auto o = element_object(items[i], origin, a.where("segments") + "[" + std::to_string(i) + "]");
          Calibration k;
          constants(o, k);
          k.from_bytes = o.in_range("from_bytes", 0, 1e15, "bytes");
          k.to_bytes = o.in_range("to_bytes", 0, 1e15, "bytes");
          if (k.to_bytes < k.from_bytes) o.fail("to_bytes", "must be >= from_bytes");
          if (!segments.empty() && !(k.from_bytes > segments.back().to_bytes))
            o.fail("from_bytes", "must be above the previous segment's to_bytes (segments ascend, disjoint)");
          o.finish();
          segments.push_back(k);
        }
      } else {
        constants(a, segments.emplace_back());
      }
      a.finish();
      c.calibrated[algo] = segments;  // algorithm names are checked by the collective registry
    }
    cal->finish();
  }
  if (auto prov = r.opt_object("provenance")) {
    for (const auto& key : prov->keys()) {
      std::string v = prov->string(key);
      if (!path_exists(j, key)) prov->fail(key, "names no value in this file");
      c.provenance[key] = v;
    }
    prov->finish();
  }
  r.finish();
  return c;
}

nlohmann::json cluster_to_json(const Cluster& c) {
  nlohmann::json peaks = nlohmann::json::object();
  nlohmann::json efficiency = nlohmann::json::object();
  for (auto [p, v] : c.device.peak_TFLOPS) peaks[std::string(precision_name(p))] = v;
  for (auto [p, v] : c.device.compute_efficiency) efficiency[std::string(precision_name(p))] = v;
  nlohmann::json j{{"schema", kClusterSchema},
                   {"name", c.name},
                   {"description", c.description},
                   {"nodes", c.nodes},
                   {"gpus_per_node", c.gpus_per_node},
                   {"device",
                    {{"name", c.device.name},
                     {"peak_TFLOPS", peaks},
                     {"mem_bw_GBps", c.device.mem_bw_GBps},
                     {"mem_GiB", c.device.mem_GiB},
                     {"compute_efficiency", efficiency},
                     {"memory_efficiency", c.device.memory_efficiency},
                     {"kernel_overhead_us", c.device.kernel_overhead_us}}},
                   {"intra_node", {{"kind", c.intra.kind}, {"bw_GBps", c.intra.bw_GBps}, {"lat_us", c.intra.lat_us}}},
                   {"launch_overhead_us", c.launch_overhead_us}};
  for (const auto& [k, e] : c.device.by_kind) {
    nlohmann::json one = nlohmann::json::object();
    for (auto [p, v] : e.compute) one["compute_efficiency"][std::string(precision_name(p))] = v;
    for (auto [p, v] : e.memory) one["memory_efficiency"][std::string(precision_name(p))] = v;
    j["device"]["by_kind"][std::string(compute_class_name(k))] = one;
  }
  if (c.device.compute_capability > 0) j["device"]["compute_capability"] = c.device.compute_capability;
  if (c.device.pcie_gen > 0) j["device"]["pcie_gen"] = c.device.pcie_gen;
  if (c.intra.nvlink_links > 0) j["intra_node"]["nvlink_links"] = c.intra.nvlink_links;
  if (c.intra.nvlink_sharp) j["intra_node"]["nvlink_sharp"] = true;
  if (!c.intra.p2p) j["intra_node"]["p2p"] = false;
  if (c.library != "mpi") j["library"] = c.library;
  if (c.library == "nccl") {
    nlohmann::json n = nlohmann::json::object();
    if (!c.nccl.release.empty()) n["release"] = c.nccl.release;
    if (c.nccl.cpu != "intel") n["cpu"] = c.nccl.cpu;
    for (const auto& [name, g] : c.nccl.graphs) {
      n["graphs"][name] = {{"channels", g.channels}, {"bw_intra_GBps", g.bw_intra_GBps}, {"bw_inter_GBps", g.bw_inter_GBps}};
      if (g.latency_inter_us > 0) n["graphs"][name]["latency_inter_us"] = g.latency_inter_us;
      if (g.tree_pattern) n["graphs"][name]["tree_pattern"] = true;
    }
    for (const auto& [name, v] : c.nccl.constants) n["constants"][name] = v;
    if (!n.empty()) j["nccl"] = n;
  }
  if (c.comm_compute_sharing > 0) j["comm_compute_sharing"] = c.comm_compute_sharing;
  if (c.allreduce_sharing) j["allreduce_sharing"] = *c.allreduce_sharing;
  if (c.dispatch_overhead_us > 0) j["dispatch_overhead_us"] = c.dispatch_overhead_us;
  if (c.job_bandwidth_factor != 1) j["job_bandwidth_factor"] = c.job_bandwidth_factor;
  if (c.compute_variation > 0) j["compute_variation"] = c.compute_variation;
  if (c.intra.gpus_per_switch) j["intra_node"]["gpus_per_switch"] = c.intra.gpus_per_switch;
  if (c.intra.uplink_bw_GBps > 0) j["intra_node"]["uplink_bw_GBps"] = c.intra.uplink_bw_GBps;
  if (c.inter) {
    const auto& n = *c.inter;
    j["inter_node"] = {{"nic_bw_Gbps", n.nic_bw_Gbps}, {"nics_per_node", n.nics_per_node},
                       {"lat_us", n.lat_us},           {"topology", n.topology},
                       {"oversubscription", n.oversubscription}, {"gdr", n.gdr}};
    if (n.nodes_per_leaf > 0) j["inter_node"]["nodes_per_leaf"] = n.nodes_per_leaf;
    if (!n.torus_dims.empty()) j["inter_node"]["torus_dims"] = n.torus_dims;
    if (n.dragonfly)
      j["inter_node"]["dragonfly"] = {{"groups", n.dragonfly->groups},
                                      {"routers_per_group", n.dragonfly->routers_per_group},
                                      {"nodes_per_router", n.dragonfly->nodes_per_router}};
    if (n.fabric_link_bw_Gbps > 0) j["inter_node"]["fabric_link_bw_Gbps"] = n.fabric_link_bw_Gbps;
    if (n.sharp) j["inter_node"]["sharp"] = true;
    if (!n.transport.empty()) j["inter_node"]["transport"] = n.transport;
    if (n.achieved_fraction) j["inter_node"]["achieved_fraction"] = *n.achieved_fraction;
    if (!n.gdr) {
      j["inter_node"]["host_copy_bw_GBps"] = n.host_copy_bw_GBps;
      j["inter_node"]["host_copy_lat_us"] = n.host_copy_lat_us;
      j["inter_node"]["staging"] = n.staging;
    }
  }
  if (c.reduce_bw_GBps) j["reduce_bw_GBps"] = *c.reduce_bw_GBps;
  if (c.input_samples_per_s_per_gpu > 0)
    j["input_pipeline"] = {{"samples_per_s_per_gpu", c.input_samples_per_s_per_gpu}};
  for (const auto& [algo, segments] : c.calibrated) {
    auto constants = [](const Calibration& k) {
      nlohmann::json o{{"alpha_us", k.alpha_us}, {"beta_us_per_MB", k.beta_us_per_MB}, {"gamma_us_per_MB", k.gamma_us_per_MB}};
      if (k.variant >= 0) o["variant"] = k.variant;
      return o;
    };
    if (segments.size() == 1) {
      j["calibrated"][algo] = constants(segments[0]);
      continue;
    }
    nlohmann::json list = nlohmann::json::array();
    for (const auto& k : segments) {
      nlohmann::json o = constants(k);
      o["from_bytes"] = k.from_bytes;
      o["to_bytes"] = k.to_bytes;
      list.push_back(o);
    }
    j["calibrated"][algo] = {{"segments", list}};
  }
  for (const auto& [k, v] : c.provenance) j["provenance"][k] = v;
  return j;
}

Calibration calibration_at(const std::vector<Calibration>& segments, double bytes, bool cheaper_line) {
  if (segments.empty()) throw std::logic_error("calibration_at: no segments");
  size_t k = 0;
  while (k + 1 < segments.size() && bytes >= segments[k + 1].from_bytes) ++k;
  const Calibration& a = segments[k];
  if (k + 1 == segments.size() || bytes <= a.to_bytes) return a;
  const Calibration& b = segments[k + 1];  // bytes lies between a.to_bytes and b.from_bytes
  if (cheaper_line) {
    auto line = [&](const Calibration& c) { return c.alpha_us + (c.beta_us_per_MB + c.gamma_us_per_MB) * bytes * 1e-6; };
    return line(b) < line(a) ? b : a;
  }
  const double w = (bytes - a.to_bytes) / (b.from_bytes - a.to_bytes);
  Calibration m;
  m.alpha_us = (1 - w) * a.alpha_us + w * b.alpha_us;
  m.beta_us_per_MB = (1 - w) * a.beta_us_per_MB + w * b.beta_us_per_MB;
  m.gamma_us_per_MB = (1 - w) * a.gamma_us_per_MB + w * b.gamma_us_per_MB;
  m.from_bytes = m.to_bytes = bytes;
  m.variant = a.variant == b.variant ? a.variant : -1;
  return m;
}

std::vector<std::string> shipped_cluster_names() {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(config_dir() + "/clusters", ec))
    if (e.path().extension() == ".json") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

Cluster load_cluster(const std::string& name_or_path) {
  std::string path = name_or_path;
  if (!names_a_file(name_or_path)) {
    path = config_dir() + "/clusters/" + name_or_path + ".json";
    std::error_code ec;  // a name too long for a file is unknown too, not a library error
    if (!std::filesystem::exists(path, ec)) {
      std::string names;
      for (const auto& n : shipped_cluster_names()) names += (names.empty() ? "" : ", ") + n;
      const std::string shown = name_or_path.size() > 80 ? name_or_path.substr(0, 77) + "..." : name_or_path;
      throw InputError(field("cluster") + ": unknown cluster '" + shown + "' (shipped: " + names + "; or a .json path)");
    }
  }
  return cluster_from_json(parse_json_file(path), path);
}

std::string cluster_reference(const Cluster& c) {
  namespace fs = std::filesystem;
  if (c.source.empty() || c.source == "builtin") return c.name;
  std::error_code ec;
  const fs::path shipped = fs::path(config_dir()) / "clusters" / (c.name + ".json");
  if (fs::equivalent(shipped, c.source, ec)) return c.name;
  const fs::path abs = fs::absolute(c.source, ec);
  return ec ? c.source : abs.string();
}

namespace {
void check_gpu_range(int gpus, const std::string& flag) {
  if (gpus < 1 || gpus > kMaxGpus)
    throw InputError(flag + ": must be in [1, " + std::to_string(kMaxGpus) + "] (got " + std::to_string(gpus) + ")");
}
}  // namespace

void check_gpu_count(const Cluster& c, int gpus, const std::string& flag) {
  check_gpu_range(gpus, flag);
  if (gpus > c.capacity())
    throw InputError(flag + ": " + std::to_string(gpus) + " GPUs do not fit cluster " + c.name + " (" +
                     std::to_string(c.nodes) + " nodes x " + std::to_string(c.gpus_per_node) + " = " +
                     std::to_string(c.capacity()) + ")");
}

namespace {
// `v` within [lo, hi] (or exactly 0 where `zero` allows it), else InputError naming `flag`.
double checked(double v, double lo, double hi, const std::string& unit, bool zero, const std::string& flag) {
  if ((zero && v == 0) || (v >= lo && v <= hi)) return v;
  throw InputError(flag + ": must be in [" + formatted(lo, "%g") + ", " + formatted(hi, "%g") + "] " + unit +
                   (zero ? ", or 0" : "") + " (got " + formatted(v, "%g") + ")");
}
InterNodeNetwork& inter_of(Cluster& c, const std::string& flag) {
  if (!c.inter) throw InputError(flag + ": cluster " + c.name + " has no inter-node network");
  return *c.inter;
}
}  // namespace

void set_inter_bw(Cluster& c, double Gbps, const std::string& flag) {
  inter_of(c, flag).nic_bw_Gbps = checked(Gbps, kMinNicGbps, kMaxNicGbps, "Gb/s", false, flag);
}

void set_inter_lat(Cluster& c, double us, const std::string& flag) {
  inter_of(c, flag).lat_us = checked(us, kMinUs, kMaxUs, "us", true, flag);
}

void set_intra_bw(Cluster& c, double GBps, const std::string& flag) {
  c.intra.bw_GBps = checked(GBps, kMinGBps, kMaxGBps, "GB/s", false, flag);
  c.intra.nvlink_links = 0;  // bw_GBps stands for the links
}

void set_compute_slowdown(Cluster& c, double fraction, const std::string& flag) {
  const double v = checked(fraction, 0, 1, "(a fraction of backward's time)", false, flag);
  c.allreduce_sharing = c.allreduce_sharing.value_or(c.comm_compute_sharing);
  c.comm_compute_sharing = v;
}

void set_compute_variation(Cluster& c, double cv, const std::string& flag) {
  c.compute_variation = checked(cv, 0, kMaxComputeVariation, "(a relative standard deviation)", false, flag);
}

void set_compute_scale(Cluster& c, double scale, const std::string& flag) {
  c.compute_scale =
      checked(scale, kMinComputeScale, kMaxComputeScale, "(the framework's compute time over the cluster's)", false,
              flag);
}

double expected_max_normal(int n) {
  if (n < 1) throw std::invalid_argument("expected_max_normal: n must be >= 1");
  if (n == 1) return 0;
  // The integral takes about a millisecond and the predictor and the tuner ask for it on
  // every plan: each count's value is computed once.
  static std::mutex mutex;
  static std::unordered_map<int, double> known;
  {
    std::lock_guard lock(mutex);
    if (auto it = known.find(n); it != known.end()) return it->second;
  }
  // E[max] = int_0^10 (1 - F(x)^n) dx - int_-10^0 F(x)^n dx, F the normal CDF (the
  // integrands are below 1e-20 beyond +-10 for n <= 2^20), each half by Simpson's rule: the
  // two meet in a jump at 0. F^n as exp(n log F), log F = log1p(-Q) for accuracy in the tail.
  const double h = 1.0 / 512;
  const int steps = 10 * 512;
  auto simpson = [&](auto&& g) {
    double sum = g(0.0) + g(10.0);
    for (int k = 1; k < steps; ++k) sum += g(k * h) * (k % 2 ? 4 : 2);
    return sum * h / 3;
  };
  auto upper_tail = [](double x) { return 0.5 * std::erfc(x / std::sqrt(2.0)); };  // 1 - F(x)
  const double above = simpson([&](double x) { return -std::expm1(n * std::log1p(-upper_tail(x))); });
  const double below = simpson([&](double x) { return std::exp(n * std::log1p(-upper_tail(-x))); });
  std::lock_guard lock(mutex);
  return known[n] = above - below;
}

Cluster grown_to(Cluster c, int gpus, const std::string& flag) {
  check_gpu_range(gpus, flag);
  if (gpus <= c.capacity()) return c;
  const int nodes = (gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  if (nodes > 1 && !c.inter)
    throw InputError(flag + ": " + std::to_string(gpus) + " GPUs need " + std::to_string(nodes) + " nodes, and cluster " +
                     c.name + " has no inter-node network to join them (its size: " + std::to_string(c.capacity()) +
                     " GPUs)");
  c.nodes = nodes;
  return c;
}

}  // namespace fuseplan
