// Per-GPU memory of data-parallel training: what every replica holds, estimated from the
// model and the run's precisions, held against the cluster's device memory.
//
// The estimate follows the executor's (and PyTorch AMP + DDP's) layout: working weights
// and gradients at the compute precision, one fusion buffer per bucket at the transfer
// precision (covering every gradient once), FP32 master weights and FP32 momenta (LARS /
// SGD), and the activations each layer keeps for backward at the compute precision times
// the batch. It leaves out what depends on the framework and the allocator (cuDNN
// workspaces, transient backward buffers, fragmentation, the CUDA context), so it is a
// lower bound of what a framework allocates, not a measurement.
#pragma once
#include <string>

#include "fuseplan/costmodel/cluster.hpp"
#include "fuseplan/costmodel/precision.hpp"
#include "fuseplan/models/model.hpp"

namespace fuseplan {

struct MemoryEstimate {
  double weights = 0, gradients = 0, fusion_buffers = 0, optimizer = 0;  // bytes, every replica
  double activations = 0;                                                // bytes at the batch
  double states() const { return weights + gradients + fusion_buffers + optimizer; }
  double total() const { return states() + activations; }
};

MemoryEstimate estimate_memory(const Model& m, int batch_per_gpu, Precision compute, Precision transfer);

// Held against the cluster's `device.mem_GiB` (no check where it is 0, unknown):
// - the replicated states alone do not fit: InputError naming `flag` (data parallelism
//   cannot run this model on this GPU, whatever the batch);
// - states plus activations do not fit: the returned warning, with the figures and the
//   largest batch that fits (activation checkpointing or a smaller batch would run);
// - else "".
std::string check_memory(const Model& m, const Cluster& c, int batch_per_gpu, Precision compute, Precision transfer,
                         const std::string& flag);

}  // namespace fuseplan
