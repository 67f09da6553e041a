// Report views shared by predict and tune: the bucket table and the iteration summary.
#include <algorithm>
#include <iostream>

#include "commands.hpp"
#include "format.hpp"

namespace fuseplan::cli {

void print_bucket_table(const Report& r, std::ostream& os) {
  const size_t kMaxRows = 40;
  // Copies into and out of fusion buffers and casts on comm: columns where a bucket has them.
  const bool copies_in = std::any_of(r.buckets.begin(), r.buckets.end(), [](const auto& b) { return b.copy_in_s > 0; });
  const bool copies = std::any_of(r.buckets.begin(), r.buckets.end(), [](const auto& b) { return b.copy_out_s > 0; });
  std::vector<std::string> headers{"bucket",   "<tensors (bwd)", "<first .. last tensor", "bytes",      "<algorithm",
                                   "ready ms", "start ms",       "end ms",                "latency ms", "bandwidth ms"};
  if (copies_in) headers.push_back("copy in ms");
  if (copies) headers.push_back("copy out ms");
  Table t(headers);
  for (size_t i = 0; i < r.buckets.size(); ++i) {
    const auto& b = r.buckets[i];
    if (r.buckets.size() > kMaxRows && i == kMaxRows / 2) {
      t.row({"...", "", "(" + std::to_string(r.buckets.size() - kMaxRows) + " more; --json lists all)"});
      i = r.buckets.size() - kMaxRows / 2 - 1;
      continue;
    }
    std::string range = b.end - b.begin == 1 ? std::to_string(b.begin) : std::to_string(b.begin) + "-" + std::to_string(b.end - 1);
    std::string names = b.end - b.begin == 1 ? b.first_tensor : b.first_tensor + " .. " + b.last_tensor;
    const std::string algorithm = b.algorithm + (b.variant.empty() ? "" : " " + b.variant) +
                                  (b.auto_chosen ? " (auto)" : "") + (b.stream ? " s" + std::to_string(b.stream) : "");
    std::vector<std::string> cells{std::to_string(b.index), range, names, human_bytes(double(b.bytes)), algorithm,
                                   ms(b.ready_s), ms(b.start_s), ms(b.end_s), ms(b.cost.latency_s + b.launch_s, 3),
                                   ms(b.cost.bandwidth_s, 3)};
    if (copies_in) cells.push_back(ms(b.copy_in_s, 3));
    if (copies) cells.push_back(ms(b.copy_out_s, 3));
    t.row(std::move(cells));
  }
  t.print(os, "  ");
  if (csv_output()) return;
  if (r.variation_wait_s > 0 && r.source == "predicted")  // the predictor times the slowest GPU's step
    os << "  (times from the start of backward on the slowest GPU; the mean GPU's backward ends at "
       << ms(r.backward_s) << " ms)\n\n";
  else
    os << "  (times from the start of backward; backward ends at " << ms(r.backward_s) << " ms)\n\n";
}

void print_iteration_summary(const Report& r, std::ostream& os) {
  if (csv_output()) return;
  // Exposed time can exceed the allreduces' busy time (a measured run waits on slower
  // ranks; a simulation shows that wait apart, variation_wait_s): nothing is hidden then,
  // and the summary says so instead of printing a negative share.
  // The copies back (a plan packed on compute) are exposed too, but are not communication.
  const double exposed_allreduces_s = r.exposed_comm_s - r.copy_back_s;
  const double hidden = r.comm_busy_s > 0 ? std::clamp(1 - exposed_allreduces_s / r.comm_busy_s, 0.0, 1.0) : 1;
  const bool waits = exposed_allreduces_s > r.comm_busy_s * (1 + 1e-9) && r.comm_busy_s > 0;
  os << "  iteration time       " << ms(r.iteration_s) << " ms  = forward " << ms(r.forward_s) << " + backward "
            << ms(r.backward_s)
            << (r.backward_copies_s > 0 ? " (copies and casts " + ms(r.backward_copies_s) + ")" : "")
            << " + exposed communication " << ms(r.exposed_comm_s)
            << (r.copy_back_s > 0 ? " (copies back " + ms(r.copy_back_s) + ")" : "") << " + optimizer "
            << ms(r.optimizer_s) << (r.step_overhead_s > 0 ? " + step overhead " + ms(r.step_overhead_s) : "")
            << (r.variation_wait_s > 0 ? " + wait for the slowest GPU " + ms(r.variation_wait_s) : "")
            << " + data wait " << ms(r.data_wait_s) << "\n";
  os << "  communication        " << ms(r.comm_busy_s) << " ms busy, " << percent(hidden) << " hidden behind backward"
     << (waits ? " (exposed exceeds busy: the rest is waiting on other ranks)" : "") << "\n";
  os << "  throughput           " << grouped(static_cast<int64_t>(r.throughput_samples_s)) << " samples/s\n";
  os << "  scaling efficiency   " << percent(r.scaling_efficiency) << " (one GPU: " << ms(r.single_gpu_iteration_s)
            << " ms per iteration)\n";
  os << "  time to train        " << human_duration(r.time_to_train_s) << " (" << grouped(r.iterations_to_train)
     << " iterations: " << r.goal << ")\n";
}

void print_compute_by_class(const Report& r, std::ostream& os) {
  if (r.compute_by_class.empty()) return;
  if (!csv_output()) os << "\n  compute by layer class (one micro-batch on the mean GPU):\n";
  Table t({"<class", "layers", "forward ms", "backward ms", "share", "TFLOP/s", "bytes-bound", "measured"});
  double fwd = 0, bwd = 0, flops = 0;
  int layers = 0, bound = 0, measured = 0;
  for (const auto& k : r.compute_by_class) {
    fwd += k.forward_s;
    bwd += k.backward_s;
    flops += k.flops;
    layers += k.layers;
    bound += k.memory_bound;
    measured += k.measured;
  }
  const double total_s = fwd + bwd;
  auto rate = [](double f, double s) { return s > 0 ? fixed(f / s * 1e-12, 2) : "-"; };
  for (const auto& k : r.compute_by_class) {
    const double s = k.forward_s + k.backward_s;
    t.row({std::string(compute_class_name(k.k)), std::to_string(k.layers), ms(k.forward_s), ms(k.backward_s),
           percent(total_s > 0 ? s / total_s : 0), rate(k.flops, s), std::to_string(k.memory_bound),
           std::to_string(k.measured)});
  }
  t.row({"all", std::to_string(layers), ms(fwd), ms(bwd), percent(1), rate(flops, total_s), std::to_string(bound),
         std::to_string(measured)});
  t.print(os, "  ");
  if (csv_output()) return;
  os << "  (TFLOP/s: the class's forward and backward FLOPs over its time; bytes-bound: layers the roofline prices\n"
        "   by their memory traffic, not their FLOPs; measured: layers timed by a profile or --measured-rate)\n";
}

void print_validation(const std::vector<Validated>& v) {
  out() << "\n  validated by simulation (SimGrid, the " << v.size() << " best distinct plans by prediction):\n";
  Table t({"<plan", "buckets", "predicted ms", "simulated ms", "sim/pred", "sim rank"});
  std::vector<size_t> order(v.size());
  for (size_t i = 0; i < v.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a].simulated_s < v[b].simulated_s; });
  std::vector<size_t> sim_rank(v.size());
  for (size_t i = 0; i < order.size(); ++i) sim_rank[order[i]] = i + 1;
  for (size_t i = 0; i < v.size(); ++i)
    t.row({v[i].label, std::to_string(v[i].buckets), ms(v[i].predicted_s), ms(v[i].simulated_s),
           fixed(v[i].simulated_s / v[i].predicted_s, 4), std::to_string(sim_rank[i])});
  t.print(out(), "    ");
  bool same = true;
  for (size_t i = 0; i < order.size(); ++i) same = same && order[i] == i;
  if (same) out() << "    the simulation keeps the predicted ranking\n";
  else out() << "    the simulation CHANGES the ranking: fastest simulated is " << v[order[0]].label << "\n";
}

}  // namespace fuseplan::cli
