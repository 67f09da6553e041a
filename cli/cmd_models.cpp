// `fuseplan models` (the zoo table) and `fuseplan show MODEL` (layers and tensors).
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/compute.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/models/model_json.hpp"

namespace fuseplan::cli {

void ModelFlags::add(CLI::App* app, bool positional) {
  const char* help = "zoo name (see `fuseplan models`) or a model .json path";
  model_opt = positional ? app->add_option("model", model, help)->required() : app->add_option("--model", model, help)->capture_default_str();
  add_shape(app);
}

void ModelFlags::add_attention(CLI::App* app) {
  attention_opt = app->add_option("--attention", attention,
                                  "eager (the attention scores materialised, each step of scale, mask, softmax "
                                  "and dropout a kernel, as 2019-2022 BERT and GPT-2 code runs) | fused-softmax (the "
                                  "scores materialised, scale, mask and softmax one kernel and dropout another: "
                                  "Megatron-LM's FusedScaleMaskSoftmax, XLA) | fused (one kernel: flash attention, "
                                  "PyTorch 2's SDPA) for every attention layer (default: the model's own; the zoo's "
                                  "are fused)");
}

void ModelFlags::add_shape(CLI::App* app) {
  resolution_opt = app->add_option("--resolution", resolution, "CNN input height = width in pixels (zoo default: 224, alexnet_bn 227)");
  channels_opt = app->add_option("--channels", channels, "CNN input channels (default 3)");
  classes_opt = app->add_option("--classes", classes, "CNN classifier outputs (default 1000)");
  seq_len_opt = app->add_option("--seq-len", seq_len, "transformer sequence length in tokens (bert 128, gpt2 1024)");
  add_attention(app);
}

ModelOptions ModelFlags::options() const {
  ModelOptions o;
  // Given on the command line at all (0 and negatives are refused by the zoo, not ignored).
  if (resolution_opt->count()) o.resolution = resolution;
  if (channels_opt->count()) o.channels = channels;
  if (classes_opt->count()) o.classes = classes;
  if (seq_len_opt->count()) o.seq_len = seq_len;
  if (attention_opt->count()) o.attention = parse_attention(attention, "--attention");
  return o;
}

bool ModelFlags::shape_given() const {
  return resolution_opt->count() || channels_opt->count() || classes_opt->count() || seq_len_opt->count() ||
         attention_opt->count();
}

namespace {
// " and extra inputs attention_mask 128, ..." for a model of several inputs; empty for one.
std::string extra_inputs_str(const Model& m) {
  std::string s;
  for (const auto& in : m.extra_inputs)
    s += (s.empty() ? " and extra inputs " : ", ") + in.name + " " + shape_str(in.shape);
  return s;
}
}  // namespace

void add_models_commands(CLI::App& app) {
  auto* models = app.add_subcommand("models", "List the model zoo: tensors, parameters, forward GFLOPs per sample");
  auto models_json = std::make_shared<bool>(false);
  models->add_flag("--json", *models_json, "print JSON instead of a table");
  models->callback([models_json] {
    nlohmann::json rows = nlohmann::json::array();
    Table t({"<model", "tensors", "parameters", "fwd GFLOPs", "bwd GFLOPs", "<input", "<description"});
    for (const auto& e : zoo()) {
      Model m = e.build({});
      std::string input = e.is_transformer ? std::to_string(m.input_shape[0]) + " tokens" : shape_str(m.input_shape);
      t.row({e.name, std::to_string(m.tensors.size()), grouped(m.param_count()), fixed(m.fwd_flops() / 1e9, 2),
             fixed(m.bwd_flops() / 1e9, 2), input, e.description});
      rows.push_back({{"name", e.name}, {"tensors", m.tensors.size()}, {"params", m.param_count()},
                     {"fwd_flops", m.fwd_flops()}, {"bwd_flops", m.bwd_flops()}, {"input_shape", m.input_shape},
                     {"default_batch_per_gpu", e.default_batch_per_gpu}, {"description", e.description}});
    }
    if (*models_json) out() << rows.dump(2) << "\n";
    else t.print(out());
  });

  auto* show = app.add_subcommand("show", "Show one model layer by layer and tensor by tensor (or export its JSON)");
  struct ShowFlags {
    ModelFlags model;
    bool json = false;
    std::string export_path;
  };
  auto f = std::make_shared<ShowFlags>();
  f->model.add(show, true);
  show->add_flag("--json", f->json, "print the model JSON (schema fuseplan.model/1) instead of tables");
  show->add_option("--export", f->export_path, "write the model JSON to FILE (atomic)");
  show->callback([f] {
    Model m = load_model(f->model.model, f->model.options());
    if (!f->export_path.empty()) write_file_atomic(f->export_path, model_to_json(m).dump(1) + "\n");
    if (f->json) {
      out() << model_to_json(m).dump(1) << "\n";
      return;
    }
    out() << m.name << ": " << m.layers.size() << " layers, " << m.tensors.size() << " tensors, "
              << grouped(m.param_count()) << " parameters"
              << (m.frozen.empty() ? std::string()
                                   : " (and " + std::to_string(m.frozen.size()) + " frozen tensors, " +
                                         grouped(m.frozen_count()) + " parameters, not trained)")
              << ", " << fixed(m.fwd_flops() / 1e9, 3)
              << " GFLOPs forward and " << fixed(m.bwd_flops() / 1e9, 3) << " backward per sample, input "
              << shape_str(m.input_shape) << extra_inputs_str(m) << ", fingerprint " << m.fingerprint_hex()
              << "\n\nLayers (forward order)\n";
    // class: what prices the layer where a cluster gives classes their own efficiencies.
    Table lt({"#", "<layer", "<kind", "<class", "<output", "params", "fwd MFLOPs", "bwd MFLOPs", "activations"});
    for (size_t i = 0; i < m.layers.size(); ++i) {
      const auto& l = m.layers[i];
      int64_t params = 0;
      for (int k = 0; k < l.tensor_count; ++k) params += m.tensors[l.first_tensor + k].numel;
      params += l.frozen_elems;
      std::string kind(layer_kind_name(l.kind));
      if (l.attrs.attention != AttentionKernels::Fused)
        kind += " (" + std::string(attention_name(l.attrs.attention)) + ")";
      lt.row({std::to_string(i), l.name, kind,
              std::string(compute_class_name(compute_class_of(l))), shape_str(l.out_shape), grouped(params),
              fixed(l.fwd_flops / 1e6, 2), fixed(l.bwd_flops * l.backward_share / 1e6, 2),
              grouped(l.activation_elems)});
    }
    lt.print(out(), "  ");
    out() << "\nParameter tensors (fwd = forward index; bwd = gradient order, which plans use)\n";
    Table tt({"fwd", "bwd", "<tensor", "<shape", "elements", "<role"});
    for (size_t i = 0; i < m.tensors.size(); ++i) {
      const auto& t = m.tensors[i];
      tt.row({std::to_string(i), std::to_string(m.tensors.size() - 1 - i), t.name, shape_str(t.shape), grouped(t.numel),
              std::string(tensor_role_name(t.role))});
    }
    tt.print(out(), "  ");
  });
}

}  // namespace fuseplan::cli
