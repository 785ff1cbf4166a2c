// Wire formats shared by client and server: the handshake messages on the
// session socket, the layout of the control segment, and the 64-byte ring
// descriptors. Everything here crosses a process boundary, so every reader
// validates every field before use (see validate_* below and the server's
// descriptor checks).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "rocket/shm/ring.h"

namespace rocket::detail {

inline constexpr uint32_t kProtocolMagic = 0x31544b52;  // "RKT1"
inline constexpr uint32_t kProtocolVersion = 2;         // 2: pools that grow on demand
inline constexpr size_t kTenantNameBytes = 64;   // NUL-terminated
inline constexpr size_t kOpNameBytes = 48;       // NUL-terminated
inline constexpr uint32_t kMaxOps = 256;
inline constexpr size_t kMessageBytes = 192;     // NUL-terminated
inline constexpr uint32_t kMaxRingEntries = 1u << 16;
inline constexpr size_t kMaxErrorMessage = 1024;  // error text carried in the server pool

// Descriptors the handshake passes with SCM_RIGHTS, in this order.
enum HandshakeFd : int { kFdControl = 0, kFdClientPool = 1, kFdServerPool = 2, kFdServerWake = 3, kHandshakeFds = 4 };

// Client -> server, the first message on a new connection.
struct Hello {
  uint32_t magic;
  uint32_t version;
  char tenant[kTenantNameBytes];
  uint64_t client_pool_bytes;  // 0: server default
  uint64_t server_pool_bytes;  // 0: server default
  // The most each pool may grow to (ClientOptions::max_*_pool_bytes); 0: the
  // server's limit. Below the starting size: the starting size (no growth).
  uint64_t client_pool_max_bytes;
  uint64_t server_pool_max_bytes;
  uint32_t sub_ring_entries;   // 0: server default
  uint32_t comp_ring_entries;  // 0: server default
  // Kernel single-copy path: the address of an 8-byte token in the client's
  // memory and its value. The server reads it with process_vm_readv to learn
  // whether it may; 0: the client does not offer the path.
  uint64_t probe_addr;
  uint64_t probe_value;
};

struct OpEntry {
  uint32_t id;
  char name[kOpNameBytes];
};

// Server -> client. status_code != 0 means refused: `message` says why and no
// descriptors are attached. Only the first op_count entries of `ops` are sent.
struct Welcome {
  uint32_t magic;
  uint32_t version;
  int32_t status_code;
  char message[kMessageBytes];
  uint64_t session_id;
  // Each pool's segment holds its most (`*_max_bytes` data bytes, mapped
  // whole); the first `*_bytes` are in use from the start. The server pool
  // grows as the server needs; the client pool when the client asks
  // (GrowRequest below).
  uint64_t client_pool_bytes;
  uint64_t server_pool_bytes;
  uint64_t client_pool_max_bytes;
  uint64_t server_pool_max_bytes;
  uint32_t sub_ring_entries;
  uint32_t comp_ring_entries;
  uint32_t op_count;
  uint32_t flags;  // WelcomeFlags
  OpEntry ops[kMaxOps];
};

enum WelcomeFlags : uint32_t {
  kWelcomeKernelCopy = 1,  // the server can read and write this client's memory
};
inline constexpr size_t kWelcomeHeaderBytes = offsetof(Welcome, ops);

// After the handshake, client -> server on the session socket: let the
// client pool's in-use part reach `bytes` (a multiple of 4096, at most the
// pool's most). The server answers with a GrowReply of the same `seq`,
// saying the in-use size now (a request at or below it is granted again: its
// first answer may have come after the client stopped waiting); until then
// the client uses nothing past the old end. Pages
// past that end are the client's to fault in: the server reads only what it
// agreed to, so a client cannot make the server commit memory it was not
// granted. Anything else a client sends on the socket ends its session.
// The in-use size a pool of in-use size `in_use` and most `most` grows to
// when it needs `need` (PoolAllocator::capacity_for): at least double, in
// whole 2 MiB units (huge pages), at most `most`; 0 when `need` cannot fit.
inline uint64_t pool_growth_target(uint64_t in_use, uint64_t need, uint64_t most) noexcept {
  constexpr uint64_t kUnit = uint64_t{2} << 20;
  if (need > most || in_use >= most) return 0;
  uint64_t want = need > in_use * 2 ? need : in_use * 2;
  if (want >= most) return most;
  want = (want + kUnit - 1) / kUnit * kUnit;  // below the most (at most 2^40 here): no overflow
  return want < most ? want : most;
}

inline constexpr uint32_t kGrowMagic = 0x57524752;  // "RGRW"
struct GrowRequest {
  uint32_t magic;
  uint32_t reserved;
  uint64_t seq;
  uint64_t bytes;
};
struct GrowReply {
  uint32_t magic;
  int32_t status_code;  // 0: granted
  uint64_t seq;
  uint64_t bytes;  // the client pool's in-use size now
  char message[kMessageBytes];
};

// --- ring descriptors --------------------------------------------------------

enum class SubKind : uint16_t {
  kRequest = 1,    // run op `op_id` on [offset, offset+length) of the client pool
  kFreeReply = 2,  // the client is done with the server-pool block at `offset`
};

// SubDesc flags for kRequest.
enum SubFlags : uint16_t {
  // offset/length are an address range in the client's private memory; the
  // server reads it with process_vm_readv (the session must allow it).
  kSubRemoteRequest = 1,
  // reserved[0]/reserved[1] are the address and capacity of a buffer in the
  // client's private memory; the server writes the response there.
  kSubRemoteResponse = 2,
  // The request's pool bytes are one GpuRef: the payload is GPU memory of the
  // client's, shared by CUDA IPC (the server opens the handle once per session).
  kSubGpuRequest = 4,
  // The caller accepts a response in the server's GPU memory by reference
  // (a GpuRef in the server pool, CompFlags kCompGpuResponse). Without it a
  // handler's GPU response is copied into the server pool.
  kSubAcceptGpuResponse = 8,
};
inline constexpr uint16_t kSubKnownFlags =
    kSubRemoteRequest | kSubRemoteResponse | kSubGpuRequest | kSubAcceptGpuResponse;

inline constexpr uint32_t kGpuRefMagic = 0x52555047;  // "GPUR"

// A GPU payload by reference: a CUDA IPC handle to the sender's device
// allocation, and the range of it that is the payload. The receiver checks
// the range against the allocation's real size after opening the handle.
// Requests carry one from the client; GPU responses carry one from the server.
struct GpuRef {
  uint32_t magic;
  uint32_t device;  // the client's device ordinal (informational)
  uint64_t offset;  // of the payload from the allocation's base
  uint64_t length;
  uint64_t reserved;
  unsigned char handle[64];  // cudaIpcMemHandle_t of the allocation's base
};
static_assert(sizeof(GpuRef) == 96);

struct SubDesc {
  uint16_t kind;
  uint16_t flags;  // SubFlags
  uint32_t op_id;
  uint64_t job_id;
  uint64_t offset;
  uint64_t length;
  // [0], [1]: kSubRemoteResponse's buffer; [2]: millicpus the caller lends
  // (Policy::lend_millicpus); [3]: bytes of memory it lends.
  uint64_t reserved[4];
};
static_assert(sizeof(SubDesc) == 64);

// Where a response payload lives.
enum class PayloadPool : uint16_t {
  kNone = 0,
  kServer = 1,  // a block of the server pool; the client frees it with kFreeReply
  kClient = 2,  // a sub-range of the request's own bytes (in-place response)
};

// Server -> client: the outcome of one request. For an error, the payload (if
// any) is the error text in the server pool.
struct CompDesc {
  uint64_t job_id;
  int32_t status;   // StatusCode
  uint16_t pool;    // PayloadPool
  uint16_t flags;   // CompFlags
  uint64_t offset;  // pool offset of the payload
  uint64_t length;
  uint64_t service_ns;  // time the handler took, for statistics and policy
  // [0]: millicpus the caller lent, [1]: bytes of memory; each at most what
  // the request asked to lend.
  uint64_t reserved[3];
};
static_assert(sizeof(CompDesc) == 64);

enum CompFlags : uint16_t {
  kCompWrittenRemote = 1,  // `length` bytes were written to the caller's buffer
  // The server-pool payload is one GpuRef naming the server's device memory;
  // it stays valid until the client frees the block (kFreeReply). Only for
  // requests that carried kSubAcceptGpuResponse.
  kCompGpuResponse = 2,
};

// --- control segment ----------------------------------------------------------

// At the start of the control segment's data area; the rings' entries follow.
struct ControlBlock {
  // Written by the dispatcher that owns the session: nonzero while it sleeps
  // in epoll and must be woken through the session's eventfd.
  alignas(shm::kCacheLine) std::atomic<uint32_t> server_sleeping;
  // Written by client threads: how many are (about to be) asleep on comp_futex.
  alignas(shm::kCacheLine) std::atomic<uint32_t> client_waiters;
  // Futex word: the server bumps it after posting completions if waiters != 0.
  std::atomic<uint32_t> comp_futex;
  alignas(shm::kCacheLine) shm::RingIndices sub;
  shm::RingIndices comp;
};
static_assert(sizeof(ControlBlock) % shm::kCacheLine == 0);
static_assert(std::atomic<uint32_t>::is_always_lock_free);

inline size_t control_data_bytes(uint32_t sub_entries, uint32_t comp_entries) {
  return sizeof(ControlBlock) + (size_t{sub_entries} + comp_entries) * 64;
}

struct ControlView {
  ControlBlock* block;
  SubDesc* sub_slots;
  CompDesc* comp_slots;
};

inline ControlView control_view(std::byte* data, uint32_t sub_entries) {
  auto* block = reinterpret_cast<ControlBlock*>(data);
  auto* sub = reinterpret_cast<SubDesc*>(data + sizeof(ControlBlock));
  auto* comp = reinterpret_cast<CompDesc*>(data + sizeof(ControlBlock) + size_t{sub_entries} * 64);
  return {block, sub, comp};
}

// Copies a fixed-size name field to a string_view, if it is NUL-terminated
// and non-empty; an empty view otherwise (the caller rejects it).
inline std::string_view fixed_string(const char* field, size_t cap) {
  const void* nul = std::memchr(field, '\0', cap);
  if (nul == nullptr) return {};
  return {field, static_cast<size_t>(static_cast<const char*>(nul) - field)};
}

inline void set_fixed_string(char* field, size_t cap, std::string_view s) {
  std::memset(field, 0, cap);
  std::memcpy(field, s.data(), s.size() < cap ? s.size() : cap - 1);
}

}  // namespace rocket::detail
