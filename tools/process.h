// Child processes for the tool: `rocket` re-executes itself (/proc/self/exe)
// as servers and benchmark workers, talking over stdin/stdout pipes.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "rocket/status.h"

namespace rocket::tools {

class Child {
 public:
  // Starts /proc/self/exe with `args`; its stdin and stdout are pipes to us.
  static Result<Child> spawn(const std::vector<std::string>& args);
  // Starts the executable `program` (a path) likewise.
  static Result<Child> spawn_program(const std::string& program, const std::vector<std::string>& args);
  Child(Child&& o) noexcept;
  Child& operator=(Child&&) = delete;
  ~Child();

  // One line from the child's stdout, without the newline; error on EOF or
  // after `timeout_ms`.
  Result<std::string> read_line(int timeout_ms);
  Status write_line(const std::string& line);
  // SIGTERM, then SIGKILL after a grace period; reaps the child.
  void stop() noexcept;
  pid_t pid() const noexcept { return pid_; }

 private:
  Child(pid_t pid, int in, int out) : pid_(pid), in_(in), out_(out) {}
  pid_t pid_ = -1;
  int in_ = -1;   // child's stdin
  int out_ = -1;  // child's stdout
  std::string buf_;
};

}  // namespace rocket::tools
