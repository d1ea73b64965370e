"""dit4dit-serve: the policy inference server (ZeroMQ ROUTER + msgpack, docs/protocol.md).

Threads: the socket thread owns the ROUTER socket, parses envelopes, checks the token and answers
`ping`, `metadata` and `reset` at once, so a long inference never delays a ping. `infer` requests go
to one inference thread, which takes up to a batch of waiting requests, validates each (a bad one gets
its own error reply naming the field), runs the good ones through the policy (batched when that was
measured to be faster at start) and hands the replies back over an inproc socket, because ZeroMQ
sockets must not be shared between threads.

Fairness: waiting requests are kept per client (ROUTER routing id), at most `max_queue_per_client`
each and `max_queue` in all, and the inference thread takes them one client at a time in turn. A
client that floods the server is answered `busy` for its own excess and waits its turn like everyone
else, so a well-behaved robot waits behind one request per other client, not behind the flood. The
socket thread sends every ready reply before it reads at most `_READS_PER_TURN` requests, so a flood
being read never holds back a reply either.

No non-finite action is ever sent: a state or prefix value far outside the range the model was trained
on (the checkpoint's normalisation stats) is refused before inference, and every chunk is checked for
NaN/inf after it. `PolicyServer.stats()` (and the `metadata` reply) count both.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import math
import os
import re
import signal
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import zmq

from dit4dit.runtime import protocol
from dit4dit.runtime.protocol import ProtocolError

log = logging.getLogger("dit4dit.serve")

# ZeroMQ drops a connection whose peer sends a frame above this (no reply is possible then).
# Requests between protocol.MAX_MESSAGE_BYTES and this get an error reply instead.
_HARD_FRAME_LIMIT = 4 * protocol.MAX_MESSAGE_BYTES

# A state or prefix value further than this many training std from the training mean is refused
# before inference. A real joint lies at most a few hundred std away (std >= 0.01 rad, joints within a
# few rad), so this refuses only absurd input (1e4 std is 500 rad at std 0.05), and it keeps the
# normalised value far inside float32, where the networks would otherwise turn 1e30 into a chunk of NaN.
MAX_DEVIATION_STD = 1e4

# Requests the socket thread reads before it sends the replies that have become ready meanwhile.
_READS_PER_TURN = 32

# Clients whose `busy` refusals are counted one by one (the most recently refused ones): a robot that
# reconnects after every timeout gets a new routing id each time, so the table must not grow forever.
_BUSY_CLIENTS_KEPT = 64


class ServedPolicy(Protocol):
    """What the server needs from a policy: dit4dit.policy.inference.Policy satisfies it."""

    metadata: dict[str, Any]

    def infer(self, obs: dict[str, Any], noise: np.ndarray | None = None, prefix: Any = None) -> np.ndarray: ...


@dataclass
class ServerStats:
    """Counters since start; `PolicyServer.stats()` and the `metadata` reply (server.stats) publish them."""

    served: int = 0  # infer replies carrying actions
    busy_queue_full: int = 0  # refused: max_queue requests were waiting in all
    busy_client_full: int = 0  # refused: that client already had max_queue_per_client requests waiting
    busy_by_client: dict[str, int] = field(default_factory=dict)  # busy_client_full per client (routing id, hex)
    expired: int = 0  # not run: queued beyond their deadline_s
    out_of_range: int = 0  # refused: a state or prefix value beyond MAX_DEVIATION_STD from the training data
    non_finite: int = 0  # the policy returned NaN or inf actions; an error was sent instead


@dataclass(frozen=True)
class _TrainedRange:
    """The per-joint mean and std one request field was normalised with in training (checkpoint metadata)."""

    field: str  # wire field, e.g. "observation.state"
    names: Sequence[str]  # joint names, along the last axis
    mean: np.ndarray  # float64 (D,)
    std: np.ndarray  # float64 (D,), > 0

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], kind: str, field: str, names_key: str) -> _TrainedRange | None:
        """From metadata["normalization"][kind]; None when the policy publishes no usable stats."""
        names = list(metadata.get(names_key) or [])
        stats = (metadata.get("normalization") or {}).get(kind)
        if not isinstance(stats, Mapping):
            return None
        try:
            mean = np.asarray(stats["mean"], np.float64)
            std = np.asarray(stats["std"], np.float64)
        except (KeyError, TypeError, ValueError):
            return None
        if mean.shape != (len(names),) or std.shape != mean.shape or not (np.isfinite(mean).all() and (std > 0).all()):
            return None
        return cls(field, names, mean, std)

    def furthest(self, values: np.ndarray) -> tuple[tuple[int, ...], float]:
        """(index, distance in std) of the value furthest from the training mean; `values` are finite."""
        deviation = np.abs(values.astype(np.float64) - self.mean) / self.std  # float64: 3.4e38 / 0.01 still fits
        index = np.unravel_index(int(np.argmax(deviation)), deviation.shape)
        return tuple(int(i) for i in index), float(deviation[index])

    def describe(self, values: np.ndarray, index: tuple[int, ...]) -> str:
        """The value at `index`, its joint, and the range the model was trained on (for an error message)."""
        joint, value = index[-1], float(values[index])
        where = f"row {index[0]}, joint {joint}" if len(index) > 1 else f"joint {joint}"
        mean, std = float(self.mean[joint]), float(self.std[joint])
        low, high = mean - MAX_DEVIATION_STD * std, mean + MAX_DEVIATION_STD * std
        return (f"{where} ({self.names[joint]}) = {value:.6g} lies {abs(value - mean) / std:.3g} std from the training "
                f"data: the model was trained on {mean:.6g} ± {std:.6g} (mean ± std) and takes values within "
                f"±{MAX_DEVIATION_STD:g} std, [{low:.6g}, {high:.6g}]")


@dataclass
class _Pending:
    envelope: list[bytes]  # routing frames to send the reply back
    request: protocol.Request
    received: float  # time.perf_counter() at receipt
    parse_s: float = 0.0  # msgpack parse and envelope checks, in the socket thread


class _FairQueue:
    """Waiting requests, one FIFO per client, taken one client at a time in turn (round-robin).

    Clients take turns in the order they started waiting, so each waits behind at most one request
    of every other client, however many those have sent.
    """

    def __init__(self, max_total: int, max_per_client: int) -> None:
        if max_total < 1 or max_per_client < 1:
            raise ValueError(f"queue limits must be >= 1, got max_queue={max_total}, max_queue_per_client={max_per_client}")
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._by_client: OrderedDict[tuple[bytes, ...], deque[_Pending]] = OrderedDict()  # in turn order
        self._total = 0
        self._closed = False
        self._ready = threading.Condition()

    def __len__(self) -> int:
        return self._total

    def put(self, client: tuple[bytes, ...], item: _Pending) -> Literal["queue", "client"] | None:
        """Queue `item`, or return why it was not queued: "queue" (max_total waiting) or "client"."""
        with self._ready:
            if self._total >= self.max_total:
                return "queue"
            waiting = self._by_client.get(client)
            if waiting is None:
                waiting = self._by_client[client] = deque()
            elif len(waiting) >= self.max_per_client:
                return "client"
            waiting.append(item)
            self._total += 1
            self._ready.notify()
            return None

    def take(self, n: int) -> list[_Pending] | None:
        """Up to `n` requests, one client at a time in turn; blocks until there is one. None once closed."""
        with self._ready:
            while not self._total and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            taken = []
            while self._by_client and len(taken) < n:
                client, waiting = next(iter(self._by_client.items()))
                taken.append(waiting.popleft())
                if waiting:
                    self._by_client.move_to_end(client)  # its next request waits for the others' turns
                else:
                    del self._by_client[client]
            self._total -= len(taken)
            return taken

    def close(self) -> None:
        """Wake the inference thread to exit; what is still waiting is dropped (the socket is closing)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()


