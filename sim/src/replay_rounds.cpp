#include "replay_rounds.hpp"

#include <simgrid/s4u.hpp>
#include <xbt/log.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "fuseplan/models/error.hpp"

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

void configure_engine(const std::string& network_model) {
  xbt_log_control_set("root.thres:critical");
#if defined(__SANITIZE_ADDRESS__)
  // AddressSanitizer cannot follow user-level stack switches: one thread per actor.
  sg4::Engine::set_config("contexts/factory:thread");
#else
  sg4::Engine::set_config("contexts/factory:raw");  // the fastest context switches
  // KiB. Replay actors are shallow; small stacks (the default is 8 MiB) halved the time
  // of a 1024-rank ring (fewer cache and TLB misses on context switches).
  sg4::Engine::set_config("contexts/stack-size:128");
#endif
  if (network_model == "lv08") {
    sg4::Engine::set_config("network/model:LV08");
  } else if (network_model == "smpi") {
    sg4::Engine::set_config("network/model:SMPI");
  } else {
    sg4::Engine::set_config("network/model:CM02");
    sg4::Engine::set_config("network/crosstraffic:0");
  }
}

void check_network_model(const std::string& name) {
  if (name != "cm02" && name != "lv08" && name != "smpi")
    throw InputError(field("sim.network_model") + ": unknown model '" + name + "' (valid: cm02, lv08, smpi)");
}

namespace {
char token;  // messages carry no data: only their simulated size matters
}  // namespace

Mailboxes::Mailboxes(int ranks, int channels)
    : ranks_(ranks), channels_(channels), table_(size_t(ranks) * size_t(ranks) * size_t(channels), nullptr) {}

sg4::Mailbox* Mailboxes::get(int src, int dst, int channel) {
  sg4::Mailbox*& m = table_[(size_t(src) * size_t(ranks_) + size_t(dst)) * size_t(channels_) + size_t(channel)];
  if (!m) {
    std::string name("m");
    name.append(std::to_string(src)).append("_").append(std::to_string(dst)).append("_").append(std::to_string(channel));
    m = sg4::Mailbox::by_name(name);
  }
  return m;
}

ScheduleIndex::ScheduleIndex(const Schedule& s, int ranks) : ranks_(ranks) {
  const size_t stride = size_t(ranks) + 1;
  offsets_.assign(s.rounds.size() * stride, 0);
  size_t total = 0;
  for (const auto& round : s.rounds) total += 2 * round.transfers.size();
  if (total > UINT32_MAX) throw InputError("simulate: the schedule has too many messages to replay");
  entries_.resize(total);
  std::vector<uint32_t> count(ranks);
  uint32_t base = 0;
  for (size_t k = 0; k < s.rounds.size(); ++k) {
    const auto& xs = s.rounds[k].transfers;
    std::fill(count.begin(), count.end(), 0);
    for (const auto& x : xs) {
      ++count[x.src];
      if (x.dst != x.src) ++count[x.dst];
    }
    uint32_t* off = offsets_.data() + k * stride;
    off[0] = base;
    for (int r = 0; r < ranks; ++r) off[r + 1] = off[r] + count[r];
    std::vector<uint32_t> fill(off, off + ranks);
    for (uint32_t t = 0; t < xs.size(); ++t) {
      entries_[fill[xs[t].src]++] = t;
      if (xs[t].dst != xs[t].src) entries_[fill[xs[t].dst]++] = t;
    }
    base = off[ranks];
  }
  entries_.resize(base);
}

void run_rounds(const Schedule& s, const ScheduleIndex& index, int rank, int elem_bytes, const Wire& wire, int channel,
                Mailboxes& boxes, StepCounter* steps) {
  std::vector<sg4::CommPtr> comms;
  std::vector<void*> sinks;  // live until wait_all
  for (size_t k = 0; k < s.rounds.size(); ++k) {
    const auto& round = s.rounds[k];
    const auto [first, last] = index.of(static_cast<int>(k), rank);
    comms.clear();
    sinks.assign(size_t(last - first), nullptr);
    double reduce_bytes = 0;
    for (const uint32_t* t = first; t != last; ++t) {
      const auto& x = round.transfers[*t];
      void*& sink = sinks[size_t(t - first)];
      const auto bytes = static_cast<uint64_t>(x.count) * static_cast<uint64_t>(elem_bytes);
      const auto sent = wire.scale == 1 ? bytes : static_cast<uint64_t>(std::llround(double(bytes) * wire.scale));
      if (x.src == rank) comms.push_back(boxes.get(x.src, x.dst, channel)->put_async(&token, sent));
      if (x.dst == rank) {
        comms.push_back(boxes.get(x.src, x.dst, channel)->get_async<void>(&sink));
        if (x.reduce) reduce_bytes += double(bytes);
      }
    }
    sg4::Comm::wait_all(comms);
    if (!comms.empty() && wire.round_latency_s > 0) sg4::this_actor::sleep_for(wire.round_latency_s);
    if (reduce_bytes > 0 && wire.gamma > 0) sg4::this_actor::sleep_for(reduce_bytes * wire.gamma);
    if (steps) steps->step();
  }
}

}  // namespace fuseplan::sim
