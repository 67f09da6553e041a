// Typed errors shared by every fuseplan library; only main() turns them into exit codes.
#pragma once
#include <stdexcept>
#include <string>

namespace fuseplan {

// Bad input from the user (a file, a flag, a value): main prints it on one line, exit 2.
class InputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A run that failed for another reason (I/O, an internal limit): exit 1.
class RunError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace fuseplan
