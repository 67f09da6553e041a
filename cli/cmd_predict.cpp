// `fuseplan predict`: the analytic overlap prediction for one plan (a plan file or a
// bucket spec), as a table, JSON, and a Chrome trace.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/predictor.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

namespace {
constexpr int kDefaultGpus = 1024;  // the paper's scale

struct PredictFlags {
  ModelFlags model;
  std::string cluster = "tencent-p40";
  std::string plan_path, buckets = "threshold:64MiB", algorithm = "auto";
  std::string precision = "fp16", transfer;
  int gpus = 0, batch = 0, group = 0, torus_x = 0;
  double epochs = 90;
  int64_t dataset_size = 1281167;
  std::string trace_path, save_plan;
  bool json = false;
  CLI::Option *cluster_opt = nullptr, *gpus_opt = nullptr, *batch_opt = nullptr, *precision_opt = nullptr,
              *buckets_opt = nullptr;
};

struct Setup {
  Model model;
  Cluster cluster;
  Plan plan;
  std::string plan_origin;
};

Setup resolve(const PredictFlags& f) {
  Setup s;
  if (!f.plan_path.empty()) {
    if (f.buckets_opt->count()) throw InputError("--plan and --buckets are exclusive: a plan file carries its buckets");
    s.plan = load_plan(f.plan_path);
    s.plan_origin = f.plan_path;
    s.model = load_model(f.model.model_opt->count() ? f.model.model : s.plan.model, f.model.options());
    validate_plan(s.plan, s.model, f.plan_path);
    s.cluster = load_cluster(f.cluster_opt->count() ? f.cluster : s.plan.cluster);
    if (f.gpus_opt->count() && f.gpus != s.plan.gpus)
      throw InputError("--gpus " + std::to_string(f.gpus) + " disagrees with " + f.plan_path + " (made for " +
                       std::to_string(s.plan.gpus) + " GPUs)");
    if (f.batch_opt->count() && f.batch != s.plan.batch_per_gpu)
      throw InputError("--batch-per-gpu " + std::to_string(f.batch) + " disagrees with " + f.plan_path + " (" +
                       std::to_string(s.plan.batch_per_gpu) + ")");
    if (f.precision_opt->count() && parse_precision(f.precision, "--precision") != s.plan.compute)
      throw InputError("--precision disagrees with " + f.plan_path);
    check_gpu_count(s.cluster, s.plan.gpus, f.plan_path + ": $.gpus");
    return s;
  }
  s.model = load_model(f.model.model, f.model.options());
  s.cluster = load_cluster(f.cluster);
  int gpus = f.gpus_opt->count() ? f.gpus : std::min(kDefaultGpus, s.cluster.capacity());
  check_gpu_count(s.cluster, gpus, "--gpus");
  int batch = f.batch_opt->count() ? f.batch : default_batch_per_gpu(f.model.model);
  if (batch < 1) throw InputError("--batch-per-gpu: must be >= 1 (got " + std::to_string(batch) + ")");
  Precision compute = parse_precision(f.precision, "--precision");
  Precision transfer = f.transfer.empty() ? compute : parse_precision(f.transfer, "--transfer");
  auto buckets = buckets_from_spec(f.buckets, s.model, f.algorithm, transfer);
  s.plan = make_plan(s.model, s.cluster.name, gpus, batch, compute, buckets, f.buckets);
  s.plan_origin = "--buckets";
  return s;
}

void print_report(const Report& r, const Setup& s, const PredictFlags& f) {
  const Cluster& c = s.cluster;
  int nodes = (r.gpus + c.gpus_per_node - 1) / c.gpus_per_node;
  std::cout << "fuseplan predict: " << r.model << " on " << c.name << " (" << r.gpus << " GPUs = " << nodes
            << " nodes x " << std::min(r.gpus, c.gpus_per_node) << "), batch " << r.batch_per_gpu << " per GPU, "
            << precision_name(r.compute) << " compute\n";
  std::cout << "plan: " << (s.plan.strategy.empty() ? s.plan_origin : s.plan.strategy) << ", " << r.buckets.size()
            << " bucket" << (r.buckets.size() == 1 ? "" : "s") << "\n\n";
  const size_t kMaxRows = 40;
  Table t({"bucket", "<tensors (bwd)", "<first .. last tensor", "bytes", "<algorithm", "ready ms", "start ms", "end ms",
           "latency ms", "bandwidth ms"});
  for (size_t i = 0; i < r.buckets.size(); ++i) {
    const auto& b = r.buckets[i];
    if (r.buckets.size() > kMaxRows && i == kMaxRows / 2) {
      t.row({"...", "", "(" + std::to_string(r.buckets.size() - kMaxRows) + " more; --json lists all)"});
      i = r.buckets.size() - kMaxRows / 2 - 1;
      continue;
    }
    std::string range = b.end - b.begin == 1 ? std::to_string(b.begin) : std::to_string(b.begin) + "-" + std::to_string(b.end - 1);
    std::string names = b.end - b.begin == 1 ? b.first_tensor : b.first_tensor + " .. " + b.last_tensor;
    t.row({std::to_string(b.index), range, names, human_bytes(double(b.bytes)),
           b.algorithm + (b.auto_chosen ? " (auto)" : "") + (b.stream ? " s" + std::to_string(b.stream) : ""),
           ms(b.ready_s), ms(b.start_s), ms(b.end_s), ms(b.cost.latency_s + b.launch_s, 3), ms(b.cost.bandwidth_s, 3)});
  }
  t.print(std::cout, "  ");
  std::cout << "  (times from the start of backward; backward ends at " << ms(r.backward_s) << " ms)\n\n";
  double hidden = r.comm_busy_s > 0 ? 1 - r.exposed_comm_s / r.comm_busy_s : 1;
  std::cout << "  iteration time       " << ms(r.iteration_s) << " ms  = forward " << ms(r.forward_s) << " + backward "
            << ms(r.backward_s) << " + exposed communication " << ms(r.exposed_comm_s) << " + optimizer "
            << ms(r.optimizer_s) << " + data wait " << ms(r.data_wait_s) << "\n";
  std::cout << "  communication        " << ms(r.comm_busy_s) << " ms busy, " << percent(hidden)
            << " hidden behind backward\n";
  std::cout << "  throughput           " << grouped(static_cast<int64_t>(r.throughput_samples_s)) << " samples/s\n";
  std::cout << "  scaling efficiency   " << percent(r.scaling_efficiency) << " (one GPU: " << ms(r.single_gpu_iteration_s)
            << " ms per iteration)\n";
  std::cout << "  time to train        " << human_duration(r.time_to_train_s) << " (" << fixed(r.epochs, 0) << " epochs x "
            << grouped(r.dataset_size) << " samples = " << grouped(r.iterations_to_train) << " iterations)\n";
  if (!f.trace_path.empty()) std::cout << "  trace                " << f.trace_path << " (open in ui.perfetto.dev)\n";
}

// The same model, cluster and GPUs with the fusions users know, for scale.
void print_reference(const Setup& s, const CollectiveModel& coll, const ComputeModel& compute, const TrainingGoal& goal,
                     Precision transfer) {
  std::cout << "\n  for reference, other fusions on the same setup (algorithm auto):\n";
  Table t({"<fusion", "buckets", "iteration ms", "exposed comm ms", "efficiency"});
  for (const char* spec : {"per-tensor", "single", "threshold:64MiB", "threshold:25MB"}) {
    Plan p = make_plan(s.model, s.cluster.name, s.plan.gpus, s.plan.batch_per_gpu, s.plan.compute,
                       buckets_from_spec(spec, s.model, "auto", transfer), spec);
    Report r = predict(s.model, s.cluster, p, coll, compute, goal, false);
    t.row({spec, std::to_string(p.buckets.size()), ms(r.iteration_s), ms(r.exposed_comm_s), percent(r.scaling_efficiency)});
  }
  t.print(std::cout, "    ");
}
}  // namespace

