// A plan in the settings of the frameworks users train with, each priced by the predictor
// beside the plan itself (`fuseplan export`, docs/pytorch.md):
//   ddp        PyTorch DDP's bucket_cap_mb and first-bucket cap: torch assigns buckets
//              itself (from the second step on, in the order gradients became ready, a
//              bucket closing once its FP32 bytes reach the cap), so the pair whose
//              assignment is closest to the plan's boundaries is chosen, and its buckets
//              are priced. The first bucket's cap (DdpTorch) is
//              dist._DEFAULT_FIRST_BUCKET_BYTES (1 MiB unless set before DDP is
//              constructed) in torch 1.13; in torch 2.6 it is that only where
//              bucket_cap_mb is left unset (25 MiB), and bucket_cap_mb where it is given.
//   horovod    Horovod's `groups=`: one group per bucket, exactly the plan's buckets; a
//              fusion threshold that holds the largest bucket and the shortest cycle.
//   deepspeed  DeepSpeed ZeRO-1/2's reduce_bucket_size (elements; a bucket is reduced
//              before a gradient would overflow it) with overlap_comm, closest as for DDP.
// Closest: fewest bucket boundaries that differ (missing plus extra), then the faster
// prediction, then the smaller cap.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "fuseplan/costmodel/tuner.hpp"

namespace fuseplan {

enum class Framework { Ddp, Horovod, DeepSpeed };

// The torch whose DDP rule for the first bucket the ddp settings follow (both tested; the
// 2.x release that changed it is not pinned here). Any: settings both form alike (a
// first-bucket cap equal to bucket_cap_mb, or bucket_cap_mb left unset); V1_13: any pair.
enum class DdpTorch { Any, V1_13 };
DdpTorch parse_ddp_torch(const std::string& s, const std::string& flag);
Framework parse_framework(const std::string& s, const std::string& flag = field("export.to"));
const char* framework_name(Framework f);

struct FrameworkSettings {
  Framework framework = Framework::Ddp;
  // ddp: bucket_cap_mb (MiB) as printed, and the bytes torch derives from it
  // (int(bucket_cap_mb * 1024 * 1024)); deepspeed: reduce_bucket_size in elements.
  double cap = 0;
  int64_t cap_units = 0;
  int64_t first_bucket_bytes = 0;       // ddp: dist._DEFAULT_FIRST_BUCKET_BYTES to set
  bool cap_unset = false;               // ddp: bucket_cap_mb left unset (its default, 25 MiB)
  // horovod: tensor names per bucket (backward order); fusion threshold in bytes.
  std::vector<std::vector<std::string>> groups;
  int64_t fusion_threshold_bytes = 0;
  double cycle_time_ms = 0;
  Plan approximation;                   // the buckets the framework will form
  Report predicted, plan_predicted;     // the approximation's and the plan's predictions
  int boundaries_missing = 0, boundaries_extra = 0;  // plan bucket starts not formed / formed beyond the plan
};

// The settings for `framework` that come closest to `plan` (bound to the tuner's model,
// cluster, GPUs, batch and precision). InputError when the plan is for another model.
FrameworkSettings framework_settings(const Tuner& tuner, const Plan& plan, Framework framework,
                                     DdpTorch torch = DdpTorch::Any);

}  // namespace fuseplan
