// `fuseplan export --plan P --to ddp|horovod|deepspeed`: the plan in a framework's
// settings, the closest that framework can form, priced beside the plan.
#include <cstdio>
#include <iostream>
#include <memory>
#include <sstream>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/framework_export.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

namespace {
struct ExportFlags {
  SetupFlags setup;
  std::string plan_path, to, out, torch = "2.6";
  bool json = false;
};

std::string quoted_list(const std::vector<std::string>& names) {
  std::string s;
  for (const auto& n : names) s += (s.empty() ? "\"" : ", \"") + n + "\"";
  return "[" + s + "]";
}

// What the user pastes: Python for DDP and Horovod, a config fragment for DeepSpeed.
std::string snippet(const FrameworkSettings& s, const Plan& plan, const std::string& plan_path) {
  std::ostringstream o;
  char cap[40];
  std::snprintf(cap, sizeof cap, "%.9g", s.cap);  // as framework_settings read it back
  const int k = plan.accumulate.steps;
  if (!plan.optimizer.fused() && s.framework != Framework::DeepSpeed)  // JSON there
    o << "# the plan prices the optimizer's per-tensor kernels (torch.optim with foreach=False): "
      << optimizer_step_description(plan.optimizer) << "\n";
  switch (s.framework) {
    case Framework::Ddp:
      o << "# torch.nn.parallel.DistributedDataParallel, from " << plan_path << " ("
        << s.approximation.buckets.size() << " buckets from the second step on)\n";
      if (s.first_bucket_bytes != TuneOptions{}.ddp_first_bytes)
        o << "torch.distributed._DEFAULT_FIRST_BUCKET_BYTES = " << s.first_bucket_bytes << "  # the first bucket's cap"
          << (s.cap_unset ? ", read when DDP is constructed (default 1 MiB)"
              : s.first_bucket_bytes == s.cap_units ? " in torch 1.13 (torch 2.6 caps it at bucket_cap_mb)"
                                                    : ": torch 1.13's rule (torch 2.6 caps it at bucket_cap_mb)")
          << "\n";
      if (s.cap_unset)
        o << "# bucket_cap_mb left unset (25 MiB): torch 2.6 caps the first bucket at bucket_cap_mb once it is "
             "given\n"
          << "model = torch.nn.parallel.DistributedDataParallel(model)\n";
      else
        o << "model = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=" << cap << ")\n";
      if (casts_any(plan)) {
        const bool bf16 = plan.buckets.front().transfer == Precision::BF16;
        const char* hook = bf16 ? "bf16_compress_hook" : "fp16_compress_hook";
        o << "# the plan casts each FP32 bucket to " << precision_name(plan.buckets.front().transfer)
          << " for its allreduce and back; the hook casts in backward, on the compute stream, where the ddp row "
             "above prices it\n"
          << "from torch.distributed.algorithms.ddp_comm_hooks import default_hooks\n"
          << "model.register_comm_hook(None, default_hooks." << hook << ")\n";
      }
      if (plan.accumulate.steps > 1 && plan.accumulate.no_sync)
        o << "# " << k << " micro-batches per optimizer step, allreducing on the last only:\n"
          << "#   for i, (x, y) in enumerate(loader):\n"
          << "#       with model.no_sync() if (i + 1) % " << k << " else contextlib.nullcontext():\n"
          << "#           loss_fn(model(x), y).backward()\n"
          << "#       if (i + 1) % " << k << " == 0: optimizer.step(); optimizer.zero_grad()\n";
      else if (plan.accumulate.steps > 1)
        o << "# " << k << " micro-batches per optimizer step, each allreducing (no no_sync()): call optimizer.step() "
          << "and zero_grad() after every " << k << "th backward\n";
      break;
    case Framework::Horovod: {
      o << "# horovod.torch: one group per fuseplan bucket (backward order), names from model.named_parameters()\n"
        << "# export HOROVOD_FUSION_THRESHOLD=" << s.fusion_threshold_bytes << " HOROVOD_CYCLE_TIME=" << s.cycle_time_ms
        << "\n"
        << "FUSEPLAN_GROUPS = [\n";
      for (const auto& g : s.groups) o << "    " << quoted_list(g) << ",\n";
      o << "]\n"
        << "named = dict(model.named_parameters())\n"
        << "optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),\n"
        << "                                     groups=[[named[n] for n in g] for g in FUSEPLAN_GROUPS]";
      if (plan.buckets.front().transfer != Precision::FP32) o << ",\n                                     compression=hvd.Compression.fp16";
      if (plan.accumulate.steps > 1) o << ",\n                                     backward_passes_per_step=" << k;
      o << ")\n";
      break;
    }
    case Framework::DeepSpeed:
      o << nlohmann::json{{"zero_optimization",
                           {{"stage", 2},
                            {"overlap_comm", true},
                            {"contiguous_gradients", true},
                            {"reduce_bucket_size", s.cap_units}}}}
                .dump(2)
        << "\n";
      break;
  }
  return o.str();
}

std::vector<int> starts(const Plan& p) {
  std::vector<int> v;
  for (const auto& b : p.buckets) v.push_back(b.begin);
  return v;
}

nlohmann::json settings_json(const FrameworkSettings& s, const std::string& code) {
  nlohmann::json j{{"framework", framework_name(s.framework)},
                   {"buckets", s.approximation.buckets.size()},
                   {"plan_buckets", s.plan_predicted.buckets.size()},
                   {"boundaries_missing", s.boundaries_missing},
                   {"boundaries_extra", s.boundaries_extra},
                   {"iteration_s", s.predicted.iteration_s},
                   {"plan_iteration_s", s.plan_predicted.iteration_s},
                   {"starts", starts(s.approximation)},
                   {"snippet", code}};
  const Accumulation& a = s.approximation.accumulate;
  if (a.steps > 1) j["accumulate"] = {{"steps", a.steps}, {"no_sync", a.no_sync}};
  if (s.framework == Framework::Ddp) {
    j["bucket_cap_mb"] = s.cap_unset ? nlohmann::json(nullptr) : nlohmann::json(s.cap);  // null: leave it unset
    j["first_bucket_bytes"] = s.first_bucket_bytes;
  }
  if (s.framework == Framework::DeepSpeed) j["reduce_bucket_size"] = s.cap_units;
  if (s.framework == Framework::Horovod) {
    j["groups"] = s.groups;
    j["fusion_threshold_bytes"] = s.fusion_threshold_bytes;
    j["cycle_time_ms"] = s.cycle_time_ms;
  }
  return j;
}

void print_settings(const FrameworkSettings& s, const std::string& code) {
  const size_t want = s.plan_predicted.buckets.size(), got = s.approximation.buckets.size();
  out() << "fuseplan export: " << framework_name(s.framework) << ", " << got << " bucket" << (got == 1 ? "" : "s")
        << " for the plan's " << want;
  if (s.boundaries_missing + s.boundaries_extra == 0)
    out() << ", exactly the plan's boundaries\n";
  else
    out() << " (" << s.boundaries_missing << " of the plan's boundaries not formed, " << s.boundaries_extra
          << " formed beyond it)\n";
  Table t({"<", "iteration ms", "exposed comm ms", "last allreduce end ms"});
  t.row({"plan", ms(s.plan_predicted.iteration_s), ms(s.plan_predicted.exposed_comm_s), ms(s.plan_predicted.comm_end_s)});
  t.row({framework_name(s.framework), ms(s.predicted.iteration_s), ms(s.predicted.exposed_comm_s),
         ms(s.predicted.comm_end_s)});
  t.print(out(), "  ");
  out() << "\n" << code;
}
}  // namespace

