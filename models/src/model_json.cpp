// Model JSON import/export ("fuseplan.model/1"); import validates every key and value.
#include "fuseplan/models/model_json.hpp"

#include <cstdint>
#include <set>

#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "model_rebuild.hpp"

namespace fuseplan {

nlohmann::json model_to_json(const Model& m) {
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : m.layers) {
    nlohmann::json params = nlohmann::json::array();
    auto param = [](const ParamTensor& t) {
      nlohmann::json p{{"name", t.name}, {"shape", t.shape}, {"role", tensor_role_name(t.role)}};
      if (t.frozen) p["frozen"] = true;
      return p;
    };
    for (int i = 0; i < l.tensor_count; ++i) params.push_back(param(m.tensors[l.first_tensor + i]));
    // Frozen ones back in their places among the layer's parameters, in slot order.
    const int layer = static_cast<int>(&l - m.layers.data());
    for (const auto& f : m.frozen)
      if (f.tensor.layer == layer) params.insert(params.begin() + f.slot, param(f.tensor));
    nlohmann::json a = nlohmann::json::object();
    // One integer for a square window, [height, width] for a rectangular one.
    auto hw = [&](const char* key, int h, int w, int omitted) {
      if (w != h) a[key] = {h, w};
      else if (h != omitted) a[key] = h;
    };
    hw("kernel", l.attrs.kernel, l.attrs.kernel_width(), 0);
    hw("stride", l.attrs.stride, l.attrs.stride_width(), 1);
    hw("padding", l.attrs.padding, l.attrs.padding_width(), 0);
    hw("dilation", l.attrs.dilation, l.attrs.dilation_width(), 1);
    if (l.attrs.groups != 1) a["groups"] = l.attrs.groups;
    if (l.attrs.heads) a["heads"] = l.attrs.heads;
    if (l.attrs.dropout) a["dropout"] = l.attrs.dropout;
    if (l.attrs.causal) a["causal"] = true;
    if (l.attrs.attention == AttentionKernels::Eager) a["eager"] = true;
    if (l.attrs.attention == AttentionKernels::FusedSoftmax) a["fused_softmax"] = true;
    if (l.attrs.bias) a["bias"] = true;
    if (l.attrs.compute_class) a["class"] = compute_class_name(*l.attrs.compute_class);
    if (l.attrs.view) a["view"] = true;
    nlohmann::json jl{{"name", l.name},
                      {"kind", layer_kind_name(l.kind)},
                      {"inputs", l.inputs},
                      {"in_shape", l.in_shape},
                      {"out_shape", l.out_shape},
                      {"params", params},
                      {"fwd_flops", l.fwd_flops},
                      {"bwd_flops", l.bwd_flops},
                      {"activation_elems", l.activation_elems}};
    if (!a.empty()) jl["attrs"] = a;
    if (l.measured)
      jl["measured"] = {{"fwd_us", l.measured->fwd_us}, {"bwd_us", l.measured->bwd_us}, {"batch", l.measured->batch}};
    layers.push_back(jl);
  }
  nlohmann::json j{{"schema", kModelSchema}, {"name", m.name}, {"input_shape", m.input_shape}};
  if (!m.extra_inputs.empty()) {
    j["extra_inputs"] = nlohmann::json::array();
    for (const auto& in : m.extra_inputs) j["extra_inputs"].push_back({{"name", in.name}, {"shape", in.shape}});
  }
  j["layers"] = layers;
  return j;
}

namespace {
// A tensor of more elements than this is no model's (GPT-3's largest is about 2^29); the
// products below stay far from int64's limit.
constexpr int64_t kMaxElements = int64_t(1) << 48;

Shape read_shape(JsonObject& o, const std::string& key) {
  auto v = o.int_list(key, 1);
  int64_t elements = 1;
  for (int64_t d : v) {
    if (d > kMaxElements / elements)
      o.fail(key, "more than 2^48 elements (a shape beyond any model, or a typo)");
    elements *= d;
  }
  return Shape(v.begin(), v.end());
}
// A window attribute: one integer (a square window) or [height, width]; `absent` when not given.
Hw read_hw(JsonObject& a, const std::string& key, int lo, int absent) {
  if (!a.has(key)) return {absent, absent};
  const nlohmann::json& v = a.raw(key);
  auto valid = [&](const nlohmann::json& x) {
    return x.is_number_integer() && x.get<int64_t>() >= lo && x.get<int64_t>() <= (1 << 20);
  };
  if (valid(v)) return {v.get<int>(), v.get<int>()};
  if (v.is_array() && v.size() == 2 && valid(v[0]) && valid(v[1])) return {v[0].get<int>(), v[1].get<int>()};
  a.fail(key, "must be an integer in [" + std::to_string(lo) + ", 1048576], or [height, width] of two such");
}
}  // namespace

