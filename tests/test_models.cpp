// Model zoo totals pinned to the reference frameworks, builder shapes, model JSON.
#include <catch2/catch.hpp>

#include "fuseplan/models/builder.hpp"
#include "fuseplan/models/error.hpp"
#include "fuseplan/models/model_json.hpp"
#include "fuseplan/models/zoo.hpp"
#include "frozen_model.hpp"

using namespace fuseplan;

namespace {
double macs_of_matmuls(const Model& m) {
  double macs = 0;
  for (const auto& l : m.layers) {
    if (l.kind != LayerKind::Conv2d && l.kind != LayerKind::Linear) continue;
    double bias = l.attrs.bias ? double(numel(l.out_shape)) : 0;
    macs += (l.fwd_flops - bias) / 2;
  }
  return macs;
}
}  // namespace

TEST_CASE("reference totals: parameters and tensor counts match torchvision and Hugging Face") {
  struct Ref {
    const char* name;
    int64_t params;
    size_t tensors;
  };
  // torchvision / transformers state_dict parameter totals (buffers excluded).
  const Ref refs[] = {{"resnet50", 25557032, 161}, {"alexnet", 61100840, 16}, {"vgg16", 138357544, 32},
                      {"resnet18", 11689512, 62},  {"resnet34", 21797672, 110}, {"resnet101", 44549160, 314},
                      {"resnet152", 60192808, 467}, {"bert_base", 109482240, 199}, {"bert_large", 335141888, 391},
                      {"gpt2", 124439808, 148},    {"gpt2_xl", 1557611200, 580},
                      {"bert_base_pretraining", 110106428, 206}, {"bert_large_pretraining", 336226108, 398}};
  for (const auto& r : refs) {
    INFO(r.name);
    Model m = build_zoo_model(r.name);
    CHECK(m.param_count() == r.params);
    CHECK(m.tensors.size() == r.tensors);
  }
}

TEST_CASE("BERT's pre-training heads: the masked-LM head scores the masked positions through the tied decoder") {
  const Model base = build_zoo_model("bert_large");
  for (int64_t seq : {128, 512}) {
    INFO(seq);
    ModelOptions o;
    o.seq_len = seq;
    const Model m = build_zoo_model("bert_large_pretraining", o);
    const int64_t masked = seq == 128 ? 20 : 80;  // max_predictions_per_seq of Google's and NVIDIA's data
    const auto layer = [&](const std::string& name) -> const Layer& {
      for (const auto& l : m.layers)
        if (l.name == name) return l;
      FAIL("no layer " << name);
      return m.layers.front();
    };
    CHECK(layer("cls.predictions.masked_positions").out_shape == Shape{masked, 1024});
    const Layer& decoder = layer("cls.predictions.decoder");
    CHECK(decoder.out_shape == Shape{masked, 30522});
    CHECK(decoder.fwd_flops == Approx(2.0 * masked * 1024 * 30522 + masked * 30522));
    // Tied to the word embeddings: its only tensor is the head's bias.
    REQUIRE(decoder.tensor_count == 1);
    CHECK(m.tensors[size_t(decoder.first_tensor)].name == "cls.predictions.bias");
    CHECK(layer("cls.seq_relationship").out_shape == Shape{2});
    CHECK(m.tensors.front().name == "bert.embeddings.word_embeddings.weight");
    // The body is bert_large's, renamed under "bert.".
    CHECK(m.param_count() - base.param_count() == 1024 * 1024 + 1024 + 2 * 1024 + 30522 + 2 * 1024 + 2);
  }
}

TEST_CASE("resnet50 costs about 4.1 GMACs forward at 224x224") {
  Model m = build_zoo_model("resnet50");
  double gmacs = macs_of_matmuls(m) / 1e9;
  CHECK(gmacs == Approx(4.09).margin(0.03));  // torchvision/fvcore: 4.09 GMACs
  CHECK(m.layers.back().out_shape == Shape{1000});
}

