// Plan JSON, validation, bucket specs and byte-size parsing.
#include "fuseplan/costmodel/plan.hpp"

#include "fuseplan/costmodel/report.hpp"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/json_reader.hpp"
#include "fuseplan/models/text.hpp"

namespace fuseplan {

nlohmann::json plan_to_json(const Plan& p) {
  nlohmann::json buckets = nlohmann::json::array();
  for (const auto& b : p.buckets)
    buckets.push_back({{"begin", b.begin},
                       {"end", b.end},
                       {"algorithm", b.algorithm},
                       {"stream", b.stream},
                       {"transfer", precision_name(b.transfer)},
                       {"pack", b.pack}});
  nlohmann::json j{{"schema", kPlanSchema},
                   {"model", {{"name", p.model}, {"tensors", p.tensors}, {"params", p.params}, {"fingerprint", p.fingerprint}}},
                   {"cluster", p.cluster},
                   {"gpus", p.gpus},
                   {"batch_per_gpu", p.batch_per_gpu},
                   {"compute", precision_name(p.compute)},
                   {"strategy", p.strategy},
                   {"buckets", buckets}};
  nlohmann::json o = nlohmann::json::object();
  if (p.model_options.resolution) o["resolution"] = *p.model_options.resolution;
  if (p.model_options.channels) o["channels"] = *p.model_options.channels;
  if (p.model_options.classes) o["classes"] = *p.model_options.classes;
  if (p.model_options.seq_len) o["seq_len"] = *p.model_options.seq_len;
  if (p.model_options.attention) o["attention"] = attention_name(*p.model_options.attention);
  if (!o.empty()) j["model"]["options"] = o;
  if (!p.model_file.empty()) j["model"]["file"] = p.model_file;
  if (p.cycle_s > 0) j["cycle_ms"] = p.cycle_s * 1e3;
  if (p.pack_on != PackOn::Comm) j["pack_on"] = pack_on_name(p.pack_on);
  if (p.cast) j["cast"] = pack_on_name(*p.cast);
  if (p.accumulate != Accumulation{})
    j["accumulate"] = {{"steps", p.accumulate.steps}, {"no_sync", p.accumulate.no_sync}};
  if (p.optimizer != OptimizerStep{})
    j["optimizer"] = {{"bytes_per_param", p.optimizer.bytes_per_param},
                      {"kernels_per_tensor", p.optimizer.kernels_per_tensor}};
  if (p.step_overhead_s > 0) j["step_overhead_ms"] = p.step_overhead_s * 1e3;
  if (p.compute_scale != 1) j["compute_scale"] = p.compute_scale;
  if (p.prediction)
    j["prediction"] = {{"iteration_s", p.prediction->iteration_s},
                       {"exposed_comm_s", p.prediction->exposed_comm_s},
                       {"comm_end_s", p.prediction->comm_end_s},
                       {"scaling_efficiency", p.prediction->scaling_efficiency}};
  return j;
}

ModelOptions model_options_from_json(JsonObject& o) {
  auto get = [&](const char* key) -> std::optional<int> {
    if (auto v = o.opt_integer(key, 1, 1 << 20)) return static_cast<int>(*v);
    return std::nullopt;
  };
  ModelOptions m;
  m.resolution = get("resolution");
  m.channels = get("channels");
  m.classes = get("classes");
  m.seq_len = get("seq_len");
  if (auto att = o.opt_string("attention"))
    m.attention = parse_attention(*att, o.origin() + ": " + o.where("attention"));
  o.finish();
  return m;
}

Plan plan_from_json(const nlohmann::json& j, const std::string& origin) {
  JsonObject r(j, origin);
  std::string schema = r.string("schema");
  if (schema != kPlanSchema) r.fail("schema", "unsupported schema '" + schema + "' (this build reads " + kPlanSchema + ")");
  Plan p;
  auto m = r.object("model");
  p.model = m.string("name");
  p.tensors = static_cast<int>(m.integer("tensors", 1, 1 << 30));
  p.params = m.integer("params", 1, INT64_MAX);
  p.fingerprint = m.string("fingerprint");
  p.model_file = m.opt_string("file").value_or("");
  if (auto o = m.opt_object("options")) p.model_options = model_options_from_json(*o);
  m.finish();
  p.cluster = r.string("cluster");
  p.gpus = static_cast<int>(r.integer("gpus", 1, 1 << 24));
  p.batch_per_gpu = static_cast<int>(r.integer("batch_per_gpu", 1, 1 << 24));
  p.compute = parse_precision(r.string("compute"), origin + ": $.compute");
  p.strategy = r.opt_string("strategy").value_or("");
  p.cycle_s = r.opt_in_range("cycle_ms", 0, kMaxCycleMs, "ms").value_or(0) * 1e-3;
  if (auto po = r.opt_string("pack_on")) p.pack_on = parse_pack_on(*po, origin + ": $.pack_on");
  if (auto c = r.opt_string("cast")) p.cast = parse_pack_on(*c, origin + ": $.cast");
  if (auto a = r.opt_object("accumulate")) {
    p.accumulate.steps = static_cast<int>(a->integer("steps", 1, kMaxAccumulationSteps));
    p.accumulate.no_sync = a->opt_boolean("no_sync").value_or(false);
    if (p.accumulate.no_sync && p.accumulate.steps < 2) a->fail("no_sync", "needs steps 2 or more");
    a->finish();
  }
  if (auto o = r.opt_object("optimizer")) {
    p.optimizer.bytes_per_param = o->positive("bytes_per_param");
    check_optimizer_step(p.optimizer, o->where("bytes_per_param"));
    p.optimizer.kernels_per_tensor =
        static_cast<int>(o->integer("kernels_per_tensor", 0, kMaxOptimizerKernelsPerTensor));
    o->finish();
  }
  // Plans written before the optimizer's bytes were a field: "fused" or "per-tensor",
  // both at LARS's 28 bytes per parameter.
  if (auto k = r.opt_string("optimizer_kernels")) {
    if (*k != "fused" && *k != "per-tensor")
      r.fail("optimizer_kernels", "unknown optimizer kernels '" + *k + "' (valid: fused, per-tensor; $.optimizer "
                                  "gives the bytes and kernels of any other step)");
    if (r.has("optimizer")) r.fail("optimizer_kernels", "give it or $.optimizer, not both");
    p.optimizer = optimizer_step("lars", *k, origin + ": $.optimizer_kernels");
  }
  p.step_overhead_s = r.opt_in_range("step_overhead_ms", 0, kMaxStepOverheadMs, "ms").value_or(0) * 1e-3;
  p.compute_scale = r.opt_in_range("compute_scale", kMinComputeScale, kMaxComputeScale,
                                   "(the framework's compute time over the cluster's)").value_or(1);
  const auto& bs = r.array("buckets");
  if (bs.empty()) r.fail("buckets", "must hold at least one bucket");
  for (size_t i = 0; i < bs.size(); ++i) {
    std::string path = "$.buckets[" + std::to_string(i) + "]";
    JsonObject bo = element_object(bs[i], origin, path);
    PlanBucket b;
    b.begin = static_cast<int>(bo.integer("begin", 0, 1 << 30));
    b.end = static_cast<int>(bo.integer("end", 1, 1 << 30));
    b.algorithm = bo.string("algorithm");
    if (b.algorithm != "auto") find_algorithm(b.algorithm, origin + ": " + path + ".algorithm");
    b.stream = static_cast<int>(bo.opt_integer("stream", 0, 63).value_or(0));
    b.transfer = parse_precision(bo.string("transfer"), origin + ": " + path + ".transfer");
    b.pack = bo.opt_boolean("pack").value_or(false);
    bo.finish();
    p.buckets.push_back(b);
  }
  if (p.cast && !casts_any(p)) r.fail("cast", kNothingToCast);
  if (auto po = r.opt_object("prediction")) {
    PlanPrediction x;
    x.iteration_s = po->positive("iteration_s");
    x.exposed_comm_s = po->non_negative("exposed_comm_s");
    x.comm_end_s = po->opt_number("comm_end_s").value_or(0);  // absent in plans of `predict` before it was typed
    x.scaling_efficiency = po->non_negative("scaling_efficiency");
    po->finish();
    p.prediction = x;
  }
  r.finish();
  return p;
}

bool sends_16_bit(const Plan& p) {
  return std::any_of(p.buckets.begin(), p.buckets.end(),
                     [](const PlanBucket& b) { return b.transfer != Precision::FP32; });
}

const char* pack_on_name(PackOn p) { return p == PackOn::Compute ? "compute" : "comm"; }

PackOn parse_pack_on(const std::string& s, const std::string& where) {
  if (s == "comm") return PackOn::Comm;
  if (s == "compute") return PackOn::Compute;
  throw InputError(where + ": unknown value '" + s + "' (valid: comm, compute)");
}

namespace {
// What each update rule's step moves per trained parameter, FP32 master weights, moments
// and gradients (torch.cuda.amp; a model cast to FP16, apex O2, writes its half copy too
// and reads half-precision gradients: about as many bytes), read from each
// implementation's code. Fused: one pass (or a few multi-tensor passes) over every
// parameter. Per tensor: the kernels torch.optim's loop launches for one tensor before
// PyTorch 2.0, zero_grad's zero_ included (4 bytes), and what they move.
struct OptimizerRule {
  const char* name;
  double fused_bytes;
  double per_tensor_bytes;  // 0: no per-tensor form
  int per_tensor_kernels;
};
constexpr OptimizerRule kRules[] = {
    // fuseplan-exec's LARS: the norms read weight and gradient (8 B), the update reads the
    // gradient (2-4 B), reads and writes the FP32 master (8) and the momentum (8), writes
    // the half-precision copy (2). Its per-tensor form keeps those bytes and launches
    // torch.optim.SGD's 5 kernels, as fuseplan priced every per-tensor loop before it knew
    // the rule (plans with $.optimizer_kernels "per-tensor" read as this).
    {"lars", 28, 28, 5},
    // SGD with momentum. Fused (apex FusedSGD, torch fused): reads the gradient, the
    // parameter and the momentum buffer, writes the last two: 20 B. Per tensor
    // (torch.optim.SGD, _single_tensor_sgd with weight decay): d_p.add(param) 12,
    // buf.mul_ 8, buf.add_(d_p) 12, param.add_(buf) 12, zero_ 4: 48 B in 5 kernels.
    {"sgd", 20, 48, 5},
    // Adam and AdamW. Fused (apex FusedAdam, torch fused=True): reads the gradient, the
    // parameter and both moments, writes the last three: 28 B. Per tensor
    // (torch.optim.AdamW 1.13, _single_tensor_adamw): param.mul_ 8, exp_avg.mul_ 8 and
    // add_ 12, exp_avg_sq.mul_ 8 and addcmul_ 12, sqrt 8, the division by the bias
    // correction 8, add_(eps) 8, param.addcdiv_ 16, zero_ 4: 92 B in 10 kernels.
    {"adam", 28, 92, 10},
    // LAMB, fused (apex FusedLAMB's multi-tensor stages, as NVIDIA's BERT pre-training
    // runs it): the global gradient norm reads the gradient (4), stage 1 reads the
    // gradient, the parameter and both moments and writes the moments and the update
    // (28), the parameter and update norms read both (8), stage 2 reads the parameter
    // and the update and writes the parameter (12): 52 B. No per-tensor form here.
    {"lamb", 52, 0, 0},
};
}  // namespace

OptimizerStep optimizer_step(const std::string& rule, const std::string& kernels, const std::string& where,
                             bool bytes_given) {
  const OptimizerRule* r = nullptr;
  for (const auto& x : kRules)
    if (rule == x.name) r = &x;
  if (!r) throw InputError(where + ": unknown optimizer '" + rule + "' (valid: lars, sgd, adam, lamb)");
  if (kernels == "fused") return {r->fused_bytes, 0};
  const std::string per = "per-tensor";
  if (kernels != "foreach" &&
      (kernels.rfind(per, 0) != 0 || (kernels.size() > per.size() && kernels[per.size()] != ':')))
    throw InputError(where + ": unknown optimizer kernels '" + kernels +
                     "' (valid: fused, foreach, per-tensor, per-tensor:N)");
  const bool counted = kernels.size() > per.size();  // per-tensor:N
  // A rule without a per-tensor form here takes one whose bytes (and kernels) are given.
  if (r->per_tensor_bytes == 0 && !(bytes_given && (kernels == "foreach" || counted)))
    throw InputError(where + ": optimizer '" + rule + "' runs fused here (apex FusedLAMB); for another " +
                     "implementation give its bytes per parameter and per-tensor:N");
  // foreach: the per-tensor loop's passes in a few multi-tensor launches (PyTorch 2's
  // default on GPUs): its bytes, launches not priced.
  if (kernels == "foreach") return {r->per_tensor_bytes, 0};
  OptimizerStep s{r->per_tensor_bytes, r->per_tensor_kernels};
  if (counted) {
    const std::string n = kernels.substr(per.size() + 1);
    char* end = nullptr;
    const long v = n.empty() ? -1 : std::strtol(n.c_str(), &end, 10);
    if (v < 1 || v > kMaxOptimizerKernelsPerTensor || *end != '\0')
      throw InputError(where + ": per-tensor:N needs N in [1, " + std::to_string(kMaxOptimizerKernelsPerTensor) +
                       "] kernels per tensor (got '" + n + "')");
    s.kernels_per_tensor = int(v);
  }
  return s;
}

void check_optimizer_step(const OptimizerStep& s, const std::string& where) {
  if (!(s.bytes_per_param > 0 && s.bytes_per_param <= kMaxOptimizerBytesPerParam))
    throw InputError(where + ": bytes per parameter must be in (0, " + formatted(kMaxOptimizerBytesPerParam, "%g") +
                     "] (got " + formatted(s.bytes_per_param, "%g") + ")");
  if (s.kernels_per_tensor < 0 || s.kernels_per_tensor > kMaxOptimizerKernelsPerTensor)
    throw InputError(where + ": kernels per tensor must be in [0, " + std::to_string(kMaxOptimizerKernelsPerTensor) +
                     "] (got " + std::to_string(s.kernels_per_tensor) + ")");
}

std::string optimizer_step_description(const OptimizerStep& s) {
  return formatted(s.bytes_per_param, "%g") + " B per parameter, " +
         (s.fused() ? std::string("fused") : std::to_string(s.kernels_per_tensor) + " kernels per tensor");
}

void check_accumulation(const Accumulation& a) {
  if (a.steps < 1 || a.steps > kMaxAccumulationSteps)
    throw InputError(field("accumulate") + ": must be in [1, " + std::to_string(kMaxAccumulationSteps) + "] (got " +
                     std::to_string(a.steps) + ")");
  if (a.no_sync && a.steps < 2) throw InputError(field("no_sync") + ": needs " + field("accumulate") + " 2 or more");
}

void check_step_overhead(double seconds) {
  if (!(seconds >= 0 && seconds <= kMaxStepOverheadMs * 1e-3))
    throw InputError(field("step_overhead") + ": must be in [0, " + formatted(kMaxStepOverheadMs, "%g") + "] ms (got " +
                     formatted(seconds * 1e3, "%g") + ")");
}

void require_no_accumulation(const Plan& p, const std::string& origin, const std::string& consumer) {
  if (p.accumulate.steps > 1)
    throw InputError(origin + ": $.accumulate: " + consumer + " runs one micro-batch per optimizer step (steps 1, "
                     "no no_sync); this plan accumulates " + std::to_string(p.accumulate.steps) +
                     " (predict and simulate price it, export writes it for DDP and Horovod, PlanDDP runs it)");
}

PlanPrediction plan_prediction(const Report& r) {
  return {r.iteration_s, r.exposed_comm_s, r.comm_end_s, r.scaling_efficiency};
}

namespace {
// `file` as seen from the directory of `plan_path` (written), or back (read).
std::string relative_to_plan(const std::string& file, const std::string& plan_path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path dir = fs::absolute(fs::path(plan_path), ec).parent_path();
  const fs::path rel = fs::absolute(fs::path(file), ec).lexically_normal().lexically_relative(dir);
  return rel.empty() ? file : rel.string();
}
std::string from_plan(const std::string& file, const std::string& plan_path) {
  namespace fs = std::filesystem;
  if (fs::path(file).is_absolute()) return file;
  return (fs::path(plan_path).parent_path() / file).lexically_normal().string();
}
}  // namespace

Plan load_plan(const std::string& path) {
  Plan p = plan_from_json(parse_json_file(path), path);
  if (!p.model_file.empty()) p.model_file = from_plan(p.model_file, path);
  if (names_a_file(p.cluster)) p.cluster = from_plan(p.cluster, path);
  return p;
}

nlohmann::json plan_to_json_at(const Plan& p, const std::string& path) {
  Plan q = p;
  if (!q.model_file.empty()) q.model_file = relative_to_plan(q.model_file, path);
  if (names_a_file(q.cluster)) q.cluster = relative_to_plan(q.cluster, path);
  return plan_to_json(q);
}

void validate_plan(const Plan& p, const Model& m, const std::string& origin) {
  const int n = static_cast<int>(m.tensors.size());
  if (p.model != m.name || p.tensors != n || p.fingerprint != m.fingerprint_hex())
    throw InputError(origin + ": plan is for model " + p.model + " (" + std::to_string(p.tensors) + " tensors, " +
                     p.fingerprint + "), not " + m.name + " (" + std::to_string(n) + " tensors, " +
                     m.fingerprint_hex() + ")");
  int expect = 0;
  for (size_t i = 0; i < p.buckets.size(); ++i) {
    const auto& b = p.buckets[i];
    std::string where = origin + ": $.buckets[" + std::to_string(i) + "]";
    if (b.begin != expect)
      throw InputError(where + ": begins at " + std::to_string(b.begin) + ", expected " + std::to_string(expect) +
                       " (buckets must cover the tensors contiguously in backward order)");
    if (b.end <= b.begin) throw InputError(where + ": empty bucket (end <= begin)");
    if (b.end > n) throw InputError(where + ": end " + std::to_string(b.end) + " exceeds the tensor count " + std::to_string(n));
    expect = b.end;
  }
  if (expect != n)
    throw InputError(origin + ": buckets cover " + std::to_string(expect) + " of " + std::to_string(n) + " tensors");
}

int64_t bucket_elements(const Plan&, const Model& m, const PlanBucket& b) {
  int64_t e = 0;
  for (int pos = b.begin; pos < b.end; ++pos) e += m.tensors[m.tensor_at_backward(pos)].numel;
  return e;
}

int64_t parse_bytes(const std::string& s, const std::string& flag, BareNumber bare, bool zero_ok) {
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) throw InputError(flag + ": '" + s + "' is not a size (examples: 4096, 4K, 25MB, 64MiB)");
  double v = 0;
  try {
    v = std::stod(s.substr(0, i));
  } catch (...) {
    throw InputError(flag + ": '" + s + "' is not a size");
  }
  std::string unit = s.substr(i);
  if (zero_ok && v == 0 && (unit.empty() || unit == "B")) return 0;
  if (unit.empty() && bare == BareNumber::Refused)
    throw InputError(flag + ": '" + s + "' needs a unit (e.g. " + s + "MiB, " + s + "MB or " + s +
                     "B; valid: B, K, M, G, KB, MB, GB, KiB, MiB, GiB)");
  double mul = 0;
  if (unit.empty()) mul = bare == BareNumber::MiB ? 1024.0 * 1024 : 1;
  else if (unit == "B") mul = 1;
  else if (unit == "K" || unit == "KiB") mul = 1024.0;
  else if (unit == "M" || unit == "MiB") mul = 1024.0 * 1024;
  else if (unit == "G" || unit == "GiB") mul = 1024.0 * 1024 * 1024;
  else if (unit == "KB") mul = 1e3;
  else if (unit == "MB") mul = 1e6;
  else if (unit == "GB") mul = 1e9;
  else throw InputError(flag + ": unknown size unit '" + unit + "' (valid: B, K, M, G, KB, MB, GB, KiB, MiB, GiB)");
  double b = v * mul;
  if (!(b >= 1) || b > 1e15) throw InputError(flag + ": size '" + s + "' out of range [1 B, 1e15 B]");
  return static_cast<int64_t>(b);
}

