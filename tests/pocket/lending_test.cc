// CPU lending against real cgroups: callers in cgroups of their own lend the
// backend quota for the length of a request, and every path puts it back --
// the handler returning, the caller dying mid-call, and a server restarted
// after it crashed mid-call (the journal). Needs write access to a cpu
// cgroup hierarchy (root, cgroup v1's `cpu` controller or v2 with `cpu`
// delegated); elsewhere each test skips and says why.
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <map>
#include <thread>

#include "pocket/cgroup.h"
#include "test_util.h"

namespace rocket::testing {
namespace {

using std::chrono::milliseconds;

// A scratch cgroup tree for one test, under this process's own cgroup of the
// cpu (or memory) controller: rocket-test-PID-N/{backend,fe,fe2}, removed
// again at the end.
class CgroupSandbox {
 public:
  explicit CgroupSandbox(bool memory = false) {
    if (::geteuid() != 0) {
      why_not = "needs root to make cgroups";
      return;
    }
    const char* controller = memory ? "memory" : "cpu";
    auto make = memory ? detail::make_memory_cgroup : detail::make_cpu_cgroup;
    auto self = memory ? detail::memory_cgroup_of(0) : detail::cpu_cgroup_of(0);
    if (!self.ok()) {
      why_not = std::string("no ") + controller + " cgroup here: " + self.status().message();
      return;
    }
    static std::atomic<int> n{0};
    auto root =
        make(detail::scratch_parent(*self), "rocket-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    if (!root.ok()) {
      why_not = "cannot make a cgroup here: " + root.status().message();
      return;
    }
    made_.push_back(*root);
    for (const char* child : {"backend", "fe", "fe2"}) {
      auto cg = make(*root, child);
      if (!cg.ok()) {
        why_not = "cannot make a cgroup here: " + cg.status().message();
        return;
      }
      made_.push_back(*cg);
      children_[child] = *cg;
    }
  }
  ~CgroupSandbox() {
    for (auto it = made_.rbegin(); it != made_.rend(); ++it) {
      Status st = detail::remove_cgroup(*it);
      EXPECT_TRUE(st.ok()) << st.to_string();
    }
  }
  std::string dir(const std::string& child) const { return children_.at(child).dir; }
  // As /proc/PID/cgroup names it: the key of LendingOptions::factors.
  std::string path(const std::string& child) const { return children_.at(child).path; }
  bool set(const std::string& child, int64_t quota_us) {
    return detail::write_cpu_quota(children_.at(child), quota_us, 100000).ok();
  }
  // The tree's own root, the children's parent.
  bool set_root(int64_t quota_us) { return detail::write_cpu_quota(made_.front(), quota_us, 100000).ok(); }
  // Removes a child and makes it anew under the same name.
  bool remake(const std::string& child) {
    if (!detail::remove_cgroup(children_.at(child)).ok()) return false;
    auto cg = detail::make_cpu_cgroup(made_.front(), child);
    return cg.ok() && *cg == children_.at(child);
  }
  int64_t quota(const std::string& child) const {
    auto lim = detail::read_cpu_limit(children_.at(child));
    return lim.ok() ? lim->quota_us : -2;
  }
  // A memory sandbox's limits and usage, in bytes (-1: no limit; -2: unreadable).
  bool set_memory(const std::string& child, int64_t bytes) {
    return detail::write_memory_limit(children_.at(child), bytes).ok();
  }
  int64_t memory_limit(const std::string& child) const {
    auto lim = detail::read_memory_limit(children_.at(child));
    return lim.ok() ? *lim : -2;
  }
  int64_t memory_usage(const std::string& child) const {
    auto u = detail::read_memory_usage(children_.at(child));
    return u.ok() ? *u : -2;
  }

  std::string why_not;

