// End-to-end: run the fuseplan binary; bad input gives one line naming the flag or file
// and exit code 2, good input gives parseable output and files.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

namespace {
struct Run {
  int code;
  std::string out;
};

Run run_env(const std::string& env, const std::string& args, bool with_stderr = true,
            const std::string& bin = FUSEPLAN_BIN) {
  std::string cmd = env + " " + bin + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// Progress lines off (a run past 10 s on a slow machine would print them); the progress
// tests set it themselves.
Run run(const std::string& args) { return run_env("FUSEPLAN_PROGRESS=0", args); }
// Standard output only (sanitizer builds warn about SimGrid's stack switches on stderr).
Run run_stdout(const std::string& args) { return run_env("FUSEPLAN_PROGRESS=0", args, false); }

std::string tmp(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "fuseplan-test-cli";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}

void write(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

Run run_exec(const std::string& args) { return run_env("FUSEPLAN_PROGRESS=0", args, true, FUSEPLAN_EXEC_BIN); }

// The JSON a command prints, which must succeed.
nlohmann::json json_of(const std::string& args) {
  INFO("fuseplan " << args);
  Run r = run(args);
  REQUIRE(r.code == 0);
  return nlohmann::json::parse(r.out);
}

// `fuseplan tune ARGS --json --out PLAN`, whose plan `predict --plan` prices as tune did
// (the same iteration to 1e-12); the plan file as written.
nlohmann::json tuned_plan(const std::string& tune_args, const std::string& plan) {
  const auto tuned = json_of("tune " + tune_args + " --json --out " + plan);
  const auto again = json_of("predict --json --plan " + plan);
  CHECK(again["iteration_s"].get<double>() == Approx(tuned["report"]["iteration_s"].get<double>()).epsilon(1e-12));
  std::ifstream pf(plan);
  return nlohmann::json::parse(pf);
}

void expect_bad(const std::string& args, const std::string& text, bool exec = false) {
  INFO((exec ? "fuseplan-exec " : "fuseplan ") << args);
  Run r = exec ? run_exec(args) : run(args);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Catch::Contains(text));
  // One line: the message and nothing else.
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
}
}  // namespace

TEST_CASE("cli: bad flags and names exit 2 with one line naming them") {
  expect_bad("predict --gpus 0", "--gpus: must be in [1, 1048576] (got 0)");
  expect_bad("predict --cluster local-cpu --gpus 4", "no inter-node network to join them");
  expect_bad("export --to fsdp --plan x.json", "--to: unknown framework 'fsdp' (valid: ddp, horovod, deepspeed)");
  expect_bad("export --to ddp --plan /nonexistent/plan.json", "/nonexistent/plan.json: cannot open (No such file or directory)");
  expect_bad("predict --model resnet9", "unknown model 'resnet9'");
  // An endless input is refused past 256 MiB instead of filling memory.
  expect_bad("predict --cluster /dev/zero", "/dev/zero: more than 268435456 bytes (not a file this reads");
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
  expect_bad("predict --model gpt2 --seq-len 0", "--seq-len: must be in [1, 131072] (got 0)");
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
  expect_bad("predict --cluster " + neg, neg + ": $.intra_node.bw_GBps: must be in [0.001, 1e+06] GB/s (got -10)");
  c["intra_node"]["bw_GBps"] = 10;
  c["intra_node"]["bandwidth"] = 10;
  std::string unk = tmp("unknown-key.json");
  write(unk, c.dump());
  expect_bad("predict --cluster " + unk, "$.intra_node.bandwidth: unknown key");

  expect_bad("predict --plan " + tmp("missing-plan.json"), "cannot open (No such file or directory)");
  // A plan for another model.
  std::string plan = tmp("r18.json");
  Run made = run("predict --model resnet18 --gpus 16 --out " + plan);
  REQUIRE(made.code == 0);
  expect_bad("predict --plan " + plan + " --model resnet50", "plan is for model resnet18");
  expect_bad("predict --plan " + plan + " --gpus 32", "disagrees with");
  expect_bad("predict --model resnet50 --plan " + plan + " --buckets single", "exclusive");
  expect_bad("show " + tmp("missing-model.json"), "cannot open (No such file");
}

TEST_CASE("cli: predict --pack and --cycle-time price the fusion buffer copy and the background cycle of Horovod") {
  const std::string setup = "predict --model resnet50 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 "
                            "--precision fp32 --buckets threshold:64MiB --algorithm ring --json";
  const auto a = json_of(setup), b = json_of(setup + " --pack");
  REQUIRE(a["buckets"].size() == b["buckets"].size());
  REQUIRE(a["buckets"].size() > 1);
  // P100: 732 GB/s at memory_efficiency 0.75; a copy reads and writes every byte once.
  const double bytes_per_s = 732e9 * 0.75;
  for (size_t i = 0; i < a["buckets"].size(); ++i) {
    const double bytes = a["buckets"][i]["bytes"].get<double>();
    const bool fused = a["buckets"][i]["end"].get<int>() - a["buckets"][i]["begin"].get<int>() > 1;
    INFO("bucket " << i);
    // Ready with its gradients; its stream copies it in before the allreduce and out after.
    const double copy_s = fused ? 2 * bytes / bytes_per_s : 0;
    CHECK(b["buckets"][i]["ready_s"].get<double>() == Approx(a["buckets"][i]["ready_s"].get<double>()));
    CHECK(b["buckets"][i].value("copy_in_s", 0.0) == Approx(copy_s));
    CHECK(b["buckets"][i].value("copy_out_s", 0.0) == Approx(copy_s));
    auto span = [i](const nlohmann::json& r) {
      return r["buckets"][i]["end_s"].get<double>() - r["buckets"][i]["start_s"].get<double>();
    };
    CHECK(span(b) == Approx(span(a) + 2 * copy_s));
  }
  CHECK(b["iteration_s"].get<double>() >= a["iteration_s"].get<double>());
  expect_bad("predict --model resnet18 --gpus 16 --pack --plan " + tmp("r18.json"),
             "--plan and --pack/--pack-on are exclusive");
  expect_bad("predict --cycle-time 5 --plan " + tmp("r18.json"), "--plan and --cycle-time are exclusive");
  expect_bad("predict --cycle-time 2000", "--cycle-time: must be in [0, 1000] ms (got 2000)");
  expect_bad("predict --cycle-time nan", "--cycle-time");
  // A cycle delays each bucket to the next tick and is kept in the plan --out writes.
  const std::string plan = tmp("cycled.json");
  Run cycled = run(setup + " --pack --cycle-time 5 --out " + plan);
  REQUIRE(cycled.code == 0);
  auto c = nlohmann::json::parse(cycled.out);
  for (const auto& bucket : c["buckets"]) {
    const double ticks = bucket["ready_s"].get<double>() / 0.005;
    CHECK(ticks == Approx(std::round(ticks)).margin(1e-9));
  }
  std::ifstream pf(plan);
  CHECK(nlohmann::json::parse(pf)["cycle_ms"] == Approx(5.0));
}

TEST_CASE("cli: --pack-on compute and tune --pack inline price DDP's copies in backward and keep them in the plan") {
  const std::string setup = "predict --model resnet50 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 "
                            "--precision fp32 --buckets threshold:25MiB --algorithm ring --json --pack";
  const auto comm = json_of(setup), compute = json_of(setup + " --pack-on compute");
  // Every FP32 gradient read and written once more in backward (P100: 732 GB/s at 0.75).
  double fp32_bytes = 0;
  for (const auto& b : comm["buckets"]) fp32_bytes += b["bytes"].get<double>();
  const double copies_s = 2 * fp32_bytes / (732e9 * 0.75);
  CHECK(compute["backward_s"].get<double>() == Approx(comm["backward_s"].get<double>() + copies_s));
  CHECK(compute["buckets"].back()["ready_s"].get<double>() == Approx(comm["backward_s"].get<double>() + copies_s));
  expect_bad("predict --model resnet18 --gpus 16 --pack-on compute", "--pack-on: applies with --pack");
  expect_bad("predict --model resnet18 --gpus 16 --pack --pack-on gpu",
             "--pack-on: unknown value 'gpu' (valid: comm, compute)");
  expect_bad("predict --pack-on compute --plan " + tmp("r18.json"), "--plan and --pack/--pack-on are exclusive");
  expect_bad("tune --model resnet18 --gpus 16 --pack copy",
             "--pack: unknown value 'copy' (valid: strategy, pack, inline, view)");
  // tune --pack inline: the plan says where its copies run, and predict --plan prices them alike.
  const std::string plan = tmp("inline.json");
  const auto written = tuned_plan("--model resnet50 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 "
                                  "--precision fp32 --algorithm ring --pack inline", plan);
  CHECK(written["pack_on"] == "compute");
  for (const auto& b : written["buckets"]) CHECK(b["pack"] == true);
  const auto again = json_of("predict --json --plan " + plan);
  CHECK(again["backward_s"].get<double>() > json_of("predict --json --model resnet50 --cluster p100-horovod --gpus 512 "
                                                    "--batch-per-gpu 64 --precision fp32")["backward_s"].get<double>());
}

TEST_CASE("cli: --cast prices FP32 gradients cast to the transfer precision and back, and the plan keeps it") {
  const std::string setup = "predict --model resnet50 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 "
                            "--precision fp32 --transfer fp16 --buckets threshold:25MiB --algorithm ring --json";
  const auto none = json_of(setup), compute = json_of(setup + " --cast compute");
  const auto comm = json_of(setup + " --cast comm");
  // Every gradient read in FP32 and written in FP16 once in backward (P100: 732 GB/s at 0.75).
  double fp16_bytes = 0;
  for (const auto& b : none["buckets"]) fp16_bytes += b["bytes"].get<double>();
  const double casts_s = 3 * fp16_bytes / (732e9 * 0.75);
  CHECK(compute["backward_s"].get<double>() == Approx(none["backward_s"].get<double>() + casts_s));
  CHECK(comm["backward_s"].get<double>() == Approx(none["backward_s"].get<double>()));
  CHECK(compute["iteration_s"].get<double>() > none["iteration_s"].get<double>());
  CHECK(comm["iteration_s"].get<double>() > none["iteration_s"].get<double>());
  expect_bad("predict --model resnet18 --gpus 16 --cast gpu",
             "--cast: unknown value 'gpu' (valid: none, compute, comm)");
  expect_bad("predict --model resnet18 --gpus 16 --precision fp32 --cast comm", "--cast: every bucket is sent in FP32");
  expect_bad("predict --cast comm --plan " + tmp("r18.json"), "--plan and --cast are exclusive");
  expect_bad("tune --model resnet18 --gpus 16 --fp32-tensors norm --cast compute",
             "--cast: compute with --fp32-tensors norm");
  // tune --cast: the plan says where its casts run, and predict --plan prices them alike.
  const std::string plan = tmp("cast.json");
  CHECK(tuned_plan("--model resnet50 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 --precision fp32 "
                   "--transfer fp16 --algorithm ring --cast compute", plan)["cast"] == "compute");
  // export --to ddp registers the compress hook the plan prices.
  const auto ddp = json_of("export --plan " + plan + " --to ddp --json");
  CHECK_THAT(ddp["snippet"].get<std::string>(),
             Catch::Contains("register_comm_hook(None, default_hooks.fp16_compress_hook)"));
}

TEST_CASE("cli: --optimizer prices the update rule's bytes and kernels, kept in the plan and named by export") {
  const std::string setup = "predict --model bert_large --cluster dgx-a100 --gpus 8 --batch-per-gpu 16 "
                            "--precision fp16 --buckets threshold:25MiB --json";
  const auto lars = json_of(setup), adam = json_of(setup + " --optimizer adam"),
             looped = json_of(setup + " --optimizer adam --optimizer-kernels per-tensor"),
             foreach = json_of(setup + " --optimizer adam --optimizer-kernels foreach"),
             given = json_of(setup + " --optimizer adam --optimizer-bytes 70"),
             lamb = json_of(setup + " --optimizer lamb");
  const double lars_s = lars["optimizer_s"].get<double>();
  CHECK(adam["optimizer_s"].get<double>() == Approx(lars_s));  // fused Adam moves LARS's 28 B
  CHECK(lamb["optimizer_s"].get<double>() == Approx(lars_s * 52 / 28));
  CHECK(foreach["optimizer_s"].get<double>() == Approx(lars_s * 92 / 28));  // the loop's bytes, few launches
  CHECK(given["optimizer_s"].get<double>() == Approx(lars_s * 70 / 28));
  const std::string plan = tmp("adam-per-tensor.json");
  REQUIRE(run(setup + " --optimizer adam --optimizer-kernels per-tensor:12 --out " + plan).code == 0);
  std::ifstream pf(plan);
  const auto pj = nlohmann::json::parse(pf);
  // The per-tensor loop: 92 B, and 10 kernels per tensor at dgx-a100's 4 us.
  const double tensors = pj["model"]["tensors"].get<double>();
  CHECK(looped["optimizer_s"].get<double>() == Approx(lars_s * 92 / 28 + tensors * 10 * 4e-6));
  CHECK(pj["optimizer"]["bytes_per_param"] == 92);
  CHECK(pj["optimizer"]["kernels_per_tensor"] == 12);
  const Run text = run("predict --plan " + plan);
  CHECK(text.code == 0);
  CHECK_THAT(text.out, Catch::Contains("optimizer 92 B per parameter, 12 kernels per tensor"));
  CHECK_THAT(run("export --to ddp --plan " + plan).out,
             Catch::Contains("per-tensor kernels (torch.optim with foreach=False): 92 B per parameter, 12 kernels"));
  expect_bad("predict --optimizer adagrad", "--optimizer: unknown optimizer 'adagrad' (valid: lars, sgd, adam, lamb)");
  expect_bad("predict --optimizer lamb --optimizer-kernels per-tensor", "--optimizer-kernels: optimizer 'lamb' runs "
                                                                         "fused here");
  expect_bad("predict --optimizer-kernels per-tensor:0", "--optimizer-kernels: per-tensor:N needs N in [1, 100]");
  // A per-tensor LAMB of another framework: its bytes and kernels given.
  const auto lamb_loop = json_of(setup + " --optimizer lamb --optimizer-kernels per-tensor:8 --optimizer-bytes 60");
  CHECK(lamb_loop["optimizer_s"].get<double>() == Approx(lars_s * 60 / 28 + tensors * 8 * 4e-6));
  expect_bad("predict --optimizer-bytes 0", "--optimizer-bytes: bytes per parameter must be in (0, 1000] (got 0)");
  expect_bad("tune --optimizer-bytes 1001", "--optimizer-bytes: bytes per parameter must be in (0, 1000] (got 1001)");
}

TEST_CASE("cli: predict --accumulate and --optimizer-kernels price accumulation and are kept in the plan") {
  const std::string setup = "predict --model resnet50 --cluster dgx-a100 --gpus 8 --batch-per-gpu 64 "
                            "--precision fp16 --buckets threshold:25MiB --json";
  const auto a = json_of(setup), b = json_of(setup + " --accumulate 8 --optimizer-kernels per-tensor");
  // 161 tensors x 5 kernels at dgx-a100's 4 us, added to the step and shared by 8 micro-batches.
  CHECK(b["optimizer_s"].get<double>() == Approx((a["optimizer_s"].get<double>() + 161 * 5 * 4e-6) / 8));
  const std::string plan = tmp("accumulated.json");
  REQUIRE(run(setup + " --accumulate 4 --no-sync --out " + plan).code == 0);
  std::ifstream pf(plan);
  auto pj = nlohmann::json::parse(pf);
  CHECK(pj["accumulate"]["steps"] == 4);
  CHECK(pj["accumulate"]["no_sync"] == true);
  // tune writes the step into the plan it tunes.
  const std::string tuned = tmp("tuned-accumulated.json");
  REQUIRE(run("tune --model resnet50 --cluster dgx-a100 --gpus 8 --accumulate 3 --out " + tuned).code == 0);
  std::ifstream tf(tuned);
  CHECK(nlohmann::json::parse(tf)["accumulate"]["steps"] == 3);
  expect_bad("tune --no-sync", "--no-sync: needs --accumulate 2 or more");
  // whatif prices every point with the step and names it above its table.
  const Run what = run("whatif --cluster dgx-a100 --gpus 8 --accumulate 3");
  CHECK(what.code == 0);
  CHECK(what.out.rfind("step: 3 micro-batches per optimizer step (allreduce on every one", 0) == 0);
  expect_bad("predict --accumulate 0", "--accumulate: must be in [1, 4096] (got 0)");
  expect_bad("predict --no-sync", "--no-sync: needs --accumulate 2 or more");
  expect_bad("predict --optimizer-kernels multi", "--optimizer-kernels: unknown optimizer kernels 'multi' (valid: fused, "
                                                  "foreach, per-tensor, per-tensor:N)");
  expect_bad("predict --accumulate 2 --plan " + plan,
             "--plan and --accumulate/--no-sync/--optimizer/--optimizer-kernels/--optimizer-bytes/--step-overhead "
             "are exclusive");
  // export writes the accumulation in the framework's terms: DDP's no_sync(), Horovod's
  // backward_passes_per_step (local accumulation only); DeepSpeed is refused.
  Run ddp = run("export --to ddp --plan " + plan), hvd = run("export --to horovod --plan " + plan);
  CHECK(ddp.code == 0);
  CHECK(ddp.out.find("with model.no_sync() if (i + 1) % 4 else contextlib.nullcontext():") != std::string::npos);
  CHECK(hvd.code == 0);
  CHECK(hvd.out.find("backward_passes_per_step=4)") != std::string::npos);
  CHECK(json_of("export --to ddp --json --plan " + plan)["accumulate"]["steps"] == 4);
  expect_bad("export --to deepspeed --plan " + plan, "--plan: $.accumulate: not exported to deepspeed");
  const std::string every = tmp("accumulated-every.json");
  REQUIRE(run(setup + " --accumulate 4 --out " + every).code == 0);
  expect_bad("export --to horovod --plan " + every, "$.accumulate: Horovod's backward_passes_per_step allreduces once");
  CHECK(run("export --to ddp --plan " + every).out.find("call optimizer.step() and zero_grad() after every 4th") !=
        std::string::npos);
  // Runners and fits of one micro-batch per step refuse it, naming the plan and key.
  expect_bad("run --plan " + plan, "$.accumulate: fuseplan-exec run runs one micro-batch", true);
}

TEST_CASE("cli: a transformer plan keeps its sequence length, which the fingerprint cannot tell") {
  const std::string setup = "predict --model bert_base --cluster dgx-a100 --gpus 8 --batch-per-gpu 8 "
                            "--buckets single --json";
  const std::string plan = tmp("bert-seq256.json");
  REQUIRE(run(setup + " --seq-len 256 --out " + plan).code == 0);
  std::ifstream pf(plan);
  CHECK(nlohmann::json::parse(pf)["model"]["options"]["seq_len"] == 256);
  const double at256 = json_of(setup + " --seq-len 256")["iteration_s"].get<double>();
  const double at128 = json_of(setup + " --seq-len 128")["iteration_s"].get<double>();
  REQUIRE(at256 > 1.2 * at128);  // apart enough that rebuilding at 128 tokens would show
  // --plan rebuilds the model at the plan's length; --seq-len still overrides it.
  CHECK(json_of("predict --json --plan " + plan)["iteration_s"].get<double>() == Approx(at256).epsilon(1e-12));
  CHECK(json_of("predict --json --seq-len 128 --plan " + plan)["iteration_s"].get<double>() ==
        Approx(at128).epsilon(1e-12));
  CHECK(json_of("simulate --json --plan " + plan)["iteration_s"].get<double>() == Approx(at256).epsilon(1e-3));
}

TEST_CASE("cli: --attention eager prices the materialised scores and is kept in the plan") {
  const std::string setup = "predict --model bert_base --cluster dgx-a100 --gpus 8 --batch-per-gpu 8 "
                            "--buckets single --json";
  const double fused = json_of(setup)["iteration_s"].get<double>();
  CHECK(json_of(setup + " --attention fused")["iteration_s"].get<double>() == fused);
  const double eager = json_of(setup + " --attention eager")["iteration_s"].get<double>();
  CHECK(eager > fused);
  const std::string plan = tmp("bert-eager.json");
  REQUIRE(run(setup + " --attention eager --out " + plan).code == 0);
  std::ifstream pf(plan);
  CHECK(nlohmann::json::parse(pf)["model"]["options"]["attention"] == "eager");
  CHECK(json_of("predict --json --plan " + plan)["iteration_s"].get<double>() == Approx(eager).epsilon(1e-12));
  CHECK(json_of("predict --json --attention fused --plan " + plan)["iteration_s"].get<double>() ==
        Approx(fused).epsilon(1e-12));
  // show says it and writes it; a model file with it is priced the same.
  CHECK(run_stdout("show bert_base --attention eager").out.find("attention (eager)") != std::string::npos);
  CHECK(run_stdout("show bert_base").out.find("(eager)") == std::string::npos);
  // A fused softmax materialises the scores too, with fewer passes over them.
  const double softmax = json_of(setup + " --attention fused-softmax")["iteration_s"].get<double>();
  CHECK(softmax > fused);
  CHECK(softmax < eager);
  const std::string softmax_plan = tmp("bert-fused-softmax.json");
  REQUIRE(run(setup + " --attention fused-softmax --out " + softmax_plan).code == 0);
  std::ifstream sf(softmax_plan);
  CHECK(nlohmann::json::parse(sf)["model"]["options"]["attention"] == "fused-softmax");
  CHECK(json_of("predict --json --plan " + softmax_plan)["iteration_s"].get<double>() ==
        Approx(softmax).epsilon(1e-12));
  CHECK(run_stdout("show bert_base --attention fused-softmax").out.find("attention (fused-softmax)") !=
        std::string::npos);
  const std::string model = tmp("bert-eager-model.json");
  write(model, run_stdout("show bert_base --attention eager --json").out);
  CHECK(json_of("predict --json --model " + model + " --cluster dgx-a100 --gpus 8 --batch-per-gpu 8 "
                "--buckets single")["iteration_s"].get<double>() == Approx(eager).epsilon(1e-12));
  expect_bad("predict --model resnet50 --attention eager", "--attention: resnet50 has no attention layer");
  expect_bad("predict --model bert_base --attention flash",
             "--attention: unknown attention 'flash' (eager, fused-softmax, fused)");
  std::ifstream ef(plan);
  auto bad_plan = nlohmann::json::parse(ef);
  bad_plan["model"]["options"]["attention"] = "flash";
  const std::string bad = tmp("bert-flash.json");
  write(bad, bad_plan.dump());
  expect_bad("predict --plan " + bad,
             "$.model.options.attention: unknown attention 'flash' (eager, fused-softmax, fused)");
  // whatif prices its sweep with it too.
  const std::string what = "whatif --model bert_base --cluster dgx-a100 --gpus 8 --batch-per-gpu 8 --json";
  const auto eager_sweep = nlohmann::json::parse(run_stdout(what + " --attention eager").out);
  const auto fused_sweep = nlohmann::json::parse(run_stdout(what).out);
  CHECK(eager_sweep[0]["report"]["iteration_s"].get<double>() > fused_sweep[0]["report"]["iteration_s"].get<double>());
  expect_bad("whatif --model resnet50 --attention eager", "--attention: resnet50 has no attention layer");
}

TEST_CASE("cli: predict --by-class prints the compute per layer class and --json carries it") {
  const std::string setup = "predict --model bert_large --seq-len 384 --attention eager --cluster dgx-a100 --gpus 8 "
                            "--batch-per-gpu 32 --buckets single --compute-variation 0";
  const auto j = nlohmann::json::parse(run_stdout(setup + " --json").out);
  double fwd = 0, bwd = 0;
  std::vector<std::string> names;
  for (const auto& k : j.at("compute_by_class")) {
    fwd += k.at("forward_s").get<double>();
    bwd += k.at("backward_s").get<double>();
    names.push_back(k.at("class").get<std::string>());
  }
  CHECK(fwd == Approx(j.at("forward_s").get<double>()).epsilon(1e-12));
  CHECK(bwd == Approx(j.at("backward_s").get<double>()).epsilon(1e-12));  // the mean GPU's (no variation here)
  CHECK(names == std::vector<std::string>{"gemm", "attention", "norm", "elementwise", "embedding"});
  const std::string text = run_stdout(setup + " --by-class").out;
  CHECK(text.find("compute by layer class (one micro-batch on the mean GPU)") != std::string::npos);
  CHECK(text.find("  attention        24") != std::string::npos);
  CHECK(run_stdout(setup).out.find("compute by layer class") == std::string::npos);
  // A sweep's reports leave it out: it does not change with the GPU count.
  const auto sweep = nlohmann::json::parse(
      run_stdout("whatif --model bert_base --cluster dgx-a100 --gpus 8,16 --batch-per-gpu 8 --json").out);
  CHECK_FALSE(sweep[0]["report"].contains("compute_by_class"));
}

TEST_CASE("cli: --step-overhead adds a fixed cost per step on more than one GPU and is kept in the plan") {
  const std::string setup = "predict --model resnet50 --cluster dgx-a100 --gpus 8 --batch-per-gpu 64 "
                            "--precision fp16 --buckets threshold:25MiB";
  const auto a = json_of(setup + " --json"), b = json_of(setup + " --json --step-overhead 7.5");
  CHECK(b["iteration_s"].get<double>() == Approx(a["iteration_s"].get<double>() + 0.0075));
  CHECK(b["step_overhead_s"].get<double>() == Approx(0.0075));
  CHECK(b["single_gpu_iteration_s"].get<double>() == Approx(a["single_gpu_iteration_s"].get<double>()));
  const Run shown = run(setup + " --step-overhead 7.5");
  CHECK(shown.out.find("a fixed 7.5 ms per step on more than one GPU") != std::string::npos);
  CHECK(shown.out.find("+ step overhead 7.50") != std::string::npos);
  // One GPU pays none.
  const auto one = json_of("predict --model resnet50 --cluster dgx-a100 --gpus 1 --batch-per-gpu 64 --json "
                           "--step-overhead 7.5");
  CHECK(one["iteration_s"].get<double>() == Approx(one["single_gpu_iteration_s"].get<double>()));
  // Kept in the plans predict and tune write, and priced again from them.
  const std::string plan = tmp("overhead.json"), tuned = tmp("overhead-tuned.json");
  REQUIRE(run(setup + " --step-overhead 7.5 --out " + plan).code == 0);
  std::ifstream pf(plan);
  CHECK(nlohmann::json::parse(pf)["step_overhead_ms"] == Approx(7.5));
  CHECK(json_of("predict --json --plan " + plan)["iteration_s"].get<double>() ==
        Approx(b["iteration_s"].get<double>()).epsilon(1e-12));
  REQUIRE(run("tune --model resnet50 --cluster dgx-a100 --gpus 8 --step-overhead 3 --out " + tuned).code == 0);
  std::ifstream tf(tuned);
  CHECK(nlohmann::json::parse(tf)["step_overhead_ms"] == Approx(3));
  const Run what = run("whatif --cluster dgx-a100 --gpus 8 --step-overhead 3");
  CHECK(what.code == 0);
  CHECK(what.out.rfind("step: a fixed 3 ms per step on more than one GPU", 0) == 0);
  expect_bad("predict --step-overhead 3 --plan " + plan, "--plan and --accumulate/--no-sync/--optimizer/");
  expect_bad("predict --step-overhead 1001", "--step-overhead: must be in [0, 1000] ms (got 1001)");
  expect_bad("tune --step-overhead -1", "--step-overhead: must be in [0, 1000] ms (got -1)");
  expect_bad("compare --step-overhead inf", "--step-overhead: must be in [0, 1000] ms (got inf)");
}

TEST_CASE("cli: --measured-rate scales the compute to one GPU's measured rate on every command that prices a setup") {
  const std::string setup = "--model resnet50 --cluster dgx-a100 --batch-per-gpu 128 --precision fp16";
  auto stdout_json = [](const std::string& args) {
    INFO("fuseplan " << args);
    const Run r = run_stdout(args);  // the note on the scale goes to stderr
    REQUIRE(r.code == 0);
    return nlohmann::json::parse(r.out);
  };
  // One GPU trains at the measured rate, whatever the loop it was measured with.
  for (const std::string loop : {"", " --accumulate 4 --no-sync --optimizer-kernels per-tensor"}) {
    INFO(loop);
    const auto one = stdout_json("predict " + setup + " --gpus 1 --measured-rate 1500 --json" + loop);
    CHECK(one["throughput_samples_s"].get<double>() == Approx(1500).epsilon(1e-9));
  }
  // On more GPUs the efficiency is against that rate; the roofline's own speed differs.
  const auto eight = stdout_json("predict " + setup + " --gpus 64 --measured-rate 1500 --json");
  CHECK(eight["single_gpu_iteration_s"].get<double>() == Approx(128.0 / 1500).epsilon(1e-9));
  const auto roofline = stdout_json("predict " + setup + " --gpus 64 --json");
  CHECK(std::abs(roofline["single_gpu_iteration_s"].get<double>() - 128.0 / 1500) > 1e-3);
  // The measured run's own loop: 4 micro-batches per step there, 1 here.
  const auto other_loop = stdout_json("predict " + setup + " --gpus 64 --measured-rate 1500 --measured-accumulate 4 "
                                      "--json");
  CHECK(other_loop["single_gpu_iteration_s"].get<double>() > 128.0 / 1500);
  const Run text = run("predict " + setup + " --gpus 8 --measured-rate 1500");
  CHECK(text.code == 0);
  CHECK_THAT(text.out, Catch::Contains("note: --measured-rate 1500: the compute of one GPU scaled by "));
  // A plan file applies it with the plan's loop; tune, compare and simulate take it too.
  const std::string plan = tmp("measured-rate-plan.json");
  REQUIRE(run("predict " + setup + " --gpus 8 --out " + plan).code == 0);
  CHECK(stdout_json("predict --plan " + plan + " --measured-rate 1500 --json")["single_gpu_iteration_s"]
            .get<double>() == Approx(128.0 / 1500).epsilon(1e-9));
  CHECK(run("tune " + setup + " --gpus 8 --measured-rate 1500").code == 0);
  CHECK(run("compare " + setup + " --gpus 8 --measured-rate 1500").code == 0);
  CHECK(run("simulate " + setup + " --gpus 8 --measured-rate 1500").code == 0);
  expect_bad("predict " + setup + " --measured-rate 0",
             "--measured-rate: must be in (0, 1e6] samples/s per GPU (got 0)");
  expect_bad("predict " + setup + " --measured-rate -5", "--measured-rate: must be in (0, 1e6]");
  expect_bad("predict " + setup + " --measured-accumulate 4", "--measured-accumulate: applies with --measured-rate");
  expect_bad("predict " + setup + " --measured-rate 100 --measured-accumulate 0",
             "--measured-accumulate: must be in [1, 4096] (got 0)");
  // whatif: every point of the one model, batch and precision, whatever the GPU count.
  const Run sweep = run_stdout("whatif " + setup + " --gpus 1,64 --measured-rate 1500 --json --quiet");
  REQUIRE(sweep.code == 0);
  const auto rows = nlohmann::json::parse(sweep.out);
  REQUIRE(rows.size() == 2);
  CHECK(rows[0]["report"]["throughput_samples_s"].get<double>() == Approx(1500).epsilon(1e-9));
  CHECK(rows[1]["report"]["single_gpu_iteration_s"].get<double>() == Approx(128.0 / 1500).epsilon(1e-9));
  expect_bad("whatif --model resnet50,vgg16 --cluster dgx-a100 --gpus 8 --measured-rate 1500 --quiet",
             "--measured-rate: a rate is measured with one model, batch and precision");
  expect_bad("whatif " + setup + " --gpus 8 --measured-accumulate 2 --quiet",
             "--measured-accumulate: applies with --measured-rate");
  expect_bad("whatif " + setup + " --gpus 8 --measured-rate 2e6 --quiet", "--measured-rate: must be in (0, 1e6]");
  const std::string profile = tmp("measured-rate-profile.json");
  {
    std::ofstream pf(profile);
    pf << R"({"schema": "fuseplan.profile/1", "model": "resnet50", "batch": 128, "precision": "fp16", "layers": []})";
  }
  expect_bad("predict " + setup + " --measured-rate 100 --profile " + profile,
             "--measured-rate and --profile are exclusive");
}

TEST_CASE("cli: predict --measured-efficiency fits the step overhead that reproduces a measured efficiency") {
  const std::string setup = "predict --model resnet50 --cluster dgx1-v100 --gpus 8 --batch-per-gpu 112 "
                            "--precision fp32 --buckets threshold:25MiB";
  const auto fit = json_of(setup + " --json --measured-efficiency 0.95");
  CHECK(fit["step_overhead_fit"] == "fitted");
  CHECK(fit["scaling_efficiency"].get<double>() == Approx(0.95).margin(1e-9));
  CHECK(fit["efficiency_without_step_overhead"].get<double>() > 0.95);
  const double x_ms = fit["step_overhead_s"].get<double>() * 1e3;
  CHECK(x_ms > 1);
  // Given back as --step-overhead, the value predicts the same step.
  std::ostringstream x;
  x.precision(12);
  x << x_ms;
  CHECK(json_of(setup + " --json --step-overhead " + x.str())["iteration_s"].get<double>() ==
        Approx(fit["iteration_s"].get<double>()).epsilon(1e-9));
  // A lower measured efficiency takes a larger one.
  CHECK(json_of(setup + " --json --measured-efficiency 0.9")["step_overhead_s"].get<double>() > x_ms * 1e-3);
  const Run text = run(setup + " --measured-efficiency 0.95");
  CHECK(text.code == 0);
  CHECK_THAT(text.out, Catch::Contains("measured efficiency  95.00 %: a step overhead of"));
  CHECK_THAT(text.out, Catch::Contains("give --step-overhead "));
  // Kept in the plan --out writes.
  const std::string plan = tmp("measured-overhead.json");
  REQUIRE(run(setup + " --measured-efficiency 0.95 --out " + plan).code == 0);
  std::ifstream pf(plan);
  CHECK(nlohmann::json::parse(pf)["step_overhead_ms"].get<double>() == Approx(x_ms).epsilon(1e-9));
  // VGG-16 over 25 Gb/s is predicted below 85 %: no overhead fits, and none is added.
  const auto below = json_of("predict --model vgg16 --cluster p100-horovod --gpus 16 --batch-per-gpu 64 "
                             "--precision fp32 --json --measured-efficiency 0.85");
  CHECK(below["step_overhead_fit"] == "at-or-below");
  CHECK_FALSE(below.contains("step_overhead_s"));
  CHECK(below["scaling_efficiency"].get<double>() < 0.85);
  expect_bad(setup + " --measured-efficiency 0", "--measured-efficiency: must be in (0, 1] (got 0)");
  expect_bad(setup + " --measured-efficiency 1.5", "--measured-efficiency: must be in (0, 1] (got 1.5)");
  expect_bad(setup + " --measured-efficiency nan", "--measured-efficiency: must be in (0, 1] (got nan)");
  expect_bad(setup + " --measured-efficiency 0.01", "would need a step overhead above 1000 ms");
  expect_bad(setup + " --measured-efficiency 0.9 --step-overhead 3",
             "--measured-efficiency and --step-overhead are exclusive");
  expect_bad("predict --gpus 1 --measured-efficiency 0.9", "--measured-efficiency: needs more than one GPU");
  // --fit compute-variation: the cluster's spread instead, whose wait prices other GPU counts.
  const auto cv = json_of(setup + " --json --measured-efficiency 0.95 --fit compute-variation");
  CHECK(cv["compute_variation_fit"] == "fitted");
  CHECK(cv["scaling_efficiency"].get<double>() == Approx(0.95).margin(1e-9));
  const double v = cv["compute_variation"].get<double>();
  CHECK(v > 0.01);
  CHECK(v < 0.5);
  std::ostringstream vs;
  vs.precision(12);
  vs << v;
  CHECK(json_of(setup + " --json --compute-variation " + vs.str())["iteration_s"].get<double>() ==
        Approx(cv["iteration_s"].get<double>()).epsilon(1e-9));
  CHECK_THAT(run(setup + " --measured-efficiency 0.95 --fit compute-variation").out,
             Catch::Contains("a compute variation of ") && Catch::Contains("give --compute-variation "));
  expect_bad(setup + " --fit compute-variation", "--fit: applies with --measured-efficiency");
  expect_bad(setup + " --measured-efficiency 0.9 --fit speed", "--fit: unknown value 'speed' (valid: step-overhead, "
                                                               "compute-variation)");
  expect_bad(setup + " --measured-efficiency 0.9 --fit compute-variation --compute-variation 0.1",
             "--fit compute-variation and --compute-variation are exclusive");
  expect_bad(setup + " --measured-efficiency 0.01 --fit compute-variation", "would need a compute variation above 0.5");
}

TEST_CASE("cli: export --to ddp writes settings both torches honour and torch 1.13's on --torch 1.13") {
  const std::string setup = "tune --model resnet50 --cluster dgx-a100 --gpus 8 --strategy ddp";
  // DDP's own default: bucket_cap_mb left unset (null), the first bucket torch's 1 MiB.
  const std::string by_default = tmp("ddp-default.json"), capped = tmp("ddp-capped.json");
  REQUIRE(run(setup + " --out " + by_default).code == 0);
  const nlohmann::json d = json_of("export --to ddp --json --plan " + by_default);
  CHECK(d["bucket_cap_mb"].is_null());
  CHECK(d["first_bucket_bytes"] == 1 << 20);
  CHECK(d["boundaries_missing"] == 0);
  CHECK(d["boundaries_extra"] == 0);
  CHECK(d["snippet"].get<std::string>().find("DistributedDataParallel(model)\n") != std::string::npos);
  // 1 MiB, then 10 MiB buckets: torch 1.13 forms them; by default the closest settings
  // keep the first bucket's cap equal to a given bucket_cap_mb.
  REQUIRE(run(setup + " --ddp-cap 10 --out " + capped).code == 0);
  const nlohmann::json v113 = json_of("export --to ddp --json --torch 1.13 --plan " + capped);
  CHECK(v113["boundaries_missing"] == 0);
  CHECK(v113["boundaries_extra"] == 0);
  CHECK(v113["first_bucket_bytes"] == 1 << 20);
  CHECK(v113["bucket_cap_mb"].get<double>() >= 10);
  const nlohmann::json both = json_of("export --to ddp --json --plan " + capped);
  CHECK((both["bucket_cap_mb"].is_null() ||
         both["first_bucket_bytes"] == int64_t(both["bucket_cap_mb"].get<double>() * (1 << 20))));
  expect_bad("export --to ddp --torch 2.0 --plan " + capped, "--torch: unknown torch '2.0' (valid: 2.6, 1.13)");
}

TEST_CASE("cli: schedule prints every schedule with the bound, writes one, and refuses bad input with exit 2") {
  const std::string setup = "schedule --model vgg16 --cluster p100-horovod --gpus 512 --batch-per-gpu 64 --precision fp32";
  Run table = run(setup);
  REQUIRE(table.code == 0);
  for (const char* name : {"best", "fusion", "ddp", "horovod", "bytescheduler", "usbyte", "dear", "zero2", "fsdp", "zero3"})
    CHECK_THAT(table.out, Catch::Contains(std::string("  ") + name + " "));
  CHECK_THAT(table.out, Catch::Contains("lower bound of any schedule"));
  Run js = run_stdout(setup + " --strategy best,fusion --json");
  REQUIRE(js.code == 0);
  auto j = nlohmann::json::parse(js.out);
  REQUIRE(j.size() == 2);
  const double best = j[0]["prediction"]["iteration_ms"], fusion = j[1]["prediction"]["iteration_ms"];
  const double bound = j[0]["prediction"]["lower_bound_ms"];
  CHECK(j[0]["schema"] == "fuseplan.schedule/1");
  CHECK(bound <= best);
  CHECK(best <= fusion);
  // VGG-16 at 512 GPUs over 25 Gbit/s (Horovod's benchmark) is communication-bound: well beyond fusion.
  CHECK(fusion / best >= 1.2);
  const std::string out = tmp("schedule.json");
  std::filesystem::remove(out);
  Run written = run(setup + " --strategy dear --out " + out);
  REQUIRE(written.code == 0);
  std::ifstream f(out);
  auto d = nlohmann::json::parse(f);
  CHECK(d["exchange"] == "rs+ag");
  CHECK(d["bounds"].back().get<int64_t>() == 138357544);
  CHECK(d["messages"].size() == 2 * d["bounds"].size());
  expect_bad(setup + " --strategy bytesched", "--strategy: unknown schedule 'bytesched' (valid: best, fusion,");
  expect_bad(setup + " --partition 0", "--partition: a whole number of parameters >= 1");
  expect_bad(setup + " --credit 1.5", "--credit: a whole number");
  expect_bad(setup + " --budget 0", "--budget: must be in [1, 1000000]");
  expect_bad(setup + " --simulate --sim-iterations 2", "--sim-iterations: must be in [3, 1000]");
  // --simulate's replays show progress per schedule (minutes each at 1024 ranks), --quiet not.
  const std::string replay = "schedule --model alexnet_bn --cluster p100-horovod --gpus 16 --strategy fusion,ddp "
                             "--simulate --sim-iterations 3";
  Run progress = run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", replay);
  REQUIRE(progress.code == 0);
  CHECK_THAT(progress.out, Catch::Contains("rank-rounds of ddp (schedule 2 of 2)"));
  CHECK_THAT(run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", replay + " --quiet").out,
             !Catch::Contains("rank-rounds"));
  expect_bad(setup + " --out " + out, "--out: writes one schedule; give one --strategy");
  expect_bad(setup + " --trace " + tmp("t.json"), "--trace: traces one schedule; give one --strategy");
  const std::string trace = tmp("schedule-trace.json");
  REQUIRE(run(setup + " --strategy zero2 --trace " + trace).code == 0);
  const auto tj = nlohmann::json::parse(std::ifstream(trace));
  CHECK(count_of(tj.dump(), "all-gather") >= 1);
  expect_bad("schedule --model resnet18 --gpus 0", "--gpus");
}

TEST_CASE("cli: predict defaults run the paper's setup and write a trace and a plan") {
  std::string trace = tmp("trace.json"), plan = tmp("plan.json");
  Run r = run("predict --trace " + trace + " --out " + plan);
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
  CHECK(models.size() == 14);
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
  // Which devices price each layer class with their own (fitted) efficiencies.
  auto line_of = [&](const std::string& name) { return cl.out.substr(cl.out.find("\n" + name + " ") + 1, 200); };
  CHECK_THAT(line_of("dgx-a100"), Catch::Contains("by class (6)"));
  CHECK_THAT(line_of("dgx-h100"), Catch::Contains("one roofline"));
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

TEST_CASE("cli: tune writes a plan that predict reproduces - compare and whatif print their tables") {
  std::string plan = tmp("tuned.json"), trace = tmp("tuned-trace.json");
  Run t = run("tune --model alexnet_bn --gpus 256 --out " + plan + " --trace " + trace + " --json");
  REQUIRE(t.code == 0);
  auto j = nlohmann::json::parse(t.out);
  double tuned = j["report"]["iteration_s"];
  CHECK(j["versus"]["single"]["speedup"].get<double>() >= 1.0);
  CHECK(j["versus"]["per-tensor"]["speedup"].get<double>() >= 1.0);
  CHECK(std::filesystem::exists(trace));
  Run p = run("predict --plan " + plan + " --json");
  REQUIRE(p.code == 0);
  CHECK(nlohmann::json::parse(p.out)["iteration_s"].get<double>() == Approx(tuned).epsilon(1e-12));

  Run table = run("tune --strategy k-split --segments 2");
  REQUIRE(table.code == 0);
  CHECK_THAT(table.out, Catch::Contains("found 2 buckets"));
  CHECK_THAT(table.out, Catch::Contains("versus single"));
  CHECK_THAT(table.out, !Catch::Contains("local search"));
  CHECK(j["search_proven"].get<bool>());

  // Under processor sharing the search is proven on one stream; on two it says it is not.
  Run shared = run("tune --model resnet18 --gpus 16 --compute-slowdown 0.189 --json");
  REQUIRE(shared.code == 0);
  CHECK(nlohmann::json::parse(shared.out)["search_proven"].get<bool>());
  Run streams = run("tune --model resnet18 --gpus 16 --compute-slowdown 0.189 --streams 2");
  REQUIRE(streams.code == 0);
  CHECK_THAT(streams.out, Catch::Contains("search: a local search under processor sharing (several streams)"));

  Run c = run("compare --model resnet50 --gpus 64 --json");
  REQUIRE(c.code == 0);
  auto rows = nlohmann::json::parse(c.out)["strategies"];
  REQUIRE(rows.size() == 7);
  for (const auto& r : rows) CHECK(rows[0]["iteration_s"].get<double>() <= r["iteration_s"].get<double>() * (1 + 1e-12));

  Run w = run("whatif --model alexnet_bn,resnet50 --gpus 8:64 --strategy optimal,ddp --csv");
  REQUIRE(w.code == 0);
  CHECK(std::count(w.out.begin(), w.out.end(), '\n') == 1 + 2 * 4 * 2);
  CHECK_THAT(w.out, Catch::StartsWith("model,cluster,gpus,nodes,inter_bw_Gbps"));
  Run inv = run("whatif --model alexnet_bn --target-efficiency 0.95 --json");
  REQUIRE(inv.code == 0);
  CHECK(nlohmann::json::parse(inv.out)["inter_bw_Gbps"].get<double>() > 0);
  Run bar = run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", "whatif --gpus 8:64 --csv --out " + tmp("bar.csv"));
  REQUIRE(bar.code == 0);
  CHECK_THAT(bar.out, Catch::Contains("progress: 4/4 configurations"));  // not a terminal: lines, no bar
  Run quiet = run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", "whatif --gpus 8:64 --csv --quiet");
  CHECK_THAT(quiet.out, !Catch::Contains("configurations"));
  // Off a terminal progress is on by default, as lines (runs past FUSEPLAN_PROGRESS_DELAY,
  // 10 s unless set); FUSEPLAN_PROGRESS=0 silences it; a run shorter than 10 s says nothing.
  Run log = run_env("FUSEPLAN_PROGRESS_DELAY=0", "whatif --gpus 8:64 --csv");
  CHECK_THAT(log.out, Catch::Contains("progress: 4/4 configurations"));
  Run off = run_env("FUSEPLAN_PROGRESS=0 FUSEPLAN_PROGRESS_DELAY=0", "whatif --gpus 8:64 --csv");
  CHECK_THAT(off.out, !Catch::Contains("configurations"));
  Run brief = run_env("", "whatif --gpus 8:64 --csv");
  CHECK_THAT(brief.out, !Catch::Contains("configurations"));
  Run dl = run("whatif --deadline 15m --json");
  REQUIRE(dl.code == 0);
  CHECK(nlohmann::json::parse(dl.out)["gpu_hours"].get<double>() > 0);
}

TEST_CASE("cli: tune --baseline keeps the framework default unless the tuned plan beats it by --min-gain") {
  const std::string setup = "tune --model resnet50 --cluster tencent-p40 --gpus 1024 --batch-per-gpu 32 --json ";
  const auto tuned = json_of(setup);
  const auto ddp = json_of(setup + "--strategy ddp");
  const double gain = (1 - tuned["report"]["iteration_s"].get<double>() / ddp["report"]["iteration_s"].get<double>());
  REQUIRE(gain > 0.001);  // the optimum is predicted faster than DDP's buckets here
  // A threshold above the gain keeps DDP's plan: its buckets, its prediction.
  const auto kept = json_of(setup + "--baseline ddp --min-gain " + std::to_string(100 * gain + 1));
  CHECK(kept["baseline"]["kept"] == true);
  CHECK(kept["plan"]["strategy"] == "ddp");
  CHECK(kept["plan"]["buckets"] == ddp["plan"]["buckets"]);
  CHECK(kept["report"]["iteration_s"].get<double>() == Approx(ddp["report"]["iteration_s"].get<double>()));
  CHECK(kept["baseline"]["tuned"]["gain_pct"].get<double>() == Approx(100 * gain));
  // Below it the tuned plan stands, with the gain it was judged by.
  const auto won = json_of(setup + "--baseline ddp --min-gain " + std::to_string(100 * gain - 0.05));
  CHECK(won["baseline"]["kept"] == false);
  CHECK(won["plan"]["buckets"] == tuned["plan"]["buckets"]);
  Run text = run(setup.substr(0, setup.size() - 7) + " --baseline ddp --min-gain 100");
  REQUIRE(text.code == 0);
  CHECK_THAT(text.out, Catch::Contains("kept ddp's buckets: the tuned plan (optimal, "));
  CHECK_THAT(text.out, Catch::Contains("plan: ddp's "));
  expect_bad("tune --min-gain 3", "--min-gain: needs --baseline");
  expect_bad("tune --baseline ddp --min-gain 101", "--min-gain: must be in [0, 100] percent (got 101.00)");
  expect_bad("tune --baseline dpp", "--baseline: unknown strategy 'dpp' (valid: optimal");
}

TEST_CASE("cli: tune, compare and whatif refuse bad input with exit 2") {
  expect_bad("tune --strategy fastest", "--strategy: unknown strategy 'fastest' (valid: optimal, k-split");
  expect_bad("tune --strategy k-split --segments 500", "--segments: 500 buckets asked for, the model has 161 tensors");
  expect_bad("tune --strategy horovod --threshold -5MiB", "--threshold");
  // Units: a bare size is refused with the unit named, except DDP's cap (MiB, as bucket_cap_mb).
  expect_bad("tune --strategy horovod --threshold 64", "--threshold: '64' needs a unit (e.g. 64MiB");
  expect_bad("tune --strategy ddp --ddp-first 1", "--ddp-first: '1' needs a unit");
  expect_bad("predict --buckets threshold:64", "--buckets: '64' needs a unit");
  expect_bad("whatif --deadline 10", "--deadline: '10' needs a unit: s, m, h or d");
  {
    auto buckets = [](const std::string& cap) {
      Run r = run_stdout("tune --strategy ddp --gpus 16 --json --ddp-cap " + cap);
      REQUIRE(r.code == 0);
      return nlohmann::json::parse(r.out)["plan"]["buckets"].size();
    };
    CHECK(buckets("25") == buckets("25MiB"));
    CHECK(buckets("25") < buckets("4MiB"));
  }
  CHECK(run("tune --strategy horovod --threshold 0 --gpus 16").code == 0);  // 0 = no fusion, no unit needed
  expect_bad("tune --streams 0", "--streams: must be >= 1");
  expect_bad("tune --fp32-tensors all", "valid: none, norm, norm+bias");
  expect_bad("tune --gpus 0", "--gpus: must be in [1, 1048576] (got 0)");
  expect_bad("compare --model resnet9", "unknown model 'resnet9'");
  expect_bad("whatif --target-efficiency 0.9999999 --model alexnet_bn", "is unreachable");
  expect_bad("whatif --target-efficiency 1.5", "must be in (0, 1]");
  expect_bad("whatif --deadline 1s", "--deadline: unreachable");
  expect_bad("whatif --deadline soon", "--deadline: 'soon' is not a duration");
  expect_bad("whatif --gpus 8,abc", "--gpus: 'abc' is not a number");
  expect_bad("whatif --gpus 64:8", "needs 0 < MIN <= MAX");
  expect_bad("whatif --inter-bw -100", "--inter-bw: must be > 0 (got -100; leave the flag out for its default)");
  expect_bad("whatif --cluster local-cpu --gpus 2 --inter-bw 100", "has no inter-node network");
  expect_bad("whatif --format xml", "valid: table, csv, json");  // the old spelling still checks its value
  expect_bad("whatif --gpus 8,64 --target-efficiency 0.9", "give one value per axis");
  std::string out = tmp("never-written.csv");
  std::filesystem::remove(out);
  expect_bad("whatif --gpus 8,64 --model resnet9 --csv --out " + out, "unknown model 'resnet9'");
  CHECK_FALSE(std::filesystem::exists(out));
}

TEST_CASE("cli: collective --simulate replays each size in SimGrid beside the model") {
  Run r = run_stdout("collective --simulate --algorithm ring --gpus 16 --cluster dgx-a100 --sizes 64K:16M --step-factor 16 --json");
  REQUIRE(r.code == 0);
  auto rows = nlohmann::json::parse(r.out)["rows"];
  REQUIRE(rows.size() == 3);
  for (const auto& row : rows) CHECK(row["sim_over_model"].get<double>() == Approx(1.0).epsilon(0.01));
  Run t = run("collective --simulate --gpus 8 --sizes 1M:1M");
  REQUIRE(t.code == 0);
  CHECK_THAT(t.out, Catch::Contains("sim/model"));
}

TEST_CASE("cli: simulate replays a tuned or saved plan and refuses bad options") {
  std::string plan = tmp("sim-plan.json"), trace = tmp("sim-trace.json");
  REQUIRE(run("tune --model alexnet_bn --gpus 16 --out " + plan).code == 0);
  Run r = run_stdout("simulate --plan " + plan + " --trace " + trace + " --trace-ranks 2 --json");
  REQUIRE(r.code == 0);
  auto j = nlohmann::json::parse(r.out);
  CHECK(j["iteration_s"].get<double>() == Approx(j["predicted_iteration_s"].get<double>()).epsilon(0.01));
  auto events = nlohmann::json::parse(std::ifstream(trace))["traceEvents"];
  std::set<int> pids;
  for (const auto& e : events) pids.insert(e["pid"].get<int>());
  CHECK(pids == std::set<int>{0, 1});
  Run t = run("simulate --gpus 16 --model alexnet_bn --straggler 3:1.5");
  REQUIRE(t.code == 0);
  CHECK_THAT(t.out, Catch::Contains("simulated / predicted"));
  Run progress = run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", "simulate --gpus 16 --model alexnet_bn");
  CHECK_THAT(progress.out, Catch::Contains("rank-rounds"));
  Run quiet = run_env("FUSEPLAN_PROGRESS=1 FUSEPLAN_PROGRESS_DELAY=0", "simulate --gpus 16 --model alexnet_bn --quiet");
  REQUIRE(quiet.code == 0);
  CHECK_THAT(quiet.out, !Catch::Contains("rank-rounds"));
  expect_bad("simulate --gpus 16 --straggler 16:2", "--straggler: rank 16 does not exist (valid: 0..15)");
  expect_bad("simulate --gpus 16 --straggler 3", "is not RANK:FACTOR");
  expect_bad("simulate --gpus 16 --network-model ns3", "valid: cm02, lv08, smpi");
  expect_bad("simulate --gpus 16 --iterations 0", "--iterations: must be in [1, 1000] (got 0)");
  expect_bad("simulate --gpus 16 --jitter -1", "--jitter: must be >= 0");
}

TEST_CASE("cli: tune --validate sim re-ranks the best plans by simulation") {
  Run r = run_stdout("tune --model alexnet_bn --gpus 16 --validate sim --top 2 --json");
  REQUIRE(r.code == 0);
  auto v = nlohmann::json::parse(r.out)["validation"];
  REQUIRE(v.size() == 2);
  for (const auto& x : v) CHECK(x["simulated_s"].get<double>() == Approx(x["predicted_s"].get<double>()).epsilon(0.01));
  CHECK(v[0]["predicted_s"].get<double>() <= v[1]["predicted_s"].get<double>());
  expect_bad("tune --validate measure", "--validate: unknown value 'measure' (valid: sim)");
  expect_bad("tune --validate sim --top 0", "--top: must be >= 1");
}

TEST_CASE("cli: fuseplan-exec train runs, writes metrics and a profile, and refuses bad input with exit 2", "[exec]") {
  const std::string metrics = tmp("metrics.json"), profile = tmp("profile.json");
  std::filesystem::remove(metrics);
  Run r = run_exec("train --dataset synthetic --synthetic-size 256 --model resnet18 --resolution 16 --batch-per-gpu 32 "
                   "--max-steps 3 --precision fp16 --quiet --metrics " + metrics + " --profile " + profile);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("3 steps"));
  auto m = nlohmann::json::parse(std::ifstream(metrics));
  CHECK(m["steps"].size() == 3);
  CHECK(m["precision"] == "fp16");
  auto p = nlohmann::json::parse(std::ifstream(profile));
  CHECK(p["schema"] == "fuseplan.profile/1");
  CHECK(p["layers"].size() > 60);
  CHECK(p["layers"][0]["fwd_us"].get<double>() > 0);
  // The planner reads the profile: the predicted forward time is the measured one.
  double fwd_us = 0;
  for (const auto& l : p["layers"]) fwd_us += l["fwd_us"].get<double>();
  Run pr = run_stdout("predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu --gpus 1 "
                      "--batch-per-gpu 32 --json --profile " + profile);
  REQUIRE(pr.code == 0);
  CHECK(nlohmann::json::parse(pr.out)["forward_s"].get<double>() == Approx(fwd_us * 1e-6).epsilon(1e-6));
  // ... and the measured optimizer step.
  REQUIRE(p.contains("optimizer_us"));
  CHECK(p["optimizer_us"].get<double>() > 0);
  // The optimizer's time is the mean over the steps after the first that applied an
  // update: a step skipped for overflow only checks the gradients.
  double applied_s = 0, skipped = 0;
  int applied = 0;
  for (size_t k = 1; k < m["steps"].size(); ++k) {
    const auto& s = m["steps"][k];
    if (s["skipped"].get<bool>()) skipped += 1;
    else applied_s += s["optimizer_s"].get<double>(), ++applied;
  }
  REQUIRE(applied > 0);
  CHECK(p["optimizer_us"].get<double>() == Approx(applied_s / applied * 1e6).epsilon(1e-9));
  CHECK(skipped + applied == 2);
  CHECK(nlohmann::json::parse(pr.out)["optimizer_s"].get<double>() ==
        Approx(p["optimizer_us"].get<double>() * 1e-6).epsilon(1e-6));
  expect_bad("predict --model resnet18 --cluster local-cpu --gpus 1 --profile " + profile,
             "the profile was measured on model resnet18");
  // Its precision must be the prediction's; another batch is scaled, and said.
  const std::string small = "predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu "
                            "--gpus 1 --profile " + profile;
  expect_bad(small + " --batch-per-gpu 32 --precision fp32",
             "--profile " + profile + ": measured at fp16, the prediction is at fp32");
  CHECK_THAT(run(small + " --batch-per-gpu 32").out, !Catch::Contains("warning"));
  Run other = run(small + " --batch-per-gpu 16");
  CHECK(other.code == 0);
  CHECK_THAT(other.out, Catch::Contains("warning: --profile " + profile + " was measured at batch 32 per GPU"));
  const std::string base = "train --dataset synthetic --synthetic-size 64 --max-steps 1 ";
  expect_bad(base + "--precision fp8", "--precision: unknown precision 'fp8'", true);
  expect_bad(base + "--optimizer adam", "--optimizer: unknown optimizer 'adam' (valid: lars, sgd)", true);
  expect_bad("train --dataset imagenet", "--dataset: unknown data set 'imagenet' (valid: fashion-mnist, synthetic)", true);
  expect_bad(base + "--model bert_base", "not supported by the trainer", true);
  {  // fine-tuning with frozen parameters: fuseplan prices it, the trainer does not run it
    nlohmann::json frozen =
        nlohmann::json::parse(run("show resnet18 --resolution 28 --channels 1 --classes 10 --json").out);
    frozen["layers"][0]["params"][0]["frozen"] = true;
    write(tmp("frozen-stem.json"), frozen.dump());
    expect_bad(base + "--model " + tmp("frozen-stem.json"),
               "model resnet18: 1 parameter tensors are frozen (conv1.weight, ...): the trainer trains every parameter",
               true);
    // A model of several inputs: the same, the trainer feeds one.
    nlohmann::json two =
        nlohmann::json::parse(run("show resnet18 --resolution 28 --channels 1 --classes 10 --json").out);
    two["extra_inputs"] = {{{"name", "weights"}, {"shape", {10}}}};
    write(tmp("two-inputs.json"), two.dump());
    expect_bad(base + "--model " + tmp("two-inputs.json"),
               "model resnet18: takes 2 inputs (weights, ...): the trainer feeds one", true);
  }
  expect_bad(base + "--model resnet9", "unknown model 'resnet9'", true);
  expect_bad(base + "--batch-per-gpu 0", "--batch-per-gpu", true);
  expect_bad(base + "--batch-per-gpu 1000", "larger than the data set", true);
  expect_bad(base + "--lr -1", "--lr: must be > 0", true);
  expect_bad(base + "--resume " + tmp("nothing.bin"), "cannot open", true);
  expect_bad(base + "--checkpoint-every 5", "--checkpoint-every: needs --checkpoint FILE", true);
  expect_bad("train --data-dir /nonexistent", "dataset-fashion-mnist", true);
  expect_bad("fly", "unknown command 'fly' (valid: train, run, sweep)", true);
  expect_bad(base + "--backend tpu", "--backend: unknown backend 'tpu' (valid: cpu, cuda)", true);
  expect_bad(base + "--device 0", "--device: only with --backend cuda", true);
  // Refused before any device is looked for, so the same with and without a GPU.
  expect_bad(base + "--backend cuda --conv im2col", "--conv: only with --backend cpu", true);
  expect_bad(base + "--conv-algos find", "--conv-algos: only with --backend cuda", true);
  expect_bad(base + "--conv-algo-file " + tmp("algos.json"), "--conv-algo-file: only with --backend cuda", true);
  expect_bad(base + "--emulate-half --precision fp16", "--emulate-half: only with --backend cuda", true);
  expect_bad(base + "--cuda-graphs", "--cuda-graphs: only with --backend cuda", true);
  expect_bad(base + "--backend cuda --cuda-graphs --profile " + tmp("p.json"), "--cuda-graphs: not with --profile", true);
  expect_bad(base + "--backend cuda --emulate-half --precision fp32", "--emulate-half: only with --precision fp16 or bf16",
             true);
  expect_bad(base + "--backend cuda --conv-algos fastest",
             "--conv-algos: unknown choice 'fastest' (valid: heuristic, find)", true);
  write(tmp("bad-algos.json"), R"({"schema": "fuseplan.conv-algos/1", "convolutions": [{"shape": {"n": 8}}]})");
  expect_bad(base + "--backend cuda --conv-algo-file " + tmp("bad-algos.json"),
             tmp("bad-algos.json") + ": $.convolutions[0].shape.c", true);
  expect_bad(base + "--backend cuda --conv-algo-file " + std::filesystem::temp_directory_path().string(),
             "--conv-algo-file: " + std::filesystem::temp_directory_path().string() + ": is a directory", true);
  // Every output file is checked before the run, not when it ends.
  expect_bad(base + "--metrics /nonexistent/m.json", "--metrics: /nonexistent/m.json: cannot write (directory "
             "/nonexistent missing)", true);
  expect_bad(base + "--profile " + std::filesystem::temp_directory_path().string(), "--profile: " +
             std::filesystem::temp_directory_path().string() + ": is a directory", true);
  expect_bad(base + "--checkpoint ''", "--checkpoint: an empty file name", true);
  // Two output flags naming one file: one would overwrite the other (flags checked in the
  // command's order, not the line's).
  std::filesystem::remove(tmp("twice.json"));
  expect_bad(base + "--profile " + tmp("twice.json") + " --metrics " + tmp("twice.json"),
             "--profile: " + tmp("twice.json") + ": the file --metrics writes (give another name)", true);
  CHECK(!std::filesystem::exists(tmp("twice.json")));
  // A flag given is a value: no 0 or -1 standing for "no limit" or "never".
  expect_bad(base + "--max-steps 0", "--max-steps: must be > 0 (got 0; leave the flag out for its default)", true);
  expect_bad(base + "--max-steps -1", "--max-steps: must be > 0 (got -1", true);
  expect_bad(base + "--checkpoint-every 0 --checkpoint x", "--checkpoint-every: must be > 0 (got 0", true);
  expect_bad(base + "--epochs nan", "--epochs: must be in (0, 1e+06] (got nan)", true);
  expect_bad(base + "--epochs inf", "--epochs: must be in (0, 1e+06] (got inf)", true);  // trained 1 step
  expect_bad(base + "--label-smoothing 2", "--label-smoothing: must be in [0, 1)", true);
  expect_bad(base + "--warmup-epochs -1", "--warmup-epochs: must be in [0, --epochs]", true);
  for (const char* flag : {"--threads", "--resolution", "--channels", "--classes"})
    expect_bad(base + flag + " 0", std::string(flag) + ": must be > 0 (got 0; leave the flag out for its default)", true);
  // What cannot fit in memory is refused before anything is allocated, not a std::bad_alloc.
  expect_bad(base + "--resolution 100000", "--resolution: must be in [1, 8192] (got 100000)", true);
  expect_bad(base + "--resolution 8192",
             "--model resnet18, --resolution 8192, --batch-per-gpu 64: the network (resnet18: activations and their "
             "gradients at this batch, weights) needs 5248.2 GiB, more than this machine's",
             true);
  expect_bad("train --dataset synthetic --synthetic-size 9223372036854775807",
             "--synthetic-size 9223372036854775807, --resolution 28: the synthetic data set (one byte per pixel) needs", true);
  expect_bad(base + "--resume " + tmp(""), ": is a directory (give a file)", true);
}

namespace {
// fuseplan-exec under mpiexec with `np` ranks, one compute thread each.
Run run_mpi(int np, const std::string& args) {
  return run_env("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 FUSEPLAN_PROGRESS=0", args, true,
                 std::string(FUSEPLAN_MPIEXEC) + " -np " + std::to_string(np) + " --oversubscribe " + FUSEPLAN_EXEC_BIN);
}
}  // namespace

TEST_CASE("cli: fuseplan-exec run executes a plan on 2 ranks and refuses mismatches", "[exec]") {
  const std::string plan = tmp("run-plan.json"), report = tmp("run-report.json"), trace = tmp("run-trace.json");
  const std::string model = "--model resnet18 --resolution 16 --channels 1 --classes 10";
  Run p = run("predict " + model + " --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 "
              "--buckets threshold:1MiB --out " + plan);
  REQUIRE(p.code == 0);
  const auto planned = nlohmann::json::parse(std::ifstream(plan));
  const std::string data = " --dataset synthetic --synthetic-size 128 --resolution 16";
  for (const char* progress : {"thread", "poll"}) {
    CAPTURE(progress);
    std::filesystem::remove(report);
    Run r = run_mpi(2, "run --plan " + plan + data + " --iterations 3 --warmup 1 --progress " + progress +
                           " --report " + report + " --trace " + trace + " --profile " + tmp("run-profile.json"));
    INFO(r.out);
    REQUIRE(r.code == 0);
    CHECK_THAT(r.out, Catch::Contains("resnet18 x 2 ranks") && Catch::Contains("rank imbalance: forward + backward differ by"));
    const auto rep = nlohmann::json::parse(std::ifstream(report));
    CHECK(rep.at("source") == "measured");
    CHECK(rep.at("gpus") == 2);
    // The phases are one rank's per step (the critical one): they make up most of the
    // iteration (the slowest rank's mean step) and never much more; on a loaded machine
    // the ranks' steps drift apart, hence the wide bounds.
    double phases = 0;
    for (const char* k : {"data_wait_s", "forward_s", "backward_s", "exposed_comm_s", "optimizer_s"}) {
      CHECK(rep.at(k).get<double>() >= 0);
      phases += rep.at(k).get<double>();
    }
    CHECK(phases > 0.5 * rep.at("iteration_s").get<double>());
    // Each step's phases are its critical rank's, whose step they are part of, so their
    // mean is at most the mean of the per-step slowest times the run prints (the report's
    // iteration, the slowest rank's mean step, can be below it when the ranks take turns
    // being slow).
    std::istringstream lines(r.out);
    std::string line;
    double steps_ms = 0;
    int steps = 0;
    for (bool table = false; std::getline(lines, line);) {
      if (line.find("ms (slowest rank)") != std::string::npos) table = true;
      else if (table && line.find_first_not_of(' ') == std::string::npos) break;
      else if (table) {
        std::istringstream row(line);
        int k = 0;
        double ms = 0;
        if (row >> k >> ms) steps_ms += ms, ++steps;
      }
    }
    REQUIRE(steps == 3);
    CHECK(phases <= steps_ms / steps * 1e-3 * 1.001 + 1e-4);
    REQUIRE(rep.at("buckets").size() == planned.at("buckets").size());
    for (const auto& b : rep.at("buckets")) {
      CHECK(b.at("start_s").get<double>() >= b.at("ready_s").get<double>());
      CHECK(b.at("end_s").get<double>() > b.at("start_s").get<double>());
    }
    const auto tr = nlohmann::json::parse(std::ifstream(trace));
    std::set<int> ranks_with_allreduce;
    for (const auto& e : tr.at("traceEvents"))
      if (e.value("cat", "") == "allreduce") ranks_with_allreduce.insert(e.at("pid").get<int>());
    CHECK(ranks_with_allreduce == std::set<int>{0, 1});
  }
  // The measurement against the prediction and the simulation of the same plan.
  Run v = run("verify --plan " + plan + " --measured " + report);
  INFO(v.out);
  CHECK(v.code == 0);
  CHECK_THAT(v.out, Catch::Contains("pred err") && Catch::Contains("bucket 0 start"));
  CHECK(run("verify --plan " + plan + " --measured " + plan).code == 2);  // not a report
  // A run whose compute ran slower than when profiled: verify says how much (forward has
  // no communication) and predicts again at that speed.
  Run pj = run("verify --no-sim --json --plan " + plan + " --measured " + report + " --profile " + tmp("run-profile.json"));
  INFO(pj.out);
  REQUIRE(pj.code == 0);
  double fwd = 0, iter = 0;
  const auto table = nlohmann::json::parse(pj.out);
  for (const auto& row : table.at("rows")) {
    if (row.at("metric") == "forward") fwd = row.at("predicted_s");
    if (row.at("metric") == "iteration") iter = row.at("predicted_s");
  }
  REQUIRE(fwd > 0);
  auto slow = nlohmann::json::parse(std::ifstream(report));
  slow["forward_s"] = 1.5 * fwd;
  std::ofstream(tmp("slow-report.json")) << slow.dump();
  Run sj = run("verify --no-sim --json --plan " + plan + " --measured " + tmp("slow-report.json") + " --profile " +
               tmp("run-profile.json"));
  INFO(sj.out);
  REQUIRE(sj.code == 0);
  const auto at = nlohmann::json::parse(sj.out).at("at_measured_compute_speed");
  CHECK(at.at("compute_scale").get<double>() == Approx(1.5));
  CHECK(at.at("iteration_s").get<double>() > iter * 1.3);
  // run --verify: the same table after the run, predicted with the run's own profile;
  // its temporary report and profile are gone afterwards.
  Run rv = run_mpi(2, "run --plan " + plan + data + " --iterations 2 --warmup 1 --verify");
  INFO(rv.out);
  REQUIRE(rv.code == 0);
  CHECK_THAT(rv.out, Catch::Contains("throughput") && Catch::Contains("fuseplan verify: resnet18 x 2 GPUs") &&
                         Catch::Contains("pred err") && Catch::Contains("bucket 0 start"));
  CHECK(rv.out.find("pred err") > rv.out.find("throughput"));
  for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
    CHECK(e.path().filename().string().rfind("fuseplan-run-", 0) != 0);
  // The measured report: schema, goal and time to train, read back losslessly by verify.
  const auto measured = nlohmann::json::parse(std::ifstream(report));
  CHECK(measured.at("schema") == "fuseplan.report/1");
  CHECK_THAT(measured.at("goal").get<std::string>(), Catch::Contains("assumed"));  // 16x16 inputs: no known data set
  CHECK(measured.at("time_to_train_s").get<double>() > 0);
  // Event names are the predicted ones (trace_name), with the step as the iteration.
  std::set<std::string> names;
  for (const auto& e : measured.at("timeline")) {
    CHECK(e.at("iteration").get<int>() >= 1);
    names.insert(e.at("name").get<std::string>());
  }
  CHECK(names.count("conv1 (bwd)") == 1);
  CHECK(names.count("optimizer") == 1);
  CHECK(names.count("data wait") == 1);
  // Mismatches are refused before training, with one line from one rank.
  Run n = run_mpi(3, "run --plan " + plan + data);
  CHECK(n.code == 2);
  CHECK_THAT(n.out, Catch::Contains("made for 2 GPUs, but this job has 3 ranks"));
  Run m = run_mpi(2, "run --plan " + plan + data + " --model vgg16");
  CHECK(m.code == 2);
  CHECK_THAT(m.out, Catch::Contains(plan));
  Run b = run_mpi(2, "run --plan " + plan + data + " --batch-per-gpu 4");
  CHECK(b.code == 2);
  CHECK_THAT(b.out, Catch::Contains("--batch-per-gpu 4 disagrees"));
  // Said once (by rank 0), whatever mpiexec adds about the exit code.
  CHECK(b.out.find("disagrees") == b.out.rfind("disagrees"));
  // Epochs too few for a measured step: refused at set-up, not after the run (with MPI_Abort).
  Run e = run_mpi(2, "run --plan " + plan + data + " --warmup 1 --epochs 0.0000001");
  CHECK(e.code == 2);
  CHECK_THAT(e.out, Catch::Contains("--epochs: 1e-07 epochs make 1 steps, none after the 1 of --warmup"));
  CHECK_THAT(e.out, !Catch::Contains("MPI_ABORT"));
  Run g = run_mpi(2, "run --plan " + plan + data + " --progress spin");
  CHECK(g.code == 2);
  CHECK_THAT(g.out, Catch::Contains("valid: poll, thread"));
  Run c = run_mpi(2, "run --plan " + plan + data + " --comm carrier-pigeon");
  CHECK(c.code == 2);
  CHECK_THAT(c.out, Catch::Contains("valid: nccl, mpi"));
  Run nc = run_mpi(2, "run --plan " + plan + data + " --comm nccl");
  CHECK(nc.code == 2);
  CHECK_THAT(nc.out, Catch::Contains("--comm nccl: needs --backend cuda"));
}

TEST_CASE("cli: fuseplan-exec run makes a packed plan's copies and measures the copies back", "[exec]") {
  const std::string model = "--model resnet18 --resolution 16 --channels 1 --classes 10";
  const std::string data = " --dataset synthetic --synthetic-size 128 --resolution 16 --iterations 3 --warmup 1";
  for (const char* on : {"compute", "comm"}) {
    CAPTURE(on);
    const std::string name = std::string("pack-") + on;
    const std::string plan = tmp(name + "-plan.json"), report = tmp(name + ".json");
    REQUIRE(run("predict " + model + " --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 "
                "--buckets threshold:1MiB --pack --pack-on " + on + " --out " + plan).code == 0);
    Run r = run_mpi(2, "run --plan " + plan + data + " --report " + report);
    INFO(r.out);
    REQUIRE(r.code == 0);
    const auto rep = nlohmann::json::parse(std::ifstream(report));
    if (std::string(on) == "compute") {
      // Copied back after backward, in the wait after it: a part of the exposed time.
      REQUIRE(rep.contains("copy_back_s"));
      CHECK(rep.at("copy_back_s").get<double>() > 0);
      CHECK(rep.at("copy_back_s").get<double>() <= rep.at("exposed_comm_s").get<double>());
      Run v = run("verify --no-sim --plan " + plan + " --measured " + report);
      INFO(v.out);
      CHECK(v.code == 0);
      CHECK_THAT(v.out, Catch::Contains("of which copies back"));
    } else {
      CHECK(!rep.contains("copy_back_s"));
    }
  }
}

TEST_CASE("cli: fuseplan-exec run --schedule runs a schedule's partitions and reduce-scatter + all-gather on 2 ranks", "[exec]") {
  const std::string model = "--model resnet18 --resolution 16 --channels 1 --classes 10";
  const std::string sched = tmp("run-schedule.json");
  Run s = run("schedule " + model + " --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 --strategy dear "
              "--out " + sched);
  REQUIRE(s.code == 0);
  const std::string data = " --dataset synthetic --synthetic-size 64 --resolution 16 --iterations 2 --warmup 1";
  Run r = run_mpi(2, "run --schedule " + sched + data);
  INFO(r.out);
  REQUIRE(r.code == 0);
  // A reduce-scatter and an all-gather per partition, measured; the schedule's prediction beside it.
  const auto j = nlohmann::json::parse(std::ifstream(sched));
  CHECK(count_of(r.out, " ring ") >= 2 * j["bounds"].size());
  CHECK_THAT(r.out, Catch::Contains("the schedule's prediction (local-cpu, dear)"));
  CHECK_THAT(r.out, Catch::Contains("as run here (each layer's update and forward after its own sums)"));
  CHECK_THAT(r.out, Catch::Contains("with this run's per-layer profile"));
  // Every message predicted beside its measured bucket.
  CHECK_THAT(r.out, Catch::Contains("each message, predicted as run here with the run's profile and measured"));
  CHECK_THAT(r.out, Catch::Contains("over " + std::to_string(2 * j["bounds"].size()) + " messages"));
  CHECK(count_of(r.out, " reduce-scatter ") == j["bounds"].size());
  // Gated per layer, each step is measured with the buckets of the step before it.
  // A sharded schedule runs its sharded step on the cpu backend.
  const std::string fsdp = tmp("run-schedule-fsdp.json");
  REQUIRE(run("schedule " + model + " --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 --strategy fsdp "
              "--out " + fsdp).code == 0);
  Run z = run_mpi(2, "run --schedule " + fsdp + data);
  INFO(z.out);
  CHECK(z.code == 0);
  CHECK_THAT(z.out, Catch::Contains("as run here (the shard's update after the reduce-scatters, each layer's forward "
                                    "after its all-gathered parameters)"));
  Run k = run_mpi(2, "run --schedule " + fsdp + data + " --checkpoint-every 1 --checkpoint " + tmp("never.ckpt"));
  CHECK(k.code == 2);
  CHECK_THAT(k.out, Catch::Contains("--checkpoint-every: a sharded optimizer step keeps 1/N of the optimizer state"));
  Run w = run_mpi(2, "run --schedule " + sched + " --dataset synthetic --synthetic-size 64 --resolution 16 --warmup 0");
  CHECK(w.code == 2);
  CHECK_THAT(w.out, Catch::Contains("--warmup: per-layer gating measures each step with the step before it: needs >= 1"));
  expect_bad("run --schedule " + sched + " --plan " + sched + data, "--plan or --schedule: give one", true);
  expect_bad("run" + data, "--plan or --schedule: give one", true);
  expect_bad("run --schedule " + sched + data + " --verify", "--verify: reads plans", true);
  auto broken = j;
  broken["bounds"].back() = broken["bounds"].back().get<int64_t>() - 1;
  const std::string bad = tmp("run-schedule-bad.json");
  write(bad, broken.dump());
  Run b = run_mpi(2, "run --schedule " + bad + data);  // checked against the model the ranks build
  CHECK(b.code == 2);
  CHECK_THAT(b.out, Catch::Contains("--schedule " + bad + ": $.bounds: the last partition must end at"));
  broken = j;
  broken["gate"] = "sometimes";
  write(bad, broken.dump());
  expect_bad("run --schedule " + bad + data, "$.gate: unknown value 'sometimes' (valid: barrier, per-layer)", true);
}

TEST_CASE("cli: a plan made for a model file carries the file relative to the plan, and train and run take the file", "[exec]") {
  namespace fs = std::filesystem;
  const fs::path root = tmp("travel");
  fs::remove_all(root);
  fs::create_directories(root / "models");
  fs::create_directories(root / "plans");
  const std::string model = (root / "models" / "net.json").string(), plan = (root / "plans" / "p.json").string();
  write(model, run_stdout("show resnet18 --resolution 16 --channels 1 --classes 10 --json").out);
  REQUIRE(run("tune --model " + model + " --cluster local-cpu --gpus 2 --batch-per-gpu 8 --precision fp32 --out " + plan).code == 0);
  const auto planned = nlohmann::json::parse(std::ifstream(plan));
  CHECK(planned.at("model").at("file") == "../models/net.json");
  CHECK_FALSE(planned.at("model").contains("options"));
  // From another directory, and after the two directories moved together.
  const fs::path moved = tmp("travel-moved");
  fs::remove_all(moved);
  fs::rename(root, moved);
  const std::string moved_plan = (moved / "plans" / "p.json").string();
  const Run p = run_env("cd / && FUSEPLAN_PROGRESS=0", "predict --plan " + moved_plan);
  INFO(p.out);
  CHECK(p.code == 0);
  CHECK_THAT(p.out, Catch::Contains("resnet18 on local-cpu"));
  const std::string moved_model = (moved / "models" / "net.json").string();
  const Run t = run_env("FUSEPLAN_PROGRESS=0", "train --model " + moved_model + " --dataset synthetic --synthetic-size 64 "
                        "--batch-per-gpu 8 --max-steps 2 --no-eval --quiet", true, FUSEPLAN_EXEC_BIN);
  INFO(t.out);
  CHECK(t.code == 0);
  CHECK(run_exec("train --model " + moved_model + " --resolution 28").code == 2);
  const Run r = run_mpi(2, "run --plan " + moved_plan + " --dataset synthetic --synthetic-size 64 --iterations 2 --warmup 1");
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("resnet18 x 2 ranks"));
}

