"""The DDS bridge: the simulated G1 speaks the robot's topics over real unitree_sdk2py/CycloneDDS.

- subscribes ``rt/lowcmd`` (CRC and ``mode_machine`` checked, as the robot does: a mismatching
  command is ignored) and ``rt/arm_sdk`` (weight in ``motor_cmd[29].q``; no CRC required, as
  Unitree's own C++ arm_sdk example sends none); the latest command drives the PD law that
  :class:`G1Sim` recomputes at every 2 ms physics step;
- publishes ``rt/lowstate`` after every physics step (500 Hz, real-time paced): q, dq, ddq,
  tau_est, pelvis IMU (quaternion w,x,y,z, rpy, gyro, acc), ``tick`` = sim time in ms
  (increasing), ``mode_machine`` from the config, the 40 wireless-remote bytes, a valid CRC;
- renders cameras at their own rate in a separate thread (from a copy of the state taken under
  the lock, so physics never waits for the renderer) and publishes them on the ZeroMQ image
  stream (drivers/cameras/zmq_stream.py, ``source="dit4dit-sim"``);
- answers a ZeroMQ REP "sim control" socket (msgpack maps, see :meth:`SimBridge.handle`).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq
from dit4dit.drivers import g1_spec, hg_codec
from dit4dit.drivers.cameras.zmq_stream import ImageStreamPublisher
from dit4dit.drivers.remote import Remote
from dit4dit.drivers.sim import g1_model
from dit4dit.drivers.dds_io import RawWriter
from dit4dit.drivers.hg_codec import LowStateRecord
from dit4dit.drivers.sim.scene import G1Sim

log = logging.getLogger(__name__)

SIM_SOURCE = "dit4dit-sim"  # the image stream's "source"; drivers/cameras/sim.py insists on it
# Stream camera names -> model camera names.
CAMERA_ALIASES = {"head": g1_model.HEAD_CAMERA, "left_wrist": g1_model.WRIST_CAMERAS["left"],
                  "right_wrist": g1_model.WRIST_CAMERAS["right"]}
DEFAULT_CAMERA_PORT = 55555  # teleimager's head-camera port; further cameras take the next ports
DEFAULT_CONTROL_PORT = 55570
MOTOR_TEMPERATURE_C = 30  # sim motors do not heat up; a plausible constant keeps temperature checks meaningful
MOTOR_VOLTAGE_V = 48.0
LATE_RESYNC_S = 0.1
CAMERA_THREAD_NICE = 10  # added niceness of the render thread (Linux: per-thread)  # when physics falls this far behind real time, re-anchor the clock (count an overrun)


@dataclass
class CameraStreamConfig:
    """One published camera: stream name (``head``, ``left_wrist``, ``right_wrist`` or a model camera)."""

    name: str = "head"
    width: int = 320  # 640x480 (the D435's mode) costs ~4x the CPU of 320x240 on a software renderer
    height: int = 240
    fps: float = 30.0
    port: int = DEFAULT_CAMERA_PORT
    latency_s: float = 0.0  # injected delay between render and publish (calibration tests)

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera {self.name!r}: size must be positive, got {self.width}x{self.height}")
        if not 0 < self.fps <= 240:
            raise ValueError(f"camera {self.name!r}: fps must be in (0, 240], got {self.fps}")
        if self.latency_s < 0:
            raise ValueError(f"camera {self.name!r}: latency must be >= 0, got {self.latency_s}")

    @property
    def model_camera(self) -> str:
        return CAMERA_ALIASES.get(self.name, self.name)


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

    def __post_init__(self) -> None:
        if not 0 <= self.domain <= 232:
            raise ValueError(f"DDS domain must be 0..232, got {self.domain}")
        if not 0 <= self.mode_machine <= 255:
            raise ValueError(f"mode_machine must fit a byte, got {self.mode_machine}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        ports = [c.port for c in self.cameras] + ([self.control_port] if self.control_port else [])
        if len(set(ports)) != len(ports):
            raise ValueError(f"camera and control ports must differ, got {ports}")


@dataclass
class BridgeStats:
    steps: int = 0
    lowstate_published: int = 0
    lowcmd_received: int = 0
    lowcmd_bad_crc: int = 0
    lowcmd_bad_mode_machine: int = 0
    lowcmd_mode_pr_ab: int = 0  # accepted, but applied as PR (the model has serial pitch/roll joints)
    arm_sdk_received: int = 0
    hand_cmd_received: int = 0
    hand_state_published: int = 0
    overruns: int = 0  # times physics fell more than LATE_RESYNC_S behind the wall clock
    frames: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _motor_arrays(msg: Any) -> tuple[np.ndarray, ...]:
    """(q, dq, kp, kd, tau, enabled) over the 29 joints of an hg LowCmd_."""
    mc = msg.motor_cmd[: g1_spec.NUM_JOINTS]
    a = np.array([(m.q, m.dq, m.kp, m.kd, m.tau) for m in mc], dtype=np.float64)
    enabled = np.array([m.mode != 0 for m in mc], dtype=bool)
    return a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4], enabled


class _CameraWorker:
    """Renders one camera on schedule and publishes it (after the injected latency, if any)."""

    def __init__(self, cfg: CameraStreamConfig, host: str, jpeg_quality: int) -> None:
        self.cfg = cfg
        self.latency_s = cfg.latency_s
        self.publisher = ImageStreamPublisher(f"tcp://{host}:{cfg.port}", camera=cfg.name, jpeg_quality=jpeg_quality,
                                              source=SIM_SOURCE)
        self.next_due = time.monotonic()
        self.frame_id = 0
        self.pending: collections.deque[tuple[float, np.ndarray, float]] = collections.deque()

    @property
    def address(self) -> str:
        return self.publisher.address

    def close(self) -> None:
        self.publisher.close()


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
        self._threads: list[threading.Thread] = []
        self._cameras: list[_CameraWorker] = []
        self._ctx = zmq.Context()
        self._lowstate_pub: RawWriter | None = None
        self._lowstate = LowStateRecord(self.config.mode_machine)
        self._started = False
        self._tick_ms = 0
        self._tick_step_ms = max(1, round(sim.model.opt.timestep * 1000))
        self._viewer = None
        self._warned: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Open DDS, the camera streams and the control socket, and start the worker threads."""
        from unitree_sdk2py.core.channel import ChannelFactoryInitialize, ChannelSubscriber
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowCmd_

        cfg = self.config
        # The SDK's factory is a per-process singleton: the first domain/interface wins, so run one
        # bridge per process (dit4dit-sim does).
        try:
            ChannelFactoryInitialize(cfg.domain, cfg.interface)
        except Exception as e:
            raise RuntimeError(f"CycloneDDS could not start on domain {cfg.domain}, interface {cfg.interface!r}: "
                               f"{e} (does the interface exist? `ip link`; on lo enable multicast: "
                               "`sudo ip link set lo multicast on`)") from e
        from unitree_sdk2py.idl.unitree_hg.msg.dds_ import LowState_

        # One buffer per message (hg_codec), not cyclonedds-python's field-by-field serializer (~0.5 ms).
        self._lowstate_pub = RawWriter(cfg.domain, g1_spec.TOPIC_LOWSTATE, LowState_)
        self._sub_lowcmd = ChannelSubscriber(g1_spec.TOPIC_LOWCMD, LowCmd_)
        self._sub_lowcmd.Init(self._on_lowcmd, 0)
        self._sub_arm = ChannelSubscriber(g1_spec.TOPIC_ARM_SDK, LowCmd_)
        self._sub_arm.Init(self._on_arm_sdk, 0)
        self._hand_pubs: dict[str, Any] = {}
        if cfg.hands:
            from unitree_sdk2py.core.channel import ChannelPublisher
            from unitree_sdk2py.idl.unitree_hg.msg.dds_ import HandCmd_, HandState_

            self._hand_subs = {}
            for side in self.sim.hand_sides:
                sub = ChannelSubscriber(g1_spec.TOPIC_DEX3_CMD.format(side=side), HandCmd_)
                sub.Init(lambda msg, side=side: self._on_hand_cmd(side, msg), 0)
                self._hand_subs[side] = sub
                pub = ChannelPublisher(g1_spec.TOPIC_DEX3_STATE.format(side=side), HandState_)
                pub.Init()
                self._hand_pubs[side] = pub
        try:
            for c in cfg.cameras:  # one by one, so close() releases the ones bound before a failure
                self._cameras.append(_CameraWorker(c, cfg.host, cfg.jpeg_quality))
            if cfg.control_port:
                self._control = self._ctx.socket(zmq.REP)
                self._control.setsockopt(zmq.LINGER, 0)
                try:
                    self._control.bind(f"tcp://{cfg.host}:{cfg.control_port}")
                except zmq.ZMQError as e:
                    raise RuntimeError(f"sim control socket: cannot bind tcp://{cfg.host}:{cfg.control_port}: {e} "
                                       "(another dit4dit-sim running? pick --control-port)") from e
        except Exception:
            self.close()
            raise
        self._started = True
        if cfg.control_port:
            self._spawn(self._control_loop, "sim-control")
        if self._cameras:
            self._spawn(self._camera_loop, "sim-cameras")
        if self._hand_pubs:
            self._spawn(self._hand_state_loop, "sim-hands")

    def _spawn(self, fn, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2.0)
        for c in self._cameras:
            c.close()
        if getattr(self, "_control", None) is not None:
            self._control.close(linger=0)
            self._control = None
        self._ctx.term()
        if self._viewer is not None:
            self._viewer.close()

    def attach_viewer(self, viewer: Any) -> None:
        """A mujoco.viewer passive handle, synced from the physics loop at ~60 Hz."""
        self._viewer = viewer

    # ------------------------------------------------------------------ DDS handlers
    def _on_lowcmd(self, msg: Any) -> None:
        st = self.stats
        st.lowcmd_received += 1
        if self.config.check_crc and msg.crc != hg_codec.lowcmd_crc(msg):
            st.lowcmd_bad_crc += 1
            self._warn_once("crc", "ignoring rt/lowcmd with a bad CRC (set it with unitree_sdk2py CRC)")
            return
        if msg.mode_machine != self.config.mode_machine:
            st.lowcmd_bad_mode_machine += 1
            self._warn_once("mm", f"ignoring rt/lowcmd with mode_machine {msg.mode_machine}; this G1 reports "
                                  f"{self.config.mode_machine} (copy it from rt/lowstate)")
            return
        if msg.mode_pr != 0:
            st.lowcmd_mode_pr_ab += 1
            self._warn_once("ab", "rt/lowcmd has mode_pr=1 (AB: raw ankle/waist motors A/B); the sim models those "
                                  "joints as pitch/roll (PR) and applies the command as PR. Use mode_pr=0.")
        q, dq, kp, kd, tau, enabled = _motor_arrays(msg)
        try:
            self.sim.set_command(q, kp, kd, dq=dq, tau=tau, enabled=enabled)
        except ValueError as e:
            self._warn_once("lowcmd-value", f"ignoring rt/lowcmd: {e}")

    def _on_arm_sdk(self, msg: Any) -> None:
        self.stats.arm_sdk_received += 1
        q, dq, kp, kd, tau, _ = _motor_arrays(msg)
        weight = float(msg.motor_cmd[g1_spec.ARM_SDK_WEIGHT_SLOT].q)
        try:
            self.sim.set_arm_sdk(q, kp, kd, weight, dq=dq, tau=tau)
        except ValueError as e:
            self._warn_once("arm-value", f"ignoring rt/arm_sdk: {e}")

    def _on_hand_cmd(self, side: str, msg: Any) -> None:
        from dit4dit.drivers.hands import unpack_mode

        self.stats.hand_cmd_received += 1
        n = len(g1_spec.DEX3_JOINTS)
        mc = list(msg.motor_cmd)[:n]
        if len(mc) != n:
            self._warn_once(f"hand-{side}-len", f"ignoring rt/dex3/{side}/cmd with {len(mc)} motor commands, want {n}")
            return
        a = np.array([(m.q, m.dq, m.kp, m.kd, m.tau) for m in mc], dtype=np.float64)
        # mode byte: bits 0-3 motor id, 4-6 status (0 = off), bit 7 timeout (stop)
        modes = [unpack_mode(m.mode) for m in mc]  # (motor id, status, timeout)
        enabled = np.array([status != 0 and not timeout for _, status, timeout in modes])
        try:
            self.sim.set_hand_command(side, a[:, 0], a[:, 2], a[:, 3], dq=a[:, 1], tau=a[:, 4], enabled=enabled)
        except ValueError as e:
            self._warn_once(f"hand-{side}-value", f"ignoring rt/dex3/{side}/cmd: {e}")

    def _hand_state_loop(self) -> None:
        from dit4dit.drivers.hands import pack_mode
        from unitree_sdk2py.idl.default import unitree_hg_msg_dds__HandState_

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
                pub.Write(msg)
                self.stats.hand_state_published += 1
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -LATE_RESYNC_S:
                next_t = time.monotonic()
            self._stop.wait(max(0.0, delay))

    def _warn_once(self, key: str, text: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text)

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
        """One physics step and one rt/lowstate message."""
        with self.sim.lock:
            self.sim.step(1)
            self._tick_ms += self._tick_step_ms
            sample = self.fill_lowstate()
        self._lowstate_pub.write(sample)
        self.stats.steps += 1
        self.stats.lowstate_published += 1

    def run(self, duration_s: float | None = None) -> None:
        """The physics loop, in the calling thread, until stop() (or duration_s of wall time)."""
        if not self._started:
            self.start()
        dt = self.sim.model.opt.timestep
        t0 = time.perf_counter()
        next_t = t0
        last_view = 0.0
        while not self._stop.is_set():
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

    # ------------------------------------------------------------------ cameras
    def _camera_loop(self) -> None:
        # Rendering is the sim's heaviest work; on a small CPU let the 500 Hz physics thread win.
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CAMERA_THREAD_NICE)
        except (AttributeError, OSError) as e:
            log.debug("could not lower the camera thread's priority: %s", e)
        try:
            self._camera_loop_inner()
        except Exception:  # the physics and DDS go on; camera readers will report stale frames
            log.exception("camera thread failed: no more frames will be published")
        finally:
            self.sim.close()  # this thread's GL contexts

    def _camera_loop_inner(self) -> None:
        snap = None
        while not self._stop.is_set():
            now = time.monotonic()
            next_wake = now + 0.05
            for cam in self._cameras:
                # deliver frames whose injected latency has passed
                while cam.pending and cam.pending[0][0] <= now:
                    _, image, sim_time = cam.pending.popleft()
                    cam.publisher.publish(image, frame_id=cam.frame_id, stamp=now, device_stamp=sim_time)
                    cam.frame_id += 1
                    self.stats.frames[cam.cfg.name] = cam.frame_id
                if now >= cam.next_due:
                    with self.sim.lock:
                        snap = self.sim.snapshot(snap)
                        # device stamp: simulated seconds since the bridge started (sim.time restarts on
                        # reset; a camera's device clock must keep increasing)
                        sim_clock = self._tick_ms / 1000.0
                    captured = time.monotonic()
                    image = self.sim.render(cam.cfg.model_camera, (cam.cfg.height, cam.cfg.width), data=snap)
                    if cam.latency_s > 0:
                        cam.pending.append((captured + cam.latency_s, image, sim_clock))
                    else:
                        cam.publisher.publish(image, frame_id=cam.frame_id, stamp=captured, device_stamp=sim_clock)
                        cam.frame_id += 1
                        self.stats.frames[cam.cfg.name] = cam.frame_id
                    cam.next_due += 1.0 / cam.cfg.fps
                    if cam.next_due < now:  # rendering cannot keep up: skip, don't burst
                        cam.next_due = now + 1.0 / cam.cfg.fps
                next_wake = min(next_wake, cam.next_due, cam.pending[0][0] if cam.pending else next_wake)
            delay = next_wake - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    # ------------------------------------------------------------------ control socket
    def _control_loop(self) -> None:
        sock = self._control
        while not self._stop.is_set():
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

    COMMANDS = ("ping", "reset", "state", "task_state", "remote", "set_latency", "set_camera_latency",
                "set_object_pose", "camera_info")

    def handle(self, cmd: str, req: dict[str, Any]) -> dict[str, Any]:
        """One control request -> reply fields. Commands:

        ping                                     -> {sim_time}
        reset {seed: int|None, task: str|None}   -> {objects}
        state                                    -> {sim_time, tick, q, dq, tau, imu, objects, ee, arm_sdk_weight,
                                                     command, remote, stats}
        task_state                               -> {task, seed, success, info, objects, sim_time}
        remote {buttons: [str], sticks: {lx, ly, rx, ry, l2}}  -> {bytes}  (held until the next remote)
        set_latency / set_camera_latency {seconds, camera: str|None}  -> {latency}
        set_object_pose {name, pos: [3], quat: [4] wxyz}        -> {}
        camera_info {camera}                     -> {K (at the stream size), T_world_cam (OpenCV axes), width,
                                                     height, fps, address}
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
                return {
                    "sim_time": sim.time, "tick": self._tick_ms, "q": sim.joint_positions().tolist(),
                    "dq": sim.joint_velocities().tolist(), "tau": sim.joint_torques().tolist(), "imu": imu,
                    "objects": sim.object_poses(), "ee": {k: v.tolist() for k, v in sim.ee_poses().items()},
                    "arm_sdk_weight": sim.arm_sdk_weight, "command": sim.command_source,
                    "remote": self._remote_bytes, "stats": self.stats.as_dict(),
                    "hands": {side: sim.hand_state(side)["q"].tolist() for side in sim.hand_sides},
                }
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
            targets = [c for c in self._cameras if name is None or c.cfg.name == name]
            if not targets:
                raise ValueError(f"no camera stream {name!r}; streams: {[c.cfg.name for c in self._cameras]}")
            for c in targets:
                c.latency_s = float(seconds)
            return {"latency": {c.cfg.name: c.latency_s for c in self._cameras}}
        if cmd == "set_object_pose":
            pos, quat = req.get("pos"), req.get("quat", [1.0, 0.0, 0.0, 0.0])
            if not (isinstance(pos, list) and len(pos) == 3 and isinstance(quat, list) and len(quat) == 4):
                raise ValueError("set_object_pose needs pos [x, y, z] and quat [w, x, y, z]")
            sim.set_object_pose(str(req.get("name")), pos, quat)
            return {}
        if cmd == "camera_info":
            name = req.get("camera", "head")
            cams = {c.cfg.name: c for c in self._cameras}
            if name not in cams:
                raise ValueError(f"no camera stream {name!r}; streams: {list(cams)}")
            c = cams[name]
            with sim.lock:
                T = sim.camera_pose(c.cfg.model_camera, "opencv")
            K = sim.camera_intrinsics(c.cfg.model_camera, c.cfg.width, c.cfg.height)
            return {"K": K.tolist(), "T_world_cam": T.tolist(), "width": c.cfg.width, "height": c.cfg.height,
                    "fps": c.cfg.fps, "address": c.address, "latency": c.latency_s}
        raise ValueError(f"unknown command {cmd!r}; commands: {', '.join(self.COMMANDS)}")

    def set_remote(self, remote: Remote) -> None:
        """Buttons/sticks reported in rt/lowstate from the next message on (held until changed)."""
        raw = remote.pack()
        self.remote, self._remote_raw, self._remote_bytes = remote, raw, list(raw)


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
