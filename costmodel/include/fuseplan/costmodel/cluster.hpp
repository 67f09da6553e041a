// The Cluster contract: nodes x GPUs, device, intra-node link, inter-node network,
// overheads and optional calibrated alpha/beta/gamma, read from versioned JSON.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/models/model.hpp"  // ComputeClass

namespace fuseplan {

inline constexpr const char* kClusterSchema = "fuseplan.cluster/1";


// The largest compute efficiency a class may have. It counts the layer's direct FLOPs against
// the precision's peak, so it may pass 1: Winograd F(4x4, 3x3) multiplies 4x less than a
// direct 3x3 convolution (Lavin and Gray 2016), which cuDNN uses for 3x3 kernels; and FP32
// layers that run as TF32 on tensor cores are priced against the FP32 peak, which the A100's
// TF32 tensor peak passes 8x (156 against 19.5 TFLOPS; the H100 SXM's 7.4x: 495 against 67).
inline constexpr double kMaxClassEfficiency = 8;

// A class's own achievable fractions (device.by_kind); what it leaves out is the device's.
struct ClassEfficiency {
  std::map<Precision, double> compute;  // fraction of peak FLOP/s, per precision
  std::map<Precision, double> memory;   // fraction of memory bandwidth, per precision
};

struct DeviceSpec {
  std::string name;
  std::map<Precision, double> peak_TFLOPS;  // absent precision = unsupported
  double mem_bw_GBps = 0;
  double mem_GiB = 0;
  std::map<Precision, double> compute_efficiency;  // achievable fraction of peak FLOP/s
  double memory_efficiency = 0.7;   // achievable fraction of memory bandwidth
  std::map<ComputeClass, ClassEfficiency> by_kind;  // per layer class; empty = one roofline
  double compute_efficiency_of(ComputeClass k, Precision p) const;
  double memory_efficiency_of(ComputeClass k, Precision p) const;
  // Bytes per second moved at the device's memory efficiency (the optimizer step, packing
  // copies), or at class `k`'s at precision `p` (a layer's roofline).
  double memory_Bps() const { return mem_bw_GBps * 1e9 * memory_efficiency; }
  double memory_Bps(ComputeClass k, Precision p) const { return mem_bw_GBps * 1e9 * memory_efficiency_of(k, p); }
  double kernel_overhead_us = 0;    // fixed cost per layer pass (kernel launch)
  int compute_capability = 0;       // CUDA sm (70, 80, 90, ...); required when the cluster runs NCCL
  int pcie_gen = 0;                 // the GPU's PCIe generation (x16); 0 = from the compute capability
};

struct IntraNodeLink {
  std::string kind;        // "nvlink", "nvswitch", "pcie", "shm"
  double bw_GBps = 0;      // per GPU, per direction, as a ring step sees it
  double lat_us = 0;       // per message
  int gpus_per_switch = 0; // PCIe: GPUs behind one switch uplink (for the simulator); 0 = n/a
  double uplink_bw_GBps = 0;
  // As NCCL sees the node (library nccl): NVLinks per GPU (NCCL rates each link by the
  // GPU's generation); NVLink SHARP on the NVSwitches (NVLS); PCIe peer-to-peer between
  // GPUs (false: through host memory, as on consumer cards).
  int nvlink_links = 0;
  bool nvlink_sharp = false;
  bool p2p = true;
};

struct InterNodeNetwork {
  double nic_bw_Gbps = 0;  // per NIC, per direction
  int nics_per_node = 1;   // rails; GPUs share NICs evenly
  double lat_us = 0;       // per message, end to end
  std::string topology = "fat-tree";  // "fat-tree", "torus", "dragonfly", "star"
  double oversubscription = 1.0;      // fat-tree core oversubscription (simulator only)
  int nodes_per_leaf = 0;             // fat-tree: nodes under one leaf switch; 0 = not given
  // The simulator's fabric (the closed form assumes full bisection whatever the topology):
  std::vector<int> torus_dims;        // torus: nodes per dimension, product = nodes
  struct Dragonfly {
    int groups = 0, routers_per_group = 0, nodes_per_router = 0;  // product = nodes
  };
  std::optional<Dragonfly> dragonfly;
  double fabric_link_bw_Gbps = 0;     // torus and dragonfly links, per direction; 0 = nic_bw_Gbps
  bool gdr = true;                    // GPUDirect RDMA; false = staged through host memory
  double host_copy_bw_GBps = 0;       // staging copy bandwidth (required when gdr = false)
  double host_copy_lat_us = 0;
  // Without GPUDirect, what goes through host memory: every inter-node message, copied
  // out at the sender and in at the receiver ("message", store-and-forward), or the whole
  // vector once per allreduce, copied out before the inter-node exchange and back after
  // it ("collective": Gloo's CudaHostWorkspace, PyTorch's gloo backend on CUDA tensors),
  // or every message in slices whose copies overlap the network ("pipelined": NCCL's
  // network transports; the path runs at the slower of NIC and copy).
  std::string staging = "message";
  bool sharp = false;                 // the switches reduce (SHARP): NCCL's CollNet algorithms
  // What a large message reaches of nic_bw_Gbps in practice. `transport` names the wire
  // protocol ("infiniband", "roce", "tcp", "efa"; "" = not stated); `achieved_fraction`
  // is the file's own figure, if any. fraction() resolves them: the file's figure, else on
  // MPI clusters the transport's published figure (transport_fraction), else 1 (NCCL
  // clusters: NCCL's model derives the achieved bandwidth itself; no transport stated).
  std::string transport;
  std::optional<double> achieved_fraction;
  double fraction(std::string_view library) const;
};

// The fraction of line rate that large point-to-point transfers of a collective library
// reach over each transport, from public measurements (sources in transport.cpp and
// docs/formats.md); nullopt for a transport without a figure.
std::optional<double> transport_fraction(std::string_view transport);
std::string transport_names();  // "infiniband, roce, tcp, efa"

// How NCCL runs on the cluster (library nccl): the release whose tuning constants apply,
// the host CPU (NCCL's LL bandwidth and network overhead depend on it), channel graphs
// pinned as NCCL's INFO log printed them (by algorithm name; derived otherwise) and
// overrides of named tuning constants (nccl_constant_rows()).
struct NcclSettings {
  std::string release;        // "" = the newest
  std::string cpu = "intel";  // intel, amd, arm, power
  std::map<std::string, NcclGraph> graphs;
  std::map<std::string, double> constants;
};

// Calibrated parameters of one algorithm's textbook formula (fuseplan calibrate), for
// messages of from_bytes..to_bytes (the sweep sizes they were fitted on; 0 = unbounded).
struct Calibration {
  double alpha_us = 0, beta_us_per_MB = 0, gamma_us_per_MB = 0;
  double from_bytes = 0, to_bytes = 0;
  int variant = -1;  // the variant (the tree's pipeline depth) the constants were fitted with; -1 = cheapest
};

// The constants for a message of `bytes` from an algorithm's size segments (ascending,
// disjoint): the segment holding it; between two segments, the two blended linearly in
// bytes, so the time is continuous in the size; outside them, the nearest segment.
// `cheaper_line`: between two segments of a form alpha + beta n (NCCL's), the one whose
// line is lower there instead of a blend: NCCL switches protocol or algorithm where the
// next one gets cheaper, which a blend of the two smears over the whole gap.
Calibration calibration_at(const std::vector<Calibration>& segments, double bytes, bool cheaper_line = false);

// Processor sharing's two rates (DESIGN.md "The overlap model"): while k allreduces run,
// backward proceeds at 1 / (1 + compute k); while backward runs, each allreduce at
// 1 / (1 + comm). One number is one shared processor: both sides alike.
struct ProcessorSharing {
  double compute = 0, comm = 0;
  ProcessorSharing() = default;
  ProcessorSharing(double both) : compute(both), comm(both) {}  // NOLINT: implicit, one processor
  ProcessorSharing(double compute_, double comm_) : compute(compute_), comm(comm_) {}
  bool any() const { return compute > 0 || comm > 0; }
};

struct Cluster {
  std::string name, description, source;  // source = file path or "builtin"
  int nodes = 1, gpus_per_node = 1;
  // The communication library the cluster's jobs use: "nccl" (GPU clusters; `auto` and
  // plans choose among what NCCL runs) or "mpi" (the textbook algorithms).
  std::string library = "mpi";
  NcclSettings nccl;
  DeviceSpec device;
  IntraNodeLink intra;
  std::optional<InterNodeNetwork> inter;  // required when nodes > 1
  double launch_overhead_us = 0;          // per collective call (kernel launch, negotiation)
  std::optional<double> reduce_bw_GBps;   // reduction throughput; default from memory bandwidth
  double input_samples_per_s_per_gpu = 0; // input pipeline throughput; 0 = never the bottleneck
  // How much a running allreduce takes from the rank's computation (processor sharing,
  // DESIGN.md "The overlap model"): 0 = free overlap (copy engines, NIC offload); 1 = the
  // allreduce and backward share one processor equally (CPU ranks whose communication
  // is memory copies and additions by the same core).
  double comm_compute_sharing = 0;
  // How much a running backward slows each allreduce, where that differs from how much the
  // allreduces slow backward: an allreduce runs at 1 / (1 + allreduce_sharing) while
  // backward computes (absent: comm_compute_sharing, both sides of one shared processor).
  // A collective of several ranks moves only as fast as its slowest rank's share of a
  // core, so on CPU ranks it can lose more than backward does.
  std::optional<double> allreduce_sharing;
  // Per bucket, what a training step adds to each allreduce beyond what a back-to-back
  // sweep measures: the executor handing the ready bucket to its communication stream and
  // waking up for each round of messages (a CPU thread sharing a core). Fitted to plan
  // runs by fuseplan calibrate --plan; counted with launch_overhead_us in every bucket.
  double dispatch_overhead_us = 0;
  // How much longer a collective's bandwidth term (its per-byte time) takes in a training
  // step than a back-to-back sweep of the same message: every collective's bandwidth term
  // is multiplied by it, at every size (1 = as swept). On CPU ranks the gradients a
  // backward left in memory, and a communication thread that shares cores with the
  // training's, make a step's allreduces move bytes slower than a sweep's, also after
  // backward. Fitted to plan runs by fuseplan calibrate --plan --fit bandwidth.
  double job_bandwidth_factor = 1;
  // How much one GPU's computation of a step varies, from step to step and GPU to GPU: the
  // relative standard deviation of its forward and backward time, each GPU's independent
  // of the others' (clocks under power and thermal limits, host interruptions). A
  // synchronous step waits for its slowest GPU (expected_max_normal). 0 = every GPU
  // computes in the same time.
  double compute_variation = 0;
  // How much longer a framework computes than the device's constants price: every layer's
  // roofline forward and backward time and the optimizer step times this (XLA's fusions
  // and another framework's kernels make the same model faster or slower on the same
  // GPU). Measured layer times (a profile, --measured-rate) are used as they are. Not a
  // key of the cluster file: the framework's, set by --compute-scale and fitted by
  // calibrate --throughput (`compute_scale`) on the framework's own measured rates.
  double compute_scale = 1;
  std::map<std::string, std::vector<Calibration>> calibrated;  // per algorithm, size segments
  std::map<std::string, std::string> provenance;  // JSON path -> where the value comes from

