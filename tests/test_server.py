"""dit4dit-serve as a real subprocess with a real (random, tiny) checkpoint and the real Policy, over real sockets."""

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
from dit4dit.runtime import server as server_module
from dit4dit.runtime.client import PolicyClient, ServerError, ServerTimeout
from server_harness import ServerProcess

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dit4dit.policy.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "g1.pt", "tiny")


@pytest.fixture
def serve(ckpt: Path, free_port: int) -> Iterator:
    started: list[ServerProcess] = []
    endpoint = f"tcp://127.0.0.1:{free_port}"

    def start(*extra: str) -> tuple[ServerProcess, str]:
        server = ServerProcess(["--ckpt", str(ckpt), "--bind", endpoint, "--device", "cpu", *extra])
        started.append(server)
        return server, endpoint

    yield start
    for server in started:
        server.close()


def observation(meta: dict, value: float = 0.0) -> dict:
    cam = next(iter(meta["cameras"]))
    rng = np.random.default_rng(int(value * 10))
    return {
        "images": {cam: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)},  # any size: the policy resizes
        "state": np.asarray(meta["normalization"]["state"]["mean"], np.float32) + value * 0.01,
        "instruction": "pick up the red block",
    }


def test_serves_the_real_policy_and_matches_it_in_process(serve, ckpt: Path) -> None:
    from dit4dit.policy.inference import Policy

    server, endpoint = serve("--max-batch", "1")
    assert "backend torch on cpu" in server.banner
    with PolicyClient(endpoint, timeout_s=10.0) as client:
        meta = client.metadata()
        assert meta["chunk_length"] == 8 and len(meta["action_names"]) == 14
        obs = observation(meta, 1.0)
        result = client.infer(obs, seed=123)
        assert result.actions.shape == (8, 14) and result.actions.dtype == np.float32
        parts = ("queue", "decode", "preprocess", "features", "sample", "encode")
        assert set(parts) | {"inference", "batch", "total"} <= set(result.timing)
        t = result.timing
        assert all(t[k] >= 0 for k in parts) and t["features"] > 0 and t["sample"] > 0 and t["decode"] > 0
        assert t["inference"] == pytest.approx(t["features"] + t["sample"])
        assert t["total"] >= sum(t[k] for k in parts) * 0.999  # the parts do not overlap
        # The same seed through the wire gives exactly what the Policy gives in-process with that noise.
        local = Policy.from_checkpoint(ckpt)
        noise = np.random.default_rng(123).standard_normal((8, 14)).astype(np.float32)
        np.testing.assert_allclose(result.actions, local.infer(obs, noise=noise), atol=1e-5)
        # Previous chunk with 3 executing steps: those come back exactly.
        prev = result.actions + 0.05
        blended = client.infer(obs, seed=124, prefix=prev, n_executing=3).actions
        np.testing.assert_array_equal(blended[:3], prev[:3])
        np.testing.assert_allclose(blended, local.infer(obs, noise=np.random.default_rng(124).standard_normal((8, 14)).astype(np.float32),
                                                        prefix=(prev, 3)), atol=1e-5)


def test_concurrent_robots_hostile_messages_and_token(serve) -> None:
    _, endpoint = serve("--token", TOKEN, "--max-batch", "4")
    with PolicyClient(endpoint, timeout_s=10.0, token=TOKEN) as client:
        meta = client.metadata()
        expected = {i: client.infer(observation(meta, i), seed=i).actions for i in range(3)}
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(3)}
    errors: list[BaseException] = []
    stop = threading.Event()

    def robot(i: int) -> None:
        try:
            with PolicyClient(endpoint, timeout_s=10.0, token=TOKEN) as c:
                while not stop.is_set() or len(results[i]) < 3:
                    results[i].append(c.infer(observation(meta, i), seed=i).actions)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=robot, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    ctx = zmq.Context.instance()
    good = protocol.encode_observation(observation(meta))
    gb = {"nd": True, "dtype": "<f4", "shape": [1024, 1024, 256], "data": b"\0" * 64}
    cam = next(iter(meta["cameras"]))
    hostile = [
        (protocol.pack_request(1, "infer", {"observation": good}, TOKEN)[:57], "malformed", ""),
        (protocol.pack_request(2, "infer", {"observation": {**good, "images": {cam: gb}}}, TOKEN), "too_large", f"observation.images.{cam}"),
        (protocol.pack_request(3, "infer", {"observation": {**good, "images": {"left_wrist": good["images"][cam]}}}, TOKEN), "invalid", "observation.images.left_wrist"),
        (protocol.pack_request(4, "infer", {"observation": {**good, "state": protocol.encode_array(np.zeros(14, np.int64))}}, TOKEN), "invalid", "observation.state"),
        (protocol.pack_request(5, "infer", {"observation": {**good, "state": protocol.encode_array(np.zeros(29, np.float32))}}, TOKEN), "invalid", "observation.state"),
        (protocol.pack_request(6, "shutdown", {}, TOKEN), "unknown_endpoint", "endpoint"),
        (protocol.pack_request(7, "infer", {"observation": good}, "wrong-token"), "unauthorized", "token"),
        (protocol.pack_request(8, "ping", {}), "unauthorized", "token"),
    ]
    try:
        for payload, code, field in hostile:
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            sock.send(payload)
            assert sock.poll(10000), f"no reply to a {code} message"
            reply = msgpack.unpackb(sock.recv_multipart()[-1], raw=False)
            sock.close()
            assert reply["ok"] is False and reply["error"]["code"] == code and reply["error"]["field"] == field, reply
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors
    for i, chunks in results.items():
        assert len(chunks) >= 3
        for chunk in chunks:  # every robot got its own, correct answer, batched or not
            np.testing.assert_allclose(chunk, expected[i], atol=1e-5)


