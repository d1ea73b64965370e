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
from dit4dit.drivers.sim import g1_model
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


def _slerp(R0: np.ndarray, R1: np.ndarray, s: float) -> np.ndarray:
    """Rotation a fraction s of the way from R0 to R1 (about the single axis between them)."""
    from scipy.spatial.transform import Rotation

    rel = Rotation.from_matrix(R1 @ R0.T).as_rotvec()
    return Rotation.from_rotvec(s * rel).as_matrix() @ R0


def min_jerk(s: np.ndarray) -> np.ndarray:
    s = np.clip(s, 0.0, 1.0)
    return s**3 * (10 - 15 * s + 6 * s**2)


# Grasping with a Dex3-1 hand (right hand; palm frame: x along the fingers, the hand closes toward +y).
# The block is taken from above: palm +y down, fingers level and pointing along the block's face normal nearest
# to forward, the hand pitched GRASP_PITCH so the swung-back thumb clears the table. Hand poses are 7 joints in
# g1_spec.DEX3_JOINTS order (right-hand signs).
GRASP_IN_PALM = np.array([0.08, 0.06, 0.0])  # block centre in the palm frame when held
GRASP_PITCH = 0.3  # rad about the palm's z (fingertips up, thumb up: it clears the table)
HAND_FIST = np.array([0.0, 0.72, -1.74, 1.5, 1.7, 1.5, 1.7])  # out of the table's way while the arm travels
HAND_OPEN = np.array([0.0, 0.72, -1.74, 0.0, 0.0, 0.0, 0.0])  # thumb back, fingers straight: room for the block
HAND_CLOSED = np.array([0.0, -0.6, -1.74, 1.4, 1.4, 1.4, 1.4])  # past contact, so the fingers squeeze
HAND_RELEASE = np.array([0.0, 0.72, -1.0, 0.0, 0.0, 0.0, 0.0])  # thumb swung well away: the block drops free
HAND_KP, HAND_KD = 1.5, 0.2  # xr_teleoperate's Dex3 gains
GRASP_ABOVE = 0.10  # m above the grasp where the hand opens, clear of the block
CARRY_UP = 0.12  # m the held block is lifted above its grasp height
GRASP_CLEAR_X, GRASP_LIFT_Z = 0.12, 0.95  # m: the hand rises further back and higher than for reaching, so the
# fingers and thumb (which stick out further than the rubber hand) clear the table's edge
CARRY_KEY = 8  # index of the keyframe with the block lifted
BOWL_DROP = 0.07  # m above the bowl's base where the hand opens


