"""deploy.yaml: the one validated configuration of `dit4dit-robot`.

Every section is a pydantic model with ``extra="forbid"``, so a misspelt key is an error, not a silently
ignored default. Numbers that depend on the robot (joint limits, joint names, groups) are checked against
``drivers/g1_spec.py``; an impossible value is reported with its key path and the allowed range.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dit4dit.drivers import g1_spec

if TYPE_CHECKING:
    from dit4dit.drivers.g1_robot import G1RobotConfig

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]

REMOTE_BUTTONS = (
    "R1", "L1", "start", "select", "R2", "L2", "F1", "F3",
    "A", "B", "X", "Y", "up", "right", "down", "left",
)  # fmt: skip


class ConfigError(ValueError):
    """deploy.yaml is missing, unreadable or invalid; the message names each bad key and what is allowed."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gains(_Section):
    kp: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)]
    kd: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)]


def _default_gains() -> dict[str, Gains]:
    return {g: Gains(kp=kp, kd=kd) for g, (kp, kd) in g1_spec.DEFAULT_GAINS.items()}


class RobotSection(_Section):
    """Which G1, over which DDS domain, commanded how."""

    name: str = "g1"  # which robot this is: a calibration file made for another robot is refused
    serial: str | None = None
    interface: str = "lo"  # NIC wired to the robot (enp3s0 ...), or lo for the simulator
    domain: Annotated[int, Field(ge=0, le=232)] = g1_spec.SIM_DOMAIN
    mode: Literal["lowcmd", "arm_sdk"] = "lowcmd"
    hands: bool = False
    connect_timeout_s: PositiveFloat = 5.0
    # > 0: the real-time process (500 Hz loop, safety layer, publish) runs under SCHED_FIFO at this priority
    # where the OS permits it (root, CAP_SYS_NICE or an rtprio limit; else a warning and normal scheduling)
    rt_priority: Annotated[int, Field(ge=0, le=99)] = 80
    # Simulators only: accept rt/lowstate with crc == 0 (unitree_mujoco's Python bridge sends no CRC). Never on
    # the robot, whose every frame carries a CRC.
    accept_zero_crc: bool = False
    # Joints the policy drives, by URDF or SDK name; the others hold the start pose.
    controlled_joints: list[str] = Field(default_factory=lambda: [g1_spec.JOINT_NAMES[i] for i in g1_spec.ARM_JOINTS])
    gains: dict[str, Gains] = Field(default_factory=_default_gains)
    # Per-joint overrides of the group gains, by URDF or SDK name, e.g. {left_ankle_pitch_joint: {kp: 40, kd: 2}}
    # (Unitree's references use kp 40 on the ankles, where the legs' group has 100).
    joint_gains: dict[str, Gains] = Field(default_factory=dict)
    # Start pose overrides by joint name (rad); the rest is g1_spec.HOME_POSE.
    start_pose: dict[str, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict)

    @field_validator("controlled_joints")
    @classmethod
    def _known_joints(cls, names: list[str]) -> list[str]:
        if not names:
            raise ValueError("needs at least one joint name")
        idx = []
        for n in names:
            try:
                idx.append(g1_spec.joint_index(n))
            except KeyError as e:
                raise ValueError(str(e.args[0])) from None
        if len(set(idx)) != len(idx):
            raise ValueError(f"lists a joint twice: {names}")
        return names

    @field_validator("gains")
    @classmethod
    def _all_groups(cls, gains: dict[str, Gains]) -> dict[str, Gains]:
        unknown = set(gains) - set(g1_spec.GROUPS)
        if unknown:
            raise ValueError(f"unknown joint group(s) {sorted(unknown)}; allowed: {sorted(g1_spec.GROUPS)}")
        return {**_default_gains(), **gains}

    @field_validator("start_pose", "joint_gains")
    @classmethod
    def _start_pose_names(cls, pose: dict[str, Any]) -> dict[str, Any]:
        for n in pose:
            try:
                g1_spec.joint_index(n)
            except KeyError as e:
                raise ValueError(str(e.args[0])) from None
        return pose

    @model_validator(mode="after")
    def _arm_sdk_joints(self) -> RobotSection:
        if self.mode == "arm_sdk":
            outside = [n for n in self.controlled_joints if g1_spec.joint_index(n) not in g1_spec.ARM_SDK_JOINTS]
            if outside:
                raise ValueError(
                    f"robot.controlled_joints: {outside} cannot be driven in arm_sdk mode (arms and waist only); "
                    "use mode: lowcmd or drop those joints"
                )
        return self

    def controlled_indices(self) -> tuple[int, ...]:
        return tuple(g1_spec.joint_index(n) for n in self.controlled_joints)

    def start_pose_array(self) -> np.ndarray:
        q = g1_spec.HOME_POSE.copy()
        for n, v in self.start_pose.items():
            q[g1_spec.joint_index(n)] = v
        return q

    def gains_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        kp, kd = g1_spec.gains_array({g: (v.kp, v.kd) for g, v in self.gains.items()})
        for name, g in self.joint_gains.items():
            i = g1_spec.joint_index(name)
            kp[i], kd[i] = g.kp, g.kd
        return kp, kd

    def driver_config(self, cfg: DeployConfig) -> G1RobotConfig:
        """The G1Robot settings this section and the rest of ``cfg`` imply."""
        from dit4dit.drivers.g1_robot import G1RobotConfig

        return G1RobotConfig(
            interface=self.interface, domain=self.domain, mode=self.mode, hands=self.hands,
            rate_hz=cfg.rates.control_hz, arm_sdk_weight_rate=cfg.safety.arm_sdk_weight_rate,
            damping_kd=cfg.safety.damping_kd, stale_after_s=cfg.safety.state_timeout_s,
            accept_zero_crc=self.accept_zero_crc, rt_priority=self.rt_priority, remote_lost_s=cfg.safety.remote_lost_s,
        )  # fmt: skip