TEST_CASE("cli: a rank killed or stopped at set-up or during steps ends the job within --timeout, the rank named", "[exec]") {
  const std::string plan = tmp("stop-plan.json");
  REQUIRE(run("predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu --gpus 2 "
              "--batch-per-gpu 8 --precision fp32 --buckets single --out " + plan).code == 0);
  const std::string job = std::string(FUSEPLAN_MPIEXEC) + " -np 2 --oversubscribe -x FUSEPLAN_FAULT_STOP_RANK -x "
                          "FUSEPLAN_FAULT_KILL_RANK " + FUSEPLAN_EXEC_BIN + " run --plan " + plan +
                          " --dataset synthetic --synthetic-size 128 --resolution 16 --iterations 100000 --quiet --timeout 3";
  const std::string env = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 ";
  // During steps: 5 s after the start (set-up takes under 1 s), rank 1, the newest child
  // of mpiexec, gets the signal from outside.
  auto during_steps = [&](const std::string& signal) {
    return env + "timeout 100 sh -c '" + job + " & pid=$!; sleep 5; pkill -" + signal + " -n -P $pid; wait $pid'";
  };
  // `timeout 100` answers 124 if the job hung; the bound asked of the job is the 3 s
  // timeout plus start-up and MPI's abort, well under a minute (after the signal).
  struct Case {
    std::string what, shell, says, or_says;  // or_says: the other wait the stop may land in
    double signal_at_s;
  };
  const std::vector<Case> cases = {
      {"rank 1 stopped at set-up", env + "FUSEPLAN_FAULT_STOP_RANK=1 timeout 100 " + job,
       "rank 0: no answer from rank 1 within 3.0 s while the ranks agreed on their set-up", "", 0},
      {"rank 0 stopped at set-up", env + "FUSEPLAN_FAULT_STOP_RANK=0 timeout 100 " + job,
       "rank 1: no answer from rank 0 within 3.0 s while the ranks agreed on their set-up", "", 0},
      {"rank 1 stopped during steps", during_steps("STOP"),
       // Rank 0 waits either in a bucket's allreduce or in one of the step's world
       // collectives, a loss or overflow sum; both name the silent rank.
       "the allreduce of bucket 0 (ring) got no answer from rank 1 in 3.0",
       "rank 0: no answer from rank 1 within 3.0 s in a sum across the ranks", 5},
      // A dead rank is seen by mpiexec, which ends the job and names it.
      {"rank 1 killed at set-up", env + "FUSEPLAN_FAULT_KILL_RANK=1 timeout 100 " + job,
       "process rank 1 with PID", "", 0},
      {"rank 0 killed at set-up", env + "FUSEPLAN_FAULT_KILL_RANK=0 timeout 100 " + job,
       "process rank 0 with PID", "", 0},
      {"rank 1 killed during steps", during_steps("KILL"), "process rank 1 with PID", "", 5},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const auto start = std::chrono::steady_clock::now();
    const Run r = run_env("", c.shell, true, "");
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    INFO(r.out);
    CHECK(r.code != 0);
    CHECK(r.code != 124);
    CHECK(took - c.signal_at_s < 60);
    if (c.or_says.empty()) CHECK_THAT(r.out, Catch::Contains(c.says));
    else CHECK_THAT(r.out, Catch::Contains(c.says) || Catch::Contains(c.or_says));
    if (c.what.find("killed") != std::string::npos) CHECK_THAT(r.out, Catch::Contains("signal 9 (Killed)"));
  }
}

