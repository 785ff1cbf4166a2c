// Real data-intensive workloads split into a frontend and a backend, for
// `rocket demo` and `rocket bench peers`. Each is a library computation with
// pre-processing (frontend), processing (backend) and post-processing
// (frontend); data are generated at run time from a seed, and every size
// scales with Scale::factor so tests run small.
//
//   const Workload* w = find_workload("pagerank");
//   auto model = w->start_backend(scale);            // backend: build once
//   auto fe = w->frontend(scale);                    // frontend
//   fe->make_request(0, request_span);               // pre-process into a buffer
//   model->process(request_span, alloc, &written);   // backend, any thread
//   fe->consume(response_span);                      // post-process, validates
//
// Requests and responses cross a process boundary: process() and consume()
// validate every header field and size, and reject what does not add up.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "rocket/status.h"

namespace rocket::workloads {

struct Scale {
  double factor = 1.0;  // 1.0: the reference sizes of the issue
  uint64_t seed = 42;
};

// Hands out the response buffer (a block of the server pool, or a vector in
// tests). Called at most once per process().
using ResponseAlloc = std::function<Result<std::span<std::byte>>(size_t bytes)>;

// The backend half, built once when the backend starts.
// Thread safety: process() may be called from several threads at once.
class Model {
 public:
  virtual ~Model() = default;
  // Processes `request` and writes the response into a buffer from `alloc`;
  // returns the response's length.
  virtual Result<size_t> process(std::span<const std::byte> request, const ResponseAlloc& alloc) const = 0;
};

// The frontend half. One per frontend thread.
class Frontend {
 public:
  virtual ~Frontend() = default;
  virtual size_t request_bytes() const noexcept = 0;
  virtual size_t max_response_bytes() const noexcept = 0;
  // Pre-processing: builds request number `i` into `out` (request_bytes()).
  virtual void make_request(uint64_t i, std::span<std::byte> out) = 0;
  // Post-processing of a response; an error if it is malformed.
  virtual Status consume(std::span<const std::byte> response) = 0;
  // A one-line summary of the last response consumed (e.g. "top-5 of image 0: ...").
  virtual std::string summary() const = 0;
};

class Workload {
 public:
  virtual ~Workload() = default;
  virtual std::string_view name() const noexcept = 0;
  virtual std::string_view description() const noexcept = 0;
  // Empty when usable; otherwise why not (e.g. built without libtorch).
  virtual std::string unavailable_reason() const { return {}; }
  virtual Result<std::unique_ptr<Model>> start_backend(const Scale& scale) const = 0;
  virtual std::unique_ptr<Frontend> frontend(const Scale& scale) const = 0;
};

// Every workload known to this build, usable or not.
const std::vector<const Workload*>& all_workloads();
// kNotFound for an unknown name.
Result<const Workload*> find_workload(std::string_view name);

// Shared wire header: magic, version, then up to four dimensions.
struct WireHeader {
  uint32_t magic = 0;
  uint32_t version = 1;
  uint64_t dims[4] = {0, 0, 0, 0};
};
static_assert(sizeof(WireHeader) == 40);

// Reads and checks a header: the magic, the version and that the message is
// at least a header long.
Result<WireHeader> read_header(std::span<const std::byte> msg, uint32_t magic, std::string_view what);
void write_header(std::span<std::byte> out, const WireHeader& h);
// a * b * c ... with overflow checks; kInvalidArgument on overflow.
Result<uint64_t> checked_product(std::initializer_list<uint64_t> factors, std::string_view what);
// Scales a reference count, never below `min`.
uint64_t scaled(double reference, const Scale& s, uint64_t min);

// Makes this process keep the memory it frees for its next allocations instead
// of handing it back to the kernel. The workloads allocate large temporaries
// per request (activations, feature rows, CSR arrays); glibc serves blocks over
// its mmap threshold with a fresh mapping and unmaps it on free, and trims the
// heap, so every request faulted those pages in again. Measured on the 2-core
// VM (BENCHMARKS.md §4): MobileNetV2 on 10 images 630 ms a forward with ~40,000
// minor faults, 115 ms with none once memory is kept; xgboost 193 ms -> 60 ms.
// Call at the start of main, before threads start. False where the allocator
// ignores these settings (not glibc, or a sanitizer's allocator).
bool retain_freed_memory();

}  // namespace rocket::workloads
