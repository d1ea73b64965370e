"""Teleop devices: a person's joint targets for the controlled joints, used when the operator takes
over from the policy (issue 5, "Teleop override during trials").

Every device follows one protocol:

    dev.start(q_measured)         # at takeover: integrators start at the measured pose
    q = dev.target(now)           # (29,) absolute joint targets in g1_spec order, or None (no live input)
    dev.close()

Only the ``controlled`` joints ever differ from the pose given to ``start``; every target is
clamped to the g1_spec hard limits (the safety layer applies the soft limits and step limits on
top). Devices:

- ``RemoteSticksTeleop``: the G1 wireless remote's sticks drive joint velocities or the hand's
  Cartesian velocity (integrated).
- ``KeyboardTeleop``: terminal keys step the hand or a joint; keys come from ``TerminalKeyReader``
  or ``feed(key)`` (tests, other front ends).
- ``ZmqTeleop``: a SUB socket receiving msgpack joint targets or end-effector poses from a VR or
  leader-arm teleop elsewhere; poses go through IK; a silent stream gives None.
- ``TeleopSender``: the PUB side of that stream, for tests and scripts.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import msgpack
import numpy as np
import zmq

from . import g1_spec
from .remote import Remote

log = logging.getLogger(__name__)

ARM_GROUP = {"left": "left_arm", "right": "right_arm"}
HAND_FRAME = {"left": "left_hand", "right": "right_hand"}
TELEOP_FORMAT_VERSION = 1
MAX_INTEGRATION_DT = 0.1  # a pause in target() calls never turns into one big step
# Integrating devices (sticks, keys) keep their target within this of the measured joints: an arm held back
# (a hand pressing on the table) must not let the target wind up to the limits while the person keeps pushing.
MAX_LEAD_RAD = 0.3


def _indices(controlled: Iterable[int | str] | None) -> np.ndarray:
    if controlled is None:
        return np.array(g1_spec.ARM_JOINTS)
    idx = [g1_spec.joint_index(c) if isinstance(c, str) else int(c) for c in controlled]
    bad = [i for i in idx if not 0 <= i < g1_spec.NUM_JOINTS]
    if bad or not idx:
        raise ValueError(f"controlled joints must be G1 joint names or indices 0..28, got {list(controlled)}")
    return np.array(sorted(set(idx)))


class TeleopDevice(abc.ABC):
    """See the module docstring."""

    name = "teleop"

    def __init__(self, controlled: Iterable[int | str] | None = None,
                 measured_source: Callable[[], np.ndarray] | None = None, max_lead: float = MAX_LEAD_RAD) -> None:
        self.controlled = _indices(controlled)
        self._q: np.ndarray | None = None  # current full target
        self._base: np.ndarray | None = None  # pose at start(); uncontrolled joints stay here
        # the measured joints (e.g. lambda: robot.state().q), for the anti-windup of integrating devices
        self.measured_source = measured_source
        self.max_lead = max_lead

    def start(self, q_measured: np.ndarray) -> None:
        q = np.asarray(q_measured, dtype=np.float64)
        if q.shape != (g1_spec.NUM_JOINTS,) or not np.all(np.isfinite(q)):
            raise ValueError(f"{self.name}: start() needs the measured q, 29 finite values; got shape {q.shape}")
        self._base = np.clip(q, g1_spec.LOWER, g1_spec.UPPER)
        self._q = self._base.copy()
        self._on_start()

    def _on_start(self) -> None:
        """Device-specific reset at takeover."""

    @abc.abstractmethod
    def target(self, now: float | None = None) -> np.ndarray | None: ...

    def close(self) -> None:
        """Release sockets/threads."""

    def _require_started(self) -> np.ndarray:
        if self._q is None:
            raise RuntimeError(f"{self.name}: call start(q_measured) before target()")
        return self._q

    def _set_controlled(self, q_new: np.ndarray, integrating: bool = False) -> np.ndarray:
        """Accept new values for the controlled joints only, clamped to the hard limits. ``integrating``
        (a target built up from increments): also within ``max_lead`` of the measured joints (no windup)."""
        assert self._q is not None and self._base is not None
        c = self.controlled
        q = self._base.copy()
        q[c] = np.clip(q_new[c], g1_spec.LOWER[c], g1_spec.UPPER[c])
        if integrating and self.measured_source is not None:
            measured = np.asarray(self.measured_source(), dtype=np.float64)
            if measured.shape == (g1_spec.NUM_JOINTS,) and np.all(np.isfinite(measured)):
                # a step that would lead further is cut, but a target already beyond (at start) may come back
                prev = self._q[c]
                lo = np.minimum(measured[c] - self.max_lead, prev)
                hi = np.maximum(measured[c] + self.max_lead, prev)
                q[c] = np.clip(q[c], lo, hi)
        self._q = q
        return q.copy()


class _CartesianMixin:
    """Moves one hand in the torso frame through IK, keeping the orientation it had at start."""

    _kin: Any
    _q: np.ndarray | None

    def _ee_init(self, kinematics: Any | None) -> None:
        self._kin = kinematics
        self._ee_goal: dict[str, np.ndarray] = {}
        self.ik_failures = 0

    def _kinematics(self) -> Any:
        if self._kin is None:
            from .kinematics import G1Kinematics

            self._kin = G1Kinematics()
        return self._kin

    def _ee_reset(self) -> None:
        assert self._q is not None
        poses = self._kinematics().fk(self._q)
        self._ee_goal = {side: poses[HAND_FRAME[side]].copy() for side in ARM_GROUP}

    def _ee_move(self, side: str, delta_xyz: np.ndarray, ik_tol_m: float = 0.01) -> np.ndarray | None:
        """Shift the hand goal by delta (m, torso frame) and solve; None if IK cannot get within tol."""
        assert self._q is not None
        goal = self._ee_goal[side].copy()
        goal[:3, 3] += delta_xyz
        res = self._kinematics().ik(HAND_FRAME[side], goal, self._q, max_iters=50)
        if res.pos_err_m > ik_tol_m:
            self.ik_failures += 1
            return None  # out of reach: keep the last goal and target
        self._ee_goal[side] = goal
        return res.q


# ----------------------------------------------------------------------------------------------------
# Wireless remote sticks
# ----------------------------------------------------------------------------------------------------
class RemoteSticksTeleop(_CartesianMixin, TeleopDevice):
    """The G1 remote's sticks as velocities, integrated into targets.

    ``mode="joint"`` (the selected arm): left stick up/down -> shoulder pitch, left stick left/right
    -> shoulder roll, right stick up/down -> elbow, right stick left/right -> wrist roll; at full
    deflection each moves at ``joint_speed`` rad/s.
    ``mode="ee"``: left stick up/down -> hand forward/back (x), left stick left/right -> hand left/right
    (y), right stick up/down -> hand up/down (z), at ``ee_speed`` m/s; orientation held.
    D-pad left / right selects the left / right arm (default ``arm``). Sticks within ``deadzone``
    count as zero. ``remote_source`` returns the latest Remote (e.g. ``lambda: robot.state().remote``).
    """

    name = "remote"

    def __init__(
        self,
        remote_source: Callable[[], Remote],
        controlled: Iterable[int | str] | None = None,
        *,
        mode: str = "joint",
        arm: str = "right",
        joint_speed: float = 0.5,
        ee_speed: float = 0.1,
        deadzone: float = 0.05,
        kinematics: Any | None = None,
        measured_source: Callable[[], np.ndarray] | None = None,
    ) -> None:
        super().__init__(controlled, measured_source)
        if mode not in ("joint", "ee"):
            raise ValueError(f"RemoteSticksTeleop mode must be 'joint' or 'ee', got {mode!r}")
        if arm not in ARM_GROUP:
            raise ValueError(f"arm must be 'left' or 'right', got {arm!r}")
        if not (joint_speed > 0 and ee_speed > 0 and 0 <= deadzone < 1):
            raise ValueError("joint_speed and ee_speed must be > 0 and deadzone in [0, 1)")
        self.remote_source = remote_source
        self.mode, self.arm = mode, arm
        self.joint_speed, self.ee_speed, self.deadzone = joint_speed, ee_speed, deadzone
        self._ee_init(kinematics)
        self._last_t: float | None = None

    def _on_start(self) -> None:
        self._last_t = None
        if self.mode == "ee":
            self._ee_reset()

    def target(self, now: float | None = None) -> np.ndarray | None:
        q = self._require_started()
        now = time.monotonic() if now is None else now
        dt = 0.0 if self._last_t is None else min(max(now - self._last_t, 0.0), MAX_INTEGRATION_DT)
        self._last_t = now
        remote = self.remote_source()
        if remote.pressed("left"):
            self.arm = "left"
        elif remote.pressed("right"):
            self.arm = "right"
        lx, ly, rx, ry = remote.sticks(self.deadzone)
        if dt == 0.0 or not any((lx, ly, rx, ry)):
            return q.copy()
        if self.mode == "joint":
            j = g1_spec.GROUPS[ARM_GROUP[self.arm]]  # shoulder pitch, roll, yaw, elbow, wrist roll, pitch, yaw
            # Stick forward raises the arm (shoulder pitch decreases); stick left moves the arm toward +y,
            # which is +roll on both sides (the roll axes are mirrored along with the limits).
            v = np.zeros(g1_spec.NUM_JOINTS)
            v[j[0]] = -ly
            v[j[1]] = -lx
            v[j[3]] = -ry
            v[j[4]] = rx
            return self._set_controlled(q + v * self.joint_speed * dt, integrating=True)
        delta = np.array([ly, -lx, ry]) * self.ee_speed * dt
        q_new = self._ee_move(self.arm, delta)
        return q.copy() if q_new is None else self._set_controlled(q_new, integrating=True)


# ----------------------------------------------------------------------------------------------------
# Keyboard
# ----------------------------------------------------------------------------------------------------
class KeyboardTeleop(_CartesianMixin, TeleopDevice):
    """Terminal keys step the selected hand (Cartesian, default) or one joint.

    Key map:

    ========  =========================================================
    ``1``     select the left arm          ``2``  select the right arm
    ``m``     toggle mode: hand (Cartesian) <-> joint
    ``w/s``   hand: forward / back (x)     joint: selected joint + / -
    ``a/d``   hand: left / right (y)
    ``r/f``   hand: up / down (z)
    ``[ / ]`` joint mode: previous / next joint of the selected arm
    ========  =========================================================

    Each press moves ``ee_step`` metres or ``joint_step`` rad. Unknown keys are ignored (other
    listeners, e.g. the controller's e-stop key, may use them).
    """

    name = "keyboard"
    KEYS = frozenset("12mwsadrf[]")

    def __init__(
        self,
        controlled: Iterable[int | str] | None = None,
        *,
        arm: str = "right",
        ee_step: float = 0.01,
        joint_step: float = 0.05,
        kinematics: Any | None = None,
        measured_source: Callable[[], np.ndarray] | None = None,
    ) -> None:
        super().__init__(controlled, measured_source)
        if arm not in ARM_GROUP:
            raise ValueError(f"arm must be 'left' or 'right', got {arm!r}")
        if not (ee_step > 0 and joint_step > 0):
            raise ValueError("ee_step and joint_step must be > 0")
        self.arm, self.ee_step, self.joint_step = arm, ee_step, joint_step
        self.mode = "ee"
        self.joint = 0  # index within the arm group
        self._keys: list[str] = []
        self._lock = threading.Lock()
        self._ee_init(kinematics)

    def _on_start(self) -> None:
        with self._lock:
            self._keys.clear()
        self._ee_reset()

    def feed(self, key: str) -> None:
        """Queue one key press (from TerminalKeyReader, a GUI, or a test)."""
        if key in self.KEYS:
            with self._lock:
                self._keys.append(key)

    def target(self, now: float | None = None) -> np.ndarray | None:
        self._require_started()
        with self._lock:
            keys, self._keys = self._keys, []
        for k in keys:
            self._apply(k)
        assert self._q is not None
        return self._q.copy()

    def _apply(self, k: str) -> None:
        assert self._q is not None
        if k in "12":
            self.arm = "left" if k == "1" else "right"
            return
        if k == "m":
            self.mode = "joint" if self.mode == "ee" else "ee"
            if self.mode == "ee":
                self._ee_reset()  # Cartesian goals restart from wherever joint mode left the arm
            return
        joints = g1_spec.GROUPS[ARM_GROUP[self.arm]]
        if self.mode == "joint":
            if k in "[]":
                self.joint = (self.joint + (1 if k == "]" else -1)) % len(joints)
            elif k in "ws":
                q = self._q.copy()
                q[joints[self.joint]] += self.joint_step if k == "w" else -self.joint_step
                self._set_controlled(q, integrating=True)
            return
        step = {"w": (1, 0, 0), "s": (-1, 0, 0), "a": (0, 1, 0), "d": (0, -1, 0), "r": (0, 0, 1), "f": (0, 0, -1)}.get(k)
        if step is not None:
            q_new = self._ee_move(self.arm, np.array(step, dtype=float) * self.ee_step)
            if q_new is not None:
                self._set_controlled(q_new, integrating=True)


class TerminalKeyReader:
    """Reads single key presses from a terminal (cbreak mode) on a thread and hands each to listeners.

    The controller can subscribe its own handlers (e-stop, takeover) next to KeyboardTeleop.feed.
    Raises RuntimeError when stdin is not a terminal.
    """

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdin
        if not self.stream.isatty():
            raise RuntimeError("keyboard teleop needs an interactive terminal (stdin is not a TTY); use teleop device zmq or remote")
        self._listeners: list[Callable[[str], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved: Any = None

    def subscribe(self, fn: Callable[[str], None]) -> None:
        self._listeners.append(fn)

    def start(self) -> None:
        import termios
        import tty

        fd = self.stream.fileno()
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        self._thread = threading.Thread(target=self._run, name="keys", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        fd = self.stream.fileno()
        while not self._stop.is_set():
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                ch = os.read(fd, 1).decode(errors="ignore")
                for fn in self._listeners:
                    try:
                        fn(ch)
                    except Exception:
                        log.exception("key listener failed")

    def stop(self) -> None:
        import termios

        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._saved is not None:
            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None


# ----------------------------------------------------------------------------------------------------
# ZeroMQ stream (VR / leader arm)
# ----------------------------------------------------------------------------------------------------
def encode_teleop(
    *,
    seq: int,
    joints: dict[str, float] | None = None,
    poses: dict[str, np.ndarray] | None = None,
) -> bytes:
    """One teleop message. ``joints``: {joint name (URDF or SDK): rad}. ``poses``: {"left_hand" |
    "right_hand": 4x4 pose in the torso frame}. At least one of them."""
    if not joints and not poses:
        raise ValueError("a teleop message needs joints or poses")
    msg: dict[str, Any] = {"v": TELEOP_FORMAT_VERSION, "seq": int(seq), "stamp_wall": time.time()}
    if joints:
        for n in joints:
            g1_spec.joint_index(n)  # KeyError naming the joint
        msg["joints"] = {n: float(v) for n, v in joints.items()}
    if poses:
        out = {}
        for frame, T in poses.items():
            if frame not in HAND_FRAME.values():
                raise ValueError(f"teleop pose frame must be one of {sorted(HAND_FRAME.values())}, got {frame!r}")
            T = np.asarray(T, dtype=np.float64)
            if T.shape != (4, 4):
                raise ValueError(f"teleop pose {frame} must be 4x4, got {T.shape}")
            out[frame] = T.reshape(16).tolist()
        msg["poses"] = out
    return msgpack.packb(msg, use_bin_type=True)


def decode_teleop(raw: bytes) -> dict[str, Any]:
    """Parse and validate one teleop message; ValueError naming the bad field."""
    try:
        msg = msgpack.unpackb(raw, raw=False)
    except Exception as e:
        raise ValueError(f"teleop message is not msgpack: {e}") from e
    if not isinstance(msg, dict) or msg.get("v") != TELEOP_FORMAT_VERSION:
        raise ValueError(f"teleop message version {msg.get('v') if isinstance(msg, dict) else None!r}, want {TELEOP_FORMAT_VERSION}")
    if not isinstance(msg.get("seq"), int):
        raise ValueError("teleop message lacks an integer 'seq'")
    joints = msg.get("joints") or {}
    if not isinstance(joints, dict):
        raise ValueError("teleop 'joints' must be a map of joint name -> rad")
    parsed_j: dict[int, float] = {}
    for n, v in joints.items():
        try:
            idx = g1_spec.joint_index(n)
        except KeyError as e:
            raise ValueError(str(e.args[0])) from None
        if not isinstance(v, (int, float)) or not np.isfinite(v):
            raise ValueError(f"teleop joint {n!r} value must be a finite number, got {v!r}")
        parsed_j[idx] = float(v)
    poses = msg.get("poses") or {}
    parsed_p: dict[str, np.ndarray] = {}
    for frame, flat in poses.items():
        if frame not in HAND_FRAME.values():
            raise ValueError(f"teleop pose frame {frame!r} unknown; use {sorted(HAND_FRAME.values())}")
        T = np.asarray(flat, dtype=np.float64)
        if T.shape != (16,) or not np.all(np.isfinite(T)):
            raise ValueError(f"teleop pose {frame} must be 16 finite numbers (row-major 4x4)")
        T = T.reshape(4, 4)
        R = T[:3, :3]
        if not np.allclose(R @ R.T, np.eye(3), atol=1e-3) or not np.allclose(T[3], [0, 0, 0, 1]):
            raise ValueError(f"teleop pose {frame} is not a rigid transform (rotation not orthonormal or last row not 0 0 0 1)")
        parsed_p[frame] = T
    if not parsed_j and not parsed_p:
        raise ValueError("teleop message carries neither joints nor poses")
    return {"seq": msg["seq"], "joints": parsed_j, "poses": parsed_p}


class ZmqTeleop(TeleopDevice):
    """Targets from a ZeroMQ PUB elsewhere (``TeleopSender``, a VR app, a leader arm).

    Connects a SUB (CONFLATE: newest message only) to ``endpoint``. Joint messages set the named
    controlled joints; pose messages go through IK from the current target. ``target()`` returns
    None when no message arrived within ``timeout_s`` (receipt time on this host, so the two
    machines' clocks need not agree) or before the first message after ``start``.
    """

    name = "zmq"

    def __init__(
        self,
        endpoint: str,
        controlled: Iterable[int | str] | None = None,
        *,
        timeout_s: float = 0.5,
        ik_tol_m: float = 0.01,
        kinematics: Any | None = None,
        context: zmq.Context | None = None,
        bind: bool = False,
    ) -> None:
        super().__init__(controlled)
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.endpoint, self.timeout_s, self.ik_tol_m = endpoint, timeout_s, ik_tol_m
        self._kin = kinematics
        self._sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._sock.setsockopt(zmq.CONFLATE, 1)
        self._sock.setsockopt(zmq.RCVHWM, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        try:
            (self._sock.bind if bind else self._sock.connect)(endpoint)
        except zmq.ZMQError as e:
            self._sock.close()
            raise ValueError(f"teleop stream endpoint {endpoint!r}: {e}") from e
        self._last_rx: float | None = None
        self._last_seq: int | None = None
        self.bad_messages = 0
        self.ik_failures = 0
        self.ignored_joints: set[int] = set()

    def _on_start(self) -> None:
        self._last_rx = None  # a takeover needs fresh input, not a message from before

    def _kinematics(self) -> Any:
        if self._kin is None:
            from .kinematics import G1Kinematics

            self._kin = G1Kinematics()
        return self._kin

    def target(self, now: float | None = None) -> np.ndarray | None:
        q = self._require_started()
        msg = None
        while self._sock.poll(0):
            raw = self._sock.recv()
            try:
                msg = decode_teleop(raw)
            except ValueError as e:
                self.bad_messages += 1
                log.warning("teleop stream %s: dropped a bad message: %s", self.endpoint, e)
        now = time.monotonic() if now is None else now
        if msg is not None and (self._last_seq is None or msg["seq"] != self._last_seq):
            self._last_seq = msg["seq"]
            self._last_rx = now
            q = self._apply(msg)
        if self._last_rx is None or now - self._last_rx > self.timeout_s:
            return None
        return q.copy()

    def _apply(self, msg: dict[str, Any]) -> np.ndarray:
        assert self._q is not None
        q = self._q.copy()
        controlled = set(self.controlled.tolist())
        for idx, v in msg["joints"].items():
            if idx in controlled:
                q[idx] = v
            elif idx not in self.ignored_joints:
                self.ignored_joints.add(idx)
                log.warning("teleop stream sets %s, which is not a controlled joint: ignored", g1_spec.JOINT_NAMES[idx])
        for frame, T in msg["poses"].items():
            res = self._kinematics().ik(frame, T, q, max_iters=60)
            if res.pos_err_m > self.ik_tol_m:
                self.ik_failures += 1
                continue  # unreachable pose: that arm keeps its last target
            q = res.q
        return self._set_controlled(q)

    def close(self) -> None:
        self._sock.close(linger=0)


class TeleopSender:
    """PUB side of the teleop stream (binds by default). For tests, scripts and simple leader arms."""

    def __init__(self, endpoint: str, *, bind: bool = True, context: zmq.Context | None = None) -> None:
        self._sock = (context or zmq.Context.instance()).socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, 1)
        self._sock.setsockopt(zmq.LINGER, 0)
        (self._sock.bind if bind else self._sock.connect)(endpoint)
        self.seq = 0

    def send(self, *, joints: dict[str, float] | None = None, poses: dict[str, np.ndarray] | None = None) -> None:
        self.seq += 1
        try:
            self._sock.send(encode_teleop(seq=self.seq, joints=joints, poses=poses), zmq.NOBLOCK)
        except zmq.Again:
            pass  # latest-only stream: a full queue means the reader gets a newer one next

    def send_q(self, q: np.ndarray, joints: Sequence[int] | None = None) -> None:
        """Send joint targets from a (29,) array for ``joints`` (default: the arms)."""
        idx = g1_spec.ARM_JOINTS if joints is None else joints
        self.send(joints={g1_spec.JOINT_NAMES[i]: float(q[i]) for i in idx})

    def close(self) -> None:
        self._sock.close(linger=0)


def make_teleop(
    device: str,
    *,
    controlled: Iterable[int | str] | None = None,
    endpoint: str | None = None,
    stick_velocity: float = 0.5,
    timeout_s: float = 0.5,
    remote_source: Callable[[], Remote] | None = None,
    measured_source: Callable[[], np.ndarray] | None = None,
) -> TeleopDevice | None:
    """A device from deploy.yaml's teleop section values (``device``: none | remote | keyboard | zmq).
    ``measured_source`` (e.g. ``lambda: robot.state().q``) keeps the integrating devices from winding up."""
    if device == "none":
        return None
    if device == "remote":
        if remote_source is None:
            raise ValueError("teleop device 'remote' needs remote_source (e.g. lambda: robot.state().remote)")
        return RemoteSticksTeleop(remote_source, controlled, joint_speed=stick_velocity, measured_source=measured_source)
    if device == "keyboard":
        return KeyboardTeleop(controlled, measured_source=measured_source)
    if device == "zmq":
        if not endpoint:
            raise ValueError("teleop device 'zmq' needs endpoint (tcp://host:port of the teleop stream)")
        return ZmqTeleop(endpoint, controlled, timeout_s=timeout_s)
    raise ValueError(f"unknown teleop device {device!r}; use none, remote, keyboard or zmq")
