// End-to-end: run the fuseplan binary; bad input gives one line naming the flag or file
// and exit code 2, good input gives parseable output and files.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

namespace {
struct Run {
  int code;
  std::string out;
};

Run run(const std::string& args) {
  std::string cmd = std::string(FUSEPLAN_BIN) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string tmp(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "fuseplan-test-cli";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

void expect_bad(const std::string& args, const std::string& text) {
  INFO("fuseplan " << args);
  Run r = run(args);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Catch::Contains(text));
  // One line: the message and nothing else.
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
}
}  // namespace

TEST_CASE("cli: bad flags and names exit 2 with one line naming them") {
  expect_bad("predict --gpus 0", "--gpus: must be >= 1");
  expect_bad("predict --gpus 4096", "do not fit cluster tencent-p40");
  expect_bad("predict --model resnet9", "unknown model 'resnet9'");
  expect_bad("predict --cluster nowhere", "unknown cluster 'nowhere'");
  expect_bad("predict --algorithm butterfly", "unknown algorithm 'butterfly' (valid: auto, ring");
  expect_bad("predict --precision fp8", "--precision: unknown precision 'fp8' (valid: fp32, fp16, bf16)");
  expect_bad("predict --cluster dgx1-v100 --precision bf16", "has no bf16 peak");
  expect_bad("predict --batch-per-gpu 0", "--batch-per-gpu: must be >= 1");
  expect_bad("predict --buckets threshold:lots", "is not a size");
  expect_bad("predict --gpus abc", "--gpus");
  expect_bad("predict --no-such-flag", "no-such-flag");
  expect_bad("collective --algorithm hierarchical --gpus 12 --cluster dgx-a100", "multiple of the group size");
  expect_bad("collective --sizes 1M:1K", "--sizes: MAX must be >= MIN");
  expect_bad("predict --model bert_base --resolution 64", "do not apply to bert_base");
  expect_bad("show alexnet --resolution 28", "output shape");
  expect_bad("predict --model gpt2 --seq-len 0", "--seq-len: must be > 0");
  expect_bad("frobnicate", "frobnicate");
}

TEST_CASE("cli: bad files exit 2 naming the file and JSON path") {
  std::string bad_json = tmp("broken.json");
  write(bad_json, "{\"schema\": \"fuseplan.cluster/1\", ");
  expect_bad("predict --cluster " + bad_json, bad_json + ": malformed JSON");

  std::ifstream in(std::string(FUSEPLAN_CONFIG_DIR) + "/clusters/tencent-p40.json");
  auto c = nlohmann::json::parse(in);
  c["intra_node"]["bw_GBps"] = -10;
  std::string neg = tmp("negative.json");
  write(neg, c.dump());
  expect_bad("predict --cluster " + neg, neg + ": $.intra_node.bw_GBps: must be > 0");
  c["intra_node"]["bw_GBps"] = 10;
  c["intra_node"]["bandwidth"] = 10;
  std::string unk = tmp("unknown-key.json");
  write(unk, c.dump());
  expect_bad("predict --cluster " + unk, "$.intra_node.bandwidth: unknown key");

  expect_bad("predict --plan " + tmp("missing-plan.json"), "cannot open file");
  // A plan for another model.
  std::string plan = tmp("r18.json");
  Run made = run("predict --model resnet18 --gpus 16 --save-plan " + plan);
  REQUIRE(made.code == 0);
  expect_bad("predict --plan " + plan + " --model resnet50", "plan is for model resnet18");
  expect_bad("predict --plan " + plan + " --gpus 32", "disagrees with");
  expect_bad("predict --model resnet50 --plan " + plan + " --buckets single", "exclusive");
  expect_bad("show " + tmp("missing-model.json"), "cannot open file");
}

TEST_CASE("cli: predict defaults run the paper's setup and write a trace and a plan") {
  std::string trace = tmp("trace.json"), plan = tmp("plan.json");
  Run r = run("predict --trace " + trace + " --save-plan " + plan);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("resnet50 on tencent-p40 (1024 GPUs = 128 nodes x 8)"));
  CHECK_THAT(r.out, Catch::Contains("scaling efficiency"));
  std::ifstream t(trace);
  auto j = nlohmann::json::parse(t);
  CHECK(j["traceEvents"].size() > 300);
  // The saved plan predicts the same iteration time when read back.
  Run again = run("predict --plan " + plan + " --json");
  REQUIRE(again.code == 0);
  auto rep = nlohmann::json::parse(again.out);
  std::ifstream pf(plan);
  auto pj = nlohmann::json::parse(pf);
  CHECK(rep["iteration_s"].get<double>() == Approx(pj["prediction"]["iteration_s"].get<double>()));
  CHECK(rep["gpus"] == 1024);
  CHECK(rep["buckets"].size() == pj["buckets"].size());
}

TEST_CASE("cli: models, show, clusters and collective print what users expect") {
  Run m = run("models --json");
  REQUIRE(m.code == 0);
  auto models = nlohmann::json::parse(m.out);
  CHECK(models.size() == 12);
  Run s = run("show resnet50");
  REQUIRE(s.code == 0);
  CHECK_THAT(s.out, Catch::Contains("25,557,032 parameters"));
  CHECK_THAT(s.out, Catch::Contains("layer4.2.bn3.bias"));
  std::string exported = tmp("r18-model.json");
  REQUIRE(run("show resnet18 --export " + exported).code == 0);
  Run imported = run("predict --model " + exported + " --gpus 8 --cluster dgx-a100 --json");
  REQUIRE(imported.code == 0);
  CHECK(nlohmann::json::parse(imported.out)["model"] == "resnet18");
  Run cl = run("clusters");
  REQUIRE(cl.code == 0);
  CHECK_THAT(cl.out, Catch::Contains("tencent-p40"));
  Run co = run("collective --algorithm ring --gpus 8 --sizes 8:1G --json");
  REQUIRE(co.code == 0);
  auto rows = nlohmann::json::parse(co.out)["rows"];
  CHECK(rows.size() == 28);  // 8 B .. 1 GiB in x2 steps
  // busbw approaches the slowest link of the ring at large sizes (PCIe 10 GB/s here).
  CHECK(rows.back()["busbw_GBps"].get<double>() > 9.0);
  CHECK(rows.back()["busbw_GBps"].get<double>() < 10.0);
  Run help = run("predict --help");
  CHECK(help.code == 0);
  CHECK_THAT(help.out, Catch::Contains("--batch-per-gpu"));
}
