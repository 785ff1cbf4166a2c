// Capability handles for server-side objects (Pocket's isolation): a handler
// that makes an object for a client -- an opened index, a loaded model, a
// cursor -- hands back a 64-bit handle, not an address or a table index. A
// handle is good only in the session that got it, and only until it is
// released or that session ends: a forged, stale or borrowed handle finds
// nothing, and the error does not say whether the handle exists elsewhere.
//
//   rocket::CapabilityTable<Index> indexes(server);   // before server.start()
//   server.handle("open", [&](const rocket::Request& req, rocket::Response& resp) -> rocket::Status {
//     auto h = indexes.add(req, std::make_shared<Index>(req.data()));
//     if (!h.ok()) return h.status();
//     return resp.write(std::as_bytes(std::span{&*h, 1}));
//   });
//   server.handle("query", [&](const rocket::Request& req, rocket::Response& resp) -> rocket::Status {
//     uint64_t h;  // the first 8 bytes of the request, say
//     ...
//     auto index = indexes.get(req, h);     // NOT_FOUND unless this session holds h
//     if (!index.ok()) return index.status();
//     ...
//   });
//
// A handle carries a slot index, the slot's generation and a random tag; all
// three and the owning session must match. Objects are shared_ptrs: one
// released while a handler still uses it lives until that handler lets go.
// Each session may hold at most `max_per_session` objects (a tenant cannot
// fill the server's memory), and all of a session's objects are released when
// it ends (the table registers with the server for that).
//
// Thread safety: every method may be called from any handler concurrently.
// When not to use: for objects every client may share (a model loaded at
// start-up); those need no handle.
#pragma once

#include <cstdint>
#include <memory>

#include "rocket/runtime/server.h"
#include "rocket/status.h"

namespace rocket {

namespace detail {
// The type-erased table behind CapabilityTable<T>.
class CapabilityCore {
 public:
  explicit CapabilityCore(size_t max_per_session);
  ~CapabilityCore();
  CapabilityCore(const CapabilityCore&) = delete;
  CapabilityCore& operator=(const CapabilityCore&) = delete;
  [[nodiscard]] Result<uint64_t> add(uint64_t session, std::shared_ptr<void> object);
  [[nodiscard]] Result<std::shared_ptr<void>> get(uint64_t session, uint64_t handle) const;
  [[nodiscard]] Status release(uint64_t session, uint64_t handle);
  void drop_session(uint64_t session) noexcept;
  size_t size() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};
}  // namespace detail

template <typename T>
class CapabilityTable {
 public:
  // Registers with `server` (before it starts) to drop a session's objects
  // when the session ends.
  explicit CapabilityTable(Server& server, size_t max_per_session = 4096)
      : core_(std::make_shared<detail::CapabilityCore>(max_per_session)) {
    std::shared_ptr<detail::CapabilityCore> core = core_;  // the hook keeps the table's state alive
    registered_ = server.on_session_end([core](uint64_t session) { core->drop_session(session); });
  }

  // kFailedPrecondition if the server had already started (no session-end hook).
  Status registered() const { return registered_; }

  // A handle to `object` for the caller's session; kResourceExhausted at the
  // session's limit.
  [[nodiscard]] Result<uint64_t> add(const Request& req, std::shared_ptr<T> object) {
    if (!registered_.ok()) return registered_;
    return core_->add(req.session_id(), std::move(object));
  }
  // The object, if the caller's session holds `handle`; kNotFound otherwise.
  [[nodiscard]] Result<std::shared_ptr<T>> get(const Request& req, uint64_t handle) const {
    auto p = core_->get(req.session_id(), handle);
    if (!p.ok()) return p.status();
    return std::static_pointer_cast<T>(*p);
  }
  // Releases `handle` (the object goes when its last user lets go); kNotFound
  // unless the caller's session holds it.
  [[nodiscard]] Status release(const Request& req, uint64_t handle) { return core_->release(req.session_id(), handle); }
  // Objects held, over all sessions.
  size_t size() const { return core_->size(); }

 private:
  std::shared_ptr<detail::CapabilityCore> core_;
  Status registered_;
};

}  // namespace rocket