void add_predict_command(CLI::App& app) {
  auto f = std::make_shared<PredictFlags>();
  auto* cmd = app.add_subcommand("predict",
                                 "Predict iteration time, exposed communication and scaling efficiency of a plan.\n"
                                 "With no flags: resnet50 on tencent-p40 at 1024 GPUs, Horovod-style 64 MiB buckets.");
  f->model.add(cmd);
  f->cluster_opt = cmd->add_option("--cluster", f->cluster, "shipped cluster name (see `fuseplan clusters`) or a .json path")
                       ->capture_default_str();
  cmd->add_option("--plan", f->plan_path, "plan .json (schema fuseplan.plan/1); its model, cluster, GPUs and batch apply");
  f->buckets_opt = cmd->add_option("--buckets", f->buckets,
                                   "bucket spec: per-tensor | single | threshold:SIZE (greedy in backward order; "
                                   "SIZE like 64MiB, 25MB) | splits:A,B,... (backward positions starting a bucket)")
                       ->capture_default_str();
  cmd->add_option("--algorithm", f->algorithm, "allreduce algorithm for every bucket of --buckets: auto or a name "
                                               "(see `fuseplan collective --help`)")
      ->capture_default_str();
  f->gpus_opt = cmd->add_option("--gpus", f->gpus, "number of GPUs (ranks); default 1024, capped at the cluster's size");
  f->batch_opt = cmd->add_option("--batch-per-gpu", f->batch, "samples per GPU per iteration (default: the model's, e.g. "
                                                              "resnet50 32, alexnet_bn 64)");
  f->precision_opt = cmd->add_option("--precision", f->precision, "compute precision: fp16 | bf16 | fp32")->capture_default_str();
  cmd->add_option("--transfer", f->transfer, "gradient transfer precision: fp16 | bf16 | fp32 (default: the compute precision)");
  cmd->add_option("--group", f->group, "hierarchical group size in GPUs (default: GPUs per node)");
  cmd->add_option("--torus-x", f->torus_x, "torus2d row length in GPUs (default: square-ish grid)");
  cmd->add_option("--epochs", f->epochs, "epochs for the time-to-train figure")->capture_default_str();
  cmd->add_option("--dataset-size", f->dataset_size, "samples per epoch (default: ImageNet-1k, 1281167)");
  cmd->add_option("--trace", f->trace_path, "write a Chrome trace (JSON for ui.perfetto.dev) to FILE");
  cmd->add_option("--save-plan", f->save_plan, "write the plan that was predicted (with its prediction) to FILE");
  cmd->add_flag("--json", f->json, "print the report as JSON");
  cmd->callback([f] {
    Setup s = resolve(*f);
    CollectiveModel coll(s.cluster, s.plan.gpus, {f->group, f->torus_x});
    ComputeModel compute(s.model, s.cluster, s.plan.batch_per_gpu, s.plan.compute);
    TrainingGoal goal{f->epochs, f->dataset_size};
    Report r = predict(s.model, s.cluster, s.plan, coll, compute, goal);
    if (!f->trace_path.empty()) r.timeline.write_chrome_trace(f->trace_path);
    if (!f->save_plan.empty()) {
      Plan p = s.plan;
      p.prediction = {{"iteration_s", r.iteration_s}, {"exposed_comm_s", r.exposed_comm_s},
                      {"scaling_efficiency", r.scaling_efficiency}};
      write_file_atomic(f->save_plan, plan_to_json(p).dump(1) + "\n");
    }
    if (f->json) {
      std::cout << report_to_json(r).dump(2) << "\n";
      return;
    }
    print_report(r, s, *f);
    if (s.plan.gpus > 1) print_reference(s, coll, compute, goal, s.plan.buckets.front().transfer);
  });
}

}  // namespace fuseplan::cli
