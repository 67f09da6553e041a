// The pieces both simulations share: the engine configuration and one rank's replay of
// a collective schedule.
#pragma once
#include <simgrid/s4u.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "fuseplan/costmodel/collective.hpp"

namespace fuseplan::sim {

// Quiet logs and the network model: cm02 (default) is CM02 without cross-traffic, the
// alpha-beta model (no TCP slow-start factors, no reverse-path ACK load); lv08 and smpi
// are SimGrid's LV08 and SMPI models with their default factors. Call right after
// creating the Engine.
void configure_engine(const std::string& network_model = "cm02");
// InputError naming --network-model unless cm02, lv08 or smpi.
void check_network_model(const std::string& name);

// One mailbox per sender, receiver and channel, looked up without building names on the
// hot path (a simulation posts millions of messages).
class Mailboxes {
 public:
  Mailboxes(int ranks, int channels);
  simgrid::s4u::Mailbox* get(int src, int dst, int channel);

 private:
  int ranks_, channels_;
  std::vector<simgrid::s4u::Mailbox*> table_;
};

// Which transfers of each round of a schedule touch each rank, so that a rank's replay
// reads its own transfers instead of scanning every round whole (which made a P-rank
// ring cost P^3).
class ScheduleIndex {
 public:
  ScheduleIndex() = default;
  ScheduleIndex(const Schedule& s, int ranks);
  // Indices into s.rounds[round].transfers of those with `rank` as source or destination.
  std::pair<const uint32_t*, const uint32_t*> of(int round, int rank) const {
    const size_t at = size_t(round) * size_t(ranks_ + 1) + size_t(rank);
    return {entries_.data() + offsets_[at], entries_.data() + offsets_[at + 1]};
  }

 private:
  int ranks_ = 0;
  std::vector<uint32_t> offsets_, entries_;
};

// Counts replayed rounds (one rank's round is one step) and reports now and then.
struct StepCounter {
  int64_t done = 0, total = 0;
  std::function<void(int64_t, int64_t)> report;
  void step() {
    if ((++done & 1023) == 0 && report) report(done, total);
  }
};

// What one collective's messages cost on the platform. On a cluster file's own links a
// message is its size (`scale` 1) and the links carry the latency. A calibrated cluster
// runs on a flat platform of latency-free ports (platform.hpp): each message is sent as
// `scale` times its size, and every round adds the fitted per-round latency.
struct Wire {
  double scale = 1;            // simulated bytes per byte
  double round_latency_s = 0;  // added to each round
  double gamma = 0;            // seconds per byte reduced
};

// Rank `rank`'s part of `s`: per round, post its sends and receives (one mailbox per
// sender, receiver and `channel`, so concurrent streams never match each other's
// messages), wait for them (and the wire's round latency), then reduce what it received
// at the wire's gamma seconds per byte.
void run_rounds(const Schedule& s, const ScheduleIndex& index, int rank, int elem_bytes, const Wire& wire, int channel,
                Mailboxes& boxes, StepCounter* steps = nullptr);

}  // namespace fuseplan::sim