std::vector<PlanBucket> buckets_from_spec(const std::string& spec, const Model& m, const std::string& algorithm,
                                          Precision transfer, const std::string& flag) {
  const int n = static_cast<int>(m.tensors.size());
  std::vector<int> starts{0};  // backward positions that start a bucket
  const std::string valid = " (valid: per-tensor, single, threshold:SIZE, splits:A,B,...)";
  if (spec == "per-tensor") {
    for (int i = 1; i < n; ++i) starts.push_back(i);
  } else if (spec == "single") {
  } else if (spec.rfind("threshold:", 0) == 0) {
    int64_t limit = parse_bytes(spec.substr(10), flag, BareNumber::Refused);
    int64_t cur = 0, eb = bytes_per_element(transfer);
    for (int i = 0; i < n; ++i) {
      int64_t t = m.tensors[m.tensor_at_backward(i)].numel * eb;
      if (cur > 0 && cur + t > limit) {
        starts.push_back(i);
        cur = 0;
      }
      cur += t;
    }
  } else if (spec.rfind("splits:", 0) == 0) {
    std::string rest = spec.substr(7);
    size_t pos = 0;
    while (pos <= rest.size() && !rest.empty()) {
      size_t comma = rest.find(',', pos);
      std::string tok = rest.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
      int v = 0;
      try {
        size_t used = 0;
        v = std::stoi(tok, &used);
        if (used != tok.size()) throw std::invalid_argument(tok);
      } catch (...) {
        throw InputError(flag + ": '" + tok + "' is not a tensor position" + valid);
      }
      if (v <= starts.back() || v >= n)
        throw InputError(flag + ": split " + std::to_string(v) + " must increase and lie in [1, " + std::to_string(n - 1) + "]");
      starts.push_back(v);
      if (comma == std::string::npos) break;
      pos = comma + 1;
    }
  } else {
    throw InputError(flag + ": unknown bucket spec '" + spec + "'" + valid);
  }
  if (algorithm != "auto") find_algorithm(algorithm);
  std::vector<PlanBucket> out;
  for (size_t i = 0; i < starts.size(); ++i) {
    PlanBucket b;
    b.begin = starts[i];
    b.end = i + 1 < starts.size() ? starts[i + 1] : n;
    b.algorithm = algorithm;
    b.transfer = transfer;
    out.push_back(b);
  }
  return out;
}

