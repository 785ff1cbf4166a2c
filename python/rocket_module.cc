// The `rocket` Python module: rocket::Client and rocket::Server for frontends
// and backends written in Python (pybind11).
//
//   import rocket, numpy as np
//   with rocket.Client("/run/rocket/demo.sock") as c:
//       reply = c.call("classify", images)          # any bytes-like object: copied in by a mover
//       logits = np.frombuffer(reply, np.float32)   # views the server pool, no copy
//       buf = c.alloc(images.nbytes)                # zero copy: build the request in the pool
//       np.frombuffer(buf, np.float32)[:] = images.ravel()
//       reply = c.call("classify", buf)
//
//   srv = rocket.Server("/run/rocket/demo.sock", dispatchers=2)
//   srv.handle("double", lambda req: (np.frombuffer(req.data, np.float32) * 2).tobytes())
//   srv.run()                                       # until stop() or Ctrl-C
//
// Errors: every failing status is raised as rocket.Error, or the subclass named
// after its code (rocket.Unavailable, rocket.ResourceExhausted, ...), with the
// runtime's message. A handler that raises one of them answers its request
// with that code and message; any other exception answers INTERNAL.
//
// Memory: a Reply or Buffer exports the shared pool's bytes through the buffer
// protocol, so numpy, memoryview and bytes() read them in place; the block goes
// back to its pool when the Reply (or Buffer) and every view of it are gone. A
// handler's request and response views are valid during the handler only: the
// module releases them when it returns, and fails the request if the handler
// kept one alive.
//
// Threads: every call that can block releases the GIL, so Python threads can
// share one Client. Handlers run on the server's dispatcher threads and take
// the GIL for the call.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "rocket/runtime/builtin_ops.h"
#include "rocket/runtime/client.h"
#include "rocket/runtime/server.h"
#include "sys/fork.h"

namespace py = pybind11;

namespace rocket::python {
namespace {

// --- Errors ----------------------------------------------------------------------

// rocket.Error and one subclass per status code; created at import, owned by
// the module (and so alive as long as any code can raise them).
struct Errors {
  PyObject* base = nullptr;
  std::array<PyObject*, kMaxStatusCode + 1> by_code{};
};
Errors g_errors;

// "RESOURCE_EXHAUSTED" -> "ResourceExhausted".
std::string class_name_of(std::string_view code_name) {
  std::string out;
  bool upper = true;
  for (char c : code_name) {
    if (c == '_') {
      upper = true;
      continue;
    }
    out += upper ? c : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    upper = false;
  }
  return out;
}

[[noreturn]] void raise(const Status& st) {
  const auto code = static_cast<int32_t>(st.code());
  PyObject* cls =
      code >= 0 && code <= kMaxStatusCode && g_errors.by_code[code] != nullptr ? g_errors.by_code[code] : g_errors.base;
  PyErr_SetString(cls, st.message().c_str());
  throw py::error_already_set();
}

void check(const Status& st) {
  if (!st.ok()) raise(st);
}

template <typename T>
T take(Result<T> r) {
  if (!r.ok()) raise(r.status());
  return std::move(*r);
}

// str(obj), or a stand-in where its __str__ raises: what a handler raised
// must become a status whatever it is.
std::string text_of(const py::handle& obj) noexcept {
  try {
    return py::str(obj).cast<std::string>();
  } catch (const std::exception&) {
    return "(an object whose str() raised)";
  }
}

// The status a handler's exception answers with: a rocket.Error's own code,
// INTERNAL (with the traceback on stderr) for anything else. Never throws.
Status status_of(py::error_already_set& e, std::string_view op) noexcept {
  if (e.matches(g_errors.base)) {
    int32_t code = static_cast<int32_t>(StatusCode::kInternal);
    try {
      code = e.value().attr("code").cast<int32_t>();
    } catch (const std::exception&) {  // a subclass that set `code` to something else
    }
    if (code <= 0 || code > kMaxStatusCode) code = static_cast<int32_t>(StatusCode::kInternal);
    return {static_cast<StatusCode>(code), text_of(e.value())};
  }
  std::string name = "exception";
  try {
    name = e.type().attr("__name__").cast<std::string>();
    py::object trace = e.trace() ? py::reinterpret_borrow<py::object>(e.trace()) : py::none();
    py::object lines = py::module_::import("traceback").attr("format_exception")(e.type(), e.value(), trace);
    std::string tb = py::str("").attr("join")(lines).cast<std::string>();
    std::fprintf(stderr, "rocket: the handler of op '%.*s' raised:\n%s", static_cast<int>(op.size()), op.data(),
                 tb.c_str());
  } catch (const std::exception&) {  // no traceback then; the status still says what was raised
  }
  return internal_error(name + ": " + text_of(e.value()));
}

// --- Arguments -------------------------------------------------------------------

// Seconds (None: no limit) as the runtime's milliseconds, where 0 means none.
std::chrono::milliseconds timeout_of(const std::optional<double>& seconds) {
  if (!seconds) return std::chrono::milliseconds{0};
  if (!std::isfinite(*seconds) || *seconds <= 0 || *seconds > 1e9) {
    raise(invalid_argument("timeout must be a positive number of seconds, or None for no limit"));
  }
  return std::chrono::milliseconds{std::max<int64_t>(1, static_cast<int64_t>(std::ceil(*seconds * 1000)))};
}

CallOptions call_options(const std::string& mover, const std::string& cache, const std::optional<double>& timeout,
                         uint32_t lend_millicpus, uint64_t lend_memory_bytes) {
  CallOptions o;
  o.policy.mover = take(parse_mover_kind(mover));
  o.policy.cache = take(parse_cache(cache));
  o.policy.lend_millicpus = lend_millicpus;
  o.policy.lend_memory_bytes = lend_memory_bytes;
  o.timeout = timeout_of(timeout);
  return o;
}

// A contiguous export of a bytes-like object, held (so that a bytearray
// cannot be resized under a copy) until this is destroyed, with the GIL.
class BytesView {
 public:
  BytesView(const py::handle& obj, bool writable) {
    if (PyObject_GetBuffer(obj.ptr(), &view_, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) != 0) {
      throw py::error_already_set();
    }
  }
  BytesView(const BytesView&) = delete;
  BytesView& operator=(const BytesView&) = delete;
  ~BytesView() { PyBuffer_Release(&view_); }
  std::span<const std::byte> bytes() const noexcept {
    return {static_cast<const std::byte*>(view_.buf), static_cast<size_t>(view_.len)};
  }
  std::span<std::byte> writable() const noexcept {
    return {static_cast<std::byte*>(view_.buf), static_cast<size_t>(view_.len)};
  }

