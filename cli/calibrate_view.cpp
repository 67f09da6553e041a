// `fuseplan calibrate`'s tables.
#include "calibrate_view.hpp"

#include <algorithm>
#include <cmath>

#include "format.hpp"
#include "fuseplan/costmodel/collective_model.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan::cli {

std::string bytes_label(double b) {
  const char* units[] = {"", "K", "M", "G"};
  int u = 0;
  while (u < 3 && b >= 1024 && std::fmod(b, 1024) == 0) {
    b /= 1024;
    ++u;
  }
  return fixed(b, 0) + units[u];
}

void print_machine(std::ostream& os, const exec::MachineInfo& m) {
  os << "fuseplan calibrate --discover: " << (m.cpu_model.empty() ? "unknown CPU" : m.cpu_model) << "\n"
     << "  hwloc: " << m.packages << " package(s), " << m.cores << " cores, " << m.pus << " hardware threads, "
     << m.gpus.size() << " GPU(s), " << m.nics.size() << " network device(s)\n";
  if (!m.topology_note.empty()) os << "    " << m.topology_note << "\n";
  for (const auto& g : m.gpus) os << "    GPU " << g << "\n";
  for (const auto& n : m.nics) os << "    network " << n << "\n";
  if (m.rdma_ports.empty())
    os << "  rdma-core: " << m.rdma_note
       << ": ranks talk over TCP and shared memory; calibrate that path with fuseplan-exec sweep\n";
  for (const auto& r : m.rdma_ports)
    os << "  rdma-core: " << r.device << " port " << r.port << ": " << r.link_layer
       << (r.link_layer == "ethernet" ? " (RoCE)" : "") << ", " << (r.active ? "active" : "down") << ", "
       << r.width << " " << r.speed << " = " << fixed(r.gbps, 1) << " Gb/s\n";
}

std::vector<std::string> print_comm_fits(std::ostream& os, const std::vector<CommCalibration>& fits, bool holdout) {
  std::vector<std::string> bad;
  Table t({"<algorithm", "<sizes", "alpha us", "beta us/MB", "gamma us/MB", "busbw GB/s", "mean err", "max err",
           holdout ? "holdout mean" : "", holdout ? "holdout max" : ""});
  for (const CommCalibration& x : fits) {
    const SegmentedFit& fit = x.fit;
    const std::string hold_mean = x.holdout_mean ? percent(*x.holdout_mean, 1) : holdout ? "-" : "";
    const std::string hold_max = x.holdout_max ? percent(*x.holdout_max, 1) : holdout ? "-" : "";
    const bool several = fit.segments.size() > 1;
    for (size_t i = 0; i < fit.segments.size(); ++i) {
      const SegmentFit& seg = fit.segments[i];
      const Calibration& k = seg.k;
      const double beta_bus = k.beta_us_per_MB > 0 ? 1e6 / k.beta_us_per_MB / 1e3 : 0;  // GB/s per link
      const std::string& why = x.degenerate[i];
      const std::string range = bytes_label(k.from_bytes) + ".." + bytes_label(k.to_bytes);
      if (!why.empty()) bad.push_back(x.algorithm + " " + range + ": " + why);
      t.row({x.algorithm + (why.empty() ? "" : " (degenerate)"), range, fixed(k.alpha_us, 2), fixed(k.beta_us_per_MB, 2),
             fixed(k.gamma_us_per_MB, 2), beta_bus > 0 ? fixed(beta_bus, 2) : "-", percent(seg.mean_rel_err, 1),
             percent(seg.max_rel_err, 1), several ? "" : hold_mean, several ? "" : hold_max});
    }
    if (several)
      t.row({x.algorithm, "all (" + std::to_string(fit.segments.size()) + " ranges)", "", "", "", "",
             percent(fit.mean_rel_err, 1), percent(fit.max_rel_err, 1), hold_mean, hold_max});
  }
  t.print(os, "  ");
  os << "\n  busbw here = 1 / beta: the per-link bandwidth the formula's beta stands for"
     << (!fits.empty() && fits.front().algorithm == "nccl" ? " (nccl: time = alpha + beta x bytes, 1 / beta = algbw)" : "")
     << "\n";
  return bad;
}