Plan make_plan(const Model& m, const std::string& cluster, int gpus, int batch, Precision compute,
               std::vector<PlanBucket> buckets, const std::string& strategy) {
  Plan p;
  p.model = m.name;
  p.model_file = m.file;
  p.tensors = static_cast<int>(m.tensors.size());
  p.params = m.param_count();
  p.fingerprint = m.fingerprint_hex();
  // A CNN's input (channels x resolution x resolution) and classes (the last layer's width).
  if (m.file.empty() && m.input_shape.size() == 3 && m.input_shape[1] == m.input_shape[2] && !m.layers.empty() &&
      m.layers.back().out_shape.size() == 1) {
    p.model_options.channels = static_cast<int>(m.input_shape[0]);
    p.model_options.resolution = static_cast<int>(m.input_shape[1]);
    p.model_options.classes = static_cast<int>(m.layers.back().out_shape[0]);
  }
  // A transformer's sequence length (its input is [S]): it changes no tensor, so the
  // fingerprint cannot tell a plan made at another length.
  if (m.file.empty() && m.input_shape.size() == 1) p.model_options.seq_len = static_cast<int>(m.input_shape[0]);
  // How its attention runs, a file's as well as a zoo model's (--attention may have set it),
  // where every attention layer runs alike (a file that mixes them keeps its own).
  std::optional<AttentionKernels> kernels;
  bool alike = true;
  for (const Layer& l : m.layers)
    if (l.kind == LayerKind::Attention) {
      if (kernels && *kernels != l.attrs.attention) alike = false;
      kernels = l.attrs.attention;
    }
  if (kernels && alike) p.model_options.attention = kernels;
  p.cluster = cluster;
  p.gpus = gpus;
  p.batch_per_gpu = batch;
  p.compute = compute;
  p.strategy = strategy;
  p.buckets = std::move(buckets);
  return p;
}

