// The pieces both simulations share: the engine configuration and one rank's replay of
// a collective schedule.
#pragma once
#include <simgrid/s4u.hpp>
#include <string>
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

// Rank `rank`'s part of `s`: per round, post its sends and receives (one mailbox per
// sender, receiver and `channel`, so concurrent streams never match each other's
// messages), wait for them, then reduce what it received at `gamma` seconds per byte.
void run_rounds(const Schedule& s, int rank, int elem_bytes, double gamma, int channel, Mailboxes& boxes);

}  // namespace fuseplan::sim