TEST_CASE("tensor names and order follow the frameworks") {
  Model r = build_zoo_model("resnet50");
  CHECK(r.tensors.front().name == "conv1.weight");
  CHECK(r.tensors[1].name == "bn1.weight");
  CHECK(r.tensors[6].name == "layer1.0.conv2.weight");  // conv1, bn1.w/b, l1.0.conv1, bn1.w/b
  CHECK(r.tensors[3].name == "layer1.0.conv1.weight");
  CHECK(r.tensors.back().name == "fc.bias");
  // Bottleneck registration order: conv1 bn1 conv2 bn2 conv3 bn3 downsample.0 downsample.1.
  auto idx = [&](const std::string& n) {
    for (size_t i = 0; i < r.tensors.size(); ++i)
      if (r.tensors[i].name == n) return static_cast<int>(i);
    return -1;
  };
  CHECK(idx("layer1.0.bn3.bias") + 1 == idx("layer1.0.downsample.0.weight"));
  CHECK(idx("layer2.0.downsample.1.bias") + 1 == idx("layer2.1.conv1.weight"));
  CHECK(r.tensors[idx("layer4.2.conv3.weight")].shape == Shape{2048, 512, 1, 1});

  Model a = build_zoo_model("alexnet");
  CHECK(a.tensors[0].name == "features.0.weight");
  CHECK(a.tensors[10].name == "classifier.1.weight");
  CHECK(a.tensors[10].shape == Shape{4096, 9216});

  Model b = build_zoo_model("bert_base");
  CHECK(b.tensors[0].name == "embeddings.word_embeddings.weight");
  CHECK(b.tensors[5].name == "encoder.layer.0.attention.self.query.weight");
  CHECK(b.tensors.back().name == "pooler.dense.bias");

  Model g = build_zoo_model("gpt2");
  CHECK(g.tensors[0].name == "wte.weight");
  CHECK(g.tensors[4].name == "h.0.attn.c_attn.weight");
  CHECK(g.tensors[4].shape == Shape{768, 2304});  // Conv1D stores [in, out]
  CHECK(g.tensors.back().name == "ln_f.bias");
}

TEST_CASE("alexnet_bn puts BatchNorm after conv1-5, pool5, fc6 and fc7") {
  Model m = build_zoo_model("alexnet_bn");
  std::vector<std::string> bn_after;
  for (size_t i = 1; i < m.layers.size(); ++i)
    if (m.layers[i].kind == LayerKind::BatchNorm) bn_after.push_back(m.layers[m.layers[i].inputs[0]].name);
  CHECK(bn_after == std::vector<std::string>{"conv1", "conv2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7"});
  CHECK(m.tensors.size() == 25);
  // Convolutions and fc6/fc7 feed a BN and carry no bias; fc8 has one.
  for (const auto& t : m.tensors)
    if (t.role == TensorRole::Bias) CHECK(t.name == "fc8.bias");
  CHECK(m.input_shape == Shape{3, 227, 227});
}

TEST_CASE("model options change shapes, and impossible shapes are refused") {
  ModelOptions o;
  o.resolution = 32;
  o.classes = 10;
  o.channels = 1;
  Model r = build_zoo_model("resnet18", o);
  CHECK(r.tensors.front().shape == Shape{64, 1, 7, 7});
  CHECK(r.tensors.back().shape == Shape{10});
  ModelOptions tiny;
  tiny.resolution = 28;
  CHECK_THROWS_AS(build_zoo_model("alexnet", tiny), InputError);
  ModelOptions seq;
  seq.seq_len = 4096;
  CHECK_THROWS_WITH(build_zoo_model("gpt2", seq), Catch::Contains("exceeds the position table"));
  CHECK_THROWS_WITH(build_zoo_model("resnet9"), Catch::Contains("zoo: alexnet"));
  CHECK_THROWS_AS(build_zoo_model("bert_base", o), InputError);
  ModelOptions short_seq;
  short_seq.seq_len = 64;
  CHECK(build_zoo_model("bert_base", short_seq).param_count() == 109482240);  // positions table stays 512
}