 private:
  std::vector<detail::CpuCgroup> made_;
  std::map<std::string, detail::CpuCgroup> children_;
};

#define SKIP_WITHOUT_CGROUPS(box) \
  if (!(box).why_not.empty()) GTEST_SKIP() << (box).why_not

// Polls `cond` for up to `limit`.
template <typename F>
bool eventually(F cond, milliseconds limit = milliseconds(5000)) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return cond();
}

// A handler that stays inside until released: by the caller's pid, or all.
struct Parking {
  std::atomic<int> inside{0};
  std::atomic<pid_t> release_pid{0};
  std::atomic<bool> release_all{false};
  Handler handler() {
    return [this](const Request& req, Response&) {
      inside.fetch_add(1);
      auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      while (!release_all.load() && release_pid.load() != req.pid() && std::chrono::steady_clock::now() < end) {
        std::this_thread::sleep_for(milliseconds(1));
      }
      inside.fetch_sub(1);
      return ok_status();
    };
  }
};

// A handler that records, from inside the call, both quotas and the loan.
struct Observer {
  std::atomic<int64_t> backend{0}, fe{0};
  std::atomic<uint32_t> lent{0};
  Handler handler(const CgroupSandbox& box) {
    return [this, &box](const Request& req, Response&) {
      backend = box.quota("backend");
      fe = box.quota("fe");
      lent = req.lent_millicpus();
      return ok_status();
    };
  }
};

// One call to `op` from a frontend in cgroup `child` lending `millicpus`:
// the frontend's result line ("lent N", or "error ...").
std::string lend_once(const std::string& sock, const CgroupSandbox& box, const std::string& child, uint32_t millicpus,
                      const char* op = "observe") {
  Peer p({"lend", sock, box.dir(child), std::to_string(millicpus), op, "0"});
  const std::string ready = p.read_line();
  return ready == "ready" ? p.read_line() : "peer said '" + ready + "'";
}

ServerOptions lending_server(const CgroupSandbox& box, std::map<std::string, double> factors = {}) {
  ServerOptions o{.socket_path = unique_socket_path("lend"), .dispatchers = 2};
  o.lending = {.enabled = true, .backend_cgroup = box.dir("backend"), .factors = std::move(factors)};
  return o;
}

TEST(Lending, ACallMovesQuotaForItsDurationOnly) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  Server server(lending_server(box, {{box.path("fe"), 1.5}}));
  Observer seen;
  ASSERT_TRUE(server.handle("observe", seen.handler(box)).ok());
  Status st = server.start();
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(lend_once(server.options().socket_path, box, "fe", 400), "lent 400");
  // During the call: the caller gave 0.4 CPU, the backend got 1.5 times that.
  EXPECT_EQ(seen.fe.load(), 60000);
  EXPECT_EQ(seen.backend.load(), 50000 + 60000);
  EXPECT_EQ(seen.lent.load(), 400u);
  // After it: both as they were.
  EXPECT_EQ(box.quota("fe"), 100000);
  EXPECT_EQ(box.quota("backend"), 50000);
  EXPECT_EQ(server.stats().lends, 1u);
  EXPECT_EQ(server.stats().lends_refused, 0u);
}

TEST(Lending, ACallerThatDiesMidCallGetsItsQuotaBackAtOnce) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  Server server(lending_server(box));
  Parking park;
  ASSERT_TRUE(server.handle("park", park.handler()).ok());
  ASSERT_TRUE(server.start().ok());
  {
    Peer peer({"lend", server.options().socket_path, box.dir("fe"), "500", "park", "0"});
    ASSERT_EQ(peer.read_line(), "ready");
    ASSERT_TRUE(eventually([&] { return park.inside.load() == 1; }));
    EXPECT_EQ(box.quota("fe"), 50000);
    EXPECT_EQ(box.quota("backend"), 100000);
    peer.kill(SIGKILL);
  }
  // Put back while the handler is still working on the dead caller's request.
  EXPECT_TRUE(eventually([&] { return box.quota("fe") == 100000 && box.quota("backend") == 50000; }));
  EXPECT_EQ(park.inside.load(), 1);
  EXPECT_EQ(server.stats().lends_returned_on_exit, 1u);
  park.release_all = true;
  ASSERT_TRUE(eventually([&] { return park.inside.load() == 0; }));
  // The handler's own give-back finds nothing left to give.
  EXPECT_EQ(box.quota("fe"), 100000);
  EXPECT_EQ(box.quota("backend"), 50000);
}

