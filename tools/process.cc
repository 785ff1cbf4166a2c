#include "process.h"

#include "exit_with_parent.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

extern char** environ;

namespace rocket::tools {

Result<Child> Child::spawn(const std::vector<std::string>& args) { return spawn_program("/proc/self/exe", args); }

Result<Child> Child::spawn_program(const std::string& program, const std::vector<std::string>& args) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0) return errno_status("pipe2", errno);
  if (::pipe2(out, O_CLOEXEC) != 0) {
    int err = errno;
    ::close(in[0]);
    ::close(in[1]);
    return errno_status("pipe2", err);
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::vector<std::string> all{program};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child ends with us (exit_with_parent.h).
  std::vector<std::string> env_store{std::string(kParentPidVariable) + "=" + std::to_string(::getpid())};
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, kParentPidVariable, std::strlen(kParentPidVariable)) != 0) env_store.emplace_back(*e);
  }
  std::vector<char*> envp;
  for (auto& e : env_store) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, program.c_str(), &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  if (rc != 0) {
    ::close(in[1]);
    ::close(out[0]);
    return errno_status("posix_spawn", rc);
  }
  return Child(pid, in[1], out[0]);
}

Child::Child(Child&& o) noexcept : pid_(o.pid_), in_(o.in_), out_(o.out_), buf_(std::move(o.buf_)) {
  o.pid_ = -1;
  o.in_ = o.out_ = -1;
}

Child::~Child() { stop(); }

Result<std::string> Child::read_line(int timeout_ms) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    auto nl = buf_.find('\n');
    if (nl != std::string::npos) {
      std::string line = buf_.substr(0, nl);
      buf_.erase(0, nl + 1);
      return line;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return deadline_exceeded("child " + std::to_string(pid_) + " said nothing in time");
    pollfd p{out_, POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno != EINTR) return errno_status("poll", errno);
    if (r <= 0) continue;
    char tmp[65536];
    ssize_t n = ::read(out_, tmp, sizeof(tmp));
    if (n == 0) return unavailable("child " + std::to_string(pid_) + " exited");
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_status("read", errno);
    }
    buf_.append(tmp, static_cast<size_t>(n));
  }
}

Status Child::write_line(const std::string& line) {
  std::string l = line + "\n";
  if (::write(in_, l.data(), l.size()) != static_cast<ssize_t>(l.size())) return errno_status("write", errno);
  return ok_status();
}

void Child::stop() noexcept {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 200; ++i) {
      int st;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        pid_ = -1;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  if (in_ >= 0) ::close(in_);
  if (out_ >= 0) ::close(out_);
  in_ = out_ = -1;
}

}  // namespace rocket::tools
