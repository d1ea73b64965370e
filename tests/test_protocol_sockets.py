"""Protocol behaviour over real ZeroMQ sockets against an in-process PolicyServer.

The policy here is a tiny stand-in (protocol tests only: it makes the server's timing predictable).
The server with a real checkpoint and the real Policy, in a subprocess, is tested in test_server.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from dit4dit.runtime import protocol
from dit4dit.runtime.client import PolicyClient, ServerError, ServerTimeout, load_curve_client
from dit4dit.runtime.server import PolicyServer, make_curve_keys

STATE_DIM, ACTION_DIM, CHUNK = 29, 29, 16
TOKEN = "correct-horse-battery"


class StandInPolicy:
    """Deterministic in (noise, state); sleeps `delay_s` per call to look like a model."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.resets = 0
        self.metadata = {
            "model": "stand-in", "version": "0", "preset": "none",
            "cameras": {"head": {"height": 32, "width": 32}, "wrist": {"height": 24, "width": 24}},
            "context_frames": 2,
            "state_names": [f"s{i}" for i in range(STATE_DIM)], "action_names": [f"a{i}" for i in range(ACTION_DIM)],
            "action_space": "joint_position", "chunk_length": CHUNK, "control_rate_hz": 30.0,
            "normalization": {}, "instructions": None, "training": {},
        }

    def infer(self, obs, noise=None, prefix=None):
        self.calls += 1
        time.sleep(self.delay_s)
        state = np.asarray(obs["state"], np.float32)
        batched = state.ndim == 2
        self.batch_sizes.append(state.shape[0] if batched else 1)
        out = 0.1 * noise + state.mean(axis=-1)[..., None, None]
        if prefix is not None:
            actions, n = prefix
            out[..., :n, :] = actions[..., :n, :]
        return out.astype(np.float32)

    def reset(self):
        self.resets += 1


def observation(state_value: float = 0.0) -> dict:
    return {
        "images": {"head": np.zeros((32, 32, 3), np.uint8), "wrist": np.zeros((24, 24, 3), np.uint8)},
        "state": np.full(STATE_DIM, state_value, np.float32),
        "instruction": "pick up the cup",
    }


@pytest.fixture
def make_server(free_port: int) -> Iterator:
    servers: list[tuple[PolicyServer, threading.Thread]] = []

    def make(policy=None, **kwargs) -> tuple[PolicyServer, str]:
        server = PolicyServer(policy or StandInPolicy(), f"tcp://127.0.0.1:{free_port}", **kwargs)
        servers.append((server, server.start()))
        return server, f"tcp://127.0.0.1:{free_port}"

    yield make
    for server, thread in servers:
        server.stop()
        thread.join(5)


def wait_until(condition, what: str, timeout_s: float = 60.0) -> None:
    """Wait for a state the server reaches by itself; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def raw_request(endpoint: str, frames: list[bytes], timeout_ms: int = 2000) -> dict:
    """Send raw frames from a bare DEALER and return the decoded reply."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "no reply"
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
    finally:
        sock.close()


def test_metadata_ping_reset_infer(make_server) -> None:
    policy = StandInPolicy()
    server, endpoint = make_server(policy, backend="stand-in")
    with PolicyClient(endpoint, timeout_s=2.0) as client:
        assert client.metadata()["chunk_length"] == CHUNK
        assert 0 < client.ping() < 1.0
        client.reset()
        assert policy.resets == 1
        result = client.infer(observation(2.0), seed=5)
        assert result.actions.shape == (CHUNK, ACTION_DIM) and result.actions.dtype == np.float32
        assert set(result.timing) >= {"queue", "preprocess", "inference", "total"}
        assert result.timing["total"] >= result.timing["inference"]
        again = client.infer(observation(2.0), seed=5)
        np.testing.assert_array_equal(result.actions, again.actions)
        other = client.infer(observation(2.0), seed=6)
        assert not np.allclose(result.actions, other.actions)