class CameraSection(_Section):
    """One camera; its key in ``cameras`` is the name the policy knows it by (``head``)."""

    kind: Literal["realsense", "opencv", "zmq", "sim"]
    serial: str | None = None  # realsense
    device: str | int | None = None  # opencv: /dev/videoN or index
    endpoint: str | None = None  # zmq / sim: tcp://host:port of the image stream
    # The image size to capture (RealSense / OpenCV: the mode to open, e.g. 640x480) or to expect from a stream
    # (zmq / sim); null = the device's default / whatever the stream carries. Set both or neither.
    width: Annotated[int, Field(gt=0, le=4096)] | None = None
    height: Annotated[int, Field(gt=0, le=4096)] | None = None
    fps: Annotated[float, Field(gt=0, le=240, allow_inf_nan=False)] = 30.0
    max_age_s: PositiveFloat = 0.2  # an image older than this is never sent to the policy

    @model_validator(mode="after")
    def _source_given(self) -> CameraSection:
        if (self.width is None) != (self.height is None):
            raise ValueError("set both width and height, or neither (the device's default / the stream's size)")
        need = {"realsense": "serial", "opencv": "device", "zmq": "endpoint", "sim": "endpoint"}[self.kind]
        if getattr(self, need) is None and self.kind != "realsense":
            raise ValueError(f"a {self.kind} camera needs `{need}`")
        return self


class ServerSection(_Section):
    address: str = "tcp://127.0.0.1:5555"
    timeout_s: PositiveFloat = 0.5  # one request; a slower reply is a ServerTimeout
    connect_timeout_s: PositiveFloat = 10.0  # waiting for metadata at start
    token: str | None = None
    seed: int | None = None  # fixed noise seed per request (reproducible runs); None = server's generator

    @field_validator("address")
    @classmethod
    def _zmq_address(cls, a: str) -> str:
        if not a.startswith(("tcp://", "ipc://")):
            raise ValueError(f"{a!r} is not a ZeroMQ address; write it like tcp://127.0.0.1:5555")
        return a


