"""Timing: how old camera images are relative to the robot state stream, and the image -> command latency.

Procedure (live robot or dit4dit-sim, through the safety layer): the arm holds a pose where the wrist plate
is in view, then one joint steps back and forth. The same motion is seen twice:

* in ``rt/lowstate``: the joint angle, stamped on receipt (500 Hz), normalised to 0 -> 1 over the step;
* in the images: the plate corners' displacement along their motion, normalised to 0 -> 1, at each frame's
  ``Frame.stamp``.

``camera_delay_s`` is the shift that best aligns the image signal with the state signal (least squares over a
1 ms grid; frames sample the transient at different phases, so the estimate is finer than a frame period).
A controller pairing an image with robot state should pair it with the state from ``camera_delay_s`` before
the image's stamp. ``end_to_end_s``: from the motion crossing half of its step in the state stream to the
moment this process had a frame showing that and had processed it (a command reacting to it is on the bus
one publisher period later; the policy's own time comes on top).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from dit4dit.calibration.calibration_file import Timing
from dit4dit.calibration.targets import WRIST_PLATE, CharucoDetectorFor, Detection
from dit4dit.drivers import g1_spec

log = logging.getLogger(__name__)


class TimingError(RuntimeError):
    """The timing measurement could not be made (plate not seen, joint did not move, poor alignment)."""


class HostOverloadedError(TimingError):
    """The state stream is too slow or jittery for a latency figure to mean anything: retry on a quiet host."""


@dataclass
class TimingSettings:
    joint: str = "right_elbow_joint"  # moves the plate across the image at the hand-eye central pose
    step_rad: float = 0.15
    n_steps: int = 6  # alternating +step / -step
    settle_s: float = 0.6  # still before each step (reference frames)
    observe_s: float = 0.9  # after each step
    max_delay_s: float = 1.0  # search range of the alignment
    min_plate_motion_px: float = 8.0
    min_frames: int = 5  # frames showing the plate per step (the transient must be sampled a few times)
    max_fit_rms: float = 0.15  # normalised units: worse means the two signals do not describe one motion
    max_spread_s: float = 0.07  # steps disagreeing by more than ~2 frames: jittery stamps, refuse the figure
    min_state_rate_hz: float = 400.0  # rt/lowstate is 500 Hz; much less means a starved host and wrong stamps

    def __post_init__(self) -> None:
        g1_spec.joint_index(self.joint)
        if not 0.02 <= abs(self.step_rad) <= 0.4:
            raise ValueError(f"timing step must be 0.02..0.4 rad, got {self.step_rad}")
        if self.n_steps < 2:
            raise ValueError("timing needs at least 2 steps")


@dataclass
class _Series:
    t: list[float] = field(default_factory=list)  # receipt stamps
    v: list[float] = field(default_factory=list)
    tick: list[int] = field(default_factory=list)  # the robot's own counter


def state_times(stamps: np.ndarray, ticks: np.ndarray, window_s: float = 0.25) -> np.ndarray:
    """Send times of states on this host's clock, from the robot's tick counter and the receipt stamps.

    Receipt stamps carry the jitter of a busy host (DDS callbacks delayed by other threads); the robot's tick
    counter does not. A state can arrive late, never early, so each state's send time is the lower envelope
    of its neighbours' stamps carried over by the tick difference: min_k (stamp_k - a (tick_k - tick_i)) over
    the states within ``window_s``, with ``a`` (seconds per tick) fitted over the recording. The short window
    keeps a drifting rate (a simulator slower than real time) from biasing the estimate. Falls back to the
    receipt stamps when the tick does not advance (simulators that leave it at 0).
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    ticks = np.asarray(ticks, dtype=np.float64)
    n = min(stamps.size, ticks.size)
    stamps, ticks = stamps[:n], ticks[:n]
    if n < 10 or np.ptp(ticks) <= 0 or np.any(np.diff(ticks) < 0):
        return stamps
    a = float(np.polyfit(ticks - ticks[0], stamps, 1)[0])
    if not a > 0:
        return stamps
    k = ticks - ticks[0]
    w = window_s / a  # window in ticks
    out = np.empty(n)
    lo = hi = 0
    for i in range(n):
        while k[lo] < k[i] - w:
            lo += 1
        while hi + 1 < n and k[hi + 1] <= k[i] + w:
            hi += 1
        out[i] = np.min(stamps[lo:hi + 1] - a * (k[lo:hi + 1] - k[i]))
    return out


