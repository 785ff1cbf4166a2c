// Finding a process's CPU limit from the kernel's own text: /proc/PID/cgroup,
// /proc/self/mountinfo and cgroup v2's cpu.max, as they read on hosts and in
// containers. No cgroup is touched here.
#include "pocket/cgroup.h"

#include <gtest/gtest.h>

namespace rocket::detail {
namespace {

TEST(CgroupPath, TheV1CpuControllerWinsOverV2) {
  auto p = parse_cpu_cgroup_path("12:pids:/a\n4:cpu,cpuacct:/frontends/fe1\n0::/system.slice/x\n");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->first, "/frontends/fe1");
  EXPECT_FALSE(p->second);
}

TEST(CgroupPath, AV2OnlyHostUsesTheUnifiedLine) {
  auto p = parse_cpu_cgroup_path("0::/user.slice/fe:odd:name\n");
  ASSERT_TRUE(p.ok()) << p.status().to_string();
  EXPECT_EQ(p->first, "/user.slice/fe:odd:name");  // a ':' in the path is part of it
  EXPECT_TRUE(p->second);
}

TEST(CgroupPath, NamedHierarchiesAreNotTheCpuController) {
  // name=systemd and cpuacct alone do not limit CPU time.
  auto p = parse_cpu_cgroup_path("9:name=systemd:/\n2:cpuacct:/x\n");
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), StatusCode::kNotFound);
}

TEST(CgroupPath, TheMemoryControllerHasItsOwnV1Hierarchy) {
  const char* text = "4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
  auto mem = parse_cgroup_path(text, "memory");
  ASSERT_TRUE(mem.ok()) << mem.status().to_string();
  EXPECT_EQ(mem->first, "/process_api/abc");
  EXPECT_FALSE(mem->second);
  auto cpu = parse_cgroup_path(text, "cpu");
  ASSERT_TRUE(cpu.ok());
  EXPECT_EQ(cpu->first, "/");
  const char* mountinfo =
      "31 30 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
      "33 30 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
  auto dir = cgroup_dir_in(mountinfo, "/process_api/abc", false, "memory");
  ASSERT_TRUE(dir.ok()) << dir.status().to_string();
  EXPECT_EQ(*dir, "/sys/fs/cgroup/memory/process_api/abc");
}

TEST(CgroupPath, AScratchTreeGoesBesideItsOwnCgroupOnV2Only) {
  // v2 lets no cgroup with members give its children controllers.
  const Cgroup v2{"/sys/fs/cgroup/a/b", "/a/b", true};
  EXPECT_EQ(scratch_parent(v2), (Cgroup{"/sys/fs/cgroup/a", "/a", true}));
  EXPECT_EQ(scratch_parent(Cgroup{"/sys/fs/cgroup/a", "/a", true}), (Cgroup{"/sys/fs/cgroup", "/", true}));
  EXPECT_EQ(scratch_parent(Cgroup{"/sys/fs/cgroup", "/", true}), (Cgroup{"/sys/fs/cgroup", "/", true}));
  const Cgroup v1{"/sys/fs/cgroup/cpu/a/b", "/a/b", false};
  EXPECT_EQ(scratch_parent(v1), v1);
}

TEST(CgroupPath, MalformedTextIsAnError) {
  EXPECT_EQ(parse_cpu_cgroup_path("garbage").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(parse_cpu_cgroup_path("1:cpu:relative\n").status().code(), StatusCode::kInvalidArgument);
}

constexpr const char* kMountinfo =
    "30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
    "31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct\n"
    "32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
    "40 30 0:40 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";

TEST(CgroupMount, AV1PathLivesUnderTheCpuMount) {
  auto d = cgroup_dir_in(kMountinfo, "/frontends/fe1", false);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(*d, "/sys/fs/cgroup/cpu/frontends/fe1");
  auto root = cgroup_dir_in(kMountinfo, "/", false);
  ASSERT_TRUE(root.ok());
  EXPECT_EQ(*root, "/sys/fs/cgroup/cpu");
}

TEST(CgroupMount, AV2PathLivesUnderTheCgroup2Mount) {
  auto d = cgroup_dir_in(kMountinfo, "/a/b", true);
  ASSERT_TRUE(d.ok()) << d.status().to_string();
  EXPECT_EQ(*d, "/sys/fs/cgroup/unified/a/b");
}

TEST(CgroupMount, AContainersSubtreeMountServesOnlyItsSubtree) {
  // A container sees its own cgroup mounted as the hierarchy's root.
  const char* mi = "50 40 0:30 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
  auto inside = cgroup_dir_in(mi, "/kubepods/pod1/app", true);
  ASSERT_TRUE(inside.ok()) << inside.status().to_string();
  EXPECT_EQ(*inside, "/sys/fs/cgroup/app");
  auto itself = cgroup_dir_in(mi, "/kubepods/pod1", true);
  ASSERT_TRUE(itself.ok());
  EXPECT_EQ(*itself, "/sys/fs/cgroup");
  // A sibling whose name merely starts with the root is not inside it.
  EXPECT_FALSE(cgroup_dir_in(mi, "/kubepods/pod10/app", true).ok());
}

TEST(CgroupMount, EscapedMountPointsAreDecoded) {
  const char* mi = "31 30 0:28 / /mnt/cg\\040cpu rw - cgroup cgroup rw,cpu\n";
  auto d = cgroup_dir_in(mi, "/x", false);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, "/mnt/cg cpu/x");
}

TEST(CgroupMount, NoMountIsNotFound) {
  auto d = cgroup_dir_in("31 30 0:28 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", "/x", false);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kNotFound);
}

TEST(CpuMax, QuotaAndPeriod) {
  auto lim = parse_cpu_max("50000 100000\n");
  ASSERT_TRUE(lim.ok());
  EXPECT_EQ(lim->quota_us, 50000);
  EXPECT_EQ(lim->period_us, 100000);
  auto unlimited = parse_cpu_max("max 100000\n");
  ASSERT_TRUE(unlimited.ok());
  EXPECT_EQ(unlimited->quota_us, -1);
}

TEST(CpuMax, MalformedIsAnError) {
  for (const char* bad : {"", "max", "50000", "x 100000", "50000 0", "-5 100000", "1 2 3"}) {
    EXPECT_EQ(parse_cpu_max(bad).status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace rocket::detail