TEST_CASE("cli: an allreduce sweep on 2 ranks calibrates a cluster file that predict then uses", "[exec]") {
  const std::string sweep = tmp("sweep.json"), cal = tmp("calibrated.json");
  Run w = run_mpi(2, "sweep --algorithm ring,mpi --sizes 4K:256K --iterations 3 --warmup 1 --out " + sweep);
  INFO(w.out);
  REQUIRE(w.code == 0);
  CHECK_THAT(w.out, Catch::Contains("busbw"));
  // Three iterations of small sizes on a loaded 2-core machine can be too noisy for a
  // bandwidth term in some range; the flow, not the fit's quality, is tested here.
  Run c = run("calibrate --cluster local-cpu --sweep " + sweep + " --holdout --accept-degenerate --out " + cal);
  INFO(c.out);
  REQUIRE(c.code == 0);
  CHECK_THAT(c.out, Catch::Contains("holdout mean"));
  const auto j = nlohmann::json::parse(std::ifstream(cal));
  CHECK(j.at("calibrated").contains("ring"));
  CHECK(j.at("calibrated").contains("mpi"));
  CHECK(run("predict --model resnet18 --cluster " + cal + " --gpus 2 --algorithm ring").code == 0);
  expect_bad("calibrate --sweep " + sweep + " --nccl-tests " + sweep, "give --sweep or --nccl-tests, not both");
  expect_bad("calibrate",
             "give --sweep, --nccl-tests, --plan with --measured, --profile with --model, or --throughput");
  Run bad = run_mpi(2, "sweep --algorithm ring,spin");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.out, Catch::Contains("unknown algorithm 'spin'"));
  // Sizes past the node's memory and counts that would run for days are refused up front.
  const Run big = run_mpi(2, "sweep --sizes 4K:900000G");
  CHECK(big.code == 2);
  CHECK_THAT(big.out, Catch::Contains("--sizes 4K:900000G: the largest message on this node's 2 ranks needs 3600000.0 GiB"));
  const Run many = run_mpi(2, "sweep --iterations 100000000");
  CHECK(many.code == 2);
  CHECK_THAT(many.out, Catch::Contains("--warmup/--iterations: at most 100000"));
}