def test_prefix_and_n_executing_reach_the_policy(make_server) -> None:
    _, endpoint = make_server()
    prev = np.full((CHUNK, ACTION_DIM), 7.0, np.float32)
    with PolicyClient(endpoint, timeout_s=2.0) as client:
        out = client.infer(observation(), seed=1, prefix=prev, n_executing=3).actions
    np.testing.assert_array_equal(out[:3], 7.0)
    assert not np.allclose(out[3:], 7.0)


def test_jpeg_images_are_accepted(make_server) -> None:
    _, endpoint = make_server()
    with PolicyClient(endpoint, timeout_s=2.0, jpeg_quality=80) as client:
        assert client.infer(observation()).actions.shape == (CHUNK, ACTION_DIM)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda o: o["images"].pop("wrist"), "observation.images.wrist"),
        (lambda o: o["images"].__setitem__("left_wrist", np.zeros((24, 24, 3), np.uint8)), "observation.images.left_wrist"),
        (lambda o: o.__setitem__("state", np.zeros(12, np.float32)), "observation.state"),
        (lambda o: o.__setitem__("state", np.full(STATE_DIM, np.nan, np.float32)), "observation.state"),
        (lambda o: o["images"].__setitem__("head", np.zeros((3, 32, 32, 3), np.uint8)), "observation.images.head"),
        (lambda o: o["images"].__setitem__("head", np.zeros((32, 32, 4), np.uint8)), "observation.images.head"),
    ],
)
def test_bad_observations_get_errors_naming_the_field(make_server, mutate, field: str) -> None:
    _, endpoint = make_server()
    obs = observation()
    mutate(obs)
    with PolicyClient(endpoint, timeout_s=2.0) as client:
        with pytest.raises(ServerError) as exc:
            client.infer(obs)
        assert exc.value.field == field, exc.value
        assert client.infer(observation()).actions.shape == (CHUNK, ACTION_DIM)  # still served


def test_hostile_messages_are_answered_while_a_good_client_keeps_being_served(make_server) -> None:
    policy = StandInPolicy(delay_s=0.002)
    _, endpoint = make_server(policy)
    good_obs = protocol.encode_observation(observation())

    def infer_with(mutation) -> bytes:
        data = {"observation": {**good_obs, "images": dict(good_obs["images"])}}
        mutation(data)
        return protocol.pack({"v": 1, "id": 42, "endpoint": "infer", "data": data})

    gb = {"nd": True, "dtype": "<f4", "shape": [1024, 1024, 256], "data": b"\0" * 64}
    hostile = {
        "truncated msgpack": (protocol.pack_request(42, "infer", {"observation": good_obs})[:100], protocol.E_MALFORMED, ""),
        "not a map": (msgpack.packb([1, 2, 3]), protocol.E_MALFORMED, ""),
        "unknown endpoint": (protocol.pack_request(42, "get_action"), protocol.E_UNKNOWN_ENDPOINT, "endpoint"),
        "wrong version": (protocol.pack({"v": 2, "id": 42, "endpoint": "ping", "data": {}}), protocol.E_VERSION, "v"),
        "1 GB declared image": (infer_with(lambda d: d["observation"]["images"].__setitem__("head", gb)), protocol.E_TOO_LARGE, "observation.images.head"),
        "1 GB declared state": (infer_with(lambda d: d["observation"].__setitem__("state", gb)), protocol.E_TOO_LARGE, "observation.state"),
        "object dtype": (infer_with(lambda d: d["observation"].__setitem__("state", {"nd": True, "dtype": "|O", "shape": [29], "data": b"\0" * 232})), protocol.E_INVALID, "observation.state.dtype"),
        "complex dtype": (infer_with(lambda d: d["observation"].__setitem__("state", {"nd": True, "dtype": "<c8", "shape": [29], "data": b"\0" * 232})), protocol.E_INVALID, "observation.state.dtype"),
        "float64 image": (infer_with(lambda d: d["observation"]["images"].__setitem__("head", protocol.encode_array(np.zeros((32, 32, 3))))), protocol.E_INVALID, "observation.images.head"),
        "short buffer": (infer_with(lambda d: d["observation"].__setitem__("state", {"nd": True, "dtype": "<f4", "shape": [29], "data": b"\0" * 7})), protocol.E_INVALID, "observation.state.data"),
        "bad seed": (infer_with(lambda d: d.__setitem__("seed", -3)), protocol.E_INVALID, "seed"),
        "unknown option": (infer_with(lambda d: d.__setitem__("temperature", 2.0)), protocol.E_INVALID, "temperature"),
        "missing observation": (protocol.pack_request(42, "infer", {}), protocol.E_INVALID, "observation"),
    }
    stop = threading.Event()
    latencies: list[float] = []
    errors: list[BaseException] = []

    def good_client() -> None:
        try:
            with PolicyClient(endpoint, timeout_s=2.0) as client:
                while not stop.is_set():
                    t0 = time.perf_counter()
                    assert client.infer(observation(1.0), seed=3).actions.shape == (CHUNK, ACTION_DIM)
                    latencies.append(time.perf_counter() - t0)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=good_client)
    thread.start()
    try:
        time.sleep(0.2)
        before = len(latencies)
        for name, (payload, code, field) in hostile.items():
            reply = raw_request(endpoint, [payload])
            assert reply["ok"] is False, name
            assert reply["error"]["code"] == code, (name, reply)
            assert reply["error"]["field"] == field, (name, reply)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    assert not errors, errors
    assert len(latencies) > before + 5, "the good client stalled while hostile messages were handled"


