"""Keyboard teleop end to end in a real terminal: dit4dit-robot inside tmux, keys sent with send-keys.

The three-process runtime (dit4dit-sim, a policy server, dit4dit-robot) with ``teleop.device: keyboard``;
the controller reads its terminal in cbreak mode, exactly as an operator's keys reach it. ``t`` takes over,
``m`` switches KeyboardTeleop to joint mode, ``w`` steps the right shoulder pitch, ``h`` hands back, ``e``
is the e-stop.
"""

from __future__ import annotations

import shutil
import subprocess
import time

import numpy as np
import pytest
import yaml

from dit4dit.drivers import g1_spec
from tests.robot_rig import Rig, assert_commands_within_limits, assert_in_order

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt install tmux)")]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def test_keyboard_teleop_in_a_real_terminal(rig: Rig, tmp_path) -> None:
    rig.start_bad_server("good")
    cfg = rig.config(teleop={"device": "keyboard"}, safety={"handover_velocity": 1.0})
    path = tmp_path / "deploy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "robot_tmux.log"
    session = f"dit4dit-test-{rig.domain}-{rig.server_port}"
    # stdin is the tmux pane's terminal; the output goes to a file for the test to read
    cmd = f"dit4dit-robot --config {path} --summary {rig.summary_path} > {log} 2>&1; echo exited $? >> {log}"
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "40", cmd)

    def wait_for(needle: str, timeout_s: float, after: int = 0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            i = text.find(needle, after)
            if i >= 0:
                return i
            if "exited " in text:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {needle!r} within {timeout_s} s:\n{text[-3000:]}")

    def keys(k: str) -> None:
        for ch in k:
            tmux("send-keys", "-t", session, "-l", ch)
            time.sleep(0.05)  # one key per read: a person's typing pace

    try:
        wait_for("READY -> RUNNING", 120)
        time.sleep(1.0)
        keys("t")
        mark = wait_for("RUNNING -> TELEOP: operator takeover (keyboard)", 15)
        pitch = g1_spec.joint_index("right_shoulder_pitch_joint")
        before = rig.sim_q()[pitch]
        keys("m" + "w" * 8)  # joint mode, then +8 x 0.05 rad on the selected joint (right shoulder pitch)
        deadline = time.monotonic() + 15
        while rig.sim_q()[pitch] - before < 0.3 and time.monotonic() < deadline:
            time.sleep(0.1)
        moved = rig.sim_q()[pitch] - before
        assert moved >= 0.3, f"right shoulder pitch moved {moved:.3f} rad after 8 'w' presses of 0.05 rad"
        keys("h")
        wait_for("TELEOP -> RUNNING: operator hands back (keyboard)", 15, mark)
        time.sleep(1.0)
        keys("e")
        wait_for("exited 3", 30)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)
    s = rig.summary()
    assert_in_order(s, [("RUNNING", "TELEOP", "operator takeover (keyboard)"),
                        ("TELEOP", "RUNNING", "operator hands back (keyboard)"),
                        ("RUNNING", "STOPPING", "operator e-stop (keyboard)"),
                        ("STOPPING", "DAMPED", "damping in force")])  # fmt: skip
    assert_commands_within_limits(rig.commands(), cfg)
    assert np.isfinite(moved)
