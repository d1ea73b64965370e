"""The Unitree G1 (29 DoF) over unitree_sdk2py / CycloneDDS. The same class drives the real robot
and ``dit4dit-sim`` (which speaks the same topics).

    robot = G1Robot(G1RobotConfig(interface="lo", domain=1, mode="lowcmd"))
    robot.connect(timeout_s=5.0)
    st = robot.state()                          # q, dq, tau, imu, remote, tick, stamp, age_s
    robot.command(q, kp, kd)                    # latest target; the 500 Hz thread sends it
    robot.damp()                                # kp = 0, kd > 0, keeps publishing
    robot.disconnect()

Sequence in ``connect`` (g1-interface.md §5, §7):

1. DDS is initialised once per process (``ChannelFactoryInitialize`` is a singleton; a second
   robot in the same process must use the same domain and interface or it is refused).
2. Subscribe ``rt/lowstate``; wait for the first frame with a valid CRC and latch ``mode_machine``
   from it. Nothing is written before that.
3. Built-in motion service: in ``lowcmd`` mode on the real robot it must be released (MotionSwitcher
   ``ReleaseMode`` until ``CheckMode`` reports none, ``release_motion_service=True``) or the robot
   must already be in debug mode (L2+R2; ``release_motion_service=False`` only checks). ``arm_sdk``
   needs it *running*. In simulation there is no MotionSwitcher service: the step is skipped and logged.
4. Listen on the command topic (from the start of connect, and ``writer_check_s`` after the first
   state): if anyone else publishes there, refuse.
5. Start the publisher thread at ``rate_hz``. Until the first ``command`` it sends damping
   (lowcmd: kp = 0, kd = damping kd) or weight 0 (arm_sdk).

Every LowCmd carries ``mode_pr = 0`` (PR), the latched ``mode_machine`` and a valid CRC. Every
received LowState's CRC is checked; bad frames are dropped and counted (``accept_zero_crc`` lets
a simulator that leaves crc = 0, like unitree_mujoco's Python bridge, through).

``arm_sdk`` mode: arms + waist (``g1_spec.ARM_SDK_JOINTS``) on ``rt/arm_sdk``, blend weight in
``motor_cmd[29].q``; the weight moves toward its target by at most ``arm_sdk_weight_rate / rate_hz``
per tick (counted in ticks, so a late thread ramps slower, never faster) and is never dropped to
0 at once. ``damp()`` in arm_sdk mode holds the last target while the weight ramps to 0, handing
the arms back to Unitree's controller (issue 5: "the weight ramps to 0 instead").
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import g1_spec, hg_codec
from .hands import SIDES, Dex3Hand
from .remote import REMOTE_LOST_AFTER_S, Remote, RemoteError, RemoteMonitor

log = logging.getLogger(__name__)

N = g1_spec.NUM_JOINTS


class RobotError(RuntimeError):
    """The robot could not be connected or commanded; the message says what to check."""


class RobotBusyError(RobotError):
    """Another process already publishes on the command topic."""


@dataclass
class G1RobotConfig:
    interface: str = "lo"  # NIC wired to the robot (enp3s0, eth0...); "lo" for dit4dit-sim
    domain: int = g1_spec.SIM_DOMAIN  # 0 on the real robot, 1 for simulators
    mode: Literal["lowcmd", "arm_sdk"] = "lowcmd"
    hands: bool = False  # Dex3-1 on rt/dex3/{left,right}
    # None: simulation iff interface == "lo" (a G1 is never reached over loopback).
    simulation: bool | None = None
    # lowcmd on the real robot: True = release the built-in motion service with MotionSwitcher;
    # False = require debug mode (L2+R2 on the remote) and refuse otherwise.
    release_motion_service: bool = True
    rate_hz: float = 1.0 / g1_spec.CONTROL_DT  # command publisher rate
    hand_rate_hz: float = 100.0
    arm_sdk_weight_rate: float = 0.5  # weight units per second (0 -> 1 in 2 s)
    damping_kd: float = g1_spec.DAMPING_KD
    writer_check_s: float = 0.3  # listen this long on the command topic for another writer
    stale_after_s: float = 0.1  # RobotState.stale when the newest state is older than this
    accept_zero_crc: bool = False  # let crc == 0 frames through (simulators that do not set it)
    remote_lost_s: float = REMOTE_LOST_AFTER_S
    # > 0: run the command publisher thread under SCHED_FIFO at this priority (1..99) so other
    # processes cannot delay the 500 Hz stream; needs root or CAP_SYS_NICE / `ulimit -r`. 0: normal.
    rt_priority: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("lowcmd", "arm_sdk"):
            raise ValueError(f"G1RobotConfig.mode must be 'lowcmd' or 'arm_sdk', got {self.mode!r}")
        if not 0 <= self.domain <= 232:
            raise ValueError(f"G1RobotConfig.domain must be in 0..232, got {self.domain}")
        for key in ("rate_hz", "hand_rate_hz", "arm_sdk_weight_rate", "damping_kd", "writer_check_s", "stale_after_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"G1RobotConfig.{key} must be > 0, got {getattr(self, key)}")
        if self.hand_rate_hz > self.rate_hz:
            raise ValueError(f"G1RobotConfig.hand_rate_hz ({self.hand_rate_hz}) cannot exceed rate_hz ({self.rate_hz})")
        if not 0 <= self.rt_priority <= 99:
            raise ValueError(f"G1RobotConfig.rt_priority must be in 0..99 (0 = normal scheduling), got {self.rt_priority}")
        if not self.interface:
            raise ValueError("G1RobotConfig.interface must name a network interface (e.g. enp3s0, or lo for the simulator)")

    @property
    def is_simulation(self) -> bool:
        return self.interface == "lo" if self.simulation is None else self.simulation

    @property
    def command_topic(self) -> str:
        return g1_spec.TOPIC_ARM_SDK if self.mode == "arm_sdk" else g1_spec.TOPIC_LOWCMD


@dataclass
class ImuState:
    quat: np.ndarray  # (4,) w, x, y, z (pelvis IMU)
    rpy: np.ndarray  # (3,) rad
    gyro: np.ndarray  # (3,) rad/s
    acc: np.ndarray  # (3,) m/s^2
    temperature: float = 0.0


@dataclass
class RobotState:
    q: np.ndarray  # (29,) rad, g1_spec order
    dq: np.ndarray  # (29,) rad/s
    tau: np.ndarray  # (29,) N·m estimated
    imu: ImuState
    remote: Remote
    remote_lost: bool
    tick: int
    mode_machine: int
    stamp: float  # time.monotonic() at receipt
    age_s: float  # at the state() call
    stale: bool  # age_s > config.stale_after_s
    temperature: np.ndarray = field(default_factory=lambda: np.zeros((N, 2)))  # (29, 2) casing, winding °C
    motor_error: np.ndarray = field(default_factory=lambda: np.zeros(N, dtype=np.uint32))  # non-zero = fault


# -- DDS initialisation: once per process -----------------------------------------------------------
_dds_lock = threading.Lock()
_dds_init: tuple[int, str] | None = None


def init_dds(domain: int, interface: str) -> None:
    """ChannelFactoryInitialize once per process; refuse a different domain/interface later.

    The SDK silently ignores a second initialisation with other settings, which would leave a
    robot object talking on the wrong domain: this turns that into an error.
    """
    global _dds_init
    from unitree_sdk2py.core.channel import ChannelFactory, ChannelFactoryInitialize

    with _dds_lock:
        if _dds_init is not None:
            if _dds_init != (domain, interface):
                raise RobotError(
                    f"DDS is already initialised in this process for domain {_dds_init[0]} on {_dds_init[1]!r}; "
                    f"cannot also use domain {domain} on {interface!r} (ChannelFactoryInitialize is a per-process "
                    "singleton): run it in another process"
                )
            return
        if getattr(ChannelFactory, "_ChannelFactory__initialized", False):
            dom = getattr(ChannelFactory, "_ChannelFactory__domain", None)
            dom_id = dom.get_domain_id() if dom is not None and hasattr(dom, "get_domain_id") else None
            if dom_id is not None and dom_id != domain:
                raise RobotError(
                    f"DDS was initialised elsewhere in this process for domain {dom_id}; cannot use domain {domain}"
                )
            log.warning("DDS already initialised by other code in this process; assuming interface %r", interface)
        else:
            try:
                ChannelFactoryInitialize(domain, interface)
            except Exception as e:  # the SDK raises a bare Exception
                raise RobotError(
                    f"cannot start DDS on domain {domain}, interface {interface!r}: {e}; check the interface name "
                    "(`ip link`) and, for lo, that multicast is on (`sudo ip link set lo multicast on`)"
                ) from e
        _dds_init = (domain, interface)


class _Target:
    """One immutable command snapshot (replaced whole, so the publisher never sees a half update)."""

    __slots__ = ("damping", "dq", "kd", "kp", "q", "tau")

    def __init__(self, q: np.ndarray, dq: np.ndarray, tau: np.ndarray, kp: np.ndarray, kd: np.ndarray, damping: bool):
        self.q, self.dq, self.tau, self.kp, self.kd, self.damping = q, dq, tau, kp, kd, damping


class G1Robot:
    """See the module docstring. Thread-safe: state() and command() may be called from any thread."""

    def __init__(self, config: G1RobotConfig | None = None) -> None:
        self.config = config or G1RobotConfig()
        self._lock = threading.Lock()
        self._state_event = threading.Condition(self._lock)
        self._raw: dict[str, Any] | None = None  # latest parsed state fields
        self._mode_machine: int | None = None
        self._remote_monitor = RemoteMonitor(self.config.remote_lost_s)
        self._target: _Target | None = None
        self._weight = 0.0  # arm_sdk blend weight actually sent
        self._weight_target = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_sub: Any = None
        self._cmd_pub: Any = None
        self._hand_pubs: dict[str, Any] = {}
        self._hand_subs: dict[str, Any] = {}
        self._writer_check_sub: Any = None  # kept until disconnect (see _close_channels)
        self._writer_check_count = 0
        self._writer_check_listening = False
        self._writer_check_t0 = 0.0
        self.hands: dict[str, Dex3Hand] = {s: Dex3Hand(s) for s in SIDES} if self.config.hands else {}
        self._connected = False
        # counters (read through .stats)
        self._states_received = 0
        self._crc_errors = 0
        self._mode_machine_mismatches = 0
        self._published = 0
        self._late_ticks = 0
        self._max_lateness_s = 0.0
        self._publish_errors = 0
        self._last_publish_error: str | None = None
        self._send_times = np.zeros(1 << 14)  # ring of send times, for jitter measurements (bench/)
        self._send_weights = np.zeros(1 << 14)  # ring of arm_sdk weights sent (tests check the ramp per tick)
        self._send_count = 0

    # ---------------------------------------------------------------------------------------------
    # connect / disconnect
    # ---------------------------------------------------------------------------------------------
    def connect(self, timeout_s: float = 5.0) -> None:
        """Wait for state, latch mode_machine, prepare the motion service, check for other writers,
        then start publishing. RobotError (or RobotBusyError) with what to check on failure."""
        if self._connected:
            return
        cfg = self.config
        from unitree_sdk2py.core.channel import ChannelPublisher, ChannelSubscriber
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandState_, LowCmd_, LowState_

        init_dds(cfg.domain, cfg.interface)
        try:
            self._start_writer_check(ChannelSubscriber, LowCmd_)
            self._state_sub = ChannelSubscriber(g1_spec.TOPIC_LOWSTATE, LowState_)
            self._state_sub.Init(self._on_lowstate, 0)
            self._wait_first_state(timeout_s)
            self._prepare_motion_service()
            self._finish_writer_check()
            if self.hands:
                for side, hand in self.hands.items():
                    sub = ChannelSubscriber(hand.state_topic, HandState_)
                    sub.Init(hand.on_state, 0)
                    self._hand_subs[side] = sub
            self._cmd_pub = ChannelPublisher(cfg.command_topic, LowCmd_)
            self._cmd_pub.Init()
            if self.hands:
                from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_

                for side, hand in self.hands.items():
                    pub = ChannelPublisher(hand.cmd_topic, HandCmd_)
                    pub.Init()
                    self._hand_pubs[side] = pub
        except BaseException:
            self._close_channels()
            raise
        self._weight = 0.0
        self._weight_target = 0.0
        with self._lock:
            self._target = self._damping_target(self._raw["q"])
        self._stop.clear()
        self._thread = threading.Thread(target=self._publish_loop, name="g1-lowcmd", daemon=True)
        self._thread.start()
        self._connected = True
        # A program that exits without disconnect() (an exception in the controller) still leaves the
        # robot damped / the weight ramped out, and its publisher thread never races interpreter teardown.
        atexit.register(self._disconnect_at_exit)
        log.info(
            "G1 connected: domain %d on %s, mode %s, mode_machine %d, publishing %s at %.0f Hz%s",
            cfg.domain, cfg.interface, cfg.mode, self._mode_machine, cfg.command_topic, cfg.rate_hz,
            " (simulation)" if cfg.is_simulation else "",
        )  # fmt: skip

    def disconnect(self) -> None:
        """Leave the robot passive, then stop publishing.

        lowcmd: damping for 0.1 s. arm_sdk: the weight ramps to 0 first (never dropped at once).
        """
        if not self._connected:
            self._close_channels()
            return
        try:
            self.damp()
            if self.config.mode == "arm_sdk":
                limit = time.monotonic() + 1.5 * self._weight / self.config.arm_sdk_weight_rate + 0.5
                while self._weight > 0.0 and time.monotonic() < limit and self._thread_alive():
                    time.sleep(0.01)
                if self._weight > 0.0:
                    log.error("arm_sdk weight still %.3f at disconnect (publisher stalled)", self._weight)
            else:
                time.sleep(0.1)
        finally:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=2.0)
                self._thread = None
            self._close_channels()
            self._connected = False
            atexit.unregister(self._disconnect_at_exit)

    def _disconnect_at_exit(self) -> None:
        if self._connected:
            log.warning("G1Robot still connected at interpreter exit: damping and disconnecting")
            try:
                self.disconnect()
            except Exception:
                log.exception("disconnect at exit failed")

    def __enter__(self) -> G1Robot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    # ---------------------------------------------------------------------------------------------
    # state
    # ---------------------------------------------------------------------------------------------
    @property
    def mode_machine(self) -> int | None:
        return self._mode_machine

    @property
    def is_connected(self) -> bool:
        return self._connected and self._thread_alive()

    def state(self) -> RobotState:
        """The newest state (copies), with its age. RobotError before the first state."""
        with self._lock:
            raw = self._raw
        if raw is None:
            raise RobotError("no rt/lowstate received yet; call connect() first")
        now = time.monotonic()
        age = now - raw["stamp"]
        remote = raw["remote"]
        return RobotState(
            q=raw["q"].copy(),
            dq=raw["dq"].copy(),
            tau=raw["tau"].copy(),
            imu=ImuState(raw["quat"].copy(), raw["rpy"].copy(), raw["gyro"].copy(), raw["acc"].copy(), raw["imu_temp"]),
            remote=remote,
            remote_lost=self._remote_monitor.lost(now),
            tick=raw["tick"],
            mode_machine=raw["mode_machine"],
            stamp=raw["stamp"],
            age_s=age,
            stale=age > self.config.stale_after_s,
            temperature=raw["temperature"].copy(),
            motor_error=raw["motor_error"].copy(),
        )

    def wait_for_state(self, newer_than: float, timeout_s: float) -> bool:
        """Block until a state received after ``newer_than`` (monotonic) arrives; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._raw is None or self._raw["stamp"] <= newer_than:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._state_event.wait(left)
        return True

    @property
    def arm_sdk_weight(self) -> float:
        """The blend weight last sent (arm_sdk mode; 0 in lowcmd)."""
        return self._weight

    @property
    def stats(self) -> dict[str, float]:
        return {
            "states_received": self._states_received,
            "crc_errors": self._crc_errors,
            "mode_machine_mismatches": self._mode_machine_mismatches,
            "published": self._published,
            "late_ticks": self._late_ticks,
            "max_lateness_s": self._max_lateness_s,
            "publish_errors": self._publish_errors,
        }

    def send_times(self) -> np.ndarray:
        """Monotonic times of the last (up to 16384) command sends, oldest first."""
        return self._ring(self._send_times)

    def sent_weights(self) -> np.ndarray:
        """arm_sdk weights of the last (up to 16384) sends, oldest first (all 0 in lowcmd mode)."""
        return self._ring(self._send_weights)

    def _ring(self, ring: np.ndarray) -> np.ndarray:
        n = self._send_count
        if n <= len(ring):
            return ring[:n].copy()
        k = n % len(ring)
        return np.concatenate([ring[k:], ring[:k]])

    # ---------------------------------------------------------------------------------------------
    # commands
    # ---------------------------------------------------------------------------------------------
    def command(
        self,
        q: np.ndarray,
        kp: np.ndarray | float,
        kd: np.ndarray | float,
        dq: np.ndarray | None = None,
        tau: np.ndarray | None = None,
    ) -> None:
        """Set the latest target (29 joints, g1_spec order). In arm_sdk mode only the arm/waist
        entries are sent and the weight ramps to 1. No limiting here: runtime/safety.py does that."""
        if not self._connected:
            raise RobotError("G1Robot.command before connect()")
        target = _Target(
            _vec("q", q),
            _vec("dq", 0.0 if dq is None else dq),
            _vec("tau", 0.0 if tau is None else tau),
            _vec("kp", kp, nonneg=True),
            _vec("kd", kd, nonneg=True),
            damping=False,
        )
        with self._lock:
            self._target = target
        self._weight_target = 1.0
        if not self._thread_alive():
            raise RobotError(f"the command publisher thread has stopped: {self._last_publish_error}")

    def damp(self, kd: float | None = None) -> None:
        """lowcmd: kp = 0, kd > 0 on every joint, still published at rate_hz.
        arm_sdk: hold the last target while the weight ramps to 0 (arms return to Unitree's controller).
        Dex3 hands (if on) are released (passive)."""
        kd = self.config.damping_kd if kd is None else float(kd)
        if not kd > 0:
            raise ValueError(f"damping kd must be > 0, got {kd}")
        for hand in self.hands.values():
            hand.stop()  # Dex3: timeout bit, kp = kd = 0 (passive)
        with self._lock:
            if self.config.mode == "lowcmd":
                q = self._raw["q"] if self._raw is not None else np.zeros(N)
                self._target = self._damping_target(q, kd)
        self._weight_target = 0.0

    @property
    def damping(self) -> bool:
        """True while the damping command (lowcmd) or the weight ramp-out (arm_sdk) is in force."""
        if self.config.mode == "arm_sdk":
            return self._weight_target == 0.0
        t = self._target
        return t is None or t.damping

    # ---------------------------------------------------------------------------------------------
    # internals
    # ---------------------------------------------------------------------------------------------
    def _damping_target(self, q: np.ndarray, kd: float | None = None) -> _Target:
        kd = self.config.damping_kd if kd is None else kd
        z = np.zeros(N)
        return _Target(np.array(q, dtype=np.float64), z, z, z, np.full(N, kd), damping=True)

    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _on_lowstate(self, msg: Any) -> None:
        """DDS listener: CRC check, parse into arrays, publish under the lock."""
        stamp = time.monotonic()
        try:
            rec = hg_codec.pack_lowstate(msg)
        except (ValueError, TypeError) as e:  # malformed sample: count it like a bad CRC
            self._crc_errors += 1
            log.warning("dropped malformed rt/lowstate: %s", e)
            return
        crc = int(rec["crc"])
        if not (crc == 0 and self.config.accept_zero_crc) and crc != hg_codec.packed_crc(rec):
            self._crc_errors += 1
            if self._crc_errors in (1, 10, 100) or self._crc_errors % 1000 == 0:
                log.warning("dropped rt/lowstate with a bad CRC (%d so far)", self._crc_errors)
            return
        ms = rec["motor_state"][:N]
        imu = rec["imu_state"]
        try:
            remote = Remote.parse(rec["wireless_remote"].tobytes())
        except RemoteError:  # cannot happen with 40 bytes; keep the state anyway
            remote = Remote()
        mm = int(rec["mode_machine"])
        raw = {
            "q": ms["q"].astype(np.float64),
            "dq": ms["dq"].astype(np.float64),
            "tau": ms["tau_est"].astype(np.float64),
            "temperature": ms["temperature"].astype(np.float64),
            "motor_error": ms["motorstate"].astype(np.uint32),
            "quat": imu["quaternion"].astype(np.float64),
            "rpy": imu["rpy"].astype(np.float64),
            "gyro": imu["gyroscope"].astype(np.float64),
            "acc": imu["accelerometer"].astype(np.float64),
            "imu_temp": float(imu["temperature"]),
            "tick": int(rec["tick"]),
            "mode_machine": mm,
            "remote": remote,
            "stamp": stamp,
        }
        with self._lock:
            if self._mode_machine is None:
                self._mode_machine = mm
            elif mm != self._mode_machine:
                self._mode_machine_mismatches += 1
                if self._mode_machine_mismatches == 1:
                    log.error("rt/lowstate mode_machine changed from %d to %d; commands keep %d",
                              self._mode_machine, mm, self._mode_machine)  # fmt: skip
            self._remote_monitor.update(remote, stamp)
            self._raw = raw
            self._states_received += 1
            self._state_event.notify_all()

    def _wait_first_state(self, timeout_s: float) -> None:
        cfg = self.config
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while self._raw is None and time.monotonic() < deadline:
                self._state_event.wait(max(0.0, deadline - time.monotonic()))
            got = self._raw is not None
        if not got:
            hint = (
                f"is dit4dit-sim running on this domain? (`dit4dit-sim --domain {cfg.domain}`)"
                if cfg.is_simulation
                else "is the robot on, the cable in, and this PC on 192.168.123.0/24?"
            )
            extra = f" ({self._crc_errors} frames dropped for a bad CRC)" if self._crc_errors else ""
            raise RobotError(
                f"no {g1_spec.TOPIC_LOWSTATE} within {timeout_s:.1f} s on DDS domain {cfg.domain}, "
                f"interface {cfg.interface!r}{extra}; {hint}"
            )
        log.info("first rt/lowstate: mode_machine %d latched", self._mode_machine)

    def _prepare_motion_service(self) -> None:
        cfg = self.config
        if cfg.is_simulation:
            log.info("simulation (interface %r): no MotionSwitcher service to query; skipping the motion-service step",
                     cfg.interface)  # fmt: skip
            return
        from unitree_sdk2py.comm.motion_switcher.motion_switcher_client import MotionSwitcherClient

        msc = MotionSwitcherClient()
        msc.SetTimeout(5.0)
        msc.Init()

        def active() -> str:
            code, res = msc.CheckMode()
            if code != 0 or res is None:
                raise RobotError(
                    f"MotionSwitcher CheckMode failed (code {code}); is the robot's motion_switcher service up? "
                    "(for a simulator, set simulation=True)"
                )
            return str(res.get("name") or "")

        name = active()
        if cfg.mode == "arm_sdk":
            if not name:
                raise RobotError(
                    "arm_sdk needs Unitree's built-in motion service running, but none is active (debug mode?); "
                    "restart the robot into its normal mode, or use mode lowcmd"
                )
            log.info("built-in motion service %r active: arm_sdk will blend with it", name)
            return
        if not name:
            log.info("no built-in motion service active (debug mode): rt/lowcmd is ours")
            return
        if not cfg.release_motion_service:
            raise RobotError(
                f"built-in motion service {name!r} is active, so rt/lowcmd would fight it; put the robot in debug mode "
                "(L2+R2 on the remote, robot hanging) or set release_motion_service=True"
            )
        log.warning("releasing built-in motion service %r (the robot goes limp: it must hang on its gantry)", name)
        for _ in range(10):
            msc.ReleaseMode()
            time.sleep(1.0)
            name = active()
            if not name:
                log.info("built-in motion service released")
                return
        raise RobotError(f"MotionSwitcher could not release motion service {name!r} after 10 tries; use debug mode (L2+R2)")

    def _start_writer_check(self, subscriber_cls: Any, msg_type: Any) -> None:
        """Listen on the command topic from the very start of connect(), so DDS discovery of another
        writer has the whole state wait to complete, not only the final ``writer_check_s``."""
        self._writer_check_count = 0
        self._writer_check_listening = True

        def count(_msg: Any) -> None:
            if self._writer_check_listening:
                self._writer_check_count += 1

        # Kept open (muted) until disconnect: all channels are closed together in _close_channels.
        sub = subscriber_cls(self.config.command_topic, msg_type)
        sub.Init(count, 0)
        self._writer_check_sub = sub
        self._writer_check_t0 = time.monotonic()

    def _finish_writer_check(self) -> None:
        """After the first state: listen ``writer_check_s`` more, then refuse if anyone else published."""
        time.sleep(self.config.writer_check_s)
        self._writer_check_listening = False
        n, listened = self._writer_check_count, time.monotonic() - self._writer_check_t0
        if n:
            topic = self.config.command_topic
            raise RobotBusyError(
                f"another process is already publishing on {topic} ({n} messages in {listened:.1f} s on domain "
                f"{self.config.domain}); stop it (another dit4dit-robot, a teleop or SDK example) before starting"
            )

    def _close_channels(self) -> None:
        channels = [self._cmd_pub, self._state_sub, self._writer_check_sub, *self._hand_pubs.values(),
                    *self._hand_subs.values()]  # fmt: skip
        self._cmd_pub = self._state_sub = self._writer_check_sub = None
        self._hand_pubs.clear()
        self._hand_subs.clear()
        # Remove every listener first: dds_set_listener(NULL) waits for callbacks in flight. Deleting an
        # entity while its listener runs can make the last reference drop on the CycloneDDS receive
        # thread, whose dds_delete then waits for the very callback it is in: a deadlock.
        for ch in channels:
            if ch is not None:
                _quiesce_channel(ch)
        for ch in channels:
            if ch is not None:
                try:
                    ch.Close()
                except Exception as e:  # noqa: BLE001 - closing must not mask the original error
                    log.debug("closing channel: %s", e)
        del channels
        gc.collect()

    def _publish_loop(self) -> None:
        from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandCmd_, unitree_hg_msg_dds__LowCmd_

        cfg = self.config
        if cfg.rt_priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(cfg.rt_priority))  # this thread only
                log.info("command publisher runs SCHED_FIFO priority %d", cfg.rt_priority)
            except (PermissionError, OSError) as e:
                log.warning("cannot set SCHED_FIFO priority %d for the command publisher (%s); running at normal "
                            "priority. Grant it with `sudo setcap cap_sys_nice+ep $(readlink -f $(which python3))` "
                            "or an rtprio limit in /etc/security/limits.conf", cfg.rt_priority, e)  # fmt: skip
        period = 1.0 / cfg.rate_hz
        hand_every = max(1, round(cfg.rate_hz / cfg.hand_rate_hz))
        weight_step = cfg.arm_sdk_weight_rate / cfg.rate_hz
        msg = unitree_hg_msg_dds__LowCmd_()
        hand_msgs = {s: unitree_hg_msg_dds__HandCmd_() for s in self.hands}
        rec = np.zeros((), dtype=hg_codec.LOWCMD_DTYPE)
        rec["mode_machine"] = self._mode_machine
        msg.mode_pr = 0
        msg.mode_machine = int(self._mode_machine or 0)
        arm_sdk = cfg.mode == "arm_sdk"
        joints = np.array(g1_spec.ARM_SDK_JOINTS if arm_sdk else range(N))
        mc = rec["motor_cmd"]
        mc["mode"][joints] = 1
        tick = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                t = self._target
                if arm_sdk:
                    # Move the weight toward its target by at most one step per tick.
                    w = ramp_toward(self._weight, self._weight_target, weight_step)
                    self._weight = w
                    mc["q"][g1_spec.ARM_SDK_WEIGHT_SLOT] = w
                mc["q"][joints] = t.q[joints]
                mc["dq"][joints] = t.dq[joints]
                mc["tau"][joints] = t.tau[joints]
                mc["kp"][joints] = t.kp[joints]
                mc["kd"][joints] = t.kd[joints]
                self._fill_msg(msg, rec)
                sent_at = time.monotonic()
                if not self._cmd_pub.Write(msg):
                    self._publish_errors += 1
                else:
                    self._published += 1
                self._send_times[self._send_count % len(self._send_times)] = sent_at
                self._send_weights[self._send_count % len(self._send_weights)] = self._weight
                self._send_count += 1
                if self.hands and tick % hand_every == 0:
                    for side, hand in self.hands.items():
                        hand.fill(hand_msgs[side])
                        self._hand_pubs[side].Write(hand_msgs[side])
            except Exception as e:
                self._last_publish_error = repr(e)
                log.exception("command publisher failed; stopping it")
                return
            tick += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._late_ticks += 1
                self._max_lateness_s = max(self._max_lateness_s, -delay)
                if -delay > period:  # fell a whole period behind: resynchronise rather than burst
                    next_t = time.monotonic()

    @staticmethod
    def _fill_msg(msg: Any, rec: np.ndarray) -> None:
        """Copy the packed record into the IDL message and set its CRC (computed on the same float32s)."""
        mc = rec["motor_cmd"]
        modes, qs, dqs, taus, kps, kds = (mc[k].tolist() for k in ("mode", "q", "dq", "tau", "kp", "kd"))
        for i, m in enumerate(msg.motor_cmd):
            m.mode = modes[i]
            m.q = qs[i]
            m.dq = dqs[i]
            m.tau = taus[i]
            m.kp = kps[i]
            m.kd = kds[i]
        msg.crc = hg_codec.packed_crc(rec)


