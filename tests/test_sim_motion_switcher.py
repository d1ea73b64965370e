"""Unitree's own SDK code against dit4dit-sim: the MotionSwitcher answer a low-level program waits for.

The client below makes the calls Unitree's low-level G1 example (unitree_sdk2_python,
example/g1/low_level) makes, in its order and with the SDK's own classes: MotionSwitcherClient
CheckMode until no mode is active (ReleaseMode otherwise), then rt/lowcmd with the SDK's CRC from a
RecurrentThread, mode_machine copied from rt/lowstate. Only the domain and the interface differ.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim.bridge import control_request
from tests.robot_rig import Proc

pytest.importorskip("unitree_sdk2py")

CLIENT = r"""
import json, sys, time
from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelPublisher, ChannelSubscriber
from unitree_sdk2py.comm.motion_switcher.motion_switcher_client import MotionSwitcherClient
from unitree_sdk2py.idl.default import unitree_hg_msg_dds__LowCmd_
from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_, LowState_
from unitree_sdk2py.utils.crc import CRC
from unitree_sdk2py.utils.thread import RecurrentThread

ChannelFactoryInitialize(int(sys.argv[1]), "lo")
msc = MotionSwitcherClient()
msc.SetTimeout(5.0)
msc.Init()
code, result = msc.CheckMode()
checks = [(code, result)]
while result["name"]:  # the example's loop: a TypeError here if the service does not answer
    msc.ReleaseMode()
    code, result = msc.CheckMode()
    checks.append((code, result))
release = msc.ReleaseMode()
select = msc.SelectMode("ai")

state = {}
def on_state(msg):
    state.setdefault("mode_machine", msg.mode_machine)
    state["q"] = [m.q for m in msg.motor_state[:29]]
sub = ChannelSubscriber("rt/lowstate", LowState_)
sub.Init(on_state, 10)
pub = ChannelPublisher("rt/lowcmd", LowCmd_)
pub.Init()
while "mode_machine" not in state:
    time.sleep(0.01)
cmd = unitree_hg_msg_dds__LowCmd_()
crc = CRC()
q0 = list(state["q"])
target = float(sys.argv[2])
t0 = time.monotonic()
def write():
    ratio = min(1.0, (time.monotonic() - t0) / 1.0)
    cmd.mode_pr = 0
    cmd.mode_machine = state["mode_machine"]
    for i in range(29):
        m = cmd.motor_cmd[i]
        m.mode, m.dq, m.tau, m.kp, m.kd = 1, 0.0, 0.0, 60.0, 1.5
        m.q = q0[i] + (ratio * (target - q0[i]) if i == 25 else 0.0)
    cmd.crc = crc.Crc(cmd)
    pub.Write(cmd)
thread = RecurrentThread(interval=0.002, target=write, name="control")
thread.Start()
time.sleep(2.5)
print(json.dumps({"checks": checks, "release": release[0], "select": select[0], "mode_machine": state["mode_machine"]}),
      flush=True)
"""


def test_unitree_sdk_low_level_client_runs_against_the_sim(tmp_path, dds_domain, free_port) -> None:
    sim = Proc("sim", ["dit4dit-sim", "--domain", str(dds_domain), "--no-cameras", "--control-port", str(free_port)],
               tmp_path)
    try:
        sim.wait_for("dit4dit-sim ready", 60)
        elbow = g1_spec.joint_index("right_elbow_joint")
        target = float(g1_spec.HOME_POSE[elbow] - 0.4)
        out = subprocess.run([sys.executable, "-c", CLIENT, str(dds_domain), str(target)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        state = control_request(f"tcp://127.0.0.1:{free_port}", "state")
    finally:
        sim.stop()
    assert res["checks"] == [[0, {"form": "0", "name": ""}]]  # debug mode: no motion service to release
    assert res["release"] == 0 and res["select"] != 0  # release succeeds; there is no service to select
    assert res["mode_machine"] == 5
    assert state["command"] == "lowcmd" and state["stats"]["lowcmd_bad_crc"] == 0
    assert abs(np.array(state["q"])[elbow] - target) < 0.05


def test_the_driver_takes_the_real_robot_path_through_the_sims_motion_switcher(tmp_path, dds_domain) -> None:
    """G1Robot(simulation=False), as on a G1: it asks the MotionSwitcher, finds none active, and connects."""
    sim = Proc("sim", ["dit4dit-sim", "--domain", str(dds_domain), "--no-cameras", "--control-port", "0"], tmp_path)
    script = f"""
import logging, sys
logging.basicConfig(level=logging.INFO)
from dit4dit.drivers.g1_robot import G1Robot, G1RobotConfig
r = G1Robot(G1RobotConfig(interface="lo", domain={dds_domain}, simulation=False))
r.connect(10.0)
r.disconnect()
print("connected", flush=True)
"""
    try:
        sim.wait_for("dit4dit-sim ready", 60)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    finally:
        sim.stop()
    assert out.returncode == 0 and "connected" in out.stdout, out.stderr[-3000:]
    assert "no built-in motion service active (debug mode)" in out.stderr