TEST_CASE("cli: sweep --comm nccl is refused in one line where it cannot run, and its flags are checked", "[exec]") {
  // No GPU here (CI): the build without NCCL says so, the build with it finds no device.
  const Run r = run_exec("sweep --comm nccl --sizes 4K:64K");
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Catch::Contains("--comm nccl: no CUDA device on this machine") ||
                        Catch::Contains("--comm nccl: this build has no NCCL"));
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  expect_bad("sweep --comm nccl --algorithm ring", "--algorithm: with --comm nccl it is nccl, NCCL's own choice", true);
  expect_bad("sweep --comm tcp", "--comm: unknown 'tcp' (valid: mpi, nccl)", true);
  expect_bad("sweep --device 1", "--device: only with --comm nccl", true);
}

TEST_CASE("cli: calibrate prints NCCL's own estimate beside the measured sweep and fuseplan's prediction") {
  // A sweep as `fuseplan-exec sweep --comm nccl` writes it on 8 GPUs of one server: the
  // measurements 10 % above NCCL's estimate.
  const std::string sweep = tmp("nccl-sweep.json");
  nlohmann::json points = nlohmann::json::array();
  for (double mib : {1.0, 4.0, 16.0, 64.0, 256.0}) {
    const double bytes = mib * (1 << 20), estimate = 20e-6 + bytes / 150e9;
    points.push_back({{"algorithm", "nccl"}, {"bytes", bytes}, {"seconds", estimate * 1.1}, {"iterations", 20},
                      {"nccl_estimate_seconds", estimate}});
  }
  nlohmann::json j{{"schema", "fuseplan.sweep/1"}, {"ranks", 8}, {"per_node", 8}, {"precision", "fp32"},
                   {"host", "fuseplan-exec sweep --comm nccl"}, {"points", points}};
  std::ofstream(sweep) << j.dump(1);
  const Run c = run("calibrate --cluster dgx-a100 --sweep " + sweep + " --accept-degenerate");
  INFO(c.out);
  REQUIRE(c.code == 0);
  CHECK_THAT(c.out, Catch::Contains("nccl on 8 ranks: measured against fuseplan (cluster dgx-a100 as given, and "
                                    "fitted) and NCCL's own estimate (ncclGroupSimulateEnd)"));
  // 1 MiB: 20 us + 1048576 / 150e9 s = 26.99 us estimated, 29.69 us measured: -9.1 %.
  CHECK_THAT(c.out, Catch::Contains("29.69") && Catch::Contains("26.99  -9.1 %"));
  const std::string table = c.out.substr(c.out.find("mean |error|"));
  CHECK_THAT(table, Catch::Contains("9.1 %"));
  // Without estimates (a CPU sweep) there is no such table.
  for (auto& pt : j["points"]) pt.erase("nccl_estimate_seconds");
  std::ofstream(sweep) << j.dump(1);
  const Run plain = run("calibrate --cluster dgx-a100 --sweep " + sweep + " --accept-degenerate");
  REQUIRE(plain.code == 0);
  CHECK_THAT(plain.out, !Catch::Contains("NCCL's own estimate"));
  j["points"][0]["nccl_estimate_seconds"] = -1;
  std::ofstream(sweep) << j.dump(1);
  expect_bad("calibrate --cluster dgx-a100 --sweep " + sweep, "$.points[0].nccl_estimate_seconds");
}

