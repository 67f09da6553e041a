// Benchmark: wall time and peak memory of simulating one resnet50 iteration in SimGrid
// (issue targets: 1024 GPUs with a 2-bucket hierarchical plan under 5 s, with a ring
// plan under 30 s, under 4 GB). Prints figures; not a test. CPU time (user + system of the
// simulating process) is steadier than wall time on a shared machine.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>

#include "fuseplan/costmodel/tuner.hpp"
#include "fuseplan/models/zoo.hpp"
#include "fuseplan/sim/simulator.hpp"

using namespace fuseplan;

int main(int argc, char** argv) {
  int max_gpus = argc > 1 ? std::atoi(argv[1]) : 4096;
  Model m = build_zoo_model("resnet50");
  std::printf("fuseplan simulator: one resnet50 iteration (32 per GPU), tencent-p40 nodes of 8, 2-bucket plans\n");
  for (const char* algo : {"hierarchical", "ring"}) {
    for (int gpus : {1024, 2048, 4096}) {
      if (gpus > max_gpus) continue;
      Cluster c = load_cluster("tencent-p40");
      c.nodes = std::max(c.nodes, gpus / c.gpus_per_node);  // 4096: the same cluster, grown
      Tuner t(m, c, gpus, 32, Precision::FP16);
      TuneOptions o;
      o.strategy = Strategy::KSplit;
      o.algorithm = algo;
      TuneResult r = t.run(o);
      auto t0 = std::chrono::steady_clock::now();
      std::string out = sim::run_isolated([&] {
        Report s = sim::simulate_plan_here(m, c, r.plan, {}, {}, {});
        rusage u{};
        getrusage(RUSAGE_SELF, &u);
        double cpu = double(u.ru_utime.tv_sec) + 1e-6 * double(u.ru_utime.tv_usec) + double(u.ru_stime.tv_sec) +
                     1e-6 * double(u.ru_stime.tv_usec);
        return std::to_string(s.iteration_s) + " " + std::to_string(u.ru_maxrss) + " " + std::to_string(cpu);
      });
      double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      double it = 0, cpu = 0;
      long rss_kb = 0;
      std::sscanf(out.c_str(), "%lf %ld %lf", &it, &rss_kb, &cpu);
      std::printf("  %-12s %5d GPUs  %7.2f s wall  %7.2f s CPU  %7.0f MiB peak  iteration %.2f ms (predicted %.2f ms)\n",
                  algo, gpus, wall, cpu, rss_kb / 1024.0, it * 1e3, r.report.iteration_s * 1e3);
      std::fflush(stdout);
    }
  }
  return 0;
}
