"""The tabletop scene and the in-process G1Sim API (real MuJoCo, offscreen EGL rendering)."""

from __future__ import annotations

import mujoco
import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import g1_model
from dit4dit.drivers.sim.scene import (
    BLOCKS,
    FINGER_CONDIM,
    GRASP_IMPRATIO,
    OBJECTS,
    SPAWN_X,
    SPAWN_Y,
    TABLE_FRONT_X,
    TABLE_TOP_Z,
    G1Sim,
    SceneAddition,
    SceneConfig,
    SceneError,
    build_scene_xml,
    load_scene,
)

ARM_POSE = g1_spec.HOME_POSE.copy()
# arms out to the sides, elbows and wrists turned: a clearly different pose that clears the table
ARM_POSE[g1_spec.joint_index("right_shoulder_roll_joint")] = -0.5
ARM_POSE[g1_spec.joint_index("right_elbow_joint")] = 1.3
ARM_POSE[g1_spec.joint_index("right_wrist_roll_joint")] = 0.4
ARM_POSE[g1_spec.joint_index("left_shoulder_roll_joint")] = 0.5
ARM_POSE[g1_spec.joint_index("left_shoulder_yaw_joint")] = 0.3
ARM_POSE[g1_spec.joint_index("waist_yaw_joint")] = 0.2


def stiff_gains() -> tuple[np.ndarray, np.ndarray]:
    """Stand gains with stiffer arms, so gravity sag stays well inside the pose tolerance."""
    kp, kd = g1_spec.gains_array()
    kp[list(g1_spec.ARM_JOINTS)], kd[list(g1_spec.ARM_JOINTS)] = 200.0, 4.0
    return kp, kd


@pytest.fixture(scope="module")
def sim() -> G1Sim:
    s = G1Sim()
    yield s
    s.close()


def test_stand_controller_holds_the_home_pose_on_the_gantry(sim: G1Sim) -> None:
    sim.reset()
    pelvis0, _ = sim.body_pose("pelvis")
    sim.step(500)
    assert sim.time == pytest.approx(1.0)
    np.testing.assert_allclose(sim.joint_positions(), g1_spec.HOME_POSE, atol=0.05)
    pelvis1, quat = sim.body_pose("pelvis")
    np.testing.assert_allclose(pelvis1, pelvis0, atol=0.005)  # the weld holds the pelvis
    imu = sim.imu()
    np.testing.assert_allclose(imu["rpy"], 0.0, atol=0.01)
    np.testing.assert_allclose(imu["accelerometer"], [0, 0, 9.81], atol=0.1)
    np.testing.assert_allclose(imu["quaternion"], quat, atol=1e-6)


def test_lowcmd_pose_is_reached_and_torque_clamped(sim: G1Sim) -> None:
    sim.reset()
    kp, kd = stiff_gains()
    sim.set_command(ARM_POSE, kp, kd)
    sim.step(1000)
    np.testing.assert_allclose(sim.joint_positions()[list(g1_spec.ARM_JOINTS)], ARM_POSE[list(g1_spec.ARM_JOINTS)],
                               atol=0.03)
    # A huge gain asks for far more than the motors give: the applied torque stops at the effort limit.
    sim.set_command(g1_spec.HOME_POSE, np.full(29, 1e5), np.zeros(29))
    t = sim.compute_torque()
    assert np.all(np.abs(t) <= g1_spec.EFFORT + 1e-9)
    assert np.any(np.isclose(np.abs(t), g1_spec.EFFORT))
    sim.step(1)
    assert np.all(np.abs(sim.joint_torques()) <= g1_spec.EFFORT + 1e-6)


