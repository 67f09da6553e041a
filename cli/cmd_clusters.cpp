// `fuseplan clusters`: the shipped cluster files, one line each.
#include <iostream>
#include <memory>

#include "commands.hpp"
#include "format.hpp"
#include "fuseplan/costmodel/cluster.hpp"

namespace fuseplan::cli {

void add_clusters_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("clusters", "List the shipped cluster files (configs/clusters/*.json)");
  auto json = std::make_shared<bool>(false);
  cmd->add_flag("--json", *json, "print the parsed cluster files as JSON");
  cmd->callback([json] {
    nlohmann::json rows = nlohmann::json::array();
    Table t({"<cluster", "<library", "nodes", "GPUs/node", "<device", "fp16 TFLOPS", "<compute", "<intra-node",
             "<inter-node", "<description"});
    for (const auto& name : shipped_cluster_names()) {
      Cluster c = load_cluster(name);
      rows.push_back(cluster_to_json(c));
      auto fp16 = c.device.peak_TFLOPS.count(Precision::FP16) ? fixed(c.device.peak_TFLOPS.at(Precision::FP16), 1) : "-";
      std::string inter = "-";
      if (c.inter)
      {
        const double achieved = c.inter->fraction(c.library);
        inter = std::to_string(c.inter->nics_per_node) + " x " + fixed(c.inter->nic_bw_Gbps, 0) + " Gb/s " +
                (c.inter->transport.empty() ? "" : c.inter->transport + " ") + c.inter->topology +
                (c.inter->gdr ? ", GDR" : ", host-staged (" + c.inter->staging + ")") +
                (achieved < 1 ? ", " + fixed(100 * achieved, 0) + " % achieved" : "");
      }
      // Whether the device prices each layer class with its own efficiencies (calibrated, as
      // its provenance says) or every layer with the device's one roofline.
      const std::string compute = c.device.by_kind.empty()
                                      ? "one roofline"
                                      : "by class (" + std::to_string(c.device.by_kind.size()) + ")";
      t.row({c.name, c.library, std::to_string(c.nodes), std::to_string(c.gpus_per_node), c.device.name, fp16, compute,
             c.intra.kind + " " + fixed(c.intra.bw_GBps, 0) + " GB/s", inter, c.description});
    }
    if (*json) out() << rows.dump(2) << "\n";
    else {
      t.print(out());
      out() << "\nfrom " << config_dir() << "/clusters (override with FUSEPLAN_CONFIG_DIR); --cluster also takes a path\n";
    }
  });
}

}  // namespace fuseplan::cli
