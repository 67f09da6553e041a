#include "training.hpp"

#include "format.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/exec/ops.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/text.hpp"
#include "fuseplan/models/zoo.hpp"

namespace fuseplan::cli {

void add_training_flags(CLI::App* cmd, TrainFlags& flags) {
  TrainFlags* f = &flags;
  f->model_opt = cmd->add_option("--model", f->model, "zoo CNN (alexnet_bn, resnet18, resnet50, vgg16, ...) or a model .json")
      ->capture_default_str();
  cmd->add_option("--dataset", f->dataset, "fashion-mnist | synthetic")->capture_default_str();
  cmd->add_option("--data-dir", f->data_dir, "Fashion-MNIST IDX .gz files")->capture_default_str();
  cmd->add_option("--synthetic-size", f->synthetic_size, "synthetic: training samples")->capture_default_str();
  cmd->add_option("--resolution", f->resolution,
                  "model input height = width in pixels; images are resized (bilinear) to it (default: the data set's)");
  cmd->add_option("--channels", f->channels, "input channels (default: the data set's)");
  cmd->add_option("--classes", f->classes, "classes (default: the data set's)");
  f->batch_opt = cmd->add_option("--batch-per-gpu", f->opt.batch, "samples per rank (a GPU, or a CPU process) per step")->capture_default_str();
  f->epochs_opt = cmd->add_option("--epochs", f->opt.epochs, "epochs (fractions allowed)")->capture_default_str();
  cmd->add_option("--max-steps", f->max_steps, "stop after this many steps (default: no limit)");
  f->precision_opt = cmd->add_option("--precision", f->precision,
                  "fp32 | fp16 | bf16: storage of weights, activations and gradients (FP32 masters; emulated on CPU)")
      ->capture_default_str();
  cmd->add_option("--optimizer", f->optimizer, "lars | sgd (both with momentum)")->capture_default_str();
  cmd->add_option("--lr", f->opt.optimizer.lr, "peak learning rate (after warm-up)")->capture_default_str();
  cmd->add_option("--momentum", f->opt.optimizer.momentum, "momentum")->capture_default_str();
  cmd->add_option("--weight-decay", f->opt.optimizer.weight_decay, "weight decay (not for BatchNorm and biases)")
      ->capture_default_str();
  cmd->add_option("--lars-trust", f->opt.optimizer.trust, "LARS trust coefficient eta")->capture_default_str();
  cmd->add_option("--warmup-epochs", f->opt.warmup_epochs, "linear warm-up, then polynomial decay (power 2)")
      ->capture_default_str();
  cmd->add_option("--label-smoothing", f->opt.label_smoothing, "label smoothing epsilon")->capture_default_str();
  cmd->add_option("--seed", f->opt.seed, "weights, data order, augmentation, dropout")->capture_default_str();
  cmd->add_flag("--augment", f->opt.augment, "random crops (padding 2) and horizontal flips");
  cmd->add_option("--threads", f->threads, "compute threads (default: OpenMP's, all cores)");
  cmd->add_option("--conv", f->conv, "convolutions: auto (onednn where built with libdnnl-dev, else im2col) | im2col (OpenBLAS SGEMM) | onednn")
      ->capture_default_str();
  cmd->add_option("--backend", f->backend, "cpu | cuda (cuDNN, cuBLAS; docs/gpu.md)")->capture_default_str();
  cmd->add_option("--device", f->device, "cuda: the GPU (default: the rank's local rank modulo the GPUs)");
  cmd->add_flag("--no-fuse", f->no_fuse,
                "run each BatchNorm or add and the ReLU after it as two ops (default: one op where the backend\n"
                "has it, the CPU's; same results, and the per-layer profile books the pair's time to the first)");
  cmd->add_flag("--no-tf32", f->no_tf32, "cuda: strict FP32 convolutions and GEMMs (default: TF32 tensor cores)");
  cmd->add_flag("--emulate-half", f->emulate_half,
                "cuda, --precision fp16/bf16: keep activations as FP32 values rounded to the precision (NCHW, the\n"
                "CPU's emulation) instead of 16-bit NHWC tensors on tensor cores (the default)");
  cmd->add_option("--conv-algos", f->conv_algos,
                  "cuda: how each convolution shape's cuDNN algorithms are chosen: heuristic (cuDNN's first\n"
                  "deterministic one) or find (every deterministic one timed once, the fastest)")
      ->capture_default_str();
  cmd->add_option("--conv-algo-file", f->conv_algo_file,
                  "cuda: the algorithms chosen per shape (fuseplan.conv-algos/1): read where FILE exists, written\n"
                  "as shapes are chosen; a run that reuses it computes bit for bit the same (a resume). With\n"
                  "several ranks each rank has its own: FILE with .rank<r> before the extension");
  cmd->add_option("--checkpoint", f->checkpoint_path, "checkpoint file (written atomically)");
  cmd->add_option("--checkpoint-every", f->checkpoint_every, "steps between checkpoints (default: none)");
  cmd->add_option("--resume", f->resume_path, "continue from this checkpoint");
  cmd->add_option("--metrics", f->metrics_path, "write per-epoch and per-step metrics JSON to FILE");
  cmd->add_option("--profile", f->profile_path, "write per-layer forward/backward times (fuseplan.profile/1) to FILE");
  cmd->add_flag("--no-eval", f->no_eval, "skip the test-set evaluation after each epoch");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
}

void prepare_training(TrainFlags& f) {
  if (f.threads < 0) throw InputError("--threads: must be >= 1");
  if (f.threads > 0) exec::set_cpu_threads(f.threads);
  f.opt.precision = parse_precision(f.precision, "--precision");
  f.opt.optimizer.kind = exec::parse_optimizer(f.optimizer);
  f.opt.max_steps = f.max_steps;
  f.opt.checkpoint_every = f.checkpoint_every;
  f.opt.checkpoint_path = f.checkpoint_path;
  f.opt.resume_path = f.resume_path;
  f.opt.evaluate = !f.no_eval;
  f.opt.fuse_relu = !f.no_fuse;
  if (f.checkpoint_every < 0) throw InputError("--checkpoint-every: must be >= 0");
  if (f.checkpoint_every > 0 && f.checkpoint_path.empty()) throw InputError("--checkpoint-every: needs --checkpoint FILE");

}

std::unique_ptr<exec::Backend> make_training_backend(const TrainFlags& f, int local_rank, int rank, int ranks) {
  if (f.backend == "cuda" && f.conv != "auto") throw InputError("--conv: only with --backend cpu (cuda uses cuDNN)");
  const exec::BackendKind kind = exec::parse_backend(f.backend);
  const exec::ConvAlgoSearch search = exec::parse_conv_algo_search(f.conv_algos);
  if (kind == exec::BackendKind::Cpu) {
    if (f.device >= 0) throw InputError("--device: only with --backend cuda");
    if (f.emulate_half) throw InputError("--emulate-half: only with --backend cuda (the CPU always emulates half precision)");
    if (search != exec::ConvAlgoSearch::Heuristic || !f.conv_algo_file.empty())
      throw InputError(std::string(f.conv_algo_file.empty() ? "--conv-algos" : "--conv-algo-file") +
                       ": only with --backend cuda (the CPU's convolutions are --conv)");
    return exec::make_cpu_backend(exec::parse_cpu_conv(f.conv));
  }
  exec::CudaOptions o;
  o.device = exec::cuda_device_for(f.device, local_rank);
  o.tf32 = !f.no_tf32;
  if (f.emulate_half && f.opt.precision == Precision::FP32)
    throw InputError("--emulate-half: only with --precision fp16 or bf16");
  o.storage = f.emulate_half ? Precision::FP32 : f.opt.precision;
  o.conv_algos = search;
  o.conv_algo_file = exec::conv_algo_path_for_rank(f.conv_algo_file, rank, ranks);
  if (!o.conv_algo_file.empty()) {
    std::error_code ec;
    if (std::filesystem::is_directory(o.conv_algo_file, ec))
      throw InputError("--conv-algo-file " + o.conv_algo_file + ": is a directory (give a file name)");
    // Read before the device is touched, so a malformed file is refused like any input.
    if (std::filesystem::exists(o.conv_algo_file, ec))
      o.conv_algos_recorded = exec::ConvAlgoTable::load(o.conv_algo_file);
  }
  return exec::make_cuda_backend(o);
}

namespace {
// A model file fixes its input and classes: the flags that set a zoo model's are refused,
// and synthetic data takes the model's shape.
void fit_flags_to_model_file(TrainFlags& f, const Model& m, const std::string& path) {
  if (f.resolution > 0 || f.channels > 0 || f.classes > 0)
    throw InputError("--resolution/--channels/--classes: set a zoo model's input and classes; " + path +
                     " fixes its own (" + shape_str(m.input_shape) + " in)");
  if (m.input_shape.size() != 3)
    throw InputError("--model " + path + ": the trainer takes CNNs with a [C,H,W] input; " + m.name + " has " +
                     shape_str(m.input_shape));
  f.channels = static_cast<int>(m.input_shape[0]);
  f.resolution = static_cast<int>(m.input_shape[1]);
  f.classes = static_cast<int>(numel(m.layers.back().out_shape));
}

// The zoo-model options the flags set (those not given stay unset).
ModelOptions flag_model_options(const TrainFlags& f) {
  ModelOptions mo;
  if (f.resolution > 0) mo.resolution = f.resolution;
  if (f.channels > 0) mo.channels = f.channels;
  if (f.classes > 0) mo.classes = f.classes;
  return mo;
}

// A lower bound of what the CPU network holds: every layer's output and its gradient in
// FP32 at this batch, and weights, gradients, FP32 masters and momenta. (The CUDA backend
// holds them on the GPU, which cudaMalloc checks.)
void check_network_fits(const Model& m, const TrainFlags& f) {
  if (f.backend != "cpu") return;
  double activations = 0;
  for (const Layer& l : m.layers) activations += double(numel(l.out_shape));
  const double bytes = 2 * 4 * activations * double(f.opt.batch) + 4 * 4 * double(m.param_count());
  check_fits_in_memory(bytes, "the network (" + m.name + ": activations and their gradients at this batch, weights)",
                       "--model " + m.name + ", --resolution " + std::to_string(m.input_shape.size() == 3 ? m.input_shape[1] : 0) +
                           ", --batch-per-gpu " + std::to_string(f.opt.batch));
}
}  // namespace

TrainingData load_training(TrainFlags f, const std::string& model_name) {
  TrainingData d;
  std::optional<Model> file_model;
  if (names_a_file(model_name)) {
    file_model = load_model_file(model_name);
    fit_flags_to_model_file(f, *file_model, model_name);
  } else if (const ZooEntry* z = find_zoo(model_name); z && z->is_transformer) {
    std::string cnns;
    for (const auto& e : zoo())
      if (!e.is_transformer) cnns += (cnns.empty() ? "" : ", ") + e.name;
    throw InputError("--model: " + model_name + " is a transformer, not supported by the trainer (valid: " + cnns +
                     ", or a CNN model .json)");
  }
  // The data set sets a zoo model's input and classes unless the flags say otherwise.
  auto model_for = [&](const exec::Dataset& data) {
    if (file_model) return std::move(*file_model);
    ModelOptions mo;
    mo.resolution = f.resolution > 0 ? f.resolution : data.height;
    mo.channels = f.channels > 0 ? f.channels : data.channels;
    mo.classes = f.classes > 0 ? f.classes : data.classes;
    return load_model(model_name, mo);
  };
  exec::Dataset& train = d.train;
  exec::Dataset& test = d.test;
  if (f.dataset == "fashion-mnist") {
    train = exec::load_fashion_mnist(f.data_dir, "train");
    test = exec::load_fashion_mnist(f.data_dir, "test");
    d.model = model_for(train);
    check_network_fits(d.model, f);
  } else if (f.dataset == "synthetic") {
    if (f.synthetic_size < 2) throw InputError("--synthetic-size: must be >= 2");
    check_model_options(flag_model_options(f));
    // The data take the model's shape (the flags', else 1 x 28 x 28 in 10 classes); both
    // are checked against the memory before the data are drawn.
    exec::Dataset shape;
    shape.channels = f.channels > 0 ? f.channels : 1;
    shape.height = shape.width = f.resolution > 0 ? f.resolution : 28;
    shape.classes = f.classes > 0 ? f.classes : 10;
    d.model = model_for(shape);
    check_network_fits(d.model, f);
    const int64_t extra = std::max<int64_t>(2, f.synthetic_size / 4);
    check_fits_in_memory((double(f.synthetic_size) + double(extra)) * double(shape.sample_elems()),
                         "the synthetic data set (one byte per pixel)",
                         "--synthetic-size " + std::to_string(f.synthetic_size) + ", --resolution " +
                             std::to_string(shape.height));
    // One draw, split: the test samples share the class prototypes, only their noise is new.
    auto [tr, te] = exec::split(exec::make_synthetic(f.synthetic_size + extra, shape.channels, shape.height, shape.width,
                                                     shape.classes, f.opt.seed),
                                f.synthetic_size);
    train = std::move(tr);
    test = std::move(te);
  } else {
    throw InputError("--dataset: unknown data set '" + f.dataset + "' (valid: fashion-mnist, synthetic)");
  }
  return d;
}

void write_metrics(const std::string& path, const TrainFlags& f, const Model& model, const exec::Dataset& train,
                   const exec::TrainResult& result, int ranks) {
    nlohmann::json epochs = nlohmann::json::array(), steps = nlohmann::json::array();
    for (const auto& e : result.epochs)
      epochs.push_back({{"epoch", e.epoch}, {"steps", e.steps}, {"train_loss", e.train_loss},
                        {"train_accuracy", e.train_accuracy}, {"test_accuracy", e.test_accuracy},
                        {"test_loss", e.test_loss}, {"seconds", e.seconds}, {"samples_per_s", e.samples_per_s},
                        {"data_wait_s", e.data_wait_s}, {"loss_scale", e.loss_scale}, {"skipped_steps", e.skipped_steps}});
    for (const auto& s : result.steps)
      steps.push_back({{"step", s.step}, {"epoch", s.epoch}, {"loss", s.loss}, {"lr", s.lr}, {"loss_scale", s.loss_scale},
                       {"skipped", s.skipped}, {"seconds", s.seconds}, {"optimizer_s", s.optimizer_s}});
    nlohmann::json j{{"schema", "fuseplan.metrics/1"}, {"model", model.name}, {"dataset", train.name},
                     {"batch", f.opt.batch}, {"ranks", ranks}, {"precision", precision_name(f.opt.precision)}, {"optimizer", f.optimizer},
                     {"lr", f.opt.optimizer.lr}, {"threads", exec::cpu_threads()}, {"seconds", result.seconds},
                     {"epochs", epochs}, {"steps", steps}};
    write_file_atomic(path, j.dump(2) + "\n");
  }

void write_profile(const std::string& path, const TrainFlags& f, const Model& model, const exec::Network& net,
                   const exec::TrainResult& result) {
  write_file_atomic(path, profile_json(f, model, net, result).dump(2) + "\n");
}

nlohmann::json profile_json(const TrainFlags& f, const Model& model, const exec::Network& net,
                            const exec::TrainResult& result) {
  // Per-layer forward and backward time per step at this batch (the `measured` fields of
  // the model format), and the optimizer step, leaving out the first (warm-up) step.
  nlohmann::json layers = nlohmann::json::array();
  const auto& timings = net.timings();
  for (size_t l = 0; l < model.layers.size(); ++l) {
    const auto& tm = timings[l];
    const double n = double(std::max<int64_t>(1, tm.calls));
    layers.push_back({{"name", model.layers[l].name}, {"fwd_us", tm.fwd_s / n * 1e6}, {"bwd_us", tm.bwd_s / n * 1e6},
                      {"batch", f.opt.batch}});
  }
  // The optimizer: the mean over the steps that applied an update. A step skipped for
  // overflow (FP16's first steps, while the loss scale comes down) only checks the
  // gradients, and would pull the mean below what every later step pays.
  // Every step counts only where none applied one.
  double opt_s = 0, all_s = 0;
  size_t n = 0, all = 0;
  for (size_t k = result.steps.size() > 1 ? 1 : 0; k < result.steps.size(); ++k, ++all) {
    all_s += result.steps[k].optimizer_s;
    if (!result.steps[k].skipped) opt_s += result.steps[k].optimizer_s, ++n;
  }
  if (n == 0) opt_s = all_s, n = all;
  nlohmann::json j{{"schema", "fuseplan.profile/1"}, {"model", model.name}, {"fingerprint", model.fingerprint_hex()},
                   {"device", f.backend == "cpu" ? "cpu (" + std::to_string(exec::cpu_threads()) + " threads)"
                                                 : net.backend().name()},
                   {"precision", precision_name(f.opt.precision)}, {"batch", f.opt.batch}, {"layers", layers}};
  if (n > 0) j["optimizer_us"] = opt_s / double(n) * 1e6;
  return j;
}

exec::StepCallback step_progress(ProgressBar& bar, const TrainFlags& f) {
  return [&bar, fp16 = f.opt.precision == Precision::FP16](const exec::StepRecord& s, int64_t total, double rate) {
    bar(s.step + 1, total,
        "epoch " + std::to_string(s.epoch) + "  loss " + fixed(s.loss, 4) + "  " + fixed(rate, 0) + " samples/s" +
            (fp16 ? "  scale " + fixed(s.loss_scale, 0) : ""));
  };
}

exec::EpochCallback epoch_progress(ProgressBar& bar) {
  return [&bar](const exec::EpochRecord& e) {
    bar.note("epoch " + std::to_string(e.epoch) + " done in " + fixed(e.seconds, 1) + " s: train loss " +
             fixed(e.train_loss, 4) + ", train acc " + percent(e.train_accuracy, 2) +
             (e.test_accuracy >= 0 ? ", test acc " + percent(e.test_accuracy, 2) : ""));
  };
}

void print_epochs(std::ostream& os, const exec::TrainResult& result) {
  Table t({"epoch", "steps", "train loss", "train acc", "test acc", "s", "samples/s", "data wait s", "loss scale",
           "skipped"});
  for (const auto& e : result.epochs)
    t.row({std::to_string(e.epoch), std::to_string(e.steps), fixed(e.train_loss, 4), percent(e.train_accuracy, 2),
           e.test_accuracy < 0 ? "-" : percent(e.test_accuracy, 2), fixed(e.seconds, 1), fixed(e.samples_per_s, 0),
           fixed(e.data_wait_s, 2), fixed(e.loss_scale, 0), std::to_string(e.skipped_steps)});
  t.print(os, "  ");
}

}  // namespace fuseplan::cli
