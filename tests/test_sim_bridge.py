"""dit4dit-sim in its own process, driven over real DDS on loopback by a test-side process that uses
unitree_sdk2py directly (the SDK's channel factory is a per-process singleton, so the client runs in a
spawned process of its own), plus the control socket and the camera stream over real ZeroMQ."""

from __future__ import annotations

import itertools
import math
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest
from dit4dit.drivers import g1_spec

from tests.sim_process import start_sim

pytest.importorskip("unitree_sdk2py")

CTX = mp.get_context("spawn")
ARM = list(g1_spec.ARM_JOINTS)
MODE_MACHINE = 6  # not the default 5, so a test sees the configured value, not a constant


@pytest.fixture
def sim(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--camera", "head:96x96@30")
    yield s
    assert s.stop() == 0, s.log.read_text()[-3000:]


# ---------------------------------------------------------------------------------------------
# The SDK-side client (runs in a spawned process)

ARM_TARGET = g1_spec.HOME_POSE.copy()
ARM_TARGET[g1_spec.joint_index("right_shoulder_roll_joint")] = -0.45
ARM_TARGET[g1_spec.joint_index("right_elbow_joint")] = 1.25
ARM_TARGET[g1_spec.joint_index("left_shoulder_roll_joint")] = 0.45
ARM_TARGET[g1_spec.joint_index("left_wrist_roll_joint")] = -0.3
ARM_TARGET[g1_spec.joint_index("waist_yaw_joint")] = 0.15


def _client(domain: int, script: str, out: Any) -> None:
    """Subscribe rt/lowstate and publish rt/lowcmd or rt/arm_sdk with the real SDK; report to the parent."""
    import threading

    from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelPublisher, ChannelSubscriber
    from unitree_sdk2py.idl.default import unitree_hg_msg_dds__LowCmd_
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_, LowState_
    from unitree_sdk2py.utils.crc import CRC

    res: dict[str, Any] = {}
    try:
        ChannelFactoryInitialize(domain, "lo")
        crc = CRC()
        lock = threading.Lock()
        log: list[tuple[int, bool, int, list[float], list[float], list[float], list[int], list[float]]] = []
        latest: dict[str, Any] = {}

        def on_state(msg: Any) -> None:
            q = [m.q for m in msg.motor_state[:29]]
            with lock:
                if len(log) < 400:
                    log.append((msg.tick, msg.crc == crc.Crc(msg), msg.mode_machine, list(msg.imu_state.quaternion),
                                list(msg.imu_state.rpy), list(msg.imu_state.accelerometer), list(msg.wireless_remote),
                                q))
                latest["q"] = np.array(q)
                latest["remote"] = list(msg.wireless_remote)

        sub = ChannelSubscriber(g1_spec.TOPIC_LOWSTATE, LowState_)
        sub.Init(on_state, 0)
        t0 = time.monotonic()
        while len(log) < 400 and time.monotonic() - t0 < 20:
            time.sleep(0.05)
        with lock:
            res["log"] = list(log)
        out.put(("stream", res["log"]))

        def q_now() -> np.ndarray:
            with lock:
                return latest["q"].copy()

        kp, kd = g1_spec.gains_array()
        kp[ARM], kd[ARM] = 200.0, 4.0  # stiff arms: gravity sag well inside the tolerance

        def lowcmd(q: np.ndarray, *, mode_machine: int, good_crc: bool = True, weight: float | None = None) -> Any:
            cmd = unitree_hg_msg_dds__LowCmd_()
            cmd.mode_pr, cmd.mode_machine = 0, mode_machine
            for i in range(29):
                m = cmd.motor_cmd[i]
                m.mode, m.q, m.dq, m.kp, m.kd, m.tau = 1, float(q[i]), 0.0, float(kp[i]), float(kd[i]), 0.0
            if weight is not None:
                cmd.motor_cmd[g1_spec.ARM_SDK_WEIGHT_SLOT].q = weight
            cmd.crc = crc.Crc(cmd) if good_crc else 0xDEADBEEF
            return cmd

        def stream(pub: Any, make: Any, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pub.Write(make())
                time.sleep(0.004)

        def wait_for(pred: Any, seconds: float) -> bool:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                if pred():
                    return True
                time.sleep(0.05)
            return pred()

        if script == "lowcmd":
            pub = ChannelPublisher(g1_spec.TOPIC_LOWCMD, LowCmd_)
            pub.Init()
            # 1) a command with another mode_machine is ignored (as the robot does)
            stream(pub, lambda: lowcmd(ARM_TARGET, mode_machine=MODE_MACHINE - 1), 0.6)
            res["q_after_bad_mode_machine"] = q_now().tolist()
            # 2) a command with a bad CRC is ignored
            stream(pub, lambda: lowcmd(ARM_TARGET, mode_machine=MODE_MACHINE, good_crc=False), 0.6)
            res["q_after_bad_crc"] = q_now().tolist()
            out.put(("ignored", None))
            # 3) a good command reaches the pose (keep publishing, as a controller does, until it settles)
            end = time.monotonic() + 10
            while time.monotonic() < end:
                stream(pub, lambda: lowcmd(ARM_TARGET, mode_machine=MODE_MACHINE), 0.2)
                if np.abs(q_now() - ARM_TARGET)[ARM].max() < 0.03:
                    break
            res["q_final"] = q_now().tolist()
        elif script == "arm_sdk":
            pub = ChannelPublisher(g1_spec.TOPIC_ARM_SDK, LowCmd_)
            pub.Init()
            for w in (0.5, 1.0, 0.0):
                # the arm_sdk gains are the stand controller's, so weight w settles at w of the way
                kp_s, kd_s = g1_spec.gains_array()
                kp[:], kd[:] = kp_s, kd_s
                def send(w: float = w) -> Any:
                    return lowcmd(ARM_TARGET, mode_machine=0, good_crc=False, weight=w)

                stream(pub, send, 1.5)  # the new weight has arrived and the arm is on its way
                end = time.monotonic() + 10
                prev = q_now()
                while time.monotonic() < end:
                    stream(pub, send, 0.3)
                    cur = q_now()
                    if np.abs(cur - prev)[ARM].max() < 0.002:  # settled
                        break
                    prev = cur
                res[f"q_w{w}"] = q_now().tolist()
        elif script == "hands":
            from dit4dit.drivers.hands import pack_mode
            from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandCmd_
            from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_, HandState_

            hand_q: dict[str, np.ndarray] = {}

            def on_hand(side: str, msg: Any) -> None:
                with lock:
                    hand_q[side] = np.array([m.q for m in msg.motor_state[:7]])

            subs = []
            for side in ("left", "right"):
                hs = ChannelSubscriber(g1_spec.TOPIC_DEX3_STATE.format(side=side), HandState_)
                hs.Init(lambda m, side=side: on_hand(side, m), 0)
                subs.append(hs)
            pub = ChannelPublisher(g1_spec.TOPIC_DEX3_CMD.format(side="right"), HandCmd_)
            pub.Init()
            target = g1_spec.DEX3_UPPER["right"] * 0.8
            end = time.monotonic() + 10
            while time.monotonic() < end:
                cmd = unitree_hg_msg_dds__HandCmd_()
                for i, m in enumerate(cmd.motor_cmd):
                    m.mode, m.q, m.kp, m.kd = pack_mode(i), float(target[i]), 1.5, 0.1
                pub.Write(cmd)
                time.sleep(0.01)
                with lock:
                    if "right" in hand_q and np.abs(hand_q["right"] - target).max() < 0.05:
                        break
            with lock:
                res["hand_q"] = {k: v.tolist() for k, v in hand_q.items()}
            res["hand_target"] = target.tolist()
        out.put(("done", res))
    except Exception as e:  # noqa: BLE001 - reported to the parent
        res["error"] = f"{type(e).__name__}: {e}"
        out.put(("done", res))


def run_client(domain: int, script: str, on_message: Any = None, timeout_s: float = 120.0) -> dict[str, Any]:
    out = CTX.Queue()
    p = CTX.Process(target=_client, args=(domain, script, out), daemon=True)
    p.start()
    try:
        msgs: dict[str, Any] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            kind, payload = out.get(timeout=max(1.0, deadline - time.monotonic()))
            msgs[kind] = payload
            if on_message is not None:
                on_message(kind, payload)
            if kind == "done":
                assert "error" not in payload, payload["error"]
                return {**payload, **{k: v for k, v in msgs.items() if k != "done"}}
        raise TimeoutError(f"SDK client {script!r} did not finish in {timeout_s} s")
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(2)


# ---------------------------------------------------------------------------------------------
# Tests


def test_lowstate_stream_remote_and_lowcmd_pose(sim, dds_domain):
    from dit4dit.drivers.remote import Remote

    sim.request("remote", buttons=["L2", "B"], sticks={"ly": 0.5, "rx": -0.25})
    checked: dict[str, Any] = {}

    def on_message(kind: str, payload: Any) -> None:
        if kind == "ignored":  # the client streamed bad commands: the sim counted and ignored them
            checked["stats"] = sim.request("state")["stats"]

    res = run_client(dds_domain, "lowcmd", on_message)
    log = res["stream"]
    assert len(log) == 400
    ticks = [e[0] for e in log]
    assert all(b > a for a, b in itertools.pairwise(ticks)), "tick must increase"
    assert all(e[1] for e in log), "every rt/lowstate carries a valid CRC"
    assert {e[2] for e in log} == {MODE_MACHINE}
    for _, _, _, quat, rpy, acc, remote, q in log[-5:]:
        w, x, y, z = quat
        assert math.isclose(w * w + x * x + y * y + z * z, 1.0, abs_tol=1e-4)
        roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
        pitch = math.asin(2 * (w * y - z * x))
        assert rpy[0] == pytest.approx(roll, abs=1e-5) and rpy[1] == pytest.approx(pitch, abs=1e-5)
        assert np.linalg.norm(acc) == pytest.approx(9.81, abs=0.2)  # standing still on the gantry
        r = Remote.parse(remote)
        assert r.buttons == {"L2", "B"} and r.ly == 0.5 and r.rx == -0.25
        np.testing.assert_allclose(q, g1_spec.HOME_POSE, atol=0.06)  # the built-in stand controller holds
    # Ignored commands left the robot at the stand pose.
    np.testing.assert_allclose(np.array(res["q_after_bad_mode_machine"])[ARM], g1_spec.HOME_POSE[ARM], atol=0.06)
    np.testing.assert_allclose(np.array(res["q_after_bad_crc"])[ARM], g1_spec.HOME_POSE[ARM], atol=0.06)
    assert checked["stats"]["lowcmd_bad_mode_machine"] > 10 and checked["stats"]["lowcmd_bad_crc"] > 10
    # The good command reached the pose.
    np.testing.assert_allclose(np.array(res["q_final"])[ARM], ARM_TARGET[ARM], atol=0.03)
    state = sim.request("state")
    assert state["command"] == "lowcmd"
    np.testing.assert_allclose(np.array(state["q"])[ARM], ARM_TARGET[ARM], atol=0.03)


def test_arm_sdk_weight_blends(sim, dds_domain):
    res = run_client(dds_domain, "arm_sdk")
    home, target = g1_spec.HOME_POSE[ARM], ARM_TARGET[ARM]
    moved = np.abs(target - home) > 0.1  # joints the target moves
    q_half, q_full, q_zero = (np.array(res[k])[ARM] for k in ("q_w0.5", "q_w1.0", "q_w0.0"))
    # weight 1: the arm_sdk target; weight 0: back to the stand pose; 0.5: halfway (same gains both sides)
    np.testing.assert_allclose(q_full[moved], target[moved], atol=0.06)
    np.testing.assert_allclose(q_zero[moved], home[moved], atol=0.06)
    np.testing.assert_allclose(q_half[moved], (home[moved] + target[moved]) / 2, atol=0.06)


def test_control_socket_reset_task_and_errors(sim):
    a = sim.request("reset", seed=11)["objects"]
    b = sim.request("reset", seed=11)["objects"]
    c = sim.request("reset", seed=12)["objects"]
    assert a["red_block"]["pos"] == pytest.approx(b["red_block"]["pos"], abs=1e-3)
    assert a["red_block"]["pos"] != pytest.approx(c["red_block"]["pos"], abs=1e-3)
    ts = sim.request("task_state")
    assert ts["task"] is None and ts["success"] is None
    pytest.importorskip("dit4dit.drivers.sim.tasks")
    sim.request("reset", seed=2, task="reach_red")
    ts = sim.request("task_state")
    assert ts["task"] == "reach_red" and ts["success"] is False
    state = sim.request("state")
    assert set(state["ee"]) == {"left", "right"} and len(state["ee"]["right"]) == 4
    info = sim.request("camera_info", camera="head")
    assert info["width"] == 96 and np.array(info["K"]).shape == (3, 3)
    for bad, match in (({"cmd": "fly"}, "unknown command"), ({"cmd": "reset", "task": "nope"}, "unknown task"),
                       ({"cmd": "remote", "buttons": ["Z"]}, "unknown remote key"),
                       ({"cmd": "remote", "sticks": {"ly": 3}}, "in \\[-1, 1\\]"),
                       ({"cmd": "set_latency", "seconds": -1}, "latency")):
        with pytest.raises(RuntimeError, match=match):
            sim.request(**bad)
    assert sim.request("ping")["sim_time"] > 0  # still serving after the errors


def test_camera_stream_frames_and_injected_latency(sim):
    """Frames carry increasing ids and stamps; with latency L a scene change shows up L later."""
    from dit4dit.drivers.cameras import SimCameraConfig, make_camera

    home = sim.request("reset")["objects"]["red_block"]["pos"]  # default layout: in the head camera's view

    def red_visible(img: np.ndarray) -> bool:
        r, g, b = (img[..., i].astype(int) for i in range(3))
        return int(((r > 80) & (r > 2 * g) & (r > 2 * b)).sum()) > 10  # strict: JPEG fringes are not a block

    def delay_of_removal(cam: Any) -> float:
        sim.request("set_object_pose", name="red_block", pos=home)
        end = time.monotonic() + 5
        while not red_visible(cam.read_new(timeout_s=2.0).image):
            assert time.monotonic() < end, "the red block never showed up"
        t_move = time.monotonic()
        sim.request("set_object_pose", name="red_block", pos=[home[0], 5.0, home[2]])  # out of view
        while True:
            f = cam.read_new(timeout_s=2.0)
            if not red_visible(f.image):
                return f.stamp - t_move
            assert time.monotonic() - t_move < 5, "the block never left the view"

    cam = make_camera(SimCameraConfig(name="head", endpoint=sim.camera, width=96, height=96, connect_timeout_s=20))
    with cam:
        f1, f2 = cam.read_new(timeout_s=2.0), cam.read_new(timeout_s=2.0)
        assert f2.frame_id > f1.frame_id and f2.stamp > f1.stamp
        assert f2.device_stamp > f1.device_stamp  # sim time of the render
        d0 = delay_of_removal(cam)
        sim.request("set_latency", seconds=0.4)
        d1 = delay_of_removal(cam)
        sim.request("set_latency", seconds=0.0)
    assert d0 < 0.25, d0  # one frame period plus rendering
    assert 0.4 <= d1 < 0.4 + 0.25, d1


def test_lowstate_bytes_equal_the_sdk_serializer():
    """The fast rt/lowstate path emits exactly what LowState_.serialize() would, with the SDK's CRC."""
    from dit4dit.drivers.remote import Remote
    from dit4dit.drivers.hg_codec import LowStateRecord
    from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_
    from unitree_sdk2py.utils.crc import CRC

    rng = np.random.default_rng(1)
    rec = LowStateRecord(mode_machine=MODE_MACHINE)
    rec.fill(q=rng.normal(size=29), dq=rng.normal(size=29), ddq=rng.normal(size=29), tau=rng.normal(size=29),
             quaternion=[0.9, 0.1, 0.2, 0.3], rpy=[0.1, -0.2, 0.3], gyroscope=[1, 2, 3], accelerometer=[0, 0.1, 9.8],
             tick=987654, wireless_remote=Remote.from_buttons(["A"], lx=0.3).pack(), temperature=30, voltage=48.0,
             imu_temperature=31)
    sample = rec.serialize()
    msg = LowState_.deserialize(sample)
    assert msg.serialize() == sample
    assert msg.crc == CRC().Crc(msg)
    assert msg.tick == 987654 and msg.mode_machine == MODE_MACHINE and msg.imu_state.temperature == 31
    assert msg.motor_state[0].q == pytest.approx(rec.rec["motor_state"]["q"][0])
    assert msg.motor_state[28].temperature == [30, 30] and msg.motor_state[29].mode == 0
    assert Remote.parse(msg.wireless_remote).pressed("A")


def test_reference_mjcf_runs_behind_the_same_bridge(shared_dir, dds_domain, free_port, tmp_path):
    """Unitree's full mesh G1 MJCF, joints matched by name, behind the same DDS bridge."""
    model = shared_dir / "reference/unitree_g1_mujoco/g1_29dof.xml"
    s = start_sim(dds_domain, free_port, tmp_path, "--model", str(model), "--no-cameras")
    try:
        res = run_client(dds_domain, "lowcmd")
        assert all(e[1] for e in res["stream"]) and {e[2] for e in res["stream"]} == {MODE_MACHINE}
        np.testing.assert_allclose(np.array(res["q_final"])[ARM], ARM_TARGET[ARM], atol=0.03)
    finally:
        assert s.stop() == 0, s.log.read_text()[-3000:]


def test_dex3_hands_over_dds(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--hands", "--no-table", "--no-cameras")
    try:
        res = run_client(dds_domain, "hands")
        assert set(res["hand_q"]) == {"left", "right"}  # both rt/dex3/*/state are published
        np.testing.assert_allclose(res["hand_q"]["right"], res["hand_target"], atol=0.05)
        stats = s.request("state")["stats"]
        assert stats["hand_cmd_received"] > 0 and stats["hand_state_published"] > 0
    finally:
        assert s.stop() == 0, s.log.read_text()[-3000:]


def test_cli_help_and_clear_errors(tmp_path, dds_domain):
    run = lambda *a: subprocess.run([sys.executable, "-m", "dit4dit.drivers.sim.cli", "--domain", str(dds_domain), *a],
                                    capture_output=True, text=True, timeout=120, check=False,
                                    env={k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")})
    h = run("--help")
    assert h.returncode == 0
    for word in ("rt/lowcmd", "rt/arm_sdk", "rt/lowstate", "--model", "--viewer", "--camera", "set_latency"):
        assert word in h.stdout, word
    v = run("--viewer")
    assert v.returncode == 2 and "needs a display" in v.stderr
    c = run("--camera", "head:640by480")
    assert c.returncode == 2 and "NAME[:WIDTHxHEIGHT][@FPS]" in c.stderr
    m = run("--model", str(tmp_path / "none.xml"), "--control-port", "0", "--no-cameras")
    assert m.returncode == 2 and "does not exist" in m.stderr
    p = run("--props", "nope", "--control-port", "0", "--no-cameras")
    assert p.returncode == 2 and "unknown scene addition 'nope'" in p.stderr
    from dit4dit.drivers.sim import g1_model

    h = run("--hands", "--model", str(g1_model.MODEL_PATH), "--control-port", "0", "--no-cameras")
    assert h.returncode == 2 and "has no Dex3 hands" in h.stderr
    with socket.socket() as busy:  # a port someone else holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        b = run("--no-cameras", "--control-port", port)
        assert b.returncode == 2 and "cannot bind" in b.stderr and "--control-port" in b.stderr
        b = run("--camera-port", port, "--control-port", "0")
        assert b.returncode == 2 and "cannot bind" in b.stderr


def test_keyboard_toggles_remote_keys(dds_domain, free_port, tmp_path):
    """--keyboard on a real terminal (a pty): '2' then 'b' holds L2+B in rt/lowstate, space releases all."""
    import pty

    from dit4dit.drivers.remote import Remote
    from dit4dit.drivers.sim.bridge import control_request, wait_for_sim

    master, slave = pty.openpty()
    log = open(tmp_path / "kbd.log", "w")  # noqa: SIM115 - closed below
    cmd = [sys.executable, "-m", "dit4dit.drivers.sim.cli", "--domain", str(dds_domain), "--control-port",
           str(free_port), "--no-cameras", "--no-table", "--keyboard"]
    proc = subprocess.Popen(cmd, stdin=slave, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")})
    os.close(slave)
    addr = f"tcp://127.0.0.1:{free_port}"
    try:
        try:
            wait_for_sim(addr, alive=lambda: proc.poll() is None)
        except RuntimeError as e:
            raise AssertionError(f"{e}: {(tmp_path / 'kbd.log').read_text()}") from None

        def press_and_read(keys: bytes, expect: set[str]) -> set[str]:
            """Type keys, then poll rt/lowstate's remote (via the control socket) until it shows `expect`."""
            os.write(master, keys)
            end = time.monotonic() + 5
            while True:
                held = set(Remote.parse(control_request(addr, "state")["remote"]).buttons)
                if held == expect or time.monotonic() > end:
                    return held
                time.sleep(0.05)

        assert press_and_read(b"2", {"L2"}) == {"L2"}
        assert press_and_read(b"b", {"L2", "B"}) == {"L2", "B"}
        assert press_and_read(b"2", {"B"}) == {"B"}  # a second press releases that key
        assert press_and_read(b" ", set()) == set()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        os.close(master)
        log.close()
