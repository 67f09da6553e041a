// Set-up errors of MPI commands: every rank checks the same flags and files, the ranks
// agree whether any failed, and the lowest failing rank says why, before MPI_Finalize
// (so that mpirun does not end it before it has spoken). Every rank then exits 2.
#pragma once
#include <iostream>
#include <string>

#include "fuseplan/exec/mpi.hpp"
#include "fuseplan/models/error.hpp"

namespace fuseplan::cli {

inline void agree_on_setup(exec::MpiWorld& world, const std::string& error, const std::string& prog) {
  const int P = world.ranks(), rank = world.rank();
  const int first_failed = P - int(world.max(error.empty() ? 0.0 : double(P - rank)));
  if (first_failed == P) return;
  if (rank == first_failed)
    std::cerr << prog << ": " << (rank == 0 ? "" : "rank " + std::to_string(rank) + ": ") << error << std::endl;
  world.barrier();
  throw InputError("");  // said above; exit 2
}

}  // namespace fuseplan::cli
