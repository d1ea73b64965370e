"""The tabletop manipulation scene and the in-process simulator API, :class:`G1Sim`.

Scene: the G1 standing at a table (pelvis held by a weld "gantry" by default, so tasks do not
depend on a balance controller), three coloured blocks, a bowl and a target area, with
seed-randomised object poses inside regions reachable by the hands. Extra MJCF can be
added by name (:class:`SceneAddition`, e.g. the calibration props).

G1Sim: the same joint-level behaviour as the DDS bridge, without DDS. Every physics step
(500 Hz, dt 0.002) recomputes ``tau = tau_ff + kp (q* - q) + kd (dq* - dq)`` from the latest
command and clamps it to the joint's effort limit, as the G1's motor drivers do. Until a
``rt/lowcmd``-style command arrives, a built-in stand controller holds the stand pose (like
the robot's own controller); ``rt/arm_sdk``-style commands blend into it with their weight.
"""

from __future__ import annotations

import importlib
import math
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import g1_model

os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering; osmesa fails on CI machines

import mujoco

# --------------------------------------------------------------------------------------------
# Table and objects (world frame: x forward from the robot, z up, pelvis above the origin).
TABLE_TOP_Z = 0.78  # m; about pelvis height, elbows bent reach it comfortably
TABLE_FRONT_X = 0.20  # the table's near edge; the hands at the home pose hang below it (z 0.63)
TABLE_DEPTH = 0.5
TABLE_WIDTH = 1.0
TABLE_THICKNESS = 0.03
BLOCK_HALF = 0.02  # 4 cm cubes
BLOCK_MASS = 0.06
BOWL_RADIUS = 0.07
BOWL_HEIGHT = 0.045
TARGET_HALF = 0.05  # 10 cm square target area

BLOCKS: dict[str, str] = {"red_block": "0.85 0.15 0.12 1", "green_block": "0.15 0.7 0.2 1",
                          "blue_block": "0.15 0.3 0.85 1"}
FREE_OBJECTS: tuple[str, ...] = (*BLOCKS, "bowl")
OBJECTS: tuple[str, ...] = (*FREE_OBJECTS, "target")

# Spawn region on the table top (x range, y range), inside what the hands reach with the
# waist near zero; the left hand covers y >= -0.05, the right hand y <= 0.05.
SPAWN_X = (0.29, 0.40)
SPAWN_Y = (-0.25, 0.25)
MIN_SEPARATION = 0.075  # between object centres (blocks); bowl and target keep their radius more

# Default (seed=None) layout: (x, y, yaw)
DEFAULT_LAYOUT: dict[str, tuple[float, float, float]] = {
    "red_block": (0.34, -0.12, 0.0),
    "green_block": (0.34, 0.0, 0.0),
    "blue_block": (0.34, 0.12, 0.0),
    "bowl": (0.38, 0.22, 0.0),
    "target": (0.38, -0.22, 0.0),
}

WELD_SOLREF = "0.004 1"  # stiff gantry: 2·dt time constant, critically damped


class SceneError(ValueError):
    """A scene could not be built: bad model file, missing joints/bodies, unknown addition."""


# --------------------------------------------------------------------------------------------
# Scene additions


@dataclass(frozen=True)
class SceneAddition:
    """MJCF snippets merged into the scene, selected by name (``dit4dit-sim --props a,b``).

    assets:    elements for ``<asset>`` (textures, materials, meshes)
    worldbody: elements for ``<worldbody>`` (bodies, mocap bodies, sites, cameras)
    bodies:    robot body name -> elements to insert inside that body (e.g. a marker on a wrist)
    sections:  top-level elements (``<equality>``, ``<contact>``, ``<sensor>`` ...)
    files:     file name -> bytes for any ``file="..."`` an asset references (e.g. a PNG texture)
    """

    name: str
    description: str = ""
    assets: str = ""
    worldbody: str = ""
    bodies: Mapping[str, str] = field(default_factory=dict)
    sections: str = ""
    files: Mapping[str, bytes] = field(default_factory=dict)


_ADDITIONS: dict[str, SceneAddition | Callable[[], SceneAddition]] = {}
# Modules whose ``PROPS`` ({name: factory() -> addition}) are selectable by name (absent modules are skipped).
_ADDITION_PROVIDERS = ("dit4dit.drivers.sim.calibration_props",)


def register_addition(addition: SceneAddition | Callable[[], SceneAddition], name: str | None = None) -> None:
    """Make an addition (or a zero-argument factory returning one) selectable by name."""
    key = name or getattr(addition, "name", None)
    if not key:
        raise SceneError("register_addition needs a name for a factory: register_addition(fn, name='...')")
    _ADDITIONS[key] = addition


def _load_providers() -> None:
    for mod in _ADDITION_PROVIDERS:
        try:
            module = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        for key, factory in getattr(module, "PROPS", {}).items():
            _ADDITIONS.setdefault(key, factory)


def available_additions() -> list[str]:
    _load_providers()
    return sorted(_ADDITIONS)


def _as_addition(obj: object) -> SceneAddition:
    """Accept any object with the SceneAddition fields (``inside`` is an alias of ``bodies``)."""
    if isinstance(obj, SceneAddition):
        return obj
    name = getattr(obj, "name", None)
    if not isinstance(name, str):
        raise SceneError(f"{obj!r} is not a scene addition (it needs name/assets/worldbody/bodies fields)")
    return SceneAddition(
        name=name,
        description=getattr(obj, "description", ""),
        assets=getattr(obj, "assets", ""),
        worldbody=getattr(obj, "worldbody", ""),
        bodies=dict(getattr(obj, "bodies", None) or getattr(obj, "inside", None) or {}),
        sections=getattr(obj, "sections", ""),
        files=dict(getattr(obj, "files", None) or {}),
    )