TEST_CASE("FLOPs: backward is about twice forward for matmul layers, the first conv skips its input gradient") {
  Model m = build_zoo_model("resnet50");
  const Layer& first = m.layers[0];
  CHECK(first.bwd_flops == Approx(first.fwd_flops));
  const Layer& fc = m.layers.back();
  CHECK(fc.bwd_flops == Approx(2 * fc.fwd_flops));
  CHECK(m.bwd_flops() / m.fwd_flops() == Approx(2.0).margin(0.1));
}

TEST_CASE("model JSON round-trips and rejects bad files") {
  for (const auto& name : {"resnet50", "bert_base", "alexnet_bn"}) {
    Model m = build_zoo_model(name);
    Model back = model_from_json(model_to_json(m), "mem");
    CHECK(back.fingerprint() == m.fingerprint());
    CHECK(back.param_count() == m.param_count());
    CHECK(back.fwd_flops() == Approx(m.fwd_flops()));
    CHECK(back.layers.size() == m.layers.size());
    CHECK(back.layers[3].attrs == m.layers[3].attrs);
  }
  nlohmann::json j = model_to_json(build_zoo_model("resnet18"));
  auto bad = j;
  bad["layers"][0]["colour"] = "red";
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("x.json: $.layers[0].colour: unknown key"));
  bad = j;
  bad["layers"][1]["kind"] = "conv3d";
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("unknown layer kind 'conv3d'"));
  bad = j;
  bad["layers"][0]["fwd_flops"] = -1;
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("$.layers[0].fwd_flops: must be >= 0"));
  bad = j;
  bad["layers"][1]["params"] = j["layers"][0]["params"];
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("duplicate tensor name"));
  bad = j;
  bad["schema"] = "fuseplan.model/9";
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("unsupported schema"));
  bad = j;
  bad["layers"][2]["measured"] = {{"fwd_us", 10}, {"bwd_us", 20}, {"batch", 0}};
  CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains("measured.batch"));
}

TEST_CASE("model files: FLOPs and shapes left out are derived as the zoo derives them") {
  for (const auto& name : {"resnet18", "bert_base", "alexnet_bn"}) {
    const Model zoo = build_zoo_model(name);
    nlohmann::json j = model_to_json(zoo);
    for (auto& l : j["layers"]) {
      for (const char* key : {"fwd_flops", "bwd_flops", "in_shape", "activation_elems"}) l.erase(key);
      if (l["kind"] != "adaptive_avgpool") l.erase("out_shape");
    }
    const Model back = model_from_json(j, "bare.json");
    REQUIRE(back.layers.size() == zoo.layers.size());
    for (size_t i = 0; i < zoo.layers.size(); ++i) {
      CHECK(back.layers[i].out_shape == zoo.layers[i].out_shape);
      CHECK(back.layers[i].fwd_flops == zoo.layers[i].fwd_flops);
      CHECK(back.layers[i].bwd_flops == zoo.layers[i].bwd_flops);
      CHECK(back.layers[i].activation_elems == zoo.layers[i].activation_elems);
    }
    CHECK(back.fingerprint() == zoo.fingerprint());
  }
}

