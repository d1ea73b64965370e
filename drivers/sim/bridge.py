"""The DDS bridge: the simulated G1 speaks the robot's topics over real unitree_sdk2py/CycloneDDS.

- subscribes ``rt/lowcmd`` (CRC and ``mode_machine`` checked, as the robot does: a mismatching
  command is ignored) and ``rt/arm_sdk`` (weight in ``motor_cmd[29].q``; no CRC required, as
  Unitree's own C++ arm_sdk example sends none), and with hands ``rt/dex3/{left,right}/cmd``;
- publishes ``rt/lowstate`` after every physics step (500 Hz, real-time paced): q, dq, ddq,
  tau_est, pelvis IMU (quaternion w,x,y,z, rpy, gyro, acc), ``tick`` = ms of the robot's clock
  (simulated time, plus any wall time skipped when physics fell more than ``LATE_RESYNC_S`` behind:
  strictly increasing, never left behind the wall clock for good), ``mode_machine`` from the config,
  the 40 wireless-remote bytes, a valid CRC;
- streams the cameras on the ZeroMQ image stream (drivers/cameras/zmq_stream.py, ``source="dit4dit-sim"``);
- answers a ZeroMQ REP "sim control" socket (msgpack maps, see :meth:`SimBridge.handle`).

Real time is the product, so the design keeps one thing in the physics thread (the caller of ``run``)
and nothing in its way:

- Newest command (command_intake.py): no per-message listener. Before each 2 ms step the physics
  thread takes every sample waiting on each command topic (polled readers, depth 64) and applies only
  the newest valid one, as a G1's motor boards apply the latest command; older samples of the batch
  are counted ``superseded``, never applied, so a backlog is never replayed.
- Then one step, one ``rt/lowstate`` and one state snapshot written into shared memory (a seqlock,
  shared_snapshot.py, ~5 µs). The physics process never renders or JPEG-encodes: a render process
  (render_process.py, started by :meth:`SimBridge.start`, normal scheduling at nice +10, exits with
  its parent) builds its own G1Sim from the same SceneConfig and renders each camera at its fps from
  the snapshot. Injected camera latency and published frame counts travel in the same shared block.
- Measured (stats.py): command-to-apply latency (``time.time_ns()`` at the start of the step that first
  uses a command minus its DDS source timestamp), how late each step starts against its schedule,
  re-anchorings when more than ``LATE_RESYNC_S`` behind (overruns) and the real-time factor; the
  control socket's ``stats`` reports them over a window.
- ``rt_priority``: the physics thread runs SCHED_FIFO, set before CycloneDDS starts so its receive
  threads inherit it (after the render process is spawned, so that does not); the control-socket and
  hand-state threads drop back to normal scheduling (priority.py). The CLI also shortens the GIL
  switch interval so a helper thread hands the GIL over within 0.5 ms.
- ``close`` tears down in an order that leaves nothing running: threads joined, DDS readers and
  writers, sockets, then the render process (stop flag, SIGTERM, SIGKILL; reaped).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from dit4dit.drivers import g1_spec
from dit4dit.drivers.dds_io import RawReader, RawWriter
from dit4dit.drivers.hg_codec import LowStateRecord
from dit4dit.drivers.remote import Remote
from dit4dit.drivers.sim.command_intake import CommandIntake, hand_parser, lowcmd_parser, parse_arm_sdk
from dit4dit.drivers.sim.motion_switcher import start_motion_switcher
from dit4dit.drivers.sim.priority import helper_thread_priority, normal_priority, physics_priority
from dit4dit.drivers.sim.render_loop import (  # noqa: F401 - re-exported: the CLI and tests import them from here
    CAMERA_ALIASES,
    DEFAULT_CAMERA_PORT,
    SIM_SOURCE,
    CameraStreamConfig,
)
from dit4dit.drivers.sim.render_process import RenderJob, RenderProcess, RenderThread, picklable_scene
from dit4dit.drivers.sim.scene import G1Sim
from dit4dit.drivers.sim.shared_snapshot import SharedSnapshot
from dit4dit.drivers.sim.stats import BridgeStats, StatsWindow

log = logging.getLogger(__name__)

DEFAULT_CONTROL_PORT = 55570
MOTOR_TEMPERATURE_C = 30  # sim motors do not heat up; a plausible constant keeps temperature checks meaningful
MOTOR_VOLTAGE_V = 48.0
LATE_RESYNC_S = 0.1  # when physics falls this far behind real time, re-anchor the clock (count an overrun)
COMMAND_DEPTH = 64  # command samples a reader holds between two steps; older ones are dropped by DDS


@dataclass
class BridgeConfig:
    domain: int = g1_spec.SIM_DOMAIN
    interface: str = "lo"
    mode_machine: int = 5  # g1_29dof_rev_1_0 (g1-interface.md §2.7)
    host: str = "127.0.0.1"  # where the camera and control sockets bind
    cameras: list[CameraStreamConfig] = field(default_factory=lambda: [CameraStreamConfig()])
    control_port: int | None = DEFAULT_CONTROL_PORT
    real_time: bool = True  # pace physics to the wall clock; False: as fast as possible
    check_crc: bool = True  # drop rt/lowcmd with a bad CRC, as the robot does
    jpeg_quality: int = 90
    hands: bool = False  # serve rt/dex3/{left,right}/cmd|state (the sim must have Dex3 hands)
    hand_state_rate_hz: float = 100.0  # Unitree's hand tools run at 100 Hz
    rt_priority: int = 0  # > 0: the physics thread (and DDS's receive threads) SCHED_FIFO at this priority
    render_in_process: bool = False  # debugging baseline: render in a thread here (holds the GIL against physics)

    def __post_init__(self) -> None:
        if not 0 <= self.domain <= 232:
            raise ValueError(f"DDS domain must be 0..232, got {self.domain}")
        if not 0 <= self.mode_machine <= 255:
            raise ValueError(f"mode_machine must fit a byte, got {self.mode_machine}")
        if not 0 <= self.rt_priority <= 99:
            raise ValueError(f"rt_priority must be 0..99 (0 = normal scheduling), got {self.rt_priority}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        ports = [c.port for c in self.cameras] + ([self.control_port] if self.control_port else [])
        if len(set(ports)) != len(ports):
            raise ValueError(f"camera and control ports must differ, got {ports}")


class SimBridge:
    """Runs a :class:`G1Sim` behind the G1's DDS topics, a camera stream and a control socket."""

    def __init__(self, sim: G1Sim, config: BridgeConfig | None = None) -> None:
        self.sim = sim
        self.config = config or BridgeConfig()
        for cam in self.config.cameras:
            if cam.model_camera not in sim.camera_names():
                raise ValueError(f"camera {cam.name!r}: the model has no camera {cam.model_camera!r}; "
                                 f"available: {', '.join(sim.camera_names())}")
        if self.config.hands and not sim.hand_sides:
            raise ValueError("hands=True needs a scene with Dex3 hands: G1Sim(SceneConfig(hands=True))")
        self.stats = BridgeStats()
        self.remote = Remote()
        self._remote_raw = self.remote.pack()
        self._remote_bytes = list(self._remote_raw)
        self._stop = threading.Event()
        self._physics_idle = threading.Event()  # set while no run() is inside a step
        self._physics_idle.set()
        self._threads: list[threading.Thread] = []
        self._ctx = zmq.Context()
        self._control: zmq.Socket | None = None
        self._lowstate_pub: RawWriter | None = None
        self._lowstate = LowStateRecord(self.config.mode_machine)
        self._lowcmd: CommandIntake | None = None
        self._arm_sdk: CommandIntake | None = None
        self._hand_cmds: dict[str, CommandIntake] = {}
        self._hand_pubs: dict[str, RawWriter] = {}
        self._command_stamps: dict[str, int] = {}  # DDS source stamp of the command in force, per source
        self._snapshot: SharedSnapshot | None = None
        self._motion_switcher: Any = None  # the SDK RPC server answering MotionSwitcher (motion_switcher.py)
        self._renderer: RenderProcess | RenderThread | None = None
        self._started = False
        self._tick_ms = 0
        self._step_s = float(sim.model.opt.timestep)
        self._tick_step_ms = max(1, round(self._step_s * 1000))
        self._window = self._since_start = StatsWindow(self.stats, {}, self._step_s)
        self._final_summary: dict[str, Any] | None = None  # frozen by close(): teardown is not run time
        self._viewer = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """The render process and the control socket, then real-time priority (if configured) and DDS, then
        the helper threads. Call it from the thread that will call run(): the priority is that thread's."""
        cfg = self.config
        try:
            # Whatever starts a process or a thread comes before real-time priority, which they would inherit:
            # the render process, the control socket (ZeroMQ's I/O threads).
            if cfg.cameras:
                self._start_renderer()
            if cfg.control_port:
                self._control = self._ctx.socket(zmq.REP)
                self._control.setsockopt(zmq.LINGER, 0)
                try:
                    self._control.bind(f"tcp://{cfg.host}:{cfg.control_port}")
                except zmq.ZMQError as e:
                    raise RuntimeError(f"sim control socket: cannot bind tcp://{cfg.host}:{cfg.control_port}: {e} "
                                       "(another dit4dit-sim running? pick --control-port)") from e
            if cfg.rt_priority and cfg.real_time:
                physics_priority(cfg.rt_priority)  # before DDS starts its receive threads: they inherit it
            elif cfg.rt_priority:
                log.info("--no-realtime: the physics loop never sleeps, so it runs at normal priority")
            self._open_dds()
        except BaseException:
            self.close()
            raise
        self._started = True
        self._window = StatsWindow(self.stats, self._frames(), self._step_s)
        self._since_start = StatsWindow(self.stats, self._frames(), self._step_s)
        if self._control is not None:
            self._spawn(self._control_loop, "sim-control")
        if self._hand_pubs:
            self._spawn(self._hand_state_loop, "sim-hands")

    def _start_renderer(self) -> None:
        cfg, sim = self.config, self.sim
        self._snapshot = SharedSnapshot.create(sim.model, sim.data, len(cfg.cameras))
        for k, cam in enumerate(cfg.cameras):
            self._snapshot.latency[k] = cam.latency_s
        with sim.lock:
            self._snapshot.write(self._tick_ms / 1000.0)
        job = RenderJob(scene=picklable_scene(sim.scene_config), cameras=list(cfg.cameras), host=cfg.host,
                        jpeg_quality=cfg.jpeg_quality, snapshot=self._snapshot.name, parent_pid=os.getpid())
        self._renderer = (RenderThread if cfg.render_in_process else RenderProcess)(job, self._snapshot)
        self._renderer.start()

    def _open_dds(self) -> None:
        from unitree_sdk2py.core.channel import ChannelFactoryInitialize
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_, HandState_, LowCmd_, LowState_

        cfg = self.config
        # The SDK's factory is a per-process singleton: the first domain/interface wins, so run one
        # bridge per process (dit4dit-sim does).
        try:
            ChannelFactoryInitialize(cfg.domain, cfg.interface)
        except Exception as e:
            raise RuntimeError(f"CycloneDDS could not start on domain {cfg.domain}, interface {cfg.interface!r}: "
                               f"{e} (does the interface exist? `ip link`; on lo enable multicast: "
                               "`sudo ip link set lo multicast on`)") from e
        d = cfg.domain
        # One buffer per message (hg_codec), not cyclonedds-python's field-by-field serializer (~0.5 ms).
        self._lowstate_pub = RawWriter(d, g1_spec.TOPIC_LOWSTATE, LowState_)
        self._lowcmd = CommandIntake(RawReader(d, g1_spec.TOPIC_LOWCMD, LowCmd_, COMMAND_DEPTH),
                                     lowcmd_parser(cfg.mode_machine, cfg.check_crc), self.stats.lowcmd, self._warn_once)
        self._arm_sdk = CommandIntake(RawReader(d, g1_spec.TOPIC_ARM_SDK, LowCmd_, COMMAND_DEPTH), parse_arm_sdk,
                                      self.stats.arm_sdk, self._warn_once)
        if cfg.hands:
            for side in self.sim.hand_sides:
                reader = RawReader(d, g1_spec.TOPIC_DEX3_CMD.format(side=side), HandCmd_, COMMAND_DEPTH)
                self._hand_cmds[side] = CommandIntake(reader, hand_parser(side), self.stats.hand_cmd, self._warn_once)
                self._hand_pubs[side] = RawWriter(d, g1_spec.TOPIC_DEX3_STATE.format(side=side), HandState_)
        # Unitree's low-level programs first ask the robot's MotionSwitcher; answer as a G1 in debug mode does.
        # Its request thread starts under normal scheduling: it must never compete with the physics.
        with normal_priority():
            self._motion_switcher = start_motion_switcher()

    def _spawn(self, fn, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Release everything, leaving nothing running: threads, DDS, sockets, then the render process."""
        self._stop.set()
        self._physics_idle.wait(2.0)  # a run() in another thread finishes its step
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()
        if self._started and self._final_summary is None:
            self._final_summary = self.summary()
        intakes = [self._lowcmd, self._arm_sdk, *self._hand_cmds.values()]
        writers = [self._lowstate_pub, *self._hand_pubs.values()]
        self._lowcmd = self._arm_sdk = self._lowstate_pub = None
        self._hand_cmds, self._hand_pubs = {}, {}
        for intake in intakes:
            if intake is not None:
                intake.close()
        for w in writers:
            if w is not None:
                w.close()
        if self._control is not None:
            self._control.close(linger=0)
            self._control = None
        self._ctx.term()
        if self._renderer is not None:
            self._renderer.stop()
            self._renderer = None
        if self._snapshot is not None:
            self._snapshot.close()
            self._snapshot = None
        if self._viewer is not None:
            self._viewer.close()
            self._viewer = None

    def attach_viewer(self, viewer: Any) -> None:
        """A mujoco.viewer passive handle, synced from the physics loop at ~60 Hz."""
        self._viewer = viewer

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)

    # ------------------------------------------------------------------ commands
    def _apply_newest_commands(self, now_ns: int) -> None:
        """The newest valid sample of each command topic, applied; its latency recorded."""
        sim, st = self.sim, self.stats
        cmd = self._lowcmd.newest() if self._lowcmd is not None else None
        if cmd is not None:
            if cmd.mode_pr != 0:
                st.lowcmd_mode_pr_ab += 1
                self._warn_once("ab", "rt/lowcmd has mode_pr=1 (AB: raw ankle/waist motors A/B); the sim models "
                                      "those joints as pitch/roll (PR) and applies the command as PR. Use mode_pr=0.")
            sim.set_command(cmd.q, cmd.kp, cmd.kd, dq=cmd.dq, tau=cmd.tau, enabled=cmd.enabled)
            self._command_stamps["lowcmd"] = cmd.stamp_ns
            st.command_latency_ms.add((now_ns - cmd.stamp_ns) * 1e-6)
        cmd = self._arm_sdk.newest() if self._arm_sdk is not None else None
        if cmd is not None:
            sim.set_arm_sdk(cmd.q, cmd.kp, cmd.kd, cmd.weight, dq=cmd.dq, tau=cmd.tau)
            self._command_stamps["arm_sdk"] = cmd.stamp_ns
            st.command_latency_ms.add((now_ns - cmd.stamp_ns) * 1e-6)
        for side, intake in self._hand_cmds.items():
            cmd = intake.newest()
            if cmd is not None:
                sim.set_hand_command(side, cmd.q, cmd.kp, cmd.kd, dq=cmd.dq, tau=cmd.tau, enabled=cmd.enabled)

    def _hand_state_loop(self) -> None:
        from dit4dit.drivers.hands import pack_mode
        from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandState_

        helper_thread_priority()
        msgs = {side: unitree_hg_msg_dds__HandState_() for side in self._hand_pubs}
        period = 1.0 / self.config.hand_state_rate_hz
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self.sim.lock:
                states = {side: self.sim.hand_state(side) for side in self._hand_pubs}
            for side, pub in self._hand_pubs.items():
                msg, st = msgs[side], states[side]
                for i, ms in enumerate(msg.motor_state[: len(g1_spec.DEX3_JOINTS)]):
                    ms.mode = pack_mode(i)
                    ms.q, ms.dq, ms.tau_est = float(st["q"][i]), float(st["dq"][i]), float(st["tau"][i])
                    ms.temperature = [MOTOR_TEMPERATURE_C, MOTOR_TEMPERATURE_C]
                pub.write(msg.serialize())
                self.stats.hand_state_published += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -LATE_RESYNC_S:
                next_t = time.monotonic()
            self._stop.wait(max(0.0, delay))

    # ------------------------------------------------------------------ physics + lowstate
    def fill_lowstate(self) -> bytes:
        """The current sim state as a serialized rt/lowstate sample with its CRC (call under sim.lock)."""
        sim = self.sim
        imu = sim.imu()
        # tick: milliseconds of simulated time since the bridge started (unitree_mujoco's C++ bridge
        # uses sim ms too); it keeps counting across resets so it never repeats or goes back
        self._lowstate.fill(
            q=sim.joint_positions(), dq=sim.joint_velocities(), ddq=sim.data.qacc[sim._dadr],
            tau=sim.joint_torques(), quaternion=imu["quaternion"], rpy=imu["rpy"], gyroscope=imu["gyroscope"],
            accelerometer=imu["accelerometer"], tick=self._tick_ms, wireless_remote=self._remote_raw,
            motor_mode=1, temperature=MOTOR_TEMPERATURE_C, voltage=MOTOR_VOLTAGE_V, imu_temperature=MOTOR_TEMPERATURE_C)
        return self._lowstate.serialize()

    def step_and_publish(self) -> None:
        """The newest commands applied, one physics step, one rt/lowstate message, one camera snapshot."""
        self.stats.seq += 1  # odd: this step's counters are being updated (stats.py)
        self._apply_newest_commands(time.time_ns())
        with self.sim.lock:
            self.sim.step(1)
            self._tick_ms += self._tick_step_ms
            sample = self.fill_lowstate()
            if self._snapshot is not None:
                self._snapshot.write(self._tick_ms / 1000.0)  # device stamp: the robot clock (tick), in s
        self._lowstate_pub.write(sample)
        self.stats.steps += 1
        self.stats.lowstate_published += 1
        self.stats.seq += 1

    def run(self, duration_s: float | None = None) -> None:
        """The physics loop, in the calling thread, until stop() (or duration_s of wall time)."""
        if not self._started:
            self.start()
        dt = self._step_s
        t0 = time.perf_counter()
        next_t = t0
        last_view = 0.0
        self._physics_idle.clear()
        try:
            while not self._stop.is_set():
                if self.config.real_time:
                    self.stats.record_step_lateness(time.perf_counter() - next_t)
                self.step_and_publish()
                now = time.perf_counter()
                if duration_s is not None and now - t0 >= duration_s:
                    break
                if self._viewer is not None and now - last_view > 1 / 60:
                    if not self._viewer.is_running():
                        break
                    with self.sim.lock:
                        self._viewer.sync()
                    last_view = now
                if not self.config.real_time:
                    continue
                next_t += dt
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                elif -delay > LATE_RESYNC_S:
                    self.stats.overruns += 1
                    next_t = time.perf_counter()
                    # The robot's clock (tick) keeps running while physics was stalled, as a G1's does: the
                    # states after this gap carry the time that passed, so a controller sees the stall as
                    # age rather than a clock that fell behind for good.
                    self._tick_ms += int(-delay * 1000)
        finally:
            self._physics_idle.set()

    # ------------------------------------------------------------------ measurements
    def _frames(self) -> dict[str, int]:
        """Frames the renderer has published, per camera."""
        snap = self._snapshot
        if snap is None:
            return {}
        return {c.name: int(snap.frames[k]) for k, c in enumerate(self.config.cameras)}

    def totals(self) -> dict[str, Any]:
        """Every counter since start (the ``state`` reply's ``stats``)."""
        return self.stats.totals(self._frames())

    def summary(self) -> dict[str, Any]:
        """The totals plus the real-time figures since start (dit4dit-sim prints it at exit)."""
        if self._final_summary is not None:
            return self._final_summary
        since = self._since_start.report(self.stats, self._frames())
        keys = ("window_s", "real_time_factor", "command_latency_ms", "physics_step_late_ms")
        return {**self.totals(), **{k: since[k] for k in keys}}

    # ------------------------------------------------------------------ control socket
    def _control_loop(self) -> None:
        helper_thread_priority()
        sock = self._control
        while not self._stop.is_set():
            self._check_renderer()
            if not sock.poll(100):
                continue
            raw = sock.recv()
            try:
                req = msgpack.unpackb(raw, raw=False)
                if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
                    raise TypeError("a request is a msgpack map with a string 'cmd', e.g. {'cmd': 'state'}")
                reply = {"ok": True, **self.handle(req["cmd"], req)}
            except Exception as e:  # noqa: BLE001 - every failure is answered, the socket stays usable
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            sock.send(msgpack.packb(reply, use_bin_type=True))

    def _check_renderer(self) -> None:
        r = self._renderer
        if r is not None and not r.alive and not self._stop.is_set():
            self._warn_once("renderer", "the camera renderer has stopped: no more frames will be published "
                                        "(physics and DDS go on; see its messages above)")

    COMMANDS = ("ping", "reset", "state", "stats", "task_state", "remote", "set_latency", "set_camera_latency",
                "set_object_pose", "camera_info")

    def handle(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        """One control request -> reply fields. Commands:

        ping                                     -> {sim_time}
        reset {seed: int|None, task: str|None}   -> {objects}
        state                                    -> {sim_time, tick, q, dq, tau, imu, objects, ee, arm_sdk_weight,
                                                     command, command_stamp_ns, remote, stats, hands}
        stats {reset: bool = False}              -> the real-time report since the last reset (or start), see
                                                    stats.StatsWindow.report; reset: a new window begins now
        task_state                               -> {task, seed, success, info, objects, sim_time}
        remote {buttons: [str], sticks: {lx, ly, rx, ry, l2}}  -> {bytes}  (held until the next remote)
        set_latency / set_camera_latency {seconds, camera: str|None}  -> {latency}
        set_object_pose {name, pos: [3], quat: [4] wxyz}        -> {}
        camera_info {camera}                     -> {K (at the stream size), T_world_cam (OpenCV axes), width,
                                                     height, fps, address, latency}
        """
        sim = self.sim
        if cmd == "ping":
            return {"sim_time": sim.time}
        if cmd == "reset":
            seed, task = req.get("seed"), req.get("task")
            if seed is not None and not isinstance(seed, int):
                raise ValueError(f"reset seed must be an int or nil, got {seed!r}")
            objects = sim.reset(seed=seed, task=task)
            return {"objects": objects}
        if cmd == "state":
            with sim.lock:
                imu = {k: v.tolist() for k, v in sim.imu().items()}
                source = sim.command_source
                return {
                    "sim_time": sim.time, "tick": self._tick_ms, "q": sim.joint_positions().tolist(),
                    "dq": sim.joint_velocities().tolist(), "tau": sim.joint_torques().tolist(), "imu": imu,
                    "objects": sim.object_poses(), "ee": {k: v.tolist() for k, v in sim.ee_poses().items()},
                    "arm_sdk_weight": sim.arm_sdk_weight, "command": source,
                    "command_stamp_ns": self._command_stamps.get(source),
                    "remote": self._remote_bytes, "stats": self.totals(),
                    "hands": {side: sim.hand_state(side)["q"].tolist() for side in sim.hand_sides},
                }
        if cmd == "stats":
            reset = req.get("reset", False)
            if not isinstance(reset, bool):
                raise ValueError(f"stats 'reset' must be true or false, got {reset!r}")
            frames = self._frames()
            report = self._window.report(self.stats, frames)
            if reset:
                self._window = StatsWindow(self.stats, frames, self._step_s)
            return report
        if cmd == "task_state":
            return sim.task_state()
        if cmd == "remote":
            sticks = req.get("sticks") or {}
            if not isinstance(sticks, dict) or set(sticks) - {"lx", "ly", "rx", "ry", "l2"}:
                raise ValueError(f"remote sticks must be a map with keys among lx, ly, rx, ry, l2; got {sticks!r}")
            for k, v in sticks.items():
                if not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1.0:
                    raise ValueError(f"remote stick {k} must be a number in [-1, 1], got {v!r}")
            self.set_remote(Remote.from_buttons(req.get("buttons") or [], **sticks))
            return {"bytes": self._remote_bytes}
        if cmd in ("set_latency", "set_camera_latency"):
            seconds = req.get("seconds")
            if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 5:
                raise ValueError(f"latency 'seconds' must be a number in [0, 5], got {seconds!r}")
            name = req.get("camera")
            targets = [k for k, c in enumerate(self.config.cameras) if name is None or c.name == name]
            if not targets or self._snapshot is None:
                raise ValueError(f"no camera stream {name!r}; streams: {[c.name for c in self.config.cameras]}")
            for k in targets:
                self._snapshot.latency[k] = float(seconds)  # the renderer reads it per frame
            return {"latency": self._latencies()}
        if cmd == "set_object_pose":
            pos, quat = req.get("pos"), req.get("quat", [1.0, 0.0, 0.0, 0.0])
            if not (isinstance(pos, list) and len(pos) == 3 and isinstance(quat, list) and len(quat) == 4):
                raise ValueError("set_object_pose needs pos [x, y, z] and quat [w, x, y, z]")
            sim.set_object_pose(str(req.get("name")), pos, quat)
            return {}
        if cmd == "camera_info":
            name = req.get("camera", "head")
            cams = {c.name: c for c in self.config.cameras}
            if name not in cams:
                raise ValueError(f"no camera stream {name!r}; streams: {list(cams)}")
            c = cams[name]
            with sim.lock:
                T = sim.camera_pose(c.model_camera, "opencv")
            K = sim.camera_intrinsics(c.model_camera, c.width, c.height)
            return {"K": K.tolist(), "T_world_cam": T.tolist(), "width": c.width, "height": c.height,
                    "fps": c.fps, "address": f"tcp://{self.config.host}:{c.port}", "latency": self._latencies()[name]}
        raise ValueError(f"unknown command {cmd!r}; commands: {', '.join(self.COMMANDS)}")

    def _latencies(self) -> dict[str, float]:
        snap = self._snapshot
        return {c.name: float(snap.latency[k]) if snap is not None else c.latency_s
                for k, c in enumerate(self.config.cameras)}

    def set_remote(self, remote: Remote) -> None:
        """Buttons/sticks reported in rt/lowstate from the next message on (held until changed)."""
        raw = remote.pack()
        self.remote, self._remote_raw, self._remote_bytes = remote, raw, list(raw)


def wait_for_sim(address: str, alive: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Block until a dit4dit-sim answers ``ping`` on its control socket. RuntimeError when ``alive()`` turns
    False (the process exited) or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            control_request(address, "ping", timeout_s=1.0)
            return
        except (TimeoutError, RuntimeError):
            if not alive():
                raise RuntimeError(f"dit4dit-sim exited before its control socket {address} answered") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"dit4dit-sim did not answer on {address} within {timeout_s:.0f} s") from None


def control_request(address: str, cmd: str, timeout_s: float = 5.0, **fields: Any) -> dict[str, Any]:
    """Send one request to a running dit4dit-sim's control socket and return the reply.

    Raises TimeoutError when no reply arrives, RuntimeError with the sim's message when it refuses.
    """
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(address)
        sock.send(msgpack.packb({"cmd": cmd, **fields}, use_bin_type=True))
        if not sock.poll(int(timeout_s * 1000)):
            raise TimeoutError(f"no reply from dit4dit-sim control socket {address} within {timeout_s} s "
                               "(is dit4dit-sim running with that --control-port?)")
        reply = msgpack.unpackb(sock.recv(), raw=False)
    finally:
        sock.close(linger=0)
    if not reply.get("ok"):
        raise RuntimeError(f"dit4dit-sim refused {cmd!r}: {reply.get('error')}")
    return reply