def get_addition(item: object) -> SceneAddition:
    """An addition by name (registered, or a provider's PROPS) or an addition object itself."""
    if not isinstance(item, str):
        return _as_addition(item)
    _load_providers()
    if item not in _ADDITIONS:
        known = ", ".join(sorted(_ADDITIONS)) or "none registered"
        raise SceneError(f"unknown scene addition {item!r}; available: {known}")
    entry = _ADDITIONS[item]
    return _as_addition(entry if not callable(entry) else entry())


# --------------------------------------------------------------------------------------------
# Scene building


@dataclass
class SceneConfig:
    """What to build. ``model_path=None`` uses the project's own G1 model."""

    model_path: Path | str | None = None
    hands: bool = False  # Dex3-1 hands (the built-in model's dex3 variant; an external model must have them)
    # weld: pelvis held by a stiff weld (gantry); fixed: no free joint; free: falls without a balance controller
    base: str = "weld"
    tabletop: bool = True  # table, blocks, bowl, target
    additions: Sequence[str | SceneAddition] = ()
    offscreen_size: tuple[int, int] = (1280, 960)  # max render width, height
    msaa_samples: int = 0  # multisample anti-aliasing; each sample costs about a full frame on a CPU renderer

    def __post_init__(self) -> None:
        if self.base not in ("weld", "fixed", "free"):
            raise SceneError(f"base must be 'weld', 'fixed' or 'free', got {self.base!r}")