TEST_CASE("model files: shapes and FLOPs that disagree with the layer kind are refused, naming the layer") {
  const nlohmann::json j = model_to_json(build_zoo_model("resnet18"));
  REQUIRE(j["layers"][4]["name"] == "layer1.0.conv1");
  auto refused = [&](auto&& edit, const std::string& says) {
    nlohmann::json bad = j;
    edit(bad["layers"]);
    CHECK_THROWS_WITH(model_from_json(bad, "x.json"), Catch::Contains(says));
  };
  refused([](auto& l) { l[4]["params"][0]["shape"] = {64, 32, 3, 3}; },
          "x.json: $.layers[4] (layer1.0.conv1, conv2d): layer1.0.conv1.weight has shape 64x32x3x3; input 64x56x56 "
          "with groups 1 calls for 64x64x3x3");
  refused([](auto& l) { l[4]["out_shape"] = {64, 28, 28}; },
          "$.layers[4] (layer1.0.conv1, conv2d): out_shape 64x28x28 is not what a conv2d of 64x56x56 gives, 64x56x56");
  refused([](auto& l) { l[4]["fwd_flops"] = 1; },
          "$.layers[4] (layer1.0.conv1, conv2d): fwd_flops 1 is not what the kind and shapes give, 2.31211e+08");
  refused([](auto& l) { l[2]["params"] = {{{"name", "relu.weight"}, {"shape", {64}}}}; },
          "$.layers[2] (relu, relu): has 1 parameter tensor; a layer of this kind has none");
  refused([](auto& l) { l[5]["in_shape"] = {64, 28, 28}; },
          "$.layers[5] (layer1.0.bn1, batchnorm): in_shape 64x28x28 is not what its input (layer layer1.0.conv1) gives, 64x56x56");
  refused([](auto& l) { l[5]["params"][0]["shape"] = {32}; }, "layer1.0.bn1.weight has shape 32; input 64x56x56 calls for 64");
  refused([](auto& l) { l.back()["params"][0]["shape"] = {1000, 256}; }, "(fc, linear): fc.weight has shape 1000x256");
  refused([](auto& l) { l[9]["inputs"] = {8}; }, "(layer1.0.add, add): has 1 inputs; a layer of this kind takes 2");
  refused([](auto& l) { l[0]["kind"] = "custom"; l[0].erase("fwd_flops"); }, "a custom layer needs fwd_flops and bwd_flops");
  // Within 1 % (rounding in another tool) is accepted.
  nlohmann::json close = j;
  close["layers"][4]["fwd_flops"] = close["layers"][4]["fwd_flops"].get<double>() * 1.005;
  CHECK_NOTHROW(model_from_json(close, "x.json"));
}

TEST_CASE("model files: a linear layer reading a tied weight may keep a bias of its own, as BERT's decoder does") {
  // gpt2's lm_head reads the token embedding's table; give it a bias of its own.
  const Model zoo = build_zoo_model("gpt2");
  nlohmann::json j = model_to_json(zoo);
  auto& head = j["layers"].back();
  REQUIRE(head["name"] == "lm_head");
  REQUIRE(head["params"].empty());
  const int64_t vocab = head["out_shape"].back().get<int64_t>();
  head["params"] = {{{"name", "lm_head.bias"}, {"shape", {vocab}}, {"role", "bias"}}};
  for (const char* key : {"fwd_flops", "bwd_flops"}) head.erase(key);
  const Model back = model_from_json(j, "tied.json");
  const Layer& l = back.layers.back();
  REQUIRE(l.tensor_count == 1);
  CHECK(back.tensors[l.first_tensor].name == "lm_head.bias");
  CHECK(back.tensors[l.first_tensor].role == TensorRole::Bias);
  CHECK(back.tensors.size() == zoo.tensors.size() + 1);
  // The FLOPs of the tied product plus the bias add.
  CHECK(l.fwd_flops == zoo.layers.back().fwd_flops + double(numel(l.out_shape)));
  // A bias of the wrong width, or a lone tensor that is no bias, is refused naming it.
  head["params"][0]["shape"] = {vocab - 1};
  CHECK_THROWS_WITH(model_from_json(j, "tied.json"),
                    Catch::Contains("(lm_head, linear): lm_head.bias has shape " + std::to_string(vocab - 1) +
                                    "; a bias of " + std::to_string(vocab) + " outputs calls for " +
                                    std::to_string(vocab)));
  head["params"][0]["shape"] = {vocab};
  head["params"][0]["role"] = "weight";
  CHECK_THROWS_WITH(model_from_json(j, "tied.json"), Catch::Contains("lm_head.bias has shape"));
}