TEST(Lending, OverlappingLoansAddUpAndUnwindInAnyOrder) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  ASSERT_TRUE(box.set("fe2", 100000));
  Server server(lending_server(box));
  Parking park;
  ASSERT_TRUE(server.handle("park", park.handler()).ok());
  ASSERT_TRUE(server.start().ok());
  Peer a({"lend", server.options().socket_path, box.dir("fe"), "300", "park", "0"});
  ASSERT_EQ(a.read_line(), "ready");
  Peer b({"lend", server.options().socket_path, box.dir("fe2"), "200", "park", "0"});
  ASSERT_EQ(b.read_line(), "ready");
  ASSERT_TRUE(eventually([&] { return park.inside.load() == 2; }));
  EXPECT_EQ(box.quota("backend"), 50000 + 30000 + 20000);
  EXPECT_EQ(box.quota("fe"), 70000);
  EXPECT_EQ(box.quota("fe2"), 80000);
  // The first to come in ends first: the second's loan stays.
  park.release_pid = a.pid();
  EXPECT_EQ(a.read_line(), "lent 300");
  EXPECT_EQ(box.quota("backend"), 50000 + 20000);
  EXPECT_EQ(box.quota("fe"), 100000);
  EXPECT_EQ(box.quota("fe2"), 80000);
  park.release_pid = b.pid();
  EXPECT_EQ(b.read_line(), "lent 200");
  EXPECT_EQ(box.quota("backend"), 50000);
  EXPECT_EQ(box.quota("fe2"), 100000);
  EXPECT_EQ(server.stats().lends, 2u);
}

TEST(Lending, WhatCannotBeLentIsNotAndTheCallStillRuns) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", -1));  // no limit: nothing bounded to lend
  ASSERT_TRUE(box.set("fe2", 100000));
  Server server(lending_server(box, {{box.path("fe2"), 0.0}}));  // fe2 may not lend
  Observer seen;
  ASSERT_TRUE(server.handle("observe", seen.handler(box)).ok());
  ASSERT_TRUE(server.start().ok());
  const std::string sock = server.options().socket_path;
  EXPECT_EQ(lend_once(sock, box, "fe", 500), "lent 0");
  EXPECT_EQ(seen.backend.load(), 50000);
  EXPECT_EQ(lend_once(sock, box, "fe2", 500), "lent 0");
  EXPECT_EQ(box.quota("fe2"), 100000);
  // A caller lends what it can spare, never its last millisecond per period.
  ASSERT_TRUE(box.set("fe", 21000));
  EXPECT_EQ(lend_once(sock, box, "fe", 500), "lent 200");
  EXPECT_EQ(seen.backend.load(), 50000 + 20000);
  EXPECT_EQ(box.quota("fe"), 21000);
  EXPECT_EQ(server.stats().lends, 1u);
  EXPECT_EQ(server.stats().lends_refused, 2u);
  EXPECT_EQ(box.quota("backend"), 50000);
}

TEST(Lending, ALoanIsCappedAndOneTheBackendCannotTakeIsUndone) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  ServerOptions o = lending_server(box);
  o.lending.max_lend_millicpus = 300;
  Server server(o);
  Observer seen;
  ASSERT_TRUE(server.handle("observe", seen.handler(box)).ok());
  ASSERT_TRUE(server.start().ok());
  const std::string sock = server.options().socket_path;
  EXPECT_EQ(lend_once(sock, box, "fe", 500), "lent 300");  // the server's cap, not the 500 asked
  EXPECT_EQ(seen.fe.load(), 70000);
  // On cgroup v1 the backend may not outgrow its parent: the caller's part of
  // the loan is undone and the call runs without one.
  if (detail::cpu_cgroup_of(0)->v2) GTEST_SKIP() << "cgroup v2 does not bound a child's quota by its parent's";
  ASSERT_TRUE(box.set_root(120000));
  EXPECT_EQ(lend_once(sock, box, "fe", 300), "lent 300");  // 50000 + 30000 fits under 120000
  ASSERT_TRUE(box.set("backend", 100000));
  EXPECT_EQ(lend_once(sock, box, "fe", 300), "lent 0");  // 100000 + 30000 would not
  EXPECT_EQ(seen.fe.load(), 100000);
  EXPECT_EQ(box.quota("fe"), 100000);
  EXPECT_EQ(box.quota("backend"), 100000);
  EXPECT_EQ(server.stats().lends_refused, 1u);
}

