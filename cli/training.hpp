// What `fuseplan-exec train` and `fuseplan-exec run` share: the training flags, the data
// set and model they select, and the metrics and profile files they write.
#pragma once
#include <nlohmann/json.hpp>
#include <CLI/CLI.hpp>
#include <memory>
#include <ostream>
#include <string>

#include "fuseplan/exec/data.hpp"
#include "fuseplan/exec/trainer.hpp"
#include "fuseplan/models/model.hpp"
#include "progress.hpp"

namespace fuseplan::cli {

struct TrainFlags {
  CLI::Option *model_opt = nullptr, *batch_opt = nullptr, *precision_opt = nullptr, *epochs_opt = nullptr;
  std::string model = "resnet18", dataset = "fashion-mnist", data_dir = exec::kFashionMnistDir, precision = "fp32";
  std::string optimizer = "lars", conv = "auto", backend = "cpu", metrics_path, profile_path, checkpoint_path, resume_path;
  std::string conv_algos = "heuristic", conv_algo_file;
  int resolution = 0, channels = 0, classes = 0, threads = 0, device = -1;
  bool no_tf32 = false, no_fuse = false, emulate_half = false, cuda_graphs = false;
  int64_t synthetic_size = 4096, max_steps = 0, checkpoint_every = 0;
  exec::TrainOptions opt;
  bool quiet = false, no_eval = false;
};


// Registers the training flags on `cmd`; `what` names the command in the help text.
void add_training_flags(CLI::App* cmd, TrainFlags& f);
// Checks the flags and copies them into f.opt (threads are set here). Throws InputError.
void prepare_training(TrainFlags& f);

// The backend the flags select (--backend, --conv, --device, --no-tf32, --conv-algos,
// --conv-algo-file); a CUDA rank takes device `local_rank` modulo the devices it sees
// unless --device says, and rank `rank` of `ranks` its own algorithm file. Throws
// InputError.
std::unique_ptr<exec::Backend> make_training_backend(const TrainFlags& f, int local_rank = 0, int rank = 0,
                                                     int ranks = 1);

struct TrainingData {
  exec::Dataset train, test;
  Model model;  // at the data set's resolution, channels and classes unless flags say otherwise
};
// Loads the data set and the model `model_name` (a zoo CNN or a model .json).
TrainingData load_training(TrainFlags f, const std::string& model_name);

// fuseplan.metrics/1 and fuseplan.profile/1 (per-layer forward/backward time per step at
// the per-rank batch), written atomically.
void write_metrics(const std::string& path, const TrainFlags& f, const Model& model, const exec::Dataset& train,
                   const exec::TrainResult& result, int ranks = 1);
// Progress-bar callbacks (step: loss, samples/s, loss scale; epoch: a line with the
// test accuracy) and the per-epoch table.
exec::StepCallback step_progress(ProgressBar& bar, const TrainFlags& f);
exec::EpochCallback epoch_progress(ProgressBar& bar);
void print_epochs(std::ostream& os, const exec::TrainResult& result);
// The per-layer profile (fuseplan.profile/1) of this process's steps.
nlohmann::json profile_json(const TrainFlags& f, const Model& model, const exec::Network& net,
                            const exec::TrainResult& result);
void write_profile(const std::string& path, const TrainFlags& f, const Model& model, const exec::Network& net,
                   const exec::TrainResult& result);

}  // namespace fuseplan::cli