def _quiesce_channel(ch: Any) -> None:
    """Remove the listener of an SDK ChannelPublisher/ChannelSubscriber's DDS entity (see _close_channels).

    The SDK keeps the entity private; if its layout ever changes this degrades to a plain Close().
    """
    channel = getattr(ch, "_ChannelSubscriber__channel", None) or getattr(ch, "_ChannelPublisher__channel", None)
    if channel is None:
        return
    for holder, attr in ((getattr(channel, "_Channel__reader", None), "_Reader__reader"),
                         (getattr(channel, "_Channel__writer", None), "_Writer__writer")):  # fmt: skip
        entity = getattr(holder, attr, None) if holder is not None else None
        if entity is not None and hasattr(entity, "set_listener"):
            try:
                entity.set_listener(None)
            except Exception as e:  # noqa: BLE001 - best effort before Close()
                log.debug("removing DDS listener: %s", e)


def ramp_toward(value: float, target: float, max_step: float) -> float:
    """One tick of the arm_sdk weight ramp: move toward target by at most max_step, result in [0, 1]."""
    if target > value:
        value = min(target, value + max_step)
    else:
        value = max(target, value - max_step)
    return min(1.0, max(0.0, value))


def _vec(name: str, v: np.ndarray | float, nonneg: bool = False) -> np.ndarray:
    a = np.array(v, dtype=np.float64)  # a copy: the caller's array stays theirs
    if a.ndim == 0:
        a = np.full(N, float(a))
    if a.shape != (N,):
        raise ValueError(f"G1Robot.command: {name} must have shape ({N},) in g1_spec order, got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"G1Robot.command: {name} contains NaN/inf at joints {np.flatnonzero(~np.isfinite(a)).tolist()}")
    if nonneg and np.any(a < 0):
        raise ValueError(f"G1Robot.command: {name} must be >= 0, got negative at {np.flatnonzero(a < 0).tolist()}")
    a.setflags(write=False)
    return a