TEST_CASE("cli: calibrate --plan --measured fits comm_compute_sharing and dispatch_overhead_us into the cluster file") {
  // The "measurements" are predictions on local-cpu (sharing 0.83, dispatch 351 us): the
  // fit must find them again, from a cluster file without them.
  const std::string plan = tmp("overlap-plan.json"), measured = tmp("overlap-measured.json"),
                    pt = tmp("overlap-pt.json"), pt_measured = tmp("overlap-pt-measured.json"),
                    bare = tmp("overlap-bare.json"), out = tmp("overlap-cal.json"), other = tmp("overlap-other.json");
  const std::string shape = "predict --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster local-cpu "
                            "--gpus 2 --batch-per-gpu 16 --precision fp32 --json ";
  Run p = run(shape + "--buckets splits:20,40 --out " + plan);
  REQUIRE(p.code == 0);
  std::ofstream(measured) << p.out;
  Run q = run(shape + "--buckets per-tensor --out " + pt);
  REQUIRE(q.code == 0);
  std::ofstream(pt_measured) << q.out;
  auto c = nlohmann::json::parse(std::ifstream(std::string(FUSEPLAN_CONFIG_DIR) + "/clusters/local-cpu.json"));
  for (const char* key : {"comm_compute_sharing", "dispatch_overhead_us"}) {
    c.erase(key);
    c["provenance"].erase(key);
  }
  std::ofstream(bare) << c.dump(2);
  // Both runs fitted from the bare file, with `fit` (--fit ...), into `to`.
  auto fit_both = [&](const std::string& fit, const std::string& to) {
    return run("calibrate --cluster " + bare + " --plan " + plan + " --measured " + measured + " --plan " + pt +
               " --measured " + pt_measured + fit + " --out " + to);
  };
  Run both = fit_both("", out);
  INFO(both.out);
  REQUIRE(both.code == 0);
  CHECK_THAT(both.out, Catch::Contains("comm_compute_sharing = 0.830 (fitted), dispatch_overhead_us = 351.0 (fitted)"));
  const auto j = nlohmann::json::parse(std::ifstream(out));
  CHECK(j.at("comm_compute_sharing").get<double>() == Approx(0.83));
  CHECK(j.at("dispatch_overhead_us").get<double>() == Approx(351));
  CHECK(j.at("provenance").contains("dispatch_overhead_us"));
  // One run: sharing alone, the dispatch kept at the file's.
  Run one = run("calibrate --cluster local-cpu --plan " + plan + " --measured " + measured);
  INFO(one.out);
  REQUIRE(one.code == 0);
  CHECK_THAT(one.out, Catch::Contains("comm_compute_sharing = 0.830 (fitted), dispatch_overhead_us = 351.0 (kept)"));
  expect_bad("calibrate --plan " + plan, "give one --measured per --plan (1 plans, 0 measured)");
  expect_bad("calibrate --plan " + plan + " --measured " + measured + " --fit sharing,speed", "--fit: unknown 'speed'");
  // Refused before the communication fit prints: the bad name is the only line.
  const std::string log = std::string(FUSEPLAN_TEST_DATA) + "/nccl-tests/h100-ndr-2x8.txt";
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-h100 --fit-sizes 64K:16G --plan " + plan +
                 " --measured " + measured + " --fit speed",
             "--fit: unknown 'speed'");
  expect_bad("calibrate --cluster local-cpu --profile x.json --model resnet18 --fit sharing",
             "--fit: only with --plan and --measured");
  REQUIRE(run("predict --model resnet50 --cluster local-cpu --gpus 2 --out " + other).code == 0);
  expect_bad("calibrate --plan " + other + " --measured " + measured, "measures another run than --plan");
  CHECK(!std::filesystem::exists(tmp("never-written.json")));
  expect_bad("calibrate --plan " + other + " --measured " + measured + " --out " + tmp("never-written.json"),
             "measures another run");
  CHECK(!std::filesystem::exists(tmp("never-written.json")));
  // The allreduces' side apart: local-cpu has none, so the fit finds 0.83 again, and the
  // file says so.
  const std::string apart = tmp("overlap-apart.json");
  Run ar = fit_both(" --fit sharing,dispatch,allreduce-sharing", apart);
  INFO(ar.out);
  REQUIRE(ar.code == 0);
  CHECK_THAT(ar.out, Catch::Contains("allreduce_sharing = 0.830 (fitted)"));
  const auto ja = nlohmann::json::parse(std::ifstream(apart));
  CHECK(ja.at("allreduce_sharing").get<double>() == Approx(0.83));
  CHECK(ja.at("provenance").contains("allreduce_sharing"));
  // The bandwidth factor: runs "measured" on local-cpu with its allreduces' bytes 1.5
  // times slower, fitted from local-cpu itself.
  auto slow = nlohmann::json::parse(std::ifstream(std::string(FUSEPLAN_CONFIG_DIR) + "/clusters/local-cpu.json"));
  slow["job_bandwidth_factor"] = 1.5;
  const std::string slow_file = tmp("overlap-slow.json"), slow_measured = tmp("overlap-slow-measured.json"),
                    bw = tmp("overlap-bw.json");
  std::ofstream(slow_file) << slow.dump(2);
  Run s = run("predict --plan " + plan + " --cluster " + slow_file + " --json");
  REQUIRE(s.code == 0);
  std::ofstream(slow_measured) << s.out;
  Run fb = run("calibrate --cluster local-cpu --plan " + plan + " --measured " + slow_measured +
               " --fit bandwidth --out " + bw);
  INFO(fb.out);
  REQUIRE(fb.code == 0);
  CHECK_THAT(fb.out, Catch::Contains("dispatch_overhead_us = 351.0 (kept), job_bandwidth_factor = 1.500 (fitted)"));
  const auto jb = nlohmann::json::parse(std::ifstream(bw));
  CHECK(jb.at("job_bandwidth_factor").get<double>() == Approx(1.5));
  CHECK(jb.at("provenance").contains("job_bandwidth_factor"));
  // As swept (the first runs), the factor comes out 1, which the file leaves out.
  const std::string one_file = tmp("overlap-bw-one.json");
  Run f1 = run("calibrate --cluster local-cpu --plan " + plan + " --measured " + measured + " --fit bandwidth --out " +
               one_file);
  REQUIRE(f1.code == 0);
  CHECK_THAT(f1.out, Catch::Contains("job_bandwidth_factor = 1.000 (fitted)"));
  const auto j1 = nlohmann::json::parse(std::ifstream(one_file));
  CHECK_FALSE(j1.contains("job_bandwidth_factor"));
  CHECK_FALSE(j1.at("provenance").contains("job_bandwidth_factor"));
}

TEST_CASE("cli: verify says when a measured iteration holds time outside its phases") {
  // The "measurement" is the prediction itself; then the same with 20 % more iteration
  // than its phases, as when one rank waits for another outside the critical rank's phases.
  const std::string plan = tmp("outside-plan.json"), same = tmp("outside-same.json"),
                    waited = tmp("outside-waited.json");
  Run p = run("predict --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster local-cpu --gpus 2 "
              "--batch-per-gpu 16 --precision fp32 --json --buckets splits:20,40 --out " + plan);
  REQUIRE(p.code == 0);
  std::ofstream(same) << p.out;
  auto j = nlohmann::json::parse(p.out);
  const double iteration = j.at("iteration_s").get<double>();
  j["iteration_s"] = 1.2 * iteration;
  std::ofstream(waited) << j.dump();
  Run a = run("verify --no-sim --plan " + plan + " --measured " + same);
  INFO(a.out);
  REQUIRE(a.code == 0);
  CHECK_THAT(a.out, !Catch::Contains("outside the phases"));
  Run b = run("verify --no-sim --plan " + plan + " --measured " + waited);
  INFO(b.out);
  REQUIRE(b.code == 0);
  CHECK_THAT(b.out, Catch::Contains("outside the phases: the measured iteration is"));
  Run bj = run("verify --no-sim --json --plan " + plan + " --measured " + waited);
  REQUIRE(bj.code == 0);
  const auto o = nlohmann::json::parse(bj.out).at("outside_phases_s");
  CHECK(o.at("measured").get<double>() - o.at("predicted").get<double>() == Approx(0.2 * iteration).epsilon(1e-6));
}

TEST_CASE("cli: verify and calibrate predict a measured run with the casts it made, not the plan's") {
  // fuseplan-exec's exchanges and PlanDDP cast 16-bit buckets on comm whatever the plan
  // says, and their reports say so ($.cast). The "measurement" here is the plan's own
  // prediction, with and without that key.
  const std::string plan = tmp("asrun-plan.json"), plain = tmp("asrun-plain.json"), cast = tmp("asrun-cast.json"),
                    fp32 = tmp("asrun-fp32.json"), fp32_cast = tmp("asrun-fp32-cast.json"), bad = tmp("asrun-bad.json");
  const std::string shape = "predict --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster local-cpu "
                            "--gpus 2 --batch-per-gpu 16 --precision fp32 --buckets splits:20,40 --json ";
  Run p = run(shape + "--transfer fp16 --out " + plan);
  REQUIRE(p.code == 0);
  auto j = nlohmann::json::parse(p.out);
  CHECK_FALSE(j.contains("cast"));  // the plan casts nothing
  std::ofstream(plain) << j.dump();
  j["cast"] = "comm";
  std::ofstream(cast) << j.dump();
  Run comm = run(shape + "--transfer fp16 --cast comm");
  REQUIRE(comm.code == 0);
  const auto as_run = nlohmann::json::parse(comm.out);
  CHECK(as_run.at("cast") == "comm");  // a prediction says where its plan casts
  const double with_casts = as_run.at("iteration_s").get<double>(), without = j.at("iteration_s").get<double>();
  REQUIRE(with_casts > without);
  auto predicted_iteration = [](const nlohmann::json& v) {
    for (const auto& row : v.at("rows"))
      if (row.at("metric") == "iteration") return row.at("predicted_s").get<double>();
    FAIL("no iteration row");
    return 0.0;
  };
  Run a = run("verify --no-sim --json --plan " + plan + " --measured " + plain);
  REQUIRE(a.code == 0);
  const auto va = nlohmann::json::parse(a.out);
  CHECK_FALSE(va.contains("cast"));
  CHECK(predicted_iteration(va) == Approx(without).epsilon(1e-12));
  Run b = run("verify --no-sim --json --plan " + plan + " --measured " + cast);
  REQUIRE(b.code == 0);
  const auto vb = nlohmann::json::parse(b.out);
  CHECK(vb.at("cast") == nlohmann::json{{"plan", "none"}, {"run", "comm"}});
  CHECK(predicted_iteration(vb) == Approx(with_casts).epsilon(1e-12));
  Run t = run("verify --no-sim --plan " + plan + " --measured " + cast);
  REQUIRE(t.code == 0);
  CHECK_THAT(t.out, Catch::Contains("the run cast its 16-bit buckets on comm (the plan's cast: none): predicted and "
                                    "simulated with the run's casts"));
  Run c = run("calibrate --cluster local-cpu --plan " + plan + " --measured " + cast);
  INFO(c.out);
  REQUIRE(c.code == 0);
  CHECK_THAT(c.out, Catch::Contains("--plan " + plan + ": the run cast its 16-bit buckets on comm"));
  // A plan predicted with `args`, verified against its own prediction claiming casts on comm.
  auto verified_claiming_casts = [&](const std::string& args, const std::string& plan_path,
                                     const std::string& report_path) {
    Run q = run(args + "--out " + plan_path);
    REQUIRE(q.code == 0);
    auto claimed = nlohmann::json::parse(q.out);
    claimed["cast"] = "comm";
    std::ofstream(report_path) << claimed.dump();
    Run v = run("verify --no-sim --json --plan " + plan_path + " --measured " + report_path);
    REQUIRE(v.code == 0);
    return nlohmann::json::parse(v.out);
  };
  // An FP32 plan has nothing to cast: a report that says otherwise changes nothing. Nor on
  // one GPU, which has no allreduce: the model casts nothing there.
  CHECK_FALSE(verified_claiming_casts(shape, fp32, fp32_cast).contains("cast"));
  CHECK_FALSE(verified_claiming_casts("predict --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster "
                                      "local-cpu --gpus 1 --batch-per-gpu 16 --precision fp32 --transfer fp16 --json ",
                                      tmp("asrun-one.json"), tmp("asrun-one-cast.json"))
                  .contains("cast"));
  j["cast"] = "gpu";
  std::ofstream(bad) << j.dump();
  expect_bad("verify --no-sim --plan " + plan + " --measured " + bad, bad + ": $.cast");
}

TEST_CASE("cli: calibrate --discover drafts a cluster file of this machine that reads back") {
  const std::string draft = tmp("discovered.json");
  Run d = run("calibrate --discover --out " + draft);
  INFO(d.out);
  REQUIRE(d.code == 0);
  CHECK_THAT(d.out, Catch::Contains("hwloc:") && Catch::Contains("rdma-core:"));
  const auto j = nlohmann::json::parse(std::ifstream(draft));
  CHECK(j.at("gpus_per_node").get<int>() >= 1);
  CHECK(j.at("provenance").at("gpus_per_node").get<std::string>().find("discovered") == 0);
  CHECK(run("predict --model resnet18 --cluster " + draft + " --gpus 1").code == 0);
  expect_bad("calibrate --discover --sweep x.json", "--discover: give it without --sweep/--nccl-tests");
  expect_bad("calibrate --discover --throughput x.json", "--discover: give it without");
}