class RatesSection(_Section):
    # The policy's step rate; null = the rate it was trained at (the server's metadata control_rate_hz). A value
    # that differs from the policy's is refused at start.
    policy_hz: Annotated[float, Field(gt=0, le=500, allow_inf_nan=False)] | None = None
    # Steps of a chunk executed before the next chunk is requested (the async request threshold):
    # the request goes out while the remaining steps still execute.
    execution_horizon: Annotated[int, Field(gt=0, le=1000)] = 8
    control_hz: Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)] = 1.0 / g1_spec.CONTROL_DT
    # The controller's state machine and chunk scheduling; each tick hands the real-time process the next
    # 0.3 s of targets (runtime/realtime/plan.py), which it interpolates at control_hz.
    controller_hz: Annotated[float, Field(gt=0, le=500, allow_inf_nan=False)] = 100.0


class ChunkingSection(_Section):
    # rtc: ask the server to freeze the steps executing during inference (prefix/n_executing) and also
    # blend on the client; client: client-side blend only; none: switch at once (for benchmarks only).
    blend: Literal["rtc", "client", "none"] = "rtc"
    blend_s: NonNegFloat = 0.2  # client cross-fade from the old chunk to the new one
    latency_window: Annotated[int, Field(gt=0, le=1000)] = 20  # replies whose max delay sets n_executing