 private:
  Py_buffer view_{};
};

// Something to point an empty export at: a null pointer is not a buffer.
std::byte g_empty[1];

// --- Client ----------------------------------------------------------------------

// A job of call_async(): the future and the request bytes it copies from,
// which must outlive the copy-in.
//
// Thread safety: any Python thread may call result() and done(); the C++
// future is only touched under mu_, which is taken with the GIL released.
class PyFuture {
 public:
  PyFuture(Future f, std::unique_ptr<BytesView> request)
      : job_id_(f.id()), future_(std::move(f)), request_(std::move(request)) {}
  PyFuture(const PyFuture&) = delete;
  PyFuture& operator=(const PyFuture&) = delete;
  ~PyFuture() {
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu_);
      future_ = Future();  // a future dropped early waits for its copy-in...
    }
    request_.reset();  // ...before the request's export goes
  }

  // The reply, once it arrives; later calls return the same reply or raise
  // the same error (as concurrent.futures does). A timeout may be retried.
  py::object result(std::optional<double> timeout) {
    const auto t = timeout_of(timeout);
    Status timed_out;
    {
      py::gil_scoped_release nogil;
      std::lock_guard<std::mutex> lock(mu_);
      if (!outcome_) {
        Result<Reply> r = future_.get(t);
        if (!r.ok() && r.status().code() == StatusCode::kDeadlineExceeded) {
          timed_out = r.status();
        } else {
          outcome_ = std::move(r);  // set once, read after taking mu_
          future_ = Future();
        }
      }
    }
    if (!timed_out.ok()) raise(timed_out);
    request_.reset();  // the copy-in is over
    if (!outcome_->ok()) raise(outcome_->status());
    if (reply_.is_none()) reply_ = py::cast(**outcome_);
    return reply_;
  }

  bool done() {
    std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock()) return false;  // another thread is waiting for it
    return outcome_.has_value() || future_.ready();
  }
  JobId job_id() const noexcept { return job_id_; }

 private:
  const JobId job_id_;
  std::mutex mu_;
  Future future_;                         // guarded by mu_
  std::optional<Result<Reply>> outcome_;  // guarded by mu_; never changes once set
  std::unique_ptr<BytesView> request_;    // under the GIL
  py::object reply_ = py::none();         // under the GIL
};

// Thread safety: as rocket::Client, safe for concurrent use (the GIL is
// released while a call waits).
class PyClient {
 public:
  explicit PyClient(Client c) : client_(std::move(c)) {}

  Reply call(const std::string& op, const py::object& request, const CallOptions& o) {
    Result<Reply> r = Status(StatusCode::kInternal, "");
    if (py::isinstance<Buffer>(request)) {
      const Buffer& b = request.cast<const Buffer&>();
      py::gil_scoped_release nogil;
      r = client_.call(op, b, o);
    } else {
      BytesView v(request, false);
      py::gil_scoped_release nogil;
      r = client_.call(op, v.bytes(), o);
    }
    return take(std::move(r));
  }

  size_t call_into(const std::string& op, const py::object& request, const py::object& response, const CallOptions& o) {
    BytesView in(request, false);
    BytesView out(response, true);
    Result<size_t> r = Status(StatusCode::kInternal, "");
    {
      py::gil_scoped_release nogil;
      r = client_.call_into(op, in.bytes(), out.writable(), o);
    }
    return take(std::move(r));
  }

  std::unique_ptr<PyFuture> call_async(const std::string& op, const py::object& request, const CallOptions& o) {
    auto v = std::make_unique<BytesView>(request, false);
    Future f;
    {
      py::gil_scoped_release nogil;
      f = client_.call_async(op, v->bytes(), o);
    }
    return std::make_unique<PyFuture>(std::move(f), std::move(v));
  }

  JobId submit(const std::string& op, const py::object& request, const CallOptions& o) {
    Result<JobId> r = Status(StatusCode::kInternal, "");
    if (py::isinstance<Buffer>(request)) {
      const Buffer& b = request.cast<const Buffer&>();
      py::gil_scoped_release nogil;
      r = client_.submit(op, b, o);
    } else {
      BytesView v(request, false);
      py::gil_scoped_release nogil;
      r = client_.submit(op, v.bytes(), o);  // copied in on return
    }
    return take(std::move(r));
  }