@pytest.mark.parametrize("version", [True, 1.0, "1"])
def test_a_version_that_only_equals_1_is_refused_naming_v(make_server, version: object) -> None:
    _, endpoint = make_server()
    payload = protocol.pack({"v": version, "id": 11, "endpoint": "infer",
                             "data": {"observation": protocol.encode_observation(observation())}})
    reply = raw_request(endpoint, [payload])
    assert reply["ok"] is False and reply["id"] == 11, reply
    assert reply["error"]["code"] == protocol.E_VERSION and reply["error"]["field"] == "v", reply
    assert repr(version) in reply["error"]["message"]


class NaNPolicy(StandInPolicy):
    """Returns NaN at step 3 of joint a2 whenever state[0] > 0.5 (a model that blows up on some input)."""

    def __init__(self, with_stats: bool) -> None:
        super().__init__()
        if with_stats:
            unit = {"mean": [0.0] * STATE_DIM, "std": [1.0] * STATE_DIM}
            self.metadata["normalization"] = {"state": unit, "action": unit}

    def infer(self, obs, noise=None, prefix=None):
        out = super().infer(obs, noise, prefix)
        out[..., 3, 2] = np.where(np.asarray(obs["state"])[..., 0] > 0.5, np.nan, out[..., 3, 2])
        return out


@pytest.mark.parametrize("with_stats", [True, False])
def test_non_finite_actions_are_never_sent(make_server, with_stats: bool) -> None:
    server, endpoint = make_server(NaNPolicy(with_stats))
    bad = observation(0.0)
    bad["state"][[0, 7]] = 1.0, 40.0  # inside the 1e4-std bound, so only the output check can catch it
    with PolicyClient(endpoint, timeout_s=2.0) as client:
        for _ in range(3):
            with pytest.raises(ServerError) as exc:
                client.infer(bad, seed=4)
            assert exc.value.code == protocol.E_NON_FINITE, exc.value
            assert "step 3, a2" in exc.value.detail and "none are sent" in exc.value.detail
            if with_stats:  # names the input furthest from the training data, with its trained range
                assert exc.value.field == "observation.state" and "joint 7 (s7) = 40" in exc.value.detail, exc.value
                assert "0 ± 1 (mean ± std)" in exc.value.detail
            else:
                assert exc.value.field == ""
        assert np.isfinite(client.infer(observation(0.0), seed=4).actions).all()  # still served
    assert server.stats()["non_finite"] == 3 and server.stats()["served"] == 1


