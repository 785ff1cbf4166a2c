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

// A scratch cgroup tree for one test, under this process's own cpu cgroup:
// rocket-test-PID-N/{backend,fe,fe2}, removed again at the end.
class CgroupSandbox {
 public:
  CgroupSandbox() {
    if (::geteuid() != 0) {
      why_not = "needs root to make cgroups";
      return;
    }
    auto self = detail::cpu_cgroup_of(0);
    if (!self.ok()) {
      why_not = "no cpu cgroup here: " + self.status().message();
      return;
    }
    static std::atomic<int> n{0};
    auto root = detail::make_cpu_cgroup(*self, "rocket-test-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    if (!root.ok()) {
      why_not = "cannot make a cgroup here: " + root.status().message();
      return;
    }
    made_.push_back(*root);
    for (const char* child : {"backend", "fe", "fe2"}) {
      auto cg = detail::make_cpu_cgroup(*root, child);
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

}  // namespace
}  // namespace rocket::testing