  std::vector<JobId> submit_batch(const std::string& op, const py::sequence& requests, const CallOptions& o) {
    std::vector<std::unique_ptr<BytesView>> views;
    std::vector<std::span<const std::byte>> spans;
    views.reserve(requests.size());
    spans.reserve(requests.size());
    for (const py::handle& r : requests) {
      views.push_back(std::make_unique<BytesView>(r, false));
      spans.push_back(views.back()->bytes());
    }
    Result<std::vector<JobId>> ids = Status(StatusCode::kInternal, "");
    {
      py::gil_scoped_release nogil;
      ids = client_.submit_batch(op, spans, o);  // copied in on return
    }
    return take(std::move(ids));
  }

  Reply query(JobId id, std::optional<double> timeout) {
    Result<Reply> r = Status(StatusCode::kInternal, "");
    const auto t = timeout_of(timeout);
    {
      py::gil_scoped_release nogil;
      r = client_.query(id, t);
    }
    return take(std::move(r));
  }

  Buffer alloc(size_t bytes) {
    Result<Buffer> r = Status(StatusCode::kInternal, "");
    {
      py::gil_scoped_release nogil;
      r = client_.alloc(bytes);
    }
    return take(std::move(r));
  }

  Client& client() { return client_; }

 private:
  Client client_;
};

py::dict client_stats(const ClientStats& s) {
  py::dict d;
  d["requests"] = s.requests;
  d["inflight"] = s.inflight;
  d["futex_sleeps"] = s.futex_sleeps;
  d["server_wakeups"] = s.server_wakeups;
  d["client_pool_bytes"] = s.client_pool_bytes;
  d["client_pool_in_use"] = s.client_pool_in_use;
  d["client_pool_max_bytes"] = s.client_pool_max_bytes;
  d["server_pool_max_bytes"] = s.server_pool_max_bytes;
  d["client_pool_grows"] = s.client_pool_grows;
  return d;
}

// --- Server ----------------------------------------------------------------------

// The bytes behind a view handed to a handler. Every view of them (a
// memoryview, its slices, a numpy array over either) holds a reference to
// this exporter while it lives, so its reference count tells whether the
// handler let go of them all.
struct HandlerBytes {
  std::byte* data;
  size_t size;
  bool readonly;
};

// Views handed to one handler call, released when it returns. A view the
// handler kept cannot be revoked: its request fails, since the bytes are
// reused once the handler is done.
class HandlerViews {
 public:
  py::memoryview add(std::byte* p, size_t n, bool writable) {
    py::object exporter = py::cast(HandlerBytes{n == 0 ? g_empty : p, n, !writable});
    py::memoryview view(exporter);
    entries_.push_back({exporter, view});
    return view;
  }
  size_t last_id() const { return entries_.size() - 1; }
  // Releases one view early; false if the handler still holds it.
  bool release_one(size_t id) { return release(entries_.at(id)); }
  // True when every view let go.
  bool release_all() {
    bool all = true;
    for (Entry& e : entries_) all = release(e) && all;
    entries_.clear();
    return all;
  }

 private:
  struct Entry {
    py::object exporter;
    py::object view;
  };
  static bool release(Entry& e) {
    if (!e.exporter) return true;  // released already
    bool held = false;
    try {
      e.view.attr("release")();
    } catch (py::error_already_set&) {  // BufferError: exported further
      held = true;
    }
    e.view = py::object();
    held = held || Py_REFCNT(e.exporter.ptr()) > 1;
    // Whatever exports it from now on gets no bytes.
    HandlerBytes& b = e.exporter.cast<HandlerBytes&>();
    b = HandlerBytes{g_empty, 0, true};
    e.exporter = py::object();
    return !held;
  }
  std::vector<Entry> entries_;
};

// rocket.Request: what a handler is given. Valid during the handler only.
class PyRequest {
 public:
  PyRequest(const Request& r, HandlerViews* views) : r_(&r), views_(views) {}
  const Request& get() const {
    if (r_ == nullptr) raise(failed_precondition("a request is only valid during its handler"));
    return *r_;
  }
  py::memoryview data() {
    if (!data_) {
      auto d = get().data();
      data_ = views_->add(const_cast<std::byte*>(d.data()), d.size(), false);
    }
    return *data_;
  }
  void end() {
    r_ = nullptr;
    data_.reset();
  }

 private:
  const Request* r_;
  HandlerViews* views_;
  std::optional<py::memoryview> data_;
};

// rocket.Response: how a handler answers in place of returning bytes.
class PyResponse {
 public:
  PyResponse(Response& r, HandlerViews* views) : r_(&r), views_(views) {}
  Response& get() {
    if (r_ == nullptr) raise(failed_precondition("a response is only valid during its handler"));
    used_ = true;
    return *r_;
  }
  // A second call replaces the first block: its view must be gone by then.
  py::memoryview alloc(size_t bytes) {
    Response& r = get();
    if (alloc_view_ && !views_->release_one(*alloc_view_)) {
      raise(failed_precondition("a view of the response's earlier alloc() is still alive"));
    }
    alloc_view_.reset();
    auto out = take(r.alloc(bytes));
    py::memoryview view = views_->add(out.data(), out.size(), true);
    alloc_view_ = views_->last_id();
    return view;
  }
  void write(const py::object& bytes) {
    BytesView v(bytes, false);
    check(get().write(v.bytes()));
  }
  void reply_in_place(size_t offset, size_t length) { check(get().reply_in_place(offset, length)); }
  bool used() const { return used_; }
  void end() { r_ = nullptr; }

 private:
  Response* r_;
  HandlerViews* views_;
  bool used_ = false;
  std::optional<size_t> alloc_view_;  // the view of the alloc() block in views_
};