def align_delay(
    state_t: np.ndarray, state_s: np.ndarray, frame_t: np.ndarray, frame_s: np.ndarray, max_delay_s: float
) -> tuple[float, float]:
    """Shift d (s) minimising sum (frame_s - state_s(frame_t - d))^2, and the fit's RMS; 1 ms grid, then parabola."""
    grid = np.arange(-0.05, max_delay_s + 1e-9, 0.001)
    costs = np.array([np.mean((frame_s - np.interp(frame_t - d, state_t, state_s)) ** 2) for d in grid])
    k = int(np.argmin(costs))
    d = float(grid[k])
    if 0 < k < len(grid) - 1:  # sub-millisecond refinement by a parabola through the neighbours
        c0, c1, c2 = costs[k - 1], costs[k], costs[k + 1]
        den = c0 - 2 * c1 + c2
        if den > 0:
            d += 0.001 * 0.5 * (c0 - c2) / den
    return d, float(np.sqrt(costs[k]))


def plate_signal(ref: Detection, after: Detection, det: Detection) -> float | None:
    """How far (0 = reference, 1 = after the step) the plate's corners in ``det`` have moved."""
    common = np.intersect1d(ref.ids, after.ids)
    if common.size < 4:
        return None
    ids = np.intersect1d(common, det.ids)
    if ids.size < 4:
        return None

    def pts(d: Detection) -> np.ndarray:
        order = np.argsort(d.ids)
        sel = np.searchsorted(d.ids[order], ids)
        return d.image_points[order][sel]

    p0, p1, p = pts(ref), pts(after), pts(det)
    motion = (p1 - p0).mean(0)
    n = float(np.linalg.norm(motion))
    if n == 0:
        return None
    return float(((p - p0).mean(0) @ motion) / (n * n))


class _StateRecorder:
    """Keeps every rt/lowstate sample's (receipt stamp, angle of one joint) while the measurement runs."""

    def __init__(self, robot: object, joint: int) -> None:
        self.robot = robot
        self.joint = joint
        self.series = _Series()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timing-state", daemon=True)

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            if not self.robot.wait_for_state(last, 0.1):  # type: ignore[attr-defined]
                continue
            st = self.robot.state()  # type: ignore[attr-defined]
            if st.stamp > last:
                last = st.stamp
                self.series.t.append(st.stamp)
                self.series.v.append(float(st.q[self.joint]))
                self.series.tick.append(int(st.tick))

    def __enter__(self) -> _StateRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