TEST(Lending, ACgroupMadeAnewUnderTheSameNameIsFollowed) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  Server server(lending_server(box));
  Observer seen;
  ASSERT_TRUE(server.handle("observe", seen.handler(box)).ok());
  ASSERT_TRUE(server.start().ok());
  for (int round = 0; round < 2; ++round) {
    // The server keeps the limit files of the first round's cgroup open; the
    // second round's is another cgroup of the same name.
    if (round == 1) {
      ASSERT_TRUE(box.remake("fe"));
      ASSERT_TRUE(box.set("fe", 80000));
    }
    EXPECT_EQ(lend_once(server.options().socket_path, box, "fe", 300), "lent 300");
    EXPECT_EQ(seen.fe.load(), (round == 0 ? 100000 : 80000) - 30000);
    EXPECT_EQ(box.quota("fe"), round == 0 ? 100000 : 80000);
  }
  EXPECT_EQ(box.quota("backend"), 50000);
}

TEST(Lending, AServerRestartedAfterACrashPutsBackWhatWasLent) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", 50000));
  ASSERT_TRUE(box.set("fe", 100000));
  const std::string journal = unique_socket_path("journal");
  const std::string sock = unique_socket_path("lendsrv");
  {
    Peer srv({"serve-lend", sock, box.dir("backend"), journal});
    ASSERT_EQ(srv.read_line(), "ready");
    Peer caller({"lend", sock, box.dir("fe"), "500", "sleep", "20000"});
    ASSERT_EQ(caller.read_line(), "ready");
    ASSERT_TRUE(eventually([&] { return box.quota("fe") == 50000; }));
    srv.kill(SIGKILL);  // mid-call: nobody is left to put the loan back
    caller.kill(SIGKILL);
    EXPECT_EQ(box.quota("fe"), 50000);
    EXPECT_EQ(box.quota("backend"), 100000);
  }
  ::unlink(sock.c_str());
  ServerOptions o{.socket_path = sock};
  o.lending = {.enabled = true, .backend_cgroup = box.dir("backend"), .journal_path = journal};
  {
    Server again(o);
    Status st = again.start();
    ASSERT_TRUE(st.ok()) << st.to_string();
    EXPECT_EQ(box.quota("fe"), 100000);
    EXPECT_EQ(box.quota("backend"), 50000);
    // One server per journal.
    ServerOptions other = o;
    other.socket_path = unique_socket_path("lend2");
    Server second(other);
    EXPECT_EQ(second.start().code(), StatusCode::kFailedPrecondition);
  }
  ::unlink(journal.c_str());
}

TEST(Lending, AServerRefusesToStartWhereLendingCannotWork) {
  CgroupSandbox box;
  SKIP_WITHOUT_CGROUPS(box);
  ASSERT_TRUE(box.set("backend", -1));
  {
    Server s(lending_server(box));
    Status st = s.start();
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(st.message().find("no CPU limit"), std::string::npos) << st.to_string();
  }
  ServerOptions o = lending_server(box);
  o.lending.backend_cgroup = box.dir("backend") + "/no-such-cgroup";
  {
    Server s(o);
    EXPECT_EQ(s.start().code(), StatusCode::kFailedPrecondition);
  }
  o = lending_server(box);
  ASSERT_TRUE(box.set("backend", 50000));
  o.lending.default_factor = -1;
  {
    Server s(o);
    EXPECT_EQ(s.start().code(), StatusCode::kInvalidArgument);
  }
  // A journal path naming some other file is not overwritten.
  o = lending_server(box);
  o.lending.journal_path = unique_socket_path("notajournal");
  {
    std::ofstream(o.lending.journal_path) << "precious data";
    Server s(o);
    Status st = s.start();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("not a Rocket lending journal"), std::string::npos) << st.to_string();
    std::ifstream f(o.lending.journal_path);
    EXPECT_EQ(std::string(std::istreambuf_iterator<char>(f), {}), "precious data");
  }
  ::unlink(o.lending.journal_path.c_str());
}

// --- memory ----------------------------------------------------------------------

constexpr int64_t kMiB = int64_t{1} << 20;

