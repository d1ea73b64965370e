"""G1Robot against ``dit4dit-sim`` in a separate process over real DDS on loopback: the same code
path as the real robot. The robot runs in its own spawned process (DDS is a per-process singleton)."""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dit4dit.drivers import g1_spec

pytest.importorskip("unitree_sdk2py")
pytest.importorskip("mujoco")

CTX = mp.get_context("spawn")
ARM = list(g1_spec.ARM_JOINTS)


def _another_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sim:
    def __init__(self, domain: int, camera_port: int, control_port: int, log: Path, mode_machine: int = 6) -> None:
        exe = shutil.which("dit4dit-sim")
        cmd = [exe] if exe else [sys.executable, "-m", "dit4dit.drivers.sim.cli"]
        cmd += ["--domain", str(domain), "--no-table", "--camera", "head:160x120@15", "--camera-port", str(camera_port),
                "--control-port", str(control_port), "--mode-machine", str(mode_machine)]  # fmt: skip
        self.control = f"tcp://127.0.0.1:{control_port}"
        self.camera = f"tcp://127.0.0.1:{camera_port}"
        self.log = log
        self._log_f = open(log, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
        self.proc = subprocess.Popen(cmd, stdout=self._log_f, stderr=subprocess.STDOUT, env=env)

    def request(self, cmd: str, **fields: Any) -> dict[str, Any]:
        from dit4dit.drivers.sim.bridge import control_request

        return control_request(self.control, cmd, **fields)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dit4dit-sim exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                self.request("ping", timeout_s=1.0)
                return
            except TimeoutError:
                time.sleep(0.2)
        raise RuntimeError(f"dit4dit-sim not ready in {timeout_s} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_f.close()


@pytest.fixture
def sim(dds_domain, free_port, tmp_path):
    s = Sim(dds_domain, free_port, _another_free_port(), tmp_path / "sim.log")
    try:
        s.wait_ready()
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


def _run(sim: Sim, domain: int, mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
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
