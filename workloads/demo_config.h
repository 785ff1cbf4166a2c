// Names of the demo's configurations (execution mode x engine x cache
// policy), shared by `rocket demo` and its frontends. Header-only: the
// `rocket` tool uses it without linking the workloads' libraries.
//
//   baseline       sync call, copies with memcpy on the caller (`sync-cpu`)
//   offload        every copy on the `threads` engine whatever its size, the
//                  caller waiting (what Intel DTO does for memcpy)
//   auto           sync call; engine and cache chosen by the cost model
//   zerocopy       the frontend builds its request in the shared pool and
//                  reads the response in place: no copies at all
//   MODE-MOVER[-CACHE]  MODE: sync, async or pipelined; MOVER: a mover name;
//                  CACHE: auto, inject or bypass (e.g. async-threads-bypass)
#pragma once

#include <string>
#include <string_view>

#include "rocket/mover/mover.h"
#include "rocket/status.h"

namespace rocket::workloads {

enum class DemoMode { kSync, kAsync, kPipelined, kZeroCopy };

struct DemoConfig {
  DemoMode mode = DemoMode::kSync;
  MoverKind mover = MoverKind::kCpu;
  Cache cache = Cache::kAuto;
};

inline Result<DemoConfig> parse_demo_config(std::string_view name) {
  if (name == "baseline") return DemoConfig{DemoMode::kSync, MoverKind::kCpu, Cache::kAuto};
  if (name == "offload") return DemoConfig{DemoMode::kSync, MoverKind::kThreads, Cache::kAuto};
  if (name == "auto") return DemoConfig{DemoMode::kSync, MoverKind::kAuto, Cache::kAuto};
  if (name == "zerocopy") return DemoConfig{DemoMode::kZeroCopy, MoverKind::kAuto, Cache::kAuto};
  auto bad = [&](std::string why) {
    return invalid_argument("demo configuration '" + std::string(name) + "': " + why +
                            " (baseline, offload, auto, zerocopy, or MODE-MOVER[-CACHE] such as async-threads-bypass)");
  };
  const size_t d1 = name.find('-');
  if (d1 == std::string_view::npos) return bad("unknown name");
  const std::string_view mode = name.substr(0, d1);
  std::string_view rest = name.substr(d1 + 1);
  const size_t d2 = rest.find('-');
  const std::string_view mover = rest.substr(0, d2);
  const std::string_view cache = d2 == std::string_view::npos ? std::string_view("auto") : rest.substr(d2 + 1);
  DemoConfig c;
  if (mode == "sync") {
    c.mode = DemoMode::kSync;
  } else if (mode == "async") {
    c.mode = DemoMode::kAsync;
  } else if (mode == "pipelined") {
    c.mode = DemoMode::kPipelined;
  } else {
    return bad("mode must be sync, async or pipelined");
  }
  auto m = parse_mover_kind(mover);
  if (!m.ok()) return bad(m.status().message());
  auto k = parse_cache(cache);
  if (!k.ok()) return bad(k.status().message());
  c.mover = *m;
  c.cache = *k;
  if (c.mover == MoverKind::kKernel && c.mode != DemoMode::kSync) return bad("the kernel engine serves sync calls only");
  return c;
}

}  // namespace rocket::workloads