class SafetySection(_Section):
    soft_limit_fraction: Fraction = 0.9  # of each joint's hard range, centred
    # Per-joint soft limits by name, [lower, upper] rad; must lie inside the hard range.
    joint_limits: dict[str, tuple[float, float]] = Field(default_factory=dict)
    max_joint_velocity: Annotated[float, Field(gt=0, le=37, allow_inf_nan=False)] = 3.0  # rad/s of the target
    max_step: Annotated[float, Field(gt=0, le=0.2, allow_inf_nan=False)] = 0.01  # rad per 500 Hz tick, largest joint
    max_kp: Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)] = 300.0
    max_kd: Annotated[float, Field(ge=0, le=50, allow_inf_nan=False)] = 10.0
    max_torque_fraction: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.5  # of effort, feed-forward
    ramp_in_s: PositiveFloat = 3.0
    ramp_out_s: PositiveFloat = 2.0  # normal end: slide back to the start pose before damping
    handover_velocity: Annotated[float, Field(gt=0, le=37, allow_inf_nan=False)] = 1.0  # rad/s during takeover
    # No good chunk for this long -> hold the last safe target. Must exceed the time between chunk requests
    # (rates.execution_horizon / policy rate: 0.8 s for the shipped 10 Hz policy with 8 steps).
    server_hold_s: PositiveFloat = 1.0
    server_damp_s: PositiveFloat = 2.0  # ... and this much longer -> damp
    camera_damp_s: PositiveFloat = 3.0  # camera fault held this long -> damp
    state_timeout_s: Annotated[float, Field(gt=0, le=1.0, allow_inf_nan=False)] = 0.1
    # The real-time process damps when the controller sends no plan for this long (a hung or starved
    # controller); it holds the last planned target meanwhile. Must exceed the plan's 0.3 s look-ahead.
    controller_timeout_s: Annotated[float, Field(gt=0.3, le=5.0, allow_inf_nan=False)] = 0.5
    damping_kd: Annotated[float, Field(gt=0, le=20, allow_inf_nan=False)] = g1_spec.DAMPING_KD
    damp_hold_s: NonNegFloat = 1.0  # keep publishing damping this long before exiting
    arm_sdk_weight_rate: Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)] = 0.5  # weight per second
    max_tilt_rad: Annotated[float, Field(gt=0, le=g1_spec.MAX_TILT_RAD, allow_inf_nan=False)] = 0.5
    max_joint_speed: Annotated[float, Field(gt=0, le=g1_spec.MAX_JOINT_SPEED, allow_inf_nan=False)] = 6.0
    fault_persist_s: Annotated[float, Field(ge=0, le=0.1, allow_inf_nan=False)] = 0.01  # tilt/speed must last this long
    max_winding_temp_c: Annotated[float, Field(gt=0, le=g1_spec.MAX_WINDING_TEMP_C)] = 110.0
    max_casing_temp_c: Annotated[float, Field(gt=0, le=g1_spec.MAX_CASING_TEMP_C)] = 80.0
    estop_buttons: list[str] = Field(default_factory=lambda: ["L2", "B"])  # all held -> damp
    # The wireless remote is the operator's e-stop. Lost (all-zero bytes for remote_lost_s, Unitree's rule): hold
    # the last safe target; still lost remote_damp_s later: damp. null = on for the real robot (robot.interface
    # other than lo), off for the simulator.
    remote_required: bool | None = None
    remote_lost_s: PositiveFloat = 3.0
    remote_damp_s: PositiveFloat = 2.0

    @field_validator("joint_limits")
    @classmethod
    def _inside_hard_range(cls, lims: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        for name, (lo, hi) in lims.items():
            try:
                j = g1_spec.JOINTS[g1_spec.joint_index(name)]
            except KeyError as e:
                raise ValueError(str(e.args[0])) from None
            if not (np.isfinite(lo) and np.isfinite(hi) and j.lower <= lo < hi <= j.upper):
                raise ValueError(
                    f"{name}: [{lo}, {hi}] must satisfy {j.lower} <= lower < upper <= {j.upper} "
                    f"(the G1's hard range for {j.name}, rad)"
                )
        return lims

    @field_validator("estop_buttons")
    @classmethod
    def _buttons(cls, b: list[str]) -> list[str]:
        return _check_buttons(b)

    def soft_limits(self) -> tuple[np.ndarray, np.ndarray]:
        centre = (g1_spec.LOWER + g1_spec.UPPER) / 2
        half = (g1_spec.UPPER - g1_spec.LOWER) / 2 * self.soft_limit_fraction
        lo, hi = centre - half, centre + half
        for name, (a, b) in self.joint_limits.items():
            i = g1_spec.joint_index(name)
            lo[i], hi[i] = a, b
        return lo, hi


def _check_buttons(b: list[str]) -> list[str]:
    if not b:
        raise ValueError("needs at least one button")
    bad = [x for x in b if x not in REMOTE_BUTTONS]
    if bad:
        raise ValueError(f"unknown remote button(s) {bad}; allowed: {list(REMOTE_BUTTONS)}")
    return b


class TeleopSection(_Section):
    # none | remote (wireless-remote sticks) | keyboard | zmq (joint or end-effector targets from another machine)
    device: Literal["none", "remote", "keyboard", "zmq"] = "none"
    endpoint: str | None = None  # zmq: tcp://host:port of the teleop stream
    takeover_buttons: list[str] = Field(default_factory=lambda: ["L1", "A"])  # remote combo: policy -> person
    release_buttons: list[str] = Field(default_factory=lambda: ["L1", "X"])  # person -> policy
    stick_velocity: Annotated[float, Field(gt=0, le=5, allow_inf_nan=False)] = 0.5  # rad/s at full stick
    timeout_s: PositiveFloat = 0.5  # teleop stream silent this long during TELEOP -> hold

    @field_validator("takeover_buttons", "release_buttons")
    @classmethod
    def _buttons(cls, b: list[str]) -> list[str]:
        return _check_buttons(b)

    @model_validator(mode="after")
    def _endpoint(self) -> TeleopSection:
        if self.device == "zmq" and not self.endpoint:
            raise ValueError("teleop.device zmq needs teleop.endpoint (tcp://host:port)")
        return self


class RecordingSection(_Section):
    enabled: bool = False
    root: str = "runs/recordings"  # LeRobot dataset folder (created)
    fps: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] | None = None  # default: rates.policy_hz


class RunSection(_Section):
    instruction: str = "pick up the red cube and place it in the target area"
    autostart: bool = True  # READY -> RUNNING without an operator button
    duration_s: PositiveFloat | None = None  # whole run; None = until stopped
    episode_s: PositiveFloat | None = None  # episode length for recording; None = the whole run


