"""The Unitree G1 (29 DoF) over unitree_sdk2py / CycloneDDS. The same class drives the real robot
and ``dit4dit-sim`` (which speaks the same topics).

    robot = G1Robot(G1RobotConfig(interface="lo", domain=1, mode="lowcmd"))
    robot.connect(timeout_s=5.0)
    st = robot.state()                          # q, dq, tau, imu, remote, tick, stamp, age_s
    robot.command(q, kp, kd)                    # latest target; the 500 Hz thread sends it
    robot.damp()                                # kp = 0, kd > 0, keeps publishing
    robot.disconnect()

or, from a real-time loop of one's own (runtime/realtime), with nothing else in between:

    robot.connect(publisher=False)
    while ...:
        st = robot.poll()                       # the newest state; any backlog is skipped
        robot.send(target, stamp_ns)            # one LowCmd now, source-stamped

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
5. Start the publisher thread at ``rate_hz`` (unless ``publisher=False``). Until the first ``command``
   it sends damping (lowcmd: kp = 0, kd = damping kd) or weight 0 (arm_sdk).

Fresh state by construction: readers are polled (drivers/dds_io.py), never called per message, so
the newest sample is used and any backlog is skipped (counted in ``stats["states_skipped"]``). A
state's ``stamp`` is when the robot sent it, from its own ``tick`` (drivers/sender_clock.py), and
``age_s`` runs from there: a backlog or a frozen robot clock shows up as age, which receipt time
hides. A stream whose tick never advances (unitree_mujoco's Python bridge) falls back to receipt time
(``RobotState.clock == "receipt"``, with a warning).

Every LowCmd carries ``mode_pr = 0`` (PR), the latched ``mode_machine`` and a valid CRC, packed by
drivers/hg_codec.py into one preallocated record and written as raw bytes. Every received
LowState's CRC is checked; bad frames are dropped and counted (``accept_zero_crc`` lets a simulator
that leaves crc = 0, like unitree_mujoco's Python bridge, through).

``arm_sdk`` mode: arms + waist (``g1_spec.ARM_SDK_JOINTS``) on ``rt/arm_sdk``, blend weight in
``motor_cmd[29].q``; the weight moves toward its target by at most ``arm_sdk_weight_rate / rate_hz``
per send (counted in sends, so a late loop ramps slower, never faster) and is never dropped to
0 at once. ``damp()`` in arm_sdk mode holds the last target while the weight ramps to 0, handing
the arms back to Unitree's controller (issue 5: "the weight ramps to 0 instead").
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from . import g1_spec, hg_codec
from .dds_io import RawReader, RawWriter, source_ns
from .hands import SIDES, Dex3Hand
from .remote import REMOTE_LOST_AFTER_S, Remote, RemoteError, RemoteMonitor
from .sender_clock import SenderClock

log = logging.getLogger(__name__)

N = g1_spec.NUM_JOINTS
STATE_DEPTH = 32  # samples a reader holds between polls (64 ms at 500 Hz); older ones are dropped by DDS
POLL_WAIT_S = 0.0005  # sleep between polls while waiting for a state
TICKLESS_AFTER = 50  # states with a constant tick before the stream is called tickless (warned once)


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
    stamp: float  # time.monotonic() at which the robot sent it, from its tick (see the module docstring)
    age_s: float  # now - stamp, at the state() / poll() call
    stale: bool  # age_s > config.stale_after_s
    temperature: np.ndarray = field(default_factory=lambda: np.zeros((N, 2)))  # (29, 2) casing, winding °C
    motor_error: np.ndarray = field(default_factory=lambda: np.zeros(N, dtype=np.uint32))  # non-zero = fault
    received: float = 0.0  # time.monotonic() at which this process took it from DDS
    clock: Literal["tick", "receipt"] = "tick"  # what stamp is measured from ("receipt": tickless stream)


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


class LowCmdTarget:
    """One immutable command for all 29 joints (replaced whole, so a publisher never sees a half update).

    ``damping``: the damping command (lowcmd: kp = 0, kd > 0 at the measured pose; arm_sdk: the
    weight ramps to 0 while the last target is held).
    """

    __slots__ = ("damping", "dq", "kd", "kp", "q", "tau")

    def __init__(self, q: np.ndarray, dq: np.ndarray, tau: np.ndarray, kp: np.ndarray, kd: np.ndarray,
                 damping: bool = False) -> None:
        self.q, self.dq, self.tau, self.kp, self.kd, self.damping = q, dq, tau, kp, kd, damping


class G1Robot:
    """See the module docstring. Thread-safe: poll(), state(), command() and send() may be called from any thread.

    Two ways to drive it:

    * ``connect()`` (``publisher=True``): a thread sends the newest ``command()`` target at ``rate_hz``,
      for tools and tests that set targets now and then (calibration, examples).
    * ``connect(publisher=False)``: nothing is sent until the caller's own loop calls ``send()`` once
      per tick, after ``poll()`` gave it the newest state. The real-time loop (runtime/realtime) works
      so, with its safety layer between the two.
    """

    def __init__(self, config: G1RobotConfig | None = None) -> None:
        self.config = config or G1RobotConfig()
        cfg = self.config
        self._lock = threading.Lock()  # guards the reader, the newest state and the target
        self._latest: RobotState | None = None
        self._mode_machine: int | None = None
        self._clock = SenderClock(g1_spec.TICK_S)
        self._warned_tickless = False
        self._remote_monitor = RemoteMonitor(cfg.remote_lost_s)
        self._target: LowCmdTarget | None = None
        self._weight = 0.0  # arm_sdk blend weight actually sent
        self._weight_step = cfg.arm_sdk_weight_rate / cfg.rate_hz
        self._hand_every = max(1, round(cfg.rate_hz / cfg.hand_rate_hz))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_reader: RawReader | None = None
        self._cmd_writer: RawWriter | None = None
        self._record: hg_codec.LowCmdRecord | None = None
        self._hand_readers: dict[str, RawReader] = {}
        self._hand_writers: dict[str, RawWriter] = {}
        self._hand_msgs: dict[str, Any] = {}
        self._hand_clocks = {s: SenderClock(1e-9, modulus=None) for s in SIDES}
        self.hands: dict[str, Dex3Hand] = {s: Dex3Hand(s) for s in SIDES} if cfg.hands else {}
        self._connected = False
        # counters (read through .stats)
        self._states_received = 0
        self._states_skipped = 0  # older samples taken together with a newer one: never handled
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
    def connect(self, timeout_s: float = 5.0, publisher: bool = True) -> None:
        """Wait for state, latch mode_machine, prepare the motion service, check for other writers,
        then start publishing (``publisher=False``: the caller sends). RobotError (or RobotBusyError)
        with what to check on failure."""
        if self._connected:
            return
        cfg = self.config
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_, HandState_, LowCmd_, LowState_

        init_dds(cfg.domain, cfg.interface)
        writer_check: RawReader | None = None
        try:
            # Listen on the command topic from the very start, so DDS discovery of another writer has the
            # whole state wait to complete, not only the final writer_check_s.
            writer_check = RawReader(cfg.domain, cfg.command_topic, LowCmd_, depth=64)
            t_listen = time.monotonic()
            self._state_reader = RawReader(cfg.domain, g1_spec.TOPIC_LOWSTATE, LowState_, depth=STATE_DEPTH)
            self._wait_first_state(timeout_s)
            self._prepare_motion_service()
            time.sleep(cfg.writer_check_s)
            others = len(writer_check.take())
            if others:
                raise RobotBusyError(
                    f"another process is already publishing on {cfg.command_topic} ({others} messages in "
                    f"{time.monotonic() - t_listen:.1f} s on domain {cfg.domain}); stop it (another dit4dit-robot, "
                    "a teleop or SDK example) before starting"
                )
            for side, hand in self.hands.items():
                self._hand_readers[side] = RawReader(cfg.domain, hand.state_topic, HandState_, depth=STATE_DEPTH)
                self._hand_writers[side] = RawWriter(cfg.domain, hand.cmd_topic, HandCmd_)
                from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandCmd_

                self._hand_msgs[side] = unitree_hg_msg_dds__HandCmd_()
            self._cmd_writer = RawWriter(cfg.domain, cfg.command_topic, LowCmd_)
        except BaseException:
            self._close_channels()
            raise
        finally:
            if writer_check is not None:
                writer_check.close()
        joints = g1_spec.ARM_SDK_JOINTS if cfg.mode == "arm_sdk" else range(N)
        self._record = hg_codec.LowCmdRecord(int(self._mode_machine or 0), joints)
        self._weight = 0.0
        with self._lock:
            self._target = self.damping_target()
        self._connected = True
        if publisher:
            self._stop.clear()
            self._thread = threading.Thread(target=self._publish_loop, name="g1-lowcmd", daemon=True)
            self._thread.start()
        # A program that exits without disconnect() (an exception in the controller) still leaves the
        # robot damped / the weight ramped out.
        atexit.register(self._disconnect_at_exit)
        log.info(
            "G1 connected: domain %d on %s, mode %s, mode_machine %d, %s %s%s",
            cfg.domain, cfg.interface, cfg.mode, self._mode_machine, cfg.command_topic,
            f"published at {cfg.rate_hz:.0f} Hz" if publisher else "sent by the caller's loop",
            " (simulation)" if cfg.is_simulation else "",
        )  # fmt: skip

    def disconnect(self) -> None:
        """Leave the robot passive, then stop publishing.

        lowcmd: damping for 0.1 s. arm_sdk: the weight ramps to 0 first (never dropped at once).
        Without the publisher thread the caller's loop must have damped already; this sends the
        damping command a while itself so the robot is never left on a live target.
        """
        if not self._connected:
            self._close_channels()
            return
        try:
            self.damp()
            own_loop = not self._thread_alive()
            limit = time.monotonic() + (1.5 * self._weight / self.config.arm_sdk_weight_rate + 0.5
                                        if self.config.mode == "arm_sdk" else 0.1)
            while time.monotonic() < limit and (self.config.mode != "arm_sdk" or self._weight > 0.0):
                if own_loop:
                    self._send_target()
                time.sleep(1.0 / self.config.rate_hz)
            if self._weight > 0.0:
                log.error("arm_sdk weight still %.3f at disconnect (publisher stalled)", self._weight)
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
        return self._connected and (self._thread is None or self._thread.is_alive())

    def poll(self) -> RobotState | None:
        """Take every rt/lowstate waiting and keep the newest valid one (older ones are never handled).

        Non-blocking; returns the newest state so far (None before the first), its age as of now."""
        with self._lock:
            if self._state_reader is not None:
                samples = self._state_reader.take()
                if samples:
                    self._handle_states(samples)
            for side, reader in self._hand_readers.items():
                samples = reader.take()
                if samples:
                    self._handle_hand_state(side, samples[-1], len(samples))
            latest = self._latest
        if latest is None:
            return None
        return self._aged(latest, time.monotonic())

    def state(self) -> RobotState:
        """The newest state (read-only arrays), with its age. RobotError before the first state."""
        st = self.poll()
        if st is None:
            raise RobotError("no rt/lowstate received yet; call connect() first")
        return st

    def wait_for_state(self, newer_than: float, timeout_s: float) -> bool:
        """Block until a state sent after ``newer_than`` (monotonic, ``RobotState.stamp``) arrives; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.poll()
            if st is not None and st.stamp > newer_than:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_WAIT_S)

    def _aged(self, st: RobotState, now: float) -> RobotState:
        age = now - st.stamp
        return dataclasses.replace(st, age_s=age, stale=age > self.config.stale_after_s,
                                   remote_lost=self._remote_monitor.lost(now))

    def _handle_states(self, samples: list[tuple[bytes, int]]) -> None:
        """Newest valid sample first: older samples in the same batch are skipped, not handled in order."""
        received = time.monotonic()
        self._states_received += len(samples)
        for k in range(len(samples) - 1, -1, -1):
            try:
                rec = hg_codec.lowstate_from_cdr(samples[k][0])
            except ValueError as e:  # malformed sample: count it like a bad CRC
                self._crc_errors += 1
                log.warning("dropped malformed rt/lowstate: %s", e)
                continue
            crc = int(rec["crc"])
            if not (crc == 0 and self.config.accept_zero_crc) and crc != hg_codec.packed_crc(rec):
                self._crc_errors += 1
                if self._crc_errors in (1, 10, 100) or self._crc_errors % 1000 == 0:
                    log.warning("dropped rt/lowstate with a bad CRC (%d so far)", self._crc_errors)
                continue
            self._states_skipped += k
            self._latest = self._parse_state(rec, received)
            return

    def _parse_state(self, rec: np.ndarray, received: float) -> RobotState:
        ms = rec["motor_state"][:N]
        imu = rec["imu_state"]
        try:
            remote = Remote.parse(rec["wireless_remote"].tobytes())
        except RemoteError:  # cannot happen with 40 bytes; keep the state anyway
            remote = Remote()
        mm = int(rec["mode_machine"])
        if self._mode_machine is None:
            self._mode_machine = mm
        elif mm != self._mode_machine:
            self._mode_machine_mismatches += 1
            if self._mode_machine_mismatches == 1:
                log.error("rt/lowstate mode_machine changed from %d to %d; commands keep %d",
                          self._mode_machine, mm, self._mode_machine)  # fmt: skip
        tick = int(rec["tick"])
        restarts = self._clock.restarts
        sent_at = self._clock.observe(tick, received)
        if self._clock.restarts != restarts:
            log.warning("rt/lowstate tick went back (to %d): the robot's clock restarted; re-anchored", tick)
        if not self._clock.ticking and self._states_received > TICKLESS_AFTER and not self._warned_tickless:
            self._warned_tickless = True
            log.warning("rt/lowstate tick never advances (always %d): state age is measured from receipt, so a "
                        "backlog or a frozen robot cannot be seen (a simulator that sets no tick?)", tick)  # fmt: skip
        self._remote_monitor.update(remote, received)
        arrays = {
            "q": ms["q"], "dq": ms["dq"], "tau": ms["tau_est"], "temperature": ms["temperature"],
            "quat": imu["quaternion"], "rpy": imu["rpy"], "gyro": imu["gyroscope"], "acc": imu["accelerometer"],
        }  # fmt: skip
        a = {k: _frozen(v.astype(np.float64)) for k, v in arrays.items()}
        return RobotState(
            q=a["q"], dq=a["dq"], tau=a["tau"],
            imu=ImuState(a["quat"], a["rpy"], a["gyro"], a["acc"], float(imu["temperature"])),
            remote=remote, remote_lost=False, tick=tick, mode_machine=mm, stamp=sent_at, age_s=0.0, stale=False,
            temperature=a["temperature"], motor_error=_frozen(ms["motorstate"].astype(np.uint32)),
            received=received, clock="tick" if self._clock.ticking else "receipt",
        )  # fmt: skip

    def _handle_hand_state(self, side: str, newest: tuple[bytes, int], n: int) -> None:
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandState_

        received = time.monotonic()
        try:
            msg = HandState_.deserialize(newest[0])
        except Exception as e:  # noqa: BLE001 - a malformed sample is dropped, the stream goes on
            log.warning("dropped malformed %s: %s", self.hands[side].state_topic, e)
            return
        # No tick in HandState_: the sender's DDS source timestamp is its clock.
        sent_at = self._hand_clocks[side].observe(int(newest[1]), received)
        self.hands[side].on_state(msg, stamp=sent_at)

    def _wait_first_state(self, timeout_s: float) -> None:
        cfg = self.config
        deadline = time.monotonic() + timeout_s
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(POLL_WAIT_S)
        if self._latest is None:
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

    @property
    def arm_sdk_weight(self) -> float:
        """The blend weight last sent (arm_sdk mode; 0 in lowcmd)."""
        return self._weight

    @property
    def stats(self) -> dict[str, float]:
        return {
            "states_received": self._states_received,
            "states_skipped": self._states_skipped,
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
        """Set the latest target (29 joints, g1_spec order) for the publisher thread. In arm_sdk mode only
        the arm/waist entries are sent and the weight ramps to 1. No limiting here: runtime/realtime/safety.py does that."""
        if not self._connected:
            raise RobotError("G1Robot.command before connect()")
        target = make_target(q, kp, kd, dq, tau)
        with self._lock:
            self._target = target
        if self._thread is not None and not self._thread.is_alive():
            raise RobotError(f"the command publisher thread has stopped: {self._last_publish_error}")

    def damp(self, kd: float | None = None) -> None:
        """lowcmd: kp = 0, kd > 0 on every joint, still published at rate_hz.
        arm_sdk: hold the last target while the weight ramps to 0 (arms return to Unitree's controller).
        Dex3 hands (if on) are released (passive)."""
        for hand in self.hands.values():
            hand.stop()  # Dex3: timeout bit, kp = kd = 0 (passive)
        target = self.damping_target(kd)
        with self._lock:
            self._target = target

    def damping_target(self, kd: float | None = None) -> LowCmdTarget:
        """The damping command now: lowcmd kp = 0, kd at the measured pose; arm_sdk the last target, weight -> 0."""
        kd = self.config.damping_kd if kd is None else float(kd)
        if not kd > 0:
            raise ValueError(f"damping kd must be > 0, got {kd}")
        last = self._target
        if self.config.mode == "arm_sdk" and last is not None:
            return LowCmdTarget(last.q, last.dq, last.tau, last.kp, last.kd, damping=True)
        latest = self._latest
        q = np.array(latest.q if latest is not None else np.zeros(N), dtype=np.float64)
        z = np.zeros(N)
        return LowCmdTarget(q, z, z, z, np.full(N, kd), damping=True)

    @property
    def damping(self) -> bool:
        """True while the damping command (lowcmd) or the weight ramp-out (arm_sdk) is in force."""
        t = self._target
        return t is None or t.damping

    def send(self, target: LowCmdTarget, stamp_ns: int | None = None) -> int:
        """Publish one LowCmd now (``publisher=False`` mode: the caller's loop, once per tick).

        ``stamp_ns``: ``time.monotonic_ns()`` the caller's limits were computed for; it becomes the DDS
        source timestamp, so what is recorded on the wire is timed as the caller reasoned. Returns it.
        arm_sdk: the weight moves one step toward 1 (0 when damping) per call, counted in sends, so a
        late loop ramps slower, never faster. Dex3 hands go out every ``rate_hz / hand_rate_hz`` sends.
        """
        rec, writer = self._record, self._cmd_writer
        if rec is None or writer is None:
            raise RobotError("G1Robot.send before connect()")
        stamp_ns = time.monotonic_ns() if stamp_ns is None else stamp_ns
        if self.config.mode == "arm_sdk":
            self._weight = ramp_toward(self._weight, 0.0 if target.damping else 1.0, self._weight_step)
            rec.set_slot_q(g1_spec.ARM_SDK_WEIGHT_SLOT, self._weight)
        rec.set(target.q, target.dq, target.tau, target.kp, target.kd)
        try:
            writer.write(rec.serialize(), source_ns(stamp_ns))
            self._published += 1
        except RuntimeError as e:
            self._publish_errors += 1
            self._last_publish_error = str(e)
        i = self._send_count % len(self._send_times)
        self._send_times[i] = stamp_ns * 1e-9
        self._send_weights[i] = self._weight
        if self._hand_writers and self._send_count % self._hand_every == 0:
            for side, hand in self.hands.items():
                msg = self._hand_msgs[side]
                hand.fill(msg)
                self._hand_writers[side].write(msg.serialize(), source_ns(stamp_ns))
        self._send_count += 1
        return stamp_ns

    def sent_q(self) -> np.ndarray:
        """The joint targets of the last LowCmd as they went on the wire (float32 values)."""
        if self._record is None:
            raise RobotError("G1Robot.sent_q before connect()")
        return self._record.sent_q()

    # ---------------------------------------------------------------------------------------------
    # internals
    # ---------------------------------------------------------------------------------------------
    def _thread_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _send_target(self) -> None:
        with self._lock:
            target = self._target
        if target is not None:
            self.send(target)

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

    def _close_channels(self) -> None:
        # Polled readers have no listener, so closing never waits on a callback in flight (the SDK's
        # listener-based subscribers could deadlock here under load).
        with self._lock:
            readers = [self._state_reader, *self._hand_readers.values()]
            self._state_reader = None
            self._hand_readers.clear()
        for r in readers:
            if r is not None:
                r.close()
        for w in [self._cmd_writer, *self._hand_writers.values()]:
            if w is not None:
                w.close()
        self._cmd_writer = None
        self._hand_writers.clear()

    def _publish_loop(self) -> None:
        cfg = self.config
        if cfg.rt_priority > 0:
            set_realtime_priority(cfg.rt_priority, "command publisher")
        period = 1.0 / cfg.rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                self.poll()  # keep the state fresh even when nobody asks for it
                self._send_target()
            except Exception as e:
                self._last_publish_error = repr(e)
                log.exception("command publisher failed; stopping it")
                return
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self._late_ticks += 1
                self._max_lateness_s = max(self._max_lateness_s, -delay)
                if -delay > period:  # fell a whole period behind: resynchronise rather than burst
                    next_t = time.monotonic()


def set_realtime_priority(priority: int, what: str) -> bool:
    """SCHED_FIFO at ``priority`` for the calling thread (threads it starts afterwards inherit it).

    False, with a warning saying how to grant it, where the OS refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as e:
        log.warning("cannot run the %s SCHED_FIFO at priority %d (%s); running at normal priority. Grant it with "
                    "`sudo setcap cap_sys_nice+ep $(readlink -f $(which python3))` or an rtprio limit in "
                    "/etc/security/limits.conf", what, priority, e)  # fmt: skip
        return False
    log.info("%s runs SCHED_FIFO priority %d", what, priority)
    return True


def make_target(q: Any, kp: Any, kd: Any, dq: Any = None, tau: Any = None) -> LowCmdTarget:
    """A validated LowCmdTarget: finite (29,) arrays, gains >= 0 (ValueError naming the field)."""
    return LowCmdTarget(
        _vec("q", q),
        _vec("dq", 0.0 if dq is None else dq),
        _vec("tau", 0.0 if tau is None else tau),
        _vec("kp", kp, nonneg=True),
        _vec("kd", kd, nonneg=True),
    )


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


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
