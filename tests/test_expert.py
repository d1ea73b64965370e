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


@pytest.fixture(scope="module")
def dex3_sim_and_expert():
    from dit4dit.drivers.sim.scene import SceneConfig

    s = G1Sim(SceneConfig(hands=True))
    yield s, ScriptedExpert()
    s.close()


@pytest.mark.parametrize(("name", "seed"), [("lift_red", 0), ("lift_red", 1), ("pick_place", 1), ("pick_place", 3)])
def test_expert_grasps_on_fixed_seeds(dex3_sim_and_expert, name, seed):
    """The grasping expert (arm through the SafetyFilter, hand through HandLimiter) on seeds it solves today;
    its rate over many seeds is bench/bench_grasp_expert.py's."""
    sim, expert = dex3_sim_and_expert
    hands = []
    out = run_episode(sim, tasks.get_task(name), seed, expert, image_size=None,
                      on_frame=lambda f: hands.append(sim.hand_state("right")["q"]))
    assert out.success, out.final_info
    hands = np.stack(hands)
    # measured, so within MuJoCo's soft joint limits: a thumb commanded to its limit and pressed by the table
    # sits up to ~0.07 rad past it (the commanded targets are HandLimiter's, tested below)
    slack = 0.1
    assert np.all(hands >= g1_spec.DEX3_LOWER["right"] - slack) and np.all(hands <= g1_spec.DEX3_UPPER["right"] + slack)
    assert np.ptp(hands[:, 3]) > 1.0  # the index finger closed and opened: the hand did the work


def test_hand_limiter_keeps_targets_inside_the_hand_limits():
    from dit4dit.runtime.realtime.safety import HandLimiter, SafetyError

    lim = HandLimiter("left", max_velocity=5.0)
    with pytest.raises(SafetyError, match="reset"):
        lim(np.zeros(7), 1.5, 0.2)
    lim.reset(np.zeros(7))
    far = np.full(7, 10.0)  # outside every joint's range
    q, kp, kd = lim(far, 99.0, -1.0)
    assert np.max(np.abs(q)) <= 5.0 * g1_spec.CONTROL_DT + 1e-12  # one step of at most max_velocity * dt
    assert np.all(kp == lim.max_kp) and np.all(kd == 0.0)
    for _ in range(2000):
        q, _, _ = lim(far, 1.5, 0.2)
    np.testing.assert_allclose(q, np.clip(far, g1_spec.DEX3_LOWER["left"], g1_spec.DEX3_UPPER["left"]))
    held = q.copy()
    q, _, _ = lim(np.full(7, np.nan), 1.5, 0.2)  # a bad target holds the last one
    np.testing.assert_array_equal(q, held)
    assert lim.rejected == 1
    with pytest.raises(ValueError, match="side"):
        HandLimiter("middle")
