"""G1Robot against ``dit4dit-sim`` in a separate process over real DDS on loopback: the same code
path as the real robot. The robot runs in its own spawned process (DDS is a per-process singleton)."""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pytest
from dit4dit.drivers import g1_spec

from tests.sim_process import SimProcess, start_sim

pytest.importorskip("unitree_sdk2py")
pytest.importorskip("mujoco")

CTX = mp.get_context("spawn")
ARM = list(g1_spec.ARM_JOINTS)


@pytest.fixture
def sim(dds_domain, free_port, tmp_path):
    s = start_sim(dds_domain, free_port, tmp_path, "--no-table", "--camera", "head:160x120@15")
    try:
        yield s
    finally:
        s.stop()


def drive_arms(domain: int, mode: str, arm_offset: float, out: Any) -> None:
    """Robot process: connect, ramp the arms from the measured pose to home + offset, hold, report."""
    from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig

    res: dict[str, Any] = {}
    try:
        robot = G1Robot(G1RobotConfig(interface="lo", domain=domain, mode=mode, arm_sdk_weight_rate=2.0))
        robot.connect(timeout_s=20.0)
        st0 = robot.state()
        res.update(mode_machine=robot.mode_machine, tick0=st0.tick, remote=sorted(st0.remote.buttons),
                   sticks=[st0.remote.lx, st0.remote.ly])  # fmt: skip
        kp, kd = g1_spec.gains_array()
        target = st0.q.copy()
        target[ARM] = g1_spec.HOME_POSE[ARM] + arm_offset
        t0 = time.monotonic()
        while (a := (time.monotonic() - t0) / 1.0) < 1.0:  # 1 s linear ramp from the measured pose
            robot.command(st0.q + (target - st0.q) * a, kp, kd)
            time.sleep(0.01)
        robot.command(target, kp, kd)
        # Hold until the arm settles (the simulator may run slower than real time on a loaded machine).
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            time.sleep(0.25)
            st = robot.state()
            if np.abs(st.q - target)[ARM].max() < 0.05 and np.abs(st.dq[ARM]).max() < 0.05:
                break
        st = robot.state()
        res.update(q=st.q.tolist(), target=target.tolist(), tick1=st.tick, age=st.age_s, stats=robot.stats,
                   weight=robot.arm_sdk_weight)  # fmt: skip
        out.put(("holding", None))
        time.sleep(0.3)  # the parent reads the simulator's state while we hold
        robot.disconnect()
    except Exception as e:  # noqa: BLE001 - reported to the parent
        res["error"] = f"{type(e).__name__}: {e}"
    out.put(("done", res))


def _run(sim: SimProcess, domain: int, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    out = CTX.Queue()
    p = CTX.Process(target=drive_arms, args=(domain, mode, 0.15, out))
    p.start()
    try:
        kind, res = out.get(timeout=90)
        sim_state: dict[str, Any] = {}
        if kind == "holding":
            sim_state = sim.request("state")
            kind, res = out.get(timeout=30)
        return res, sim_state
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()
            p.join(2)


def test_lowcmd_against_dit4dit_sim(sim, dds_domain):
    # A scripted remote in the simulator must arrive parsed in the robot's state.
    sim.request("remote", buttons=["L2", "B"], sticks={"ly": 0.5, "rx": -0.25})
    res, sim_state = _run(sim, dds_domain, "lowcmd")
    assert "error" not in res, res
    assert res["mode_machine"] == 6  # latched from the simulator's rt/lowstate
    assert res["remote"] == ["B", "L2"] and res["sticks"] == [0.0, 0.5]
    assert res["tick1"] > res["tick0"] and res["age"] < 0.1
    err = np.abs(np.array(res["q"]) - np.array(res["target"]))[ARM]
    assert err.max() < 0.06, err  # stand gains against gravity: a few centiradians of sag at most
    assert res["stats"]["crc_errors"] == 0
    stats = sim_state["stats"]
    assert stats["lowcmd_received"] > 200
    assert stats["lowcmd_bad_crc"] == 0 and stats["lowcmd_bad_mode_machine"] == 0
    assert sim_state["command"] in ("lowcmd", "rt/lowcmd")


def test_sim_camera_reads_the_simulator_stream(sim):
    from dit4dit.drivers.cameras import SimCameraConfig, make_camera

    cam = make_camera(SimCameraConfig(name="head", endpoint=sim.camera, width=160, height=120, connect_timeout_s=20))
    with cam:
        f1 = cam.read_new(timeout_s=2.0)
        f2 = cam.read_new(timeout_s=2.0)
    assert f1.image.shape == (120, 160, 3) and f2.frame_id > f1.frame_id
    assert f1.image.std() > 5  # a rendered scene, not a blank buffer


def test_arm_sdk_against_dit4dit_sim(sim, dds_domain):
    res, sim_state = _run(sim, dds_domain, "arm_sdk")
    assert "error" not in res, res
    assert res["weight"] == pytest.approx(1.0)
    err = np.abs(np.array(res["q"]) - np.array(res["target"]))[ARM]
    assert err.max() < 0.06, err
    assert sim_state["arm_sdk_weight"] == pytest.approx(1.0)
    assert sim_state["stats"]["arm_sdk_received"] > 200
