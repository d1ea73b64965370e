"""Scripted expert for the tabletop tasks: Cartesian waypoints for the hand, IK on the project's G1 model.

The expert is privileged (it reads the objects' poses from the simulator at the start of the episode) and
plans the whole episode at once: a chain of hand waypoints (lift clear of the table edge, travel above the
object, descend, and for pushing: slide the block onto the target), timed with a minimum-jerk profile and
turned into joint-position targets at the control rate by damped-least-squares IK
(:class:`dit4dit.drivers.kinematics.G1Kinematics`), each solve warm-started from the previous knot so the
arm moves continuously. Only the task's arm moves; every other joint holds the start pose.

Execution (:func:`run_episode`) is the controller's: knots at the policy rate, linear interpolation to the
500 Hz command stream, and every command through :class:`dit4dit.runtime.realtime.safety.SafetyFilter` with the
limits of the default ``deploy.yaml`` safety section, so demonstrations never do what the real controller
would refuse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.drivers.kinematics import G1Kinematics
from dit4dit.drivers.sim import tasks as tasks_mod
from dit4dit.drivers.sim.tasks import Task

CONTROLLED_JOINTS: tuple[int, ...] = g1_spec.ARM_JOINTS  # what the policy drives (state and action)
CONTROLLED_NAMES: tuple[str, ...] = tuple(g1_spec.JOINT_NAMES[i] for i in CONTROLLED_JOINTS)
HEAD_CAMERA = "head_camera"

LIFT_Z = 0.86  # m: travel height of the hand point, clear of the table top (0.78) and the blocks
CLEAR_X = 0.17  # m: hand x while lifting, in front of the body but behind the table's near edge (0.20)
ABOVE = 0.07  # m above the goal point before the final descent
PUSH_HEIGHT = 0.028  # m: hand point above the table top while pushing (the fist's lower face just clears it)
PUSH_BACKOFF = 0.065  # m behind the block centre where the push starts
PUSH_STOP = 0.045  # m: the hand stops this far behind the target centre (fist half-width + block half-size)


def min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


@dataclass
class ExpertPlan:
    knots: np.ndarray  # (T, 29) joint targets at the control rate; row k is commanded at time k / control_hz
    hand_path: np.ndarray  # (T, 3) planned hand point, world frame
    ik_error_m: float  # worst IK position error along the plan
    waypoints: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (time s, world point)


class ScriptedExpert:
    """Plans one episode of a task from the simulator's state."""

    def __init__(self, kinematics: G1Kinematics | None = None, control_hz: float = 10.0) -> None:
        self.kin = kinematics or G1Kinematics()
        self.control_hz = float(control_hz)

    def _waypoints(self, task: Task, sim: Any) -> list[tuple[float, np.ndarray]]:
        """(arrival time s, world point) for the hand point; the first is where the hand is now."""
        m, d = sim.model, sim.data
        start = tasks_mod.hand_point(m, d, task.arm)
        y_side = start[1]
        wps: list[tuple[float, np.ndarray]] = [(0.0, start)]
        lift = np.array([CLEAR_X, y_side * 0.7, LIFT_Z])
        wps.append((1.0, lift))
        if task.kind == "reach":
            goal = task.goal_point(m, d)
            wps.append((2.4, goal + np.array([0.0, 0.0, ABOVE])))
            wps.append((3.3, goal))
            return wps
        # push: behind the block on the line from target to block, down, then slide through to the target.
        block = sim.data.xpos[tasks_mod._body_id(m, task.obj)].copy()
        target = sim.data.xpos[tasks_mod._body_id(m, tasks_mod.TARGET)].copy()
        z_push = tasks_mod.table_top_z(m, d) + PUSH_HEIGHT
        direction = target[:2] - block[:2]
        direction /= max(np.linalg.norm(direction), 1e-6)
        pre = np.array([*(block[:2] - direction * PUSH_BACKOFF), z_push])
        end = np.array([*(target[:2] - direction * PUSH_STOP), z_push])
        wps.append((2.3, pre + np.array([0.0, 0.0, ABOVE])))
        wps.append((3.2, pre))
        wps.append((5.2, end))
        wps.append((6.2, end + np.array([-0.03, 0.0, 0.06])))  # back off and up, off the block
        return wps

    def plan(self, task: Task, sim: Any, q_start: np.ndarray | None = None) -> ExpertPlan:
        """Joint-target knots for the whole episode (task.duration_s at control_hz)."""
        q0 = sim.joint_positions() if q_start is None else np.asarray(q_start, dtype=np.float64)
        # Other joints hold the start pose exactly (the controller holds g1_spec.HOME_POSE).
        q_hold = g1_spec.HOME_POSE.copy()
        q_hold[list(CONTROLLED_JOINTS)] = q0[list(CONTROLLED_JOINTS)]
        wps = self._waypoints(task, sim)
        n = round(task.duration_s * self.control_hz)
        times = np.arange(n) / self.control_hz
        path = np.empty((n, 3))
        for k, t in enumerate(times):
            path[k] = wps[-1][1]
            for (t0, p0), (t1, p1) in pairwise(wps):
                if t <= t1:
                    s = min_jerk(np.array((t - t0) / (t1 - t0)))
                    path[k] = p0 + s * (p1 - p0)
                    break
        # World -> torso frame (IK base); the pelvis is held by the gantry and the waist at 0, so it is fixed.
        T_torso = np.eye(4)
        T_torso[:3, :3] = sim.data.xmat[tasks_mod._body_id(sim.model, "torso_link")].reshape(3, 3)
        T_torso[:3, 3] = sim.data.xpos[tasks_mod._body_id(sim.model, "torso_link")]
        R_inv, p_t = T_torso[:3, :3].T, T_torso[:3, 3]
        frame = f"{task.arm}_hand"
        knots = np.empty((n, g1_spec.NUM_JOINTS))
        q = q_hold.copy()
        worst = 0.0
        for k in range(n):
            target = np.eye(4)
            target[:3, 3] = R_inv @ (path[k] - p_t)
            res = self.kin.ik(frame, target, q, position_only=True, max_iters=60, tol_pos_m=5e-4)
            q = res.q
            worst = max(worst, res.pos_err_m)
            knots[k] = q
        return ExpertPlan(knots=knots, hand_path=path, ik_error_m=worst, waypoints=wps)