void print_nccl_estimates(std::ostream& os, const Cluster& given, const std::vector<Sweep>& sweeps,
                          const std::vector<CommCalibration>& fits) {
  for (size_t i = 0; i < sweeps.size() && i < fits.size(); ++i) {
    const Sweep& s = sweeps[i];
    if (std::none_of(s.points.begin(), s.points.end(), [](const SweepPoint& p) { return p.nccl_estimate_s > 0; }))
      continue;
    const Precision p = s.elem_bytes == 4 ? Precision::FP32 : Precision::FP16;
    const CollectiveModel model(given, s.ranks);
    Table t({"size", "measured us", "as given us", "error", "fitted us", "error", "NCCL's estimate us", "error"});
    double err_given = 0, err_fit = 0, err_nccl = 0;
    int with_estimate = 0;
    for (size_t k = 0; k < s.points.size(); ++k) {
      const SweepPoint& pt = s.points[k];
      const int64_t count = std::max<int64_t>(1, static_cast<int64_t>(pt.bytes) / s.elem_bytes);
      const double as_given = model.cost(s.algorithm, count, p).total_s(), fitted = fits[i].fit.predicted_s[k];
      err_given += std::abs(as_given / pt.seconds - 1);
      err_fit += std::abs(fitted / pt.seconds - 1);
      if (pt.nccl_estimate_s > 0) err_nccl += std::abs(pt.nccl_estimate_s / pt.seconds - 1), ++with_estimate;
      t.row({bytes_label(pt.bytes), fixed(pt.seconds * 1e6, 2), fixed(as_given * 1e6, 2),
             signed_percent(as_given / pt.seconds - 1), fixed(fitted * 1e6, 2), signed_percent(fitted / pt.seconds - 1),
             pt.nccl_estimate_s > 0 ? fixed(pt.nccl_estimate_s * 1e6, 2) : "-",
             pt.nccl_estimate_s > 0 ? signed_percent(pt.nccl_estimate_s / pt.seconds - 1) : "-"});
    }
    const double n = double(s.points.size());
    t.row({"mean |error|", "", "", percent(err_given / n, 1), "", percent(err_fit / n, 1), "",
           with_estimate > 0 ? percent(err_nccl / with_estimate, 1) : "-"});
    os << "\n  " << s.algorithm << " on " << s.ranks << " ranks: measured against fuseplan (cluster " << given.name
       << " as given, and fitted) and NCCL's own estimate (ncclGroupSimulateEnd)\n";
    t.print(os, "  ");
  }
}

void print_overlap_fit(std::ostream& os, const OverlapFit& fit, const std::vector<OverlapRun>& runs,
                       const std::vector<std::string>& plans, OverlapTargets fitted, const std::string& profile) {
  os << "\n  overlap: " << runs.size() << " measured run(s)"
     << (profile.empty() ? ", no --profile: modelled compute" : ", profile " + profile) << "\n"
     << "    comm_compute_sharing = " << fixed(fit.sigma, 3) << (fitted.sharing ? " (fitted)" : " (kept)")
     << ", dispatch_overhead_us = " << fixed(fit.dispatch_us, 1) << (fitted.dispatch ? " (fitted)" : " (kept)");
  if (fit.allreduce_sharing)
    os << ", allreduce_sharing = " << fixed(*fit.allreduce_sharing, 3)
       << (fitted.allreduce_sharing ? " (fitted)" : " (kept)");
  if (fitted.bandwidth || fit.bandwidth_factor != 1)
    os << ", job_bandwidth_factor = " << fixed(fit.bandwidth_factor, 3) << (fitted.bandwidth ? " (fitted)" : " (kept)");
  os << "\n";
  if (fit.dispatch_at_bound) os << "    the dispatch overhead reached the search's bound (2000 us)\n";
  if (fit.allreduce_sharing_at_bound)
    os << "    the allreduce sharing reached the search's bound (" << fixed(kMaxFittedAllreduceSharing, 0) << ")\n";
  if (fit.bandwidth_at_bound)
    os << "    the bandwidth factor reached the search's bound (" << fixed(kMaxFittedBandwidthFactor, 0) << ")\n";
  if (fit.sigma_at_bound)
    os << "    the sharing reached its bound 1 (one core shared evenly): these runs may slow backward more than\n"
          "    the model can express; the errors below say how much is left\n";
  Table t({"<plan", "buckets", "backward", "allreduce end", "iteration", "iteration before"});
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& a = fit.after[i];
    t.row({plans[i], std::to_string(runs[i].plan.buckets.size()), signed_percent(a.backward),
           signed_percent(a.comm_end), signed_percent(a.iteration), signed_percent(fit.before[i].iteration)});
  }
  t.print(os, "    ");
  os << "    (errors of the prediction against each measurement; before = the cluster as given)\n";
}