TEST_CASE("model files: frozen parameters are held apart, and only the backward autograd still runs is priced") {
  const Model zoo = build_zoo_model("resnet18");
  const auto [j, frozen] = resnet18_frozen_to_layer4();
  const Model m = model_from_json(j, "frozen.json");
  REQUIRE(m.frozen.size() == frozen);
  CHECK(m.tensors.size() + m.frozen.size() == zoo.tensors.size());
  CHECK(m.param_count() + m.frozen_count() == zoo.param_count());
  for (const auto& t : m.tensors) CHECK((t.name.rfind("layer4", 0) == 0 || t.name.rfind("fc.", 0) == 0));
  auto layer = [&](const std::string& name) -> const Layer& {
    for (const auto& l : m.layers)
      if (l.name == name) return l;
    FAIL("no layer " << name);
    return m.layers.front();
  };
  CHECK(layer("conv1").backward_share == 0);           // frozen, and nothing upstream trains
  CHECK(layer("maxpool").backward_share == 0);
  CHECK(layer("layer3.1.conv2").backward_share == 0);
  CHECK(layer("layer4.0.conv1").backward_share == 0.5);  // its weights' gradient, not its input's
  CHECK(layer("layer4.0.downsample.0").backward_share == 0.5);
  CHECK(layer("layer4.0.bn1").backward_share == 1);      // a layer upstream trains: its input's gradient too
  CHECK(layer("layer4.0.relu_1").backward_share == 1);
  CHECK(layer("fc").backward_share == 1);
  CHECK(layer("conv1").frozen_elems == 64 * 3 * 7 * 7);
  CHECK(layer("layer4.0.conv1").tensor_count == 1);
  CHECK(m.fwd_flops() == zoo.fwd_flops());
  CHECK(m.bwd_flops() < 0.3 * zoo.bwd_flops());
  // The fingerprint covers the trained tensors, the ones a plan buckets.
  Model trained_only = zoo;
  trained_only.tensors = m.tensors;
  CHECK(m.fingerprint() == trained_only.fingerprint());
  CHECK(m.fingerprint() != zoo.fingerprint());
  // Written back as read: frozen parameters in their places, FLOPs as if all trained.
  CHECK(model_to_json(m) == j);
}

TEST_CASE("model files: a model whose every parameter is frozen is refused, as nothing would be allreduced") {
  nlohmann::json j = model_to_json(build_zoo_model("resnet18"));
  for (auto& l : j["layers"])
    for (auto& p : l["params"]) p["frozen"] = true;
  CHECK_THROWS_WITH(model_from_json(j, "all.json"),
                    "all.json: $.layers: every parameter tensor is frozen; nothing trains, so no gradient is "
                    "allreduced (leave one tensor's frozen out)");
  j["layers"][1]["params"][0]["frozen"] = "yes";
  CHECK_THROWS_WITH(model_from_json(j, "all.json"), Catch::Contains("$.layers[1].params[0].frozen"));
}

TEST_CASE("model files: a model of several inputs names them, and its layers read them as -2, -3, ...") {
  // bert_base's three embeddings all read the token ids; give token types an input of their own.
  const Model zoo = build_zoo_model("bert_base");
  nlohmann::json j = model_to_json(zoo);
  j["extra_inputs"] = {{{"name", "attention_mask"}, {"shape", {128}}}, {{"name", "token_type_ids"}, {"shape", {128}}}};
  nlohmann::json* types = nullptr;
  for (auto& l : j["layers"])
    if (l["name"] == "embeddings.token_type_embeddings") types = &l;
  REQUIRE(types != nullptr);
  (*types)["inputs"] = {-3};
  const Model m = model_from_json(j, "bert.json");
  REQUIRE(m.extra_inputs.size() == 2);
  CHECK(m.extra_inputs[1] == ModelInput{"token_type_ids", {128}});
  CHECK(m.input_shape_of(-3) == Shape{128});
  CHECK(m.fwd_flops() == zoo.fwd_flops());
  CHECK(m.fingerprint() == zoo.fingerprint());  // the tensors'; inputs are not in it
  CHECK(model_to_json(m) == j);                  // written back as read
  CHECK_THROWS_WITH(m.input_shape_of(-4), "model bert_base: no model input -4 (it has 3: -1 to -3)");
  // What the inputs give is checked like any producer's output.
  auto refused = [&](auto change, const std::string& what) {
    nlohmann::json bad = j;
    change(bad);
    CHECK_THROWS_WITH(model_from_json(bad, "bert.json"), Catch::Contains(what));
  };
  refused([](auto& b) { b["extra_inputs"][1]["shape"] = {127}; },
          "(embeddings.token_type_embeddings, embedding): in_shape 128 is not what its input (model input "
          "token_type_ids) gives, 127");
  refused([&](auto& b) { b["layers"][2]["inputs"] = {-4}; }, "$.layers[2].inputs[0]: expected an integer >= -3");
  refused([](auto& b) { b["extra_inputs"][1]["name"] = "attention_mask"; },
          "bert.json: $.extra_inputs[1].name: duplicate input name 'attention_mask'");
  refused([](auto& b) { b["extra_inputs"][0]["name"] = ""; }, "$.extra_inputs[0].name: must not be empty");
  refused([](auto& b) { b["extra_inputs"][0]["dtype"] = "long"; }, "$.extra_inputs[0].dtype: unknown key");
  // Without extra inputs, -2 is no input.
  nlohmann::json one = model_to_json(zoo);
  one["layers"][2]["inputs"] = {-2};
  CHECK_THROWS_WITH(model_from_json(one, "bert.json"), Catch::Contains("expected an integer >= -1"));
}

