"""Language-conditioned tabletop tasks for the G1's arms in the simulator's scene.

Every task shares one seeded layout (three coloured blocks, a target marker and a bowl on the table), so
the same seed shows the same scene whatever the task and only the instruction says what to do. Success is
computed from simulator state alone (body positions), never from the policy's own view.

Tasks (chosen to be solvable by a scripted IK expert and learnable by a small policy trained on a CPU):
- ``reach_red``  "move the right hand to the red block": right hand point within REACH_TOL of a point just
  above the red block.
- ``reach_blue`` "move the left hand to the blue block": the same with the left hand and the blue block.
- ``push_green`` "push the green block onto the target": the green block's centre within PUSH_TOL (in the
  table plane) of the target's centre, pushed forward by the right hand.

Tasks that grasp (``GRASP_TASKS``, the Dex3 scene only: ``SceneConfig(hands=True)``, ``dit4dit-sim --hands``):
- ``pick_place`` "pick the red block and put it in the bowl": the red block's centre inside the bowl's rim
  (in the table plane) and low enough to rest in it. This task moves the bowl in front of the right hand
  (``PICK_BOWL_REGION``) after the shared layout, so the other tasks' scenes stay as they were.
- ``lift_red`` "pick up the red block": the red block's bottom face LIFT_HEIGHT above the table.
They are not in ``task_names()`` (the arm-only tasks every existing harness iterates over); ask for them by
name or with ``task_names(grasp=True)``.

Scene names looked up in the model are listed in docs/architecture.md (Tabletop tasks).
The layout is expressed relative to the robot's pelvis (x forward, y left), so it follows wherever the scene
builder puts the robot and the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLOCKS = ("red_block", "green_block", "blue_block")
TARGET = "target"
BOWL = "bowl"
TABLE_GEOM = "table"
ROBOT_ROOT = "pelvis"

REACH_HOVER = 0.03  # m above the block's top face where the hand point should end
REACH_TOL = 0.05  # m, 3-D distance from the hover point counted as "reached"
PUSH_TOL = 0.045  # m, block centre to target centre in the table plane

# Sampling boxes in the pelvis frame (x forward, y left), metres: (x_lo, x_hi, y_lo, y_hi).
# Chosen so every object stays inside the head camera's view at a square image and within the hands' reach.
REGIONS: dict[str, tuple[float, float, float, float]] = {
    "red_block": (0.33, 0.40, -0.17, -0.09),
    "blue_block": (0.33, 0.40, 0.09, 0.17),
    "green_block": (0.29, 0.33, -0.05, 0.03),
}
PUSH_DISTANCE = (0.09, 0.11)  # target sits this far in front (+x) of the green block...
PUSH_LATERAL = 0.015  # ...give or take this much sideways
BOWL_REGION = (0.50, 0.56, 0.14, 0.22)
PICK_BOWL_REGION = (0.38, 0.42, -0.33, -0.30)  # pick_place: the bowl in front of the red block's region
BOWL_INNER = 0.055  # m: block centre within this of the bowl's centre (inner radius 0.066 less a margin)
BOWL_REST_Z = 0.05  # m above the table: a block centre lower than this rests in the bowl, not on its rim
LIFT_HEIGHT = 0.05  # m: lift_red's block bottom above the table
BLOCK_YAW = 0.35  # rad, blocks are turned by up to this much


@dataclass
class TaskStatus:
    success: bool
    info: dict[str, Any] = field(default_factory=dict)


def _body_id(model: Any, name: str) -> int:
    import mujoco

    i = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
    if i < 0:
        raise KeyError(f"the scene has no body {name!r} (tasks need: {', '.join(BLOCKS + (TARGET, BOWL))})")
    return i


def _site_id(model: Any, name: str) -> int:
    import mujoco

    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, name)


def _free_qpos_adr(model: Any, body: int) -> int:
    import mujoco

    adr = model.body_jntadr[body]
    if adr < 0 or model.jnt_type[adr] != mujoco.mjtJoint.mjJNT_FREE:
        raise KeyError(f"body {model.body(body).name!r} needs a free joint to be placed by the task")
    return int(model.jnt_qposadr[adr])


def table_top_z(model: Any, data: Any) -> float:
    """Height of the table surface: top face of the geom named ``table``."""
    import mujoco

    g = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, TABLE_GEOM)
    if g < 0:
        raise KeyError(f"the scene has no geom {TABLE_GEOM!r}")
    return float(data.geom_xpos[g][2] + model.geom_size[g][2])


def _half_height(model: Any, body: int) -> float:
    g = model.body_geomadr[body]
    return float(model.geom_size[g][2]) if g >= 0 else 0.02


def hand_point(model: Any, data: Any, side: str) -> np.ndarray:
    """World position of the hand point: site ``<side>_hand`` if the model has one, else the wrist-yaw body."""
    s = _site_id(model, f"{side}_hand")
    if s >= 0:
        return data.site_xpos[s].copy()
    return data.xpos[_body_id(model, f"{side}_wrist_yaw_link")].copy()


def _yaw_quat(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def sample_layout(seed: int) -> dict[str, tuple[float, float, float]]:
    """Seeded object layout in the pelvis frame: name -> (x, y, yaw). Same seed, same scene, for every task."""
    rng = np.random.default_rng(int(seed))
    layout: dict[str, tuple[float, float, float]] = {}
    for name in BLOCKS:
        x0, x1, y0, y1 = REGIONS[name]
        layout[name] = (rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(-BLOCK_YAW, BLOCK_YAW))
    gx, gy, _ = layout["green_block"]
    layout[TARGET] = (gx + rng.uniform(*PUSH_DISTANCE), gy + rng.uniform(-PUSH_LATERAL, PUSH_LATERAL), 0.0)
    x0, x1, y0, y1 = BOWL_REGION
    layout[BOWL] = (rng.uniform(x0, x1), rng.uniform(y0, y1), 0.0)
    return layout


@dataclass(frozen=True)
class Task:
    name: str
    instruction: str
    arm: str  # "right" | "left": the arm the expert (and the policy) is expected to use
    kind: str  # "reach" | "push" | "pick_place" | "lift" (the last two grasp: Dex3 scene)
    obj: str  # the block the instruction names
    duration_s: float  # episode time limit

    # -- placement
    def reset(self, model: Any, data: Any, seed: int) -> dict[str, tuple[float, float, float]]:
        """Place blocks, target and bowl for ``seed`` (world frame, on the table top). Returns the pelvis-frame layout."""
        import mujoco

        mujoco.mj_kinematics(model, data)
        root = data.xpos[_body_id(model, ROBOT_ROOT)]
        z_top = table_top_z(model, data)
        layout = sample_layout(seed)
        for name, (x, y, yaw) in layout.items():
            b = _body_id(model, name)
            pos = np.array([root[0] + x, root[1] + y, z_top])
            quat = _yaw_quat(yaw)
            if name in BLOCKS:
                pos[2] += _half_height(model, b) + 1e-3  # resting on the table, no initial penetration
                adr = _free_qpos_adr(model, b)
                data.qpos[adr : adr + 3] = pos
                data.qpos[adr + 3 : adr + 7] = quat
                dadr = model.jnt_dofadr[model.body_jntadr[b]]
                data.qvel[dadr : dadr + 6] = 0.0
            elif model.body_jntadr[b] >= 0 and model.jnt_type[model.body_jntadr[b]] == mujoco.mjtJoint.mjJNT_FREE:
                adr = _free_qpos_adr(model, b)
                pos[2] += 1e-3
                data.qpos[adr : adr + 3] = pos
                data.qpos[adr + 3 : adr + 7] = quat
            elif model.body_mocapid[b] >= 0:
                mid = model.body_mocapid[b]
                data.mocap_pos[mid] = pos
                data.mocap_quat[mid] = quat
            else:
                # A static body (marker welded to the world): move it in the model itself.
                parent = model.body_parentid[b]
                if parent != 0:
                    raise KeyError(f"body {name!r} must be free, mocap or a child of the world to be placed")
                model.body_pos[b] = pos
                model.body_quat[b] = quat
        if self.kind == "pick_place":
            layout[BOWL] = self._place_bowl_in_reach(model, data, seed, root, z_top)
        mujoco.mj_forward(model, data)
        return layout

    @property
    def grasps(self) -> bool:
        return self.kind in ("pick_place", "lift")

    @staticmethod
    def _place_bowl_in_reach(model: Any, data: Any, seed: int, root: np.ndarray, z_top: float) -> tuple[float, float, float]:
        rng = np.random.default_rng([int(seed), 1])  # its own stream: the shared layout stays the same
        x0, x1, y0, y1 = PICK_BOWL_REGION
        x, y = rng.uniform(x0, x1), rng.uniform(y0, y1)
        adr = _free_qpos_adr(model, _body_id(model, BOWL))
        data.qpos[adr : adr + 3] = [root[0] + x, root[1] + y, z_top + 1e-3]
        data.qpos[adr + 3 : adr + 7] = [1.0, 0.0, 0.0, 0.0]
        return (x, y, 0.0)

    # -- goal and success
    def goal_point(self, model: Any, data: Any) -> np.ndarray:
        """Where the hand point should end (reach) or where the block should end (push), world frame."""
        if self.kind == "reach":
            b = _body_id(model, self.obj)
            return data.xpos[b] + np.array([0.0, 0.0, _half_height(model, b) + REACH_HOVER])
        return data.xpos[_body_id(model, TARGET)].copy()

    def evaluate(self, model: Any, data: Any) -> TaskStatus:
        if self.kind == "pick_place":
            block, bowl = data.xpos[_body_id(model, self.obj)], data.xpos[_body_id(model, BOWL)]
            d = float(np.linalg.norm((block - bowl)[:2]))
            height = float(block[2] - table_top_z(model, data))
            held = touches_robot(model, data, self.obj)
            ok = d < BOWL_INNER and height < BOWL_REST_Z and not held
            return TaskStatus(ok, {"block_to_bowl_m": round(d, 4), "tolerance_m": BOWL_INNER,
                                   "block_height_m": round(height, 4), "in_hand": held})
        if self.kind == "lift":
            b = _body_id(model, self.obj)
            bottom = float(data.xpos[b][2] - _half_height(model, b) - table_top_z(model, data))
            return TaskStatus(bottom > LIFT_HEIGHT, {"block_bottom_above_table_m": round(bottom, 4),
                                                    "needed_m": LIFT_HEIGHT})
        if self.kind == "reach":
            d = float(np.linalg.norm(hand_point(model, data, self.arm) - self.goal_point(model, data)))
            return TaskStatus(d < REACH_TOL, {"hand_to_goal_m": round(d, 4), "tolerance_m": REACH_TOL})
        block = data.xpos[_body_id(model, self.obj)]
        target = data.xpos[_body_id(model, TARGET)]
        d = float(np.linalg.norm((block - target)[:2]))
        on_table = bool(block[2] > table_top_z(model, data))
        return TaskStatus(d < PUSH_TOL and on_table,
                          {"block_to_target_m": round(d, 4), "tolerance_m": PUSH_TOL, "on_table": on_table})

    def object_poses(self, model: Any, data: Any) -> dict[str, list[float]]:
        return object_poses(model, data)


def touches_robot(model: Any, data: Any, body_name: str) -> bool:
    """Whether a body is in contact with the robot (any geom under the robot's root body)."""
    b = _body_id(model, body_name)
    robot = model.body_rootid[_body_id(model, ROBOT_ROOT)]
    for c in data.contact[: data.ncon]:
        b1, b2 = model.geom_bodyid[c.geom1], model.geom_bodyid[c.geom2]
        if b in (b1, b2) and robot in (model.body_rootid[b1], model.body_rootid[b2]):
            return True
    return False


def object_poses(model: Any, data: Any) -> dict[str, list[float]]:
    """World poses [x, y, z, qw, qx, qy, qz] of the task objects."""
    out = {}
    for name in BLOCKS + (TARGET, BOWL):
        b = _body_id(model, name)
        out[name] = [float(v) for v in np.concatenate([data.xpos[b], data.xquat[b]])]
    return out


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("reach_red", "move the right hand to the red block", "right", "reach", "red_block", 6.0),
        Task("reach_blue", "move the left hand to the blue block", "left", "reach", "blue_block", 6.0),
        Task("push_green", "push the green block onto the target", "right", "push", "green_block", 9.0),
    )
}


GRASP_TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("pick_place", "pick the red block and put it in the bowl", "right", "pick_place", "red_block", 10.0),
        Task("lift_red", "pick up the red block", "right", "lift", "red_block", 7.0),
    )
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name] if name in TASKS else GRASP_TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known: {', '.join([*TASKS, *GRASP_TASKS])} "
                       f"({', '.join(GRASP_TASKS)} need the Dex3 hands)") from None


def task_names(grasp: bool = False) -> list[str]:
    """The arm-only tasks (what the shipped checkpoint covers); with ``grasp`` the Dex3 tasks too."""
    return [*TASKS, *GRASP_TASKS] if grasp else list(TASKS)
