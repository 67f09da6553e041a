// What `fuseplan whatif` prints: its rows as a table, CSV or JSON (to stdout or a file),
// and their warnings once each.
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuseplan/costmodel/whatif.hpp"

namespace fuseplan::cli {

struct WhatIfOutput {
  bool csv = false, json = false;
  std::string out;   // a file, else stdout
  std::string note;  // a line above the table (the training loop's step), if any
};

int nodes_of(const Cluster& c, int gpus);
nlohmann::json row_json(const WhatIfRow& r, const Cluster& c);
void emit(const std::string& text, const std::string& out);
// Each warning once (stderr: memory, global batch), however many rows share it.
void warn(const std::vector<WhatIfRow>& rows);
void print_rows(const std::vector<WhatIfRow>& rows, const Cluster& c, const WhatIfOutput& f);

}  // namespace fuseplan::cli