@dataclass
class _Job:
    pending: _Pending
    obs: dict[str, Any]
    noise: np.ndarray
    prefix: tuple[np.ndarray, int] | None
    decode_s: float  # the request's parse, plus decoding and validating its arrays
    signature: tuple = field(default_factory=tuple)


class PolicyServer:
    """Serve `policy` on `bind` until `stop()` is called.

    token: shared secret every request must carry; curve_keys: folder for CurveZMQ (see `make_curve_keys`).
    max_batch: largest batch of concurrent `infer` requests run together (1 = never batch).
    max_queue: most `infer` requests waiting in all; max_queue_per_client: most from one client (routing id).
    A robot waits for each chunk before it asks for the next, so more than a few waiting requests from
    one client is a flood or a bug; beyond either limit a request is answered `busy`.
    """

    def __init__(
        self,
        policy: ServedPolicy,
        bind: str = "tcp://127.0.0.1:5555",
        *,
        token: str | None = None,
        curve_keys: str | Path | None = None,
        max_batch: int = 1,
        backend: str = "unknown",
        max_message_bytes: int = protocol.MAX_MESSAGE_BYTES,
        seed: int | None = None,
        max_queue: int = 64,
        max_queue_per_client: int = 4,
        profiler: Any = None,
    ) -> None:
        if token is not None and len(token) < 8:
            raise ValueError("--token must be at least 8 characters; a short shared secret is guessable")
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.policy = policy
        self.bind = bind
        self.token = token
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_queue_per_client = max_queue_per_client
        self.backend = backend
        self.max_message_bytes = max_message_bytes
        self.metadata = dict(policy.metadata)
        self._timed: _TimedEngine | None = None
        if hasattr(policy, "engine") and hasattr(policy.engine, "features"):
            self._timed = _TimedEngine(policy.engine)
            policy.engine = self._timed  # type: ignore[attr-defined]
        self._cameras: dict[str, Any] = dict(self.metadata.get("cameras", {}))
        self._state_dim = len(self.metadata["state_names"])
        self._action_dim = len(self.metadata["action_names"])
        self._chunk = int(self.metadata["chunk_length"])
        self._state_range = _TrainedRange.from_metadata(self.metadata, "state", "observation.state", "state_names")
        self._prefix_range = _TrainedRange.from_metadata(self.metadata, "action", "prefix", "action_names")
        if self._state_range is None or self._prefix_range is None:
            log.info("the policy publishes no normalisation stats: state and prefix are not checked against a trained range")
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._queue = _FairQueue(max_queue, max_queue_per_client)
        self._context = zmq.Context()
        self._curve_keys = Path(curve_keys) if curve_keys is not None else None
        self._auth = None
        self._bound = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_endpoint: str | None = None
        self._stats = ServerStats()
        self._profiler = profiler  # policy.profiling.RequestProfiler (begin/end around each policy call) or None

    # ------------------------------------------------------------------------------------ running

    def serve_forever(self) -> None:
        router = self._context.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.setsockopt(zmq.MAXMSGSIZE, _HARD_FRAME_LIMIT)
        router.setsockopt(zmq.SNDHWM, 1000)
        try:
            if self._curve_keys is not None:
                self._setup_curve(router)
            router.bind(self.bind)
        except (zmq.ZMQError, OSError) as exc:
            router.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._context.term()
            self._error = exc
            self._bound.set()
            return
        self.last_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        results = self._context.socket(zmq.PAIR)
        results.bind(f"inproc://results-{id(self)}")
        worker = threading.Thread(target=self._inference_loop, name="dit4dit-infer", daemon=True)
        worker.start()
        self._bound.set()
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(results, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                poller.poll(100)
                # Ready replies first, then a bounded number of requests: however many requests are
                # waiting (a flood), a finished inference is sent after at most _READS_PER_TURN reads.
                while True:
                    try:
                        router.send_multipart(results.recv_multipart(zmq.NOBLOCK), copy=False)
                    except zmq.Again:
                        break
                for _ in range(_READS_PER_TURN):
                    try:
                        frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    reply = self._handle(frames)
                    if reply is not None:
                        router.send_multipart(reply, copy=False)
        finally:
            self._queue.close()
            worker.join(timeout=10)
            router.close(linger=0)
            results.close(linger=0)
            if self._auth is not None:
                self._auth.stop()
            self._context.term()

    def start(self) -> threading.Thread:
        """Serve in a background thread; returns once the socket is bound."""
        thread = threading.Thread(target=self.serve_forever, name="dit4dit-serve", daemon=True)
        self._thread = thread
        thread.start()
        if not self._bound.wait(10):
            raise RuntimeError(f"server did not bind {self.bind} within 10 s")
        if self._error is not None:
            raise RuntimeError(f"cannot serve on {self.bind}: {self._error} (is another server using that address?)")
        return thread

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop serving and wait (up to `timeout_s`) until the socket and inference threads have finished.

        Waiting matters at interpreter exit: a daemon thread still inside ONNX Runtime or torch while their native
        thread pools are torn down aborts the process ("terminate called without an active exception").
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (ServerStats) and `queued`, the infer requests waiting now."""
        # dict copies are atomic under the GIL, so this is safe while the server threads count.
        return {**vars(self._stats), "busy_by_client": dict(self._stats.busy_by_client), "queued": len(self._queue)}

    def _setup_curve(self, router: zmq.Socket) -> None:
        import zmq.auth
        from zmq.auth.thread import ThreadAuthenticator

        assert self._curve_keys is not None
        secret_file = self._curve_keys / "server.key_secret"
        authorized = self._curve_keys / "authorized"
        if not secret_file.is_file() or not authorized.is_dir():
            raise FileNotFoundError(
                f"--curve-keys {self._curve_keys}: expected server.key_secret and an authorized/ folder of client "
                "public keys; create them with `dit4dit-serve --make-curve-keys DIR`"
            )
        public, secret = zmq.auth.load_certificate(secret_file)
        self._auth = ThreadAuthenticator(self._context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(authorized))
        router.curve_secretkey = secret
        router.curve_publickey = public
        router.curve_server = True

    # ------------------------------------------------------------------------------ socket thread

    def _handle(self, frames: list[bytes]) -> list[bytes] | None:
        """Answer at once, or queue an `infer` and return None. Never raises: errors become replies."""
        if len(frames) < 2:
            return None  # a ROUTER always prepends an identity; nothing to answer to otherwise
        envelope = [f.bytes if isinstance(f, zmq.Frame) else f for f in frames[:-1]]
        payload = frames[-1].buffer if isinstance(frames[-1], zmq.Frame) else frames[-1]
        request_id = None
        t0 = time.perf_counter()
        try:
            request = protocol.parse_request(payload, self.max_message_bytes)
            request_id = request.id
            if self.token is not None and not (
                request.token is not None and hmac.compare_digest(request.token.encode(), self.token.encode())
            ):
                raise ProtocolError("token", "missing or wrong token; pass the server's --token", protocol.E_UNAUTHORIZED)
            if request.endpoint == "ping":
                return envelope + [protocol.pack_reply(request.id, {"time": time.time()})]
            if request.endpoint == "metadata":
                return envelope + [protocol.pack_reply(request.id, {"metadata": self.metadata, "server": self._server_info()})]
            if request.endpoint == "reset":
                reset = getattr(self.policy, "reset", None)
                if callable(reset):
                    reset()
                return envelope + [protocol.pack_reply(request.id, {})]
            if request.endpoint == "infer":
                now = time.perf_counter()
                self._enqueue(_Pending(envelope, request, now, now - t0))
                return None
            raise ProtocolError(
                "endpoint", f"unknown endpoint {request.endpoint!r}; known: {list(protocol.ENDPOINTS)}", protocol.E_UNKNOWN_ENDPOINT
            )
        except ProtocolError as exc:
            request_id = getattr(exc, "request_id", request_id)
            # A flood is answered `busy` thousands of times a second: counted in stats, not logged one by one.
            log.log(logging.DEBUG if exc.code == protocol.E_BUSY else logging.INFO, "rejected request %s: [%s] %s", request_id, exc.code, exc)
            return envelope + [protocol.pack_error(request_id, exc.code, exc.field, exc.detail)]
        except Exception as exc:  # a bug must not take the server down for every robot
            log.exception("internal error handling a request")
            return envelope + [protocol.pack_error(request_id, protocol.E_INTERNAL, "", f"{type(exc).__name__}: {exc}")]

    def _enqueue(self, pending: _Pending) -> None:
        """Queue an infer request, or raise `busy`: both limits bound memory, the per-client one also starvation."""
        refused = self._queue.put(tuple(pending.envelope), pending)
        if refused == "queue":
            self._stats.busy_queue_full += 1
            raise ProtocolError("", f"{self.max_queue} infer requests are already waiting; retry later", protocol.E_BUSY)
        if refused == "client":
            self._stats.busy_client_full += 1
            counts = self._stats.busy_by_client
            client = ".".join(frame.hex() for frame in pending.envelope if frame)
            counts[client] = counts.pop(client, 0) + 1  # re-inserted last: the dict is ordered by last refusal
            if len(counts) > _BUSY_CLIENTS_KEPT:
                del counts[next(iter(counts))]
            raise ProtocolError(
                "", f"this client already has {self.max_queue_per_client} infer requests waiting (the most one client "
                "may have); wait for their replies before sending more", protocol.E_BUSY,
            )

    def _server_info(self) -> dict[str, Any]:
        return {"protocol_version": protocol.PROTOCOL_VERSION, "backend": self.backend, "max_batch": self.max_batch,
                "max_queue": self.max_queue, "max_queue_per_client": self.max_queue_per_client, "stats": self.stats()}

    # --------------------------------------------------------------------------- inference thread

    def _inference_loop(self) -> None:
        out = self._context.socket(zmq.PAIR)
        out.connect(f"inproc://results-{id(self)}")
        try:
            while (batch := self._queue.take(self.max_batch)) is not None:  # clients in turn, up to a batch
                started = time.perf_counter()
                jobs: list[_Job] = []
                for pending in self._drop_expired(batch, started, out):
                    t0 = time.perf_counter()
                    try:
                        jobs.append(self._prepare(pending, t0))
                    except ProtocolError as exc:
                        out.send_multipart(pending.envelope + [protocol.pack_error(pending.request.id, exc.code, exc.field, exc.detail)])
                    except Exception as exc:  # a bug must not stop the inference thread for every robot
                        log.exception("internal error preparing a request")
                        reply = protocol.pack_error(pending.request.id, protocol.E_INTERNAL, "", f"{type(exc).__name__}: {exc}")
                        out.send_multipart(pending.envelope + [reply])
                for group in _group(jobs):
                    for pending, reply in self._run(group, started):
                        out.send_multipart(pending.envelope + [reply])
        finally:
            out.close(linger=0)

    def _drop_expired(self, batch: list[_Pending], now: float, out: zmq.Socket) -> list[_Pending]:
        """Requests whose client has given up (deadline_s passed while queued) are answered, not run:
        under overload the GPU then works only on observations someone still waits for."""
        live = []
        for pending in batch:
            deadline = pending.request.data.get("deadline_s")
            waited = now - pending.received
            if isinstance(deadline, (int, float)) and not isinstance(deadline, bool) and 0 < deadline < waited:
                message = f"waited {waited:.3f} s in the queue, beyond its deadline_s {deadline:.3f}; not run"
                self._stats.expired += 1
                out.send_multipart(pending.envelope + [protocol.pack_error(pending.request.id, protocol.E_EXPIRED, "deadline_s", message)])
            else:
                live.append(pending)
        return live

    def _prepare(self, pending: _Pending, t0: float) -> _Job:
        """Decode and validate one infer request against the model's metadata."""
        data = pending.request.data
        unknown = set(data) - {"observation", "seed", "prefix", "n_executing", "deadline_s"}
        if unknown:
            raise ProtocolError(sorted(map(str, unknown))[0],
                                "unknown infer option; expected observation, seed, prefix, n_executing, deadline_s")
        deadline = data.get("deadline_s")
        if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not 0 < deadline < 3600):
            raise ProtocolError("deadline_s", f"expected seconds in (0, 3600), got {deadline!r}")
        obs = protocol.decode_observation(data.get("observation"))
        for name in obs["images"]:
            if name not in self._cameras:
                raise ProtocolError(f"observation.images.{name}", f"unknown camera; this model takes {sorted(self._cameras)}")
        for name in self._cameras:
            if name not in obs["images"]:
                raise ProtocolError(f"observation.images.{name}", "missing camera image")
        max_frames = int(self.metadata.get("context_frames", 1))
        for name, image in obs["images"].items():
            if image.ndim == 4 and not 1 <= image.shape[0] <= max_frames:
                raise ProtocolError(
                    f"observation.images.{name}", f"{image.shape[0]} frames given; this model takes 1 to {max_frames}"
                )
        state = obs["state"]
        if state.shape != (self._state_dim,):
            raise ProtocolError("observation.state", f"expected shape [{self._state_dim}] (state_names), got {list(state.shape)}")
        if not np.all(np.isfinite(state)):
            raise ProtocolError("observation.state", "contains NaN or infinity")
        self._refuse_far_from_training(state, self._state_range)
        seed = data.get("seed")
        if seed is None:
            rng = self._rng
        elif isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63:
            rng = np.random.default_rng(seed)
        else:
            raise ProtocolError("seed", f"expected an integer in [0, 2**63), got {seed!r}")
        # Noise is drawn here, per request, so a seeded request gets the same chunk whether batched or not.
        noise = rng.standard_normal((self._chunk, self._action_dim)).astype(np.float32)
        prefix = None
        n_exec = data.get("n_executing", 0)
        if not isinstance(n_exec, int) or isinstance(n_exec, bool):
            raise ProtocolError("n_executing", f"expected an integer, got {n_exec!r}")
        if data.get("prefix") is not None:
            actions = protocol.decode_array(data["prefix"], "prefix", max_bytes=1 << 20)
            if actions.dtype.kind != "f" or actions.ndim != 2 or actions.shape[1] != self._action_dim or not 1 <= actions.shape[0] <= self._chunk:
                raise ProtocolError(
                    "prefix", f"expected float (P, {self._action_dim}) with 1 <= P <= {self._chunk}, got {actions.dtype} {list(actions.shape)}"
                )
            if not np.all(np.isfinite(actions)):
                raise ProtocolError("prefix", "contains NaN or infinity")
            self._refuse_far_from_training(actions, self._prefix_range)
            if not 0 <= n_exec <= actions.shape[0]:
                raise ProtocolError("n_executing", f"must be in [0, {actions.shape[0]}] (rows of prefix), got {n_exec}")
            prefix = (actions.astype(np.float32), n_exec)
        elif n_exec != 0:
            raise ProtocolError("n_executing", "given without a prefix")
        signature = (
            tuple(sorted((k, v.shape) for k, v in obs["images"].items())),
            None if prefix is None else (prefix[0].shape, prefix[1]),
        )
        return _Job(pending, obs, noise, prefix, pending.parse_s + time.perf_counter() - t0, signature)

    def _refuse_far_from_training(self, values: np.ndarray, trained: _TrainedRange | None) -> None:
        """Absurd but finite input (1e30, float32 max) would come back as NaN actions: refuse it, naming the joint."""
        if trained is None:
            return
        index, deviation = trained.furthest(values)
        if deviation > MAX_DEVIATION_STD:
            self._stats.out_of_range += 1
            raise ProtocolError(trained.field, trained.describe(values, index), protocol.E_OUT_OF_RANGE)

    def _non_finite_error(self, job: _Job, actions: np.ndarray) -> bytes:
        """The error sent instead of NaN/inf actions. It names the input furthest from the training data."""
        where = ""
        if actions.ndim == 2 and actions.shape[1] == self._action_dim:  # never raise here: it would stop the thread
            step, joint = (int(i) for i in np.argwhere(~np.isfinite(actions))[0])
            where = f" (first at step {step}, {self.metadata['action_names'][joint]})"
        message = f"the policy produced non-finite actions{where}; none are sent"
        inputs = [(self._state_range, job.obs["state"])]
        if job.prefix is not None:
            inputs.append((self._prefix_range, job.prefix[0]))
        suspects = [(trained.furthest(values), trained, values) for trained, values in inputs if trained is not None]
        if not suspects:
            return protocol.pack_error(job.pending.request.id, protocol.E_NON_FINITE, "", message)
        (index, _), trained, values = max(suspects, key=lambda s: s[0][1])
        message += f"; the input furthest from the training data is {trained.field} {trained.describe(values, index)}"
        return protocol.pack_error(job.pending.request.id, protocol.E_NON_FINITE, trained.field, message)

    def _run(self, jobs: list[_Job], started: float) -> list[tuple[_Pending, bytes]]:
        t0 = time.perf_counter()
        if self._profiler is not None:
            self._profiler.begin()
        try:
            if len(jobs) == 1:
                job = jobs[0]
                outputs = [self.policy.infer(job.obs, noise=job.noise, prefix=job.prefix)]
            else:
                outputs = list(self._infer_batch(jobs))
        except ValueError as exc:
            if len(jobs) > 1:  # one bad request must not fail the others: run them one by one
                return [r for job in jobs for r in self._run([job], started)]
            field_name = getattr(exc, "field", None) or _field_from_message(str(exc))
            return [(jobs[0].pending, protocol.pack_error(jobs[0].pending.request.id, protocol.E_INVALID, field_name, str(exc)))]
        except Exception as exc:
            log.exception("policy inference failed")
            return [(j.pending, protocol.pack_error(j.pending.request.id, protocol.E_INTERNAL, "", f"{type(exc).__name__}: {exc}")) for j in jobs]
        finally:
            if self._profiler is not None:
                self._profiler.end()
        call_s = time.perf_counter() - t0
        # With the engine timed: the networks are features + sample, and the rest of the policy call (resize,
        # normalise, tokenise, un-normalise) is preprocess. Otherwise the whole policy call is inference.
        network_s = call_s if self._timed is None else self._timed.features_s + self._timed.sample_s
        split: dict[str, float] = {}
        if self._timed is not None:
            split = {"features": self._timed.features_s, "sample": self._timed.sample_s}
        replies = []
        for job, actions in zip(jobs, outputs):
            actions = np.asarray(actions, dtype=np.float32)
            if not np.isfinite(actions).all():  # checked per request, so one bad row fails only its own request
                self._stats.non_finite += 1
                log.warning("request %s: the policy produced non-finite actions; sent an error instead", job.pending.request.id)
                replies.append((job.pending, self._non_finite_error(job, actions)))
                continue
            self._stats.served += 1
            t_encode = time.perf_counter()
            encoded = protocol.encode_array(actions, "actions")
            timing = {
                "queue": started - job.pending.received,
                "decode": job.decode_s,
                "preprocess": call_s - network_s,
                **split,
                "inference": network_s,
                "encode": time.perf_counter() - t_encode,
                "batch": len(jobs),
            }
            timing["total"] = time.perf_counter() - job.pending.received
            replies.append((job.pending, protocol.pack_reply(job.pending.request.id, {"actions": encoded, "timing": timing})))
        return replies

    def _infer_batch(self, jobs: list[_Job]) -> np.ndarray:
        obs = {
            "images": {name: np.stack([j.obs["images"][name] for j in jobs]) for name in jobs[0].obs["images"]},
            "state": np.stack([j.obs["state"] for j in jobs]),
            "instruction": [j.obs["instruction"] for j in jobs],
        }
        noise = np.stack([j.noise for j in jobs])
        prefix = None
        if jobs[0].prefix is not None:
            prefix = (np.stack([j.prefix[0] for j in jobs]), jobs[0].prefix[1])  # type: ignore[index]
        return self.policy.infer(obs, noise=noise, prefix=prefix)


