#include "rocket/pocket/capabilities.h"

#include <sys/random.h>

#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace rocket::detail {

namespace {
// handle = tag (32 bits) | generation (12) | slot index (20)
constexpr int kIndexBits = 20, kGenerationBits = 12;
constexpr uint64_t kIndexMask = (uint64_t{1} << kIndexBits) - 1;
constexpr uint64_t kGenerationMask = (uint64_t{1} << kGenerationBits) - 1;
constexpr size_t kMaxSlots = size_t{1} << kIndexBits;

uint64_t pack(uint32_t index, uint32_t generation, uint32_t tag) {
  return uint64_t{tag} << (kIndexBits + kGenerationBits) | (uint64_t{generation} & kGenerationMask) << kIndexBits |
         index;
}
}  // namespace

struct CapabilityCore::Impl {
  struct Slot {
    std::shared_ptr<void> object;  // null: free
    uint64_t session = 0;
    uint32_t generation = 0;
    uint32_t tag = 0;
  };
  size_t max_per_session;
  mutable std::mutex mu;
  std::vector<Slot> slots;                                                // GUARDED_BY(mu)
  std::vector<uint32_t> free;                                             // GUARDED_BY(mu)
  std::unordered_map<uint64_t, std::unordered_set<uint32_t>> by_session;  // GUARDED_BY(mu)
  size_t live = 0;                                                        // GUARDED_BY(mu)
  // Tags: unpredictable to clients, so a handle cannot be guessed from others.
  std::vector<uint32_t> tags;  // GUARDED_BY(mu), refilled from getrandom()

  uint32_t next_tag() {
    if (tags.empty()) {
      tags.resize(256);
      size_t got = 0;
      while (got < tags.size() * sizeof(uint32_t)) {
        ssize_t n = ::getrandom(reinterpret_cast<char*>(tags.data()) + got, tags.size() * sizeof(uint32_t) - got, 0);
        if (n > 0) got += static_cast<size_t>(n);
      }
    }
    uint32_t t = tags.back();
    tags.pop_back();
    return t;
  }

  // The slot `handle` names, if `session` holds it.
  Slot* find(uint64_t session, uint64_t handle) {
    const auto index = static_cast<uint32_t>(handle & kIndexMask);
    const auto generation = static_cast<uint32_t>(handle >> kIndexBits & kGenerationMask);
    const auto tag = static_cast<uint32_t>(handle >> (kIndexBits + kGenerationBits));
    if (index >= slots.size()) return nullptr;
    Slot& s = slots[index];
    if (!s.object || s.session != session || s.generation != generation || s.tag != tag) return nullptr;
    return &s;
  }

  void free_slot(uint32_t index) {
    Slot& s = slots[index];
    s.object.reset();
    s.session = 0;
    s.generation = (s.generation + 1) & kGenerationMask;  // the old handle goes stale
    free.push_back(index);
    --live;
  }
};

CapabilityCore::CapabilityCore(size_t max_per_session) : impl_(std::make_unique<Impl>()) {
  impl_->max_per_session = max_per_session;
}

CapabilityCore::~CapabilityCore() = default;

Result<uint64_t> CapabilityCore::add(uint64_t session, std::shared_ptr<void> object) {
  if (!object) return invalid_argument("a capability needs an object");
  std::lock_guard<std::mutex> lock(impl_->mu);
  auto& mine = impl_->by_session[session];
  if (mine.size() >= impl_->max_per_session) {
    return resource_exhausted("this session holds " + std::to_string(mine.size()) +
                              " server-side objects, its limit; release some first");
  }
  uint32_t index;
  if (!impl_->free.empty()) {
    index = impl_->free.back();
    impl_->free.pop_back();
  } else {
    if (impl_->slots.size() >= kMaxSlots) return resource_exhausted("the server holds its most server-side objects");
    index = static_cast<uint32_t>(impl_->slots.size());
    impl_->slots.emplace_back();
  }
  Impl::Slot& s = impl_->slots[index];
  s.object = std::move(object);
  s.session = session;
  s.tag = impl_->next_tag();
  mine.insert(index);
  ++impl_->live;
  return pack(index, s.generation, s.tag);
}

Result<std::shared_ptr<void>> CapabilityCore::get(uint64_t session, uint64_t handle) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  Impl::Slot* s = impl_->find(session, handle);
  if (s == nullptr) return not_found("no server-side object with this handle in this session");
  return s->object;
}

Status CapabilityCore::release(uint64_t session, uint64_t handle) {
  std::shared_ptr<void> last;  // destroyed outside the lock: an object's destructor may be slow
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    Impl::Slot* s = impl_->find(session, handle);
    if (s == nullptr) return not_found("no server-side object with this handle in this session");
    const auto index = static_cast<uint32_t>(handle & kIndexMask);
    last = std::move(s->object);
    impl_->by_session[session].erase(index);
    impl_->free_slot(index);
  }
  return ok_status();
}

void CapabilityCore::drop_session(uint64_t session) noexcept {
  std::vector<std::shared_ptr<void>> last;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    auto it = impl_->by_session.find(session);
    if (it == impl_->by_session.end()) return;
    for (uint32_t index : it->second) {
      last.push_back(std::move(impl_->slots[index].object));
      impl_->free_slot(index);
    }
    impl_->by_session.erase(it);
  }
}

size_t CapabilityCore::size() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->live;
}

}  // namespace rocket::detail
