// Replays a collective schedule on the SimGrid platform, one actor per rank.
#include <simgrid/s4u.hpp>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"
#include "platform.hpp"
#include "replay_rounds.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

namespace {

std::string simulate_child(const Cluster& c, int gpus, const std::string& algorithm, int64_t count, Precision transfer,
                           CollectiveOptions opt) {
  CollectiveModel coll(c, gpus, opt);
  CollectiveChoice ch = coll.cost(algorithm, count, transfer);  // validates and picks `auto`
  Schedule sched = coll.schedule(ch, count, transfer);
  const ScheduleIndex index(sched, gpus);

  sg4::Engine e("fuseplan-sim");
  configure_engine();
  Platform plat = build_platform(c, coll.topo(), platform_net(c, coll));
  std::vector<double> finish(gpus, 0);
  int64_t messages = 0;
  for (const auto& round : sched.rounds) messages += static_cast<int64_t>(round.transfers.size());
  const Wire wire = wire_for(c, coll, ch, count, transfer, sched);
  Mailboxes boxes(gpus, 1);
  for (int r = 0; r < gpus; ++r) {
    sg4::Actor::create(std::string("rank").append(std::to_string(r)), plat.hosts[r], [&, r] {
      run_rounds(sched, index, r, bytes_per_element(transfer), wire, 0, boxes);
      finish[r] = sg4::Engine::get_clock();
    });
  }
  e.run();
  nlohmann::json j{{"simulated_s", *std::max_element(finish.begin(), finish.end())},
                   {"closed_form_s", ch.cost.total()},
                   {"messages", messages},
                   {"rounds", sched.rounds.size()}};
  return j.dump();
}

}  // namespace

SimCollectiveResult simulate_allreduce(const Cluster& cluster, int gpus, const std::string& algorithm, int64_t count,
                                       Precision transfer, CollectiveOptions opt) {
  if (count <= 0) throw InputError("simulate: element count must be > 0");
  auto j = nlohmann::json::parse(
      run_isolated([&] { return simulate_child(cluster, gpus, algorithm, count, transfer, opt); }));
  SimCollectiveResult r;
  r.simulated_s = j["simulated_s"];
  r.closed_form_s = j["closed_form_s"];
  r.messages = j["messages"];
  r.rounds = j["rounds"];
  return r;
}

}  // namespace fuseplan::sim
