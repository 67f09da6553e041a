#include "fuseplan/exec/discover.hpp"

#ifdef FUSEPLAN_HAVE_HWLOC
#include <hwloc.h>
#endif
#ifdef FUSEPLAN_HAVE_IBVERBS
#include <infiniband/verbs.h>
#endif

#include <algorithm>
#include <fstream>
#include <thread>

namespace fuseplan::exec {

namespace {

#ifdef FUSEPLAN_HAVE_IBVERBS
// IB port width and speed codes (ibv_query_port) -> lanes and Gb/s per lane.
int lanes(uint8_t width) {
  switch (width) {
    case 1: return 1;
    case 2: return 4;
    case 4: return 8;
    case 8: return 12;
    case 16: return 2;
    default: return 0;
  }
}
double lane_gbps(uint32_t speed, std::string* name) {
  switch (speed) {
    case 1: *name = "SDR"; return 2.5;
    case 2: *name = "DDR"; return 5;
    case 4: *name = "QDR"; return 10;
    case 8: *name = "FDR10"; return 10.3125;
    case 16: *name = "FDR"; return 14.0625;
    case 32: *name = "EDR"; return 25.78125;
    case 64: *name = "HDR"; return 50;
    case 128: *name = "NDR"; return 100;
    case 256: *name = "XDR"; return 200;
    default: *name = "unknown"; return 0;
  }
}
#endif

}  // namespace

MachineInfo discover_machine() {
  MachineInfo m;
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);)
    if (line.rfind("model name", 0) == 0) {
      m.cpu_model = line.substr(line.find(':') + 2);
      break;
    }
#ifdef FUSEPLAN_HAVE_HWLOC
  hwloc_topology_t topo;
  if (hwloc_topology_init(&topo) == 0) {
    hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(topo) == 0) {
      m.packages = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE);
      m.cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
      m.pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
      for (hwloc_obj_t o = nullptr; (o = hwloc_get_next_osdev(topo, o)) != nullptr;) {
        const std::string name = o->name ? o->name : "?";
        if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_GPU || o->attr->osdev.type == HWLOC_OBJ_OSDEV_COPROC) {
          const char* model = hwloc_obj_get_info_by_name(o, "GPUModel");
          m.gpus.push_back(name + (model ? std::string(" (") + model + ")" : ""));
        } else if (o->attr->osdev.type == HWLOC_OBJ_OSDEV_NETWORK || o->attr->osdev.type == HWLOC_OBJ_OSDEV_OPENFABRICS) {
          m.nics.push_back(name);
        }
      }
    }
    hwloc_topology_destroy(topo);
  }
#else
  m.pus = m.cores = int(std::thread::hardware_concurrency());
  m.packages = 1;
  m.topology_note = "built without hwloc (libhwloc-dev): cores are the threads this machine reports, GPUs and "
                    "NICs unseen";
#endif
#ifdef FUSEPLAN_HAVE_IBVERBS
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (!list || n == 0) {
    m.rdma_note = "no RDMA devices (rdma-core found none)";
  } else {
    for (int i = 0; i < n; ++i) {
      ibv_context* ctx = ibv_open_device(list[i]);
      if (!ctx) continue;
      ibv_device_attr da;
      if (ibv_query_device(ctx, &da) == 0)
        for (int p = 1; p <= da.phys_port_cnt; ++p) {
          ibv_port_attr pa;
          if (ibv_query_port(ctx, uint8_t(p), &pa) != 0) continue;
          RdmaPort r;
          r.device = ibv_get_device_name(list[i]);
          r.port = p;
          r.link_layer = pa.link_layer == IBV_LINK_LAYER_ETHERNET ? "ethernet" : "infiniband";
          r.active = pa.state == IBV_PORT_ACTIVE;
          const int l = lanes(pa.active_width);
          r.width = std::to_string(l) + "x";
          r.gbps = l * lane_gbps(pa.active_speed, &r.speed);
          m.rdma_ports.push_back(r);
        }
      ibv_close_device(ctx);
    }
    if (m.rdma_ports.empty()) m.rdma_note = "RDMA devices without usable ports";
  }
  if (list) ibv_free_device_list(list);
#else
  m.rdma_note = "built without rdma-core (libibverbs-dev): RDMA ports unseen";
#endif
  return m;
}

Cluster draft_cluster(const MachineInfo& m, Cluster c, const std::string& template_name) {
  c.provenance.clear();
  c.calibrated.clear();
  c.name = "discovered";
  c.description = "Draft from machine discovery (hwloc, rdma-core) on " + (m.cpu_model.empty() ? "this machine" : m.cpu_model);
  c.nodes = 1;
  if (!m.gpus.empty()) {
    c.gpus_per_node = int(m.gpus.size());
    c.provenance["gpus_per_node"] = "discovered: hwloc GPU OS devices";
    c.provenance["device.name"] = "template " + template_name + ": set the GPU's datasheet values";
  } else {
    c.gpus_per_node = std::max(1, m.cores);
    c.device.name = m.cpu_model.empty() ? c.device.name : m.cpu_model;
    c.provenance["gpus_per_node"] = "discovered: hwloc cores (one rank per core)";
    c.provenance["device.name"] = "discovered: /proc/cpuinfo";
  }
  int active = 0;
  double gbps = 0;
  std::string port;
  for (const auto& r : m.rdma_ports)
    if (r.active) {
      ++active;
      if (r.gbps > gbps) {
        gbps = r.gbps;
        port = r.device + ":" + std::to_string(r.port) + " " + r.link_layer + " " + r.width + " " + r.speed;
      }
    }
  if (active > 0 && gbps > 0) {
    InterNodeNetwork n;
    n.nic_bw_Gbps = gbps;
    n.nics_per_node = active;
    n.lat_us = 2;
    c.inter = n;
    c.provenance["inter_node.nic_bw_Gbps"] = "discovered: ibv_query_port " + port;
    c.provenance["inter_node.nics_per_node"] = "discovered: active RDMA ports";
    c.provenance["inter_node.lat_us"] = "assumption: RDMA latency; calibrate";
  } else {
    c.inter.reset();
  }
  c.provenance["intra_node.bw_GBps"] = "template " + template_name + ": calibrate (fuseplan-exec sweep)";
  return c;
}

}  // namespace fuseplan::exec