def test_pd_law_and_disabled_motors(sim: G1Sim) -> None:
    sim.reset()
    q, dq = sim.joint_positions(), sim.joint_velocities()
    rng = np.random.default_rng(0)
    target, kp, kd = q + rng.uniform(-0.05, 0.05, 29), rng.uniform(5, 50, 29), rng.uniform(0.5, 2, 29)
    dq_t, tau = rng.uniform(-0.1, 0.1, 29), rng.uniform(-0.5, 0.5, 29)
    enabled = np.ones(29, dtype=bool)
    enabled[3] = False
    sim.set_command(target, kp, kd, dq=dq_t, tau=tau, enabled=enabled)
    expect = np.clip(tau + kp * (target - q) + kd * (dq_t - dq), -g1_spec.EFFORT, g1_spec.EFFORT)
    expect[3] = 0.0
    np.testing.assert_allclose(sim.compute_torque(), expect, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="'kp'.*shape"):
        sim.set_command(target, kp[:10], kd)
    with pytest.raises(ValueError, match="NaN"):
        sim.set_command(np.full(29, np.nan), kp, kd)


def test_arm_sdk_weight_blends_with_the_stand_controller(sim: G1Sim) -> None:
    sim.reset()
    kp, kd = g1_spec.gains_array()
    near = g1_spec.HOME_POSE + np.linspace(-0.05, 0.05, 29)  # small offsets: no torque reaches its limit
    stand = sim.compute_torque()
    sim.set_arm_sdk(near, kp, kd, weight=1.0)
    full = sim.compute_torque()
    assert np.all(np.abs(full) < g1_spec.EFFORT)
    sim.set_arm_sdk(near, kp, kd, weight=0.25)
    quarter = sim.compute_torque()
    arm = list(g1_spec.ARM_SDK_JOINTS)
    legs = [i for i in range(29) if i not in arm]
    np.testing.assert_allclose(quarter[arm], 0.25 * full[arm] + 0.75 * stand[arm], atol=1e-9)
    np.testing.assert_allclose(quarter[legs], stand[legs])  # legs stay with the built-in controller
    sim.set_arm_sdk(near, kp, kd, weight=0.0)
    np.testing.assert_allclose(sim.compute_torque(), stand)
    kp, kd = stiff_gains()
    sim.set_arm_sdk(ARM_POSE, kp, kd, weight=1.0)
    sim.step(1000)
    np.testing.assert_allclose(sim.joint_positions()[arm], ARM_POSE[arm], atol=0.03)


def test_seeded_layout_is_reproducible_reachable_and_settles(sim: G1Sim) -> None:
    a = G1Sim.sample_layout(7)
    assert a == G1Sim.sample_layout(7)
    assert a != G1Sim.sample_layout(8)
    for seed in range(30):
        lay = G1Sim.sample_layout(seed)
        assert set(lay) == set(OBJECTS)
        for name, (x, y, _) in lay.items():
            assert SPAWN_X[0] <= x <= SPAWN_X[1] and SPAWN_Y[0] <= y <= SPAWN_Y[1]
            assert x > TABLE_FRONT_X + 0.05
        names = list(lay)
        for i, n1 in enumerate(names):
            for n2 in names[i + 1:]:
                assert np.hypot(lay[n1][0] - lay[n2][0], lay[n1][1] - lay[n2][1]) >= 0.075
    poses = sim.reset(seed=3)
    sim.step(500)
    after = sim.object_poses()
    for name in BLOCKS:
        np.testing.assert_allclose(after[name]["pos"], poses[name]["pos"], atol=0.005)  # resting, not falling
        assert after[name]["pos"][2] == pytest.approx(TABLE_TOP_Z + 0.02, abs=0.003)


def test_render_sees_the_table_and_blocks(sim: G1Sim) -> None:
    sim.reset()
    img = sim.render(g1_model.HEAD_CAMERA, size=(96, 128))
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    red = (img[..., 0] > 150) & (img[..., 1] < 80) & (img[..., 2] < 80)
    blue = (img[..., 2] > 150) & (img[..., 0] < 80)
    assert red.sum() > 5 and blue.sum() > 5  # the blocks are in the head camera's view
    wrist = sim.render(g1_model.WRIST_CAMERAS["right"], size=(64, 64))
    assert wrist.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="unknown camera"):
        sim.render("no_such_camera")
    K = sim.camera_intrinsics(g1_model.HEAD_CAMERA, 640, 480)
    assert K[0, 0] == pytest.approx(240 / np.tan(np.radians(g1_model.D435_FOVY_DEG) / 2))