def test_absurd_state_and_prefix_are_refused_before_inference(make_server) -> None:
    policy = NaNPolicy(with_stats=True)
    server, endpoint = make_server(policy)
    f32_max = float(np.finfo(np.float32).max)
    with PolicyClient(endpoint, timeout_s=2.0) as client:
        for value in (1e30, f32_max):
            obs = observation(0.0)
            obs["state"][9] = value
            with pytest.raises(ServerError) as exc:
                client.infer(obs)
            assert exc.value.code == protocol.E_OUT_OF_RANGE and exc.value.field == "observation.state"
            assert "joint 9 (s9)" in exc.value.detail and "[-10000, 10000]" in exc.value.detail, exc.value
            prefix = np.zeros((CHUNK, ACTION_DIM), np.float32)
            prefix[4:] = value
            with pytest.raises(ServerError) as exc:
                client.infer(observation(0.0), prefix=prefix, n_executing=2)
            assert exc.value.code == protocol.E_OUT_OF_RANGE and exc.value.field == "prefix"
            assert "row 4, joint 0 (a0)" in exc.value.detail, exc.value
    assert policy.calls == 0 and server.stats()["out_of_range"] == 4


def test_late_replies_are_discarded_and_the_client_recovers(make_server) -> None:
    policy = StandInPolicy(delay_s=0.5)
    _, endpoint = make_server(policy)
    with PolicyClient(endpoint, timeout_s=0.1) as client:
        with pytest.raises(ServerTimeout, match="no reply to 'infer'"):
            client.infer(observation(1.0), seed=1)
        policy.delay_s = 0.0
        time.sleep(0.6)  # the late reply arrives at the old, closed socket
        out = client.infer(observation(3.0), seed=1, timeout_s=2.0)
        np.testing.assert_allclose(out.actions.mean(), 3.0, atol=0.1)  # the answer to this request, not the old one


def test_token_is_required_when_configured(make_server) -> None:
    _, endpoint = make_server(token=TOKEN)
    with PolicyClient(endpoint, timeout_s=2.0) as anonymous:
        with pytest.raises(ServerError) as exc:
            anonymous.ping()
        assert exc.value.code == protocol.E_UNAUTHORIZED and exc.value.field == "token"
    with PolicyClient(endpoint, timeout_s=2.0, token="wrong-token-123") as wrong:
        with pytest.raises(ServerError, match="unauthorized"):
            wrong.infer(observation())
    with PolicyClient(endpoint, timeout_s=2.0, token=TOKEN) as client:
        assert client.infer(observation()).actions.shape == (CHUNK, ACTION_DIM)


@pytest.mark.skipif(not zmq.has("curve"), reason="this libzmq was built without CurveZMQ (libsodium)")
def test_curve_keys_authenticate_clients(make_server, tmp_path: Path) -> None:
    make_curve_keys(tmp_path / "keys", ["robot"])
    _, endpoint = make_server(curve_keys=tmp_path / "keys")
    server_key, client_keys = load_curve_client(tmp_path / "keys", "robot")
    with PolicyClient(endpoint, timeout_s=2.0, curve_server_key=server_key, curve_client_keys=client_keys) as client:
        assert client.infer(observation()).actions.shape == (CHUNK, ACTION_DIM)
    import zmq.utils.z85  # noqa: F401  (curve_keypair lives in zmq)

    stranger = zmq.curve_keypair()
    with PolicyClient(endpoint, timeout_s=0.3, curve_server_key=server_key, curve_client_keys=stranger) as client:
        with pytest.raises(ServerTimeout):  # ZAP refuses the handshake: no connection, no reply
            client.ping()
    with PolicyClient(endpoint, timeout_s=0.3) as plain:
        with pytest.raises(ServerTimeout):
            plain.ping()