TEST_CASE("model files: a layer reading no layer (PyTorch's embeddings of a constant) has no input gradient") {
  // A custom layer of its own table, reading nothing, added to the token embeddings: with the
  // token embeddings frozen, its backward is all its weights' (inputs [] reads no layer).
  nlohmann::json j = nlohmann::json::parse(R"({"schema": "fuseplan.model/1", "name": "pos", "input_shape": [8],
    "layers": [
      {"name": "tok", "kind": "embedding", "inputs": [-1], "out_shape": [8, 4],
       "params": [{"name": "tok.weight", "shape": [16, 4], "role": "embedding", "frozen": true}]},
      {"name": "pos", "kind": "custom", "inputs": [], "out_shape": [8, 4], "fwd_flops": 32, "bwd_flops": 32,
       "params": [{"name": "pos.weight", "shape": [8, 4]}]},
      {"name": "add", "kind": "add", "inputs": [0, 1], "params": []},
      {"name": "fc", "kind": "linear", "params": [{"name": "fc.weight", "shape": [2, 4]}]}]})");
  const Model m = model_from_json(j, "pos.json");
  CHECK(m.layers[1].inputs.empty());
  CHECK(m.layers[0].backward_share == 0);
  CHECK(m.layers[1].backward_share == 1);
  CHECK(m.tensors.size() == 2);
}