class DeployConfig(_Section):
    robot: RobotSection = Field(default_factory=RobotSection)
    cameras: dict[str, CameraSection] = Field(default_factory=dict)
    server: ServerSection = Field(default_factory=ServerSection)
    rates: RatesSection = Field(default_factory=RatesSection)
    chunking: ChunkingSection = Field(default_factory=ChunkingSection)
    safety: SafetySection = Field(default_factory=SafetySection)
    teleop: TeleopSection = Field(default_factory=TeleopSection)
    recording: RecordingSection = Field(default_factory=RecordingSection)
    run: RunSection = Field(default_factory=RunSection)
    # dit4dit-calibrate's output for this robot and camera (relative to this file); None = uncalibrated
    calibration: Path | None = None

    @model_validator(mode="after")
    def _cross_checks(self) -> DeployConfig:
        lo, hi = self.safety.soft_limits()
        pose = self.robot.start_pose_array()
        for i in np.flatnonzero((pose < lo) | (pose > hi)):
            name = g1_spec.JOINT_NAMES[i]
            src = f"robot.start_pose.{name}" if name in self.robot.start_pose or g1_spec.SDK_NAMES[i] in self.robot.start_pose \
                else f"the default start pose (g1_spec.HOME_POSE) of {name}"
            raise ValueError(
                f"{src}: {pose[i]} is outside the soft limits [{lo[i]:.4f}, {hi[i]:.4f}] rad "
                "(safety.soft_limit_fraction / safety.joint_limits)"
            )
        for group, g in self.robot.gains.items():
            if g.kp > self.safety.max_kp or g.kd > self.safety.max_kd:
                raise ValueError(
                    f"robot.gains.{group}: kp {g.kp} / kd {g.kd} exceed safety.max_kp {self.safety.max_kp} / "
                    f"safety.max_kd {self.safety.max_kd}"
                )
        if self.rates.controller_hz > self.rates.control_hz:
            raise ValueError(
                f"rates.controller_hz ({self.rates.controller_hz}) must be <= rates.control_hz ({self.rates.control_hz})"
            )
        for group, g in self.robot.joint_gains.items():
            if g.kp > self.safety.max_kp or g.kd > self.safety.max_kd:
                raise ValueError(
                    f"robot.joint_gains.{group}: kp {g.kp} / kd {g.kd} exceed safety.max_kp {self.safety.max_kp} / "
                    f"safety.max_kd {self.safety.max_kd}"
                )
        if self.rates.policy_hz is not None:
            self.check_policy_rate(self.rates.policy_hz)
        return self

    @property
    def remote_required(self) -> bool:
        """Whether a lost wireless remote holds, then damps (safety.remote_required; null = not on the simulator)."""
        req = self.safety.remote_required
        return self.robot.interface != "lo" if req is None else req

    def check_policy_rate(self, policy_hz: float) -> None:
        """ValueError naming the keys if the policy's step rate does not fit the other rates and holds."""
        if policy_hz > self.rates.control_hz:
            raise ValueError(f"the policy rate ({policy_hz} Hz) must be <= rates.control_hz ({self.rates.control_hz})")
        period = self.rates.execution_horizon / policy_hz
        if self.safety.server_hold_s <= period:
            raise ValueError(
                f"safety.server_hold_s ({self.safety.server_hold_s}) must exceed the time between chunk requests, "
                f"rates.execution_horizon / policy rate ({policy_hz} Hz) = {period:.3f} s, or every chunk would trip "
                "the hold"
            )


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid setting(s):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? see the commented deploy.yaml for the allowed keys)"
        elif e["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            msg = f"{msg} (got {e.get('input')!r})"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "deploy.yaml") -> DeployConfig:
    """Validate an already-parsed YAML mapping; raises ConfigError naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections, got {type(data).__name__}")
    try:
        return DeployConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def load_config(path: str | Path) -> DeployConfig:
    """Read and validate deploy.yaml."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such config file; start from deploy.yaml at the repository root")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    cfg = parse_config(data, str(p))
    if cfg.calibration is not None and not cfg.calibration.is_absolute():
        cfg = cfg.model_copy(update={"calibration": p.parent / cfg.calibration})
    return cfg