def test_camera_pose_projects_objects_where_they_render(sim: G1Sim) -> None:
    """The OpenCV-convention camera pose and K put the red block's centre on its red pixels."""
    sim.reset()
    h, w = 240, 320
    img = sim.render(g1_model.HEAD_CAMERA, size=(h, w))
    T_world_cam = sim.camera_pose(g1_model.HEAD_CAMERA, "opencv")
    K = sim.camera_intrinsics(g1_model.HEAD_CAMERA, w, h)
    centre = np.array(sim.object_poses()["red_block"]["pos"])  # the default layout's block is not rotated
    corners = centre + 0.02 * np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    cam = (np.linalg.inv(T_world_cam) @ np.c_[corners, np.ones(8)].T)[:3]
    uv = (K @ (cam / cam[2]))[:2].T
    r, g, b = (img[..., i].astype(int) for i in range(3))
    red = np.argwhere((r > 20) & (r > 1.6 * g) & (r > 1.6 * b))[:, ::-1]  # (u, v), shaded faces included
    # the red pixels' bounding box is the projected cube's, to a pixel or two of shading/rasterisation
    np.testing.assert_allclose(red.min(axis=0), uv.min(axis=0), atol=2.0)
    np.testing.assert_allclose(red.max(axis=0), uv.max(axis=0), atol=2.0)


def test_additions_insert_into_world_and_robot_bodies() -> None:
    add = SceneAddition(
        name="probe",
        assets='<material name="probe_mat" rgba="1 0 1 1"/>',
        worldbody='<body name="probe_world" pos="1 1 1"><geom type="sphere" size="0.01" material="probe_mat"/></body>',
        bodies={"right_rubber_hand": '<site name="probe_site" pos="0.1 0 0"/>'},
    )
    s = G1Sim(SceneConfig(additions=[add]))
    try:
        assert s.model.site("probe_site").bodyid[0] == s.model.body("right_rubber_hand").id
        assert s.body_pose("probe_world")[0].tolist() == [1, 1, 1]
    finally:
        s.close()
    with pytest.raises(SceneError, match="lacks"):
        build_scene_xml(SceneConfig(additions=[SceneAddition("bad", bodies={"no_body": "<site/>"})]))
    with pytest.raises(SceneError, match="unknown scene addition 'nope'"):
        build_scene_xml(SceneConfig(additions=["nope"]))


def test_calibration_props_by_name() -> None:
    pytest.importorskip("dit4dit.drivers.sim.calibration_props")
    s = G1Sim(SceneConfig(additions=["charuco_board", "wrist_marker"]))
    try:
        assert s.model.body("calib_wrist_marker").parentid[0] == s.model.body("right_rubber_hand").id
    finally:
        s.close()


def test_fixed_base_and_bad_models(tmp_path) -> None:
    s = G1Sim(SceneConfig(base="fixed", tabletop=False))
    try:
        assert s.model.nq == 29 and s.model.nbody == 34 + 0  # world + 33 robot bodies, no objects
    finally:
        s.close()
    with pytest.raises(SceneError, match="does not exist"):
        build_scene_xml(SceneConfig(model_path=tmp_path / "missing.xml"))
    bad = tmp_path / "bad.xml"
    bad.write_text('<mujoco><worldbody><body name="pelvis"><joint name="x"/></body></worldbody></mujoco>')
    with pytest.raises(SceneError, match="lacks G1 joints"):
        build_scene_xml(SceneConfig(model_path=bad))
    with pytest.raises(SceneError, match="base must be"):
        SceneConfig(base="floating")


def test_task_reset_and_state() -> None:
    tasks = pytest.importorskip("dit4dit.drivers.sim.tasks")
    s = G1Sim()
    try:
        for name in tasks.task_names():
            s.reset(seed=4, task=name)
            state = s.task_state()
            assert state["task"] == name and state["success"] is False
        with pytest.raises(KeyError, match="unknown task"):
            s.reset(task="fly")
    finally:
        s.close()


