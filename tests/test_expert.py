"""The scripted expert solves every task through the safety layer, on the real simulator."""

from __future__ import annotations

import numpy as np
import pytest
from dit4dit.drivers import g1_spec
from dit4dit.drivers.sim import tasks
from dit4dit.tasks.expert import (
    CONTROLLED_JOINTS,
    ScriptedExpert,
    default_safety_filter,
    run_episode,
)
from dit4dit.drivers.sim.scene import G1Sim


@pytest.fixture(scope="module")
def sim_and_expert():
    s = G1Sim()
    yield s, ScriptedExpert()
    s.close()


@pytest.mark.parametrize("name", tasks.task_names())
def test_expert_solves_task_within_limits(sim_and_expert, name):
    sim, expert = sim_and_expert
    frames = []
    out = run_episode(sim, tasks.get_task(name), 11, expert, image_size=(32, 32), on_frame=frames.append)
    assert out.success, out.final_info
    assert out.ik_error_m < 0.005
    task = tasks.get_task(name)
    assert len(frames) == int(task.duration_s * expert.control_hz)
    lim = default_safety_filter().limits
    idx = list(CONTROLLED_JOINTS)
    actions = np.stack([f.action for f in frames])
    executed = np.stack([f.executed for f in frames])
    # Targets stay inside the soft limits, so the safety layer never has to clamp them...
    assert np.all(actions >= lim.lower[idx] - 1e-6) and np.all(actions <= lim.upper[idx] + 1e-6)
    # ...and at the knots the executed command equals the target (no step limiting at the expert's speeds).
    assert np.max(np.abs(executed - actions)) < 0.02
    assert frames[0].image.shape == (32, 32, 3) and frames[0].image.dtype == np.uint8
    # Only the task's arm moves.
    other = [i for i, j in enumerate(idx) if g1_spec.JOINTS[j].group != f"{task.arm}_arm"]
    assert np.max(np.abs(actions[:, other] - actions[0, other])) < 1e-9
