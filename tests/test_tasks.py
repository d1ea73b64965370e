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
