// The SimGrid simulator (first slice): replays an allreduce algorithm's explicit
// schedule (costmodel, the same one the executor will run) as real point-to-point
// messages on a SimGrid platform built from a cluster file, one host per rank.
//
// Platform: every rank has a split-duplex port to its node (intra-node bandwidth, half
// the intra-node latency each way); every NIC is a split-duplex link (one NIC's
// bandwidth, half the inter-node latency each way) and a rank uses NIC (local rank mod
// NICs per node). A message inside a node crosses the sender's and receiver's ports;
// between nodes, the two ranks' NICs (a full-bisection fabric). Network model CM02 with cross-traffic off: a message of b
// bytes alone on its route takes latency + b / bandwidth, the alpha-beta of the cost
// model; concurrent messages share links max-min fairly. Reductions run on the rank's
// host at 1 / gamma bytes per second.
// Not yet: whole training iterations with compute overlap, oversubscribed fat-trees,
// host staging without GPUDirect RDMA (refused), stragglers (issue 4 continues).
#pragma once
#include <cstdint>
#include <string>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/collective_model.hpp"

namespace fuseplan::sim {

struct SimCollectiveResult {
  double simulated_s = 0;    // the last rank's finish
  double closed_form_s = 0;  // the cost model's time for the same call (without launch overhead)
  int64_t messages = 0;
  int rounds = 0;
};

// SimGrid runs one simulation per process, so this forks: the child simulates and
// reports back. Throws InputError for an inapplicable algorithm or unsupported cluster.
SimCollectiveResult simulate_allreduce(const Cluster& cluster, int gpus, const std::string& algorithm,
                                       int64_t count, Precision transfer, CollectiveOptions opt = {});

}  // namespace fuseplan::sim