TEST_CASE("cli: a checkpoint write that does not finish stops fuseplan-exec run within --timeout, the old file kept", "[exec]") {
  // A FIFO where the temporary checkpoint goes: opening it for writing blocks until a
  // reader comes, as a hung network file system would.
  const std::string plan = tmp("hung-plan.json"), ckpt = tmp("hung.ckpt");
  REQUIRE(run("predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu --gpus 2 "
              "--batch-per-gpu 8 --precision fp32 --buckets threshold:1MiB --out " + plan).code == 0);
  std::filesystem::remove(ckpt + ".tmp");
  REQUIRE(::mkfifo((ckpt + ".tmp").c_str(), 0644) == 0);
  std::ofstream(ckpt) << "the previous checkpoint";
  const auto t0 = std::chrono::steady_clock::now();
  Run r = run_mpi(2, "run --plan " + plan + " --dataset synthetic --synthetic-size 128 --max-steps 3 --no-eval "
                     "--warmup 0 --quiet --threads 1 --timeout 20 --checkpoint " + ckpt + " --checkpoint-every 1");
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(r.out);
  CHECK(r.code != 0);
  // Rank 0 gives up after half of --timeout, before the others give up on rank 0 (10 s of
  // margin: with 3 s, a rank 0 starved by parallel runs - 7 processes on 2 cores - lost the
  // race in 3 of 4 tries, before its checkpoint's clock had even started).
  CHECK_THAT(r.out,
             Catch::Contains("checkpoint " + ckpt + ": not written within 10 s: the file system does not answer"));
  CHECK(took < 60);  // without the bound: forever
  std::ifstream in(ckpt);
  std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(kept == "the previous checkpoint");
  std::filesystem::remove(ckpt + ".tmp");
}

TEST_CASE("cli: fuseplan-exec run resumes a 2-rank checkpoint and repeats the losses bit for bit", "[exec]") {
  const std::string plan = tmp("resume-plan.json"), ckpt = tmp("resume.ckpt");
  REQUIRE(run("predict --model resnet18 --resolution 16 --channels 1 --classes 10 --cluster local-cpu --gpus 2 "
              "--batch-per-gpu 8 --precision fp32 --buckets threshold:1MiB --out " + plan).code == 0);
  const std::string base = "run --plan " + plan + " --dataset synthetic --synthetic-size 128 --epochs 1 --no-eval "
                           "--warmup 0 --quiet --threads 1 ";
  auto losses = [](const std::string& path) {
    std::vector<double> l;
    const auto metrics = nlohmann::json::parse(std::ifstream(path));
    for (const auto& s : metrics.at("steps")) {
      CHECK(!s.at("skipped").get<bool>());  // real updates, restored by the checkpoint
      l.push_back(s.at("loss").get<double>());
    }
    return l;
  };
  Run whole = run_mpi(2, base + "--max-steps 4 --metrics " + tmp("whole.json"));
  INFO(whole.out);
  REQUIRE(whole.code == 0);
  std::filesystem::remove(ckpt);
  Run first = run_mpi(2, base + "--max-steps 2 --checkpoint " + ckpt + " --checkpoint-every 2");
  REQUIRE(first.code == 0);
  Run second = run_mpi(2, base + "--max-steps 4 --resume " + ckpt + " --metrics " + tmp("resumed.json"));
  INFO(second.out);
  REQUIRE(second.code == 0);
  const auto a = losses(tmp("whole.json")), b = losses(tmp("resumed.json"));
  REQUIRE(a.size() == 4);
  REQUIRE(b.size() == 2);
  CHECK(b[0] == a[2]);
  CHECK(b[1] == a[3]);
  // It says what it resumed and what is left, once.
  CHECK_THAT(second.out, Catch::Contains("note: resumed " + ckpt + " at step 2 (epoch 0), loss scale 1: 2 steps remain"));
  CHECK(count_of(second.out, "resumed ") == 1);
  // A checkpoint of 2 ranks is refused by 1, and by 2 ranks of another seed, said once.
  Run one = run_env("", base + "--max-steps 4 --resume " + ckpt, true, FUSEPLAN_EXEC_BIN);
  CHECK(one.code == 2);
  Run seed = run_mpi(2, base + "--max-steps 4 --seed 7 --resume " + ckpt);
  CHECK(seed.code == 2);
  CHECK(seed.out.find("another --seed") != std::string::npos);
  CHECK(seed.out.find("another --seed") == seed.out.rfind("another --seed"));
}

TEST_CASE("cli: NCCL clusters: collective shows NCCL's table and choices - nccl-tests logs calibrate them") {
  const std::string log = std::string(FUSEPLAN_TEST_DATA) + "/nccl-tests/h100-ndr-2x8.txt";
  Run c = run("collective --cluster dgx-h100 --gpus 16 --sizes 1M:64M --step-factor 64 --nccl-table");
  CHECK(c.code == 0);
  CHECK_THAT(c.out, Catch::Contains("NCCL 2.23 tuning model: 16 ranks on 2 nodes"));
  CHECK_THAT(c.out, Catch::Contains("nccl nvls_tree/Simple"));
  Run old = run("collective --cluster dgx-h100 --gpus 16 --sizes 64M:64M --nccl-version 2.20 --json");
  CHECK(old.code == 0);
  CHECK(nlohmann::json::parse(old.out)["rows"][0]["algorithm"] == "nccl");
  expect_bad("collective --cluster tencent-p40 --nccl-table", "--nccl-table: cluster tencent-p40 runs mpi, not NCCL");
  expect_bad("collective --cluster dgx-h100 --nccl-version 9.9", "unknown NCCL release '9.9'");
  expect_bad("predict --cluster tencent-p40 --nccl-version 2.23", "--nccl-version: cluster tencent-p40 runs mpi");
  expect_bad("calibrate --nccl-tests " + log, "--nccl-tests: give --cluster");
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-h100 --as butterfly", "--as: unknown algorithm 'butterfly'");
  const std::string bad = tmp("bad-log.txt");
  write(bad, "#       size         count      type   redop    root     time   algbw   busbw #wrong\n"
             "        1024           256     float     sum      -1    15.38    0.07    0.10       0    15.28    0.07    0.10       0\n"
             "        4096          1024     float     sum      -1    x.54    0.25    0.37       0    16.44    0.25    0.37       0\n");
  expect_bad("calibrate --nccl-tests " + bad + " --cluster dgx-h100 --ranks 16", "line 3: cannot read the row");
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-a100 --ranks 2048", "do not fit cluster dgx-a100");
  // Every input is read before a fit prints: a bad one is the only line.
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-h100 --max-segments 0", "--max-segments: must be >= 1");
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-h100 --profile x.json", "--profile: give --model");
  expect_bad("calibrate --nccl-tests " + log + " --cluster dgx-h100 --profile /nonexistent/p.json --model resnet18",
             "/nonexistent/p.json: cannot open");
  // A fit from the log, written and used: the 8 B .. 256 B range is too noisy to fit
  // (degenerate), so the file is written only when asked to, or with --fit-sizes.
  const std::string out = tmp("h100-calibrated.json");
  std::filesystem::remove(out);
  Run deg = run("calibrate --nccl-tests " + log + " --cluster dgx-h100 --out " + out);
  CHECK(deg.code == 2);
  CHECK_THAT(deg.out, Catch::Contains("degenerate fit"));
  CHECK(!std::filesystem::exists(out));
  Run ok = run("calibrate --nccl-tests " + log + " --cluster dgx-h100 --fit-sizes 64K:16G --holdout --out " + out);
  INFO(ok.out);
  CHECK(ok.code == 0);
  CHECK_THAT(ok.out, Catch::Contains("on 16 ranks (8 per node)"));
  CHECK_THAT(ok.out, Catch::Contains("no launch overhead to keep apart"));
  Run p = run("collective --cluster " + out + " --gpus 16 --sizes 256M:256M --json");
  CHECK(p.code == 0);
  const auto row = nlohmann::json::parse(p.out)["rows"][0];
  // The log measured 1282.8 us for 256 MiB; the calibrated model (plus the cluster's 8 us
  // framework launch overhead) is within a few percent of it.
  CHECK(row["time_us"].get<double>() == Approx(1282.8 + 8).epsilon(0.05));
}

TEST_CASE("cli: memory per GPU: a warning with the figures past the GPU's memory, a refusal when no batch fits") {
  // States fit 80 GB, activations at 64 per GPU do not: one warning line, the prediction
  // still printed (JSON on stdout stays parseable).
  const std::string args = "predict --model gpt2_xl --cluster dgx-h100 --gpus 16 --batch-per-gpu 64";
  Run both = run(args);
  REQUIRE(both.code == 0);
  CHECK_THAT(both.out, Catch::Contains("fuseplan: warning: gpt2_xl at batch 64 per GPU needs about") &&
                           Catch::Contains("has 80 GiB. Batch "));
  Run json = run_stdout(args + " --json");
  REQUIRE(json.code == 0);
  CHECK(nlohmann::json::parse(json.out)["batch_per_gpu"] == 64);
  CHECK_THAT(run("predict --model gpt2_xl --cluster dgx-h100 --gpus 16 --batch-per-gpu 2").out,
             !Catch::Contains("warning"));
  // A 16 GiB GPU cannot hold GPT-2 XL's replicated states: refused, from flags and from a plan.
  auto c = nlohmann::json::parse(std::ifstream(std::string(FUSEPLAN_CONFIG_DIR) + "/clusters/dgx-h100.json"));
  c["device"]["mem_GiB"] = 16;
  const std::string small = tmp("h100-16g.json"), plan = tmp("gpt2xl-plan.json");
  write(small, c.dump());
  expect_bad("predict --model gpt2_xl --gpus 16 --batch-per-gpu 1 --cluster " + small,
             "--model gpt2_xl: gpt2_xl does not fit one GPU");
  REQUIRE(run("predict --model gpt2_xl --cluster dgx-h100 --gpus 16 --batch-per-gpu 2 --out " + plan).code == 0);
  expect_bad("predict --plan " + plan + " --cluster " + small, plan + ": $.model: gpt2_xl does not fit one GPU");
  // whatif sweeps every point and warns once per model, batch and precision that does not fit.
  Run sweep = run("whatif --model gpt2_xl,resnet50 --cluster " + small + " --gpus 16,32 --batch-per-gpu 2 --quiet");
  REQUIRE(sweep.code == 0);
  CHECK(count_of(sweep.out, "warning:") == 1);
  CHECK_THAT(sweep.out, Catch::Contains("warning: --model gpt2_xl: gpt2_xl does not fit one GPU"));
  CHECK(count_of(sweep.out, "resnet50 ") == 2);
}

TEST_CASE("cli: --version, plurals, no negative shares, search caps named", "[exec]") {
  for (const char* bin : {FUSEPLAN_BIN, FUSEPLAN_EXEC_BIN}) {
    Run v = run_env("", "--version", true, bin);
    CHECK(v.code == 0);
    CHECK_THAT(v.out, Catch::Contains(" 0.") && Catch::Contains("NCCL tuning constants of releases 2.20, 2.23"));
  }
  CHECK_THAT(run("predict --model resnet18 --cluster dgx-h100 --gpus 1").out,
             Catch::Contains("(1 GPU = 1 node x 1)") && Catch::Contains("1 bucket\n"));
  // A jittered simulation waits on its slowest rank longer than its allreduces run: the
  // summary shows that wait apart from the exposed communication, and no negative share.
  Run sim = run_stdout("simulate --model resnet18 --cluster tencent-p40 --gpus 16 --jitter 1 --quiet");
  REQUIRE(sim.code == 0);
  CHECK_THAT(sim.out, Catch::Contains(" + wait for the slowest GPU ") && Catch::Contains("% hidden behind backward\n"));
  CHECK_THAT(sim.out, !Catch::Contains("-0.0") && !Catch::Contains(" -"));
  // A GPU count that is the search's cap is named as such.
  Run cap = run_stdout("whatif --model resnet50 --cluster dgx-h100 --target-efficiency 0.5 --solve gpus --quiet");
  REQUIRE(cap.code == 0);
  CHECK_THAT(cap.out, Catch::Contains(": 1024 (") && Catch::Contains("the largest count searched"));
  Run capj = run_stdout("whatif --model resnet50 --cluster dgx-h100 --target-efficiency 0.5 --solve gpus --quiet --json");
  REQUIRE(capj.code == 0);
  CHECK(nlohmann::json::parse(capj.out)["search_cap_reached"] == true);
  // AlexNet at 8 per GPU on the P40s falls below 50 % past 24 GPUs: a limit of the setup.
  Run low = run_stdout("whatif --model alexnet_bn --cluster tencent-p40 --batch-per-gpu 8 --target-efficiency 0.5 "
                       "--solve gpus --quiet --json");
  REQUIRE(low.code == 0);
  CHECK(nlohmann::json::parse(low.out)["search_cap_reached"] == false);
}

TEST_CASE("cli: a global batch past the model's published largest is warned of, with the source") {
  // ResNet-50: 65,536 (the 4-minute paper). 2048 x 32 = 65,536 passes; 2048 x 64 does not.
  CHECK_THAT(run("predict --gpus 2048 --batch-per-gpu 32").out, !Catch::Contains("warning"));
  Run past = run("predict --gpus 2048 --batch-per-gpu 64");
  REQUIRE(past.code == 0);
  CHECK_THAT(past.out, Catch::Contains("warning: global batch 131,072 (2048 GPUs x 64) is past the largest published "
                                       "for resnet50 at baseline accuracy, 65,536 (") &&
                           Catch::Contains("4-minute paper"));
  // GPT-2's limit is in tokens: 3.2M / 1024 = 3,125 sequences, twice as many at 512 tokens.
  CHECK_THAT(run("predict --model gpt2 --cluster dgx-h100 --gpus 512 --batch-per-gpu 8").out,
             Catch::Contains("past the largest published for gpt2 at baseline accuracy, 3,125"));
  CHECK_THAT(run("predict --model gpt2 --seq-len 512 --cluster dgx-h100 --gpus 512 --batch-per-gpu 8").out,
             !Catch::Contains("warning"));
}

TEST_CASE("cli: one vocabulary: old spellings warn and still work, clusters grow alike, whatif takes tune's flags", "[exec]") {
  // Renamed flags: the old spelling gives the new one's result and one warning naming it.
  const std::string a = tmp("vocab-a.json"), b = tmp("vocab-b.json");
  Run old_name = run("predict --model alexnet_bn --gpus 16 --save-plan " + a);
  REQUIRE(old_name.code == 0);
  CHECK(count_of(old_name.out, "warning: --save-plan is now --out") == 1);
  REQUIRE(run("predict --model alexnet_bn --gpus 16 --out " + b).code == 0);
  CHECK(nlohmann::json::parse(std::ifstream(a)) == nlohmann::json::parse(std::ifstream(b)));
  Run fmt = run_stdout("whatif --model alexnet_bn --gpus 8,16 --format=csv --quiet");
  Run csv = run_stdout("whatif --model alexnet_bn --gpus 8,16 --csv --quiet");
  REQUIRE(fmt.code == 0);
  CHECK(fmt.out == csv.out);
  CHECK_THAT(run("whatif --model alexnet_bn --gpus 8 --format json --quiet").out,
             Catch::Contains("warning: --format is now --json | --csv"));
  Run table = run_stdout("whatif --model alexnet_bn --gpus 8 --format table --quiet");
  CHECK(table.code == 0);
  CHECK_THAT(table.out, Catch::Contains("iteration ms"));
  Run both = run("whatif --json --csv");
  CHECK(both.code == 2);
  Run ex = run_exec("train --batch 8 --help");  // the alias maps before --help prints
  CHECK(ex.code == 0);
  CHECK_THAT(ex.out, Catch::Contains("warning: --batch is now --batch-per-gpu"));
  CHECK_THAT(ex.out, Catch::Contains("--batch-per-gpu"));
  CHECK_THAT(run_exec("sweep --help").out, Catch::Contains("--step-factor"));
  // An alias belongs to its command: --batch is not a `fuseplan predict` flag.
  CHECK(run("predict --batch 8").code == 2);

  // More GPUs than the file has: predict, tune and whatif all grow it by whole nodes.
  Run grown = run("predict --model alexnet_bn --cluster tencent-p40 --gpus 4096");
  REQUIRE(grown.code == 0);
  CHECK_THAT(grown.out, Catch::Contains("note: cluster tencent-p40 has 2048 GPUs; grown by whole nodes to 512 nodes"));
  CHECK_THAT(run("tune --model alexnet_bn --cluster tencent-p40 --gpus 4096").out, Catch::Contains("grown by whole nodes"));
  Run w = run_stdout("whatif --model alexnet_bn --cluster tencent-p40 --gpus 4096 --json --quiet");
  REQUIRE(w.code == 0);
  Run t = run_stdout("tune --model alexnet_bn --cluster tencent-p40 --gpus 4096 --json");
  REQUIRE(t.code == 0);
  CHECK(nlohmann::json::parse(w.out)[0]["report"]["iteration_s"].get<double>() ==
        Approx(nlohmann::json::parse(t.out)["report"]["iteration_s"].get<double>()).epsilon(1e-12));
  expect_bad("whatif --cluster local-cpu --gpus 4", "no inter-node network to join them");

  // A plan priced on another cluster than its own: said, not silent.
  Run other = run("predict --plan " + a + " --cluster dgx-a100");
  CHECK(other.code == 0);
  CHECK_THAT(other.out, Catch::Contains("warning: --cluster dgx-a100 is not the cluster"));
  CHECK(count_of(run("predict --plan " + a).out, "warning") == 0);
  // ... but a refusal of the same command is its only line (the warning came first).
  expect_bad("export --to ddp --plan " + a + " --cluster dgx-a100 --resolution 64", "plan is for model");

  // whatif takes tune's fusion flags, --inter-lat and --profile, with tune's units.
  auto iteration = [](const Run& r) {
    return nlohmann::json::parse(r.out)[0]["report"]["iteration_s"].get<double>();
  };
  const std::string hv = "whatif --model resnet50 --gpus 64 --strategy horovod --json --quiet ";
  const double t64 = iteration(run_stdout(hv + "--threshold 64MiB"));
  const double t1 = iteration(run_stdout(hv + "--threshold 1MiB"));
  CHECK(t64 != t1);
  CHECK(iteration(run_stdout(hv + "--threshold 1MiB")) ==
        Approx(nlohmann::json::parse(run_stdout("tune --model resnet50 --gpus 64 --strategy horovod "
                                                 "--threshold 1MiB --json").out)["report"]["iteration_s"].get<double>())
            .epsilon(1e-12));
  expect_bad("whatif --threshold 64", "--threshold");
  const std::string ddp = "whatif --model resnet50 --gpus 64 --strategy ddp --json --quiet ";
  CHECK(iteration(run_stdout(ddp + "--ddp-cap 25")) == iteration(run_stdout(ddp + "--ddp-cap 25MiB")));
  CHECK(iteration(run_stdout(ddp + "--ddp-cap 25")) != iteration(run_stdout(ddp + "--ddp-cap 1MiB")));
  const std::string base = "whatif --model resnet50 --gpus 64 --json --quiet ";
  CHECK(iteration(run_stdout(base + "--inter-lat 500")) > iteration(run_stdout(base)));
  CHECK(iteration(run_stdout(base + "--compute-slowdown 0.189")) > iteration(run_stdout(base)));
  expect_bad("whatif --compute-slowdown 2", "--compute-slowdown: must be in [0, 1]");
  CHECK(iteration(run_stdout(base + "--streams 2")) > 0);
  expect_bad("whatif --streams 0", "--streams: must be >= 1");
  expect_bad("whatif --cluster local-cpu --gpus 2 --inter-lat 5", "--inter-lat: cluster local-cpu has no inter-node");
  // --intra-bw: the node's links as a ring step sees them; an NCCL cluster's NVLink rates
  // give way to it.
  auto iter_of = [](const Run& r) { return nlohmann::json::parse(r.out)["iteration_s"].get<double>(); };
  const std::string node = "predict --model vgg16 --cluster p100-dgx1 --gpus 8 --batch-per-gpu 32 --precision fp32 "
                           "--buckets per-tensor --algorithm ring --json ";
  CHECK(iter_of(run_stdout(node + "--intra-bw 3")) > 1.5 * iter_of(run_stdout(node + "--intra-bw 40")));
  const std::string a100 = "predict --model resnet50 --cluster dgx-a100 --gpus 8 --json ";
  CHECK(iter_of(run_stdout(a100 + "--intra-bw 2")) > iter_of(run_stdout(a100)));
  // --compute-slowdown: backward runs longer beside a running allreduce, while each
  // allreduce keeps its duration; 0 is the GPU cluster's own free overlap.
  const std::string r101 = "predict --model resnet101 --cluster p100-horovod --gpus 128 --batch-per-gpu 64 "
                         "--precision fp32 --buckets threshold:64MiB --algorithm ring --pack --cycle-time 5 --json ";
  const auto free_overlap = nlohmann::json::parse(run_stdout(r101).out);
  const auto slowed = nlohmann::json::parse(run_stdout(r101 + "--compute-slowdown 0.189").out);
  CHECK(slowed["backward_s"].get<double>() > free_overlap["backward_s"].get<double>());
  CHECK(slowed["iteration_s"].get<double>() > free_overlap["iteration_s"].get<double>());
  CHECK(slowed["single_gpu_iteration_s"] == free_overlap["single_gpu_iteration_s"]);
  REQUIRE(slowed["buckets"].size() == free_overlap["buckets"].size());
  for (size_t b = 0; b < slowed["buckets"].size(); ++b) {
    auto length = [b](const nlohmann::json& r) {
      return r["buckets"][b]["end_s"].get<double>() - r["buckets"][b]["start_s"].get<double>();
    };
    CHECK(length(slowed) == Approx(length(free_overlap)).epsilon(1e-12));
  }
  CHECK(run_stdout(r101 + "--compute-slowdown 0").out == run_stdout(r101).out);
  // --compute-variation: the cluster's spread of each GPU's step; the wait for the slowest
  // GPU grows with it and with the GPU count; 0 takes the shipped value away.
  const auto wait_of = [](const Run& r) { return nlohmann::json::parse(r.out).value("variation_wait_s", 0.0); };
  CHECK(wait_of(run_stdout(a100)) > 0);  // dgx-a100 ships one
  CHECK(wait_of(run_stdout(a100 + "--compute-variation 0")) == 0);
  CHECK(wait_of(run_stdout(a100 + "--compute-variation 0.1")) > wait_of(run_stdout(a100)));
  CHECK(wait_of(run_stdout("predict --model resnet50 --cluster dgx-a100 --gpus 64 --json --compute-variation 0.1")) >
        wait_of(run_stdout(a100 + "--compute-variation 0.1")));
  CHECK(iteration(run_stdout(base + "--compute-variation 0.05")) > iteration(run_stdout(base)));
  CHECK_THAT(run_stdout("predict --model resnet50 --cluster dgx-a100 --gpus 8").out,
             Catch::Contains(" + wait for the slowest GPU "));
  expect_bad("whatif --compute-variation 0.6", "--compute-variation: must be in [0, 0.5]");
  expect_bad("schedule --model resnet50 --cluster dgx-a100 --gpus 8 --compute-variation 0.1",
             "--compute-variation: schedules are compared without the wait for the slowest GPU");
  expect_bad("whatif --profile /nonexistent/p.json", "/nonexistent/p.json");
  expect_bad("whatif --model resnet50,alexnet_bn --profile /nonexistent/p.json", "give one --model");
}

