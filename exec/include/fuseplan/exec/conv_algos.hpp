// The convolution algorithms a GPU backend chose, per convolution shape: cuDNN's numbers
// for forward, backward data and backward filter. Each algorithm rounds its sums in its
// own order, so a run computes bit for bit what an earlier one did only with the same
// choices; a file of them (`fuseplan.conv-algos/1`, docs/formats.md) carries them from
// one run to the next (a resume, a rerun). Plain C++ (no cuDNN types): the CUDA backend
// fills and reads it, and the CPU build tests the file format.
#pragma once
#include <compare>
#include <map>
#include <optional>
#include <string>

namespace fuseplan::exec {

// How a GPU backend chooses each convolution's algorithms.
enum class ConvAlgoSearch {
  Heuristic,  // the first deterministic algorithm in cuDNN's heuristic order (no timing)
  Find,       // every deterministic algorithm timed once per shape (cudnnFind*), the fastest
};
ConvAlgoSearch parse_conv_algo_search(const std::string& s);  // InputError naming backend.conv_algos
const char* conv_algo_search_name(ConvAlgoSearch s);

struct ConvAlgoKey {
  int n = 0, c = 0, h = 0, w = 0, k = 0, r = 0, stride = 1, pad = 0;
  std::string data_type = "float";  // the tensors' storage type
  bool tensor_math = true;          // tensor-core math allowed (TF32): other algorithms qualify
  auto operator<=>(const ConvAlgoKey&) const = default;
};

struct ConvAlgoChoice {
  int fwd = -1, bwd_data = -1, bwd_filter = -1;  // cuDNN's algorithm enumerators
  // How they were chosen ("heuristic" or "find") and, for "find", each one's measured
  // time in ms (informative; 0 where not timed).
  std::string how = "heuristic";
  double fwd_ms = 0, bwd_data_ms = 0, bwd_filter_ms = 0;
  bool operator==(const ConvAlgoChoice&) const = default;
};

class ConvAlgoTable {
 public:
  // Reads `path` (InputError naming the file and JSON path on anything malformed: the
  // schema, a shape of non-positive sizes, an algorithm number outside 0..63).
  static ConvAlgoTable load(const std::string& path);
  // Writes the table to `path` atomically (a temporary file beside it, then rename).
  void save(const std::string& path) const;
  std::string to_json() const;

  const ConvAlgoChoice* find(const ConvAlgoKey& key) const;
  void put(const ConvAlgoKey& key, const ConvAlgoChoice& choice);
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }

  // Informative: the device and library that made the choices ("NVIDIA H100 80GB HBM3",
  // "cuDNN 91900"). A table read on another GPU is still used: an algorithm that does not
  // run there is refused by the backend with the file's name.
  std::string device, library;

 private:
  std::map<ConvAlgoKey, ConvAlgoChoice> entries_;
};

// The table a rank of a multi-rank run reads and writes: `path` itself for one rank,
// else `path` with ".rank<r>" before its extension ("algos.json" -> "algos.rank1.json"),
// since each GPU times its own algorithms.
std::string conv_algo_path_for_rank(const std::string& path, int rank, int ranks);

}  // namespace fuseplan::exec
