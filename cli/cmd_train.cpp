// `fuseplan-exec train`: one process trains a zoo CNN on Fashion-MNIST or synthetic data
// with mixed precision, LARS or SGD, loss scaling and checkpoints; prints a per-epoch
// table and writes metrics and the per-layer timing profile.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/exec/trainer.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/zoo.hpp"
#include "progress.hpp"
#include "training.hpp"

namespace fuseplan::cli {

namespace {

void run_train(TrainFlags& f) {
  prepare_training(f);
  if (f.cuda_graphs) {
    if (f.backend != "cuda") throw InputError("--cuda-graphs: only with --backend cuda");
    if (!f.profile_path.empty())
      throw InputError("--cuda-graphs: not with --profile (a graph runs its layers without timing each)");
    f.opt.graphs = true;
  }
  auto [train, test, model] = load_training(f, f.model);
  auto backend = make_training_backend(f);
  exec::Trainer trainer(model, train, &test, *backend, f.opt);
  if (const auto& r = trainer.resumed()) err_line("fuseplan-exec train: " + r->line());
  ProgressBar bar("steps", f.quiet);
  auto result = trainer.run(step_progress(bar, f), epoch_progress(bar));

  out() << "fuseplan-exec train: " << model.name << " (" << grouped(model.param_count()) << " parameters) on "
            << train.name << ", batch " << f.opt.batch << ", " << precision_name(f.opt.precision) << ", "
            << f.optimizer << " lr " << f.opt.optimizer.lr << ", " << exec::cpu_threads() << " threads, "
            << backend->name() << "\n\n";
  print_epochs(out(), result);
  out() << "\n  " << result.steps.size() << " steps in " << fixed(result.seconds, 1) << " s\n";

  if (!f.metrics_path.empty()) write_metrics(f.metrics_path, f, model, train, result);
  if (!f.profile_path.empty()) write_profile(f.profile_path, f, model, trainer.network(), result);
}

}  // namespace

void add_train_command(CLI::App& app) {
  auto f = std::make_shared<TrainFlags>();
  auto* cmd = app.add_subcommand("train", "Train a zoo CNN in this process (CPU backend): mixed precision, LARS or SGD,\n"
                                          "dynamic loss scaling, checkpoints, per-layer timing profile.");
  add_training_flags(cmd, *f);
  cmd->add_flag("--cuda-graphs", f->cuda_graphs,
                "cuda: run the training forward and backward passes as CUDA graphs, recorded on the second\n"
                "step and replayed after (not with --profile, which times each layer, nor with dropout)");
  cmd->callback([f] { run_train(*f); });
}

}  // namespace fuseplan::cli