Model model_from_json(const nlohmann::json& j, const std::string& origin) {
  JsonObject root(j, origin);
  std::string schema = root.string("schema");
  if (schema != kModelSchema)
    root.fail("schema", "unsupported schema '" + schema + "' (this build reads " + kModelSchema + ")");
  Model m;
  m.name = root.string("name");
  if (m.name.empty()) root.fail("name", "must not be empty");
  m.input_shape = read_shape(root, "input_shape");
  if (auto extra = root.opt_array("extra_inputs")) {
    std::set<std::string> names;
    for (size_t k = 0; k < extra->get().size(); ++k) {
      JsonObject io = element_object(extra->get()[k], origin, "$.extra_inputs[" + std::to_string(k) + "]");
      ModelInput in{io.string("name"), read_shape(io, "shape")};
      if (in.name.empty()) io.fail("name", "must not be empty");
      if (!names.insert(in.name).second) io.fail("name", "duplicate input name '" + in.name + "'");
      io.finish();
      m.extra_inputs.push_back(std::move(in));
    }
  }
  // The lowest reference a layer may give: the last input's.
  const int64_t lowest_input = -1 - static_cast<int64_t>(m.extra_inputs.size());
  const std::string input_refs =
      m.extra_inputs.empty() ? "-1 for the model input"
                             : "-1 to " + std::to_string(lowest_input) + " for the model's inputs";
  const auto& layers = root.array("layers");
  if (layers.empty()) root.fail("layers", "must hold at least one layer");
  std::set<std::string> tensor_names;
  std::vector<model_detail::GivenLayer> given;
  for (size_t i = 0; i < layers.size(); ++i) {
    std::string path = "$.layers[" + std::to_string(i) + "]";
    JsonObject lo = element_object(layers[i], origin, path);
    Layer l;
    l.name = lo.string("name");
    std::string kind = lo.string("kind");
    auto k = parse_layer_kind(kind);
    if (!k) lo.fail("kind", "unknown layer kind '" + kind + "' (valid: " + layer_kind_list() + ")");
    l.kind = *k;
    if (lo.has("inputs")) {
      for (auto v : lo.int_list("inputs", lowest_input)) {
        if (v >= static_cast<int64_t>(i)) lo.fail("inputs", "must name earlier layers (or " + input_refs + ")");
        l.inputs.push_back(static_cast<int>(v));
      }
    } else {
      l.inputs = {static_cast<int>(i) - 1};
    }
    model_detail::GivenLayer g{lo.has("in_shape"), lo.has("out_shape"), lo.has("fwd_flops"), lo.has("bwd_flops"),
                               lo.has("activation_elems")};
    given.push_back(g);
    if (g.in_shape) l.in_shape = read_shape(lo, "in_shape");
    if (g.out_shape) l.out_shape = read_shape(lo, "out_shape");
    if (g.fwd_flops) l.fwd_flops = lo.non_negative("fwd_flops");
    if (g.bwd_flops) l.bwd_flops = lo.non_negative("bwd_flops");
    l.activation_elems = lo.opt_integer("activation_elems", 0, INT64_MAX).value_or(numel(l.out_shape));
    if (auto a = lo.opt_object("attrs")) {
      const Hw kernel = read_hw(*a, "kernel", 1, 0), stride = read_hw(*a, "stride", 1, 1);
      const Hw padding = read_hw(*a, "padding", 0, 0), dilation = read_hw(*a, "dilation", 1, 1);
      l.attrs.set_window(kernel, stride, padding, dilation);
      l.attrs.groups = static_cast<int>(a->opt_integer("groups", 1, 1 << 20).value_or(1));
      l.attrs.heads = static_cast<int>(a->opt_integer("heads", 1, 1 << 20).value_or(0));
      l.attrs.dropout = a->opt_number("dropout").value_or(0);
      if (l.attrs.dropout < 0 || l.attrs.dropout >= 1) a->fail("dropout", "must be in [0, 1)");
      l.attrs.causal = a->opt_boolean("causal").value_or(false);
      const bool eager = a->opt_boolean("eager").value_or(false);
      const bool fused_softmax = a->opt_boolean("fused_softmax").value_or(false);
      if (eager && l.kind != LayerKind::Attention)
        a->fail("eager", "only an attention layer runs eagerly (a " + kind + " has no scores)");
      if (fused_softmax && l.kind != LayerKind::Attention)
        a->fail("fused_softmax", "only an attention layer has a softmax of scores (a " + kind + " has none)");
      if (eager && fused_softmax) a->fail("fused_softmax", "an attention layer runs eager or fused_softmax, not both");
      if (eager) l.attrs.attention = AttentionKernels::Eager;
      if (fused_softmax) l.attrs.attention = AttentionKernels::FusedSoftmax;
      l.attrs.bias = a->opt_boolean("bias").value_or(false);
      l.attrs.view = a->opt_boolean("view").value_or(false);
      if (l.attrs.view && l.kind != LayerKind::Custom)
        a->fail("view", "only a custom layer is marked a view (a " + kind + " computes)");
      if (l.attrs.view && (l.fwd_flops > 0 || l.bwd_flops > 0))
        a->fail("view", "a view computes nothing: its fwd_flops and bwd_flops must be 0");
      if (std::optional<std::string> cls = a->opt_string("class")) {
        if (l.kind != LayerKind::Custom)
          a->fail("class", "only a custom layer names its class (a " + kind + "'s follows from its kind and shapes)");
        l.attrs.compute_class = parse_compute_class(*cls);
        if (!l.attrs.compute_class)
          a->fail("class", "unknown layer class '" + *cls + "' (valid: " + compute_class_list() + ")");
      }
      a->finish();
    }
    if (auto mo = lo.opt_object("measured")) {
      MeasuredTime t;
      t.fwd_us = mo->non_negative("fwd_us");
      t.bwd_us = mo->non_negative("bwd_us");
      t.batch = static_cast<int>(mo->integer("batch", 1, 1 << 24));
      mo->finish();
      l.measured = t;
    }
    l.first_tensor = static_cast<int>(m.tensors.size());
    const auto& params = lo.array("params");
    for (size_t p = 0; p < params.size(); ++p) {
      JsonObject po = element_object(params[p], origin, path + ".params[" + std::to_string(p) + "]");
      ParamTensor t;
      t.name = po.string("name");
      if (t.name.empty()) po.fail("name", "must not be empty");
      if (!tensor_names.insert(t.name).second) po.fail("name", "duplicate tensor name '" + t.name + "'");
      t.shape = read_shape(po, "shape");
      t.numel = numel(t.shape);
      std::string role = po.opt_string("role").value_or("weight");
      auto r = parse_tensor_role(role);
      if (!r) po.fail("role", "unknown role '" + role + "' (valid: weight, bias, norm_scale, norm_shift, embedding)");
      t.role = *r;
      t.frozen = po.opt_boolean("frozen").value_or(false);
      t.layer = static_cast<int>(i);
      po.finish();
      m.tensors.push_back(std::move(t));
    }
    l.tensor_count = static_cast<int>(params.size());
    lo.finish();
    m.layers.push_back(std::move(l));
  }
  root.finish();
  if (m.tensors.empty()) throw InputError(origin + ": $.layers: the model has no parameter tensors");
  return model_detail::rebuild_model(m, given, origin);
}

