// Set-up errors of MPI commands: every rank checks the same flags and files, the ranks
// agree whether any failed, and the lowest failing rank says why, before MPI_Finalize
// (so that mpirun does not end it before it has spoken). Every rank then exits 2.
#pragma once
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <string>

#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

// How long a rank waits for the others (MpiWorld::set_timeout): the command's --timeout,
// or 60 s while that flag is itself the input being refused.
inline double setup_wait_s(double timeout_s) { return timeout_s > 0 && timeout_s < 1e6 ? timeout_s : 60; }

// Each wait is bounded by the world's timeout: a rank that never arrives (stopped, dead)
// ends the job with a line naming it. For the fault tests, FUSEPLAN_FAULT_STOP_RANK=R
// stops rank R (SIGSTOP) here, and FUSEPLAN_FAULT_KILL_RANK=R kills it (SIGKILL).
inline void agree_on_setup(exec::MpiWorld& world, const std::string& error, const std::string& prog) {
  const int rank = world.rank();
  if (const char* stop = std::getenv("FUSEPLAN_FAULT_STOP_RANK"); stop && std::atoi(stop) == rank) raise(SIGSTOP);
  if (const char* kill = std::getenv("FUSEPLAN_FAULT_KILL_RANK"); kill && std::atoi(kill) == rank) raise(SIGKILL);
  int first_failed = -1;
  try {
    first_failed = world.agree(!error.empty());
  } catch (const RunError& e) {
    std::cerr << prog << ": " << e.what() << std::endl;
    world.abort(1);
  }
  if (first_failed < 0) return;
  if (rank == first_failed)
    std::cerr << prog << ": " << (rank == 0 ? "" : "rank " + std::to_string(rank) + ": ") << error << std::endl;
  world.barrier();
  throw InputError("");  // said above; exit 2
}

}  // namespace fuseplan::cli
