"""Transport overhead of dit4dit-serve's protocol against an openpi-style websocket + msgpack server.

Both servers run a no-op policy (zeros, 16 x 29) in their own subprocess, on localhost, and get the same
realistic observation: one 224x224 RGB image, one 480x640 RGB image, a 29-joint state and an instruction.
Each client measures the round trip of `--n` sequential requests after a warm-up, in interleaved blocks
of 25 so that load changes on the machine hit every transport alike; the table gives p50 / p99 / mean in ms. Run:

    python bench/bench_transport.py [--n 500]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from typing import Any

import msgpack
import numpy as np

CHUNK, JOINTS = 16, 29


def noop_metadata() -> dict[str, Any]:
    names = [f"joint_{i}" for i in range(JOINTS)]
    return {"model": "noop", "version": "0", "preset": "none",
            "cameras": {"head": {"height": 224, "width": 224}, "chest": {"height": 480, "width": 640}},
            "context_frames": 1, "state_names": names, "action_names": names, "action_space": "joint_position",
            "chunk_length": CHUNK, "control_rate_hz": 30.0, "normalization": {}, "instructions": None, "training": {}}


class NoopPolicy:
    metadata = noop_metadata()

    def infer(self, obs: dict, noise: Any = None, prefix: Any = None) -> np.ndarray:
        return np.zeros((CHUNK, JOINTS), np.float32)


def observation(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {"images": {"head": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
                       "chest": rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)},
            "state": rng.standard_normal(JOINTS).astype(np.float32), "instruction": "pick up the red block"}


# ------------------------------------------------------------- openpi-style websocket + msgpack baseline
# The same design as openpi's WebsocketPolicyServer / msgpack_numpy (written here from its description):
# ndarrays as {__ndarray__, data, dtype, shape}, one msgpack message per observation, metadata sent on connect.


def _np_pack(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    return obj


def _np_unpack(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    return obj


def ws_pack(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_np_pack, use_bin_type=True)


def ws_unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_np_unpack, raw=False, strict_map_key=False)


def serve_websocket(port: int) -> None:
    import websockets.asyncio.server as wss

    policy = NoopPolicy()

    async def handler(ws: Any) -> None:
        await ws.send(ws_pack(policy.metadata))
        async for message in ws:
            t0 = time.perf_counter()
            obs = ws_unpack(message)
            actions = policy.infer(obs)
            await ws.send(ws_pack({"actions": actions, "server_timing": {"infer_ms": (time.perf_counter() - t0) * 1e3}}))

    async def run() -> None:
        async with wss.serve(handler, "127.0.0.1", port, compression=None, max_size=None):
            print("ready", flush=True)
            await asyncio.Future()

    asyncio.run(run())


def serve_zmq(port: int) -> None:
    from dit4dit.runtime.server import PolicyServer

    server = PolicyServer(NoopPolicy(), f"tcp://127.0.0.1:{port}", backend="noop")
    thread = server.start()
    print("ready", flush=True)
    thread.join()


# ------------------------------------------------------------------------------------------ clients


class ZmqRunner:
    def __init__(self, port: int, jpeg: int | None) -> None:
        from dit4dit.runtime.client import PolicyClient

        self.obs = observation()
        self.client = PolicyClient(f"tcp://127.0.0.1:{port}", timeout_s=5.0, jpeg_quality=jpeg)
        self.client.metadata()

    def once(self) -> float:
        t0 = time.perf_counter()
        result = self.client.infer(self.obs)
        dt = time.perf_counter() - t0
        assert result.actions.shape == (CHUNK, JOINTS)
        return dt

    def close(self) -> None:
        self.client.close()


class WsRunner:
    def __init__(self, port: int) -> None:
        from websockets.sync.client import connect

        self.obs = observation()
        self.ws = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None)
        ws_unpack(self.ws.recv())  # metadata, sent on connect

    def once(self) -> float:
        t0 = time.perf_counter()
        self.ws.send(ws_pack(self.obs))
        reply = ws_unpack(self.ws.recv())
        dt = time.perf_counter() - t0
        assert reply["actions"].shape == (CHUNK, JOINTS)
        return dt

    def close(self) -> None:
        self.ws.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, "--port", str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    return proc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--serve", choices=["zmq", "ws"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve == "zmq":
        return serve_zmq(args.port)
    if args.serve == "ws":
        return serve_websocket(args.port)

    obs = observation()
    raw_bytes = sum(im.nbytes for im in obs["images"].values()) + obs["state"].nbytes
    zmq_port, ws_port = free_port(), free_port()
    procs = [start("zmq", zmq_port), start("ws", ws_port)]
    runners: dict[str, Any] = {}
    try:
        runners = {
            "dit4dit ZeroMQ DEALER/ROUTER, raw uint8": ZmqRunner(zmq_port, None),
            "dit4dit ZeroMQ DEALER/ROUTER, JPEG q90": ZmqRunner(zmq_port, 90),
            "openpi-style websocket + msgpack, raw": WsRunner(ws_port),
        }
        for runner in runners.values():
            for _ in range(args.warmup):
                runner.once()
        # Interleaved blocks, so a change in machine load hits every transport alike.
        times: dict[str, list[float]] = {name: [] for name in runners}
        block = 25
        while min(len(t) for t in times.values()) < args.n:
            for name, runner in runners.items():
                times[name] += [runner.once() for _ in range(block)]
    finally:
        for runner in runners.values():
            runner.close()
        for proc in procs:
            proc.terminate()
            proc.wait(10)
    rows = []
    for name, t in times.items():
        ms = np.array(t[: args.n]) * 1e3
        rows.append((name, np.percentile(ms, 50), np.percentile(ms, 99), ms.mean()))
    print(f"\nround trip, no-op policy, localhost, {args.n} requests; observation = 224x224 + 480x640 RGB uint8 + 29 joints "
          f"({raw_bytes / 1e6:.2f} MB raw)\n")
    print(f"| {'transport':<42} | {'p50 ms':>7} | {'p99 ms':>7} | {'mean ms':>7} |")
    print(f"|{'-' * 44}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for name, p50, p99, mean in rows:
        print(f"| {name:<42} | {p50:7.3f} | {p99:7.3f} | {mean:7.3f} |")


if __name__ == "__main__":
    main()
