#include "sharing.hpp"

#include <algorithm>

namespace fuseplan::sim {

namespace sg4 = simgrid::s4u;

int SharedProcessor::comm_active() const { return static_cast<int>(std::count(active_.begin(), active_.end(), true)); }

void SharedProcessor::accrue(double now, double comm_sigma) {
  for (size_t k = 0; k < active_.size(); ++k)
    if (active_[k]) {
      service_[k] += (now - since_[k]) * (computing_ ? 1 / (1 + comm_sigma) : 1.0);
      since_[k] = now;
    }
}

void SharedProcessor::compute(double t0, double seconds, const ProcessorSharing& sigma,
                              std::unique_lock<sg4::Mutex>& lock, sg4::ConditionVariable& cv) {
  accrue(t0, sigma.comm);
  computing_ = true;
  for (double left = seconds; left > 1e-12 * std::max(1.0, sg4::Engine::get_clock());) {
    const double rate = 1 / (1 + sigma.compute * comm_active()), from = sg4::Engine::get_clock();
    cv.wait_until(lock, from + left / rate);  // or earlier, when an allreduce starts or ends
    left -= (sg4::Engine::get_clock() - from) * rate;
  }
  accrue(sg4::Engine::get_clock(), sigma.comm);
  computing_ = false;
  cv.notify_all();
}

void SharedProcessor::start(size_t slot, double start, const ProcessorSharing& sigma, sg4::ConditionVariable& cv) {
  accrue(start, sigma.comm);
  active_[slot] = true;
  service_[slot] = 0;
  since_[slot] = start;
  cv.notify_all();  // the compute actor's rate changes
}

void SharedProcessor::finish(size_t slot, double start, const ProcessorSharing& sigma,
                             std::unique_lock<sg4::Mutex>& lock, sg4::ConditionVariable& cv) {
  const double needed = sg4::Engine::get_clock() - start;
  for (;;) {
    const double now = sg4::Engine::get_clock();
    accrue(now, sigma.comm);
    const double owed = needed - service_[slot];
    if (owed <= 1e-12 * std::max(1.0, now)) break;
    cv.wait_until(lock, now + owed * (computing_ ? 1 + sigma.comm : 1.0));
  }
  active_[slot] = false;
  cv.notify_all();
}

}  // namespace fuseplan::sim