// A Python callable shared by the server's threads: the last reference is
// dropped with the GIL held.
using PyCallable = std::shared_ptr<py::object>;
PyCallable share(py::object fn) {
  return PyCallable(new py::object(std::move(fn)), [](py::object* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

// A server thread keeps its Python thread state from its first handler call
// until it exits: making one for each call (what taking the GIL does on a
// thread Python did not start) cost ~60 us a request.
class KeptThreadState {
 public:
  // Call with the GIL held.
  void keep() {
    if (kept_) return;
    PyGILState_Ensure();  // never released by a call: the state outlives it
    kept_ = true;
  }
  KeptThreadState() = default;
  KeptThreadState(const KeptThreadState&) = delete;
  KeptThreadState& operator=(const KeptThreadState&) = delete;
  // Server threads end in Server::wait(), which the module calls with the GIL
  // released, and at the latest at exit, before the interpreter finalises.
  ~KeptThreadState() {
#if PY_VERSION_HEX >= 0x030D0000
    const bool finalizing = Py_IsFinalizing() != 0;
#else
    const bool finalizing = _Py_IsFinalizing() != 0;  // public as Py_IsFinalizing from 3.13
#endif
    if (!kept_ || Py_IsInitialized() == 0 || finalizing) return;
    PyGILState_Ensure();                      // one more hold, and the GIL
    PyGILState_Release(PyGILState_LOCKED);    // back to the kept hold, GIL still held
    PyGILState_Release(PyGILState_UNLOCKED);  // the last: clears the state, releases the GIL
  }

 private:
  bool kept_ = false;
};
thread_local KeptThreadState t_thread_state;
// True on a server thread while it runs Python code of ours (a handler or a
// session-end hook): such code must not wait for the server's threads.
thread_local bool t_on_server_thread = false;

// Sets t_on_server_thread for a scope.
class OnServerThread {
 public:
  OnServerThread() : was_(std::exchange(t_on_server_thread, true)) {}
  OnServerThread(const OnServerThread&) = delete;
  OnServerThread& operator=(const OnServerThread&) = delete;
  ~OnServerThread() { t_on_server_thread = was_; }

 private:
  bool was_;
};

Status run_handler(const PyCallable& fn, bool with_response, const std::string& op, const Request& req,
                   Response& resp) {
  py::gil_scoped_acquire gil;
  t_thread_state.keep();
  OnServerThread on_server;
  HandlerViews views;
  auto preq = std::make_shared<PyRequest>(req, &views);
  auto presp = std::make_shared<PyResponse>(resp, &views);
  Status st;
  try {
    py::object out = with_response ? (*fn)(preq, presp) : (*fn)(preq);
    if (!out.is_none()) {
      if (presp->used()) {
        st = internal_error("the handler of op '" + op +
                            "' both filled its response and returned a value: do one or the other");
      } else {
        BytesView v(out, false);
        st = resp.write(v.bytes());
      }
    }
  } catch (py::error_already_set& e) {
    st = status_of(e, op);
  } catch (const std::exception& e) {  // pybind11's own (a cast that failed, say)
    st = internal_error("the handler of op '" + op + "': " + e.what());
  }
  preq->end();
  presp->end();
  if (!views.release_all() && st.ok()) {
    st = internal_error("the handler of op '" + op +
                        "' kept a view of its request or response after it returned; copy what it must keep "
                        "(bytes(request.data))");
  }
  return st;
}

// Whether `fn` takes (request, response) rather than (request).
bool takes_response(const py::object& fn) {
  try {
    py::object sig = py::module_::import("inspect").attr("signature")(fn);
    sig.attr("bind")(py::none(), py::none());
    return true;
  } catch (py::error_already_set&) {
    return false;
  }
}

class PyServer;
std::mutex g_servers_mu;
std::set<PyServer*> g_servers;  // live servers, stopped at interpreter exit

// Thread safety: handle() before start(); the rest from any Python thread.
class PyServer {
 public:
  explicit PyServer(ServerOptions o) : server_(std::make_unique<Server>(std::move(o))) {
    std::lock_guard<std::mutex> lock(g_servers_mu);
    g_servers.insert(this);
  }
  PyServer(const PyServer&) = delete;
  PyServer& operator=(const PyServer&) = delete;
  ~PyServer() {
    {
      std::lock_guard<std::mutex> lock(g_servers_mu);
      g_servers.erase(this);
    }
    // In a forked child the server is the parent's: rocket::Server's own
    // destructor leaves it alone there.
    if (!in_forked_child()) shut_down();
  }

  // A child forked after the server was made: its threads are the parent's.
  bool in_forked_child() const noexcept { return detail::fork_generation() != made_in_; }
  void owner_check() const {
    if (in_forked_child()) {
      raise(
          failed_precondition("this server belongs to the process that made it, before it forked; "
                              "a forked child must make a server of its own"));
    }
  }

  void handle(const std::string& op, const py::object& fn, bool concurrent) {
    if (!PyCallable_Check(fn.ptr())) raise(invalid_argument("the handler of op '" + op + "' is not callable"));
    const bool with_response = takes_response(fn);
    PyCallable f = share(fn);
    OpOptions oo;
    oo.concurrent = concurrent;
    check(server_->handle(
        op,
        [f, with_response, op](const Request& req, Response& resp) {
          return run_handler(f, with_response, op, req, resp);
        },
        std::move(oo)));
  }

  void on_session_end(const py::object& fn) {
    PyCallable f = share(fn);
    check(server_->on_session_end([f](uint64_t sid) {
      py::gil_scoped_acquire gil;
      OnServerThread on_server;
      try {
        (*f)(sid);
      } catch (py::error_already_set& e) {
        std::fprintf(stderr, "rocket: on_session_end hook raised: %s\n", e.what());
      }
    }));
  }

  void builtin_ops() { check(register_builtin_ops(*server_)); }

  void start() {
    owner_check();
    Status st;
    {
      py::gil_scoped_release nogil;
      st = server_->start();
    }
    check(st);
  }

  // start(), then waits for stop() -- from another thread, a handler, or
  // Ctrl-C (the server stops, then KeyboardInterrupt goes on).
  void run() {
    start();
    for (;;) {
      {
        py::gil_scoped_release nogil;
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::milliseconds(100), [&] { return stop_asked_; });
        if (stop_asked_) break;
      }
      if (PyErr_CheckSignals() != 0) {
        shut_down();
        throw py::error_already_set();
      }
    }
    wait();
  }

  void stop() {
    owner_check();
    server_->stop();
    std::lock_guard<std::mutex> lock(mu_);
    stop_asked_ = true;
    cv_.notify_all();
  }

  // Joins the server's threads; they may need the GIL to finish a handler.
  // Not from a handler: it would wait for its own thread.
  void wait() {
    owner_check();
    if (t_on_server_thread) {
      raise(
          failed_precondition("a handler cannot wait for the server to stop (it would wait for itself); "
                              "call stop(), and wait() on another thread"));
    }
    py::gil_scoped_release nogil;
    server_->wait();
  }

  void shut_down() {
    stop();
    wait();
  }

  Server& server() { return *server_; }

 private:
  std::unique_ptr<Server> server_;
  uint64_t made_in_ = detail::fork_generation();
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_asked_ = false;
};

py::dict server_stats(const ServerStats& s) {
  py::dict d;
  d["sessions_open"] = s.sessions_open;
  d["sessions_total"] = s.sessions_total;
  d["sessions_refused"] = s.sessions_refused;
  d["requests"] = s.requests;
  d["request_errors"] = s.request_errors;
  d["protocol_errors"] = s.protocol_errors;
  d["bytes_mapped"] = s.bytes_mapped;
  d["mapped_budget_bytes"] = s.mapped_budget_bytes;
  d["pool_grows"] = s.pool_grows;
  d["requests_helped"] = s.requests_helped;
  d["lends"] = s.lends;
  d["lends_refused"] = s.lends_refused;
  return d;
}

void stop_all_servers() {
  std::vector<PyServer*> live;
  {
    std::lock_guard<std::mutex> lock(g_servers_mu);
    live.assign(g_servers.begin(), g_servers.end());
  }
  for (PyServer* s : live) {
    if (!s->in_forked_child()) s->shut_down();
  }
}

}  // namespace
}  // namespace rocket::python