namespace {
// CSV blocks (separated by blank lines) into rows of fields, with RFC 4180 quoting.
std::vector<std::vector<std::vector<std::string>>> csv_blocks(const std::string& text) {
  std::vector<std::vector<std::vector<std::string>>> blocks(1);
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += text[++i];
      else if (c == '"') quoted = false;
      else field += c;
    } else if (c == '"') {
      quoted = any = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
      any = true;
    } else if (c == '\n') {
      if (!any && field.empty()) {
        if (!blocks.back().empty()) blocks.emplace_back();
      } else {
        row.push_back(field);
        blocks.back().push_back(row);
      }
      row.clear();
      field.clear();
      any = false;
    } else {
      field += c;
      any = true;
    }
  }
  if (blocks.back().empty()) blocks.pop_back();
  return blocks;
}
}  // namespace

TEST_CASE("cli: --csv on every command that prints a table: only CSV on stdout, rows as wide as their header", "[exec]") {
  for (const std::string args :
       {"models", "show alexnet_bn", "clusters", "predict --model alexnet_bn", "collective --gpus 16 --cluster dgx-a100",
        "tune --model alexnet_bn", "compare --model alexnet_bn", "simulate --model alexnet_bn --gpus 8 --quiet"}) {
    INFO(args);
    Run r = run_stdout(args + " --csv");
    REQUIRE(r.code == 0);
    const auto blocks = csv_blocks(r.out);
    REQUIRE(!blocks.empty());
    for (const auto& b : blocks) {
      REQUIRE(b.size() >= 2);  // a header and rows
      for (const auto& row : b) CHECK(row.size() == b.front().size());
    }
  }
  const auto buckets = csv_blocks(run_stdout("predict --model alexnet_bn --csv").out).front();
  CHECK(buckets.front().front() == "bucket");
  CHECK(buckets.front().at(5) == "ready ms");
  // CSV and JSON are two machine outputs: one at a time.
  CHECK(run("predict --json --csv").code == 2);
  CHECK_THAT(run_exec("train --help").out, Catch::Contains("--csv"));
}

TEST_CASE("cli: whatif's inverse answers carry the global-batch and memory warnings of the point they answer") {
  Run r = run("whatif --model resnet50 --deadline 3m --batch-per-gpu 64 --max-gpus 4096 --quiet");
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("warning: global batch ") && Catch::Contains("past the largest published for "
                                                                                 "resnet50") &&
                        Catch::Contains("4-minute paper"));
  CHECK(count_of(r.out, "warning: global batch") == 1);
}

TEST_CASE("cli: calibrate --profile --model fits each layer class's efficiency into the cluster file", "[exec]") {
  const std::string profile = tmp("class-profile.json"), model = tmp("class-model.json"), out = tmp("class-cluster.json");
  REQUIRE(run_exec("train --dataset synthetic --synthetic-size 128 --max-steps 2 --no-eval --quiet --profile " + profile)
              .code == 0);
  REQUIRE(run("show resnet18 --resolution 28 --channels 1 --classes 10 --export " + model).code == 0);
  const Run r = run("calibrate --cluster local-cpu --profile " + profile + " --model " + model + " --out " + out);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("compute per layer class from " + profile + " (resnet18, batch 64, fp32"));
  CHECK_THAT(r.out, Catch::Contains("conv_kxk") && Catch::Contains("compute_efficiency.fp32"));
  const auto j = nlohmann::json::parse(std::ifstream(out));
  CHECK(j["device"]["by_kind"].contains("conv_kxk"));
  CHECK(j["device"]["by_kind"].contains("conv_kxk_s1"));
  CHECK(j["device"]["by_kind"].contains("norm"));
  // Memory-bound classes (batch norm on this CPU) are fitted at the profile's precision only, as the table says.
  const nlohmann::json& norm = j["device"]["by_kind"]["norm"];
  CHECK((norm.size() == 1 && norm["memory_efficiency"].size() == 1 && norm["memory_efficiency"].contains("fp32")));
  CHECK_THAT(r.out, Catch::Contains("memory_efficiency.fp32"));
  // ResNet-18's 3x3 convolutions: 13 with stride 1, 3 with stride 2.
  CHECK_THAT(j["provenance"]["device.by_kind.conv_kxk_s1"].get<std::string>(),
             Catch::Contains("fuseplan calibrate --profile " + profile + " (resnet18, batch 64, fp32): 13 layers"));
  CHECK_THAT(j["provenance"]["device.by_kind.conv_kxk"].get<std::string>(),
             Catch::Contains("fuseplan calibrate --profile " + profile + " (resnet18, batch 64, fp32): 3 layers"));
  CHECK(run("predict --cluster " + out + " --model " + model + " --gpus 1 --batch-per-gpu 64 --precision fp32").code == 0);
  expect_bad("calibrate --cluster local-cpu --profile " + profile,
             "--profile: give --model, the model it was measured on (a zoo name or the model .json)");
  expect_bad("calibrate --profile " + profile + " --profile " + profile + " --model " + model,
             "--profile: one only with --model");
  // The overlap fit takes a profile per run, in --plan order; any other count is refused.
  const std::string plan = tmp("class-plan.json"), measured = tmp("class-measured.json");
  Run p = run("predict --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster local-cpu --gpus 2 "
              "--batch-per-gpu 64 --precision fp32 --buckets splits:20,40 --json --profile " + profile + " --out " + plan);
  REQUIRE(p.code == 0);
  std::ofstream(measured) << p.out;
  Run per_run = run("calibrate --cluster local-cpu --plan " + plan + " --measured " + measured + " --plan " + plan +
                    " --measured " + measured + " --profile " + profile + " --profile " + profile);
  INFO(per_run.out);
  REQUIRE(per_run.code == 0);
  CHECK_THAT(per_run.out, Catch::Contains("profile one per run (2)"));
  expect_bad("calibrate --plan " + plan + " --measured " + measured + " --profile " + profile + " --profile " + profile,
             "--profile: give one for every run, or one per --plan in order (1 plans, 2 profiles)");
  expect_bad("calibrate --cluster local-cpu --model resnet18 --sweep x.json",
             "--model: only with --profile and without --plan");
  expect_bad("calibrate --cluster local-cpu --profile " + profile + " --model resnet50",
             "the profile was measured on model resnet18");
  // A zoo name with the shape the profile was measured at is the exported file.
  const std::string by_name = tmp("class-cluster-by-name.json");
  REQUIRE(run("calibrate --cluster local-cpu --profile " + profile +
              " --model resnet18 --resolution 28 --channels 1 --classes 10 --out " + by_name)
              .code == 0);
  CHECK(nlohmann::json::parse(std::ifstream(by_name))["device"]["by_kind"] == j["device"]["by_kind"]);
  expect_bad("calibrate --cluster local-cpu --resolution 28 --sweep x.json",
             "--resolution/--channels/--classes/--seq-len/--attention: set the shape of --model (with --profile); "
             "give --model");
}

TEST_CASE("cli: whatif --profile holds the profile to each point's precision and batch, as predict does", "[exec]") {
  const std::string profile = tmp("whatif-profile.json");
  REQUIRE(run_exec("train --dataset synthetic --synthetic-size 128 --max-steps 2 --no-eval --quiet --profile " + profile)
              .code == 0);
  const std::string base = "whatif --model resnet18 --resolution 28 --channels 1 --classes 10 --cluster local-cpu "
                           "--gpus 2 --quiet --profile " + profile;
  Run ok = run(base + " --precision fp32 --batch-per-gpu 32");
  INFO(ok.out);
  CHECK(ok.code == 0);
  CHECK_THAT(ok.out, Catch::Contains("was measured at batch 64 per GPU; its layer times are scaled linearly to batch 32"));
  expect_bad(base + " --precision fp16", "measured at fp32, the prediction is at fp16");
}

TEST_CASE("cli: an output through a link lands in the file it names and a device or standard output or a FIFO is "
          "written through") {
  namespace fs = std::filesystem;
  const std::string dir = tmp("through");
  fs::remove_all(dir);
  fs::create_directories(dir + "/sub");
  const std::string args = "tune --model alexnet_bn --gpus 16 ";
  auto text = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // A link (dangling too) keeps being a link; the file it names gets the output.
  write(dir + "/target.json", "OLD\n");
  fs::create_symlink("target.json", dir + "/link.json");
  fs::create_symlink("sub/new.json", dir + "/dangling.json");
  CHECK(run(args + "--out " + dir + "/link.json --trace " + dir + "/dangling.json").code == 0);
  CHECK((fs::is_symlink(dir + "/link.json") && fs::is_symlink(dir + "/dangling.json")));
  CHECK_THAT(text(dir + "/target.json"), Catch::Contains("fuseplan.plan/1"));
  CHECK_THAT(text(dir + "/sub/new.json"), Catch::Contains("traceEvents"));
  // Not regular files: written through, never replaced by one (as root a rename would).
  // The test's own copy of /dev/null and standard output by /proc (where a rename fails),
  // so that a regression cannot replace the machine's /dev/null or /dev/stdout.
  const std::string null = dir + "/null";
  if (::mknod(null.c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) {
    CHECK(run(args + "--out " + null + " --trace " + null).code == 0);
    CHECK(fs::is_character_file(null));
  }
  const Run out = run(args + "--out /proc/self/fd/1");
  CHECK(out.code == 0);
  CHECK_THAT(out.out, Catch::Contains("plan written to") && Catch::Contains("\"schema\": \"fuseplan.plan/1\""));
  const std::string fifo = dir + "/fifo";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  // Open for reading first without waiting for a writer, so nothing can block: the plan
  // (a few KiB) fits the pipe's buffer, read once the command has ended.
  const int rfd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK);
  REQUIRE(rfd >= 0);
  CHECK(run(args + "--out " + fifo).code == 0);
  std::string got;
  char buf[4096];
  for (ssize_t n; (n = ::read(rfd, buf, sizeof buf)) > 0;) got.append(buf, size_t(n));
  ::close(rfd);
  CHECK_THAT(got, Catch::Contains("fuseplan.plan/1"));
  CHECK(fs::is_fifo(fifo));
}

TEST_CASE("cli: a failed command leaves existing output files byte-identical, a successful one writes them all") {
  const std::string plan = tmp("keep-plan.json"), trace = tmp("keep-trace.json");
  auto reset = [&] {
    write(plan, "OLD PLAN\n");
    write(trace, "OLD TRACE\n");
  };
  auto text = [](const std::string& path) {
    std::ifstream in(path);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  // Each fails after the point where it used to write --out.
  const std::vector<std::string> failing = {
      "tune --model alexnet_bn --gpus 16 --out " + plan + " --trace " + trace + " --validate bogus",
      "predict --model alexnet_bn --gpus 16 --out " + plan + " --trace /nonexistent-dir/t.json",
      "tune --model alexnet_bn --gpus 16 --out " + plan + " --trace " + tmp(""),  // a directory
  };
  for (const auto& args : failing) {
    INFO(args);
    reset();
    const Run r = run(args);
    CHECK(r.code == 2);
    CHECK(text(plan) == "OLD PLAN\n");
    CHECK(text(trace) == "OLD TRACE\n");
    // No temporary left beside either output (other tests write in the same directory
    // at the same time, so only this test's names are looked for).
    bool strays = false;
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(plan).parent_path()))
      strays = strays || e.path().string().starts_with(plan + ".tmp") || e.path().string().starts_with(trace + ".tmp");
    CHECK_FALSE(strays);
  }
  CHECK_THAT(run("tune --model alexnet_bn --gpus 16 --out " + tmp("")).out, Catch::Contains(": is a directory (give a file name)"));
  // The same file for two outputs, however spelled, is refused; two files are written.
  const std::string twice = tmp("tune-twice.json");
  std::filesystem::remove(twice);
  const std::string spelled = std::filesystem::path(twice).parent_path().string() + "/./tune-twice.json";
  expect_bad("tune --model alexnet_bn --gpus 16 --out " + twice + " --trace " + spelled,
             "--trace: " + spelled + ": the file --out writes (give another name)");
  CHECK(!std::filesystem::exists(twice));
  CHECK(run("tune --model alexnet_bn --gpus 16 --out " + twice + " --trace " + twice + ".trace").code == 0);
  CHECK((std::filesystem::exists(twice) && std::filesystem::exists(twice + ".trace")));
  // An output over a file the command reads would lose the input: refused, the input kept.
  const std::string plan_text = text(twice);
  expect_bad("export --plan " + twice + " --to ddp --out " + twice, "--out: " + twice + ": the file --plan reads");
  expect_bad("simulate --trace " + twice + " --plan " + twice, "--trace: " + twice + ": the file --plan reads");
  CHECK(text(twice) == plan_text);
  // predict --plan P --out P rewrites P with its prediction, in place.
  CHECK(run("predict --plan " + twice + " --out " + twice).code == 0);
  reset();
  const Run ok = run("tune --model alexnet_bn --gpus 16 --out " + plan + " --trace " + trace);
  CHECK(ok.code == 0);
  CHECK(text(plan).find("fuseplan.plan/1") != std::string::npos);
  CHECK(text(trace).find("traceEvents") != std::string::npos);
}