// A handler that records, from inside the call, both memory limits and the loan.
struct MemoryObserver {
  std::atomic<int64_t> backend{0}, fe{0};
  std::atomic<uint64_t> lent{0};
  Handler handler(const CgroupSandbox& mem) {
    return [this, &mem](const Request& req, Response&) {
      backend = mem.memory_limit("backend");
      fe = mem.memory_limit("fe");
      lent = req.lent_memory_bytes();
      return ok_status();
    };
  }
};

// A server lending both: CPU into `cpu`'s backend, memory into `mem`'s.
ServerOptions memory_lending_server(const CgroupSandbox& cpu, const CgroupSandbox& mem, int64_t reserve = 16 * kMiB) {
  ServerOptions o = lending_server(cpu);
  o.lending.memory = {.enabled = true, .backend_cgroup = mem.dir("backend"), .reserve_bytes = uint64_t(reserve)};
  return o;
}

// One call from a frontend in memory cgroup `child` lending `bytes`: its line.
std::string lend_memory_once(const std::string& sock, const CgroupSandbox& mem, const std::string& child, int64_t bytes,
                             const char* op = "observe", uint32_t arg = 0) {
  Peer p({"lend-memory", sock, mem.dir(child), std::to_string(bytes), op, std::to_string(arg)});
  const std::string ready = p.read_line();
  return ready == "ready" ? p.read_line() : "peer said '" + ready + "'";
}

std::string lent_memory(int64_t bytes) { return "lent-memory " + std::to_string(bytes); }

TEST(MemoryLending, ACallMovesMemoryLimitForItsDurationOnly) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 50000));
  ASSERT_TRUE(mem.set_memory("backend", 256 * kMiB));
  ASSERT_TRUE(mem.set_memory("fe", 1024 * kMiB));
  Server server(memory_lending_server(cpu, mem));
  MemoryObserver seen;
  ASSERT_TRUE(server.handle("observe", seen.handler(mem)).ok());
  Status st = server.start();
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(lend_memory_once(server.options().socket_path, mem, "fe", 128 * kMiB), lent_memory(128 * kMiB));
  // During the call the backend had what the caller gave up.
  EXPECT_EQ(seen.fe.load(), 896 * kMiB);
  EXPECT_EQ(seen.backend.load(), 384 * kMiB);
  EXPECT_EQ(seen.lent.load(), uint64_t(128 * kMiB));
  // After it, both as they were.
  EXPECT_EQ(mem.memory_limit("fe"), 1024 * kMiB);
  EXPECT_EQ(mem.memory_limit("backend"), 256 * kMiB);
  EXPECT_EQ(server.stats().lends, 1u);
  EXPECT_EQ(server.stats().memory_lent_bytes, uint64_t(128 * kMiB));
  EXPECT_EQ(server.stats().memory_held_over_bytes, 0u);
}