@pytest.mark.parametrize("name", ["g1_29dof.xml", "scene_29dof.xml"])
def test_reference_mjcf_runs_in_g1sim(shared_dir, name) -> None:
    """Unitree's full mesh MJCF (the robot file, and the scene that <include>s it with its own floor) loads
    with the same scene builder and holds the stand pose."""
    path = shared_dir / "reference/unitree_g1_mujoco" / name
    s = G1Sim(SceneConfig(model_path=path))
    try:
        s.step(300)
        np.testing.assert_allclose(s.joint_positions()[list(g1_spec.ARM_JOINTS)],
                                   g1_spec.HOME_POSE[list(g1_spec.ARM_JOINTS)], atol=0.05)
        assert "red_block" in s.object_poses()
        floors = [i for i in range(s.model.ngeom) if s.model.geom_type[i] == 0]  # mjGEOM_PLANE
        assert len(floors) == 1
    finally:
        s.close()


def test_dex3_hands_track_their_commands() -> None:
    from dit4dit.drivers import g1_spec as spec

    s = G1Sim(SceneConfig(hands=True, tabletop=False))
    try:
        assert s.hand_sides == ("left", "right")
        closed = spec.DEX3_UPPER["right"] * 0.8  # right fingers close towards their upper limits
        s.set_hand_command("right", closed, 1.5, 0.1)
        s.step(500)
        np.testing.assert_allclose(s.hand_state("right")["q"], closed, atol=0.05)
        # the left hand got no command: passive (no motor torque), its fingers hang inside their limits
        assert np.all(np.abs(s.hand_state("left")["tau"]) == 0.0)
        q_left = s.hand_state("left")["q"]
        assert np.all(q_left >= spec.DEX3_LOWER["left"] - 0.02) and np.all(q_left <= spec.DEX3_UPPER["left"] + 0.02)
        with pytest.raises(ValueError, match="shape"):
            s.set_hand_command("right", closed[:3], 1.5, 0.1)
    finally:
        s.close()
    with pytest.raises(ValueError, match="no Dex3"):
        G1Sim(SceneConfig(tabletop=False)).set_hand_command("left", np.zeros(7), 1.0, 0.1)


def test_seeded_objects_are_within_reach_of_a_hand() -> None:
    """Every block of random layouts can be reached from above (4 cm over its centre) by the hand on its
    side, within joint limits (damped-least-squares IK on the same model)."""
    kin_mod = pytest.importorskip("dit4dit.drivers.kinematics")
    kin = kin_mod.G1Kinematics()
    s = G1Sim()
    try:
        pos, quat = s.body_pose("torso_link")
        T_world_torso = np.eye(4)
        T_world_torso[:3, 3] = pos
        R = np.zeros(9)
        mujoco.mju_quat2Mat(R, quat)
        T_world_torso[:3, :3] = R.reshape(3, 3)
        for seed in range(8):
            for name, (x, y, _) in G1Sim.sample_layout(seed).items():
                if name not in BLOCKS:
                    continue
                target = np.eye(4)
                target[:3, 3] = (np.linalg.inv(T_world_torso) @ [x, y, TABLE_TOP_Z + 0.02 + 0.04, 1.0])[:3]
                frame = "left_hand" if y > 0 else "right_hand"
                res = kin.ik(frame, target, g1_spec.HOME_POSE, position_only=True, restarts=3)
                assert res.pos_err_m < 0.01, (seed, name, x, y, res.pos_err_m)
    finally:
        s.close()


def test_same_seed_and_commands_give_the_same_trajectory() -> None:
    """Demos must be reproducible: a seed and a command sequence fix the whole rollout."""
    kp, kd = g1_spec.gains_array()
    finals = []
    for _ in range(2):
        s = G1Sim(seed=5)
        try:
            for k in range(4):
                s.set_command(g1_spec.HOME_POSE + 0.05 * k, kp, kd)
                s.step(50)
            finals.append((s.data.qpos.copy(), s.render(size=(32, 32))))
        finally:
            s.close()
    np.testing.assert_array_equal(finals[0][0], finals[1][0])
    np.testing.assert_array_equal(finals[0][1], finals[1][1])