namespace {
// This process's standard streams by name: /dev/stdout, /dev/stderr, /dev/fd/N, /proc/self/fd/N.
bool standard_stream(const std::filesystem::path& p) {
  const std::string s = p.lexically_normal().string();
  return s == "/dev/stdout" || s == "/dev/stderr" || s.rfind("/dev/fd/", 0) == 0 || s.rfind("/proc/self/fd/", 0) == 0;
}

struct Pending {
  std::string path, tmp;  // the target (output_target), and its temporary file
  std::string content;    // a direct target's, written at commit
  bool direct = false;
};
struct Staged {
  bool on = false;
  std::vector<Pending> files;
};
Staged& staged() {
  static Staged s;
  return s;
}

void rename_into_place(const std::string& tmp, const std::string& path) {
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw RunError(path + ": rename failed: " + ec.message());
  }
}

void land(const Pending& f) {
  if (f.direct) return write_through(f.path, f.content);
  rename_into_place(f.tmp, f.path);
}
}  // namespace

void write_through(const std::string& target, const std::string& content) {
  // This process's own standard streams through their buffers, so that the text before
  // (and after) stays in order: a file opened again would write at its own offset.
  std::error_code ec;
  const std::string name = std::filesystem::absolute(target, ec).lexically_normal().string();
  for (const auto& [names, stream] : {std::pair{std::array{"/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"}, &std::cout},
                                      std::pair{std::array{"/dev/stderr", "/dev/fd/2", "/proc/self/fd/2"}, &std::cerr}})
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      *stream << content << std::flush;
      if (!*stream) throw RunError(target + ": write failed");
      return;
    }
  std::ofstream out(target, std::ios::binary | std::ios::app);
  if (!out) throw InputError(target + ": cannot write");
  out << content;
  out.flush();
  if (!out) throw RunError(target + ": write failed");
}

