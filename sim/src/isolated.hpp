// Runs a function in a forked child and returns what it printed: SimGrid keeps global
// state, one simulation per process. InputError and other errors cross the pipe.
#pragma once
#include <functional>
#include <string>

namespace fuseplan::sim {
std::string run_isolated(const std::function<std::string()>& fn);
}
