// One interface for every allreduce algorithm: a closed-form cost (a profile of
// synchronous rounds evaluated on a two-level alpha-beta-gamma network) and an explicit
// point-to-point schedule that the simulator and the CPU executor replay.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

struct NcclContext;

// Ranks placed node-major: rank r lives on node r / per_node (the last node may be partial).
struct Topo {
  int ranks = 1;
  int per_node = 1;
  int nodes() const { return (ranks + per_node - 1) / per_node; }
  int node(int r) const { return r / per_node; }
};

// Two-level network in seconds and seconds per byte. Intra-node links are per GPU;
// inter-node bandwidth is per NIC and the GPUs of a node share its NICs.
struct Net {
  double intra_alpha = 0, intra_beta = 0;
  double inter_alpha = 0, inter_beta = 0;
  int nics_per_node = 1;
  double stage_alpha = 0, stage_beta = 0;  // added to inter-node messages staged via host
  double gamma = 0;                        // seconds per byte reduced
  // The textbook network: one alpha, beta, gamma for every message.
  static Net uniform(double alpha, double beta, double gamma);
};

struct CollectiveArgs {
  Topo topo;
  Net net;
  int64_t count = 0;   // elements per rank
  int elem_bytes = 4;
  int group = 0;       // hierarchical group size; 0 = ranks per node
  int torus_x = 0;     // 2D-torus row length; 0 = automatic
  int variant = -1;    // which of the algorithm's variants (the tree's chunking); -1 = cheapest
  // NCCL's view of the cluster (its graphs and tuning tables) when the cluster runs NCCL;
  // the NCCL algorithms apply only with it.
  const NcclContext* nccl = nullptr;
  double bytes() const { return double(count) * elem_bytes; }
  int group_size() const;
};

struct Cost {
  double latency_s = 0, bandwidth_s = 0, reduce_s = 0;
  int rounds = 0;
  double total() const { return latency_s + bandwidth_s + reduce_s; }
};

// One message of a round: src sends elements [offset, offset + count) of its buffer to
// dst, which adds them into its own (reduce) or overwrites (copy). All transfers of a
// round read the senders' state from before the round.
struct Transfer {
  int src = 0, dst = 0;
  int64_t offset = 0, count = 0;
  bool reduce = false;
};
struct Round {
  std::vector<Transfer> transfers;
};
struct Schedule {
  std::vector<Round> rounds;
};

// A class of identical synchronous rounds, sizes as fractions of the message n:
// `port` = bytes through the busiest rank's send or receive port, `reduce` = bytes the
// busiest receiver reduces, `nic` = inter-node bytes per NIC of the busiest node.
struct RoundClass {
  int repeat = 1;
  double port = 0, reduce = 0, nic = 0;
  bool intra = false, inter = false;
};
using Profile = std::vector<RoundClass>;

// Time of a profile for n bytes. A round costs the slower of its link classes:
// intra: a_l + b_l*port*n; inter: a_g + b_g*max(port, nic)*n (+ staging); plus gamma*reduce*n.
Cost evaluate(const Profile& p, const Net& net, double n_bytes);

// Beyond `from_bytes` a profile's time is exactly affine in the message size: every
// round's slower link is then the one with the steeper slope. time(n) = a + b n there.
struct AffineTail {
  double a = 0, b = 0, from_bytes = 0;
};
AffineTail affine_tail(const Profile& p, const Net& net);

struct Algorithm {
  std::string_view name;
  std::string_view description;
  // Empty if the algorithm applies to these arguments, else why it does not. May depend
  // on the element count only below two elements (callers cache the answer above).
  std::string (*not_applicable)(const CollectiveArgs&);
  Profile (*profile)(const CollectiveArgs&);  // the closed form
  Schedule (*schedule)(const CollectiveArgs&);
  // Size-independent variants (the tree's pipeline depths), selected by
  // CollectiveArgs::variant; callers take the cheapest. A fixed set keeps every cost
  // nondecreasing in the message size, which the tuner's pruning relies on.
  int variants = 1;
  // Whether `auto` considers it (the executor's "mpi" baseline is only used by name).
  bool automatic = true;
  // The communication library that runs it: "mpi" (the textbook algorithms, run by the
  // CPU executor) or "nccl" (NCCL's algorithms; `auto` on a cluster considers those of
  // its own library only).
  std::string_view library = "mpi";
  // A closed form computed directly instead of from `profile` (NCCL's tuning model, whose
  // latency is not a sum of rounds); used when CollectiveArgs::nccl is set. `profile` is
  // then the form calibration fits (alpha + beta n per size range).
  Cost (*direct)(const CollectiveArgs&) = nullptr;
  // What variant v is, for reports ("tree/LL128"); nullptr when variants are unnamed.
  std::string (*variant_name)(int) = nullptr;
  // Whether its cost is nondecreasing in the message size for a fixed variant (the
  // tuner's pruning relies on it; NCCL's tree correction factors break it).
  bool monotone = true;
  // For an algorithm that is not monotone: a bound (seconds) of its closed form at this
  // size and every larger one, nondecreasing in the size, so the tuner can still prune.
  double (*lower_bound)(const CollectiveArgs&) = nullptr;
  // The variant the library itself runs, where it decides by its own model rather than by
  // this closed form (NCCL picks by its tuning formula; the closed form adds measured
  // refinements): then the variant is this, not the cheapest. Used when `direct` is.
  int (*choose)(const CollectiveArgs&) = nullptr;
};

const std::vector<Algorithm>& algorithms();
// Throws InputError listing the valid names ("auto" is handled by CollectiveModel).
const Algorithm& find_algorithm(std::string_view name, const std::string& flag = field("algorithm"));
std::string algorithm_names();

// The cheapest variant for these arguments (args.variant if it is already set).
int best_variant(const Algorithm& a, const CollectiveArgs& args);
// The closed form of the cheapest variant (or of args.variant if set).
Cost closed_form_cost(const Algorithm& a, const CollectiveArgs& args);
// The schedule of the cheapest variant (or of args.variant if set).
Schedule schedule_of(const Algorithm& a, const CollectiveArgs& args);

// Replays a schedule on the network of `args` with the same round rules as `evaluate`,
// but from the actual transfers: per round, the slowest transfer, where a transfer's
// bytes are the larger of its sender's and receiver's port totals (and, inter-node, of
// the busiest of the two nodes' NIC totals).
Cost replay(const Schedule& s, const CollectiveArgs& args);

// Executes a schedule on real data (sum) for checking: buffers[r] is rank r's input.
void apply_schedule(const Schedule& s, std::vector<std::vector<double>>& buffers);

// nccl-tests bandwidths for allreduce: algbw = bytes / time; busbw = algbw * 2(p-1)/p.
double algbw_GBps(double bytes, double seconds);
double busbw_GBps(double bytes, double seconds, int ranks);

}  // namespace fuseplan