class _FrameRecorder:
    """Reads every new frame, detects the plate at once (for the end-to-end figure) and keeps the detections."""

    def __init__(self, camera: object, on_frame: Callable[[float, Detection, float], None]) -> None:
        self.camera = camera
        self.detector = CharucoDetectorFor(WRIST_PLATE)
        self.on_frame = on_frame
        self.frames: list[tuple[float, Detection]] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="timing-frames", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.camera.read_new(timeout_s=0.5)  # type: ignore[attr-defined]
            except Exception as e:  # noqa: BLE001 - reported by the measurement
                self.error = str(e)
                continue
            det = self.detector.detect(frame.image)
            processed = time.monotonic()
            self.frames.append((frame.stamp, det))
            self.on_frame(frame.stamp, det, processed)

    def __enter__(self) -> _FrameRecorder:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def run_timing(session: object, settings: TimingSettings | None = None) -> Timing:
    """Measure on a RobotSession whose arm already shows the plate to the head camera (hand-eye central pose)."""
    s = settings or TimingSettings()
    j = g1_spec.joint_index(s.joint)
    robot, camera = session.robot, session.camera  # type: ignore[attr-defined]
    lo, hi = session.safe.limits.lower[j], session.safe.limits.upper[j]  # type: ignore[attr-defined]
    q_home = session.target.copy()  # type: ignore[attr-defined]
    step = abs(s.step_rad)
    # step between a and a + step, placed inside the soft limits
    a = float(np.clip(q_home[j] - step / 2, lo + 1e-3, hi - 1e-3 - step))
    levels = [a, a + step]
    trials: list[dict] = []

    def on_frame(stamp: float, det: Detection, processed: float) -> None:
        tr = trials[-1] if trials else None
        if tr is None or tr.get("ref") is None or tr.get("after") is None or tr.get("e2e_seen") is not None:
            return
        sig = plate_signal(tr["ref"], tr["after"], det)
        if sig is not None and sig > 0.5 and stamp > tr["t_cmd"]:
            tr["e2e_seen"] = processed

    target = q_home.copy()
    target[j] = levels[0]
    session.move_to(target, [j])  # type: ignore[attr-defined]
    received0, wall0 = robot.stats["states_received"], time.monotonic()  # type: ignore[attr-defined]
    with _StateRecorder(robot, j) as states, _FrameRecorder(camera, on_frame) as frames:
        for k in range(s.n_steps):
            frm, to = levels[k % 2], levels[(k + 1) % 2]
            session.hold(s.settle_s)  # type: ignore[attr-defined]
            t_ref = time.monotonic()
            target = session.target.copy()  # type: ignore[attr-defined]
            target[j] = to
            tr = {"t_cmd": time.monotonic(), "from": frm, "to": to, "ref": None, "after": None, "e2e_seen": None}
            # the reference detection: the newest frame before the command
            before = [f for f in frames.frames if f[0] <= t_ref and len(f[1]) >= 4]
            tr["ref"] = before[-1][1] if before else None
            trials.append(tr)
            # A trial's "after" detection is only known at the end; use the previous trial's
            # (mirror) detections for the on-line end-to-end detection.
            if k >= 2 and trials[k - 2]["after"] is not None:
                tr["after"] = trials[k - 2]["after"]
            end = time.monotonic() + s.observe_s
            while time.monotonic() < end:
                session.command(target)  # type: ignore[attr-defined]
                session.tick()  # type: ignore[attr-defined]
            after = [f for f in frames.frames if f[0] <= time.monotonic() and len(f[1]) >= 4]
            tr["t_end"] = time.monotonic()
            tr["after_final"] = after[-1][1] if after else None
            if tr["after"] is None:
                tr["after"] = tr["after_final"]
        if frames.error and not frames.frames:
            raise TimingError(f"no camera frames during the timing measurement: {frames.error}")
        n_st = min(len(states.series.t), len(states.series.v), len(states.series.tick))
        st_t = state_times(np.asarray(states.series.t[:n_st]), np.asarray(states.series.tick[:n_st]))
        st_q = np.asarray(states.series.v[:n_st])
        all_frames = list(frames.frames)
    state_rate = (robot.stats["states_received"] - received0) / (time.monotonic() - wall0)  # type: ignore[attr-defined]
    session.move_to(q_home, [j])  # type: ignore[attr-defined]
    if state_rate < s.min_state_rate_hz:
        raise HostOverloadedError(
            f"rt/lowstate arrived at {state_rate:.0f} Hz (expected {1 / g1_spec.CONTROL_DT:.0f}); the robot PC (or the "
            "simulator host) is overloaded, so any latency measured now would be wrong. Stop other programs and retry."
        )
    if st_t.size < 100:
        raise TimingError(f"only {st_t.size} robot states recorded during the timing measurement; is rt/lowstate flowing?")

    delays, fits, c2s, e2e = [], [], [], []
    for tr in trials:
        ref, aft = tr["ref"], tr["after_final"]
        if ref is None or aft is None:
            log.warning("timing step %s: no plate detection %s the step", tr["t_cmd"], "before" if ref is None else "after")
            continue
        common = np.intersect1d(ref.ids, aft.ids)
        if common.size < 4:
            log.warning("timing step: only %d plate corners seen both before and after", common.size)
            continue
        win = [(t, d) for t, d in all_frames if tr["t_cmd"] - 0.2 <= t <= tr["t_end"]]
        ft, fs = [], []
        for t, d in win:
            v = plate_signal(ref, aft, d)
            if v is not None:
                ft.append(t)
                fs.append(v)
        motion_px = float(np.linalg.norm(
            (aft.image_points[np.isin(aft.ids, common)] - ref.image_points[np.isin(ref.ids, common)]).mean(0)))
        if len(ft) < s.min_frames or motion_px < s.min_plate_motion_px:
            log.warning("timing step: %d frames with the plate, plate moved %.1f px (need %d frames, %.0f px)", len(ft),
                        motion_px, s.min_frames, s.min_plate_motion_px)
            continue
        m = (st_t >= tr["t_cmd"] - 0.5) & (st_t <= tr["t_end"])
        pre = (st_t >= tr["t_cmd"] - 0.3) & (st_t <= tr["t_cmd"])
        post = (st_t >= tr["t_end"] - 0.2) & (st_t <= tr["t_end"])
        if not (pre.any() and post.any()):
            log.warning("timing step: no robot state just before the step or at its end (state stream gaps)")
            continue
        q0 = float(np.median(st_q[pre]))
        q1 = float(np.median(st_q[post]))
        if abs(q1 - q0) < 0.3 * step:
            raise TimingError(f"{s.joint} moved {abs(q1 - q0):.3f} rad for a {step} rad step; run the joint check")
        ss = (st_q[m] - q0) / (q1 - q0)
        d, rms = align_delay(st_t[m], ss, np.asarray(ft), np.asarray(fs), s.max_delay_s)
        half = np.nonzero(ss >= 0.5)[0]
        t_half = float(st_t[m][half[0]]) if half.size else float("nan")
        delays.append(d)
        fits.append(rms)
        if np.isfinite(t_half):
            c2s.append(t_half - tr["t_cmd"])
        if tr["e2e_seen"] is not None and np.isfinite(t_half):
            e2e.append(tr["e2e_seen"] - t_half)
    if len(delays) < 2:
        raise TimingError(
            f"only {len(delays)} of {len(trials)} steps were seen well enough in the images; check that the plate is "
            "in view at the hand-eye central pose and the camera streams (dit4dit-calibrate handeye first)"
        )
    if not e2e:
        raise TimingError("no step was seen on-line in the images (end-to-end latency); are frames arriving late?")
    fit = float(np.median(fits))
    if fit > s.max_fit_rms:
        raise TimingError(f"image and state motions do not align (RMS {fit:.2f}); camera frames dropped or stalled?")
    # spread of the central steps: one glitched step (a dropped frame burst) must not void the others
    core = np.sort(delays)[1:-1] if len(delays) >= 5 else np.asarray(delays)
    spread = float(np.ptp(core))
    if spread > s.max_spread_s:
        raise TimingError(
            f"camera delay varied by {spread * 1e3:.0f} ms between steps ({np.round(np.array(delays) * 1e3).tolist()}"
            f" ms; allowed {s.max_spread_s * 1e3:.0f} ms): frame or state stamps are jittery (an overloaded PC, a USB "
            "camera dropping frames); fix that and retry"
        )
    stamps = np.array([t for t, _ in all_frames])
    frame_period = float(np.median(np.diff(stamps))) if stamps.size > 2 else 0.0
    delay = float(np.median(delays))
    if not c2s:
        raise TimingError("the joint never reached half of its step in the state stream; run the joint check")
    c2s_med = float(np.median(c2s))
    result = Timing(
        camera_delay_s=delay,
        command_to_state_s=c2s_med,
        command_to_image_s=c2s_med + delay,
        end_to_end_s=float(np.median(e2e)) + g1_spec.CONTROL_DT,
        frame_period_s=frame_period if frame_period > 0 else 1 / 30,
        joint=s.joint,
        n_trials=len(delays),
        spread_s=spread,
    )
    log.info("timing: camera delay %.1f ms (spread %.1f ms over %d steps), command->state %.1f ms, e2e %.1f ms",
             result.camera_delay_s * 1e3, result.spread_s * 1e3, result.n_trials, result.command_to_state_s * 1e3,
             result.end_to_end_s * 1e3)
    return result
