// Subcommand registration and the flags several subcommands share.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "fuseplan/models/zoo.hpp"

namespace fuseplan::cli {

struct ModelFlags {
  std::string model = "resnet50";
  int resolution = 0, channels = 0, classes = 0, seq_len = 0;
  CLI::Option *model_opt = nullptr, *resolution_opt = nullptr, *channels_opt = nullptr, *classes_opt = nullptr,
              *seq_len_opt = nullptr;
  void add(CLI::App* app, bool positional = false);
  ModelOptions options() const;
};

void add_models_commands(CLI::App& app);   // models, show
void add_clusters_command(CLI::App& app);
void add_predict_command(CLI::App& app);
void add_collective_command(CLI::App& app);

}  // namespace fuseplan::cli
