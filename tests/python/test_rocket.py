"""Tests of the `rocket` Python module: a Python client against the C++
server (`rocket serve`), a Python server against Python and C++ clients, and
the failure paths (bad arguments, handler errors, dying peers, Ctrl-C).

Run by ctest (PythonModule) with PYTHONPATH naming the built module and
ROCKET_CLI the `rocket` tool.
"""

import gc
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

import rocket

try:
    import numpy as np
except ImportError:  # the tests that need numpy skip, saying so
    np = None

ROCKET_CLI = os.environ.get("ROCKET_CLI", "")
MiB = 1 << 20


def wait_for(path, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {seconds} s")
        time.sleep(0.02)


def start_rocket_serve(sock, *extra):
    """`rocket serve` in a process of its own, with small pools."""
    proc = subprocess.Popen(
        [ROCKET_CLI, "serve", "--socket", sock, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(sock)
    except TimeoutError:
        proc.kill()
        raise
    return proc


def stop(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_python(code, **kwargs):
    """Runs `code` in a fresh interpreter that imports this build's module."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
        **kwargs,
    )


def finish(proc, seconds):
    """Waits for a run_python process; (returncode, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=seconds)
    finally:
        proc.kill()
    return proc.returncode, out, err


def payload(n, seed=1):
    """n bytes that differ from position to position and from seed to seed."""
    return bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


@unittest.skipUnless(ROCKET_CLI, "ROCKET_CLI (the rocket tool) is not set")
class ClientAgainstRocketServe(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        cls.sock = os.path.join(cls.dir.name, "serve.sock")
        cls.server = start_rocket_serve(cls.sock, "--dispatchers", "2")

    @classmethod
    def tearDownClass(cls):
        stop(cls.server)
        cls.dir.cleanup()

    def setUp(self):
        self.client = rocket.Client(
            self.sock, tenant="pytest", client_pool_bytes=64 * MiB, server_pool_bytes=64 * MiB
        )

    def tearDown(self):
        self.client.close()

    def test_echo_returns_the_request(self):
        data = payload(1000)
        reply = self.client.call("echo", data)
        self.assertIsInstance(reply, rocket.Reply)
        self.assertEqual(len(reply), 1000)
        self.assertEqual(bytes(reply), data)
        self.assertEqual(bytes(self.client.call("echo_copy", data)), data)
        self.assertEqual(bytes(self.client.call("echo", b"")), b"")
        self.assertIn("checksum", self.client.ops)
        self.assertGreater(self.client.session_id, 0)
        self.assertRegex(repr(reply), r"^<rocket.Reply of 1000 bytes, handler \d+ us>$")
        self.assertEqual(repr(self.client), f"<rocket.Client session {self.client.session_id}>")

    def test_movers_are_listed_and_named_in_calls(self):
        movers = {m["name"]: m for m in rocket.movers()}
        self.assertTrue(movers["cpu"]["usable"])
        self.assertIn("dsa", movers)
        for name, m in movers.items():
            self.assertTrue(m["reason"], name)
            if m["usable"] and name not in ("kernel", "cuda", "dsa"):
                self.assertEqual(bytes(self.client.call("echo_copy", b"moved", mover=name)), b"moved")

    def test_every_mover_carries_16_mib_intact(self):
        data = payload(16 * MiB, seed=3)
        want = rocket.checksum64(data)
        for mover in ("auto", "cpu", "cpu_stream", "threads"):
            for cache in ("auto", "inject", "bypass"):
                with self.subTest(mover=mover, cache=cache):
                    reply = self.client.call("checksum", data, mover=mover, cache=cache)
                    self.assertEqual(int.from_bytes(bytes(reply), "little"), want)
        dst = bytearray(16 * MiB)
        self.client.call("echo_copy", data).copy_into(dst, mover="threads")
        self.assertEqual(dst, data)

    @unittest.skipIf(np is None, "python3-numpy is not installed")
    def test_numpy_reads_a_reply_in_place(self):
        a = np.arange(250_000, dtype=np.float32)
        reply = self.client.call("echo_copy", a)
        view = np.frombuffer(reply, dtype=np.float32)
        np.testing.assert_array_equal(view, a)
        self.assertFalse(view.flags.writeable, "a reply views the server pool read-only")
        with self.assertRaises(ValueError):
            view[0] = 1
        # The reply outlives the Python name as long as a view holds it.
        del reply
        gc.collect()
        self.assertEqual(float(view[-1]), 249_999.0)

    @unittest.skipIf(np is None, "python3-numpy is not installed")
    def test_a_buffer_is_a_zero_copy_request(self):
        buf = self.client.alloc(4 * MiB)
        self.assertEqual(len(buf), 4 * MiB)
        self.assertGreaterEqual(self.client.stats()["client_pool_in_use"], 4 * MiB)
        arr = np.frombuffer(buf, dtype=np.int32)
        arr[:] = np.arange(MiB, dtype=np.int32)
        reply = self.client.call("checksum", buf)
        self.assertEqual(int.from_bytes(bytes(reply), "little"), rocket.checksum64(arr))
        reply = self.client.call("echo", buf)  # in place: views the request's own block
        np.testing.assert_array_equal(np.frombuffer(reply, np.int32), arr)
        del buf, arr, reply
        gc.collect()
        self.client.call("echo", b"x")  # frees travel with the next request
        self.assertEqual(self.client.stats()["client_pool_in_use"], 0)

    def test_async_submit_and_query(self):
        data = payload(3 * MiB, seed=5)
        fut = self.client.call_async("echo_copy", data)
        self.assertGreater(fut.job_id, 0)
        reply = fut.result(timeout=30)
        self.assertTrue(fut.done())
        self.assertIs(fut.result(), reply, "result() answers the same reply again")
        self.assertEqual(bytes(reply), data)

        # Threads waiting on one future all get its one reply.
        fut = self.client.call_async("echo_copy", data)
        got = []
        waiters = [threading.Thread(target=lambda: got.append(fut.result(timeout=30))) for _ in range(4)]
        for w in waiters:
            w.start()
        for w in waiters:
            w.join()
        self.assertEqual(len(got), 4)
        self.assertTrue(all(r is got[0] for r in got))
        self.assertEqual(bytes(got[0]), data)

        jobs = [self.client.submit("echo", payload(1000, seed=s)) for s in range(20)]
        for s, job in enumerate(jobs):
            self.assertEqual(bytes(self.client.query(job)), payload(1000, seed=s))
        with self.assertRaises(rocket.NotFound):
            self.client.query(jobs[0])

        batch = [payload(100 + s, seed=s) for s in range(10)]
        jobs = self.client.submit_batch("echo_copy", batch)
        self.assertEqual(len(jobs), 10)
        self.assertEqual([bytes(self.client.query(j)) for j in jobs], batch)
        with self.assertRaises(TypeError):
            self.client.submit_batch("echo", [b"ok", "not bytes"])
        self.assertEqual(self.client.stats()["inflight"], 0, "a refused batch posts nothing")

    def test_call_into_a_buffer_of_ours(self):
        out = bytearray(100)
        self.assertEqual(self.client.call_into("echo", b"abc", out), 3)
        self.assertEqual(bytes(out[:3]), b"abc")
        with self.assertRaises(rocket.OutOfRange):
            self.client.call_into("echo", payload(200), out)
        with self.assertRaises(BufferError):
            self.client.call_into("echo", b"abc", b"read-only bytes")

    def test_bad_arguments_get_clear_errors(self):
        with self.assertRaises(rocket.NotFound) as e:
            self.client.call("no_such_op", b"")
        self.assertIn("no_such_op", str(e.exception))
        self.assertIsInstance(e.exception, LookupError)
        self.assertEqual(e.exception.code_name, "NOT_FOUND")
        with self.assertRaises(TypeError):
            self.client.call("echo", "a str is not bytes")
        with self.assertRaises(rocket.InvalidArgument) as e:
            self.client.call("echo", b"", mover="warp_drive")
        self.assertIsInstance(e.exception, ValueError)
        with self.assertRaises(ValueError):
            self.client.call("echo", b"", timeout=0)
        capped = rocket.Client(self.sock, client_pool_bytes=4 * MiB, max_client_pool_bytes=64 * MiB)
        with self.assertRaises(rocket.InvalidArgument) as e:
            capped.call("echo", bytes(65 * MiB))  # larger than the pool's most
        self.assertIn("max_client_pool_bytes", str(e.exception))
        capped.close()
        with self.assertRaises(rocket.Unavailable):
            rocket.Client(os.path.join(self.dir.name, "nobody-listens.sock"))
        if np is not None:
            with self.assertRaisesRegex((BufferError, ValueError), "contiguous"):
                self.client.call("echo", np.arange(100)[::2])

    def test_pools_grow_for_a_payload_larger_than_they_start(self):
        small = rocket.Client(self.sock, client_pool_bytes=1 * MiB, server_pool_bytes=1 * MiB)
        data = payload(40 * MiB)
        reply = small.call("echo_copy", data)  # a request and a response of 40 MiB
        self.assertEqual(bytes(reply), data)
        del reply
        stats = small.stats()
        self.assertGreaterEqual(stats["client_pool_bytes"], 40 * MiB)
        self.assertEqual(stats["client_pool_grows"], 1)
        small.close()

    def test_threads_share_one_client(self):
        errors = []

        def worker(seed):
            try:
                for i in range(40):
                    data = payload(4096 + i, seed=seed)
                    if bytes(self.client.call("echo_copy", data)) != data:
                        errors.append(f"thread {seed}: reply {i} differs")
            except Exception as e:  # noqa: BLE001 -- reported below
                errors.append(f"thread {seed}: {e!r}")

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        self.assertGreaterEqual(self.client.stats()["requests"], 160)


@unittest.skipUnless(ROCKET_CLI, "ROCKET_CLI (the rocket tool) is not set")
class ClientWhenTheServerDies(unittest.TestCase):
    def test_a_dead_server_is_unavailable_not_a_hang(self):
        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "s.sock")
            server = start_rocket_serve(sock)
            try:
                client = rocket.Client(sock, client_pool_bytes=8 * MiB, server_pool_bytes=8 * MiB)
                self.assertEqual(bytes(client.call("echo", b"hi")), b"hi")
                server.kill()
                server.wait()
                with self.assertRaises(rocket.Unavailable):
                    client.call("echo", b"hi", timeout=20)
            finally:
                stop(server)


class PythonServer(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.sock = os.path.join(self.dir.name, "py.sock")
        self.server = rocket.Server(self.sock, dispatchers=2, default_client_pool_bytes=16 * MiB,
                                    default_server_pool_bytes=16 * MiB)

    def tearDown(self):
        self.server.stop()
        self.server.wait()
        self.dir.cleanup()

    def connect(self):
        return rocket.Client(self.sock, tenant="py")

    def test_handlers_answer_three_ways(self):
        self.server.handle("upper", lambda req: bytes(req.data).upper())

        def reverse(req, resp):
            out = resp.alloc(len(req))
            out[:] = bytes(req.data)[::-1]

        self.server.handle("reverse", reverse)
        self.server.handle("tail", lambda req, resp: resp.reply_in_place(1, len(req) - 1))
        self.server.handle("nothing", lambda req: None)
        seen = {}

        def who(req):
            seen.update(op=req.op, tenant=req.tenant, uid=req.uid, pid=req.pid, session=req.session_id)
            return b"ok"

        self.server.handle("who", who)
        self.server.start()
        with self.connect() as c:
            self.assertEqual(bytes(c.call("upper", b"abc")), b"ABC")
            self.assertEqual(bytes(c.call("reverse", b"abcdef")), b"fedcba")
            self.assertEqual(bytes(c.call("tail", b"abcdef")), b"bcdef")
            self.assertEqual(bytes(c.call("nothing", b"abc")), b"")
            self.assertEqual(bytes(c.call("who", b"")), b"ok")
            self.assertEqual(seen, dict(op="who", tenant="py", uid=os.getuid(), pid=os.getpid(),
                                        session=c.session_id))
        stats = self.server.stats()
        self.assertEqual(stats["requests"], 5)
        self.assertEqual(stats["request_errors"], 0)

    @unittest.skipIf(np is None, "python3-numpy is not installed")
    def test_numpy_handler_in_and_out_of_the_pools(self):
        def scale(req, resp):
            x = np.frombuffer(req.data, dtype=np.float32)
            out = np.frombuffer(resp.alloc(x.nbytes), dtype=np.float32)
            np.multiply(x, 2.0, out=out)

        self.server.handle("scale", scale, concurrent=True)
        self.server.start()
        with self.connect() as c:
            a = np.random.default_rng(7).standard_normal(1_000_000).astype(np.float32)
            np.testing.assert_array_equal(np.frombuffer(c.call("scale", a), np.float32), a * 2)
            jobs = [c.submit("scale", a[i::4].copy()) for i in range(4)]
            for i, job in enumerate(jobs):
                np.testing.assert_array_equal(np.frombuffer(c.query(job), np.float32), a[i::4] * 2)

    def test_handler_errors_reach_the_caller(self):
        def bad(req):
            raise rocket.InvalidArgument("shape must be 3x224x224")

        def denied(req):
            raise rocket.PermissionDenied("not for tenant " + req.tenant)

        def boom(req):
            return 1 // 0

        self.server.handle("bad", bad)
        self.server.handle("denied", denied)
        self.server.handle("boom", boom)
        self.server.handle("not_bytes", lambda req: 42)

        class OddCode(rocket.Error):
            code = "not a number"

        class Unprintable(Exception):
            def __str__(self):
                raise RuntimeError("no words")

        def odd(req):
            raise OddCode("odd")

        def unprintable(req):
            raise Unprintable()

        self.server.handle("odd", odd)
        self.server.handle("unprintable", unprintable)
        self.server.start()
        with self.connect() as c:
            with self.assertRaisesRegex(rocket.InvalidArgument, "shape must be 3x224x224"):
                c.call("bad", b"")
            with self.assertRaisesRegex(rocket.PermissionDenied, "not for tenant py"):
                c.call("denied", b"")
            with self.assertRaisesRegex(rocket.Internal, "ZeroDivisionError"):
                c.call("boom", b"")
            with self.assertRaisesRegex(rocket.Internal, "TypeError"):
                c.call("not_bytes", b"")
            with self.assertRaisesRegex(rocket.Internal, "^odd$"):
                c.call("odd", b"")
            with self.assertRaisesRegex(rocket.Internal, "Unprintable: .*str.. raised"):
                c.call("unprintable", b"")
            # The session goes on.
            with self.assertRaises(rocket.NotFound):
                c.call("missing", b"")
        self.assertEqual(self.server.stats()["request_errors"], 6)

    def test_views_end_with_the_handler(self):
        kept = []
        self.server.handle("keep_request", lambda req: kept.append(req))
        self.server.handle("keep_view", lambda req: kept.append(req.data[1:]))
        self.server.handle("keep_memoryview", lambda req: kept.append(req.data))

        def keep_output(req, resp):
            kept.append(resp.alloc(8)[2:])

        def both(req, resp):
            resp.write(b"one")
            return b"two"

        def realloc_held(req, resp):
            first = resp.alloc(8)
            part = first[:4]  # noqa: F841 -- holds the first block
            resp.alloc(16)

        def realloc(req, resp):
            first = resp.alloc(8)
            second = resp.alloc(3)
            try:
                first[0] = 1
            except ValueError:  # released with its block
                second[:] = b"new"

        self.server.handle("keep_output", keep_output)
        self.server.handle("both", both)
        self.server.handle("realloc_held", realloc_held)
        self.server.handle("realloc", realloc)
        self.server.start()
        with self.connect() as c:
            self.assertEqual(bytes(c.call("keep_request", b"abc")), b"")
            with self.assertRaises(rocket.FailedPrecondition):
                kept[0].data  # noqa: B018 -- the access is the test
            with self.assertRaisesRegex(rocket.Internal, "kept a view"):
                c.call("keep_view", b"abc")
            # A plain memoryview kept is released: it raises, it does not dangle.
            self.assertEqual(bytes(c.call("keep_memoryview", b"abc")), b"")
            with self.assertRaises(ValueError):
                bytes(kept[2])
            with self.assertRaisesRegex(rocket.Internal, "kept a view"):
                c.call("keep_output", b"")
            with self.assertRaisesRegex(rocket.Internal, "one or the other"):
                c.call("both", b"")
            with self.assertRaisesRegex(rocket.FailedPrecondition, "earlier alloc"):
                c.call("realloc_held", b"")
            self.assertEqual(bytes(c.call("realloc", b"")), b"new")

    def test_a_dispatcher_keeps_its_python_thread_state(self):
        # threading.local lives in the thread's Python state: what a handler
        # keeps per thread (a model instance, a scratch buffer) must survive
        # from one request to the next.
        local = threading.local()

        def count(req):
            local.n = getattr(local, "n", 0) + 1
            return str(local.n).encode()

        server = rocket.Server(os.path.join(self.dir.name, "one.sock"), dispatchers=1)
        server.handle("count", count)
        with server:
            server.start()
            with rocket.Client(os.path.join(self.dir.name, "one.sock")) as c:
                self.assertEqual([bytes(c.call("count")) for _ in range(3)], [b"1", b"2", b"3"])

    def test_a_handler_may_stop_the_server_but_not_wait_for_it(self):
        def wait(req):
            self.server.wait()

        def stop(req):
            self.server.stop()
            return b"stopping"

        self.server.handle("wait", wait)
        self.server.handle("stop", stop)
        self.server.start()
        with self.connect() as c:
            with self.assertRaisesRegex(rocket.FailedPrecondition, "wait for itself"):
                c.call("wait", b"", timeout=30)
            self.assertEqual(bytes(c.call("stop", b"", timeout=30)), b"stopping")
        self.server.wait()  # returns: the server stopped

    def test_registration_is_checked(self):
        with self.assertRaises(rocket.InvalidArgument):
            self.server.handle("x", "not callable")
        self.server.handle("x", lambda req: b"")
        with self.assertRaises(rocket.InvalidArgument):
            self.server.handle("x", lambda req: b"")  # twice
        self.server.start()
        with self.assertRaises(rocket.FailedPrecondition):
            self.server.handle("y", lambda req: b"")

    def test_session_end_hook_runs(self):
        ended = []
        self.server.on_session_end(ended.append)
        self.server.add_builtin_ops()
        self.server.start()
        c = self.connect()
        sid = c.session_id
        self.assertEqual(bytes(c.call("echo", b"x")), b"x")
        c.close()
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertEqual(ended, [sid])

    @unittest.skipUnless(ROCKET_CLI, "ROCKET_CLI (the rocket tool) is not set")
    def test_the_cpp_client_calls_a_python_handler(self):
        self.server.handle("shout", lambda req: bytes(req.data).upper() + b"!")
        self.server.start()
        out = subprocess.run([ROCKET_CLI, "call", "--socket", self.sock, "--op", "shout", "--data", "hello"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("HELLO!", out.stdout)

    def test_a_client_killed_mid_call_leaves_the_server_serving(self):
        started = threading.Event()

        def slow(req):
            started.set()
            time.sleep(0.5)
            return b"late"

        self.server.handle("slow", slow)
        self.server.add_builtin_ops()
        self.server.start()
        victim = run_python(f"""
            import rocket
            c = rocket.Client({self.sock!r})
            c.call("slow", b"x")
        """)
        self.assertTrue(started.wait(30), "the victim's call did not arrive")
        victim.kill()
        victim.wait()
        deadline = time.monotonic() + 10
        while self.server.stats()["sessions_open"] != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual(self.server.stats()["sessions_open"], 0)
        with self.connect() as c:
            self.assertEqual(bytes(c.call("echo", b"still here")), b"still here")


def cgroup_v1_root(controller):
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[2] == "cgroup" and controller in fields[3].split(","):
                return fields[1]
    return None


class Lending(unittest.TestCase):
    """Pocket from Python: a caller in a capped cgroup lends the Python
    backend CPU for its request (scratch cgroup v1 groups; needs root)."""

    def setUp(self):
        root = cgroup_v1_root("cpu")
        if os.getuid() != 0 or root is None:
            self.skipTest("needs root and a cgroup v1 cpu hierarchy")
        self.top = os.path.join(root, f"rocket-py-test-{os.getpid()}")
        self.backend = os.path.join(self.top, "backend")
        self.frontend = os.path.join(self.top, "fe")
        try:
            os.makedirs(self.backend)
            os.makedirs(self.frontend)
        except OSError as e:
            self.skipTest(f"cannot make cgroups here: {e}")
        self.write(self.backend, "cpu.cfs_quota_us", 50000)   # half a CPU
        self.write(self.frontend, "cpu.cfs_quota_us", 100000)  # one CPU
        self.dir = tempfile.TemporaryDirectory()

    def tearDown(self):
        for d in (self.backend, self.frontend, self.top):
            for _ in range(100):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.dir.cleanup()

    @staticmethod
    def write(group, name, value):
        with open(os.path.join(group, name), "w") as f:
            f.write(str(value))

    @staticmethod
    def read(group, name):
        with open(os.path.join(group, name)) as f:
            return int(f.read())

    def test_a_call_lends_the_python_backend_cpu(self):
        sock = os.path.join(self.dir.name, "lend.sock")
        seen = {}

        def work(req):
            seen["lent"] = req.lent_millicpus
            seen["quota"] = self.read(self.backend, "cpu.cfs_quota_us")
            return b"done"

        server = rocket.Server(sock, lend=True, lend_cgroup=self.backend)
        server.handle("work", work)
        with server:
            server.start()
            caller = run_python(f"""
                import os, rocket
                with open({os.path.join(self.frontend, "cgroup.procs")!r}, "w") as f:
                    f.write(str(os.getpid()))
                with rocket.Client({sock!r}) as c:
                    r = c.call("work", b"", lend_millicpus=500)
                    print(bytes(r).decode(), r.lent_millicpus)
            """)
            code, out, err = finish(caller, 60)
            self.assertEqual(code, 0, err)
            self.assertEqual(out.split(), ["done", "500"])
            self.assertEqual(seen, {"lent": 500, "quota": 100000}, "the backend ran with its quota raised")
            self.assertEqual(self.read(self.backend, "cpu.cfs_quota_us"), 50000, "the backend's quota is back")
            self.assertEqual(self.read(self.frontend, "cpu.cfs_quota_us"), 100000, "the caller's quota is back")
            self.assertEqual(server.stats()["lends"], 1)

    def test_lending_options_are_checked(self):
        with self.assertRaisesRegex(ValueError, "lend_memory=True goes with lend=True"):
            rocket.Server(os.path.join(self.dir.name, "x.sock"), lend_memory=True)
        server = rocket.Server(os.path.join(self.dir.name, "y.sock"), lend=True,
                               lend_cgroup=os.path.join(self.top, "no-such-group"))
        with self.assertRaisesRegex(rocket.FailedPrecondition, "not a cgroup with a cpu controller"):
            server.start()


class ServerProcess(unittest.TestCase):
    def test_ctrl_c_stops_run(self):
        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "s.sock")
            proc = run_python(f"""
                import rocket
                srv = rocket.Server({sock!r})
                srv.add_builtin_ops()
                srv.run()
            """)
            try:
                wait_for(sock)
                with rocket.Client(sock) as c:
                    self.assertEqual(bytes(c.call("echo", b"up")), b"up")
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=30)
            finally:
                proc.kill()
            self.assertNotEqual(proc.returncode, 0)
            self.assertIn("KeyboardInterrupt", err)

    def test_a_forked_child_leaves_the_parents_session_and_server_alone(self):
        # multiprocessing forks by default here: a child inherits the parent's
        # client and server objects, but not their sessions or threads.
        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "s.sock")
            proc = run_python(f"""
                import os, sys
                import rocket
                big = bytes(range(256)) * 16384  # 4 MiB
                srv = rocket.Server({sock!r}, dispatchers=2)
                srv.add_builtin_ops()
                srv.start()
                c = rocket.Client({sock!r})
                assert bytes(c.call_async("echo_copy", big, mover="threads").result()) == big
                kept = c.call("echo_copy", b"kept by the parent")
                pid = os.fork()
                if pid == 0:
                    try:
                        c.call("echo", b"x")
                        sys.exit("the parent's session answered in the child")
                    except rocket.FailedPrecondition as e:
                        assert "forked" in str(e), e
                    try:
                        srv.stop()
                        sys.exit("the parent's server stopped in the child")
                    except rocket.FailedPrecondition:
                        pass
                    del kept
                    c.close()
                    own = rocket.Client({sock!r})
                    assert bytes(own.call_async("echo_copy", big, mover="threads").result(timeout=20)) == big
                    print("child ok", flush=True)
                    sys.exit(0)  # through atexit: the parent's server is not joined here
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, status
                assert bytes(c.call("echo_copy", big)) == big
                assert bytes(kept) == b"kept by the parent"
                assert srv.stats()["protocol_errors"] == 0
                print("parent ok", flush=True)
            """)
            code, out, err = finish(proc, 120)
            self.assertEqual(code, 0, err)
            self.assertIn("child ok", out)
            self.assertIn("parent ok", out)

    def test_exiting_without_stop_is_clean(self):
        # The script ends while a client in another process keeps its
        # handlers busy: the server must stop before the interpreter goes.
        with tempfile.TemporaryDirectory() as d:
            sock = os.path.join(d, "s.sock")
            caller = textwrap.dedent(f"""
                import rocket
                c = rocket.Client({sock!r})
                while True:
                    c.submit("slow", b"x")
                    c.call("slow", b"x")
            """)
            proc = run_python(f"""
                import subprocess, sys, time
                import rocket
                def slow(req):
                    time.sleep(0.05)
                    return b"hi"
                srv = rocket.Server({sock!r}, dispatchers=2)
                srv.handle("slow", slow, concurrent=True)
                srv.start()
                caller = subprocess.Popen([sys.executable, "-c", {caller!r}], stderr=subprocess.DEVNULL)
                c = rocket.Client({sock!r})
                assert bytes(c.call("slow")) == b"hi"
                while srv.stats()["sessions_open"] < 2:
                    time.sleep(0.01)
                time.sleep(0.3)
                print("served", flush=True)
            """)
            code, out, err = finish(proc, 60)
            self.assertEqual(code, 0, err)
            self.assertIn("served", out)


def pybind_parameters(func):
    """Parameter names of a pybind11 function from the signature line of its
    docstring: ['self', 'op', '*', 'mover', ...] ('*' where keywords only
    begin, '*args' for a catch-all)."""
    line = (func.__doc__ or "").split("\n")[0]
    inner = line[line.index("(") + 1 : line.rindex(")")]
    names, depth, quote, token = [], 0, None, ""
    for ch in inner + ",":
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            token = token.strip()
            if token:
                names.append(token.split(":")[0].split("=")[0].strip())
            token = ""
            continue
        token += ch
    return names


def stub_parameters(node):
    """The same list from a stub's function definition."""
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    elif a.kwonlyargs:
        names.append("*")
    names += [x.arg for x in a.kwonlyargs]
    return names


class Stubs(unittest.TestCase):
    """python/rocket.pyi describes the module as built: every public name,
    every class's bases, methods and properties, and every parameter."""

    @classmethod
    def setUpClass(cls):
        import ast

        path = os.path.join(os.path.dirname(rocket.__file__), "rocket.pyi")
        with open(path) as f:
            cls.tree = ast.parse(f.read())
        cls.classes = {n.name: n for n in cls.tree.body if isinstance(n, ast.ClassDef)}
        cls.functions = {n.name: n for n in cls.tree.body if isinstance(n, ast.FunctionDef)}

    def test_every_public_name_is_described_and_exists(self):
        public = {n for n in dir(rocket) if not n.startswith("_")}
        described = set(self.classes) | set(self.functions)
        self.assertEqual(public, described)

    def test_bases_match(self):
        import ast

        for name, node in self.classes.items():
            want = [b.id for b in node.bases if isinstance(b, ast.Name)]
            got = [b.__name__ for b in getattr(rocket, name).__bases__ if b.__name__ != "pybind11_object"]
            self.assertEqual(got, want, name)

    def test_methods_properties_and_parameters_match(self):
        import ast

        for name, node in self.classes.items():
            cls = getattr(rocket, name)
            if issubclass(cls, Exception):
                continue
            runtime = {m for m in vars(cls) if not m.startswith("_") or m in ("__init__", "__len__", "__enter__", "__exit__")}
            if name in ("Buffer", "Reply", "Future", "Request", "Response"):
                runtime.discard("__init__")  # made by the module only: pybind11's refusing constructor
            stubbed = {f.name for f in node.body if isinstance(f, ast.FunctionDef) and f.name != "__buffer__"}
            self.assertEqual(runtime, stubbed, name)
            for f in node.body:
                if not isinstance(f, ast.FunctionDef) or f.name == "__buffer__":
                    continue
                attr = vars(cls)[f.name]
                is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in f.decorator_list)
                self.assertEqual(isinstance(attr, property), is_property, f"{name}.{f.name}")
                if not is_property:
                    self.assertEqual(pybind_parameters(attr), stub_parameters(f), f"{name}.{f.name}")
        for name, f in self.functions.items():
            self.assertEqual(pybind_parameters(getattr(rocket, name)), stub_parameters(f), name)

    def test_pool_buffers_export_the_buffer_protocol(self):
        for name in ("Buffer", "Reply"):
            self.assertIn("__buffer__", [getattr(f, "name", None) for f in self.classes[name].body])


if __name__ == "__main__":
    unittest.main()
