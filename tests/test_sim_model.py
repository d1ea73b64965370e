"""The project's own G1 MJCF: generated, committed, and faithful to g1_spec and the rev 1.0 URDF."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import mujoco
import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import g1_model


@pytest.fixture(scope="module")
def model() -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(g1_model.MODEL_PATH))


def test_committed_models_are_the_generators_output() -> None:
    for hand, path in g1_model.HAND_VARIANTS.items():
        assert path.read_text() == g1_model.build_model_xml(hand), (
            f"{path.name} is stale: run `python -m dit4dit.drivers.sim.g1_model`"
        )


def test_dex3_variant_adds_the_hands_after_the_body() -> None:
    m = mujoco.MjModel.from_xml_path(str(g1_model.DEX3_MODEL_PATH))
    assert m.nu == g1_spec.NUM_JOINTS + 14
    for a, spec in enumerate(g1_spec.JOINTS):  # the body's 29 motors keep SDK order
        assert m.joint(m.actuator_trnid[a, 0]).name == spec.name
    a = g1_spec.NUM_JOINTS
    for side in ("left", "right"):
        for i, name in enumerate(g1_model.dex3_joint_names(side)):
            j = m.joint(name)
            np.testing.assert_allclose(m.jnt_range[j.id], [g1_spec.DEX3_LOWER[side][i], g1_spec.DEX3_UPPER[side][i]],
                                       atol=1e-6, err_msg=name)
            assert m.actuator_trnid[a, 0] == j.id  # hand motors in message order (DEX3_JOINTS)
            a += 1
        assert m.site(g1_model.HAND_SITES[side]).bodyid[0] == m.body(g1_model.DEX3_PALM_BODIES[side]).id
    with pytest.raises(ValueError, match="hand must be"):
        g1_model.build_model_xml("claw")


def test_joints_match_g1_spec(model: mujoco.MjModel) -> None:
    hinge = [model.joint(i) for i in range(model.njnt) if model.jnt_type[i] == mujoco.mjtJoint.mjJNT_HINGE]
    assert [j.name for j in hinge] == list(g1_spec.JOINT_NAMES)
    for j, spec in zip(hinge, g1_spec.JOINTS, strict=True):
        assert model.jnt_limited[j.id]
        np.testing.assert_allclose(model.jnt_range[j.id], [spec.lower, spec.upper], atol=1e-6, err_msg=spec.name)
        np.testing.assert_allclose(model.jnt_actfrcrange[j.id], [-spec.effort, spec.effort], err_msg=spec.name)
        assert model.dof_armature[model.jnt_dofadr[j.id]] > 0


def test_actuators_are_torque_motors_in_sdk_order(model: mujoco.MjModel) -> None:
    assert model.nu == g1_spec.NUM_JOINTS
    for a, spec in enumerate(g1_spec.JOINTS):
        assert model.joint(model.actuator_trnid[a, 0]).name == spec.name
        assert model.actuator_biastype[a] == mujoco.mjtBias.mjBIAS_NONE
        assert model.actuator_gainprm[a, 0] == 1.0 and model.actuator_gear[a, 0] == 1.0
        np.testing.assert_allclose(model.actuator_ctrlrange[a], [-spec.effort, spec.effort])


def test_sensors_sites_and_cameras(model: mujoco.MjModel) -> None:
    names = [model.sensor(i).name for i in range(model.nsensor)]
    n = g1_spec.NUM_JOINTS
    assert names[:n] == [f"{j}_pos" for j in g1_spec.JOINT_NAMES]
    assert names[n:2 * n] == [f"{j}_vel" for j in g1_spec.JOINT_NAMES]
    assert names[2 * n:3 * n] == [f"{j}_torque" for j in g1_spec.JOINT_NAMES]
    for s in ("imu_quat", "imu_gyro", "imu_acc", "secondary_imu_quat", "secondary_imu_gyro", "secondary_imu_acc"):
        assert s in names
    for site in (g1_model.IMU_SITE, g1_model.TORSO_IMU_SITE, *g1_model.HAND_SITES.values()):
        assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, site) >= 0, site
    assert model.site(g1_model.IMU_SITE).bodyid[0] == model.body("pelvis").id
    for side, site in g1_model.HAND_SITES.items():
        assert model.site(site).bodyid[0] == model.body(g1_model.PALM_BODIES[side]).id
    for cam in (g1_model.HEAD_CAMERA, *g1_model.WRIST_CAMERAS.values()):
        assert mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam) >= 0, cam


def test_head_camera_is_the_d435_mount(model: mujoco.MjModel) -> None:
    cam = model.camera(g1_model.HEAD_CAMERA)
    assert model.cam_bodyid[cam.id] == model.body("torso_link").id
    np.testing.assert_allclose(model.cam_pos[cam.id], g1_spec.HEAD_CAMERA_POS, atol=1e-9)
    R = np.zeros(9)
    mujoco.mju_quat2Mat(R, model.cam_quat[cam.id])
    view = -R.reshape(3, 3)[:, 2]  # MuJoCo cameras look along -z
    pitch_down = math.atan2(-view[2], view[0])
    assert pitch_down == pytest.approx(g1_spec.HEAD_CAMERA_PITCH, abs=1e-6)
    assert abs(view[1]) < 1e-9
    assert model.cam_fovy[cam.id] == pytest.approx(g1_model.D435_FOVY_DEG)


def test_mass_and_standing_height(model: mujoco.MjModel) -> None:
    # rev 1.0 URDF without hands: ~33.3 kg
    assert sum(model.body_mass) == pytest.approx(33.34, abs=0.05)
    d = mujoco.MjData(model)
    for i, name in enumerate(g1_spec.JOINT_NAMES):
        d.qpos[model.jnt_qposadr[model.joint(name).id]] = g1_spec.HOME_POSE[i]
    mujoco.mj_forward(model, d)
    for foot in ("left_foot", "right_foot"):
        g = model.geom(foot).id
        R = d.geom_xmat[g].reshape(3, 3)
        corners = [d.geom_xpos[g] + R @ (np.array([sx, sy, sz]) * model.geom_size[g])
                   for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
        # soles on the floor at the stand pose (the toe lifts a little: the foot is not exactly level)
        assert min(c[2] for c in corners) == pytest.approx(0.0, abs=0.003), foot


def test_matches_reference_urdf(shared_dir) -> None:
    """Masses, CoMs, inertias, joint origins and axes equal the rev 1.0 URDF's."""
    root = ET.parse(shared_dir / "reference/unitree_g1_urdf/g1_29dof_rev_1_0.urdf").getroot()
    links = {ln.name: ln for ln in g1_model.g1_links()}
    checked = 0
    for link in root.findall("link"):
        ln = links.get(link.get("name"))
        inertial = link.find("inertial")
        if ln is None or inertial is None:
            continue
        inertia = inertial.find("inertia")
        urdf_i = [float(inertia.get(k)) for k in ("ixx", "iyy", "izz", "ixy", "ixz", "iyz")]
        np.testing.assert_allclose(ln.inertia, urdf_i, rtol=1e-6, atol=1e-12, err_msg=ln.name)
        np.testing.assert_allclose(ln.com, [float(x) for x in inertial.find("origin").get("xyz").split()],
                                   atol=1e-9, err_msg=ln.name)
        assert ln.mass == pytest.approx(float(inertial.find("mass").get("value")))
        checked += 1
    for joint in root.findall("joint"):
        ln = links.get(joint.find("child").get("link"))
        if ln is None or ln.parent is None:
            continue
        origin = joint.find("origin")
        np.testing.assert_allclose(ln.pos, [float(x) for x in origin.get("xyz").split()], atol=1e-9, err_msg=ln.name)
        np.testing.assert_allclose(ln.rpy, [float(x) for x in (origin.get("rpy") or "0 0 0").split()],
                                   atol=1e-9, err_msg=ln.name)
        if joint.get("type") == "revolute":
            assert ln.joint == joint.get("name")
            np.testing.assert_allclose(ln.axis, [float(x) for x in joint.find("axis").get("xyz").split()])
    assert checked == len(links)


def test_no_self_collision_but_world_contacts(model: mujoco.MjModel) -> None:
    robot = [g for g in range(model.ngeom) if model.geom_bodyid[g] != 0]
    for g in robot:
        ct, ca = model.geom_contype[g], model.geom_conaffinity[g]
        assert not (ct & ca), model.geom(g).name  # robot geoms never collide with each other
        assert ct & g1_model.WORLD_CONAFFINITY  # but do with world/object geoms