TEST(MemoryLending, OnlyHeadroomAboveUsageAndReserveIsLent) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 50000));
  ASSERT_TRUE(mem.set_memory("backend", 256 * kMiB));
  MemoryObserver seen;
  // A server keeping `reserve` for lenders and lending at most `max` a call.
  auto serve = [&](int64_t reserve, int64_t max) {
    ServerOptions o = memory_lending_server(cpu, mem, reserve);
    o.lending.memory.max_lend_bytes = uint64_t(max);
    auto s = std::make_unique<Server>(o);
    EXPECT_TRUE(s->handle("observe", seen.handler(mem)).ok());
    EXPECT_TRUE(s->start().ok());
    return s;
  };
  {
    // Asked for a GiB: lent what lies above the caller's usage and the 64 MiB
    // reserve, in whole pages, and the caller's limit came down by just that.
    ASSERT_TRUE(mem.set_memory("fe", 200 * kMiB));
    auto server = serve(64 * kMiB, 1024 * kMiB);
    const std::string sock = server->options().socket_path;
    const std::string line = lend_memory_once(sock, mem, "fe", 1024 * kMiB);
    ASSERT_EQ(line.rfind("lent-memory ", 0), 0u) << line;
    const int64_t lent = std::stoll(line.substr(12));
    EXPECT_GT(lent, 0);
    EXPECT_LE(lent, 136 * kMiB);
    EXPECT_EQ(lent % 4096, 0);
    EXPECT_EQ(seen.fe.load(), 200 * kMiB - lent);
    EXPECT_EQ(seen.backend.load(), 256 * kMiB + lent);
    // No limit: nothing bounded to lend, and the call runs.
    ASSERT_TRUE(mem.set_memory("fe", -1));
    EXPECT_EQ(lend_memory_once(sock, mem, "fe", 16 * kMiB), lent_memory(0));
    EXPECT_EQ(seen.backend.load(), 256 * kMiB);
    EXPECT_EQ(server->stats().lends_refused, 1u);
  }
  {
    // A reserve above the whole limit: no headroom at all.
    ASSERT_TRUE(mem.set_memory("fe", 512 * kMiB));
    auto server = serve(512 * kMiB, 1024 * kMiB);
    EXPECT_EQ(lend_memory_once(server->options().socket_path, mem, "fe", 16 * kMiB), lent_memory(0));
    EXPECT_EQ(seen.fe.load(), 512 * kMiB);
    EXPECT_EQ(seen.backend.load(), 256 * kMiB);
  }
  {
    // The server's cap.
    ASSERT_TRUE(mem.set_memory("fe", 1024 * kMiB));
    auto server = serve(16 * kMiB, 32 * kMiB);
    EXPECT_EQ(lend_memory_once(server->options().socket_path, mem, "fe", 512 * kMiB), lent_memory(32 * kMiB));
    EXPECT_EQ(seen.backend.load(), 288 * kMiB);
  }
  EXPECT_EQ(mem.memory_limit("fe"), 1024 * kMiB);
  EXPECT_EQ(mem.memory_limit("backend"), 256 * kMiB);
}

TEST(MemoryLending, ACallerThatDiesMidCallGetsItsMemoryBackAtOnce) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 50000));
  ASSERT_TRUE(mem.set_memory("backend", 256 * kMiB));
  ASSERT_TRUE(mem.set_memory("fe", 1024 * kMiB));
  Server server(memory_lending_server(cpu, mem));
  Parking park;
  ASSERT_TRUE(server.handle("park", park.handler()).ok());
  ASSERT_TRUE(server.start().ok());
  {
    Peer peer({"lend-memory", server.options().socket_path, mem.dir("fe"), std::to_string(128 * kMiB), "park", "0"});
    ASSERT_EQ(peer.read_line(), "ready");
    ASSERT_TRUE(eventually([&] { return park.inside.load() == 1; }));
    EXPECT_EQ(mem.memory_limit("fe"), 896 * kMiB);
    EXPECT_EQ(mem.memory_limit("backend"), 384 * kMiB);
    peer.kill(SIGKILL);
  }
  EXPECT_TRUE(
      eventually([&] { return mem.memory_limit("fe") == 1024 * kMiB && mem.memory_limit("backend") == 256 * kMiB; }));
  EXPECT_EQ(server.stats().lends_returned_on_exit, 1u);
  park.release_all = true;
  ASSERT_TRUE(eventually([&] { return park.inside.load() == 0; }));
  EXPECT_EQ(mem.memory_limit("fe"), 1024 * kMiB);
  EXPECT_EQ(mem.memory_limit("backend"), 256 * kMiB);
}

