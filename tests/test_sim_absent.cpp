// A build without SimGrid: the simulator's stub refuses every simulation with one line
// that says why (InputError: exit 2), whatever is asked.
#include <catch2/catch.hpp>

#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"

using namespace fuseplan;

TEST_CASE("without SimGrid every simulation refuses with one line naming the package") {
  const Model m = build_zoo_model("alexnet_bn");
  const Cluster c = load_cluster("tencent-p40");
  const Plan plan = make_plan(m, "tencent-p40", 8, 64, Precision::FP16,
                              buckets_from_spec("single", m, "auto", Precision::FP16), "single");
  const auto says = Catch::Contains("this build has no SimGrid (Debian's libsimgrid-dev)");
  CHECK_THROWS_AS(sim::simulate_plan(m, c, plan, {}, {}, {}), InputError);
  CHECK_THROWS_WITH(sim::simulate_plan(m, c, plan, {}, {}, {}), says);
  CHECK_THROWS_WITH(sim::simulate_plan(bind_scenario(m, c, plan, {}, {}, "p.json"), {}), says);
  CHECK_THROWS_WITH(sim::simulate_allreduce(c, 8, "ring", 1 << 20, Precision::FP16), says);
}
