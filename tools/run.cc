#include "run.h"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "args.h"

namespace rocket::tools {
namespace {

struct RunArgs {
  std::string socket;
  bool no_net = false;
  std::string user;  // NAME or UID[:GID]; root only
  std::vector<std::string> cmd;
};

// Directories where processes leave named IPC endpoints (sockets, shared
// memory files): each becomes an empty tmpfs in the frontend's view.
constexpr const char* kCovered[] = {"/tmp", "/var/tmp", "/run", "/dev/shm"};

// The child reports a failure before exec through this pipe; a successful
// exec closes it (O_CLOEXEC) with nothing written.
[[noreturn]] void fail(int report_fd, const std::string& what, int err) {
  std::string msg = what + (err != 0 ? std::string(": ") + std::strerror(err) : std::string());
  ssize_t n = ::write(report_fd, msg.data(), msg.size());
  (void)n;
  _exit(127);
}

bool write_file(const char* path, const std::string& text) {
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  return ok;
}

void make_dirs(const std::string& dir) {
  for (size_t i = 1; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') ::mkdir(dir.substr(0, i).c_str(), 0755);
  }
}

struct Account {
  uid_t uid = 0;
  gid_t gid = 0;
};

bool parse_account(const std::string& s, Account* out) {
  if (s.empty()) return false;
  if (s.find_first_not_of("0123456789:") == std::string::npos) {
    const size_t colon = s.find(':');
    char* end = nullptr;
    const unsigned long uid = std::strtoul(s.c_str(), &end, 10);
    if (end == s.c_str() || uid > UINT_MAX - 1) return false;
    out->uid = static_cast<uid_t>(uid);
    out->gid = static_cast<gid_t>(uid);
    if (colon != std::string::npos) {
      const unsigned long gid = std::strtoul(s.c_str() + colon + 1, &end, 10);
      if (end == s.c_str() + colon + 1 || *end != '\0' || gid > UINT_MAX - 1) return false;
      out->gid = static_cast<gid_t>(gid);
    } else if (const passwd* pw = ::getpwuid(out->uid)) {
      out->gid = pw->pw_gid;
    }
    return true;
  }
  const passwd* pw = ::getpwnam(s.c_str());
  if (pw == nullptr) return false;
  out->uid = pw->pw_uid;
  out->gid = pw->pw_gid;
  return true;
}

// In the child: the namespaces, the mounts, the account; then exec.
[[noreturn]] void isolate_and_exec(const RunArgs& a, const Account* account, pid_t launcher, int report) {
  const bool root = ::geteuid() == 0;
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  // The launcher's death takes the frontend with it (set again after a change
  // of account, which clears it; a launcher already gone is caught below).
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  int flags = CLONE_NEWNS | CLONE_NEWIPC | (a.no_net ? CLONE_NEWNET : 0);
  if (!root) flags |= CLONE_NEWUSER;  // mount rights inside a namespace of our own
  if (::unshare(flags) != 0) {
    fail(report, root ? "unshare" : "unshare (as a user other than root this needs unprivileged user namespaces)",
         errno);
  }
  if (!root) {
    // The same ids inside as outside, so the server sees who we are.
    if (!write_file("/proc/self/setgroups", "deny") ||
        !write_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1") ||
        !write_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1")) {
      fail(report, "mapping the user namespace's ids", errno);
    }
  }
  // Nothing mounted here reaches the host, and nothing mounted there reaches us.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) fail(report, "make / private", errno);
  // Held across the covering mounts, then bound back into place.
  const int sock = ::open(a.socket.c_str(), O_PATH | O_CLOEXEC);
  if (sock < 0) fail(report, "open " + a.socket, errno);
  for (const char* dir : kCovered) {
    struct stat st {};
    if (::lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    const char* mode = std::strcmp(dir, "/run") == 0 ? "mode=755" : "mode=1777";
    if (::mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV, mode) != 0)
      fail(report, std::string("cover ") + dir, errno);
  }
  ::mkdir("/dev/mqueue", 0755);  // POSIX message queues of the new IPC namespace, if the kernel lets us
  ::mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  const std::string parent = a.socket.substr(0, a.socket.rfind('/'));
  if (!parent.empty()) make_dirs(parent);
  struct stat st {};
  if (::stat(a.socket.c_str(), &st) != 0) {
    // Covered: an empty file to bind the socket over.
    const int f = ::open(a.socket.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
    if (f < 0) fail(report, "place " + a.socket, errno);
    ::close(f);
    const std::string from = "/proc/self/fd/" + std::to_string(sock);
    if (::mount(from.c_str(), a.socket.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      fail(report, "bind " + a.socket, errno);
    }
  }
  ::close(sock);
  if (::setenv("ROCKET_SOCKET", a.socket.c_str(), 1) != 0) fail(report, "setenv", errno);
  if (account != nullptr) {
    if (::setgroups(0, nullptr) != 0 || ::setgid(account->gid) != 0 || ::setuid(account->uid) != 0) {
      fail(report, "become uid " + std::to_string(account->uid), errno);
    }
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  }
  if (::getppid() != launcher) fail(report, "the launcher exited", 0);
  std::vector<char*> argv;
  for (const auto& s : a.cmd) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  ::execvp(argv[0], argv.data());
  fail(report, "exec " + a.cmd[0], errno);
}

pid_t g_child = -1;
void forward_signal(int sig) {
  if (g_child > 0) ::kill(g_child, sig);
}

int run(RunArgs a) {
  if (a.cmd.empty()) {
    std::fprintf(stderr, "rocket run: no command (rocket run [options] -- COMMAND [ARGS...])\n");
    return 2;
  }
  char real[PATH_MAX];
  if (::realpath(a.socket.c_str(), real) == nullptr) {
    std::fprintf(stderr, "rocket run: no server socket at %s: %s\n", a.socket.c_str(), std::strerror(errno));
    return 2;
  }
  a.socket = real;
  struct stat st {};
  if (::stat(real, &st) != 0 || !S_ISSOCK(st.st_mode)) {
    std::fprintf(stderr, "rocket run: %s is not a socket\n", real);
    return 2;
  }
  Account account;
  const bool switch_user = !a.user.empty();
  if (switch_user) {
    if (::geteuid() != 0) {
      std::fprintf(stderr, "rocket run: --user needs root\n");
      return 2;
    }
    if (!parse_account(a.user, &account)) {
      std::fprintf(stderr, "rocket run: no such account '%s' (NAME or UID[:GID])\n", a.user.c_str());
      return 2;
    }
  }
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    std::perror("rocket run: pipe2");
    return 1;
  }
  std::fflush(stdout);
  const pid_t launcher = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("rocket run: fork");
    return 1;
  }
  if (pid == 0) {
    ::close(pipefd[0]);
    isolate_and_exec(a, switch_user ? &account : nullptr, launcher, pipefd[1]);
  }
  ::close(pipefd[1]);
  g_child = pid;
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) ::sigaction(sig, &sa, nullptr);
  std::string why;
  char buf[512];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof(buf))) != 0) {
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    why.append(buf, static_cast<size_t>(n));
  }
  ::close(pipefd[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!why.empty()) {
    std::fprintf(stderr, "rocket run: %s\n", why.c_str());
    return 127;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

void add_run(CLI::App& app) {
  static RunArgs a;
  a.socket = default_socket();
  auto* cmd = app.add_subcommand(
      "run", "Start a frontend in its own mount and IPC namespaces, seeing only the server's socket");
  cmd->add_option("--socket", a.socket, "the server's socket, the one endpoint the frontend sees")
      ->capture_default_str();
  cmd->add_flag("--no-net", a.no_net, "also a network namespace of its own: no network, no abstract sockets");
  cmd->add_option("--user", a.user, "run the frontend as NAME or UID[:GID] (root only)");
  cmd->add_option("command", a.cmd, "the frontend and its arguments (after --)")->required();
  cmd->callback([] { std::exit(run(a)); });
}

}  // namespace rocket::tools