def test_concurrent_clients_are_batched_when_allowed(make_server) -> None:
    policy = StandInPolicy(delay_s=0.02)
    _, endpoint = make_server(policy, max_batch=4)
    results: dict[int, np.ndarray] = {}

    def robot(i: int) -> None:
        with PolicyClient(endpoint, timeout_s=5.0) as client:
            for _ in range(5):
                results[i] = client.infer(observation(float(i)), seed=i).actions

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == [0, 1, 2, 3]
    for i, actions in results.items():  # each robot got its own answer
        np.testing.assert_allclose(actions.mean(), float(i), atol=0.1)
    assert max(policy.batch_sizes) > 1, policy.batch_sizes
    # A seeded request gives the same chunk alone and inside a batch.
    with PolicyClient(endpoint, timeout_s=5.0) as client:
        np.testing.assert_allclose(client.infer(observation(2.0), seed=2).actions, results[2], atol=1e-6)


def test_req_socket_clients_are_served_too(make_server) -> None:
    _, endpoint = make_server()
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(protocol.pack_request(9, "ping"))
        assert sock.poll(2000)
        reply = msgpack.unpackb(sock.recv(), raw=False)
        assert reply["ok"] and reply["id"] == 9
    finally:
        sock.close()


def test_timeout_when_no_server() -> None:
    with PolicyClient("tcp://127.0.0.1:1", timeout_s=0.2) as client:
        t0 = time.perf_counter()
        with pytest.raises(ServerTimeout, match="no server reachable"):
            client.ping()
        assert time.perf_counter() - t0 < 2.0


def test_client_rejects_bad_arguments_before_sending() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        PolicyClient("tcp://127.0.0.1:1", timeout_s=-1)
    with PolicyClient("tcp://127.0.0.1:1", timeout_s=0.2) as client:
        with pytest.raises(ValueError, match="n_executing"):
            client.infer(observation(), n_executing=2)
        with pytest.raises(ValueError, match="seed"):
            client.infer(observation(), seed=-1)


def test_a_flood_of_requests_gets_busy_replies_not_unbounded_memory(make_server) -> None:
    policy = StandInPolicy(delay_s=0.05)
    _, endpoint = make_server(policy, max_queue=4)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        payload = protocol.pack_request(1, "infer", {"observation": protocol.encode_observation(observation())})
        for _ in range(20):
            sock.send(payload)
        codes = []
        for _ in range(20):
            assert sock.poll(5000)
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            codes.append("ok" if reply["ok"] else reply["error"]["code"])
    finally:
        sock.close()
    assert codes.count("busy") >= 10 and codes.count("ok") >= 4, codes


class GatedPolicy(StandInPolicy):
    """Records whose request each call serves (state[0] tags the client) and holds every call until `gate` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.order: list[float] = []

    def infer(self, obs, noise=None, prefix=None):
        self.order.append(float(obs["state"][0]))
        assert self.gate.wait(60), "the test never opened the gate"
        return super().infer(obs, noise, prefix)


def test_a_flooding_client_gets_busy_for_its_own_excess_and_the_others_keep_their_turn(make_server) -> None:
    policy = GatedPolicy()
    server, endpoint = make_server(policy, max_queue=64, max_queue_per_client=4)
    flood, flooder_tag = 2000, 1.0
    flooder = zmq.Context.instance().socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.setsockopt(zmq.RCVHWM, 0)  # keep all the replies it does not read yet, to count them at the end
    flooder.connect(endpoint)
    results: dict[float, np.ndarray] = {}
    errors: list[BaseException] = []

    def robot(tag: float) -> None:
        try:
            with PolicyClient(endpoint, timeout_s=60.0) as client:
                results[tag] = client.infer(observation(tag), seed=1).actions
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    robots = {tag: threading.Thread(target=robot, args=(tag,)) for tag in (2.0, 3.0)}
    try:
        payload = {"observation": protocol.encode_observation(observation(flooder_tag))}
        for i in range(flood):  # valid requests, none of whose replies it reads
            flooder.send(protocol.pack_request(i, "infer", payload))
        # One request runs (held at the gate), 4 wait, every other one is refused.
        wait_until(lambda: server.stats()["busy_client_full"] == flood - 5, "the server has read the whole flood")
        assert policy.order == [flooder_tag] and server.stats()["queued"] == 4
        for n, thread in enumerate(robots.values(), start=1):  # one after the other, so their turns are known
            thread.start()
            wait_until(lambda: server.stats()["queued"] == 4 + n, f"robot {n}'s request is queued")
        policy.gate.set()
        for thread in robots.values():
            thread.join(60)
        replies = []
        for _ in range(flood):
            assert flooder.poll(10000), f"the flooder got {len(replies)} replies of {flood}"
            replies.append(msgpack.unpackb(flooder.recv_multipart()[-1], raw=False))
    finally:
        policy.gate.set()
        flooder.close()
    assert not errors, errors  # no busy (ServerError) and no timeout for the well-behaved robots
    assert sorted(results) == [2.0, 3.0]
    # Each robot waited behind one flood request, not behind the flooder's backlog (its last three ran after).
    assert policy.order == [flooder_tag, flooder_tag, 2.0, 3.0, flooder_tag, flooder_tag, flooder_tag], policy.order
    ok = [r for r in replies if r["ok"]]
    busy = [r for r in replies if not r["ok"]]
    assert len(ok) == 5 and len(busy) == flood - 5  # which 5 depends on when the gated call took the first
    assert {r["error"]["code"] for r in busy} == {protocol.E_BUSY} and "this client" in busy[0]["error"]["message"]
    stats = server.stats()
    assert stats["busy_queue_full"] == 0 and list(stats["busy_by_client"].values()) == [flood - 5], stats


FLOODER = """
import sys
import numpy as np
import zmq
from dit4dit.runtime import protocol

