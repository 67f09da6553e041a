// CollectiveModel: cluster file -> two-level network -> per-algorithm cost.
#include "fuseplan/costmodel/collective_model.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

#include "fuseplan/models/error.hpp"

namespace fuseplan {

CollectiveModel::CollectiveModel(const Cluster& c, int gpus, CollectiveOptions opt) : opt_(opt) {
  check_gpu_count(c, gpus, field("gpus"));
  topo_ = {gpus, std::min(gpus, c.gpus_per_node)};
  net_.intra_alpha = c.intra.lat_us * 1e-6;
  net_.intra_beta = 1.0 / (c.intra.bw_GBps * 1e9);
  if (c.inter) {
    net_.inter_alpha = c.inter->lat_us * 1e-6;
    net_.inter_beta = 8.0 / (c.inter->nic_bw_Gbps * 1e9 * c.inter->fraction(c.library));
    net_.nics_per_node = c.inter->nics_per_node;
    if (!c.inter->gdr && c.inter->staging == "message") {
      // Without GPUDirect RDMA a message is copied device->host at the sender and
      // host->device at the receiver, store-and-forward (not pipelined; conservative).
      net_.stage_alpha = 2 * c.inter->host_copy_lat_us * 1e-6;
      net_.stage_beta = 2.0 / (c.inter->host_copy_bw_GBps * 1e9);
    } else if (!c.inter->gdr && c.inter->staging == "pipelined") {
      // The copies overlap the network (NCCL's network transports without GPUDirect
      // RDMA: the kernel fills host-memory slices that the proxy thread sends): the path
      // runs at the slower of the NIC and the copy, and a message pays the copies'
      // latency once, out at the sender and in at the receiver.
      net_.inter_beta = std::max(net_.inter_beta, 1.0 / (c.inter->host_copy_bw_GBps * 1e9));
      net_.inter_alpha += 2 * c.inter->host_copy_lat_us * 1e-6;
    } else if (!c.inter->gdr && topo_.nodes() > 1) {
      // The vector goes to host memory once before the exchange and comes back after it.
      collective_stage_ = {2 * c.inter->host_copy_lat_us * 1e-6, 2.0 / (c.inter->host_copy_bw_GBps * 1e9)};
    }
  }
  net_.gamma = c.gamma_s_per_byte();
  launch_s_ = (c.launch_overhead_us + c.dispatch_overhead_us) * 1e-6;
  bandwidth_factor_ = c.job_bandwidth_factor;
  if (opt_.group < 0) throw InputError(field("collective.group") + ": must be >= 1");
  if (opt_.torus_x < 0) throw InputError(field("collective.torus_x") + ": must be >= 1");
  cache_.resize(algorithms().size());
  for (const auto& [name, k] : c.calibrated) {
    find_algorithm(name, c.source + ": $.calibrated");
    calibrated_[name] = k;
  }
  library_ = c.library;
  if (c.library == "nccl") {
    auto ctx = std::make_shared<NcclContext>();
    ctx->system = nccl_system(c, gpus, opt_.nccl_release, field("collective.nccl_version"));
    ctx->tuning = nccl_tune(ctx->system);
    nccl_ = std::move(ctx);
  } else if (!opt_.nccl_release.empty()) {
    throw InputError(field("collective.nccl_version") + ": cluster " + c.name + " runs " + c.library + ", not NCCL");
  }
}

CollectiveArgs CollectiveModel::args(int64_t count, Precision transfer) const {
  CollectiveArgs a;
  a.topo = topo_;
  a.net = net_;
  a.count = count;
  a.elem_bytes = bytes_per_element(transfer);
  a.group = opt_.group;
  a.torus_x = opt_.torus_x;
  a.nccl = nccl_.get();
  return a;
}

Schedule CollectiveModel::schedule(const CollectiveChoice& choice, int64_t count, Precision transfer) const {
  CollectiveArgs a = args(count, transfer);
  a.variant = choice.variant;
  return choice.algorithm->schedule(a);
}

CollectiveChoice CollectiveModel::evaluate_one(const Algorithm& algo, const CollectiveArgs& a) const {
  CollectiveChoice ch = evaluate_as_swept(algo, a);
  ch.cost.bandwidth_s *= bandwidth_factor_;  // Cluster::job_bandwidth_factor
  return ch;
}

CollectiveChoice CollectiveModel::evaluate_as_swept(const Algorithm& algo, CollectiveArgs a) const {
  CollectiveChoice ch;
  ch.algorithm = &algo;
  ch.launch_s = topo_.ranks > 1 ? launch_s_ : 0;
  if (auto k = calibration(algo.name, a.bytes())) {
    // A calibrated algorithm follows its textbook formula with the constants fitted for
    // this message size.
    a.net = Net::uniform(k->alpha_us * 1e-6, k->beta_us_per_MB * 1e-12, k->gamma_us_per_MB * 1e-12);
    if (a.group == 0) a.group = topo_.per_node;
    a.topo.per_node = 1;
    a.nccl = nullptr;  // the fitted form: alpha + beta n for NCCL's algorithms
    if (k->variant >= 0 && k->variant < algo.variants) a.variant = k->variant;  // the depth it was fitted with
    ch.calibrated = true;
    ch.variant = best_variant(algo, a);
    ch.cost = closed_form_cost(algo, a);
    return ch;
  }
  if (algo.direct && a.nccl) {
    ch.variant = best_variant(algo, a);
    a.variant = ch.variant;
    ch.cost = algo.direct(a);
    return ch;
  }
  auto& cached = cache_[static_cast<size_t>(&algo - algorithms().data())];
  if (cached.empty())
    for (a.variant = 0; a.variant < algo.variants; ++a.variant) cached.push_back(algo.profile(a));
  for (a.variant = 0; a.variant < algo.variants; ++a.variant) {
    Cost c = evaluate(cached[a.variant], a.net, a.bytes());
    if (a.variant == 0 || c.total() < ch.cost.total()) {
      ch.cost = c;
      ch.variant = a.variant;
    }
  }
  ch.cost.latency_s += collective_stage_.a;
  ch.cost.bandwidth_s += collective_stage_.b * a.bytes();
  return ch;
}

std::optional<Calibration> CollectiveModel::calibration(std::string_view algorithm, double bytes) const {
  auto it = calibrated_.find(algorithm);
  if (it == calibrated_.end()) return std::nullopt;
  return calibration_at(it->second, bytes, find_algorithm(algorithm).library == "nccl");
}

std::vector<AffineTail> CollectiveModel::affine_tails(Precision transfer) const {
  std::vector<AffineTail> out;
  if (!calibrated_.empty() || topo_.ranks == 1 || library_ == "nccl" || bandwidth_factor_ != 1) return out;
  cost("auto", 2, transfer);  // fills the applicability and profile caches
  const auto& table = algorithms();
  for (size_t k = 0; k < table.size(); ++k) {
    if (!applicable_[k] || !table[k].automatic || table[k].library != library_) continue;
    if (cache_[k].empty()) evaluate_one(table[k], args(2, transfer));
    for (const auto& prof : cache_[k]) {
      AffineTail t = affine_tail(prof, net_);
      t.a += launch_s_ + collective_stage_.a;
      t.b += collective_stage_.b;
      out.push_back(t);
    }
  }
  return out;
}

CollectiveChoice CollectiveModel::cost(std::string_view algorithm, int64_t count, Precision transfer) const {
  if (count <= 0) throw InputError("collective: element count must be > 0");
  const CollectiveArgs a = args(count, transfer);
  if (algorithm != "auto") {
    const Algorithm& algo = find_algorithm(algorithm);
    std::string why = algo.not_applicable(a);
    if (!why.empty()) throw InputError("algorithm " + std::string(algo.name) + " does not apply: " + why);
    return evaluate_one(algo, a);
  }
  // Applicability depends on the rank layout and options, and on the size only below
  // two elements (collective.hpp): cache it for the rest.
  const auto& table = algorithms();
  if (applicable_.empty()) {
    CollectiveArgs two = args(2, transfer);
    for (const auto& algo : table) applicable_.push_back(algo.not_applicable(two).empty());
  }
  CollectiveChoice best;
  double best_t = std::numeric_limits<double>::infinity();
  for (size_t k = 0; k < table.size(); ++k) {
    if (!table[k].automatic || table[k].library != library_ ||
        (count >= 2 ? !applicable_[k] : !table[k].not_applicable(a).empty()))
      continue;
    auto ch = evaluate_one(table[k], a);
    if (ch.total_s() < best_t) {
      best_t = ch.total_s();
      best = ch;
    }
  }
  return best;
}

bool CollectiveModel::monotone(std::string_view algorithm) const {
  if (algorithm != "auto") return find_algorithm(algorithm).monotone || calibrated_.count(algorithm);
  for (const auto& a : algorithms())
    if (a.automatic && a.library == library_ && !a.monotone && !calibrated_.count(a.name)) return false;
  return true;
}

double CollectiveModel::lower_bound_s(std::string_view algorithm, int64_t count, Precision transfer) const {
  if (monotone(algorithm)) return cost(algorithm, count, transfer).total_s();
  const CollectiveArgs a = args(count, transfer);
  const double launch = topo_.ranks > 1 ? launch_s_ : 0;
  double best = std::numeric_limits<double>::infinity();
  for (const auto& algo : algorithms()) {
    const bool wanted = algorithm == "auto" ? algo.automatic && algo.library == library_ : algo.name == algorithm;
    if (!wanted || !algo.not_applicable(a).empty()) continue;
    // A bound of the cost as swept bounds latency + f x bandwidth by f times itself where
    // the factor f is below 1.
    const double b = calibrated_.count(algo.name) ? cost(algo.name, count, transfer).cost.total()
                     : algo.lower_bound ? algo.lower_bound(a) * std::min(1.0, bandwidth_factor_)
                                        : 0;  // no bound known: no pruning
    best = std::min(best, b);
  }
  return std::isfinite(best) ? best + launch : 0;
}

std::string CollectiveModel::variant_name(const CollectiveChoice& c) {
  if (!c.algorithm || !c.algorithm->variant_name || c.calibrated) return "";
  return c.algorithm->variant_name(c.variant);
}

}  // namespace fuseplan
