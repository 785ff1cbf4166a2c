"""A Python backend: standardises feature matrices that frontends send.

    PYTHONPATH=build/release/python python3 examples/python/backend.py /tmp/features.sock

The request is a float32 matrix (rows x 32 features, row-major); the answer is
the matrix standardised per feature, written straight into the server pool.
Runs until Ctrl-C or SIGTERM.
"""

import signal
import sys

import numpy as np

import rocket

FEATURES = 32


def standardise(request, response):
    if len(request) % (4 * FEATURES) != 0:
        raise rocket.InvalidArgument(f"expected rows of {FEATURES} float32 features, got {len(request)} bytes")
    x = np.frombuffer(request.data, dtype=np.float32).reshape(-1, FEATURES)
    out = np.frombuffer(response.alloc(x.nbytes), dtype=np.float32).reshape(x.shape)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    np.divide(x - mean, np.where(std > 0, std, 1), out=out)


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "/tmp/features.sock"
    server = rocket.Server(path, dispatchers=2)
    server.handle("standardise", standardise, concurrent=True)
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    print(f"serving on {path}", flush=True)
    try:
        server.run()  # until stop(): the SIGTERM handler runs while run() waits
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
