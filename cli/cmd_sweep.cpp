// `fuseplan-exec sweep`: an allreduce sweep across MPI ranks like nccl-tests'
// all_reduce_perf (time, algbw, busbw per size and algorithm) for `fuseplan calibrate`;
// with --comm nccl, NCCL's allreduce on the ranks' GPUs, with NCCL's own estimate of
// each size beside the measurement.
#include <algorithm>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "commands.hpp"
#include "format.hpp"
#include "mpi_setup.hpp"
#include "fuseplan/costmodel/plan.hpp"
#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/exec/nccl.hpp"
#include "fuseplan/models/error.hpp"
#include "progress.hpp"

namespace fuseplan::cli {

namespace {

struct SweepFlags {
  std::string algorithm, sizes = "4K:256M", precision = "fp32", out, comm = "mpi";
  int step_factor = 2, warmup = 3, iterations = 0, device = -1;
  double seconds_per_size = 0.2, timeout_s = 60;
  bool quiet = false;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// Timed allreduces per size at most (a mistyped count would run for days).
constexpr int kMaxIterations = 100'000;

void run_sweep(const SweepFlags& f) {
  exec::MpiWorld world(nullptr, nullptr);
  world.set_timeout(setup_wait_s(f.timeout_s));  // no collective waits past --timeout for a silent rank
  std::vector<std::string> algos;
  std::vector<int64_t> sizes;
  Precision p = Precision::FP32;
  bool nccl = false;
  int device = -1;
  std::unique_ptr<exec::NcclAllreduceSweep> gpu;
  std::string error;
  try {
    p = parse_precision(f.precision, "--precision");
    if (f.comm != "mpi" && f.comm != "nccl") throw InputError("--comm: unknown '" + f.comm + "' (valid: mpi, nccl)");
    nccl = f.comm == "nccl";
    algos = split_list(f.algorithm.empty() ? (nccl ? "nccl" : "mpi,ring,recursive_doubling,rabenseifner") : f.algorithm);
    if (algos.empty()) throw InputError("--algorithm: empty list");
    if (nccl && algos != std::vector<std::string>{"nccl"})
      throw InputError("--algorithm: with --comm nccl it is nccl, NCCL's own choice (NCCL_ALGO and NCCL_PROTO "
                       "steer it for the job)");
    if (!nccl && f.device >= 0) throw InputError("--device: only with --comm nccl");
    for (const auto& a : algos) find_algorithm(a, "--algorithm");
    const auto colon = f.sizes.find(':');
    const int64_t lo = parse_bytes(f.sizes.substr(0, colon), "--sizes");
    const int64_t hi = colon == std::string::npos ? lo : parse_bytes(f.sizes.substr(colon + 1), "--sizes");
    if (lo < 1 || hi < lo) throw InputError("--sizes: MIN:MAX with 1 <= MIN <= MAX (got " + f.sizes + ")");
    if (f.step_factor < 2) throw InputError("--step-factor: must be >= 2");
    if (f.warmup < 0 || f.iterations < 0) throw InputError("--warmup/--iterations: must be >= 0");
    if (!(f.seconds_per_size > 0)) throw InputError("--seconds-per-size: must be > 0");
    if (!(f.timeout_s > 0)) throw InputError("--timeout: must be > 0 seconds");
    if (f.iterations > kMaxIterations || f.warmup > kMaxIterations)
      throw InputError("--warmup/--iterations: at most " + std::to_string(kMaxIterations));
    // NCCL runs on one rank too (its plumbing and its estimates on one GPU); calibrate
    // needs two.
    if (!nccl && world.ranks() < 2) throw InputError("sweep: needs 2 or more ranks (mpirun -np N fuseplan-exec sweep)");
    // The largest message's buffer and the algorithm's scratch (a lower bound: two FP32
    // copies per element) on every rank of this node, against the machine's memory (the
    // GPU's, for NCCL, is checked where it is allocated).
    if (!nccl)
      check_fits_in_memory(8.0 * double(hi / bytes_per_element(p)) * world.layout().per_node,
                           "the largest message on this node's " + std::to_string(world.layout().per_node) +
                               " ranks",
                           "--sizes " + f.sizes);
    for (int64_t s = lo; s <= hi; s *= f.step_factor) sizes.push_back(s);
    if (nccl) device = exec::nccl_device(world, f.device);
  } catch (const InputError& e) {
    error = with_flags(e);
  }
  agree_on_setup(world, error, "fuseplan-exec");
  if (nccl) gpu = exec::make_nccl_sweep(world, device, p, sizes.back() / bytes_per_element(p), setup_wait_s(f.timeout_s));

  const int eb = bytes_per_element(p);
  const bool talk = world.rank() == 0;
  if (talk)
    out() << "# fuseplan-exec sweep: allreduce (sum) on " << world.ranks() << " ranks, " << world.layout().nodes
          << " node(s), " << world.layout().per_node << " per node, " << precision_name(p)
          << (nccl ? ", NCCL on GPU " + std::to_string(device) + " of rank 0" : "") << "\n"
          << "#        size       count  algorithm                time(us)  algbw(GB/s)  busbw(GB/s)  iters"
          << (nccl ? "  NCCL est(us)" : "") << "\n";
  if (talk && csv_output())
    std::cout << "size,count,algorithm,time_us,algbw_GBps,busbw_GBps,iterations" << (nccl ? ",nccl_estimate_us" : "")
              << "\n";
  nlohmann::json points = nlohmann::json::array();
  ProgressBar bar("sizes", f.quiet || !talk);
  int64_t done = 0;
  std::vector<float> buf;
  int tag = 0;
  for (const auto& a : algos)
    for (int64_t bytes : sizes) {
      const int64_t count = std::max<int64_t>(1, bytes / eb);
      exec::NcclSweepPoint pt;
      if (nccl) {
        pt = gpu->measure(count, f.warmup, f.iterations, f.seconds_per_size);
      } else {
        exec::AllreduceSpec spec;
        spec.algorithm = a;
        spec.transfer = p;
        exec::Allreduce op(world.comm(), world.layout().topo(), count, spec, tag++ % 30000);
        buf.assign(size_t(count), 1.0f);
        auto once = [&] {
          op.start(buf.data());
          op.wait();
        };
        once();  // also checks the result: every rank contributed ones
        if (buf[0] != float(world.ranks()) || buf[size_t(count - 1)] != float(world.ranks()))
          throw RunError("sweep: " + a + " at " + std::to_string(bytes) + " B gave a wrong sum");
        for (int i = 0; i < f.warmup; ++i) once();
        pt.timing = exec::time_allreduces(
            world,
            [&](int n) {
              for (int i = 0; i < n; ++i) once();
            },
            f.iterations, f.seconds_per_size);
      }
      const double nb = double(count) * eb, t = pt.timing.seconds;
      const int iters = pt.timing.iterations;
      if (talk) {
        char line[240];
        std::snprintf(line, sizeof line, "%13.0f %11lld  %-22s %10.2f %12.3f %12.3f %6d", nb, (long long)count,
                      a.c_str(), t * 1e6, algbw_GBps(nb, t), busbw_GBps(nb, t, world.ranks()), iters);
        out() << line << (nccl ? "  " + (pt.nccl_estimate_s > 0 ? fixed(pt.nccl_estimate_s * 1e6, 2) : "-") : "")
              << "\n" << std::flush;
        if (csv_output())
          std::cout << nb << "," << count << "," << a << "," << t * 1e6 << "," << algbw_GBps(nb, t) << ","
                    << busbw_GBps(nb, t, world.ranks()) << "," << iters
                    << (nccl ? "," + (pt.nccl_estimate_s > 0 ? std::to_string(pt.nccl_estimate_s * 1e6) : "") : "")
                    << std::endl;
      }
      nlohmann::json point{{"algorithm", a}, {"bytes", nb}, {"seconds", t}, {"iterations", iters}};
      if (pt.nccl_estimate_s > 0) point["nccl_estimate_seconds"] = pt.nccl_estimate_s;
      points.push_back(point);
      bar(++done, int64_t(algos.size() * sizes.size()));
    }
  if (talk && !f.out.empty()) {
    nlohmann::json j{{"schema", "fuseplan.sweep/1"}, {"ranks", world.ranks()}, {"per_node", world.layout().per_node},
                     {"precision", precision_name(p)}, {"host", nccl ? "fuseplan-exec sweep --comm nccl" : "fuseplan-exec sweep"},
                     {"points", points}};
    write_file_atomic(f.out, j.dump(2) + "\n");
  }
}

}  // namespace

void add_sweep_command(CLI::App& app) {
  auto f = std::make_shared<SweepFlags>();
  auto* cmd = app.add_subcommand("sweep",
                                 "Allreduce sweep across MPI ranks (like nccl-tests' all_reduce_perf): time, algbw and\n"
                                 "busbw per size and algorithm; --out writes it for `fuseplan calibrate --sweep`.");
  cmd->add_option("--comm", f->comm,
                  "mpi: the ranks' CPUs over MPI; nccl: NCCL's allreduce on the ranks' GPUs (one rank per GPU), with "
                  "NCCL's own estimate (ncclGroupSimulateEnd) per size")
      ->capture_default_str();
  cmd->add_option("--device", f->device, "--comm nccl: this rank's GPU (default: local rank modulo the node's GPUs)");
  cmd->add_option("--algorithm", f->algorithm,
                  "allreduce algorithms, comma-separated: mpi and fuseplan's (default: "
                  "mpi,ring,recursive_doubling,rabenseifner; nccl with --comm nccl)");
  cmd->add_option("--sizes", f->sizes,
                  "MIN:MAX message bytes (4K, 256M, 64MiB, ...; the largest must fit in the node's memory)")
      ->capture_default_str();
  cmd->add_option("--timeout", f->timeout_s, "seconds a rank waits for the others at set-up before the job stops")
      ->capture_default_str();
  cmd->add_option("--step-factor", f->step_factor, "multiply the size by this each row, like nccl-tests -f")->capture_default_str();
  cmd->add_option("--precision", f->precision, "element type: fp32 | fp16 | bf16")->capture_default_str();
  cmd->add_option("--warmup", f->warmup, "untimed allreduces per size (at most " + std::to_string(kMaxIterations) + ")")->capture_default_str();
  cmd->add_option("--iterations", f->iterations, "timed allreduces per size (0 = enough for --seconds-per-size; at most " +
                      std::to_string(kMaxIterations) + ")")
      ->capture_default_str();
  cmd->add_option("--seconds-per-size", f->seconds_per_size, "target timing per size when --iterations is 0")
      ->capture_default_str();
  cmd->add_option("--out", f->out, "write the sweep (fuseplan.sweep/1) to FILE");
  cmd->add_flag("--quiet", f->quiet, "no progress on stderr");
  cmd->callback([f] { run_sweep(*f); });
}

}  // namespace fuseplan::cli