OutputTarget output_target(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = path;
  for (int hops = 0; hops < 40 && !standard_stream(p) && fs::is_symlink(p, ec); ++hops) {
    const fs::path to = fs::read_symlink(p, ec);
    if (ec) break;
    p = to.is_absolute() ? to : p.parent_path() / to;
  }
  if (standard_stream(p) || standard_stream(fs::absolute(p, ec))) return {p.string(), true};
  const fs::file_status st = fs::status(p, ec);
  return {p.string(), fs::exists(st) && !fs::is_regular_file(st) && !fs::is_directory(st)};
}

void write_file_atomic(const std::string& path, const std::string& content) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(path + ": is a directory (give a file name)");
  Staged& st = staged();
  const OutputTarget to = output_target(path);
  Pending f{to.path, "", "", to.direct};
  if (to.direct) {
    f.content = content;
    if (!st.on) return land(f);
    // Fails the command now, as a temporary file would, where the target cannot be opened
    // (a FIFO is not opened early: its reader would see the end of the file).
    if (!std::filesystem::is_fifo(to.path, ec) && !standard_stream(to.path) &&
        !std::ofstream(to.path, std::ios::binary | std::ios::app))
      throw InputError(path + ": cannot write");
  } else {
    f.tmp = to.path + ".tmp";
    if (st.on) f.tmp.append(".").append(std::to_string(st.files.size()));
    std::ofstream out(f.tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw InputError(path + ": cannot write (directory missing or not writable)");
    out << content;
    out.flush();
    if (!out) {
      out.close();
      std::remove(f.tmp.c_str());
      throw RunError(path + ": write failed");
    }
    out.close();
    if (!st.on) return land(f);
  }
  for (auto& g : st.files)
    if (!f.direct && g.path == f.path) {  // a file staged again keeps the last content; a direct one gets both
      std::remove(g.tmp.c_str());
      g = std::move(f);
      return;
    }
  st.files.push_back(std::move(f));
}

void stage_outputs(bool on) { staged().on = on; }

void commit_outputs() {
  Staged& st = staged();
  std::vector<Pending> files;
  files.swap(st.files);
  for (size_t i = 0; i < files.size(); ++i) {
    try {
      land(files[i]);
    } catch (...) {
      for (size_t j = i + 1; j < files.size(); ++j)
        if (!files[j].tmp.empty()) std::remove(files[j].tmp.c_str());
      throw;
    }
  }
}

void discard_outputs() {
  Staged& st = staged();
  for (const auto& f : st.files)
    if (!f.tmp.empty()) std::remove(f.tmp.c_str());
  st.files.clear();
}

}  // namespace fuseplan