TEST_CASE("rectangular convolutions: Inception's 1x7 and 7x1 are conv2d with their own FLOPs and weights") {
  ModelBuilder b("rect", {128, 17, 17});
  const int a = b.conv("b7_2", ModelBuilder::kInput, 128, {1, 7}, {1, 1}, {0, 3}, false);
  const int c = b.conv("b7_3", a, 192, {7, 1}, {1, 1}, {3, 0}, false);
  b.conv("squeeze", c, 64, {3, 5}, {2, 1}, {0, 0}, true);
  const Model m = b.finish();
  CHECK(m.layers[0].out_shape == Shape{128, 17, 17});
  CHECK(m.layers[0].fwd_flops == 2.0 * 128 * 17 * 17 * 128 * 1 * 7);
  CHECK(m.layers[1].fwd_flops == 2.0 * 192 * 17 * 17 * 128 * 7 * 1);
  CHECK(m.tensors[0].shape == Shape{128, 128, 1, 7});
  CHECK(m.tensors[1].shape == Shape{192, 128, 7, 1});
  CHECK(m.layers[2].out_shape == Shape{64, 8, 13});  // (17 - 3) / 2 + 1 high, 17 - 5 + 1 wide
  CHECK(m.layers[0].attrs.kernel_width() == 7);
  CHECK_FALSE(m.layers[0].attrs.square());
  // A square window built through the rectangular call is stored as square.
  ModelBuilder sq("sq", {3, 8, 8});
  sq.conv("c", ModelBuilder::kInput, 4, {3, 3}, {1, 1}, {1, 1}, false);
  CHECK(sq.finish().layers[0].attrs == build_zoo_model("resnet18").layers[4].attrs);

  // JSON: [height, width] where the sides differ, round-tripped and rebuilt from the weights.
  nlohmann::json j = model_to_json(m);
  CHECK(j["layers"][0]["attrs"]["kernel"] == nlohmann::json({1, 7}));
  CHECK(j["layers"][0]["attrs"]["padding"] == nlohmann::json({0, 3}));
  CHECK_FALSE(j["layers"][0]["attrs"].contains("stride"));
  CHECK(j["layers"][2]["attrs"]["stride"] == nlohmann::json({2, 1}));
  const Model back = model_from_json(j, "rect.json");
  for (size_t i = 0; i < m.layers.size(); ++i) {
    CHECK(back.layers[i].attrs == m.layers[i].attrs);
    CHECK(back.layers[i].out_shape == m.layers[i].out_shape);
    CHECK(back.layers[i].fwd_flops == m.layers[i].fwd_flops);
  }
  auto refused = [&](auto&& edit, const std::string& says) {
    nlohmann::json bad = j;
    edit(bad["layers"]);
    CHECK_THROWS_WITH(model_from_json(bad, "rect.json"), Catch::Contains(says));
  };
  refused([](auto& l) { l[0]["attrs"]["kernel"] = {7, 1}; },
          "(b7_2, conv2d): attrs.kernel 7x1 disagrees with the weight");
  refused([](auto& l) { l[0]["attrs"]["kernel"] = {1, 7, 3}; },
          "$.layers[0].attrs.kernel: must be an integer in [1, 1048576], or [height, width] of two such");
  refused([](auto& l) { l[0]["attrs"]["padding"] = {0, -3}; }, "$.layers[0].attrs.padding: must be an integer in [0,");
  refused([](auto& l) { l[0]["out_shape"] = {128, 17, 11}; },
          "out_shape 128x17x11 is not what a conv2d of 128x17x17 gives");
  nlohmann::json pool = model_to_json(build_zoo_model("resnet18"));
  REQUIRE(pool["layers"][3]["kind"] == "maxpool");
  pool["layers"][3]["attrs"]["kernel"] = {3, 1};
  CHECK_THROWS_WITH(model_from_json(pool, "p.json"), Catch::Contains("(maxpool, maxpool): a pooling window is square"));
}

TEST_CASE("dilated convolutions: DeepLab's atrous 3x3 keeps its FLOPs and widens its window") {
  ModelBuilder b("atrous", {256, 33, 33});
  b.conv("aspp", ModelBuilder::kInput, 256, {3, 3}, {1, 1}, {12, 12}, false, 1, {12, 12});
  b.conv("strided", 0, 64, {3, 3}, {2, 2}, {2, 2}, false, 1, {2, 2});
  const Model m = b.finish();
  CHECK(m.layers[0].out_shape == Shape{256, 33, 33});  // 33 + 24 - 12 x 2 - 1 + 1
  CHECK(m.layers[0].fwd_flops == 2.0 * 256 * 33 * 33 * 256 * 9);
  CHECK(m.layers[1].out_shape == Shape{64, 17, 17});  // (33 + 4 - 2 x 2 - 1) / 2 + 1, as torch gives
  CHECK(m.layers[0].attrs.dilated());
  CHECK(m.layers[0].attrs.square());
  nlohmann::json j = model_to_json(m);
  CHECK(j["layers"][0]["attrs"]["dilation"] == 12);
  const Model back = model_from_json(j, "atrous.json");
  CHECK(back.layers[0].attrs == m.layers[0].attrs);
  CHECK(back.layers[1].out_shape == m.layers[1].out_shape);
  j["layers"][0]["attrs"]["dilation"] = 0;
  CHECK_THROWS_WITH(model_from_json(j, "atrous.json"),
                    Catch::Contains("$.layers[0].attrs.dilation: must be an integer in [1,"));
}