  int capacity() const { return nodes * gpus_per_node; }
  // The processor sharing of a job on `gpus` ranks (none on one rank: nothing to share).
  ProcessorSharing sharing(int gpus) const {
    if (gpus < 2) return {};
    return {comm_compute_sharing, allreduce_sharing.value_or(comm_compute_sharing)};
  }
  double peak_flops(Precision p) const;  // FLOP/s; InputError if the device lacks it
  // Seconds per byte reduced: three memory passes (two reads, one write) per byte.
  double gamma_s_per_byte() const;
};

Cluster cluster_from_json(const nlohmann::json& j, const std::string& origin);
nlohmann::json cluster_to_json(const Cluster& c);
// A shipped name (configs/clusters/NAME.json) or a path.
Cluster load_cluster(const std::string& name_or_path);
// How a plan names the cluster so that load_cluster finds it again: the shipped name, or
// the absolute path of the file it was read from.
std::string cluster_reference(const Cluster& c);
std::vector<std::string> shipped_cluster_names();
std::string config_dir();
// The largest job any command is asked about (GPUs, ranks): 2^20, a thousand times the
// largest published data-parallel runs; past it, per-GPU tables would not fit memory.
inline constexpr int kMaxGpus = 1 << 20;
inline constexpr double kMaxAllreduceSharing = 10;  // Cluster::allreduce_sharing: at worst 1/11 speed
// Cluster::job_bandwidth_factor's range: a step's bytes moving 4 times faster than a
// sweep's to 10 times slower.
inline constexpr double kMinJobBandwidthFactor = 0.25, kMaxJobBandwidthFactor = 10;

// Checks `gpus` against the cluster; InputError naming `flag` otherwise.
void check_gpu_count(const Cluster& c, int gpus, const std::string& flag);
// The cluster grown by whole nodes of the same kind to hold `gpus` (unchanged when they
// fit): what predict, tune, compare, simulate and whatif do when asked for more GPUs
// than the file has. InputError naming `flag` when it has no inter-node network to join
// more nodes, or `gpus` outside 1..kMaxGpus.
Cluster grown_to(Cluster c, int gpus, const std::string& flag);

// The range of a NIC's bandwidth, Gb/s, in a cluster file or a what-if (1 MB/s .. 1 PB/s).
inline constexpr double kMinNicGbps = 8e-3, kMaxNicGbps = 8e6;

// What-if changes of a loaded cluster's networks, held to the ranges the cluster file's own
// values must lie in (docs/formats.md): InputError naming `flag`, with the range, otherwise
// or when the cluster has no inter-node network. Bandwidths must be > 0; a latency may be 0.
// The NIC bandwidth in Gb/s per NIC:
void set_inter_bw(Cluster& c, double Gbps, const std::string& flag);
void set_inter_lat(Cluster& c, double us, const std::string& flag);
// The bandwidth inside a node in GB/s per GPU per direction; it replaces the NVLink count.
void set_intra_bw(Cluster& c, double GBps, const std::string& flag);
// How much slower backward runs while an allreduce runs beside it, as a fraction of its time
// in [0, 1] (0.189: 18.9 % longer): comm_compute_sharing. The allreduces keep the rate they
// had (allreduce_sharing takes its current value where the file left it to follow
// comm_compute_sharing), so only the computation's side changes.
void set_compute_slowdown(Cluster& c, double fraction, const std::string& flag);
// The relative standard deviation of one GPU's compute time per step, in
// [0, kMaxComputeVariation]: compute_variation.
void set_compute_variation(Cluster& c, double cv, const std::string& flag);

// A framework's compute time over the cluster's pricing, in [kMinComputeScale,
// kMaxComputeScale]: compute_scale.
void set_compute_scale(Cluster& c, double scale, const std::string& flag);
// Twenty times faster or slower than the device's constants price: past that the
// constants, not the framework, are wrong.
inline constexpr double kMinComputeScale = 0.05, kMaxComputeScale = 20;

// The largest compute_variation a file or a what-if may give: a standard deviation of half
// the step (the normal model then gives steps of negative length 2 % of the time).
inline constexpr double kMaxComputeVariation = 0.5;

// E[max(Z_1..Z_n)] of n independent standard normal variables: 0 for n = 1, 1/sqrt(pi)
// for 2, about 1.42 for 8 and 3.25 for 1024. The wait of a synchronous step for its
// slowest of n GPUs is this times the spread of one GPU's compute time.
double expected_max_normal(int n);

}  // namespace fuseplan
