"""PolicyClient: the robot's side of dit4dit-serve. Torch-free (numpy, msgpack, pyzmq only).

A DEALER socket with request ids: every reply carries the id of its request, so a reply that comes
back after its request timed out is recognised and dropped instead of being taken for the answer to
the next request (the desynchronisation REQ sockets suffer). After a timeout the socket is closed
with LINGER=0 and rebuilt, so nothing stale survives and a restarted server is reached again.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from dit4dit.runtime import protocol


class ServerError(RuntimeError):
    """The server answered with an error. `field` names the offending request field ('' if none)."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"server error [{code}] {field + ': ' if field else ''}{message}")
        self.code = code
        self.field = field
        self.detail = message


class ServerTimeout(TimeoutError):
    """No reply within the timeout. The socket has been rebuilt; the next call may simply be retried."""


@dataclass
class InferResult:
    actions: np.ndarray  # (H, A) float32, physical units (rad)
    timing: dict[str, float] = field(default_factory=dict)  # server side, seconds: queue, preprocess, inference, total
    rtt_s: float = 0.0  # client-measured round trip


class PolicyClient:
    """Talk to a dit4dit-serve server.

    `token`: the server's shared token, if it runs with --token.
    `curve_server_key` / `curve_client_keys`: CurveZMQ encryption and authentication, if the server
    runs with --curve-keys; see `load_curve_client` for reading them from a key folder.
    """

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:5555",
        timeout_s: float = 1.0,
        token: str | None = None,
        curve_server_key: bytes | None = None,
        curve_client_keys: tuple[bytes, bytes] | None = None,
        jpeg_quality: int | None = None,
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < 3600):
            raise ValueError(f"timeout_s must be a positive number of seconds below 3600, got {timeout_s!r}")
        if (curve_server_key is None) != (curve_client_keys is None):
            raise ValueError("CurveZMQ needs both curve_server_key and curve_client_keys (public, secret)")
        if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.endpoint = endpoint
        self.timeout_s = float(timeout_s)
        self.token = token
        self.jpeg_quality = jpeg_quality
        self._curve_server_key = curve_server_key
        self._curve_client_keys = curve_client_keys
        self._ids = itertools.count(1)
        self._context = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._metadata: dict[str, Any] | None = None
        self.connect()

    # ---------------------------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """(Re)build the socket. ZeroMQ connects lazily; the first call shows whether a server is there."""
        self.close()
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        # Queue nothing for a peer that is not connected: a send fails fast (-> ServerTimeout) instead of
        # sitting in a buffer and being delivered, stale, to a server that comes up minutes later.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self._curve_server_key is not None:
            assert self._curve_client_keys is not None
            sock.curve_serverkey = self._curve_server_key
            sock.curve_publickey, sock.curve_secretkey = self._curve_client_keys
        sock.connect(self.endpoint)
        self._socket = sock

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- endpoints

    def metadata(self) -> dict[str, Any]:
        """The policy's metadata (cameras, state/action layout, chunk length, control rate, ...)."""
        self._metadata = self._call("metadata", {})["metadata"]
        return self._metadata

    def ping(self) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter()
        self._call("ping", {})
        return time.perf_counter() - start

    def reset(self) -> None:
        """Tell the server a new episode starts (clears any per-client state)."""
        self._call("reset", {})

    def infer(
        self,
        obs: Mapping[str, Any],
        seed: int | None = None,
        prefix: np.ndarray | None = None,
        n_executing: int = 0,
        timeout_s: float | None = None,
    ) -> InferResult:
        """One action chunk for `obs` ({"images": {cam: uint8 HxWx3}, "state": (S,), "instruction": str}).

        seed: fixed initial noise (deterministic output, for A/B tests and parity checks).
        prefix: the previous chunk (P, A) in physical units, aligned so that its row 0 is the step the new
        chunk's row 0 replaces; n_executing: how many of its first rows are already being executed and
        must be kept (the controller's seam blending).
        """
        data: dict[str, Any] = {"observation": protocol.encode_observation(obs, self.jpeg_quality)}
        if seed is not None:
            if not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
                raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
            data["seed"] = int(seed)
        if prefix is not None:
            prefix = np.asarray(prefix, dtype=np.float32)
            if prefix.ndim != 2:
                raise ValueError(f"prefix must be (P, A) actions, got shape {prefix.shape}")
            if not 0 <= int(n_executing) <= prefix.shape[0]:
                raise ValueError(f"n_executing must be in [0, {prefix.shape[0]}], got {n_executing}")
            data["prefix"] = protocol.encode_array(prefix, "prefix")
            data["n_executing"] = int(n_executing)
        elif n_executing:
            raise ValueError("n_executing needs the previous chunk as `prefix`")
        # The server skips the request if it has queued longer than we will wait for it.
        data["deadline_s"] = self.timeout_s if timeout_s is None else float(timeout_s)
        start = time.perf_counter()
        reply = self._call("infer", data, timeout_s)
        rtt = time.perf_counter() - start
        actions = protocol.decode_array(reply.get("actions"), "actions").copy()
        timing = {k: float(v) for k, v in dict(reply.get("timing", {})).items()}
        return InferResult(actions=actions, timing=timing, rtt_s=rtt)

    # ---------------------------------------------------------------------------------- transport

    def _call(self, endpoint: str, data: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        if self._socket is None:
            self.connect()
        assert self._socket is not None
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        request_id = next(self._ids)
        payload = protocol.pack_request(request_id, endpoint, data, self.token)
        deadline = time.monotonic() + timeout
        # With IMMEDIATE set, send blocks until a connection exists, at most until the deadline.
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        try:
            self._socket.send(payload, copy=False)
        except zmq.Again:
            self.connect()
            raise ServerTimeout(
                f"{self.endpoint}: no server reachable within {timeout:.3f} s (could not send '{endpoint}'); "
                "is dit4dit-serve running at that address?"
            ) from None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._socket.poll(remaining * 1000.0, zmq.POLLIN):
                self.connect()  # drop the socket so a late reply can never be read as a later answer
                raise ServerTimeout(f"{self.endpoint}: no reply to '{endpoint}' within {timeout:.3f} s")
            frames = self._socket.recv_multipart(copy=True)
            try:
                reply = protocol.unpack(frames[-1])
            except protocol.ProtocolError:
                continue  # unreadable frame: not an answer to this request
            if not isinstance(reply, dict) or reply.get("id") != request_id:
                continue  # a late reply to an earlier request
            if not reply.get("ok"):
                err = reply.get("error") or {}
                raise ServerError(str(err.get("code", "")), str(err.get("field", "")), str(err.get("message", "")))
            result = reply.get("data")
            return result if isinstance(result, dict) else {}


def load_curve_client(key_dir: str | Path, name: str = "client") -> tuple[bytes, tuple[bytes, bytes]]:
    """(server public key, (client public, client secret)) from a folder made by `dit4dit-serve --make-curve-keys`."""
    import zmq.auth

    key_dir = Path(key_dir)
    server_public, _ = zmq.auth.load_certificate(key_dir / "server.key")
    client_public, client_secret = zmq.auth.load_certificate(key_dir / f"{name}.key_secret")
    if client_secret is None:
        raise ValueError(f"{key_dir / (name + '.key_secret')} holds no secret key")
    return server_public, (client_public, client_secret)