@dataclass
class Frame:
    """What one control step shows the policy and what it commands."""

    image: np.ndarray | None  # uint8 (H, W, 3) head camera, or None if not rendered
    state: np.ndarray  # float32 (14,) controlled joints, measured
    action: np.ndarray  # float32 (14,) commanded target (the knot)
    executed: np.ndarray  # float32 (14,) the safety-filtered command actually sent at the knot


@dataclass
class EpisodeOutcome:
    task: str
    seed: int
    success: bool  # the task's success held at some control step before the time limit
    success_step: int | None
    final_info: dict[str, Any]
    steps: int
    ik_error_m: float
    safety_step_limited: int


def default_safety_filter() -> Any:
    """The SafetyFilter with the default deploy.yaml safety limits (the controller's defaults)."""
    from dit4dit.runtime.config import SafetySection
    from dit4dit.runtime.realtime.safety import SafetyFilter, SafetyLimits

    return SafetyFilter(SafetyLimits.from_config(SafetySection()))


def run_episode(
    sim: Any,
    task: Task,
    seed: int,
    expert: ScriptedExpert,
    *,
    image_size: tuple[int, int] | None = (64, 64),
    on_frame: Callable[[Frame], None] | None = None,
    stop_on_success: bool = False,
) -> EpisodeOutcome:
    """Reset the sim to (seed, task), plan, and execute the plan through the safety layer at 500 Hz."""
    sim.reset(seed, task.name)
    plan = expert.plan(task, sim)
    safety = default_safety_filter()
    kp, kd = g1_spec.gains_array()
    safety.reset(sim.joint_positions(), kp, kd)
    ticks = round(1.0 / (expert.control_hz * g1_spec.CONTROL_DT))
    idx = list(CONTROLLED_JOINTS)
    success_step = None
    n = len(plan.knots)
    info: dict[str, Any] = {}
    for k in range(n):
        image = sim.render(HEAD_CAMERA, image_size) if image_size is not None else None
        state = sim.joint_positions()[idx].astype(np.float32)
        nxt = plan.knots[min(k + 1, n - 1)]
        executed = None
        for i in range(ticks):
            target = plan.knots[k] + (nxt - plan.knots[k]) * (i / ticks)
            cmd = safety(target, kp, kd)
            if executed is None:
                executed = cmd.q[idx].astype(np.float32)
            sim.set_command(cmd.q, cmd.kp, cmd.kd)
            sim.step(1)
        if on_frame is not None:
            on_frame(Frame(image=image, state=state, action=plan.knots[k][idx].astype(np.float32), executed=executed))
        status = task.evaluate(sim.model, sim.data)
        info = status.info
        if status.success and success_step is None:
            success_step = k
            if stop_on_success:
                break
    return EpisodeOutcome(
        task=task.name, seed=int(seed), success=success_step is not None, success_step=success_step,
        final_info=info, steps=k + 1, ik_error_m=plan.ik_error_m, safety_step_limited=safety.stats.step_limited,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m dit4dit.tasks.expert --episodes N``: the expert's own success rate per task."""
    import argparse

    from dit4dit.drivers.sim.scene import G1Sim

    ap = argparse.ArgumentParser(prog="python -m dit4dit.tasks.expert", description=main.__doc__)
    ap.add_argument("--task", default="all", help="task name(s), comma-separated, or 'all'")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--seed0", type=int, default=100_000, help="first seed (eval seeds; collection uses 0..)")
    args = ap.parse_args(argv)
    names = tasks_mod.task_names() if args.task == "all" else args.task.split(",")
    sim = G1Sim()
    expert = ScriptedExpert()
    for name in names:
        task = tasks_mod.get_task(name)
        outs = [run_episode(sim, task, args.seed0 + i, expert, image_size=None) for i in range(args.episodes)]
        k = sum(o.success for o in outs)
        worst_ik = max(o.ik_error_m for o in outs)
        fails = [(o.seed, o.final_info) for o in outs if not o.success][:3]
        print(f"{name:12s} expert success {k}/{len(outs)}  worst IK error {worst_ik * 1e3:.1f} mm  failures: {fails}")


if __name__ == "__main__":
    main()