TEST_CASE("cli: hostile inputs: each refused with exit 2 and one line naming the flag or file and JSON path") {
  auto file = [](const std::string& name, const std::string& text) {
    const std::string path = tmp(name);
    write(path, text);
    return path;
  };
  std::ifstream in(std::string(FUSEPLAN_CONFIG_DIR) + "/clusters/tencent-p40.json");
  const auto p40 = nlohmann::json::parse(in);
  auto cluster_with = [&](const std::string& name, const std::vector<std::string>& path, double v) {
    nlohmann::json c = p40;
    nlohmann::json* at = &c;
    for (const auto& k : path) at = &(*at)[k];
    *at = v;
    return file(name, c.dump());
  };
  const std::string denormal = cluster_with("denormal.json", {"inter_node", "nic_bw_Gbps"}, 5e-324);
  const std::string tiny_lat = cluster_with("tiny-lat.json", {"inter_node", "lat_us"}, 1e-308);
  const std::string overflow = file("overflow.json", R"({"schema": "fuseplan.cluster/1", "name": "x", "nodes": 1e999})");
  const std::string dup = file("dup.json", R"({"schema": "fuseplan.cluster/1", "name": "x", "name": "y"})");
  const std::string sweep_schema = file("sweep-schema.json", R"({"schema": {}, "points": []})");
  const std::string sweep_ranks = file(
      "sweep-ranks.json",
      R"({"schema": "fuseplan.sweep/1", "ranks": 2147483647, "per_node": 1, "precision": "fp32", "points": []})");
  const std::string nccl_underflow = file("nccl-underflow.txt",
      "#       size         count      type   redop    root     time   algbw   busbw #wrong\n"
      "           8  5e-324  float  sum  -1  68.52  0.00  0.00  0  24.70  0.00  0.00  0\n");
  const std::string sweep_tiny = file("sweep-tiny.json", R"({"schema": "fuseplan.sweep/1", "ranks": 2, "per_node": 2,
      "precision": "fp32", "points": [{"algorithm": "ring", "bytes": 1024, "seconds": 1e-308}]})");
  const std::string huge_tensor = file("huge-tensor.json", R"({"schema": "fuseplan.model/1", "name": "huge",
      "input_shape": [3, 8, 8], "layers": [{"name": "fc", "kind": "linear", "fwd_flops": 1, "bwd_flops": 1,
      "params": [{"name": "fc.weight", "shape": [4611686018427387904, 4], "role": "weight"}]}]})");
  const std::string tiny_peak = cluster_with("tiny-peak.json", {"device", "peak_TFLOPS", "fp16"}, 5e-324);
  auto model_with_shape = [&](const std::string& name, const std::string& dims) {
    return file(name, R"({"schema": "fuseplan.model/1", "name": "huge", "input_shape": [3, 8, 8], "layers": [{"name": "fc",
        "kind": "linear", "fwd_flops": 1, "bwd_flops": 1, "params": [{"name": "fc.weight", "shape": [)" + dims +
                          R"(], "role": "weight"}]}]})");
  };
  const std::string tensor_2p80 = model_with_shape("tensor-2p80.json", "1208925819614629174706176, 4");
  const std::string tensor_2p63 = model_with_shape("tensor-2p63.json", "9223372036854775808");
  const std::string nccl_inf = file("nccl-inf.txt",
      "#       size         count      type   redop    root     time   algbw   busbw #wrong\n"
      "           8             2     float     sum      -1      inf    0.00    0.00      0    24.70    0.00    0.00      0\n");
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"simulate --model alexnet_bn --gpus 16 --cluster " + denormal, "$.inter_node.nic_bw_Gbps: must be in"},
      {"tune --model alexnet_bn --gpus 16 --cluster " + denormal, "$.inter_node.nic_bw_Gbps: must be in"},
      {"tune --model alexnet_bn --gpus 16 --cluster " + tiny_peak, "$.device.peak_TFLOPS.fp16: must be in [0.0001, 100000] TFLOPS (got 5e-324)"},
      {"show " + tensor_2p80, "$.layers[0].params[0].shape[0]: expected an integer >= 1"},
      {"predict --gpus 8 --cluster dgx-a100 --model " + tensor_2p63, "$.layers[0].params[0].shape[0]: expected an integer >= 1"},
      {"calibrate --cluster dgx-h100 --ranks 16 --nccl-tests " + nccl_inf, "line 2: cannot read the row"},
      {"predict --cluster " + tmp(""), ": is a directory (give a file)"},
      {"predict --cluster /tmp/\xff\xfe.json", "/tmp/\xff\xfe.json: cannot open (No such file or directory)"},
      {"predict --model alexnet_bn --gpus 16 --epochs nan", "--epochs: must be in (0, 1e+06] (got nan)"},
      // A goal past 1e18 iterations overflowed: "-869905584816926752768.0 ms" to train.
      {"predict --model alexnet_bn --gpus 16 --epochs inf", "--epochs: must be in (0, 1e+06] (got inf)"},
      {"whatif --model alexnet_bn --gpus 16 --dataset-size 9223372036854775807",
       "--dataset-size: must be in [1, 1e+15] samples"},
      {"predict --model gpt2 --gpus 16 --cluster dgx-h100 --tokens 1e30",
       "--tokens: must be in (0, 1e+18] (got 1e+30)"},
      {"simulate --model alexnet_bn --gpus 16 --trace /nonexistent/t.json",
       "--trace: /nonexistent/t.json: cannot write (directory /nonexistent missing)"},
      {"whatif --model alexnet_bn --gpus 16 --out ''", "--out: an empty file name"},
      {"predict --model alexnet_bn --gpus 16 --inter-bw 0", "--inter-bw: must be > 0 (got 0; leave the flag out for its default)"},
      {"predict --model alexnet_bn --gpus 8 --cluster dgx-a100 --intra-bw -2", "--intra-bw: must be > 0 (got -2"},
      {"predict --model alexnet_bn --gpus 8 --compute-slowdown -0.1", "--compute-slowdown: must be >= 0 (got -0.1"},
      {"simulate --model alexnet_bn --gpus 8 --compute-slowdown 1.5",
       "--compute-slowdown: must be in [0, 1] (a fraction of backward's time) (got 1.5)"},
      {"calibrate --per-node 0 --nccl-tests x", "--per-node: must be > 0"},
      // A warning about the input (memory, at 1024 pixels) is held: the refusal is the only line.
      {"compare --model alexnet_bn --gpus 16 --cluster p100-horovod --resolution 1024 --pack gpt2",
       "--pack: unknown value 'gpt2' (valid: strategy, pack, inline, view)"},
      // 62 million partitions: the bounds alone took the machine's memory.
      {"schedule --model alexnet_bn --gpus 16 --partition 1",
       "--partition: 1 parameters per partition make 62,388,424 partitions, more than 100,000; give at least 625"},
      // What-if network values are held to the cluster file's ranges (SimGrid died on these).
      {"simulate --model alexnet_bn --gpus 16 --inter-lat inf",
       "--inter-lat: must be in [1e-06, 1e+06] us, or 0 (got inf)"},
      {"simulate --model alexnet_bn --gpus 16 --inter-lat 1e-300", "--inter-lat: must be in [1e-06, 1e+06] us, or 0"},
      {"schedule --model alexnet_bn --gpus 16 --inter-lat 1e999", "--inter-lat: must be in [1e-06, 1e+06] us, or 0"},
      {"predict --model alexnet_bn --gpus 16 --inter-bw 1e-300",
       "--inter-bw: must be in [0.008, 8e+06] Gb/s (got 1e-300)"},
      {"predict --model alexnet_bn --gpus 8 --cluster dgx-a100 --intra-bw 1e308",
       "--intra-bw: must be in [0.001, 1e+06] GB/s"},
      {"whatif --model alexnet_bn --gpus 16 --inter-bw 25,1e308",
       "--inter-bw: must be in [0.008, 8e+06] Gb/s (got 1e+308)"},
      {"whatif --model alexnet_bn --gpus 16 --inter-lat 1e300", "--inter-lat: must be in [1e-06, 1e+06] us, or 0"},
      // Counts and ranges are bounded: a mistyped one is refused, not run for hours.
      {"simulate --model alexnet_bn --gpus 16 --iterations 1000000000", "--iterations: must be in [1, 1000] (got 1000000000)"},
      {"whatif --model alexnet_bn --gpus 1:1048576:+1", "--gpus: range '1:1048576:+1' makes more than 10000 values"},
      {"whatif --model alexnet_bn --gpus 1:1000:+1 --batch-per-gpu 1:200:+1",
       "the sweep has 200000 configurations (the product of its lists), more than 100000"},
      {"predict --model alexnet_bn --gpus 16 --cluster " + tiny_lat, "$.inter_node.lat_us: must be in"},
      {"predict --cluster " + overflow, "malformed JSON: number overflow"},
      {"predict --cluster " + dup, "the key 'name' appears twice"},
      {"calibrate --sweep " + sweep_schema, "$.schema: expected a string"},
      {"calibrate --sweep " + sweep_ranks, "$.ranks: must be in [2, 1048576]"},
      {"calibrate --sweep " + sweep_tiny, "$.points[0].seconds: must be in"},
      {"show " + huge_tensor, "more than 2^48 elements"},
      {"calibrate --cluster dgx-h100 --ranks 16 --nccl-tests " + nccl_underflow, "line 2: count 5e-324 x 4 bytes is not the size 8"},
      {"collective --step-factor 1.0000000000000002 --sizes 1K:1M", "--step-factor: 1.000000 makes more than 10000 sizes"},
      {"whatif --model alexnet_bn --gpus 1000000000", "--gpus: must be in [1, 1048576]"},
      {"predict --model resnet50 --resolution 100000", "--resolution: must be in [1, 8192]"},
      {"tune --model alexnet_bn --gpus 16 --out " + tmp(""), "is a directory"},
      {"predict --cluster " + std::string(5000, 'x'), "--cluster: unknown cluster 'xxx"},
      // A flag given is a value, never "the default" that its 0 or -1 stands for.
      {"whatif --group 0", "--group: must be > 0 (got 0; leave the flag out for its default)"},
      {"whatif --torus-x 0", "--torus-x: must be > 0"},
      {"whatif --inter-lat -1", "--inter-lat: must be >= 0 (got -1"},
      {"whatif --target-efficiency 0", "--target-efficiency: must be > 0"},
      {"whatif --max-gpus 0", "--max-gpus: must be > 0"},
      {"predict --resolution 0", "--resolution: must be > 0"},
      {"calibrate --ranks 0 --nccl-tests x", "--ranks: must be > 0"},
      {"predict --model alexnet_bn --gpus 16 --inter-bw -3", "--inter-bw: must be > 0 (got -3"},
      {"tune --model alexnet_bn --gpus 16 --strategy k-split --segments 0", "--segments: 0 buckets asked for"},
      {"collective --sizes 1M:1K", "--sizes: MAX must be >= MIN"},
      {"collective --sizes 0:1K", "--sizes: size '0' out of range"},
      {"whatif --model alexnet_bn --gpus 16:8", "--gpus: range '16:8' needs 0 < MIN <= MAX"},
      {"compare --model alexnet_bn --gpus nan", "--gpus"},
      {"predict --profile /dev/null --model alexnet_bn --gpus 16", "/dev/null: malformed JSON"},
      {"predict --model alexnet_bn --gpus 16 --out /proc/x", "/proc/x: cannot write"},
  };
  // Each case also gets an existing output file where its command writes one (and the
  // case is not about that file): the refusal leaves it byte-identical.
  const std::string existing = tmp("hostile-existing.out");
  const std::map<std::string, std::string> output_flag = {
      {"predict", "--out"}, {"tune", "--out"}, {"whatif", "--out"}, {"calibrate", "--out"},
      {"export", "--out"},  {"show", "--export"}, {"simulate", "--trace"}, {"verify", "--trace"}};
  int with_output = 0;
  for (const auto& [args, says] : cases) {
    const std::string command = args.substr(0, args.find(' '));
    const auto flag = output_flag.find(command);
    if (flag == output_flag.end() || args.find(" " + flag->second + " ") != std::string::npos) {
      expect_bad(args, says);
      continue;
    }
    write(existing, "EXISTING\n");
    expect_bad(args + " " + flag->second + " " + existing, says);
    std::ifstream in(existing);
    std::string kept((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    INFO(args);
    CHECK(kept == "EXISTING\n");
    ++with_output;
  }
  CHECK(with_output >= 20);
}

TEST_CASE("cli: a model file whose shapes or FLOPs disagree with its layers is refused with exit 2, naming the layer") {
  const nlohmann::json zoo = nlohmann::json::parse(run("show resnet18 --json").out);
  auto model_with = [&](const std::string& name, auto&& edit) {
    nlohmann::json m = zoo;
    edit(m["layers"]);
    const std::string path = tmp(name);
    write(path, m.dump());
    return path;
  };
  const std::vector<std::pair<std::string, std::string>> cases = {
      {model_with("conv-in.json", [](auto& l) { l[4]["params"][0]["shape"] = {64, 32, 3, 3}; }),
       "$.layers[4] (layer1.0.conv1, conv2d): layer1.0.conv1.weight has shape 64x32x3x3"},
      {model_with("out-shape.json", [](auto& l) { l[4]["out_shape"] = {64, 28, 28}; }),
       "$.layers[4] (layer1.0.conv1, conv2d): out_shape 64x28x28 is not what"},
      {model_with("flops.json", [](auto& l) { l[4]["fwd_flops"] = 1; }),
       "$.layers[4] (layer1.0.conv1, conv2d): fwd_flops 1 is not what the kind and shapes give"},
      {model_with("relu-weight.json", [](auto& l) { l[2]["params"] = {{{"name", "relu.weight"}, {"shape", {64}}}}; }),
       "$.layers[2] (relu, relu): has 1 parameter tensor; a layer of this kind has none"},
  };
  for (const auto& [path, says] : cases) {
    expect_bad("show " + path, says);
    expect_bad("predict --gpus 8 --cluster dgx-a100 --model " + path, says);
  }
}

TEST_CASE("cli: a SimGrid process that dies is one line, without its backtrace") {
  const Run r = run_env("FUSEPLAN_PROGRESS=0 FUSEPLAN_FAULT_SIM_ABORT=1", "simulate --model alexnet_bn --gpus 16");
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("simulator: the SimGrid process died (signal 6, Aborted), saying "
                                    "'[simgrid] a fatal error (fault test)'; the same command reproduces it"));
  CHECK_THAT(r.out, !Catch::Contains("Backtrace"));
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
}

TEST_CASE("cli: calibrate --throughput fits the layer classes to measured training rates, and the shipped A100 "
          "rates give the shipped A100 values") {
  const std::string rates = std::string(FUSEPLAN_TEST_DATA) + "/../../configs/throughput/dgx-a100-dle.json";
  const std::string mxnet = std::string(FUSEPLAN_TEST_DATA) + "/../../configs/throughput/dgx-a100-mxnet.json";
  const std::string out = tmp("throughput-calibrated.json");
  std::filesystem::remove(out);
  // Fitted into a copy of the file without the classes the rates set (its `other`, carried
  // from the V100, kept): the rates alone bring them back.
  nlohmann::json bare = nlohmann::json::parse(std::ifstream(std::string(FUSEPLAN_TEST_DATA) +
                                                            "/../../configs/clusters/dgx-a100.json"));
  const nlohmann::json shipped = bare["device"]["by_kind"];
  const double variation = bare["compute_variation"].get<double>();
  for (const char* cls : {"conv_kxk", "conv_1x1", "conv_grouped", "gemm", "attention"}) {
    bare["device"]["by_kind"].erase(cls);
    bare["provenance"].erase(std::string("device.by_kind.") + cls);
  }
  bare.erase("compute_variation");  // and the wait for the slowest GPU, which its scaling measurements fit
  bare["provenance"].erase("compute_variation");
  const std::string bare_path = tmp("dgx-a100-bare.json");
  write(bare_path, bare.dump());
  // The classes from PyTorch's rates, then the wait from MXNet's runs, each priced at
  // MXNet's compute scale (its single-GPU rates in the same file).
  const std::string classes = tmp("throughput-classes.json");
  const Run r = run("calibrate --cluster " + bare_path + " --throughput " + rates + " --out " + classes);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("10 measurements") && Catch::Contains("Levenberg-Marquardt") &&
                        Catch::Contains("(held out)"));
  const Run w = run("calibrate --cluster " + classes + " --throughput " + mxnet + " --out " + out);
  INFO(w.out);
  REQUIRE(w.code == 0);
  CHECK_THAT(w.out, Catch::Contains("compute_scale fp32 0.91") && Catch::Contains("(6 measurements), cluster") &&
                        Catch::Contains("plans/mx-a100-resnet50-tf32-2gpu.json") &&
                        Catch::Contains("least squares over 3 measurements"));
  const auto fitted = nlohmann::json::parse(std::ifstream(out));
  CHECK(fitted["compute_variation"].get<double>() == Approx(variation).margin(1e-5));  // shipped to 5 decimals
  CHECK_THAT(fitted["provenance"]["compute_variation"].get<std::string>(),
             Catch::StartsWith("FITTED (fuseplan calibrate --throughput ") &&
                 Catch::Contains("resnet50 on 8 GPUs (plans/mx-a100-resnet50-tf32.json)"));
  for (const char* cls : {"conv_kxk", "conv_1x1", "conv_grouped", "gemm", "attention"})
    for (const char* p : {"fp32", "fp16"}) {
      INFO(cls << " " << p);
      CHECK(fitted["device"]["by_kind"][cls]["compute_efficiency"][p].get<double>() ==
            Approx(shipped[cls]["compute_efficiency"][p].get<double>()).margin(1e-4));
    }
  CHECK_THAT(fitted["provenance"]["device.by_kind.conv_grouped.compute_efficiency.fp16"].get<std::string>(),
             Catch::StartsWith("FITTED (fuseplan calibrate --throughput ") &&
                 Catch::Contains("resnext101_32x4d at batch 128, fp16, 1211 samples/s on one GPU"));
  // predict on the written file trains ResNet-50 at the measured rate.
  const auto p = json_of("predict --cluster " + out + " --model resnet50 --gpus 1 --batch-per-gpu 256 --precision fp16 "
                         "--accumulate 8 --optimizer sgd --optimizer-kernels per-tensor --json");
  CHECK(256 / p["iteration_s"].get<double>() == Approx(2470).epsilon(1e-6));

  // Bad input: one line naming the file and JSON path, exit 2, the output left alone.
  write(out, "keep");
  const std::string bad = tmp("rates-bad.json");
  write(bad, R"({"schema": "fuseplan.throughput/1", "measurements": [{"model": "resnet50", "batch_per_gpu": 64,
      "precision": "fp16", "samples_per_s": 900, "fit": ["attention"]}]})");
  expect_bad("calibrate --cluster dgx-a100 --throughput " + bad + " --out " + out,
             "--throughput " + bad + ": $.measurements[0].fit[0]: resnet50 has no layer of class attention");
  write(bad, R"({"schema": "fuseplan.throughput/1", "measurements": [{"model": "resnet50", "batch_per_gpu": 64,
      "precision": "fp16", "samples_per_s": 90000, "fit": ["conv_kxk", "conv_1x1"]}]})");
  expect_bad("calibrate --cluster dgx-a100 --throughput " + bad + " --out " + out,
             "$.measurements[0]: 90000 samples/s is more than resnet50 trains on one GPU of dgx-a100");
  write(bad, R"({"schema": "fuseplan.throughput/1", "measurements": [{"plan": "no-such-plan.json",
      "scaling_efficiency": 0.9, "fit": ["compute_variation"]}]})");
  expect_bad("calibrate --cluster dgx-a100 --throughput " + bad + " --out " + out,
             "--throughput " + bad + ": $.measurements[0].plan no-such-plan.json: cannot open");
  std::stringstream kept;
  kept << std::ifstream(out).rdbuf();
  CHECK(kept.str() == "keep");
  expect_bad("calibrate --throughput " + rates + " --profile x.json --model resnet50",
             "--throughput and --profile with --model are exclusive");
  // A rate held out (its `fit` empty) is predicted beside the fitted ones, not fitted.
  const std::string held = tmp("rates-held-out.json");
  write(held, R"({"schema": "fuseplan.throughput/1", "measurements": [{"model": "resnet50", "batch_per_gpu": 256,
      "precision": "fp16", "samples_per_s": 2470, "fit": [], "accumulate": 8, "optimizer": "sgd",
      "optimizer_kernels": "per-tensor"}]})");
  const Run h = run("calibrate --cluster dgx-a100 --throughput " + held);
  CHECK(h.code == 0);
  CHECK_THAT(h.out, Catch::Contains("(held out)") && Catch::Contains("held out: predicted with the values fitted"));
  expect_bad("calibrate --cluster dgx-a100 --throughput " + held + " --out " + out,
             "--out: no measurement of --throughput " + held + " fits a value of the cluster file");
  // A step overhead is the plans', not the cluster's: printed, not written.
  const std::string plans = std::string(FUSEPLAN_TEST_DATA) + "/../../configs/throughput/plans/";
  write(held, R"({"schema": "fuseplan.throughput/1", "measurements": [
      {"plan": ")" + plans + R"(mx-a100-resnet50-tf32-2gpu.json", "scaling_efficiency": 0.99, "fit": ["step_overhead"]},
      {"plan": ")" + plans + R"(mx-a100-resnet50-tf32.json", "scaling_efficiency": 0.97, "fit": ["step_overhead"]}]})");
  const Run o = run("calibrate --cluster dgx-a100 --throughput " + held);
  CHECK(o.code == 0);
  CHECK_THAT(o.out, Catch::Contains("step overhead ") && Catch::Contains("give it to predict, tune, compare or "
                                                                         "whatif as --step-overhead"));
  expect_bad("calibrate --cluster dgx-a100 --throughput " + held + " --out " + out,
             "--out: no measurement of --throughput " + held + " fits a value of the cluster file");
}

TEST_CASE("cli: calibrate --throughput fits a framework's compute_scale, which --compute-scale then predicts with") {
  // A framework 20 % slower than the cluster's fit: its ResNet-50 rate on one GPU.
  const std::string setup = "--model resnet50 --cluster dgx1-v100 --batch-per-gpu 128 --precision fp32";
  const double rate = 128 / json_of("predict " + setup + " --gpus 1 --json")["iteration_s"].get<double>() / 1.2;
  const std::string rates = tmp("rates-framework.json");
  write(rates, R"({"schema": "fuseplan.throughput/1", "measurements": [{"model": "resnet50", "batch_per_gpu": 128,
      "precision": "fp32", "samples_per_s": )" + std::to_string(rate) + R"(, "fit": ["compute_scale"]},
      {"model": "resnet101", "batch_per_gpu": 64, "precision": "fp32", "samples_per_s": 100, "fit": []}]})");
  const Run r = run("calibrate --cluster dgx1-v100 --throughput " + rates);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("compute_scale fp32 1.2000: the framework's compute time") &&
                        Catch::Contains("commands as --compute-scale") && Catch::Contains("(held out)"));
  // predict with it trains ResNet-50 at the framework's rate, and says so.
  const auto p = json_of("predict " + setup + " --gpus 1 --compute-scale 1.2 --json");
  CHECK(128 / p["iteration_s"].get<double>() == Approx(rate).epsilon(1e-6));
  CHECK(p["compute_scale"].get<double>() == 1.2);  // the report says what it was priced at
  CHECK_FALSE(json_of("predict " + setup + " --gpus 1 --json").contains("compute_scale"));
  CHECK_THAT(run("predict " + setup + " --gpus 8 --compute-scale 1.2").out,
             Catch::Contains("fp32 compute x 1.2 (the framework's compute scale)"));
  // A plan made with it keeps it: predict --plan prices it so, and --compute-scale replaces it.
  const std::string plan = tmp("plan-framework.json");
  json_of("tune " + setup + " --gpus 8 --compute-scale 1.2 --out " + plan + " --json");
  const auto again = json_of("predict --plan " + plan + " --json");
  CHECK(again["compute_scale"].get<double>() == 1.2);
  CHECK(again["iteration_s"].get<double>() ==
        Approx(nlohmann::json::parse(std::ifstream(plan))["prediction"]["iteration_s"].get<double>()).epsilon(1e-12));
  CHECK_FALSE(json_of("predict --plan " + plan + " --compute-scale 1 --json").contains("compute_scale"));
  // Not the cluster's: nothing to write. Bad values and companions: one line, exit 2.
  const std::string out = tmp("framework-calibrated.json");
  write(out, "keep");
  expect_bad("calibrate --cluster dgx1-v100 --throughput " + rates + " --out " + out,
             "--out: no measurement of --throughput " + rates + " fits a value of the cluster file");
  std::stringstream kept;
  kept << std::ifstream(out).rdbuf();
  CHECK(kept.str() == "keep");
  expect_bad("predict " + setup + " --compute-scale 21", "--compute-scale: must be in [0.05, 20]");
  expect_bad("predict " + setup + " --compute-scale 1.2 --measured-rate 300",
             "--compute-scale and --measured-rate are exclusive");
  expect_bad("whatif --model resnet50 --cluster dgx1-v100 --gpus 8 --compute-scale 0",
             "--compute-scale: must be in [0.05, 20]");
}