void print_compute_fits(std::ostream& os, const std::vector<ClassFit>& fits, const std::string& precision) {
  Table t({"<class", "layers", "measured ms", "roofline ms", "<fitted", "value", "after ms"});
  for (const ClassFit& f : fits)
    t.row({std::string(compute_class_name(f.k)), std::to_string(f.layers), fixed(f.measured_s * 1e3, 3),
           fixed(f.before_s * 1e3, 3),
           (f.memory ? "memory_efficiency." : "compute_efficiency.") + precision,
           fixed(f.value, 4) + (f.bound.empty() ? "" : " *"),
           fixed(f.after_s * 1e3, 3)});
  t.print(os, "  ");
  os << "  (forward + backward per iteration; roofline = the cluster as given)\n";
  for (const ClassFit& f : fits)
    if (!f.bound.empty())
      os << "  * " << compute_class_name(f.k) << ": at its bound, " << f.bound
         << " (written as the closest value, marked so in the provenance)\n";
}

void print_throughput_fits(std::ostream& os, const std::vector<ThroughputMeasurement>& ms, const ThroughputFit& fit) {
  Table t({"<model", "batch", "<precision", "measured /s", "given /s", "fitted /s", "error", "<fits", "<efficiency",
           "given", "fitted"});
  bool held_out = false;
  for (size_t i = 0; i < ms.size(); ++i) {
    const ThroughputMeasurement& m = ms[i];
    const ThroughputFit::Row& r = fit.rows[i];
    std::string classes;
    for (ComputeClass k : m.classes) classes += (classes.empty() ? "" : ", ") + std::string(compute_class_name(k));
    if (m.overhead) classes = "kernel_overhead_us";
    if (m.scale) classes = "compute_scale";
    const bool out = m.held_out();
    held_out = held_out || out;
    t.row({m.model.name, std::to_string(m.batch), std::string(precision_name(m.precision)), fixed(m.samples_per_s, 1),
           fixed(r.rate_before, 1), fixed(r.rate_after, 1), signed_percent(r.rate_after / m.samples_per_s - 1),
           out ? "(held out)" : classes,
           out ? "-" : m.overhead ? "us" : m.scale ? "framework" : m.memory ? "memory" : "compute",
           out ? "-" : fixed(r.before, 4), out ? "-" : fixed(r.value, 4)});
  }
  t.print(os, "  ");
  os << "  (one GPU's samples/s: forward, backward, the optimizer step's share and any input wait; given = the\n"
        "   cluster as given; error = fitted against measured; fitted together, "
     << count_of(fit.iterations, "iteration") << " of Levenberg-Marquardt)\n";
  if (held_out) os << "  (held out: predicted with the values fitted, not fitted)\n";
  if (!fit.compute_scale.empty()) {
    std::string values;
    for (const auto& [p, scale] : fit.compute_scale)
      values += (values.empty() ? "" : ", ") + std::string(precision_name(p)) + " " + fixed(scale, 4);
    os << "  compute_scale " << values << ": the framework's compute time over what the cluster's constants price\n"
          "  (not the cluster's: not written; give it at its precision to predict, tune, simulate and the other\n"
          "   commands as --compute-scale)\n";
  }
}

void print_scaling_fit(std::ostream& os, const std::vector<ScalingMeasurement>& ms, const ScalingFit& fit) {
  Table t({"<plan", "<model", "GPUs", "measured", "given", "fitted", "points", "<fits"});
  for (size_t i = 0; i < ms.size(); ++i) {
    const ScalingMeasurement& m = ms[i];
    const std::string fits = m.fits_variation && m.fits_overhead ? "compute_variation, step_overhead"
                             : m.fits_variation                  ? "compute_variation"
                             : m.fits_overhead                   ? "step_overhead"
                                                                 : "(held out)";
    t.row({m.plan_path, m.model.name, std::to_string(m.plan.gpus), percent(m.efficiency), percent(fit.given[i]),
           percent(fit.after[i]), formatted(100 * (fit.after[i] - m.efficiency) + 0.0, "%+.1f"), fits});
  }
  t.print(os, "  ");
  os << "  (scaling efficiency: the rate on the plan's GPUs over as many times one GPU's; given = the cluster and\n"
        "   plans as given; points = fitted against measured)\n";
  const auto fitting = std::count_if(ms.begin(), ms.end(), [](const ScalingMeasurement& m) { return !m.held_out(); });
  if (fit.variation_fitted)
    os << "  compute_variation " << fixed(fit.variation, 5) << " (given " << fixed(fit.variation_before, 5) << ")\n";
  if (fit.overhead_fitted)
    os << "  step overhead " << fixed(fit.overhead_s * 1e3, 3) << " ms: a plan's fixed cost per step, not the "
          "cluster's (not written; give it to predict, tune, compare or whatif as --step-overhead)\n";
  if (fitting > 0)
    os << "  least squares over " << count_of(fitting, "measurement") << ", " << fixed(fit.rms_points, 2)
       << " points rms\n";
  else
    os << "  (every scaling measurement is held out: compute_variation as given, " << fixed(fit.variation_before, 5)
       << ")\n";
}

}  // namespace fuseplan::cli