void add_export_command(CLI::App& app) {
  auto f = std::make_shared<ExportFlags>();
  auto* cmd = app.add_subcommand("export",
                                 "A plan in DDP, Horovod or DeepSpeed settings: the closest the framework can form, "
                                 "predicted beside the plan (docs/pytorch.md).");
  f->setup.add(cmd);
  cmd->add_option("--plan", f->plan_path, "plan .json to export")->required();
  cmd->add_option("--to", f->to, "ddp | horovod | deepspeed")->required();
  cmd->add_option("--out", f->out, "write the snippet (Python for ddp and horovod, JSON for deepspeed) to FILE");
  cmd->add_flag("--json", f->json, "print the settings and both predictions as JSON");
  cmd->add_option("--torch", f->torch,
                  "ddp: the torch whose first-bucket rule to follow: 2.6 (the default; its settings form the same "
                  "buckets under 1.13) or 1.13 (any first-bucket cap with any bucket_cap_mb)");
  cmd->callback([f] {
    const Framework framework = parse_framework(f->to, "--to");
    const DdpTorch torch = parse_ddp_torch(f->torch, "--torch");
    const Scenario s = f->setup.load_plan_file(f->plan_path);
    Tuner tuner(s.model, s.cluster, s.plan.gpus, s.plan.batch_per_gpu, s.plan.compute, s.collective, s.goal);
    const FrameworkSettings settings = framework_settings(tuner, s.plan, framework, torch);
    const std::string code = snippet(settings, s.plan, f->plan_path);
    if (!f->out.empty()) write_file_atomic(f->out, code);
    if (f->json) {
      out() << settings_json(settings, code).dump(2) << "\n";
      return;
    }
    print_settings(settings, code);
  });
}

}  // namespace fuseplan::cli