def _group(jobs: list[_Job]) -> list[list[_Job]]:
    """Jobs that can share one batched call: same image shapes, same prefix shape."""
    groups: dict[tuple, list[_Job]] = {}
    for job in jobs:
        groups.setdefault(job.signature, []).append(job)
    return list(groups.values())


_OBS_FIELD = re.compile(r"obs\[['\"](\w+)['\"]\](?:\[['\"]([^'\"]+)['\"]\])?")


def _field_from_message(message: str) -> str:
    """Map a Policy ObservationError ("obs['images']['head'] must be ...") to the wire field path."""
    m = _OBS_FIELD.search(message)
    if m:
        return "observation." + ".".join(g for g in m.groups() if g)
    for option in ("prefix", "noise"):
        if message.startswith(option):
            return "seed" if option == "noise" else option
    return "observation"


class _TimedEngine:
    """Wraps the policy's engine to measure the network time (features + sample) inside Policy.infer."""

    def __init__(self, engine: Any) -> None:
        self.inner = engine
        self.name = getattr(engine, "name", "unknown")
        self.features_s = 0.0
        self.sample_s = 0.0

    def features(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.features(*args)
        finally:
            self.features_s = time.perf_counter() - t0

    def sample(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.inner.sample(*args)
        finally:
            self.sample_s = time.perf_counter() - t0


# ------------------------------------------------------------------------------------ batching


def dummy_observation(metadata: Mapping[str, Any], batch: int | None = None, seed: int = 0) -> dict[str, Any]:
    """A valid observation for `metadata` (random pixels, zero state), for warm-up and benchmarks."""
    rng = np.random.default_rng(seed)
    images = {}
    for name, size in metadata["cameras"].items():
        shape = (int(size["height"]), int(size["width"]), 3)
        images[name] = rng.integers(0, 256, ((batch,) if batch else ()) + shape, dtype=np.uint8)
    state = np.zeros(((batch,) if batch else ()) + (len(metadata["state_names"]),), np.float32)
    # a cached-text policy (cosmos backbone) knows only its instructions; a word-vocabulary one takes any text
    known = metadata.get("instructions") or [""]
    instruction = [known[0]] * batch if batch else known[0]
    return {"images": images, "state": state, "instruction": instruction}


def measure_batching(policy: ServedPolicy, max_batch: int, repeats: int = 3) -> tuple[int, float, float]:
    """(batch to use, seconds per request at 1, seconds per request at max_batch).

    Batching is only worth it when a batch of B costs clearly less than B single calls; on a busy CPU
    it often does not, on a GPU it usually does.
    """
    meta = policy.metadata
    chunk, adim = int(meta["chunk_length"]), len(meta["action_names"])

    def timed(b: int) -> float:
        obs = dummy_observation(meta, b if b > 1 else None)
        noise = np.zeros(((b,) if b > 1 else ()) + (chunk, adim), np.float32)
        policy.infer(obs, noise=noise)  # warm-up
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            policy.infer(obs, noise=noise)
            best = min(best, time.perf_counter() - t0)
        return best

    single = timed(1)
    if max_batch <= 1:
        return 1, single, single
    per_item = timed(max_batch) / max_batch
    return (max_batch if per_item < 0.8 * single else 1), single, per_item


# ------------------------------------------------------------------------------------ CurveZMQ


def make_curve_keys(key_dir: str | Path, clients: Sequence[str] = ("client",)) -> None:
    """Create a server key pair and one key pair per client; authorize the clients' public keys."""
    import shutil

    import zmq.auth

    key_dir = Path(key_dir)
    authorized = key_dir / "authorized"
    authorized.mkdir(parents=True, exist_ok=True)
    zmq.auth.create_certificates(str(key_dir), "server")
    for name in clients:
        public, _ = zmq.auth.create_certificates(str(key_dir), name)
        shutil.copy(public, authorized / Path(public).name)
    for secret in key_dir.glob("*.key_secret"):
        secret.chmod(0o600)


# ----------------------------------------------------------------------------------------- CLI


def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dit4dit-serve", description="Serve a DiT4DiT policy over ZeroMQ (docs/protocol.md).")
    p.add_argument("--ckpt", type=Path, help="checkpoint (.pt) to serve")
    p.add_argument("--backend", default="auto", choices=["auto", "tensorrt", "compiled", "torch", "onnxruntime"],
                   help="auto: on cuda TensorRT if a matching engine is in --engines, else compiled (torch.compile + "
                        "CUDA graphs + bf16), else torch; on cpu ONNX Runtime if exported graphs matching the "
                        "checkpoint are in --engines, else torch (policy/backends.py)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (default localhost only)")
    p.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: cuda if available")
    p.add_argument("--engines", type=Path, default=None, help="folder written by dit4dit-export (ONNX graphs, TensorRT engines)")
    p.add_argument("--text-encoder", type=Path, default=None, metavar="DIR",
                   help="cosmos checkpoints: a local Qwen2.5-VL text encoder that embeds instructions the checkpoint has "
                        "not cached (torch backend); without it an unseen instruction is refused")
    p.add_argument("--token", default=None, help="shared secret every request must carry (>= 8 characters)")
    p.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ key folder (server.key_secret + authorized/)")
    p.add_argument("--make-curve-keys", type=Path, default=None, metavar="DIR",
                   help="create a server key pair and client key pairs in DIR, then exit")
    p.add_argument("--clients", default="client", help="with --make-curve-keys: comma-separated client names")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch of concurrent requests; batching is used only if measured faster")
    p.add_argument("--seed", type=int, default=None, help="seed of the noise for requests without their own seed")
    p.add_argument("--max-queue", type=int, default=64, help="most infer requests waiting in all; beyond it: busy")
    p.add_argument("--max-queue-per-client", type=int, default=4,
                   help="most infer requests waiting from one client; its excess gets busy, the others keep their turn")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the policy (torch and ONNX Runtime). Default: half the cores, at least 1: "
                        "the socket thread and, on a robot's PC, the controller need the rest (on 2 cores, 2 torch "
                        "threads made the served small policy 2.6x slower than 1; bench/bench_serving.py)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="write a torch profiler trace of the first --profile-requests policy calls to DIR")
    p.add_argument("--profile-requests", type=int, default=50, metavar="N", help="policy calls in the --profile trace")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dit4dit").setLevel(args.log_level.upper())
    if args.make_curve_keys is not None:
        make_curve_keys(args.make_curve_keys, [c for c in args.clients.split(",") if c])
        print(f"wrote CurveZMQ keys to {args.make_curve_keys}; give each robot its <name>.key_secret and server.key")
        return 0
    if args.ckpt is None:
        raise SystemExit("dit4dit-serve: --ckpt is required (a checkpoint written by dit4dit-train)")
    if not args.ckpt.is_file():
        raise SystemExit(f"dit4dit-serve: checkpoint {args.ckpt} does not exist")
    if not args.bind.startswith(("tcp://127.", "tcp://localhost", "ipc://", "inproc://")) and args.token is None and args.curve_keys is None:
        log.warning("binding %s beyond localhost without --token or --curve-keys: anyone on the network can drive the policy", args.bind)

    from dit4dit.policy.backends import BackendError, load_policy  # torch is imported only here
    from dit4dit.policy.checkpoint import CheckpointError
    from dit4dit.policy.graphs import ParityError

    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 2) // 2)
    if threads < 1:
        raise SystemExit(f"dit4dit-serve: --threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)
    try:
        policy, choice = load_policy(args.ckpt, backend=args.backend, device=args.device, engines_dir=args.engines,
                                     threads=threads)
    except (BackendError, CheckpointError, ParityError) as exc:
        raise SystemExit(f"dit4dit-serve: {exc}") from None
    if args.text_encoder is not None:
        from dit4dit.policy.cosmos import BackboneError, CosmosTextEncoder

        if policy.cfg.backbone != "cosmos":
            raise SystemExit("dit4dit-serve: --text-encoder is for checkpoints with the cosmos backbone")
        try:
            # on the CPU: the 7B encoder must not take the serving GPU's memory; it runs once per new instruction
            policy.text_encoder = CosmosTextEncoder(args.text_encoder, policy.cfg.cosmos["text_length"], "cpu")
        except BackboneError as exc:
            raise SystemExit(f"dit4dit-serve: {exc}") from None
    max_batch = min(args.max_batch, int(getattr(policy.engine, "max_batch", args.max_batch)))  # TensorRT profiles cap it
    batch, single, per_item = measure_batching(policy, max_batch)  # also compiles the compiled engine's batch sizes
    log.info("batching: %.1f ms per request alone, %.1f ms per request in a batch of %d -> max batch %d",
             single * 1e3, per_item * 1e3, max_batch, batch)
    profiler = None
    if args.profile is not None:
        from dit4dit.policy.profiling import RequestProfiler

        try:
            profiler = RequestProfiler(args.profile, args.profile_requests)
        except (OSError, ValueError) as exc:
            raise SystemExit(f"dit4dit-serve: --profile: {exc}") from None
    server = PolicyServer(policy, args.bind, token=args.token, curve_keys=args.curve_keys, max_batch=batch,
                          backend=choice.backend, seed=args.seed, max_queue=args.max_queue,
                          max_queue_per_client=args.max_queue_per_client, profiler=profiler)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    try:
        thread = server.start()
    except RuntimeError as exc:
        raise SystemExit(f"dit4dit-serve: {exc}") from None
    # One line a supervisor (and the tests) can wait for.
    print(f"dit4dit-serve: serving {policy.metadata.get('model')} on {server.last_endpoint} with backend "
          f"{choice.backend} on {choice.device} ({choice.reason})", flush=True)
    while thread.is_alive():
        thread.join(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
