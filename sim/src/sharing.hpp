// Processor sharing in the simulators, as the predictor models it (Cluster::sharing,
// schedule_shared): a rank's computation and its running allreduces share one processor.
// While k of the rank's slots (streams or message credits) run an allreduce, its
// computation proceeds at 1 / (1 + sigma.compute k); an allreduce's rounds move at the
// network's speed, and the allreduce then holds its slot until its service (rate
// 1 / (1 + sigma.comm) while the rank computes, 1 otherwise) has caught up with the time
// its rounds took. Every member is called with the lock that guards the state held, and
// `cv` is the condition variable of that lock, which the rank's actors wait on.
#pragma once
#include <simgrid/s4u.hpp>

#include <mutex>
#include <vector>

#include "fuseplan/costmodel/cluster.hpp"

namespace fuseplan::sim {

class SharedProcessor {
 public:
  explicit SharedProcessor(size_t slots = 0) : active_(slots, false), service_(slots, 0), since_(slots, 0) {}

  // Computes for `seconds` of the rank's own time from `t0` (the clock now), slowed by the
  // allreduces that run meanwhile; returns when done.
  void compute(double t0, double seconds, const ProcessorSharing& sigma, std::unique_lock<simgrid::s4u::Mutex>& lock,
               simgrid::s4u::ConditionVariable& cv);
  // Slot `slot` starts an allreduce at `start` (the clock now).
  void start(size_t slot, double start, const ProcessorSharing& sigma, simgrid::s4u::ConditionVariable& cv);
  // The allreduce on `slot`, started at `start`, has ended its rounds: holds the slot until
  // its service has caught up with the time they took.
  void finish(size_t slot, double start, const ProcessorSharing& sigma, std::unique_lock<simgrid::s4u::Mutex>& lock,
              simgrid::s4u::ConditionVariable& cv);

 private:
  int comm_active() const;
  // Brings every running allreduce's service up to `now` (before `computing_` or `active_` changes).
  void accrue(double now, double comm_sigma);

  bool computing_ = false;
  std::vector<bool> active_;
  std::vector<double> service_, since_;  // per slot: service since `since_`
};

}  // namespace fuseplan::sim