PYBIND11_MODULE(rocket, m) {
  using namespace rocket;
  using namespace rocket::python;
  m.doc() = "Rocket: shared-memory IPC for big payloads between processes on one machine.";

  // Errors: rocket.Error(code, message) and a subclass per code; the codes a
  // Python programmer already catches also derive from the built-in kind.
  g_errors.base = PyErr_NewExceptionWithDoc("rocket.Error",
                                            "A Rocket status other than OK; `code` is its number, `code_name` its "
                                            "name (UNAVAILABLE: retry; RESOURCE_EXHAUSTED: free and retry; ...).",
                                            PyExc_Exception, nullptr);
  if (g_errors.base == nullptr) throw py::error_already_set();
  m.attr("Error") = py::handle(g_errors.base);
  for (int32_t c = 1; c <= kMaxStatusCode; ++c) {
    const auto code = static_cast<StatusCode>(c);
    const std::string name = class_name_of(status_code_name(code));
    PyObject* builtin = code == StatusCode::kInvalidArgument    ? PyExc_ValueError
                        : code == StatusCode::kDeadlineExceeded ? PyExc_TimeoutError
                        : code == StatusCode::kPermissionDenied ? PyExc_PermissionError
                        : code == StatusCode::kNotFound         ? PyExc_LookupError
                                                                : nullptr;
    py::tuple bases = builtin != nullptr ? py::make_tuple(py::handle(g_errors.base), py::handle(builtin))
                                         : py::make_tuple(py::handle(g_errors.base));
    py::dict d;
    d["code"] = c;
    d["code_name"] = std::string(status_code_name(code));
    PyObject* cls = PyErr_NewException(("rocket." + name).c_str(), bases.ptr(), d.ptr());
    if (cls == nullptr) throw py::error_already_set();
    g_errors.by_code[c] = cls;
    m.attr(name.c_str()) = py::handle(cls);
  }
  py::setattr(py::handle(g_errors.base), "code", py::int_(static_cast<int>(StatusCode::kUnknown)));
  py::setattr(py::handle(g_errors.base), "code_name", py::str("UNKNOWN"));

  py::class_<HandlerBytes>(m, "_HandlerBytes", py::buffer_protocol()).def_buffer([](HandlerBytes& b) {
    return py::buffer_info(b.data, 1, py::format_descriptor<uint8_t>::format(), 1, {static_cast<ssize_t>(b.size)},
                           {ssize_t{1}}, b.readonly);
  });

  py::class_<Buffer>(m, "Buffer", py::buffer_protocol(),
                     "A block of the client pool to build a request in (zero copy). Writable through the buffer "
                     "protocol: numpy.frombuffer(buf, dtype), memoryview(buf). Back to the pool when it and every "
                     "view of it are gone.")
      .def_buffer([](Buffer& b) {
        return py::buffer_info(b.size() == 0 ? g_empty : b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<ssize_t>(b.size())}, {ssize_t{1}}, /*readonly=*/false);
      })
      .def("__len__", &Buffer::size)
      .def("__repr__", [](const Buffer& b) { return "<rocket.Buffer of " + std::to_string(b.size()) + " bytes>"; });

  py::class_<Reply>(m, "Reply", py::buffer_protocol(),
                    "A response. Read-only bytes through the buffer protocol, viewing the server pool in place: "
                    "numpy.frombuffer(reply, dtype), memoryview(reply), bytes(reply). The block goes back to the "
                    "server when the Reply and every view of it are gone.")
      .def_buffer([](Reply& r) {
        auto d = r.data();
        return py::buffer_info(d.empty() ? g_empty : const_cast<std::byte*>(d.data()), 1,
                               py::format_descriptor<uint8_t>::format(), 1, {static_cast<ssize_t>(d.size())},
                               {ssize_t{1}}, /*readonly=*/true);
      })
      .def("__len__", [](const Reply& r) { return r.data().size(); })
      .def("__repr__",
           [](const Reply& r) {
             return "<rocket.Reply of " + std::to_string(r.data().size()) + " bytes, handler " +
                    std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(r.service_time()).count()) +
                    " us>";
           })
      .def_property_readonly(
          "service_time", [](const Reply& r) { return std::chrono::duration<double>(r.service_time()).count(); },
          "seconds the server's handler took")
      .def_property_readonly("lent_millicpus", &Reply::lent_millicpus)
      .def_property_readonly("lent_memory_bytes", &Reply::lent_memory_bytes)
      .def(
          "copy_into",
          [](const Reply& r, const py::object& dst, const std::string& mover, const std::string& cache) {
            BytesView out(dst, true);
            if (out.writable().size() < r.data().size()) {
              raise(invalid_argument("destination holds " + std::to_string(out.writable().size()) +
                                     " bytes; the reply has " + std::to_string(r.data().size())));
            }
            CopyOptions co{.mover = take(parse_mover_kind(mover)), .cache = take(parse_cache(cache))};
            Status st;
            {
              py::gil_scoped_release nogil;
              st = r.copy_to(out.writable().first(r.data().size()), co);
            }
            check(st);
          },
          py::arg("dst"), py::arg("mover") = "auto", py::arg("cache") = "auto",
          "Copies the reply into a writable bytes-like object (a numpy array, a bytearray) with a data mover.");

  py::class_<PyFuture>(m, "Future", "The job of Client.call_async().")
      .def("result", &PyFuture::result, py::arg("timeout") = py::none(),
           "The Reply, waiting for it (timeout in seconds; None: until it arrives). A timeout raises "
           "DeadlineExceeded and may be retried.")
      .def("done", &PyFuture::done)
      .def_property_readonly("job_id", &PyFuture::job_id);

  py::class_<PyClient>(m, "Client",
                       "A frontend's session with a Rocket server. Safe to share between threads. Policy keywords "
                       "of every call: mover ('auto', 'cpu', 'cpu_stream', 'threads', 'kernel', ...), cache "
                       "('auto', 'inject', 'bypass'), timeout (seconds or None), lend_millicpus, "
                       "lend_memory_bytes. Pools start at client_pool_bytes / server_pool_bytes (0: the server's "
                       "default, 32 MiB) and grow on demand up to max_client_pool_bytes / max_server_pool_bytes "
                       "(0: the server's max_pool_bytes).")
      .def(py::init([](const std::string& path, const std::string& tenant, size_t client_pool_bytes,
                       size_t server_pool_bytes, size_t max_client_pool_bytes, size_t max_server_pool_bytes,
                       uint32_t ring_entries, double connect_timeout, bool allow_kernel_copy, const std::string& mover,
                       bool huge_pages) {
             ClientOptions o;
             o.tenant = tenant;
             o.client_pool_bytes = client_pool_bytes;
             o.server_pool_bytes = server_pool_bytes;
             o.max_client_pool_bytes = max_client_pool_bytes;
             o.max_server_pool_bytes = max_server_pool_bytes;
             o.ring_entries = ring_entries;
             o.connect_timeout = timeout_of(connect_timeout);
             o.allow_kernel_copy = allow_kernel_copy;
             o.default_mover = take(parse_mover_kind(mover));
             o.huge_pages = huge_pages;
             Result<Client> c = Status(StatusCode::kInternal, "");
             {
               py::gil_scoped_release nogil;
               c = Client::connect(path, o);
             }
             return std::make_unique<PyClient>(take(std::move(c)));
           }),
           py::arg("socket_path"), py::kw_only(), py::arg("tenant") = "default", py::arg("client_pool_bytes") = 0,
           py::arg("server_pool_bytes") = 0, py::arg("max_client_pool_bytes") = 0, py::arg("max_server_pool_bytes") = 0,
           py::arg("ring_entries") = 0, py::arg("connect_timeout") = 30.0, py::arg("allow_kernel_copy") = false,
           py::arg("mover") = "auto", py::arg("huge_pages") = true)
      .def(
          "call",
          [](PyClient& c, const std::string& op, const py::object& request, const std::string& mover,
             const std::string& cache, std::optional<double> timeout, uint32_t lend_millicpus,
             uint64_t lend_memory_bytes) {
            return c.call(op, request, call_options(mover, cache, timeout, lend_millicpus, lend_memory_bytes));
          },
          py::arg("op"), py::arg("request") = py::bytes(), py::kw_only(), py::arg("mover") = "auto",
          py::arg("cache") = "auto", py::arg("timeout") = py::none(), py::arg("lend_millicpus") = 0,
          py::arg("lend_memory_bytes") = 0,
          "Calls `op` and waits: a Buffer goes as it is (zero copy); any other bytes-like object is copied into "
          "the pool by the policy's mover. Returns a Reply.")
      .def(
          "call_into",
          [](PyClient& c, const std::string& op, const py::object& request, const py::object& response,
             const std::string& mover, const std::string& cache, std::optional<double> timeout, uint32_t lend_millicpus,
             uint64_t lend_memory_bytes) {
            return c.call_into(op, request, response,
                               call_options(mover, cache, timeout, lend_millicpus, lend_memory_bytes));
          },
          py::arg("op"), py::arg("request"), py::arg("response"), py::kw_only(), py::arg("mover") = "auto",
          py::arg("cache") = "auto", py::arg("timeout") = py::none(), py::arg("lend_millicpus") = 0,
          py::arg("lend_memory_bytes") = 0,
          "Calls `op` with the response landing in the writable bytes-like `response`; returns its size "
          "(OutOfRange where it does not fit).")
      .def(
          "call_async",
          [](PyClient& c, const std::string& op, const py::object& request, const std::string& mover,
             const std::string& cache, std::optional<double> timeout, uint32_t lend_millicpus,
             uint64_t lend_memory_bytes) {
            return c.call_async(op, request, call_options(mover, cache, timeout, lend_millicpus, lend_memory_bytes));
          },
          py::arg("op"), py::arg("request"), py::kw_only(), py::arg("mover") = "auto", py::arg("cache") = "auto",
          py::arg("timeout") = py::none(), py::arg("lend_millicpus") = 0, py::arg("lend_memory_bytes") = 0,
          "Starts `op` and returns a Future at once; the copy-in runs on an asynchronous engine for large "
          "payloads while the caller works. The request is held until the copy is done.")
      .def(
          "submit",
          [](PyClient& c, const std::string& op, const py::object& request, const std::string& mover,
             const std::string& cache, uint32_t lend_millicpus, uint64_t lend_memory_bytes) {
            return c.submit(op, request, call_options(mover, cache, std::nullopt, lend_millicpus, lend_memory_bytes));
          },
          py::arg("op"), py::arg("request"), py::kw_only(), py::arg("mover") = "auto", py::arg("cache") = "auto",
          py::arg("lend_millicpus") = 0, py::arg("lend_memory_bytes") = 0,
          "Pipelined: posts the request and returns its job id (Unavailable while the completion ring is full: "
          "query some first).")
      .def(
          "submit_batch",
          [](PyClient& c, const std::string& op, const py::sequence& requests, const std::string& mover,
             const std::string& cache) {
            return c.submit_batch(op, requests, call_options(mover, cache, std::nullopt, 0, 0));
          },
          py::arg("op"), py::arg("requests"), py::kw_only(), py::arg("mover") = "auto", py::arg("cache") = "auto",
          "Pipelined, batched: copies every request into the pool with one mover submission and posts them all; "
          "returns their job ids. All or nothing.")
      .def("query", &PyClient::query, py::arg("job_id"), py::arg("timeout") = py::none(),
           "The Reply of a submitted job, waiting for it (NotFound for an id this session did not issue or "
           "already collected).")
      .def("alloc", &PyClient::alloc, py::arg("nbytes"), "A Buffer of `nbytes` in the client pool.")
      .def_property_readonly("ops", [](PyClient& c) { return c.client().ops(); })
      .def_property_readonly("session_id", [](PyClient& c) { return c.client().session_id(); })
      .def_property_readonly("kernel_copy", [](PyClient& c) { return c.client().kernel_copy(); })
      .def("stats", [](PyClient& c) { return client_stats(c.client().stats()); })
      .def(
          "close", [](PyClient& c) { c.client().close(); }, "Ends the session; replies and buffers stay readable.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyClient& c, const py::args&) { c.client().close(); })
      .def("__repr__",
           [](PyClient& c) { return "<rocket.Client session " + std::to_string(c.client().session_id()) + ">"; });

  py::class_<PyRequest, std::shared_ptr<PyRequest>>(m, "Request", "What a handler is given; valid during the handler.")
      .def_property_readonly("data", &PyRequest::data,
                             "The request's bytes in the client pool: a read-only memoryview, released when the "
                             "handler returns (copy what must be kept).")
      .def_property_readonly("op", [](const PyRequest& r) { return std::string(r.get().op()); })
      .def_property_readonly("tenant", [](const PyRequest& r) { return std::string(r.get().tenant()); })
      .def_property_readonly("uid", [](const PyRequest& r) { return r.get().uid(); })
      .def_property_readonly("pid", [](const PyRequest& r) { return r.get().pid(); })
      .def_property_readonly("job_id", [](const PyRequest& r) { return r.get().job_id(); })
      .def_property_readonly("session_id", [](const PyRequest& r) { return r.get().session_id(); })
      .def_property_readonly("lent_millicpus", [](const PyRequest& r) { return r.get().lent_millicpus(); })
      .def_property_readonly("lent_memory_bytes", [](const PyRequest& r) { return r.get().lent_memory_bytes(); })
      .def("__len__", [](const PyRequest& r) { return r.get().data().size(); });

  py::class_<PyResponse, std::shared_ptr<PyResponse>>(
      m, "Response", "How a two-argument handler answers, instead of returning bytes; valid during the handler.")
      .def("alloc", &PyResponse::alloc, py::arg("nbytes"),
           "A writable memoryview of `nbytes` in the server pool to write the output into (no copy).")
      .def("write", &PyResponse::write, py::arg("data"), "Copies a bytes-like object into the response.")
      .def("reply_in_place", &PyResponse::reply_in_place, py::arg("offset"), py::arg("length"),
           "Answers with request bytes [offset, offset + length): no copy at all.");

  py::class_<PyServer>(m, "Server",
                       "A backend serving Rocket clients. Register handlers, then run() (or start()/stop()). A "
                       "handler is called as handler(request) and returns a bytes-like object or None, or as "
                       "handler(request, response) and fills the response. Keywords as ServerOptions; lend=True "
                       "takes callers' CPU loans into this backend's cgroup for their requests (Pocket: "
                       "lend_cgroup, lend_factors {cgroup: factor}, lend_journal; lend_memory=True for memory "
                       "loans too), and request.lent_millicpus says what a request brought.")
      .def(py::init([](const std::string& path, unsigned dispatchers, std::vector<uid_t> allowed_uids,
                       std::vector<gid_t> allowed_gids, size_t default_client_pool_bytes,
                       size_t default_server_pool_bytes, size_t max_pool_bytes, unsigned max_sessions,
                       unsigned max_sessions_per_uid, uint64_t max_mapped_bytes, bool huge_pages,
                       double handshake_timeout, bool lend, const std::string& lend_cgroup,
                       const std::string& lend_journal, std::map<std::string, double> lend_factors,
                       double lend_default_factor, bool lend_memory, const std::string& lend_memory_cgroup,
                       uint64_t lend_memory_reserve_bytes) {
             ServerOptions o;
             o.socket_path = path;
             o.dispatchers = dispatchers;
             o.allowed_uids = std::move(allowed_uids);
             o.allowed_gids = std::move(allowed_gids);
             if (default_client_pool_bytes != 0) o.default_client_pool_bytes = default_client_pool_bytes;
             if (default_server_pool_bytes != 0) o.default_server_pool_bytes = default_server_pool_bytes;
             if (max_pool_bytes != 0) o.max_pool_bytes = max_pool_bytes;
             if (max_sessions != 0) o.max_sessions = max_sessions;
             o.max_sessions_per_uid = max_sessions_per_uid;
             o.max_mapped_bytes = max_mapped_bytes;
             o.huge_pages = huge_pages;
             o.handshake_timeout = timeout_of(handshake_timeout);
             if (lend_memory && !lend) raise(invalid_argument("lend_memory=True goes with lend=True"));
             o.lending.enabled = lend;
             o.lending.backend_cgroup = lend_cgroup;
             o.lending.journal_path = lend_journal;
             o.lending.factors = std::move(lend_factors);
             o.lending.default_factor = lend_default_factor;
             o.lending.memory.enabled = lend_memory;
             o.lending.memory.backend_cgroup = lend_memory_cgroup;
             o.lending.memory.reserve_bytes = lend_memory_reserve_bytes;
             return std::make_unique<PyServer>(std::move(o));
           }),
           py::arg("socket_path"), py::kw_only(), py::arg("dispatchers") = 1,
           py::arg("allowed_uids") = std::vector<uid_t>{}, py::arg("allowed_gids") = std::vector<gid_t>{},
           py::arg("default_client_pool_bytes") = 0, py::arg("default_server_pool_bytes") = 0,
           py::arg("max_pool_bytes") = 0, py::arg("max_sessions") = 0, py::arg("max_sessions_per_uid") = 0,
           py::arg("max_mapped_bytes") = 0, py::arg("huge_pages") = true, py::arg("handshake_timeout") = 2.0,
           py::arg("lend") = false, py::arg("lend_cgroup") = "", py::arg("lend_journal") = "",
           py::arg("lend_factors") = std::map<std::string, double>{}, py::arg("lend_default_factor") = 1.0,
           py::arg("lend_memory") = false, py::arg("lend_memory_cgroup") = "",
           py::arg("lend_memory_reserve_bytes") = uint64_t{64} << 20)
      .def("handle", &PyServer::handle, py::arg("op"), py::arg("handler"), py::kw_only(), py::arg("concurrent") = false,
           "Registers `handler` for `op` (before start). concurrent=True lets several dispatchers run one "
           "session's requests to this op at once.")
      .def("on_session_end", &PyServer::on_session_end, py::arg("hook"),
           "Calls hook(session_id) when a session ends, after its last request.")
      .def("add_builtin_ops", &PyServer::builtin_ops, "Offers echo, echo_copy, checksum and stats, as rocket serve.")
      .def("start", &PyServer::start)
      .def("run", &PyServer::run, "start(), then wait until stop() or Ctrl-C.")
      .def("stop", &PyServer::stop)
      .def("wait", &PyServer::wait)
      .def("stats", [](PyServer& s) { return server_stats(s.server().stats()); })
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyServer& s, const py::args&) { s.shut_down(); });

  m.def(
      "movers",
      [] {
        py::list out;
        for (const MoverInfo& info : probe_movers()) {
          py::dict d;
          d["name"] = std::string(mover_kind_name(info.kind));
          d["usable"] = info.usable;
          d["reason"] = info.reason;
          out.append(d);
        }
        return out;
      },
      "The data movers on this machine, as `rocket doctor` lists them: [{'name', 'usable', 'reason'}]; a "
      "usable name goes in a call's mover= keyword.");

  m.def(
      "checksum64",
      [](const py::object& data) {
        BytesView v(data, false);
        return checksum64(v.bytes());
      },
      py::arg("data"), "The runtime's 64-bit checksum (the builtin `checksum` op's answer).");

  // Dispatcher threads must not outlive the interpreter.
  py::module_::import("atexit").attr("register")(py::cpp_function(&stop_all_servers));
}