// The backend uses what it was lent and keeps using it after the call: the
// caller is paid back at once, the backend keeps its larger limit (a smaller
// one would make the kernel kill or stall it) until it lets go, and not longer.
TEST(MemoryLending, ABackendStillUsingTheLoanKeepsItUntilItLetsGo) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 100000));
  ASSERT_TRUE(mem.set_memory("backend", 1024 * kMiB));
  ASSERT_TRUE(mem.set_memory("fe", 1024 * kMiB));
  const std::string sock = unique_socket_path("lendmem");
  const std::string journal = unique_socket_path("memjournal");
  Peer srv({"serve-lend-memory", sock, cpu.dir("backend"), mem.dir("backend"), std::to_string(16 * kMiB), journal});
  ASSERT_EQ(srv.read_line(), "ready");
  // The backend's own limit: what it uses now and 64 MiB more.
  const int64_t base = (mem.memory_usage("backend") + 64 * kMiB) / 4096 * 4096;
  ASSERT_TRUE(mem.set_memory("backend", base));
  // It maps 128 MiB during a call that lent it 256 MiB, and keeps them.
  EXPECT_EQ(lend_memory_once(sock, mem, "fe", 256 * kMiB, "hog", 128), lent_memory(256 * kMiB));
  EXPECT_EQ(mem.memory_limit("fe"), 1024 * kMiB);
  const bool swap = [] {
    std::ifstream f("/proc/swaps");
    std::string header, entry;
    std::getline(f, header);
    return static_cast<bool>(std::getline(f, entry));
  }();
  if (!swap) {  // with swap the kernel may page the hog out and shrink it at once
    EXPECT_GT(mem.memory_limit("backend"), base);
    EXPECT_GE(mem.memory_limit("backend"), mem.memory_usage("backend"));
    const std::string held = lend_memory_once(sock, mem, "fe", 0, "held");
    ASSERT_EQ(held.rfind("lent-memory 0 value ", 0), 0u) << held;
    EXPECT_GT(std::stoll(held.substr(20)), 0);
  }
  // Once it lets go, its limit comes down to its own.
  EXPECT_EQ(lend_memory_once(sock, mem, "fe", 0, "free"), lent_memory(0));
  EXPECT_TRUE(eventually([&] { return mem.memory_limit("backend") == base; }))
      << mem.memory_limit("backend") << " against " << base;
  EXPECT_EQ(lend_memory_once(sock, mem, "fe", 0, "held"), lent_memory(0) + " value 0");
  srv.kill(SIGKILL);
  ::unlink(sock.c_str());
  ::unlink(journal.c_str());
}

TEST(MemoryLending, AServerRestartedAfterACrashPutsBackTheMemoryLimits) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 50000));
  ASSERT_TRUE(mem.set_memory("backend", 512 * kMiB));
  ASSERT_TRUE(mem.set_memory("fe", 1024 * kMiB));
  const std::string journal = unique_socket_path("memjournal");
  const std::string sock = unique_socket_path("lendmemsrv");
  {
    Peer srv({"serve-lend-memory", sock, cpu.dir("backend"), mem.dir("backend"), std::to_string(16 * kMiB), journal});
    ASSERT_EQ(srv.read_line(), "ready");
    Peer caller({"lend-memory", sock, mem.dir("fe"), std::to_string(128 * kMiB), "sleep", "20000"});
    ASSERT_EQ(caller.read_line(), "ready");
    ASSERT_TRUE(eventually([&] { return mem.memory_limit("fe") == 896 * kMiB; }));
    srv.kill(SIGKILL);  // mid-call: nobody is left to put the loan back
    caller.kill(SIGKILL);
    EXPECT_EQ(mem.memory_limit("fe"), 896 * kMiB);
    EXPECT_EQ(mem.memory_limit("backend"), 640 * kMiB);
  }
  ::unlink(sock.c_str());
  ServerOptions o = memory_lending_server(cpu, mem);
  o.lending.journal_path = journal;
  {
    Server again(o);
    Status st = again.start();
    ASSERT_TRUE(st.ok()) << st.to_string();
    EXPECT_EQ(mem.memory_limit("fe"), 1024 * kMiB);
    EXPECT_EQ(mem.memory_limit("backend"), 512 * kMiB);
  }
  ::unlink(journal.c_str());
}

TEST(MemoryLending, AServerRefusesToStartWithoutABackendMemoryLimit) {
  CgroupSandbox cpu, mem(true);
  SKIP_WITHOUT_CGROUPS(cpu);
  SKIP_WITHOUT_CGROUPS(mem);
  ASSERT_TRUE(cpu.set("backend", 50000));
  ASSERT_TRUE(mem.set_memory("backend", -1));
  {
    Server s(memory_lending_server(cpu, mem));
    Status st = s.start();
    EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(st.message().find("no memory limit"), std::string::npos) << st.to_string();
  }
  ServerOptions o = memory_lending_server(cpu, mem);
  o.lending.memory.backend_cgroup = cpu.dir("backend") + "/nope";
  {
    Server s(o);
    EXPECT_EQ(s.start().code(), StatusCode::kFailedPrecondition);
  }
  o = memory_lending_server(cpu, mem);
  o.lending.enabled = false;  // memory alone
  Server s(o);
  EXPECT_EQ(s.start().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rocket::testing
