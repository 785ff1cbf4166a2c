#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "workload.h"
#include "workloads_internal.h"

namespace rocket::workloads {

Result<WireHeader> read_header(std::span<const std::byte> msg, uint32_t magic, std::string_view what) {
  if (msg.size() < sizeof(WireHeader)) {
    return invalid_argument(std::string(what) + ": message of " + std::to_string(msg.size()) +
                            " bytes is shorter than its header");
  }
  WireHeader h;
  std::memcpy(&h, msg.data(), sizeof(h));
  if (h.magic != magic) return invalid_argument(std::string(what) + ": wrong magic (not a " + std::string(what) + " message)");
  if (h.version != 1) return invalid_argument(std::string(what) + ": unsupported version " + std::to_string(h.version));
  return h;
}

void write_header(std::span<std::byte> out, const WireHeader& h) { std::memcpy(out.data(), &h, sizeof(h)); }

Result<uint64_t> checked_product(std::initializer_list<uint64_t> factors, std::string_view what) {
  uint64_t p = 1;
  for (uint64_t f : factors) {
    if (__builtin_mul_overflow(p, f, &p)) return invalid_argument(std::string(what) + ": sizes overflow");
  }
  return p;
}

uint64_t scaled(double reference, const Scale& s, uint64_t min) {
  double v = std::floor(reference * s.factor);
  if (!(v >= static_cast<double>(min))) return min;  // also catches NaN
  return static_cast<uint64_t>(v);
}

bool retain_freed_memory() {
#if defined(__GLIBC__)
  // Every block from the heap: a block from mmap is unmapped when freed.
  const bool heap_only = ::mallopt(M_MMAP_MAX, 0) == 1;
  // Never hand the top of the heap back (-1: no trimming at all).
  const bool no_trim = ::mallopt(M_TRIM_THRESHOLD, -1) == 1;
  // One arena. Otherwise each thread that allocates gets its own, whose heaps
  // hold at most 64 MiB and shrink on their own: the backend's second
  // dispatcher kept faulting (23,500 faults per 5 forwards against none) and
  // ran MobileNetV2 at a different speed from the first.
  const bool one_arena = ::mallopt(M_ARENA_MAX, 1) == 1;
  return heap_only && no_trim && one_arena;
#else
  return false;
#endif
}

namespace {
// A workload this build was compiled without: listed, with the reason.
class MissingWorkload final : public Workload {
 public:
  MissingWorkload(std::string_view name, std::string_view description, std::string_view reason)
      : name_(name), description_(description), reason_(reason) {}
  std::string_view name() const noexcept override { return name_; }
  std::string_view description() const noexcept override { return description_; }
  std::string unavailable_reason() const override { return std::string(reason_); }
  Result<std::unique_ptr<Model>> start_backend(const Scale&) const override {
    return failed_precondition(std::string(reason_));
  }
  std::unique_ptr<Frontend> frontend(const Scale&) const override { return nullptr; }

 private:
  std::string_view name_, description_, reason_;
};
}  // namespace

const std::vector<const Workload*>& all_workloads() {
  static const std::vector<const Workload*> all = [] {
    std::vector<const Workload*> v;
#ifdef ROCKET_HAVE_TORCH
    v.push_back(&mobilenet_workload());
#else
    static const MissingWorkload m("mobilenetv2", kMobilenetDescription, "built without libtorch (apt-get install libtorch-dev)");
    v.push_back(&m);
#endif
#ifdef ROCKET_HAVE_XGBOOST
    v.push_back(&xgboost_workload());
#else
    static const MissingWorkload x("xgboost", kXgboostDescription, "built without libxgboost (apt-get install libxgboost-dev)");
    v.push_back(&x);
#endif
    v.push_back(&pagerank_workload());
#ifdef ROCKET_HAVE_FAISS
    v.push_back(&vector_search_workload());
#else
    static const MissingWorkload f("vector_search", kVectorSearchDescription, "built without faiss (apt-get install libfaiss-dev)");
    v.push_back(&f);
#endif
    return v;
  }();
  return all;
}

Result<const Workload*> find_workload(std::string_view name) {
  for (const Workload* w : all_workloads()) {
    if (w->name() == name) return w;
  }
  std::string known;
  for (const Workload* w : all_workloads()) known += (known.empty() ? "" : ", ") + std::string(w->name());
  return not_found("unknown workload '" + std::string(name) + "' (" + known + ")");
}

}  // namespace rocket::workloads

namespace rocket::workloads {
double SplitMix::normal() noexcept {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = uniform(), u2 = uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  const double r = std::sqrt(-2.0 * std::log(u1)), theta = 6.283185307179586 * u2;
  spare_ = r * std::sin(theta);
  has_spare_ = true;
  return r * std::cos(theta);
}
}  // namespace rocket::workloads
