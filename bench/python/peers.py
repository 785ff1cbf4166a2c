"""Python IPC side by side: the rocket module against what Python programs use today.

    PYTHONPATH=build/release/python python3 bench/python/peers.py [--sizes 64,64K,1M,16M] [--budget 0.4] [--json]

An echo of a numpy array from a client process to a server process (both
Python) and back into the client's own numpy array, through:

  uds          a Unix stream socket, length-prefixed, sendall / recv_into
  pipe         multiprocessing.Connection (a socketpair): send_bytes / recv_bytes_into
  zmq          ZeroMQ REQ/REP on ipc:// (pyzmq), frames sent without copying
  grpc         gRPC unary call on a unix: address (grpcio), raw bytes, limits raised
  rocket       rocket.Client.call_into: copy-in by a mover, the Python handler
               answers in place (Response.reply_in_place), copy-out into the array
  rocket_view  rocket.Client.call: the reply read where it lies (numpy.frombuffer
               over the server pool), no copy-out

zmq and grpc are left out, saying so, where their Python packages are
missing (Debian: python3-zmq, python3-grpcio). Every transport's server runs
for the whole run; each point alternates the
transports, in rounds whose order is reversed every other round, and pools
the samples, so the machine's drift hits all alike. Reports p50 and p99 in
microseconds and, per size, each transport's p50 over Rocket's.
"""

import argparse
import json
import multiprocessing.connection as mpc
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

import rocket

try:
    import zmq
except ImportError:
    zmq = None
try:
    import grpc
except ImportError:
    grpc = None

TRANSPORTS = ("uds", "pipe", "zmq", "grpc", "rocket", "rocket_view")
GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def parse_size(text):
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper()
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def recv_exactly(sock, view):
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("peer closed")
        got += n


# --- servers (each in a process of its own) -----------------------------------

def serve_uds(path, max_bytes):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    conn, _ = listener.accept()
    for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        conn.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    buf = bytearray(max_bytes)
    view = memoryview(buf)
    header = bytearray(8)
    try:
        while True:
            recv_exactly(conn, memoryview(header))
            (n,) = struct.unpack("<Q", header)
            recv_exactly(conn, view[:n])
            conn.sendall(header)
            conn.sendall(view[:n])
    except ConnectionError:
        pass


def serve_pipe(path, max_bytes):
    with mpc.Listener(path, family="AF_UNIX") as listener:
        conn = listener.accept()
        buf = bytearray(max_bytes)
        try:
            while True:
                n = conn.recv_bytes_into(buf)
                conn.send_bytes(buf, 0, n)
        except EOFError:
            pass


def serve_zmq(path, max_bytes):
    del max_bytes
    sock = zmq.Context().socket(zmq.REP)
    sock.bind("ipc://" + path)
    while True:
        frame = sock.recv(copy=False)
        sock.send(frame, copy=False)


def serve_grpc(path, max_bytes):
    del max_bytes
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=GRPC_OPTIONS)
    echo = grpc.unary_unary_rpc_method_handler(lambda request, context: request)  # bytes in, bytes out
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("rocket.bench.Echo", {"Echo": echo}),))
    server.add_insecure_port("unix:" + path)
    server.start()
    server.wait_for_termination()


def serve_rocket(path, max_bytes):
    del max_bytes
    server = rocket.Server(path)
    server.handle("echo", lambda req, resp: resp.reply_in_place(0, len(req)))
    server.run()


SERVERS = {"uds": serve_uds, "pipe": serve_pipe, "zmq": serve_zmq, "grpc": serve_grpc, "rocket": serve_rocket}


# --- clients ------------------------------------------------------------------

class UdsClient:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.header = bytearray(8)

    def echo(self, src, dst):
        self.sock.sendall(struct.pack("<Q", src.nbytes))
        self.sock.sendall(src)
        recv_exactly(self.sock, memoryview(self.header))
        recv_exactly(self.sock, memoryview(dst).cast("B")[: src.nbytes])


class PipeClient:
    def __init__(self, path):
        self.conn = mpc.Client(path, family="AF_UNIX")

    def echo(self, src, dst):
        self.conn.send_bytes(src)
        self.conn.recv_bytes_into(dst)


class ZmqClient:
    def __init__(self, path):
        self.sock = zmq.Context().socket(zmq.REQ)
        self.sock.connect("ipc://" + path)

    def echo(self, src, dst):
        self.sock.send(src, copy=False)
        frame = self.sock.recv(copy=False)
        dst[: len(frame)] = np.frombuffer(frame.buffer, dtype=np.uint8)


