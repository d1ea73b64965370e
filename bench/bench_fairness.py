"""A well-behaved robot's round trip to dit4dit-serve alone and beside a client that floods the server.

The server runs a stand-in policy that sleeps `--infer-ms` per call (a model on a GPU) in its own
subprocess; the flooder is another subprocess that sends valid `infer` requests as fast as it can and
never reads a reply. The robot sends `--n` sequential requests and retries at once on `busy`; the table
gives its time to a chunk (retries included), p50 / p99 in ms, and how many `busy` replies it got.
Each server setting is measured alone and beside the flooder, in one run:
`--max-queue-per-client 4` (the default) and 64, which is what a single shared queue of 64 does. Run:

    python bench/bench_fairness.py [--n 200] [--infer-ms 5]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

CHUNK, JOINTS = 16, 29


class SleepingPolicy:
    """Zeros after `delay_s`: the server's own costs plus a model's latency, nothing else."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        names = [f"joint_{i}" for i in range(JOINTS)]
        self.metadata = {"model": "sleep", "version": "0", "preset": "none",
                         "cameras": {"head": {"height": 96, "width": 128}}, "context_frames": 1,
                         "state_names": names, "action_names": names, "action_space": "joint_position",
                         "chunk_length": CHUNK, "control_rate_hz": 30.0, "normalization": {}, "instructions": None,
                         "training": {}}

    def infer(self, obs: dict, noise: Any = None, prefix: Any = None) -> np.ndarray:
        time.sleep(self.delay_s)
        return np.zeros((CHUNK, JOINTS), np.float32)


def observation() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {"images": {"head": rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)},
            "state": np.zeros(JOINTS, np.float32), "instruction": "pick up the red block"}


def serve(port: int, infer_ms: float, per_client: int) -> None:
    from dit4dit.runtime.server import PolicyServer

    server = PolicyServer(SleepingPolicy(infer_ms / 1e3), f"tcp://127.0.0.1:{port}", backend="sleep",
                          max_queue=64, max_queue_per_client=per_client)
    thread = server.start()
    print("ready", flush=True)
    thread.join()


def flood(port: int) -> None:
    import zmq

    from dit4dit.runtime import protocol

    payload = protocol.pack_request(1, "infer", {"observation": protocol.encode_observation(observation())})
    sock = zmq.Context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    while True:  # never reads a reply
        sock.send(payload)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)


def robot(port: int, n: int) -> tuple[np.ndarray, int]:
    """(seconds to each of n chunks, retries on busy included; busy replies)."""
    from dit4dit.runtime.client import PolicyClient, ServerError

    obs, busy, times = observation(), 0, []
    with PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=30.0) as client:
        for _ in range(n + 1):  # the first one is a warm-up
            t0 = time.perf_counter()
            while True:
                try:
                    client.infer(obs)
                    break
                except ServerError as exc:
                    if exc.code != "busy":
                        raise
                    busy += 1
            times.append(time.perf_counter() - t0)
    return np.array(times[1:]), busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="robot requests per row")
    p.add_argument("--infer-ms", type=float, default=5.0, help="the stand-in model's latency per call")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flood", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--per-client", type=int, default=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args.port, args.infer_ms, args.per_client)
    if args.flood:
        return flood(args.port)

    rows = []
    for per_client in (4, 64):
        port = free_port()
        server = spawn("--serve", "--port", str(port), "--infer-ms", str(args.infer_ms), "--per-client", str(per_client))
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready", "server did not start"
            rows.append((per_client, "alone", *robot(port, args.n)))
            flooder = spawn("--flood", "--port", str(port))
            try:
                time.sleep(0.5)  # let the flood fill the queue
                rows.append((per_client, "beside a flooder", *robot(port, args.n)))
            finally:
                flooder.kill()
                flooder.wait(10)
        finally:
            server.kill()
            server.wait(10)
    print(f"\nrobot's time to a chunk (retries on busy included), {args.n} sequential requests, stand-in model "
          f"{args.infer_ms:g} ms per call, localhost; max_queue 64\n")
    print(f"| {'max_queue_per_client':>20} | {'robot':<16} | {'p50 ms':>7} | {'p99 ms':>7} | {'busy replies':>12} |")
    print(f"|{'-' * 22}|{'-' * 18}|{'-' * 9}|{'-' * 9}|{'-' * 14}|")
    for per_client, who, times, busy in rows:
        ms = times * 1e3
        print(f"| {per_client:>20} | {who:<16} | {np.percentile(ms, 50):7.2f} | {np.percentile(ms, 99):7.2f} | {busy:>12} |")


if __name__ == "__main__":
    main()