def test_client_reconnects_after_the_server_is_killed_and_restarted(serve) -> None:
    server, endpoint = serve()
    with PolicyClient(endpoint, timeout_s=1.0) as client:
        meta = client.metadata()
        before = client.infer(observation(meta), seed=9).actions
        server.proc.kill()  # no goodbye: as if the GPU box lost power
        server.proc.wait(10)
        with pytest.raises(ServerTimeout):
            client.infer(observation(meta), seed=9)
        serve()  # same port
        deadline = time.monotonic() + 60
        while True:
            try:
                after = client.infer(observation(meta), seed=9).actions
                break
            except ServerTimeout:
                assert time.monotonic() < deadline, "client never reconnected to the restarted server"
        np.testing.assert_allclose(after, before, atol=1e-5)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "dit4dit.runtime.server", "--ckpt", str(tmp_path / "nope.pt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "does not exist" in proc.stderr


def test_backend_that_cannot_run_is_refused_with_the_reason(ckpt: Path, free_port: int) -> None:
    proc = subprocess.run([sys.executable, "-m", "dit4dit.runtime.server", "--ckpt", str(ckpt), "--device", "cpu",
                           "--backend", "tensorrt", "--bind", f"tcp://127.0.0.1:{free_port}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "tensorrt backend needs --device cuda" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "dit4dit.runtime.server", "--ckpt", str(ckpt), "--device", "cpu",
                           "--backend", "compiled", "--bind", f"tcp://127.0.0.1:{free_port}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "not offered on cpu" in proc.stderr and "bench/RESULTS.md" in proc.stderr


def test_server_error_names_policy_field(serve) -> None:
    _, endpoint = serve()
    with PolicyClient(endpoint, timeout_s=10.0) as client:
        meta = client.metadata()
        obs = observation(meta)
        cam = next(iter(meta["cameras"]))
        obs["images"][cam] = np.zeros((4, 4, 3), np.uint8)  # passes the wire checks, refused by the Policy
        with pytest.raises(ServerError) as exc:
            client.infer(obs)
        assert exc.value.field == f"observation.images.{cam}" and "pixels" in exc.value.detail
        assert client.infer(observation(meta)).actions.shape == (8, 14)


def server_stats(endpoint: str) -> dict:
    """The server's counters, from its `metadata` reply (server.stats)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(protocol.pack_request(1, "metadata"))
        assert sock.poll(10000), "no reply to metadata"
        return msgpack.unpackb(sock.recv_multipart()[-1], raw=False)["data"]["server"]["stats"]
    finally:
        sock.close()


def test_absurd_state_or_prefix_is_refused_naming_the_field_and_the_trained_range(serve) -> None:
    # The tiny model turns a state of 1e20 or more into a chunk of NaN; the server must refuse such input.
    _, endpoint = serve("--max-batch", "1")
    with PolicyClient(endpoint, timeout_s=10.0) as client:
        meta = client.metadata()
        norm = meta["normalization"]
        obs = observation(meta)
        chunk = np.tile(np.asarray(norm["action"]["mean"], np.float32), (meta["chunk_length"], 1))
        f32_max = float(np.finfo(np.float32).max)
        cases = []
        for value in (1e30, f32_max, -f32_max):
            state = obs["state"].copy()
            state[3] = value
            cases.append(({**obs, "state": state}, None, "observation.state", "state", 3))
            prefix = chunk.copy()
            prefix[2:, 5] = value  # the previous chunk's tail holds the absurd values
            cases.append((obs, prefix, "prefix", "action", 5))
        for case_obs, prefix, field, kind, joint in cases:
            with pytest.raises(ServerError) as exc:  # an error, never a chunk
                client.infer(case_obs, seed=1, prefix=prefix, n_executing=0 if prefix is None else 2)
            err = exc.value
            assert err.code == protocol.E_OUT_OF_RANGE and err.field == field, err
            mean, std = norm[kind]["mean"][joint], norm[kind]["std"][joint]
            assert meta[f"{kind}_names"][joint] in err.detail and f"{mean:.6g} ± {std:.6g} (mean ± std)" in err.detail, err
        # Far from the data but inside the bound: served, and finite.
        near = obs["state"] + 0.9 * server_module.MAX_DEVIATION_STD * np.asarray(norm["state"]["std"], np.float32)
        assert np.isfinite(client.infer({**obs, "state": near}, seed=1).actions).all()
        assert np.isfinite(client.infer(obs, seed=1).actions).all()
    stats = server_stats(endpoint)
    assert stats["out_of_range"] == len(cases) and stats["non_finite"] == 0 and stats["served"] == 2, stats


def test_profile_writes_a_torch_trace_of_the_first_requests(ckpt: Path, free_port: int, tmp_path: Path) -> None:
    import json

    endpoint = f"tcp://127.0.0.1:{free_port}"
    folder = tmp_path / "profile"
    server = ServerProcess(["--ckpt", str(ckpt), "--bind", endpoint, "--device", "cpu", "--max-batch", "1",
                            "--profile", str(folder), "--profile-requests", "3"])
    try:
        with PolicyClient(endpoint, timeout_s=30.0) as client:
            obs = observation(client.metadata())
            for i in range(4):
                client.infer(obs, seed=i)
        deadline = time.monotonic() + 30
        while not (folder / "summary.txt").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        trace = json.loads((folder / "trace.json").read_text())
        names = {e.get("name", "") for e in trace["traceEvents"]}
        assert any(n.startswith("aten::") for n in names)  # the policy's operators, recorded in the inference thread
        assert "wrote the profile of 3 policy calls" in "".join(server.lines)
        assert "Self CPU" in (folder / "summary.txt").read_text()
    finally:
        server.close()