TEST_CASE("errors name fields, not flags: what() prints them bare, render() spells them as a program does") {
  // A library call's refusal names the input by its field.
  try {
    ModelOptions o;
    o.resolution = 0;
    build_zoo_model("resnet50", o);
    FAIL("resolution 0 was accepted");
  } catch (const InputError& e) {
    CHECK(std::string(e.what()) == "model.resolution: must be in [1, 8192] (got 0)");
    const auto angled = [](std::string_view f) {
      std::string s(1, '<');
      s.append(f).push_back('>');
      return s;
    };
    CHECK(e.render(angled) == "<model.resolution>: must be in [1, 8192] (got 0)");
  }
  // Several names in one message; text around them, braces and dashes in values untouched.
  const std::string text = field("tuner.segments") + " {x} --y /a/{b}: use " + field("tuner.strategy") + " optimal";
  CHECK(bare_fields(text) == "tuner.segments {x} --y /a/{b}: use tuner.strategy optimal");
  const auto dashed = [](std::string_view f) {
    std::string s("--");
    s.append(f.substr(f.rfind('.') + 1));
    return s;
  };
  CHECK(render_fields(text, dashed) == "--segments {x} --y /a/{b}: use --strategy optimal");
  // An unmatched marker is kept as it is.
  CHECK(bare_fields("a \x1f" "b") == "a \x1f" "b");
  // The marked text travels (another process, a warning) and renders the same there.
  const InputError e(text);
  CHECK(InputError(e.text()).render([](std::string_view f) { return std::string(f); }) == e.what());
}

TEST_CASE("profiles: the whole pass beside the layers is read and checked") {
  Model m = build_zoo_model("resnet18");
  nlohmann::json layers = nlohmann::json::array();
  for (const auto& l : m.layers) layers.push_back({{"name", l.name}, {"fwd_us", 2.0}, {"bwd_us", 3.0}, {"batch", 8}});
  const nlohmann::json plain = {{"schema", "fuseplan.profile/1"}, {"model", m.name},
                                {"fingerprint", m.fingerprint_hex()}, {"device", "cpu"}, {"precision", "fp32"},
                                {"batch", 8}, {"layers", layers}};
  CHECK_FALSE(apply_profile_json(m, plain, "p.json").whole_pass);
  nlohmann::json j = plain;
  j["whole_pass"] = {{"forward_us", 150.0}, {"backward_us", 260.0}, {"fitted", true},
                     {"layers_forward_us", 120.0}, {"layers_backward_us", 300.0}};
  const ProfileInfo info = apply_profile_json(m, j, "p.json");
  REQUIRE(info.whole_pass);
  CHECK(info.whole_pass->fitted);
  CHECK(info.whole_pass->forward_us == 150.0);
  CHECK(info.whole_pass->layers_backward_us == 300.0);
  CHECK(m.layers[0].measured->bwd_us == 3.0);  // the layer times are used as written
  auto bad = j;
  bad["whole_pass"]["forward_us"] = -1;
  CHECK_THROWS_WITH(apply_profile_json(m, bad, "p.json"),
                    Catch::Contains("p.json: $.whole_pass.forward_us: must be >= 0"));
  bad = j;
  bad["whole_pass"].erase("layers_forward_us");
  CHECK_THROWS_WITH(apply_profile_json(m, bad, "p.json"), Catch::Contains("$.whole_pass.layers_forward_us"));
  bad = j;
  bad["whole_pass"]["fitted"] = false;  // the sums as timed come only with fitted layers
  CHECK_THROWS_WITH(apply_profile_json(m, bad, "p.json"),
                    Catch::Contains("$.whole_pass.layers_backward_us: unknown key"));
  bad = plain;
  bad["whole_pass"] = {{"forward_us", 1.0}, {"backward_us", 2.0}};
  CHECK_THROWS_WITH(apply_profile_json(m, bad, "p.json"), Catch::Contains("$.whole_pass.fitted"));
}