class GrpcClient:
    def __init__(self, path):
        self.channel = grpc.insecure_channel("unix:" + path, options=GRPC_OPTIONS)
        self.echo_rpc = self.channel.unary_unary("/rocket.bench.Echo/Echo")

    def echo(self, src, dst):
        reply = self.echo_rpc(src.tobytes())  # gRPC takes bytes objects
        dst[: len(reply)] = np.frombuffer(reply, dtype=np.uint8)


class RocketClient:
    def __init__(self, path, max_bytes):
        pool = max(64 << 20, 2 * max_bytes)
        self.client = rocket.Client(path, client_pool_bytes=pool, server_pool_bytes=pool)

    def echo(self, src, dst):
        self.client.call_into("echo", src, dst)


class RocketViewClient(RocketClient):
    def echo(self, src, dst):
        reply = self.client.call("echo", src)
        view = np.frombuffer(reply, dtype=np.uint8)
        return view[-1]  # touch the reply where it lies


def wait_for(path, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"server for {path} did not start")
        time.sleep(0.01)


def percentile(sorted_values, q):
    i = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,64K,1M,16M")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds per transport, size and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", nargs=3, metavar=("KIND", "PATH", "MAX_BYTES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        kind, path, max_bytes = args.serve
        SERVERS[kind](path, int(max_bytes))
        return

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    max_bytes = max(sizes)
    missing = {"zmq": zmq is None, "grpc": grpc is None}
    transports = tuple(t for t in TRANSPORTS if not missing.get(t, False))
    for t, gone in missing.items():
        if gone:
            print(f"({t}: left out, its Python package is not installed)", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:
        procs = {}
        clients = {}
        try:
            for kind in SERVERS:
                if missing.get(kind, False):
                    continue
                path = os.path.join(d, kind + ".sock")
                procs[kind] = subprocess.Popen([sys.executable, __file__, "--serve", kind, path, str(max_bytes)])
                wait_for(path, procs[kind])
            clients["uds"] = UdsClient(os.path.join(d, "uds.sock"))
            clients["pipe"] = PipeClient(os.path.join(d, "pipe.sock"))
            if zmq is not None:
                clients["zmq"] = ZmqClient(os.path.join(d, "zmq.sock"))
            if grpc is not None:
                clients["grpc"] = GrpcClient(os.path.join(d, "grpc.sock"))
            clients["rocket"] = RocketClient(os.path.join(d, "rocket.sock"), max_bytes)
            clients["rocket_view"] = RocketViewClient(os.path.join(d, "rocket.sock"), max_bytes)

            results = []
            rng = np.random.default_rng(1)
            for size in sizes:
                src = rng.integers(0, 255, size, dtype=np.uint8)
                dst = np.zeros(size, dtype=np.uint8)
                samples = {t: [] for t in transports}
                for rnd in range(args.rounds):
                    order = transports if rnd % 2 == 0 else tuple(reversed(transports))
                    for t in order:
                        c = clients[t]
                        for _ in range(3):  # warm up
                            c.echo(src, dst)
                        end = time.perf_counter() + args.budget
                        while time.perf_counter() < end:
                            t0 = time.perf_counter_ns()
                            c.echo(src, dst)
                            samples[t].append((time.perf_counter_ns() - t0) / 1000)
                        if t != "rocket_view" and not np.array_equal(src, dst):
                            raise RuntimeError(f"{t}: the echo at {size} bytes differs")
                        dst[:] = 0
                p50_rocket = percentile(sorted(samples["rocket"]), 0.5)
                for t in transports:
                    s = sorted(samples[t])
                    p50 = percentile(s, 0.5)
                    results.append({"transport": t, "bytes": size, "samples": len(s), "p50_us": p50,
                                    "p99_us": percentile(s, 0.99), "p50_over_rocket": p50 / p50_rocket})
        finally:
            for c in clients.values():
                if isinstance(c, RocketClient):
                    c.client.close()
                elif isinstance(c, GrpcClient):
                    c.channel.close()
            for p in procs.values():
                p.terminate()
                p.wait()

    if args.json:
        print(json.dumps({"results": results}, indent=1))
        return
    print(f"{'transport':<12} {'size':>9} {'samples':>8} {'p50_us':>10} {'p99_us':>10} {'p50/rocket':>10}")
    for r in results:
        print(f"{r['transport']:<12} {r['bytes']:>9} {r['samples']:>8} {r['p50_us']:>10.1f} {r['p99_us']:>10.1f} "
              f"{r['p50_over_rocket']:>10.2f}")


if __name__ == "__main__":
    main()
