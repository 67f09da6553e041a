// Binds the collective algorithms to a cluster and a GPU count: builds the two-level
// network from the cluster file (or a calibrated textbook network), picks `auto`, adds
// the per-call launch overhead, and caches profiles.
#pragma once
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/costmodel/nccl.hpp"
#include "fuseplan/costmodel/precision.hpp"

namespace fuseplan {

struct CollectiveOptions {
  int group = 0;    // hierarchical group size; 0 = GPUs per node
  int torus_x = 0;  // torus2d row length; 0 = automatic
  std::string nccl_release;  // NCCL tuning constants of this release; "" = the cluster's (else the newest)
};

struct CollectiveChoice {
  const Algorithm* algorithm = nullptr;
  int variant = 0;  // the algorithm's cheapest variant (CollectiveArgs::variant)
  Cost cost;
  double launch_s = 0;
  bool calibrated = false;
  double total_s() const { return cost.total() + launch_s; }
};

// Not thread-safe (it caches profiles): use one per thread.
class CollectiveModel {
 public:
  CollectiveModel(const Cluster& c, int gpus, CollectiveOptions opt = {});

  // `algorithm` is a registered name or "auto": the cheapest applicable algorithm of the
  // cluster's library (on an NCCL cluster that is `nccl`, NCCL's own choice). Throws
  // InputError if a named algorithm does not apply to this rank layout.
  CollectiveChoice cost(std::string_view algorithm, int64_t count, Precision transfer) const;
  // The affine tails (launch included) of every applicable algorithm and variant for
  // messages of two elements or more, for the tuner's fast path; empty when some
  // algorithm is calibrated (its cost then follows another network), when `auto` runs
  // NCCL (whose costs are not affine in the size) or when the cluster scales the
  // bandwidth terms (Cluster::job_bandwidth_factor).
  std::vector<AffineTail> affine_tails(Precision transfer) const;
  // The schedule whose cost `choice` is (its algorithm and variant), for simulators and
  // executors.
  Schedule schedule(const CollectiveChoice& choice, int64_t count, Precision transfer) const;
  // The arguments an algorithm sees for `count` elements (network from the cluster).
  CollectiveArgs args(int64_t count, Precision transfer) const;
  const Topo& topo() const { return topo_; }
  const Net& net() const { return net_; }
  // The fitted constants of a calibrated algorithm for a message of `bytes`
  // (calibration_at); nullopt when it is not calibrated.
  std::optional<Calibration> calibration(std::string_view algorithm, double bytes) const;
  int gpus() const { return topo_.ranks; }
  // NCCL's view of the cluster (graphs, tuning tables); nullptr unless it runs NCCL.
  const NcclContext* nccl() const { return nccl_.get(); }
  // The cluster's communication library ("nccl" or "mpi"): what `auto` chooses among.
  const std::string& library() const { return library_; }
  // Cluster::job_bandwidth_factor: what every bandwidth term is multiplied by.
  double bandwidth_factor() const { return bandwidth_factor_; }
  // Whether `algorithm`'s cost ("auto" included) is nondecreasing in the message size (the
  // tuner's pruning needs it; NCCL's tree correction factors break it). Calibrated
  // algorithms count as monotone (nonnegative constants, blended continuously).
  bool monotone(std::string_view algorithm) const;
  // A bound of the total (launch included) of `algorithm` at `count` elements and every
  // larger count, nondecreasing: the cost itself when monotone.
  double lower_bound_s(std::string_view algorithm, int64_t count, Precision transfer) const;
  // "tree/LL128" for NCCL's choices, "" when the algorithm's variants are unnamed.
  static std::string variant_name(const CollectiveChoice& c);

 private:
  // An algorithm's cost in a training step: as swept, its bandwidth term scaled by
  // Cluster::job_bandwidth_factor.
  CollectiveChoice evaluate_one(const Algorithm& algo, const CollectiveArgs& a) const;
  CollectiveChoice evaluate_as_swept(const Algorithm& algo, CollectiveArgs a) const;
  Topo topo_;
  Net net_;
  CollectiveOptions opt_;
  double launch_s_ = 0;
  double bandwidth_factor_ = 1;  // Cluster::job_bandwidth_factor
  // Staging once per allreduce (InterNodeNetwork::staging "collective"): seconds, and
  // seconds per byte, added to every textbook algorithm's cost across nodes.
  struct {
    double a = 0, b = 0;
  } collective_stage_;
  std::string library_;
  std::shared_ptr<const NcclContext> nccl_;
  std::map<std::string, std::vector<Calibration>, std::less<>> calibrated_;
  // Profiles per algorithm (registry order), one per variant; a profile depends only on
  // the rank layout and options, fixed for this model.
  mutable std::vector<std::vector<Profile>> cache_;
  mutable std::vector<bool> applicable_;  // per algorithm, for counts >= 2
};

}  // namespace fuseplan
