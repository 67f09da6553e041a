// Replays a collective schedule on the SimGrid platform, one actor per rank.
#include <simgrid/s4u.hpp>
#include <xbt/log.h>

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>

#include "fuseplan/models/error.hpp"
#include "fuseplan/sim/simulator.hpp"
#include "isolated.hpp"
#include "platform.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

namespace {

// Network model: CM02 without cross-traffic is the alpha-beta model (no TCP slow-start
// factors, no reverse-path ACK load).
void configure_engine() {
  xbt_log_control_set("root.thres:critical");
  sg4::Engine::set_config("network/model:CM02");
  sg4::Engine::set_config("network/crosstraffic:0");
}

std::string simulate_child(const Cluster& c, int gpus, const std::string& algorithm, int64_t count, Precision transfer,
                           CollectiveOptions opt) {
  CollectiveModel coll(c, gpus, opt);
  CollectiveChoice ch = coll.cost(algorithm, count, transfer);  // validates and picks `auto`
  CollectiveArgs args = coll.args(count, transfer);
  args.variant = ch.variant;
  Schedule sched = ch.algorithm->schedule(args);

  int argc = 1;
  char name[] = "fuseplan-sim";
  char* argv[] = {name, nullptr};
  sg4::Engine e(&argc, argv);
  configure_engine();
  Platform plat = build_platform(c, coll.topo(), coll.net());
  const int eb = args.elem_bytes;
  std::map<std::pair<int, int>, sg4::Mailbox*> boxes;
  for (const auto& round : sched.rounds)
    for (const auto& x : round.transfers) {
      auto key = std::make_pair(x.src, x.dst);
      if (!boxes.count(key))
        boxes[key] = sg4::Mailbox::by_name(std::string("m").append(std::to_string(x.src)).append("_").append(std::to_string(x.dst)));
    }
  std::vector<double> finish(gpus, 0);
  int64_t messages = 0;
  for (const auto& round : sched.rounds) messages += static_cast<int64_t>(round.transfers.size());
  static char token;
  for (int r = 0; r < gpus; ++r) {
    sg4::Actor::create(std::string("rank").append(std::to_string(r)), plat.hosts[r], [&, r] {
      for (const auto& round : sched.rounds) {
        std::vector<sg4::CommPtr> comms;
        std::vector<void*> sinks(round.transfers.size(), nullptr);  // live until wait_all
        double reduce_bytes = 0;
        for (size_t k = 0; k < round.transfers.size(); ++k) {
          const auto& x = round.transfers[k];
          uint64_t bytes = static_cast<uint64_t>(x.count) * eb;
          if (x.src == r) comms.push_back(boxes[{x.src, x.dst}]->put_async(&token, bytes));
          if (x.dst == r) {
            comms.push_back(boxes[{x.src, x.dst}]->get_async<void>(&sinks[k]));
            if (x.reduce) reduce_bytes += double(bytes);
          }
        }
        sg4::Comm::wait_all(comms);
        if (reduce_bytes > 0 && coll.net().gamma > 0) sg4::this_actor::execute(reduce_bytes);
      }
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
  if (!cluster.calibrated.empty())
    throw InputError("simulate: cluster " + cluster.name + " has calibrated algorithms; the simulator uses its links");
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
