"""A Python frontend: sends feature matrices to backend.py and checks the answers.

    PYTHONPATH=build/release/python python3 examples/python/frontend.py /tmp/features.sock

Shows the three ways to call: a numpy array copied in by a data mover, a
request built in the client pool (zero copy), and a pipeline of jobs.
"""

import sys

import numpy as np

import rocket

FEATURES = 32


def check(x, reply):
    got = np.frombuffer(reply, dtype=np.float32).reshape(x.shape)  # read in place, no copy
    want = (x - x.mean(axis=0)) / x.std(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/features.sock"
    rng = np.random.default_rng(1)
    with rocket.Client(path, tenant="frontend") as client:
        # 1. Copy path: any contiguous bytes-like object.
        x = rng.standard_normal((100_000, FEATURES), dtype=np.float32)  # 12.8 MB
        reply = client.call("standardise", x)
        check(x, reply)
        print(f"copy path: {x.nbytes / 1e6:.1f} MB standardised in {reply.service_time * 1e3:.1f} ms of handler time")

        # 2. Zero copy: build the request in the shared pool.
        buf = client.alloc(x.nbytes)
        np.frombuffer(buf, dtype=np.float32).reshape(x.shape)[:] = x
        check(x, client.call("standardise", buf))
        print("zero-copy path: ok")

        # 3. Pipelined: several jobs in flight, collected by id.
        batches = [rng.standard_normal((10_000, FEATURES), dtype=np.float32) for _ in range(8)]
        jobs = [client.submit("standardise", b) for b in batches]
        for b, job in zip(batches, jobs):
            check(b, client.query(job))
        print(f"pipelined: {len(jobs)} jobs ok")

        # Bad input gets a clear error, and the session goes on.
        try:
            client.call("standardise", b"\x00" * 7)
        except rocket.InvalidArgument as e:
            print(f"bad request refused: {e}")


if __name__ == "__main__":
    main()
