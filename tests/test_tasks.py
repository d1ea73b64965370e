"""Tabletop tasks on the real scene (MuJoCo): seeded layouts, placement, success from sim state."""

from __future__ import annotations

import numpy as np
import pytest
from dit4dit.drivers.sim import tasks
from dit4dit.drivers.sim.scene import G1Sim


@pytest.fixture(scope="module")
def sim() -> G1Sim:
    s = G1Sim()
    yield s
    s.close()


def test_layout_is_seeded_and_varies():
    a, b, c = tasks.sample_layout(3), tasks.sample_layout(3), tasks.sample_layout(4)
    assert a == b and a != c
    for seed in range(50):
        lay = tasks.sample_layout(seed)
        for name, (x0, x1, y0, y1) in tasks.REGIONS.items():
            x, y, _ = lay[name]
            assert x0 <= x <= x1 and y0 <= y <= y1
        gx, _, _ = lay["green_block"]
        tx, _, _ = lay["target"]
        assert tasks.PUSH_DISTANCE[0] <= tx - gx <= tasks.PUSH_DISTANCE[1]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="reach_red"):
        tasks.get_task("fly")


@pytest.mark.parametrize("name", tasks.task_names())
def test_reset_places_objects_on_the_table_and_starts_unsolved(sim, name):
    sim.reset(7, name)
    sim.step(250)  # 0.5 s: objects settle and stay put
    z_top = tasks.table_top_z(sim.model, sim.data)
    poses = tasks.object_poses(sim.model, sim.data)
    lay = tasks.sample_layout(7)
    for block in tasks.BLOCKS:
        x, y, z = poses[block][:3]
        assert abs(x - lay[block][0]) < 0.01 and abs(y - lay[block][1]) < 0.01
        assert abs(z - (z_top + 0.02)) < 0.005
    st = sim.task_state()
    assert st["task"] == name and st["success"] is False


def test_success_is_computed_from_sim_state(sim):
    sim.reset(1, "reach_red")
    task = tasks.get_task("reach_red")
    hand = tasks.hand_point(sim.model, sim.data, "right")
    # Put the red block right under the (resting) right hand: reached.
    sim.set_object_pose("red_block", hand - np.array([0, 0, 0.02 + tasks.REACH_HOVER]))
    assert task.evaluate(sim.model, sim.data).success
    assert not tasks.get_task("reach_blue").evaluate(sim.model, sim.data).success

    sim.reset(1, "push_green")
    push = tasks.get_task("push_green")
    target = sim.data.xpos[sim.model.body("target").id].copy()
    assert not push.evaluate(sim.model, sim.data).success
    sim.set_object_pose("green_block", target + np.array([0.02, 0.0, 0.02]))
    assert push.evaluate(sim.model, sim.data).success
    sim.set_object_pose("green_block", target + np.array([0.06, 0.0, 0.02]))
    assert not push.evaluate(sim.model, sim.data).success


def test_grasp_tasks_stay_out_of_the_default_list_and_need_the_hands(sim):
    assert set(tasks.task_names()) == {"reach_red", "reach_blue", "push_green"}  # the shipped checkpoint's
    assert set(tasks.task_names(grasp=True)) == {*tasks.task_names(), "pick_place", "lift_red"}
    from dit4dit.drivers.sim.scene import SceneError

    with pytest.raises(SceneError, match="Dex3"):
        sim.reset(0, "pick_place")


def test_pick_place_moves_only_the_bowl_and_starts_unsolved():
    from dit4dit.drivers.sim.scene import SceneConfig

    s = G1Sim(SceneConfig(hands=True))
    try:
        for seed in (0, 5):
            arm_only = s.reset(seed, "reach_red")
            picking = s.reset(seed, "pick_place")
            for name in (*tasks.BLOCKS, tasks.TARGET):
                np.testing.assert_allclose(picking[name]["pos"], arm_only[name]["pos"])
            bowl = np.array(picking[tasks.BOWL]["pos"])
            pelvis = s.data.xpos[s.model.body("pelvis").id]
            x0, x1, y0, y1 = tasks.PICK_BOWL_REGION
            assert x0 <= bowl[0] - pelvis[0] <= x1 and y0 <= bowl[1] - pelvis[1] <= y1
            s.step(250)
            state = s.task_state()
            assert state["success"] is False and state["info"]["in_hand"] is False
            # put the block into the bowl by hand: success, from the sim's state alone
            bowl_now = s.data.xpos[s.model.body("bowl").id]
            s.set_object_pose("red_block", (bowl_now[0], bowl_now[1], bowl_now[2] + 0.03))
            s.step(250)
            assert s.task_state()["success"] is True, s.task_state()["info"]
    finally:
        s.close()