obs = {"images": {"head": np.zeros((32, 32, 3), np.uint8), "wrist": np.zeros((24, 24, 3), np.uint8)},
       "state": np.full(29, 1.0, np.float32), "instruction": "flood"}
payload = protocol.pack_request(1, "infer", {"observation": protocol.encode_observation(obs)})
sock = zmq.Context().socket(zmq.DEALER)
sock.setsockopt(zmq.LINGER, 0)
sock.connect(sys.argv[1])
while True:  # valid requests as fast as it can send them; never reads a reply
    sock.send(payload)
"""


def test_a_robot_is_served_while_another_process_floods_the_server(make_server) -> None:
    # The flood never ends while the robot works: a socket thread that read every waiting message before
    # sending the ready replies would hold the robot's reply until its timeout.
    server, endpoint = make_server(StandInPolicy(delay_s=0.001))
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, endpoint])
    try:
        wait_until(lambda: server.stats()["busy_client_full"] > 1000, "the flood is under way")
        refused_before = server.stats()["busy_client_full"]
        with PolicyClient(endpoint, timeout_s=30.0) as robot:
            for i in range(10):  # a busy reply would raise ServerError, a held one ServerTimeout
                out = robot.infer(observation(2.0), seed=i).actions
                np.testing.assert_allclose(out.mean(), 2.0, atol=0.1)
        assert flooder.poll() is None, "the flooder stopped early"
        stats = server.stats()
        assert stats["busy_client_full"] > refused_before, "the flood was not going on while the robot was served"
        assert stats["busy_queue_full"] == 0, stats
    finally:
        flooder.kill()
        flooder.wait(10)


def test_requests_past_their_deadline_are_not_run(make_server) -> None:
    policy = StandInPolicy(delay_s=0.4)
    _, endpoint = make_server(policy)
    slow_done = threading.Event()

    def occupy() -> None:
        with PolicyClient(endpoint, timeout_s=5.0) as c:
            c.infer(observation())
        slow_done.set()

    occupier = threading.Thread(target=occupy)
    occupier.start()
    time.sleep(0.1)  # the server is now busy for ~0.3 s more
    with PolicyClient(endpoint, timeout_s=0.1) as impatient:
        with pytest.raises(ServerTimeout):
            impatient.infer(observation())
    occupier.join(5)
    assert slow_done.is_set()
    time.sleep(0.2)
    assert policy.calls == 1, "the expired request was run anyway"


def test_address_in_use_is_a_clear_error(make_server, free_port: int) -> None:
    make_server()
    second = PolicyServer(StandInPolicy(), f"tcp://127.0.0.1:{free_port}")
    with pytest.raises(RuntimeError, match="another server"):
        second.start()