@dataclass
class ExpertPlan:
    knots: np.ndarray  # (T, 29) joint targets at the control rate; row k is commanded at time k / control_hz
    hand_path: np.ndarray  # (T, 3) planned hand point, world frame
    ik_error_m: float  # worst IK position error along the plan
    waypoints: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (time s, world point)
    hand_knots: dict[str, np.ndarray] = field(default_factory=dict)  # side -> (T, 7) Dex3 targets (grasp tasks)


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

    def _grasp_waypoints(self, task: Task, sim: Any) -> tuple[list[tuple[float, np.ndarray, np.ndarray]], np.ndarray]:
        """(time s, hand-point world position, Dex3 target) keyframes and the grasp's world rotation."""
        m, d = sim.model, sim.data
        block = d.xpos[tasks_mod._body_id(m, task.obj)].copy()
        bq = d.xquat[tasks_mod._body_id(m, task.obj)]
        yaw = 2.0 * np.arctan2(bq[3], bq[0])
        yaw = (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4  # the face normal nearest to forward
        c, s_ = np.cos(yaw), np.sin(yaw)
        fwd = np.array([c, s_, 0.0])
        down = np.array([0.0, 0.0, -1.0])
        R_level = np.column_stack([fwd, down, np.cross(fwd, down)])
        cp, sp = np.cos(GRASP_PITCH), np.sin(GRASP_PITCH)
        R = R_level @ np.array([[cp, -sp, 0.0], [sp, cp, 0.0], [0.0, 0.0, 1.0]])
        site_in_palm = np.array(g1_model.HAND_SITE_OFFSET)
        grasp = block + R @ (site_in_palm - GRASP_IN_PALM)
        up = np.array([0.0, 0.0, 1.0])
        start = tasks_mod.hand_point(m, d, task.arm)
        lift = np.array([GRASP_CLEAR_X, start[1] * 0.8, GRASP_LIFT_Z])
        k: list[tuple[float, np.ndarray, np.ndarray]] = [
            (0.0, start, HAND_FIST), (1.0, lift, HAND_FIST), (2.4, grasp + GRASP_ABOVE * up, HAND_FIST),
            (2.7, grasp + GRASP_ABOVE * up, HAND_FIST), (3.2, grasp + GRASP_ABOVE * up, HAND_OPEN),
            (4.2, grasp, HAND_OPEN), (4.5, grasp, HAND_OPEN), (5.1, grasp, HAND_CLOSED),
            (6.1, grasp + CARRY_UP * up, HAND_CLOSED),
        ]
        if task.kind == "pick_place":
            bowl = d.xpos[tasks_mod._body_id(m, tasks_mod.BOWL)]
            over = np.array([bowl[0], bowl[1], 0.0]) + R @ (site_in_palm - GRASP_IN_PALM)
            over[2] = tasks_mod.table_top_z(m, d) + BOWL_DROP + (grasp[2] - block[2]) + CARRY_UP * 0.6
            k += [(7.5, over, HAND_CLOSED), (8.0, over - 0.04 * up, HAND_CLOSED), (8.6, over - 0.04 * up, HAND_RELEASE),
                  (9.4, over + 0.04 * up, HAND_RELEASE)]
        return k, R

    def _plan_grasp(self, task: Task, sim: Any, q_hold: np.ndarray) -> ExpertPlan:
        keys, R = self._grasp_waypoints(task, sim)
        n = round(task.duration_s * self.control_hz)
        path, hand = np.empty((n, 3)), np.empty((n, len(g1_spec.DEX3_JOINTS)))
        for k, t in enumerate(np.arange(n) / self.control_hz):
            path[k], hand[k] = keys[-1][1], keys[-1][2]
            for (t0, p0, h0), (t1, p1, h1) in pairwise(keys):
                if t <= t1:
                    s = min_jerk(np.array((t - t0) / (t1 - t0)))
                    path[k], hand[k] = p0 + s * (p1 - p0), h0 + s * (h1 - h0)
                    break
        torso = tasks_mod._body_id(sim.model, "torso_link")
        R_t, p_t = sim.data.xmat[torso].reshape(3, 3), sim.data.xpos[torso]
        R_start = sim.data.site_xmat[sim.model.site(f"{task.arm}_hand").id].reshape(3, 3)
        # The palm keeps its hanging orientation while it rises past the table's edge, then turns to the grasp's.
        turn_from, turn_to = keys[1][0] * self.control_hz, keys[2][0] * self.control_hz
        knots, q, worst = np.empty((n, g1_spec.NUM_JOINTS)), q_hold.copy(), 0.0
        frame = f"{task.arm}_hand"
        for k in range(n):
            target = np.eye(4)
            target[:3, 3] = R_t.T @ (path[k] - p_t)
            target[:3, :3] = R_t.T @ _slerp(R_start, R, float(np.clip((k - turn_from) / (turn_to - turn_from), 0, 1)))
            # Once the block is held, position alone: the carry reaches further than the grasp orientation allows.
            carrying = k / self.control_hz > keys[CARRY_KEY][0]
            res = self.kin.ik(frame, target, q, max_iters=80, tol_pos_m=5e-4, tol_rot_rad=5e-3,
                              position_only=carrying)
            q = res.q
            worst = max(worst, res.pos_err_m)
            knots[k] = q
        return ExpertPlan(knots=knots, hand_path=path, ik_error_m=worst,
                          waypoints=[(t, p) for t, p, _ in keys], hand_knots={task.arm: hand})

    def plan(self, task: Task, sim: Any, q_start: np.ndarray | None = None) -> ExpertPlan:
        """Joint-target knots for the whole episode (task.duration_s at control_hz)."""
        q0 = sim.joint_positions() if q_start is None else np.asarray(q_start, dtype=np.float64)
        # Other joints hold the start pose exactly (the controller holds g1_spec.HOME_POSE).
        q_hold = g1_spec.HOME_POSE.copy()
        q_hold[list(CONTROLLED_JOINTS)] = q0[list(CONTROLLED_JOINTS)]
        if task.grasps:
            return self._plan_grasp(task, sim, q_hold)
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
    hand_limiters = {}
    for side in plan.hand_knots:
        from dit4dit.runtime.realtime.safety import HandLimiter

        hand_limiters[side] = HandLimiter(side)
        hand_limiters[side].reset(sim.hand_state(side)["q"])
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
            for side, limiter in hand_limiters.items():
                h = plan.hand_knots[side]
                hq = h[k] + (h[min(k + 1, n - 1)] - h[k]) * (i / ticks)
                sim.set_hand_command(side, *limiter(hq, HAND_KP, HAND_KD))
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