Model load_model_file(const std::string& path) {
  Model m = model_from_json(parse_json_file(path), path);
  m.file = path;
  return m;
}

ProfileInfo apply_profile(Model& m, const std::string& path) {
  const nlohmann::json j = parse_json_file(path);  // JsonObject keeps a reference
  return apply_profile_json(m, j, path);
}

ProfileInfo apply_profile_json(Model& m, const nlohmann::json& j, const std::string& path) {
  JsonObject r(j, path);
  if (r.string("schema") != kProfileSchema) r.fail("schema", std::string("must be ") + kProfileSchema);
  const std::string name = r.string("model"), fp = r.string("fingerprint");
  if (fp != m.fingerprint_hex())
    r.fail("fingerprint", "the profile was measured on model " + name + " (fingerprint " + fp + "), not on " + m.name +
                              " as configured (fingerprint " + m.fingerprint_hex() +
                              "; same " + field("model") + ", " + field("model.resolution") + ", " + field("model.channels") + ", " + field("model.classes") + "?)");
  ProfileInfo info;
  info.device = r.string("device");
  info.precision = r.string("precision");
  info.batch = static_cast<int>(r.integer("batch", 1, 1 << 24));
  const std::optional<double> optimizer_us = r.opt_number("optimizer_us");
  if (optimizer_us && *optimizer_us < 0) r.fail("optimizer_us", "must be >= 0");
  if (std::optional<JsonObject> w = r.opt_object("whole_pass")) {
    WholePass whole;
    whole.forward_us = w->non_negative("forward_us");
    whole.backward_us = w->non_negative("backward_us");
    whole.fitted = w->boolean("fitted");
    if (whole.fitted) {
      whole.layers_forward_us = w->non_negative("layers_forward_us");
      whole.layers_backward_us = w->non_negative("layers_backward_us");
    }
    w->finish();
    info.whole_pass = whole;
  }
  const auto& layers = r.array("layers");
  if (layers.size() != m.layers.size())
    r.fail("layers", "has " + std::to_string(layers.size()) + " layers, the model " + std::to_string(m.layers.size()));
  std::vector<MeasuredTime> times;
  for (size_t l = 0; l < layers.size(); ++l) {
    JsonObject lo = element_object(layers[l], path, "$.layers[" + std::to_string(l) + "]");
    if (lo.string("name") != m.layers[l].name) lo.fail("name", "expected layer " + m.layers[l].name);
    MeasuredTime t;
    t.fwd_us = lo.non_negative("fwd_us");
    t.bwd_us = lo.non_negative("bwd_us");
    t.batch = static_cast<int>(lo.integer("batch", 1, 1 << 24));
    lo.finish();
    times.push_back(t);
  }
  r.finish();
  for (size_t l = 0; l < layers.size(); ++l) m.layers[l].measured = times[l];
  m.measured_optimizer_us = optimizer_us;
  return info;
}

}  // namespace fuseplan
