"""Helpers for the controller's multi-process tests: real dit4dit-sim, real DDS, real ZeroMQ, real dit4dit-robot.

Every process is started with its output in a log file under the test's tmp_path and is killed at the
end (terminate, then kill). Ports come from the `free_port` fixture style (bind to 0), domains from
`dds_domain`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim.bridge import control_request
from dit4dit.runtime.config import parse_config
from dit4dit.runtime.realtime.wire import wire_report
from dit4dit.runtime.realtime.safety import SafetyLimits

TESTS = Path(__file__).resolve().parent
CAM_W, CAM_H = 128, 96


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name: str, args: list[str], log_dir: Path, stdin: Any = None) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1", MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
        self.p = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, stdin=stdin, env=env,
                                  start_new_session=True)  # fmt: skip

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float, after: int = 0) -> re.Match:
        """Wait for a regex in the log (searching from character offset `after`)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            m = rx.search(self.text(), after)
            if m:
                return m
            if self.p.poll() is not None:
                m = rx.search(self.text(), after)
                if m:
                    return m
                raise AssertionError(f"{self.name} exited ({self.p.returncode}) before /{pattern}/:\n{self.text()[-4000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no /{pattern}/ within {timeout_s} s:\n{self.text()[-4000:]}")

    def send_signal(self, sig: int) -> None:
        if self.p.poll() is None:
            os.kill(self.p.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int:
        if self.p.poll() is None:
            try:
                os.kill(self.p.pid, sig)
                self.p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
            except ProcessLookupError:
                pass
        self._log.close()
        return self.p.returncode


class Rig:
    """dit4dit-sim + a LowCmd recorder on a private DDS domain; starts servers and the robot on request."""

    def __init__(self, tmp: Path, domain: int, topic: str = g1_spec.TOPIC_LOWCMD) -> None:
        self.tmp = tmp
        self.domain = domain
        self.cam_port = free_port()
        self.control_port = free_port()
        self.server_port = free_port()
        self.procs: list[Proc] = []
        self.cmds_path = tmp / "lowcmd.npz"
        self.summary_path = tmp / "summary.json"
        self.robot: Proc | None = None
        self.sim = self.start(
            "sim", ["dit4dit-sim", "--domain", str(domain), "--camera", f"head:{CAM_W}x{CAM_H}@30",
                    "--camera-port", str(self.cam_port), "--control-port", str(self.control_port)],
        )  # fmt: skip
        self.recorder = self.start(
            "lowcmd", [sys.executable, "-m", "dit4dit.runtime.realtime.wire", "record", "--domain", str(domain),
                       "--out", str(self.cmds_path), "--topic", topic]
        )
        try:
            self.sim.wait_for("dit4dit-sim ready", 60)
            self.recorder.wait_for("recording", 30)
        except BaseException:
            self.close()  # the fixture never gets to its teardown when the constructor fails
            raise

    @property
    def control(self) -> str:
        return f"tcp://127.0.0.1:{self.control_port}"

    @property
    def server_address(self) -> str:
        return f"tcp://127.0.0.1:{self.server_port}"

    def start(self, name: str, args: list[str], stdin: Any = None) -> Proc:
        p = Proc(name, args, self.tmp, stdin)
        self.procs.append(p)
        return p

    def start_bad_server(self, script: str, name: str = "server", late_s: float = 1.5) -> Proc:
        p = self.start(name, [sys.executable, str(TESTS / "misbehaving_server.py"), "--bind", self.server_address,
                              "--script", script, "--late-s", str(late_s)])  # fmt: skip
        p.wait_for("listening", 20)
        return p

    def config(self, **sections: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "robot": {"interface": "lo", "domain": self.domain},
            "cameras": {"head": {"kind": "sim", "endpoint": f"tcp://127.0.0.1:{self.cam_port}", "width": CAM_W,
                                 "height": CAM_H, "fps": 30, "max_age_s": 1.0}},  # fmt: skip
            "server": {"address": self.server_address, "timeout_s": 0.8, "connect_timeout_s": 60},
            "safety": {"ramp_in_s": 1.0, "ramp_out_s": 0.5, "damp_hold_s": 0.3, "state_timeout_s": 1.0,
                       "server_hold_s": 1.0, "server_damp_s": 3.0,
                       # under kp = 0, kd = 8 dit4dit-sim's light wrist-roll joints chatter at +-6 rad/s (observed;
                       # presumably kd integrated explicitly on a tiny inertia), which the joint-speed watchdog
                       # rightly refuses at the next start; kd = 2 is calm there
                       "damping_kd": 2.0},  # fmt: skip
            "run": {"instruction": "pick up the red block"},
        }
        return _merge(cfg, sections)

    def start_robot(self, cfg: dict[str, Any]) -> Proc:
        path = self.tmp / "deploy.yaml"
        path.write_text(yaml.safe_dump(cfg))
        self.robot = self.start(
            "robot", ["dit4dit-robot", "--config", str(path), "--summary", str(self.summary_path)], stdin=subprocess.PIPE
        )
        return self.robot

    def remote(self, *buttons: str, hold_s: float = 0.3) -> None:
        """Press a combination on the simulated wireless remote, then release it."""
        control_request(self.control, "remote", buttons=list(buttons))
        time.sleep(hold_s)
        control_request(self.control, "remote", buttons=[])

    def sim_q(self) -> np.ndarray:
        return np.array(control_request(self.control, "state")["q"])

    def keyboard(self, keys: str) -> None:
        assert self.robot is not None and self.robot.p.stdin is not None
        self.robot.p.stdin.write(keys.encode())
        self.robot.p.stdin.flush()

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        assert self.robot is not None
        return self.robot.p.wait(timeout_s)

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def commands(self) -> dict[str, np.ndarray]:
        self.recorder.stop(signal.SIGTERM)
        with np.load(self.cmds_path) as z:
            return {k: z[k] for k in z.files}

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def states(summary: dict[str, Any]) -> list[str]:
    return [summary["states"][0][1]] + [s[2] for s in summary["states"]]


def assert_in_order(summary: dict[str, Any], expected: list[tuple[str, str, str]]) -> list[float]:
    """The transitions (src, dst, reason substring) happen in this order (others may come between). Returns their times."""
    times, i = [], 0
    for t, src, dst, reason in summary["states"]:
        if i < len(expected) and (src, dst) == expected[i][:2] and expected[i][2] in reason:
            times.append(t)
            i += 1
    assert i == len(expected), f"missing {expected[i]} (in order) in:\n" + "\n".join(map(str, summary["states"]))
    return times


def transition_time(summary: dict[str, Any], src: str, dst: str, nth: int = 0) -> float:
    hits = [s[0] for s in summary["states"] if s[1] == src and s[2] == dst]
    assert len(hits) > nth, f"no {src} -> {dst} (#{nth}) in {summary['states']}"
    return hits[nth]


def assert_commands_within_limits(cmds: dict[str, np.ndarray], cfg: dict[str, Any],
                                  joints: tuple[int, ...] | None = None) -> dict[str, float]:
    """Every LowCmd published: finite, inside the hard range; once the robot has reached the soft box, inside it;
    gains bounded; and, with no slack, the step and velocity limits on the wire: between any two consecutive
    messages written dt_p apart (DDS source timestamps, integer ns), no joint moved more than
    max_delta * dt_p / dt, where max_delta = min(max_step, max_joint_velocity * dt) per joint.
    The real-time loop limits each command against the one it last sent, for the time since that send, on the
    float32 values that go on the wire, and stamps the message with that same instant."""
    c = parse_config(cfg)
    lim = SafetyLimits.from_config(c.safety, 1.0 / c.rates.control_hz)
    j = np.arange(g1_spec.NUM_JOINTS) if joints is None else np.array(joints)  # arm_sdk: only arms + waist are sent
    t_ns, q, kp, kd = cmds["t_ns"], cmds["q"][:, j], cmds["kp"][:, j], cmds["kd"][:, j]
    lower, upper, max_delta = lim.lower[j], lim.upper[j], lim.max_delta[j]
    hard_lo, hard_hi = g1_spec.LOWER[j], g1_spec.UPPER[j]
    assert len(q) > 100, f"only {len(q)} LowCmd messages recorded"
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(kp)) and np.all(np.isfinite(kd))
    tol = 1e-5  # float32 on the wire
    active = kp.max(axis=1) > 0  # damping messages (kp = 0) carry the measured q, which no motor tracks
    assert np.all(q[active] >= hard_lo - tol) and np.all(q[active] <= hard_hi + tol), (
        "a command left the hard joint range"
    )
    assert np.all(kp[~active] == 0) and np.all(kd[~active] > 0), "a message with kp = 0 that is not damping"
    assert np.all((kp >= 0) & (kp <= lim.max_kp + tol)), f"kp out of bounds: max {kp.max()}"
    assert np.all((kd >= 0) & (kd <= lim.max_kd + tol)), f"kd out of bounds: max {kd.max()}"
    # Per run (a run ends with damping): a run may start outside the soft box (the robot was left there, e.g. a
    # joint that sagged while damped) and move in, but once inside it never leaves.
    inside = np.all((q >= lower - tol) & (q <= upper + tol), axis=1)
    run_id = np.cumsum(np.r_[0, (np.diff(active.astype(int)) == 1)])  # a new run at every damping -> active edge
    for r in np.unique(run_id[active]):
        ins = inside[active & (run_id == r)]
        first_inside = int(np.argmax(ins)) if ins.any() else len(ins)
        assert ins[first_inside:].all(), (
            f"run {r}: {int((~ins[first_inside:]).sum())} commands outside the soft limits after the robot was inside them"
        )
    rep = wire_report(cmds, lim, j)
    assert rep["step_violations"] == 0, (
        f"{rep['step_violations']:.0f} steps on the wire beyond the limit; worst {rep['max_step_ratio']:.3f} x what "
        "the time between the messages allows"
    )
    idx = np.flatnonzero(active)
    consecutive = np.diff(idx) == 1
    steps = np.abs(np.diff(q[idx], axis=0))[consecutive]
    step_ticks = np.max(steps / max_delta[None, :], axis=1) if len(steps) else np.zeros(1)
    at_limit = step_ticks >= 0.95
    longest = run = 0
    for hit in at_limit:
        run = run + 1 if hit else 0
        longest = max(longest, run)
    return {"messages": float(len(q)), "max_step_ratio": rep["max_step_ratio"], "active": float(active.sum()),
            "max_step_ticks": float(step_ticks.max()), "longest_run_at_limit": float(longest)}