def _parse(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except FileNotFoundError:
        raise SceneError(f"MJCF file {path} does not exist; pass an existing file to --model") from None
    except ET.ParseError as e:
        raise SceneError(f"MJCF file {path} is not valid XML: {e}") from None


def _inline_includes(root: ET.Element, base_dir: Path, depth: int = 0) -> None:
    """Replace every <include file=.../> by the included file's children (MuJoCo semantics)."""
    if depth > 10:
        raise SceneError("MJCF <include> nesting deeper than 10; is there an include cycle?")
    for parent in list(root.iter()):
        for i, child in enumerate(list(parent)):
            if child.tag != "include":
                continue
            inc_path = base_dir / child.get("file", "")
            inc = _parse(inc_path)
            _inline_includes(inc, base_dir, depth + 1)
            parent.remove(child)
            for k, sub in enumerate(list(inc)):
                parent.insert(i + k, sub)


def _absolutize_dirs(root: ET.Element, base_dir: Path) -> None:
    """Make mesh/texture paths absolute so the model compiles from a string."""
    compilers = root.findall("compiler")
    if not compilers:
        compilers = [ET.Element("compiler")]
        root.insert(0, compilers[0])
    assetdir = base_dir
    for c in compilers:
        if c.get("assetdir"):
            assetdir = (base_dir / c.get("assetdir")).resolve()
    for c in compilers:
        for key in ("meshdir", "texturedir"):
            val = c.get(key)
            c.set(key, str((base_dir / val).resolve()) if val else str(assetdir))
        c.attrib.pop("assetdir", None)


def _find_body(root: ET.Element, name: str) -> ET.Element | None:
    for b in root.iter("body"):
        if b.get("name") == name:
            return b
    return None


def _section(root: ET.Element, tag: str, first: bool = False) -> ET.Element:
    el = root.find(tag)
    if el is None:
        el = ET.Element(tag)
        if first:
            root.insert(0, el)
        else:
            root.append(el)
    return el


def _fragment(xml: str, what: str) -> list[ET.Element]:
    try:
        return list(ET.fromstring(f"<fragment>{xml}</fragment>"))
    except ET.ParseError as e:
        raise SceneError(f"scene addition {what} is not valid MJCF: {e}") from None


def _fmt(v: Iterable[float]) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def _tabletop_xml() -> tuple[str, str]:
    """(assets, worldbody) MJCF for the table, blocks, bowl and target."""
    assets = (
        '<texture name="floor_tex" type="2d" builtin="checker" rgb1="0.32 0.34 0.36" rgb2="0.26 0.28 0.3" '
        'width="256" height="256"/>'
        '<material name="floor_mat" texture="floor_tex" texrepeat="8 8" reflectance="0"/>'
        '<material name="table_mat" rgba="0.62 0.48 0.34 1"/>'
        '<material name="bowl_mat" rgba="0.92 0.9 0.82 1"/>'
    )
    c = f'contype="{g1_model.WORLD_CONTYPE}" conaffinity="{g1_model.WORLD_CONAFFINITY}"'
    cx = TABLE_FRONT_X + TABLE_DEPTH / 2
    top = TABLE_TOP_Z - TABLE_THICKNESS / 2
    leg_h = (TABLE_TOP_Z - TABLE_THICKNESS) / 2
    legs = "".join(
        f'<geom type="box" size="0.025 0.025 {leg_h:.4f}" pos="{sx * (TABLE_DEPTH / 2 - 0.04):.4f} '
        f'{sy * (TABLE_WIDTH / 2 - 0.04):.4f} {leg_h - top:.4f}" '
        f'material="table_mat" {c}/>'
        for sx in (-1, 1) for sy in (-1, 1)
    )
    world = (
        f'<body name="table" pos="{cx:.4f} 0 {top:.4f}">'
        f'<geom name="table" type="box" size="{TABLE_DEPTH / 2} {TABLE_WIDTH / 2} {TABLE_THICKNESS / 2}" '
        f'material="table_mat" friction="0.8 0.01 0.001" {c}/>{legs}</body>'
    )
    for name, rgba in BLOCKS.items():
        world += (
            f'<body name="{name}" pos="0.35 0 {TABLE_TOP_Z + BLOCK_HALF:.4f}"><freejoint name="{name}_joint"/>'
            f'<geom name="{name}_geom" type="box" size="{BLOCK_HALF} {BLOCK_HALF} {BLOCK_HALF}" rgba="{rgba}" '
            f'mass="{BLOCK_MASS}" friction="1.0 0.01 0.001" condim="4" {c}/></body>'
        )
    # Bowl: a ring of 12 wall boxes on a base (primitive geoms keep rendering fast). Only a square
    # foot touches the table (4 contacts); walls start above it and the round disc is for looks, since
    # 12 walls resting on the table would add ~50 contacts and quadruple the physics cost.
    walls = ""
    n = 12
    foot_top = 0.004
    for k in range(n):
        a = 2 * math.pi * k / n
        half_len = BOWL_RADIUS * math.tan(math.pi / n) + 0.003
        walls += (
            f'<geom type="box" size="0.004 {half_len:.4f} {(BOWL_HEIGHT - foot_top) / 2:.4f}" '
            f'pos="{BOWL_RADIUS * math.cos(a):.4f} {BOWL_RADIUS * math.sin(a):.4f} '
            f'{foot_top + (BOWL_HEIGHT - foot_top) / 2 + 0.001:.4f}" '
            f'euler="0 0 {a:.5f}" material="bowl_mat" mass="0.012" {c}/>'
        )
    foot = BOWL_RADIUS * 0.7
    world += (
        f'<body name="bowl" pos="0.35 0.2 {TABLE_TOP_Z:.4f}"><freejoint name="bowl_joint"/>'
        f'<geom name="bowl_base" type="box" size="{foot:.4f} {foot:.4f} {foot_top / 2}" pos="0 0 {foot_top / 2}" '
        f'material="bowl_mat" mass="0.05" {c}/>'
        f'<geom name="bowl_disc" type="cylinder" size="{BOWL_RADIUS + 0.004:.4f} {foot_top / 2}" '
        f'pos="0 0 {foot_top / 2 + 0.0005}" material="bowl_mat" mass="0.001" contype="0" conaffinity="0"/>{walls}'
        f'<site name="bowl_site" pos="0 0 0.01" size="0.005" rgba="0 0 0 0"/></body>'
    )
    # Target area: a mocap body, so reset() can move it; visual only (no contacts).
    world += (
        f'<body name="target" mocap="true" pos="0.38 -0.2 {TABLE_TOP_Z:.4f}">'
        f'<geom name="target_geom" type="box" size="{TARGET_HALF} {TARGET_HALF} 0.0008" pos="0 0 0.0008" '
        f'rgba="0.95 0.8 0.1 1" contype="0" conaffinity="0"/>'
        f'<site name="target_site" pos="0 0 0.001" size="0.005" rgba="0 0 0 0"/></body>'
    )
    return assets, world


# Grasping (the Dex3 scene only; the default scene's physics stays as it was). A block held between finger
# capsules slips under pyramidal cones and a soft impedance; an elliptic cone with impratio 10 (MuJoCo's
# advice for grasping) makes friction as stiff as the normal force, and condim 4 on the fingers adds torsional
# friction so a block pinched at two points does not spin about the pinch axis. Fingertips get rubber-like
# friction (1.5). noslip iterations are not used: they cost a second solver pass at every step.
GRASP_CONE = "elliptic"
GRASP_IMPRATIO = 10.0
FINGER_FRICTION = "1.5 0.02 0.001"
FINGER_CONDIM = 4


def _grasp_contacts(root: ET.Element, option: ET.Element) -> None:
    option.set("cone", GRASP_CONE)
    option.set("impratio", f"{GRASP_IMPRATIO:g}")
    for body in root.iter("body"):
        if "_hand_" in (body.get("name") or ""):  # left_hand_palm_link, right_hand_index_1_link, ...
            for geom in body.findall("geom"):
                geom.set("friction", FINGER_FRICTION)
                geom.set("condim", str(FINGER_CONDIM))


def build_scene_xml(config: SceneConfig | None = None) -> tuple[str, dict[str, bytes]]:
    """The full scene MJCF and the asset files it references by name."""
    cfg = config or SceneConfig()
    if cfg.model_path is not None:
        path = Path(cfg.model_path)
    else:
        path = g1_model.DEX3_MODEL_PATH if cfg.hands else g1_model.MODEL_PATH
    root = _parse(path)
    if root.tag != "mujoco":
        raise SceneError(f"{path}: the root element is <{root.tag}>, expected <mujoco>")
    _inline_includes(root, path.parent)
    _absolutize_dirs(root, path.parent)

    # The robot must carry the G1's joints (matched by name) and the bodies the bridge uses.
    joint_names = {j.get("name") for j in root.iter("joint")}
    missing = [n for n in g1_spec.JOINT_NAMES if n not in joint_names]
    if missing:
        raise SceneError(f"{path} lacks G1 joints {missing}; the model must name its joints as in g1_spec "
                         "(e.g. left_elbow_joint)")
    if cfg.hands:
        missing = [n for side in ("left", "right") for n in g1_model.dex3_joint_names(side) if n not in joint_names]
        if missing:
            raise SceneError(f"{path} has no Dex3 hands (lacks {missing[:3]}...); drop --hands or use a model with "
                             "joints named like left_hand_thumb_0_joint")
    pelvis = _find_body(root, g1_model.PELVIS_BODY)
    torso = _find_body(root, g1_model.TORSO_BODY)
    if pelvis is None or torso is None:
        raise SceneError(f"{path} needs bodies named 'pelvis' and 'torso_link' (IMU, gantry and head camera)")

    files: dict[str, bytes] = {}
    option = _section(root, "option", first=True)
    option.set("timestep", f"{g1_spec.CONTROL_DT}")
    option.set("integrator", option.get("integrator", "implicitfast"))
    if cfg.hands:
        _grasp_contacts(root, option)
    visual = _section(root, "visual")
    glob = visual.find("global") if visual.find("global") is not None else ET.SubElement(visual, "global")
    glob.set("offwidth", str(cfg.offscreen_size[0]))
    glob.set("offheight", str(cfg.offscreen_size[1]))
    quality = visual.find("quality") if visual.find("quality") is not None else ET.SubElement(visual, "quality")
    quality.set("shadowsize", "0")  # shadows cost more than the whole scene on a software renderer
    quality.set("offsamples", str(int(cfg.msaa_samples)))

    # IMU site + sensors, and the head camera, where the model lacks them.
    sites = {s.get("name") for s in root.iter("site")}
    sensor_names = {s.get("name") for s in root.iter() if s.get("name") and s.tag in (
        "framequat", "gyro", "accelerometer")}
    if g1_model.IMU_SITE not in sites:
        ET.SubElement(pelvis, "site", name=g1_model.IMU_SITE, pos="0.04525 0 -0.08339", size="0.01")
    sensor = _section(root, "sensor")
    for tag, name in (("framequat", "imu_quat"), ("gyro", "imu_gyro"), ("accelerometer", "imu_acc")):
        if name not in sensor_names:
            attrs = {"objtype": "site", "objname": g1_model.IMU_SITE} if tag == "framequat" else {
                "site": g1_model.IMU_SITE}
            ET.SubElement(sensor, tag, name=name, **attrs)
    cameras = {c.get("name") for c in root.iter("camera")}
    if g1_model.HEAD_CAMERA not in cameras:
        ET.SubElement(torso, "camera", name=g1_model.HEAD_CAMERA, pos=_fmt(g1_spec.HEAD_CAMERA_POS),
                      xyaxes=_fmt(g1_model._camera_xyaxes(g1_spec.HEAD_CAMERA_PITCH)),
                      fovy=str(g1_model.D435_FOVY_DEG))

    # Gantry.
    free = [j for j in list(pelvis) if j.tag == "freejoint" or (j.tag == "joint" and j.get("type") == "free")]
    if cfg.base == "fixed":
        for j in free:
            pelvis.remove(j)
    elif cfg.base == "weld":
        if not free:
            raise SceneError(f"{path}: base='weld' needs a free joint on the pelvis; use base='fixed'")
        eq = _section(root, "equality")
        ET.SubElement(eq, "weld", name="gantry", body1=g1_model.PELVIS_BODY, solref=WELD_SOLREF)

    asset = _section(root, "asset")
    world = _section(root, "worldbody")
    # A scene file may carry its own floor (in any of several <worldbody>s once includes are inlined).
    has_floor = any(g.get("type") == "plane" or g.get("name") == "floor"
                    for wb in root.findall("worldbody") for g in wb.findall("geom"))
    light_xml = (
        '<light name="key" pos="0.4 -0.6 2.4" dir="-0.1 0.3 -1" directional="true" diffuse="0.6 0.6 0.6" '
        'specular="0.1 0.1 0.1" castshadow="false"/>'
        '<light name="fill" pos="1.5 0.8 2.0" dir="-0.6 -0.3 -0.8" directional="true" diffuse="0.3 0.3 0.3" '
        'castshadow="false"/>'
    )
    for el in _fragment(light_xml, "lights"):
        world.insert(0, el)
    if cfg.tabletop:
        a_xml, w_xml = _tabletop_xml()
        for el in _fragment(a_xml, "tabletop assets"):
            asset.append(el)
        if not has_floor:
            world.append(ET.Element("geom", name="floor", type="plane", size="0 0 0.05", material="floor_mat",
                                    contype=str(g1_model.WORLD_CONTYPE),
                                    conaffinity=str(g1_model.WORLD_CONAFFINITY)))
        for el in _fragment(w_xml, "tabletop"):
            world.append(el)
    elif not has_floor:
        world.append(ET.Element("geom", name="floor", type="plane", size="0 0 0.05", rgba="0.3 0.32 0.34 1",
                                contype=str(g1_model.WORLD_CONTYPE), conaffinity=str(g1_model.WORLD_CONAFFINITY)))

    for item in cfg.additions:
        add = get_addition(item)
        for el in _fragment(add.assets, f"{add.name!r} assets"):
            asset.append(el)
        for el in _fragment(add.worldbody, f"{add.name!r} worldbody"):
            world.append(el)
        for body_name, xml in add.bodies.items():
            body = _find_body(root, body_name)
            if body is None:
                raise SceneError(f"scene addition {add.name!r} targets body {body_name!r}, which the model lacks")
            for el in _fragment(xml, f"{add.name!r} body {body_name!r}"):
                body.append(el)
        for el in _fragment(add.sections, f"{add.name!r} sections"):
            existing = root.find(el.tag)
            if existing is not None and el.tag not in ("option", "compiler", "size", "statistic"):
                existing.extend(list(el))
            else:
                root.append(el)
        files.update(add.files)
    return ET.tostring(root, encoding="unicode"), files


def load_scene(config: SceneConfig | None = None) -> mujoco.MjModel:
    xml, files = build_scene_xml(config)
    try:
        return mujoco.MjModel.from_xml_string(xml, files or None)
    except ValueError as e:
        src = (config.model_path if config and config.model_path else g1_model.MODEL_PATH)
        raise SceneError(f"MuJoCo could not compile the scene built from {src}: {e}") from None


# --------------------------------------------------------------------------------------------
# Commands


@dataclass
class JointCommand:
    """Per-joint motor command: the 29 body joints (SDK order, ``LowCmd_.motor_cmd[0:29]``) or a Dex3 hand's 7."""

    q: np.ndarray
    dq: np.ndarray
    kp: np.ndarray
    kd: np.ndarray
    tau: np.ndarray
    enabled: np.ndarray  # bool; a disabled motor (mode 0) produces no torque

    @classmethod
    def make(cls, q, kp, kd, dq=None, tau=None, enabled=None, n: int = g1_spec.NUM_JOINTS) -> JointCommand:
        """Validated command arrays; scalars broadcast; missing dq/tau are zero."""

        def arr(x, default: float, what: str) -> np.ndarray:
            a = np.full(n, default, dtype=np.float64) if x is None else np.asarray(x, dtype=np.float64)
            if a.shape == ():
                a = np.full(n, float(a))
            if a.shape != (n,):
                raise ValueError(f"joint command field {what!r} must have shape ({n},), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"joint command field {what!r} contains NaN or inf")
            return a

        en = np.ones(n, dtype=bool) if enabled is None else np.asarray(enabled, dtype=bool)
        if en.shape != (n,):
            raise ValueError(f"joint command field 'enabled' must have shape ({n},), got {en.shape}")
        return cls(arr(q, 0.0, "q"), arr(dq, 0.0, "dq"), arr(kp, 0.0, "kp"), arr(kd, 0.0, "kd"),
                   arr(tau, 0.0, "tau"), en)

    def torque(self, q: np.ndarray, dq: np.ndarray) -> np.ndarray:
        t = self.tau + self.kp * (self.q - q) + self.kd * (self.dq - dq)
        return np.where(self.enabled, t, 0.0)


def stand_command(pose: np.ndarray | None = None) -> JointCommand:
    """The built-in stand controller: hold the stand pose with the default gains."""
    kp, kd = g1_spec.gains_array()
    return JointCommand.make(g1_spec.HOME_POSE if pose is None else pose, kp, kd)


# --------------------------------------------------------------------------------------------
# G1Sim


def _quat_to_rpy(q: np.ndarray) -> np.ndarray:
    """wxyz quaternion -> roll, pitch, yaw (ZYX convention, as the G1 IMU reports)."""
    w, x, y, z = q
    roll = math.atan2(2 * (w * x + y * z), 1 - 2 * (x * x + y * y))
    pitch = math.asin(max(-1.0, min(1.0, 2 * (w * y - z * x))))
    yaw = math.atan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z))
    return np.array([roll, pitch, yaw])