def test_grasp_physics_only_in_the_dex3_scene() -> None:
    default = load_scene(SceneConfig(tabletop=False))
    assert default.opt.cone == mujoco.mjtCone.mjCONE_PYRAMIDAL and default.opt.impratio == 1.0
    hands = load_scene(SceneConfig(hands=True, tabletop=False))
    assert hands.opt.cone == mujoco.mjtCone.mjCONE_ELLIPTIC and hands.opt.impratio == GRASP_IMPRATIO
    tip = hands.geom("right_thumb_tip").id
    assert hands.geom_condim[tip] == FINGER_CONDIM and hands.geom_friction[tip][0] == 1.5


def test_dex3_fingers_settle_at_the_500hz_step() -> None:
    """Closed on a target, the fingers come to rest (an explicit kd·dq at 2 ms made them chatter at ~10 rad/s)."""
    s = G1Sim(SceneConfig(hands=True, tabletop=False))
    try:
        target = np.array([0.0, -0.5, -1.2, 1.2, 1.2, 1.2, 1.2])  # right hand
        s.set_hand_command("right", target, 1.5, 0.2)
        s.step(500)
        speeds = [np.abs(s.hand_state("right")["dq"]).max() for _ in range(100) if s.step(1) is None]
        assert max(speeds) < 0.05, f"fingers still moving at {max(speeds):.2f} rad/s after 1 s"
        np.testing.assert_allclose(s.hand_state("right")["q"], target, atol=0.03)
        tau = s.hand_state("right")["tau"]
        assert np.all(np.abs(tau) <= g1_spec.DEX3_EFFORT["right"] + 1e-9)
    finally:
        s.close()


def test_dex3_grasp_holds_the_block_while_the_arm_lifts() -> None:
    """The red block is put between the open right hand's thumb and fingers and the hand closes on it; then the
    arm lifts (shoulder back, elbow up) and the block must rise with the palm, fixed in the palm's frame."""
    s = G1Sim(SceneConfig(hands=True))
    try:
        m, d = s.model, s.data
        kp, kd = g1_spec.gains_array()
        q0 = s.joint_positions()
        s.set_command(q0, kp, kd)
        palm, block = m.body("right_hand_palm_link").id, m.body("red_block").id
        open_hand = np.array([0.0, 0.72, -1.74, 0.0, 0.0, 0.0, 0.0])  # thumb swung back, fingers straight
        closed = np.array([0.0, -0.6, -1.74, 1.4, 1.4, 1.4, 1.4])  # beyond contact: the fingers squeeze
        s.set_hand_command("right", open_hand, 1.5, 0.2)
        s.step(200)
        in_palm = np.array([0.08, 0.05, 0.0])  # between thumb and fingers, palm frame (right hand closes to +y)
        for i in range(150):  # the block is handed over: held in place while the fingers close on it
            R = d.xmat[palm].reshape(3, 3)
            quat = np.empty(4)
            mujoco.mju_mat2Quat(quat, R.reshape(9))
            s.set_object_pose("red_block", d.xpos[palm] + R @ in_palm, quat)
            s.set_hand_command("right", open_hand + (closed - open_hand) * min(1.0, i / 100), 1.5, 0.2)
            s.step(1)
        s.step(250)  # released: gravity alone for 0.5 s

        def block_in_palm() -> np.ndarray:
            return d.xmat[palm].reshape(3, 3).T @ (d.xpos[block] - d.xpos[palm])

        held = block_in_palm()
        assert np.linalg.norm(held - in_palm) < 0.01, f"the block slipped in the closed hand: {held}"
        z_block, z_palm = d.xpos[block][2], d.xpos[palm][2]
        q1 = q0.copy()
        q1[g1_spec.joint_index("right_shoulder_pitch_joint")] += 0.6
        q1[g1_spec.joint_index("right_elbow_joint")] -= 0.9
        for i in range(1000):
            s.set_command(q0 + (q1 - q0) * min(1.0, i / 750), kp, kd)
            s.step(1)
        palm_rise, block_rise = d.xpos[palm][2] - z_palm, d.xpos[block][2] - z_block
        assert palm_rise > 0.05, f"the arm did not lift the hand ({palm_rise:.3f} m)"
        assert abs(block_rise - palm_rise) < 0.02, f"block rose {block_rise:.3f} m, palm {palm_rise:.3f} m"
        assert np.linalg.norm(block_in_palm() - held) < 0.01, "the block slid in the hand during the lift"
    finally:
        s.close()