class G1Sim:
    """The simulated G1 in its scene, stepped in-process (no DDS, no real-time pacing).

    Thread-safety: command setters may be called from any thread (DDS callbacks); stepping,
    reset and rendering take ``self.lock`` so a renderer thread sees a consistent state.
    """

    def __init__(self, scene: SceneConfig | None = None, *, seed: int | None = None) -> None:
        self.scene_config = scene or SceneConfig()
        self.model = load_scene(self.scene_config)
        self.data = mujoco.MjData(self.model)
        self.lock = threading.RLock()
        m = self.model
        self._jid = np.array([m.joint(n).id for n in g1_spec.JOINT_NAMES])
        self._qadr = m.jnt_qposadr[self._jid]
        self._dadr = m.jnt_dofadr[self._jid]
        self._act = self._map_actuators()
        self._effort = g1_spec.EFFORT.copy()
        # The motors' damping term runs at kHz on the real drives; at the 2 ms physics step an explicit
        # kd·dq on a light wrist (kd 8, inertia ~4e-3) is unstable and chatters. So the -kd·dq part is
        # integrated implicitly as joint damping (implicitfast), and our own effort clamp replaces ctrlrange.
        self._base_damping = m.dof_damping[self._dadr].copy()
        m.actuator_ctrllimited[self._act] = 0
        self._sens = {n: self._sensor_slice(n) for n in ("imu_quat", "imu_gyro", "imu_acc")}
        self._renderers: dict[tuple[int, int, int], mujoco.Renderer] = {}
        self._stand = stand_command()
        self._lowcmd: JointCommand | None = None
        self._arm_sdk: JointCommand | None = None
        self._arm_weight = 0.0
        self._arm_mask = np.zeros(g1_spec.NUM_JOINTS, dtype=bool)
        self._arm_mask[list(g1_spec.ARM_SDK_JOINTS)] = True
        # Dex3 hands (7 joints a side, DEX3_JOINTS order) where the model has them.
        self.hand_sides: tuple[str, ...] = ()
        self._hand: dict[str, dict[str, np.ndarray]] = {}
        self._hand_cmd: dict[str, JointCommand | None] = {}
        if self.scene_config.hands:
            for side in ("left", "right"):
                names = g1_model.dex3_joint_names(side)
                jid = np.array([m.joint(n).id for n in names])
                act = self._actuators_for(names, jid)
                eff = np.abs(m.actuator_ctrlrange[act, 1]) if np.all(m.actuator_ctrllimited[act]) else \
                    g1_spec.DEX3_EFFORT[side].copy()
                self._hand[side] = {"q": m.jnt_qposadr[jid], "v": m.jnt_dofadr[jid], "act": act, "effort": eff,
                                   "damping": m.dof_damping[m.jnt_dofadr[jid]].copy(), "tau": np.zeros(len(jid))}
                self._hand_cmd[side] = None
                m.actuator_ctrllimited[act] = 0  # our effort clamp, as for the body (the damping part is implicit)
            self.hand_sides = ("left", "right")
        self.last_torque = np.zeros(g1_spec.NUM_JOINTS)
        self.task: str | None = None
        self.seed: int | None = None
        self.reset(seed)

    # ---- model plumbing
    def _has_body(self, name: str) -> bool:
        return mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_BODY, name) >= 0

    def _sensor_slice(self, name: str) -> slice:
        sid = self.model.sensor(name).id
        adr, dim = self.model.sensor_adr[sid], self.model.sensor_dim[sid]
        return slice(adr, adr + dim)

    def _map_actuators(self) -> np.ndarray:
        """Actuator id per G1 joint (matched by the joint it drives); torque motors only."""
        return self._actuators_for(g1_spec.JOINT_NAMES, self._jid)

    def _actuators_for(self, names: Sequence[str], jids: np.ndarray) -> np.ndarray:
        m = self.model
        by_joint: dict[int, int] = {}
        for a in range(m.nu):
            if m.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT:
                by_joint[int(m.actuator_trnid[a, 0])] = a
        ids = []
        for name, jid in zip(names, jids, strict=True):
            a = by_joint.get(int(jid))
            if a is None:
                raise SceneError(f"the model has no actuator on joint {name!r}; add a <motor joint=\"{name}\"/>")
            if m.actuator_biastype[a] != mujoco.mjtBias.mjBIAS_NONE or abs(m.actuator_gainprm[a, 0] - 1) > 1e-9 \
                    or m.actuator_gear[a, 0] != 1:
                raise SceneError(f"actuator {m.actuator(a).name!r} on {name!r} is not a plain torque <motor> "
                                 "(gear 1); the bridge computes PD torques itself, so the model needs motors")
            ids.append(a)
        return np.array(ids)

    # ---- reset and objects
    def reset(self, seed: int | None = None, task: str | None = None) -> dict[str, dict[str, list[float]]]:
        """Robot to the stand pose at rest, commands cleared, objects laid out.

        Without a task the layout is :meth:`sample_layout` (default layout for seed None). With a task
        name (``drivers/sim/tasks.py``) the task places the objects from the seed (0 if None).
        """
        task_obj = None
        if task is not None:
            if not self.scene_config.tabletop:
                raise SceneError(f"task {task!r} needs the tabletop scene (SceneConfig.tabletop=True)")
            from dit4dit.drivers.sim import tasks as tasks_mod  # tasks build on this module

            task_obj = tasks_mod.get_task(task)  # KeyError naming the known tasks
            if task_obj.grasps and not self.hand_sides:
                raise SceneError(f"task {task!r} grasps: it needs the Dex3 hands (SceneConfig(hands=True), "
                                 "dit4dit-sim --hands)")
        with self.lock:
            m, d = self.model, self.data
            mujoco.mj_resetData(m, d)
            d.qpos[self._qadr] = g1_spec.HOME_POSE
            self.release_command()
            self._stand = stand_command()
            self.seed, self.task = seed, task
            if task_obj is not None:
                task_obj.reset(m, d, 0 if seed is None else int(seed))
            elif self.scene_config.tabletop:
                self._place_objects(self.sample_layout(seed))
            mujoco.mj_forward(m, d)
            return self.object_poses()

    def task_state(self) -> dict:
        """{"task", "seed", "success" (None without a task), "info", "objects"} from the sim state."""
        with self.lock:
            out: dict = {"task": self.task, "seed": self.seed, "success": None, "info": {},
                         "objects": self.object_poses(), "sim_time": self.time}
            if self.task is not None:
                from dit4dit.drivers.sim import tasks as tasks_mod

                status = tasks_mod.get_task(self.task).evaluate(self.model, self.data)
                out["success"], out["info"] = bool(status.success), dict(status.info)
            return out

    @staticmethod
    def sample_layout(seed: int | None) -> dict[str, tuple[float, float, float]]:
        """Object (x, y, yaw) on the table: the default layout for seed None, else random but
        reproducible, inside the reachable spawn region and apart from each other."""
        if seed is None:
            return dict(DEFAULT_LAYOUT)
        rng = np.random.default_rng(seed)
        radius = {n: BLOCK_HALF * 1.5 for n in BLOCKS} | {"bowl": BOWL_RADIUS + 0.01, "target": TARGET_HALF}
        for _attempt in range(1000):
            placed: dict[str, tuple[float, float, float]] = {}
            for name in ("bowl", "target", *BLOCKS):
                for _try in range(200):
                    x = rng.uniform(*SPAWN_X)
                    y = rng.uniform(*SPAWN_Y)
                    if all(math.hypot(x - px, y - py) >= max(MIN_SEPARATION, radius[name] + radius[o] + 0.01)
                           for o, (px, py, _) in placed.items()):
                        placed[name] = (x, y, rng.uniform(-math.pi, math.pi) if name in BLOCKS else 0.0)
                        break
                else:
                    break
            if len(placed) == len(OBJECTS):
                return placed
        raise RuntimeError("could not place the objects apart in the spawn region; widen SPAWN_X/SPAWN_Y")

    def _place_objects(self, layout: Mapping[str, tuple[float, float, float]]) -> None:
        for name, (x, y, yaw) in layout.items():
            z = TABLE_TOP_Z + (BLOCK_HALF if name in BLOCKS else 0.0)
            quat = np.array([math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)])
            self.set_object_pose(name, (x, y, z), quat)

    def set_object_pose(self, name: str, pos: Sequence[float], quat: Sequence[float] = (1, 0, 0, 0)) -> None:
        """Teleport an object (free body or the mocap target); velocities are zeroed."""
        with self.lock:
            m, d = self.model, self.data
            bid = m.body(name).id
            if m.body_mocapid[bid] >= 0:
                d.mocap_pos[m.body_mocapid[bid]] = pos
                d.mocap_quat[m.body_mocapid[bid]] = quat
                return
            jnt = m.body_jntadr[bid]
            if jnt < 0 or m.jnt_type[jnt] != mujoco.mjtJoint.mjJNT_FREE:
                raise SceneError(f"body {name!r} is neither a free object nor a mocap body; it cannot be moved")
            a, v = m.jnt_qposadr[jnt], m.jnt_dofadr[jnt]
            d.qpos[a:a + 3] = pos
            d.qpos[a + 3:a + 7] = quat
            d.qvel[v:v + 6] = 0
            mujoco.mj_forward(m, d)

    # ---- commands
    def set_command(self, q, kp, kd, dq=None, tau=None, enabled=None) -> None:
        """A full-body ``rt/lowcmd`` command (29 joints); it replaces the built-in stand controller."""
        cmd = JointCommand.make(q, kp, kd, dq, tau, enabled)
        self._lowcmd = cmd

    def set_arm_sdk(self, q, kp, kd, weight: float, dq=None, tau=None) -> None:
        """An ``rt/arm_sdk`` command: arrays over all 29 joints, only waist+arms (ARM_SDK_JOINTS) used;
        ``weight`` in [0, 1] blends it with the built-in controller's torque."""
        if not math.isfinite(weight):
            raise ValueError("arm_sdk weight must be finite")
        cmd = JointCommand.make(q, kp, kd, dq, tau)
        self._arm_sdk, self._arm_weight = cmd, min(1.0, max(0.0, float(weight)))

    def release_command(self) -> None:
        """Back to the built-in stand controller (as after ``SelectMode('ai')``); hands go passive."""
        self._lowcmd = None
        self._arm_sdk = None
        self._arm_weight = 0.0
        for side in self._hand_cmd:
            self._hand_cmd[side] = None

    def set_hand_command(self, side: str, q, kp, kd, dq=None, tau=None, enabled=None) -> None:
        """A Dex3 ``rt/dex3/<side>/cmd``: 7 joints in g1_spec.DEX3_JOINTS order. Without one a hand is passive."""
        if side not in self._hand:
            raise ValueError(f"no Dex3 {side!r} hand in this scene (hands: {list(self._hand) or 'none'}); "
                             "build it with SceneConfig(hands=True)")
        n = len(g1_spec.DEX3_JOINTS)
        self._hand_cmd[side] = JointCommand.make(q, kp, kd, dq, tau, enabled, n=n)

    def hand_state(self, side: str) -> dict[str, np.ndarray]:
        """q, dq, tau (7,) of a Dex3 hand; tau is the motor torque of the last step (PD law, clamped to effort)."""
        h = self._hand[side]
        return {"q": self.data.qpos[h["q"]].copy(), "dq": self.data.qvel[h["v"]].copy(), "tau": h["tau"].copy()}

    def set_stand_pose(self, pose: Sequence[float]) -> None:
        self._stand = stand_command(np.asarray(pose, dtype=np.float64))

    @property
    def arm_sdk_weight(self) -> float:
        return self._arm_weight

    @property
    def command_source(self) -> str:
        """Who drives the motors: "lowcmd", "arm_sdk" (blended into the stand controller) or "stand"."""
        if self._lowcmd is not None:
            return "lowcmd"
        return "arm_sdk" if self._arm_sdk is not None and self._arm_weight > 0 else "stand"

    def compute_torque(self) -> np.ndarray:
        """The motor torques for the current state and latest command, clamped to effort."""
        return self._torque_and_kd()[0]

    def _torque_and_kd(self) -> tuple[np.ndarray, np.ndarray]:
        """Clamped motor torque and the effective kd of the command that produced it."""
        q = self.data.qpos[self._qadr]
        dq = self.data.qvel[self._dadr]
        low = self._lowcmd
        if low is not None:
            t, kd = low.torque(q, dq), np.where(low.enabled, low.kd, 0.0)
        else:
            t, kd = self._stand.torque(q, dq), self._stand.kd
            arm, w = self._arm_sdk, self._arm_weight
            if arm is not None and w > 0.0:
                t = np.where(self._arm_mask, w * arm.torque(q, dq) + (1.0 - w) * t, t)
                kd = np.where(self._arm_mask, w * arm.kd + (1.0 - w) * kd, kd)
        return np.clip(t, -self._effort, self._effort), kd

    def _hand_torques(self) -> None:
        # As for the body (see __init__): a finger link's inertia is ~1e-4 kg·m² with its rotor, so an explicit
        # kd·dq (kd 0.2) at the 2 ms step is unstable (the fingers chatter at ~10 rad/s); the damping part of the
        # PD law is integrated implicitly as joint damping.
        m, d = self.model, self.data
        for side, h in self._hand.items():
            cmd = self._hand_cmd[side]
            if cmd is None:
                m.dof_damping[h["v"]] = h["damping"]  # passive: the finger joints' own damping only
                d.ctrl[h["act"]] = 0.0
                h["tau"][:] = 0.0
                continue
            dq = d.qvel[h["v"]]
            t = np.clip(cmd.torque(d.qpos[h["q"]], dq), -h["effort"], h["effort"])
            kd = np.where(cmd.enabled, cmd.kd, 0.0)
            m.dof_damping[h["v"]] = h["damping"] + kd
            d.ctrl[h["act"]] = t + kd * dq
            h["tau"][:] = t

    def step(self, n: int = 1) -> None:
        """Advance n physics steps (dt = 0.002 s), recomputing the PD torque at every step."""
        m, d = self.model, self.data
        with self.lock:
            for _ in range(n):
                t, kd = self._torque_and_kd()
                # Applied torque = ctrl - kd·dq(next step) ≈ t, with the damping part implicit (see __init__).
                m.dof_damping[self._dadr] = self._base_damping + kd
                d.ctrl[self._act] = t + kd * d.qvel[self._dadr]
                if self._hand:
                    self._hand_torques()
                mujoco.mj_step(m, d)
            self.last_torque = t if n > 0 else self.last_torque

    # ---- state
    @property
    def time(self) -> float:
        return float(self.data.time)

    def joint_positions(self) -> np.ndarray:
        return self.data.qpos[self._qadr].copy()

    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel[self._dadr].copy()

    def joint_torques(self) -> np.ndarray:
        """Motor torque of the last step (the motors' tau_est), clamped to effort."""
        return np.array(self.last_torque, dtype=np.float64)

    def imu(self) -> dict[str, np.ndarray]:
        """Pelvis IMU: quaternion (w, x, y, z), rpy, gyroscope (rad/s), accelerometer (m/s²)."""
        s = self.data.sensordata
        quat = s[self._sens["imu_quat"]].copy()
        return {"quaternion": quat, "rpy": _quat_to_rpy(quat), "gyroscope": s[self._sens["imu_gyro"]].copy(),
                "accelerometer": s[self._sens["imu_acc"]].copy()}

    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position and quaternion (w, x, y, z) of a body."""
        b = self.data.body(name)
        return b.xpos.copy(), b.xquat.copy()

    def site_pose(self, name: str) -> np.ndarray:
        """4x4 world pose of a site."""
        s = self.data.site(name)
        T = np.eye(4)
        T[:3, :3] = s.xmat.reshape(3, 3)
        T[:3, 3] = s.xpos
        return T

    def ee_poses(self) -> dict[str, np.ndarray]:
        """4x4 world poses of the hand sites (see g1_model.HAND_SITES)."""
        return {side: self.site_pose(site) for side, site in g1_model.HAND_SITES.items()
                if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_SITE, site) >= 0}

    def object_poses(self) -> dict[str, dict[str, list[float]]]:
        """World pose of each scene object: {name: {"pos": [x, y, z], "quat": [w, x, y, z]}}."""
        out = {}
        for name in OBJECTS:
            if self._has_body(name):
                p, q = self.body_pose(name)
                out[name] = {"pos": p.tolist(), "quat": q.tolist()}
        return out

    # ---- cameras
    def camera_names(self) -> list[str]:
        return [self.model.camera(i).name for i in range(self.model.ncam)]

    def camera_pose(self, name: str, convention: str = "opencv") -> np.ndarray:
        """4x4 world pose of a camera. 'opencv': x right, y down, z forward (the optical frame);
        'mujoco': x right, y up, looking along -z."""
        c = self.data.cam(name)
        T = np.eye(4)
        R = c.xmat.reshape(3, 3)
        if convention == "opencv":
            R = R @ np.diag([1.0, -1.0, -1.0])
        elif convention != "mujoco":
            raise ValueError(f"convention must be 'opencv' or 'mujoco', got {convention!r}")
        T[:3, :3] = R
        T[:3, 3] = c.xpos
        return T

    def camera_intrinsics(self, name: str, width: int, height: int) -> np.ndarray:
        """Pinhole K (3x3) of a camera rendered at width × height (MuJoCo: square pixels, centred)."""
        fovy = math.radians(float(self.model.camera(name).fovy[0]))
        f = 0.5 * height / math.tan(fovy / 2)
        return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1.0]])

    def _renderer(self, width: int, height: int) -> mujoco.Renderer:
        # One renderer per (thread, size): a GL context is current in the thread that made it.
        key = (threading.get_ident(), width, height)
        r = self._renderers.get(key)
        if r is None:
            ow, oh = self.model.vis.global_.offwidth, self.model.vis.global_.offheight
            if width > ow or height > oh:
                raise ValueError(f"render size {width}x{height} exceeds the offscreen buffer {ow}x{oh}; "
                                 "raise SceneConfig.offscreen_size")
            r = mujoco.Renderer(self.model, height=height, width=width)
            self._renderers[key] = r
        return r

    def render(self, camera: str = g1_model.HEAD_CAMERA, size: tuple[int, int] = (224, 224),
               data: mujoco.MjData | None = None) -> np.ndarray:
        """RGB uint8 (H, W, 3) image from a named camera; size = (height, width)."""
        h, w = int(size[0]), int(size[1])
        if h <= 0 or w <= 0:
            raise ValueError(f"render size must be positive (height, width), got {size}")
        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) < 0:
            raise ValueError(f"unknown camera {camera!r}; cameras: {', '.join(self.camera_names())}")
        r = self._renderer(w, h)
        if data is None:
            with self.lock:
                r.update_scene(self.data, camera=camera)
        else:
            r.update_scene(data, camera=camera)
        return r.render()

    def snapshot(self, out: mujoco.MjData | None = None) -> mujoco.MjData:
        """A consistent copy of the simulation state (for rendering in another thread)."""
        with self.lock:
            if out is None:
                return _copy_data(self.model, self.data)
            mujoco.mj_copyData(out, self.model, self.data)
            return out

    def close(self) -> None:
        """Free this thread's renderers (a thread that rendered must call this itself before it ends)."""
        me = threading.get_ident()
        for key in [k for k in self._renderers if k[0] == me]:
            self._renderers.pop(key).close()

    def __enter__(self) -> G1Sim:  # noqa: PYI034 - typing.Self needs Python 3.11; the package supports 3.10
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy_data(model: mujoco.MjModel, data: mujoco.MjData) -> mujoco.MjData:
    out = mujoco.MjData(model)
    mujoco.mj_copyData(out, model, data)
    return out
